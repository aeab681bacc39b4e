"""Landmark evaluation every validation epoch and at test time: metrics, JSON and figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from xraydiff.imageio import atomic_write_bytes
from xraydiff.metrics import (
    HAND_OUTLIER_RADII_MM,
    SDR_RADII_MM,
    LandmarkErrors,
    check_radii,
    spread_error_correlation,
    summarize_errors,
)
from xraydiff.preview import error_bar_chart, error_spread_figure, worst_cases_figure


class LandmarkEvaluation(Callback):
    """Collects the radial errors of the localizer's validation / test steps (torchmetrics, synced
    under DDP, each image counted once), logs MRE, SD, SDR, outliers and per-landmark errors, and
    writes ``<output_dir>/<stage>_metrics.json`` with ``<stage>_per_landmark.png`` (error bars)
    and ``<stage>_worst_cases.png`` (prediction, ground truth and error line of the worst images;
    those of rank 0 under DDP).

    Models with several inference modes (``LandmarkDiffusion``) add ``inference`` to the JSON: the
    mode, network calls per image and seconds per image (measured on rank 0). When their steps
    return ``uncertainty_mm`` (an ensemble of M > 1), the JSON gets ``uncertainty`` (the Spearman
    correlation of spread and error over all landmarks of all images, mean spread per landmark) and
    ``<stage>_error_vs_spread.png``.

    Args:
        output_dir: where the files go; default ``trainer.default_root_dir``.
        sdr_radii: success-detection radii in mm (default 2, 2.5, 3, 4).
        outlier_radii: outlier radii in mm (default 2, 4, 10, 20, as for hands).
        worst_cases: images in the worst-case figure.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        sdr_radii: Sequence[float] = SDR_RADII_MM,
        outlier_radii: Sequence[float] = HAND_OUTLIER_RADII_MM,
        worst_cases: int = 6,
    ):
        self.output_dir = output_dir
        self.sdr_radii = check_radii(sdr_radii, "success detection rate")
        self.outlier_radii = check_radii(outlier_radii, "outlier")
        self.worst_count = worst_cases
        self.metric = LandmarkErrors()
        self.spread = LandmarkErrors()
        self.timing = [0.0, 0, 0]  # seconds, images, network calls per image
        self.worst: list[tuple[float, dict]] = []
        self.last: dict[str, dict] = {}

    def _start(self, pl_module: L.LightningModule) -> None:
        self.metric = self.metric.to(pl_module.device)
        self.spread = self.spread.to(pl_module.device)
        self.metric.reset()
        self.spread.reset()
        self.timing = [0.0, 0, 0]
        self.worst = []

    def _batch(self, outputs: dict, batch: dict) -> None:
        errors = outputs["errors_mm"].detach()
        self.metric.update(errors, batch["index"])
        if outputs.get("uncertainty_mm") is not None:
            self.spread.update(outputs["uncertainty_mm"].detach(), batch["index"])
        if "seconds" in outputs:
            self.timing = [self.timing[0] + outputs["seconds"], self.timing[1] + len(errors), outputs["network_calls"]]
        for k, per_image in enumerate(errors.mean(dim=1).tolist()):
            if len(self.worst) < self.worst_count or per_image > self.worst[-1][0]:
                self.worst.append(
                    (
                        per_image,
                        {
                            "id": batch["id"][k],
                            "image": batch["image"][k, 0].float().cpu().numpy(),
                            "predicted": outputs["predicted"][k].float().cpu().numpy(),
                            "target": batch["landmarks"][k].float().cpu().numpy(),
                            "error_mm": per_image,
                        },
                    )
                )
                self.worst = sorted(self.worst, key=lambda w: -w[0])[: self.worst_count]

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        errors = self.metric.compute()
        if errors.numel() == 0:
            return
        summary = summarize_errors(errors.cpu(), self.sdr_radii, self.outlier_radii)
        settings = getattr(pl_module, "inference_settings", None)
        if settings is not None and self.timing[1]:
            seconds, images, calls = self.timing
            timing = {"network_calls_per_image": calls, "seconds_per_image": seconds / images}
            summary["inference"] = {**settings(), **timing}
        spread = self.spread.compute().cpu() if self.spread.update_count else None
        if spread is not None and spread.shape == errors.shape:
            summary["uncertainty"] = spread_error_correlation(spread, errors.cpu())
        self.last[stage] = summary
        prefix = "val" if stage == "validate" else stage
        pl_module.log(f"{prefix}/mre_mm", summary["mre_mm"], prog_bar=True, sync_dist=False)
        pl_module.log(f"{prefix}/mre_sd_mm", summary["mre_sd_mm"])
        pl_module.log(f"{prefix}/median_mm", summary["median_mm"])
        for radius, value in summary["sdr"].items():
            pl_module.log(f"{prefix}/sdr_{radius}mm", value)
        for radius, value in summary["outliers"].items():
            pl_module.log(f"{prefix}/outliers_{radius}mm", float(value))
        for k, value in enumerate(summary["per_landmark_mm"]):
            pl_module.log(f"{prefix}/landmark_{k:02d}_mm", value)
        if trainer.is_global_zero and not trainer.sanity_checking:
            out = Path(self.output_dir or trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / f"{prefix}_metrics.json", json.dumps(summary, indent=1).encode())
            error_bar_chart(
                out / f"{prefix}_per_landmark.png",
                errors.cpu().numpy(),
                title=f"{prefix}: MRE {summary['mre_mm']:.2f} mm over {summary['n_images']} images",
            )
            worst_cases_figure(out / f"{prefix}_worst_cases.png", [w for _, w in self.worst])
            if "uncertainty" in summary:
                rho = summary["uncertainty"]["spearman"]
                error_spread_figure(
                    out / f"{prefix}_error_vs_spread.png",
                    spread.numpy(),
                    errors.cpu().numpy(),
                    title=f"{prefix}: Spearman rho {rho:.2f}",
                )
        self.metric.reset()
        self.spread.reset()

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(outputs, batch)

    def on_test_epoch_end(self, trainer, pl_module):
        self._finish(trainer, pl_module, "test")
