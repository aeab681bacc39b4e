"""The record of what ``xraydiff fit`` wrote into its run folder (``trainer.default_root_dir``), so that a later
fit never overwrites a file it did not write and ``--overwrite_run true`` removes exactly the earlier run's
files: checkpoints, the config copy, logs, galleries, metrics; never a file of the user's."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.errors import DataError

RUN_MARKER = ".xraydiff-run"
# What a run writes whether or not the record saw it (a run killed before its first record)
RUN_PATTERNS = ("checkpoints/*.ckpt", "hpc_ckpt_*.ckpt")
CONFIG = "config.yaml"


def recorded_files(root: Path) -> set[str]:
    """The files (relative to ``root``) that xraydiff runs recorded as theirs."""
    marker = Path(root) / RUN_MARKER
    return set(json.loads(marker.read_text()).get("files", [])) if marker.is_file() else set()


def record(root: Path, since: float) -> None:
    """Add to ``root``'s record every file under it written since ``since`` (seconds since the epoch)."""
    root = Path(root)
    if not root.is_dir():
        return
    written = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.stat().st_mtime >= since}
    files = sorted((recorded_files(root) | written) - {RUN_MARKER})
    atomic_write_bytes(root / RUN_MARKER, json.dumps({"command": "fit", "files": files}, indent=1).encode())


def check_config_copy(root: Path) -> None:
    """DataError when ``root`` holds a ``config.yaml`` that no xraydiff run wrote: the run would replace it."""
    config = Path(root) / CONFIG
    if config.is_file() and CONFIG not in recorded_files(root):
        raise DataError(
            config, "a file xraydiff did not write, where fit saves its config copy; "
            "choose another --trainer.default_root_dir or move the file",
        )  # fmt: skip


def remove_earlier_run(root: Path) -> list[str]:
    """Remove the files of earlier runs in ``root`` (its record and ``RUN_PATTERNS``) and the folders they
    leave empty; every other file stays. Returns the removed files."""
    root = Path(root)
    earlier = recorded_files(root) | {str(p.relative_to(root)) for pattern in RUN_PATTERNS for p in root.glob(pattern)}
    removed = []
    for name in sorted(earlier):
        path = root / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    (root / RUN_MARKER).unlink(missing_ok=True)
    return removed


class RunRecord(Callback):
    """Records the files this process writes into the run folder: when fitting starts (the config copy, the
    logger's files) and after every epoch, and at the end of every stage (checkpoints, galleries, metrics)."""

    def __init__(self):
        self.since = time.time() - 1  # file systems keep coarse modification times

    def _record(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            record(Path(trainer.default_root_dir), self.since)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._record(trainer)
