"""What the evaluation callbacks share: the validation and test hooks around one start / batch / finish cycle."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class StageEvaluation(Callback):
    """Calls ``_start`` at the start of every validation and test epoch, ``_batch`` after every batch and
    ``_finish`` at the end, with the stage's prefix ('val' or 'test')."""

    def _start(self, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def _batch(self, outputs: dict, batch: dict) -> None:
        raise NotImplementedError

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> None:
        raise NotImplementedError

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
