"""A one-line model summary at the start of a fit: what is trained, what is a frozen copy, where checkpoints go."""

from __future__ import annotations

from collections import Counter

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

# Frozen submodules a user should recognise by what they are, not as "frozen parameters"
FROZEN_ROLES = {"ema": "in the EMA copy used for sampling", "first_stage": "in the frozen autoencoder"}


class ParameterSummary(Callback):
    """Prints the model class, the parameters trained and those of each frozen submodule (the EMA copy of a
    diffusion model, the LDM's autoencoder), and the checkpoint folder, once per fit: what Lightning's summary
    table says that a user acts on, without its FLOPs total (0 without an example input)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trained, frozen = 0, Counter()
        for name, parameter in pl_module.named_parameters():
            if parameter.requires_grad:
                trained += parameter.numel()
            else:
                frozen[name.split(".")[0]] += parameter.numel()
        parts = [f"{trained:,} parameters trained"]
        parts += [f"{n:,} {FROZEN_ROLES.get(module, f'frozen in {module}')}" for module, n in frozen.items()]
        where = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback is not None else None
        rank_zero_info(
            f"xraydiff: {type(pl_module).__name__}: {', '.join(parts)}"
            + (f"; checkpoints go to {where}/" if where else "")
        )
