"""VAE baseline of Hadzic et al.: the same (image, heatmap) pairs through a vector latent."""

from __future__ import annotations

import torch
from monai.networks.nets import VarAutoEncoder
from torch import Tensor

from lightning_modules.generative import PairedGenerativeModule
from xraydiff.diffusion.objectives import vae_loss


class PairedVAE(PairedGenerativeModule):
    """Convolutional VAE with residual units (MONAI ``VarAutoEncoder``) on 2-channel samples.

    Loss per element: L = ||x - x_hat||^2 / D + kl_weight * KL(q(z|x) || N(0, I)) / D with
    D = 2 H W, i.e. the negative ELBO of a Gaussian decoder when kl_weight = 1 (up to a constant).
    Samples decode z ~ N(0, I) from the prior; outputs pass through tanh into [-1, 1].

    Args:
        image_size: (H, W).
        heatmap_sigma: sigma in pixels of the heatmap channel.
        channels, strides: encoder features and downsampling per level (32 base features).
        num_res_units: residual units per level.
        latent_size: dimension of the vector latent (64 in the paper).
        kl_weight: weight of the KL term.
        learning_rate: Adam learning rate (1e-3).
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 256),
        heatmap_sigma: float = 1.0,
        channels: tuple[int, ...] = (32, 64, 128, 256, 256),
        strides: tuple[int, ...] = (2, 2, 2, 2, 2),
        num_res_units: int = 2,
        latent_size: int = 64,
        kl_weight: float = 1.0,
        learning_rate: float = 1e-3,
    ):
        super().__init__(image_size, heatmap_sigma)
        self.save_hyperparameters()
        self.net = VarAutoEncoder(
            spatial_dims=2,
            in_shape=(2, *self.image_size),
            out_channels=2,
            latent_size=latent_size,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            use_sigmoid=False,
        )

    def encode(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior moments (mu, logvar) of q(z|x0), each (B, latent_size), in float32; logvar clamped to
        [-30, 20] as in the latent-diffusion autoencoders (Rombach et al.), so that exp(logvar) stays finite."""
        mu, logvar = self.net.encode_forward(x0)
        return mu.float(), logvar.float().clamp(-30.0, 20.0)

    def vae_loss(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(total, reconstruction, KL), each per element of x0, with z = mu + sigma * eps (Kingma & Welling,
        eq. 10) in training and evaluation alike (MONAI's eval mode would decode mu + sigma)."""
        mu, logvar = self.encode(x0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        reconstruction = self.net.decode_forward(z, use_sigmoid=False)
        return vae_loss(torch.tanh(reconstruction.float()), x0, mu, logvar, self.hparams.kl_weight)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, recon, kl = self.vae_loss(self.to_pairs(batch))
        if not torch.isfinite(loss):
            # before the update: one non-finite gradient, clipped, turns every weight into NaN for good
            raise FloatingPointError(
                f"PairedVAE: non-finite loss at step {self.global_step} (reconstruction {recon}, KL {kl}); "
                "resume from the last checkpoint, e.g. with a lower learning rate"
            )
        self.log_dict({"train/loss": loss, "train/reconstruction": recon, "train/kl": kl}, prog_bar=False)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> Tensor:
        # The encoder's reparameterisation draws from a fixed seed per batch so that evaluation
        # is comparable across epochs and leaves the global random state untouched.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(batch_idx)
            loss, recon, kl = self.vae_loss(self.to_pairs(batch))
        size = batch["image"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=size)
        self.log(f"{stage}/reconstruction", recon, sync_dist=True, batch_size=size)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)

    @torch.no_grad()
    def generate(
        self,
        num: int,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Decode z ~ N(0, I): (num, 2, H, W) in [-1, 1]."""
        z = torch.randn((num, self.hparams.latent_size), generator=generator, device=self.device)
        return torch.tanh(self.net.decode_forward(z, use_sigmoid=False).float())
