"""Sample galleries of a generative model during training."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from xraydiff.data.preview import pairs_grid
from xraydiff.diffusion.choices import DEFAULT_SAMPLER


class SampleGallery(Callback):
    """Every ``every_n_epochs`` epochs, sample ``num_samples`` panels from the model and show them.

    The panels are the model's ``gallery``: generated samples (the image with its heatmap beside it
    for paired generators), or, for an autoencoder, validation images beside their reconstructions.
    The grid is written to
    ``<default_root_dir>/galleries/epoch=NNNN.png`` and logged to W&B when a WandbLogger is active.
    The samples use a fixed seed, so galleries of different epochs are comparable.

    Args:
        every_n_epochs: gallery interval in epochs.
        num_samples: samples per gallery.
        sampler, steps: passed to the model's ``generate`` (e.g. 'ddim' with 50 steps).
        seed: seed of the gallery's noise.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 8,
        sampler: str | None = DEFAULT_SAMPLER,
        steps: int | None = 50,
        seed: int = 0,
    ):
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.sampler = sampler
        self.steps = steps
        self.seed = seed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = pl_module.training
        pl_module.eval()
        reference = self.reference_images(trainer, pl_module.device)
        with torch.no_grad():
            panels = pl_module.gallery(self.num_samples, generator, self.sampler, self.steps, reference)
        pairs = panels.float().cpu().numpy()
        pl_module.train(was_training)
        path = Path(trainer.default_root_dir) / "galleries" / f"epoch={trainer.current_epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pairs_grid(pairs, path, title=f"epoch {trainer.current_epoch}, step {trainer.global_step}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", images=[str(path)], step=trainer.global_step)
        if "heatmap" in pl_module.sample_channels:
            heatmap = pairs[:, pl_module.sample_channels.index("heatmap")]
            pl_module.log("gallery/heatmap_max_mean", float(np.mean(heatmap.max(axis=(1, 2)))), rank_zero_only=True)

    def reference_images(self, trainer: L.Trainer, device: torch.device) -> torch.Tensor | None:
        """The first ``num_samples`` validation images, unaugmented (B, 1, H, W), or None without any."""
        dataset = getattr(trainer.datamodule, "dataset", None)
        if dataset is None:
            return None
        images = dataset("val", augment=False)
        count = min(self.num_samples, len(images))
        if count == 0:
            return None
        # (index, seed) keys: a plain index would draw an augmentation seed from the global random state
        return torch.stack([images[(k, 0)]["image"] for k in range(count)]).to(device)
