"""Segmentation evaluation every validation epoch and at test time: per-image scores, JSON and worst cases."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from callbacks.evaluation import StageEvaluation
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.data.preview import segmentation_cases_figure
from xraydiff.metrics import SEGMENTATION_SCORES, IndexedRows, summarize_segmentation


class SegmentationEvaluation(StageEvaluation):
    """Collects the per-image precision, recall and DSC of ``Segmenter``'s validation / test steps
    (torchmetrics state, synced under DDP, each image counted once by its dataset index), logs their
    means and writes ``<output_dir>/<stage>_metrics.json`` (mean +- SD over images, the per-image scores
    by image id) and ``<stage>_worst_cases.png`` (true and predicted outlines of the lowest-DSC images;
    those of rank 0 under DDP).

    Args:
        output_dir: where the files go; default ``trainer.default_root_dir``.
        worst_cases: images in the worst-case figure.
    """

    def __init__(self, output_dir: str | None = None, worst_cases: int = 6):
        self.output_dir = output_dir
        self.worst_count = worst_cases
        self.scores = IndexedRows()
        self.worst: list[tuple[float, dict]] = []
        self.last: dict[str, dict] = {}

    def _start(self, pl_module: L.LightningModule) -> None:
        self.scores = self.scores.to(pl_module.device)
        self.scores.reset()
        self.worst = []

    def _batch(self, outputs: dict, batch: dict) -> None:
        scores = outputs["scores"].detach()
        self.scores.update(scores, batch["index"])
        for k, dsc in enumerate(scores[:, 2].tolist()):
            if len(self.worst) < self.worst_count or dsc < self.worst[-1][0]:
                case = {
                    "id": batch["id"][k],
                    "image": batch["image"][k, 0].float().cpu().numpy(),
                    "mask": batch["mask"][k, 0].float().cpu().numpy(),
                    "predicted": outputs["predicted"][k, 0].float().cpu().numpy(),
                    "dsc": dsc,
                }
                self.worst = sorted([*self.worst, (dsc, case)], key=lambda w: w[0])[: self.worst_count]

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> None:
        indices, scores = self.scores.compute()  # gathered from all processes
        if scores.numel() == 0:
            return
        summary = summarize_segmentation(scores.cpu())
        items = (getattr(getattr(trainer, "datamodule", None), "items", None) or {}).get(prefix) or []
        summary["per_image"] = {
            (items[i].id if i < len(items) else str(i)): dict(zip(SEGMENTATION_SCORES, row, strict=True))
            for i, row in zip(indices.tolist(), scores.tolist(), strict=True)
        }
        self.last[prefix] = summary
        for name in SEGMENTATION_SCORES:
            pl_module.log(f"{prefix}/{name}", summary[name], prog_bar=name == "dsc", sync_dist=False)
            pl_module.log(f"{prefix}/{name}_sd", summary[f"{name}_sd"], sync_dist=False)
        if trainer.is_global_zero and not trainer.sanity_checking:
            out = Path(self.output_dir or trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / f"{prefix}_metrics.json", json.dumps(summary, indent=1).encode())
            segmentation_cases_figure(out / f"{prefix}_worst_cases.png", [case for _, case in self.worst])
        self.scores.reset()
