"""Keep the terminal for what a user can act on: drop third-party tips and warnings about other
packages' internals. Problems with the user's own data and configs are never silenced."""

from __future__ import annotations

import logging
import warnings

# Messages of Lightning and its dependencies that advertise products or describe their own
# internals; matched as substrings.
NOISE = (
    "litlogger",
    "tensorboardX",
    "LitLogger",
    "it is not recommended to provide both args and command line arguments",  # xraydiff's own in-process calls
    "therefore `best_model_score`",  # a checkpoint evaluated in another run folder, which is how validate/test work
    "your dataloader is not resumable",  # it is: EpochSampler continues the epoch (callbacks.resume says so)
    "Couldn't infer the batch indices fetched from your dataloader",  # sample's writer does not need them
)
# Warnings raised inside third-party code about third-party code (module regex, category).
THIRD_PARTY = r"(lightning|torch|monai|jsonargparse|wandb|albumentations|pydantic|pgmpy|networkx|sklearn)(\.|$)"
THIRD_PARTY_WARNINGS = ((THIRD_PARTY, DeprecationWarning), (THIRD_PARTY, FutureWarning))


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(marker in message for marker in NOISE)


# W&B's own terminal warnings about settings Lightning passes and about a run folder not yet created.
WANDB_NOISE = ("The anonymous setting has no effect", "git root")


def silence_wandb() -> None:
    """Drop ``WANDB_NOISE`` from W&B's terminal warnings (imports wandb; idempotent)."""
    import wandb

    warn = wandb.termwarn
    if getattr(warn, "_xraydiff_quiet", False):
        return

    def termwarn(string, *args, **kwargs):
        if not any(marker in str(string) for marker in WANDB_NOISE):
            warn(string, *args, **kwargs)

    termwarn._xraydiff_quiet = True
    wandb.termwarn = termwarn


def silence_third_party() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for module, category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
    for marker in NOISE:
        warnings.filterwarnings("ignore", message=f".*{marker}.*")
