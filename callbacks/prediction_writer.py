"""Writes the landmark predictions of ``xraydiff predict``: one CSV per predicted split."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from callbacks.plausibility import fit_prediction_checker
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.data.imageio import atomic_write_bytes


class LandmarkPredictionWriter(BasePredictionWriter):
    """``<output_dir>/predictions_<split>.csv`` for every split the DataModule predicts on
    (``predict_splits``; by default every non-empty one of val and test): one row per image and
    landmark, ``id,landmark,x,y,mm_per_px,plausible`` with x / y in original image pixels (the
    annotation files' frame), plus ``uncertainty_mm`` when the model reports one (an ensemble of
    ``LandmarkDiffusion``). ``plausible`` (1 / 0, per image) is the shape check of the predicted
    configuration against statistics fitted on the training split (``callbacks.plausibility``); it
    is left out when the DataModule has fewer than 3 training shapes or ``plausibility`` is False.

    Rows come from every DDP rank; an image repeated by the sampler's padding is written once; rows
    are sorted by id and landmark; each file is written atomically when prediction ends.

    Args:
        output_dir: where the files go; default ``trainer.default_root_dir``.
        plausibility: add the ``plausible`` column.
    """

    def __init__(self, output_dir: str | None = None, plausibility: bool = True):
        super().__init__(write_interval="batch")
        self.output_dir, self.plausibility = output_dir, plausibility
        self.checker: AcceptanceChecker | None = None
        self.rows: dict[int, list[dict]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict" and self.plausibility and self.checker is None:
            self.checker = fit_prediction_checker(trainer.datamodule)

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        uncertainty = prediction.get("uncertainty_mm")
        failed = None
        if self.checker is not None:
            failed = self.checker.check_configurations(prediction["predicted"].float().numpy())
        rows = self.rows.setdefault(dataloader_idx, [])
        for b, image_id in enumerate(prediction["id"]):
            for k, (x, y) in enumerate(prediction["landmarks"][b].tolist()):
                row = {"id": image_id, "landmark": k, "x": x, "y": y, "mm_per_px": float(prediction["mm_per_px"][b])}
                if failed is not None:
                    row["plausible"] = int(not failed[b])
                if uncertainty is not None:
                    row["uncertainty_mm"] = float(uncertainty[b, k])
                rows.append(row)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        splits = datamodule.predicted_splits() if hasattr(datamodule, "predicted_splits") else ["predict"]
        for index, split in enumerate(splits):
            rows = self.rows.get(index, [])
            if dist.is_available() and dist.is_initialized():
                gathered: list = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, rows)
                rows = [row for part in gathered for row in part]
            if not trainer.is_global_zero or not rows:
                continue
            unique = {(row["id"], row["landmark"]): row for row in rows}
            ordered = [unique[key] for key in sorted(unique)]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(ordered[0]), lineterminator="\n")
            writer.writeheader()
            for row in ordered:
                writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
            out = Path(self.output_dir or trainer.default_root_dir) / f"predictions_{split}.csv"
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out, buffer.getvalue().encode())
            images = len({row["id"] for row in ordered})
            flagged = len({row["id"] for row in ordered if row.get("plausible") == 0})
            note = f", {flagged} implausible" if "plausible" in ordered[0] else ""
            print(f"predictions: {out} ({images} images{note})")
