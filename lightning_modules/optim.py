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
    """The learning-rate factor at optimizer step ``step`` (0-based): step / warmup during the warm-up
    (0 at the first step, as in transformers' linear warm-up), then 0.5 (1 + cos(pi p)) with p the
    fraction of the remaining steps done; 1 after the warm-up when ``total`` is unknown."""
    if step < warmup:
        return step / warmup
    if total is None:
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(trainer: L.Trainer) -> int | None:
    """Optimizer steps the schedule spans: ``max_epochs`` x optimizer steps per epoch when the run has
    an epoch budget, else ``max_steps``; None when not known (yet, or a run bounded by time only).

    With an epoch budget ``max_steps`` does not enter, so a fit stopped by ``max_steps`` and resumed
    with a larger one continues the same schedule. Read from the fit loop's own batch count, never by
    setting the data up early (``trainer.estimated_stepping_batches`` would, and that alone made a
    mid-epoch resume inexact).
    """
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        batches = trainer.num_training_batches
        return (
            math.ceil(batches / trainer.accumulate_grad_batches) * trainer.max_epochs
            if math.isfinite(batches)
            else None
        )
    return trainer.max_steps if trainer.max_steps is not None and trainer.max_steps > 0 else None


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

    Per step, not per epoch: the studies train by ``max_steps`` (``max_epochs`` -1), where an epoch
    schedule has no length. The factor of step 0 needs no length (0 with a warm-up, else 1); later
    steps read it when the fit loop knows its batches.
    """
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    if lr_schedule == "constant":
        return optimizer

    def factor(step: int) -> float:  # a function, not an object: LambdaLR would pickle an object's state
        if step == 0:
            return 0.0 if warmup_fraction > 0 else 1.0
        total = total_steps(trainer)
        return warmup_cosine(step, total, int(round(warmup_fraction * total)) if total else 0)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
