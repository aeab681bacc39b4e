"""The optimizer of the supervised models (localizer, segmenter, landmark diffusion): AdamW with a
per-step schedule, a linear warm-up followed by a cosine decay to zero (Loshchilov and Hutter)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning as L
import torch

from xraydiff.errors import DataError

LR_SCHEDULES = ("cosine", "constant")


def check_lr_schedule(lr_schedule: str, warmup_fraction: float = 0.0) -> None:
    if lr_schedule not in LR_SCHEDULES:
        raise DataError(None, f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise DataError(None, f"warmup_fraction must be in [0, 1), got {warmup_fraction}")


def warmup_cosine(step: int, total: int | None, warmup: int) -> float:
    """The learning-rate factor at optimizer step ``step`` (0-based): (step + 1) / warmup during the
    warm-up, then 0.5 (1 + cos(pi p)) with p the fraction of the remaining steps done; 1 after the
    warm-up when ``total`` is unknown (a run bounded by time only)."""
    if step < warmup:
        return (step + 1) / warmup
    if total is None:
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(trainer: L.Trainer) -> int | None:
    """Optimizer steps of the whole run (``trainer.estimated_stepping_batches``: ``max_steps``, or
    ``max_epochs`` x batches per epoch); None when only a time limit bounds it."""
    steps = trainer.estimated_stepping_batches
    return int(steps) if math.isfinite(steps) and steps > 0 else None


def adamw_with_schedule(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    lr_schedule: str,
    trainer: L.Trainer,
    warmup_fraction: float = 0.0,
):
    """AdamW and, with 'cosine', ``warmup_cosine`` stepped per optimizer step over the run's
    ``total_steps`` with the first ``warmup_fraction`` of them warming up: ``configure_optimizers``' return.

    Per step, not per epoch: the studies train by ``max_steps`` (``max_epochs`` -1), where an
    epoch schedule has no length.
    """
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    if lr_schedule == "constant":
        return optimizer
    total = total_steps(trainer)
    warmup = int(round(warmup_fraction * total)) if total else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
