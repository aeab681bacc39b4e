"""Reading xraydiff checkpoints without Lightning: the recorded model class, hyperparameters, steps."""

from __future__ import annotations

from pathlib import Path

import torch

from xraydiff.errors import DataError

CHECKPOINT_KEY = "xraydiff"


def class_path(obj_or_cls) -> str:
    """``module.QualifiedName`` of an object's class (or of a class)."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(path: str | Path) -> dict:
    """An xraydiff checkpoint (memory-mapped); DataError for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (or, long ago, a pickle)
        raise DataError(
            path, f"not a checkpoint: it starts with bytes {head.hex(' ')}, not the zip archive torch.save writes"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem means "not a checkpoint"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(path, f"not a checkpoint torch can read ({type(err).__name__}: {reason})") from None
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not meta or "model_class" not in meta:
        raise DataError(path, "not an xraydiff checkpoint (no model class recorded)")
    return checkpoint


def checkpoint_model_class(path: str | Path) -> str:
    """The model class recorded in an xraydiff checkpoint; DataError for a missing or foreign file."""
    return read_checkpoint(path)[CHECKPOINT_KEY]["model_class"]
