"""Landmark evaluation every validation epoch and at test time: metrics, JSON and figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from callbacks.evaluation import StageEvaluation
from callbacks.plausibility import fit_prediction_checker
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.data.preview import error_bar_chart, error_spread_figure, worst_cases_figure
from xraydiff.landmarks.metrics import (
    HAND_OUTLIER_RADII_MM,
    SDR_RADII_MM,
    LandmarkErrors,
    check_radii,
    observer_agreement,
    observer_errors_mm,
    radial_errors_mm,
    spread_error_correlation,
    summarize_errors,
)


class LandmarkEvaluation(StageEvaluation):
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

    When the batches carry several annotators' landmarks (``observers``, e.g. ISBI 2015's senior and
    junior doctor), the JSON gets ``observers``: the MRE to each annotator (named by the DataModule's
    ``observer_names``), the mean inter-observer distance and the percentage of predictions within
    the inter-observer distance of the nearer annotator (``xraydiff.landmarks.metrics.observer_agreement``).

    With ``plausibility`` (default), every predicted configuration is checked with shape statistics
    fitted on the training split (``callbacks.plausibility``: SSM aligned by RANSAC, shape rules);
    the JSON gets ``plausibility`` with the number checked and the ids of the implausible ones
    (e.g. a cephalogram facing the other way, whose mirrored answer no similarity aligns).

    Args:
        output_dir: where the files go; default ``trainer.default_root_dir``.
        sdr_radii: success-detection radii in mm (default 2, 2.5, 3, 4).
        outlier_radii: outlier radii in mm (default 2, 4, 10, 20, as for hands).
        worst_cases: images in the worst-case figure.
        plausibility: check the predicted configurations' shapes.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        sdr_radii: Sequence[float] = SDR_RADII_MM,
        outlier_radii: Sequence[float] = HAND_OUTLIER_RADII_MM,
        worst_cases: int = 6,
        plausibility: bool = True,
    ):
        self.output_dir = output_dir
        self.sdr_radii = check_radii(sdr_radii, "success detection rate")
        self.outlier_radii = check_radii(outlier_radii, "outlier")
        self.worst_count = worst_cases
        self.metric = LandmarkErrors()
        self.spread = LandmarkErrors()
        self.observer_errors = LandmarkErrors()  # (B, K * N)
        self.inter_observer = LandmarkErrors()  # (B, N)
        self.plausibility = plausibility
        self.checker: AcceptanceChecker | None = None
        self.plausible = LandmarkErrors()  # (B, 2): dataset index, plausible
        self.timing = [0.0, 0, 0]  # seconds, images, network calls per image
        self.worst: list[tuple[float, dict]] = []
        self.last: dict[str, dict] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.plausibility and self.checker is None:
            self.checker = fit_prediction_checker(trainer.datamodule)

    def _start(self, pl_module: L.LightningModule) -> None:
        self.metric = self.metric.to(pl_module.device)
        self.spread = self.spread.to(pl_module.device)
        self.observer_errors = self.observer_errors.to(pl_module.device)
        self.inter_observer = self.inter_observer.to(pl_module.device)
        self.plausible = self.plausible.to(pl_module.device)
        for metric in self._metrics():
            metric.reset()
        self.timing = [0.0, 0, 0]
        self.worst = []

    def _batch(self, outputs: dict, batch: dict) -> None:
        errors = outputs["errors_mm"].detach()
        self.metric.update(errors, batch["index"])
        if outputs.get("uncertainty_mm") is not None:
            self.spread.update(outputs["uncertainty_mm"].detach(), batch["index"])
        if "observers" in batch and "predicted_original" in outputs:
            observers, mm_per_px = batch["observers"], batch["mm_per_px"]
            to_each = observer_errors_mm(outputs["predicted_original"].detach(), observers, mm_per_px)
            self.observer_errors.update(to_each.flatten(1), batch["index"])
            self.inter_observer.update(radial_errors_mm(observers[:, 0], observers[:, 1], mm_per_px), batch["index"])
        if self.checker is not None:
            failed = self.checker.check_configurations(outputs["predicted"].detach().float().cpu().numpy())
            rows = [[float(i), float(not f)] for i, f in zip(batch["index"].tolist(), failed, strict=True)]
            self.plausible.update(torch.tensor(rows, device=errors.device), batch["index"])
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
        with self.metric.sync_context():  # all processes' rows, each image once, by dataset index
            indices, errors = self.metric.distinct()
        if errors.numel() == 0:
            return
        summary = summarize_errors(errors.cpu(), self.sdr_radii, self.outlier_radii)
        split = (getattr(getattr(trainer, "datamodule", None), "items", None) or {}).get(stage) or []

        def image_id(index: int) -> str:  # stage is the split: 'val' or 'test'
            return split[index].id if index < len(split) else str(index)

        # per image (by id, in dataset order): what a paired comparison of two runs needs
        ids = [image_id(i) for i in indices.tolist()]
        summary["per_image_mre_mm"] = dict(zip(ids, errors.mean(1).tolist(), strict=True))
        settings = getattr(pl_module, "inference_settings", None)
        if settings is not None and self.timing[1]:
            seconds, images, calls = self.timing
            timing = {"network_calls_per_image": calls, "seconds_per_image": seconds / images}
            summary["inference"] = {**settings(), **timing}
        spread = self.spread.compute().cpu() if self.spread.update_count else None
        if spread is not None and spread.shape == errors.shape:
            summary["uncertainty"] = spread_error_correlation(spread, errors.cpu())
        if self.inter_observer.update_count:
            inter = self.inter_observer.compute().cpu()
            to_each = self.observer_errors.compute().cpu().reshape(len(inter), -1, inter.shape[1])
            datamodule = getattr(trainer, "datamodule", None)
            names = getattr(datamodule, "observer_names", None) or [f"observer_{k}" for k in range(to_each.shape[1])]
            summary["observers"] = observer_agreement(to_each, inter, names)
        if self.plausible.update_count:
            rows = self.plausible.compute().cpu()
            flagged = [int(i) for i, ok in rows.tolist() if not ok]
            summary["plausibility"] = {
                "checked": len(rows),
                "implausible": len(flagged),
                "implausible_ids": [image_id(i) for i in flagged],
                "rule_set": self.checker.rule_set,
                "training_shapes": self.checker.stats.num_shapes,
            }
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
        if "observers" in summary:
            for name, value in summary["observers"]["mre_mm_to"].items():
                pl_module.log(f"{prefix}/mre_mm_to_{name}", value)
            pl_module.log(f"{prefix}/within_inter_observer", summary["observers"]["within_inter_observer"])
        if "plausibility" in summary:
            pl_module.log(f"{prefix}/implausible", float(summary["plausibility"]["implausible"]))
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
        for metric in self._metrics():
            metric.reset()

    def _metrics(self) -> tuple[LandmarkErrors, ...]:
        return (self.metric, self.spread, self.observer_errors, self.inter_observer, self.plausible)
