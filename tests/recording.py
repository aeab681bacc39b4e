"""Test-only callbacks, loaded by class path in subprocess runs (``PYTHONPATH`` holds tests/)."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RecordTrainingIds(Callback):
    """Writes the ids of this rank's training batches, per epoch, to ``<out>/ids_rank<R>.json``."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.seen: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.setdefault(trainer.current_epoch, []).extend(batch["id"])

    def on_fit_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"ids_rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))
