"""Writes the samples of ``xraydiff sample`` as they are generated, from every rank."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from xraydiff.data.imageio import mark_output, replace_directory
from xraydiff.data.samples import write_manifest, write_sample


class SampleWriter(BasePredictionWriter):
    """Writes ``<id>.npz`` and ``<id>.png`` per sample into ``staging``; at the end rank 0 checks
    that all ``expected`` samples exist, writes ``manifest.json`` and moves ``staging`` to ``out``.
    """

    def __init__(self, staging: Path, out: Path, manifest: dict, expected: int):
        super().__init__(write_interval="batch")
        self.staging, self.out, self.manifest, self.expected = Path(staging), Path(out), manifest, expected

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        channels = pl_module.sample_channels
        for sample, arrays in zip(prediction["ids"], prediction["samples"], strict=True):
            write_sample(
                self.staging, sample, **{name: array.numpy() for name, array in zip(channels, arrays, strict=True)}
            )

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("samples-written")
        if trainer.is_global_zero:
            ids = sorted(p.stem for p in self.staging.glob("*.npz"))
            if len(ids) != self.expected:
                raise RuntimeError(f"{self.staging}: expected {self.expected} samples, found {len(ids)}")
            write_manifest(self.staging, {**self.manifest, "count": len(ids), "ids": ids})
            mark_output(self.staging, "sample")
            replace_directory(self.staging, self.out)
            print(json.dumps({k: v for k, v in self.manifest.items() if k != "ids"}))
        trainer.strategy.barrier("samples-moved")
