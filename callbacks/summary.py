"""A one-line model summary at the start of a fit."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class ParameterSummary(Callback):
    """Prints the model class and its trainable and frozen parameter counts, once per fit: what Lightning's
    summary table says that a user acts on, without its FLOPs total (0 without an example input)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in pl_module.parameters() if not p.requires_grad)
        rank_zero_info(f"xraydiff: {type(pl_module).__name__}: {trainable:,} trainable parameters, {frozen:,} frozen")
