"""The optimizer of the supervised models (localizer, segmenter): AdamW with an optional cosine schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from xraydiff.errors import DataError

LR_SCHEDULES = ("cosine", "constant")


def check_lr_schedule(lr_schedule: str) -> None:
    if lr_schedule not in LR_SCHEDULES:
        raise DataError(None, f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")


def adamw_with_schedule(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    lr_schedule: str,
    max_epochs: int | None,
):
    """AdamW, and with 'cosine' a cosine annealing over ``max_epochs`` stepped per epoch (constant when the
    run has no epoch budget, e.g. ``max_epochs`` -1 with ``max_steps``): ``configure_optimizers``' return."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    if lr_schedule == "constant" or max_epochs is None or max_epochs < 1:
        return optimizer
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
