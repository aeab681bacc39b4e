"""Latent diffusion model (Rombach et al. 2022; Medfusion): a DDPM in the latent space of a frozen autoencoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_modules.autoencoder import read_first_stage
from lightning_modules.diffusion import DiffusionModule
from lightning_modules.generative import GenerativeModule
from xraydiff.diffusion.blending import blend_denoise
from xraydiff.diffusion.choices import DEFAULT_SAMPLER
from xraydiff.diffusion.latent import (
    PosteriorCache,
    check_first_stage,
    first_stage_from_architecture,
    posterior_moments,
    scale_factor_from_moments,
)
from xraydiff.diffusion.specs import NetworkSpec, OptimSpec, SamplingSpec, ScheduleSpec
from xraydiff.errors import DataError


class LatentDiffusion(DiffusionModule, GenerativeModule):
    """Unconditional DDPM on the scaled latents z = s E(x) of a frozen ``LatentAutoencoder`` (Rombach et al.,
    sect. 3.2; Lim et al. build on Medfusion, which is this model).

    Training: z ~ q(z | x) from the autoencoder (in float32), the epsilon objective
    ||eps - eps_theta(sqrt(abar_t) z + sqrt(1 - abar_t) eps, t)||^2 (Ho et al., eq. 14) with MONAI's
    ``DiffusionModelUNet``, AdamW, EMA weights for sampling. The autoencoder is loaded from
    ``autoencoder_ckpt`` when the model is built, frozen, never optimised, and saved inside this model's
    checkpoints (so an LDM checkpoint samples on its own). The latent scale s = 1 / std of the training
    latents (Rombach et al., appendix G) is estimated once, at the start of the first training, from the
    posterior moments (E z = z_mu, E z^2 = z_mu^2 + z_sigma^2) of the first ``scale_images`` training
    images, summed over DDP ranks so that every rank uses the same value, and stored in the checkpoint.

    Sampling: z_T ~ N(0, I), the DDPM chain of T steps or DDIM in k steps with the EMA weights, then
    x = D(z_0 / s) in float32, clamped to [-1, 1]. MONAI's ``LatentDiffusionInferer`` does the same encode /
    noise / predict and decode, but draws from the global random state (no per-batch seed, so a sample would
    depend on the device count) and runs the autoencoder under the caller's autocast; ``xraydiff.diffusion``
    does both the pixel-space and this model's sampling instead.

    Shapes: images (B, 1, H, W) in [-1, 1]; latents (B, latent_channels, H / f, W / f).

    Args:
        autoencoder_ckpt: checkpoint of a trained ``LatentAutoencoder`` (required for a new model).
        image_size: (H, W) of the images; the latent shape follows from the autoencoder.
        latent_channels: the autoencoder's latent channels (checked against the checkpoint).
        network: the denoising U-Net (MONAI ``DiffusionModelUNet``; attention at the two lowest of 4 levels).
        schedule: T = 1000, linear betas, the epsilon objective (Lim et al. / Medfusion).
        sampling: default sampler, its steps k and DDIM's eta (DDIM 50, eta 0).
        optim: AdamW (lr 1e-4, weight decay 1e-2) and the EMA of the U-Net's weights used for sampling.
        scale_images: training images whose latents estimate the scale factor.
        cache_latents: encode the training images once, at the start of fit, and draw z ~ q(z | x) from the
            stored posterior (z_mu, z_sigma) at every step instead of running the encoder: the same latent
            distribution, the denoiser's step without the encoder's cost (``benchmarks/ldm.py``). Only for
            training data without augmentation (refused otherwise).
        autoencoder: the autoencoder's architecture, recorded from ``autoencoder_ckpt`` (set automatically;
            a saved LDM rebuilds its autoencoder from it without the autoencoder's file).
    """

    sample_channels = ("image",)
    clip_sample = False  # unit-variance latents are not bounded by [-1, 1]

    def __init__(
        self,
        autoencoder_ckpt: str | None = None,
        image_size: tuple[int, int] = (256, 512),
        latent_channels: int = 4,
        network: NetworkSpec = NetworkSpec(
            channels=(128, 256, 256, 512), num_res_blocks=2, attention_levels=(False, False, True, True)
        ),
        schedule: ScheduleSpec = ScheduleSpec(num_train_timesteps=1000),
        sampling: SamplingSpec = SamplingSpec(sampler=DEFAULT_SAMPLER, sampling_steps=50),
        optim: OptimSpec = OptimSpec(learning_rate=1e-4, weight_decay=1e-2),
        scale_images: int = 64,
        cache_latents: bool = False,
        autoencoder: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.init_groups(network=network, schedule=schedule, sampling=sampling, optim=optim)
        if scale_images < 1:
            raise DataError(None, f"scale_images must be at least 1, got {scale_images}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        weights = None
        if autoencoder is None:
            autoencoder, weights = read_first_stage(autoencoder_ckpt)
            self.hparams["autoencoder"] = autoencoder
        source = autoencoder_ckpt or "the autoencoder"
        self.latent_shape = check_first_stage(autoencoder, self.image_size, latent_channels, source)
        self.first_stage = first_stage_from_architecture(autoencoder)
        if weights is not None:
            self.first_stage.load_state_dict(weights)
        self.first_stage.requires_grad_(False).eval()
        self.register_buffer("scale_factor", torch.zeros((), dtype=torch.float32))  # 0: not estimated yet
        self.init_denoiser(self.build_unet(in_channels=latent_channels, out_channels=latent_channels))
        self.posterior_cache: PosteriorCache | None = None  # the training posteriors (cache_latents)

    def train(self, mode: bool = True):
        super().train(mode)
        self.first_stage.eval()  # frozen: never in training mode
        return self

    # ------------------------------------------------------------------------------ latents

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents s z, z ~ q(z | x) (B, C, h, w)."""
        return self.first_stage.encode(images, generator) * self.scale_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Images D(z / s) (B, 1, H, W), clamped to [-1, 1]."""
        if not float(self.scale_factor) > 0:
            raise DataError(None, "the LDM has no latent scale factor yet: it was never trained")
        return self.first_stage.decode(latents / self.scale_factor).clamp(-1.0, 1.0)

    def latents(self, images: Tensor) -> Tensor:
        """Scaled posterior means s mu(x) (B, C, h, w): the deterministic latents the blending ranks and mixes."""
        return self.first_stage.posterior(images)[0] * self.scale_factor

    @torch.no_grad()
    def blend(
        self,
        z_init: Tensor,
        steps: int,
        strength: float | None,
        generator: torch.Generator | None = None,
        reimpose: tuple[Tensor, Tensor] | None = None,
        sampler: str = DEFAULT_SAMPLER,
    ) -> Tensor:
        """Images (N, 1, H, W) in [-1, 1] from blended latents z_init (N, C, h, w): noised to strength * T
        (None: steps / T, Lim et al. read literally), ``steps`` steps of ``sampler`` (Lim et al.: DDIM) with the
        EMA weights, decoded; see ``xraydiff.diffusion.blending.blend_denoise``."""
        z_0 = blend_denoise(
            lambda x, t: self.ema(x, timesteps=t),
            z_init,
            self.scheduler,
            steps,
            strength,
            generator,
            eta=self.sampling.ddim_eta,
            reimpose=reimpose,
            sampler=sampler,
        )
        return self.decode(z_0)

    def estimate_scale_factor(self) -> float:
        """s = 1 / std of the latents of the first ``scale_images`` training images (this rank's share),
        from the moments summed over all ranks."""
        trainer = self.trainer
        quota = math.ceil(self.hparams.scale_images / trainer.world_size)
        batches = (self._images(batch).to(self.device) for batch in trainer.datamodule.train_dataloader())
        moments = trainer.strategy.reduce(posterior_moments(self.first_stage, batches, quota), reduce_op="sum")
        return scale_factor_from_moments(moments)

    def _ensure_scale_factor(self) -> None:
        if float(self.scale_factor) == 0.0:
            self.scale_factor.fill_(self.estimate_scale_factor())

    def on_fit_start(self) -> None:
        # After a resumed run's weights are restored (the stored value stays) and before the sanity check.
        self._ensure_scale_factor()
        self.print(f"xraydiff: latent scale factor {float(self.scale_factor):.6g}")
        if self.hparams.cache_latents:
            datamodule = self.trainer.datamodule
            if getattr(datamodule, "augmentation", None) is not None:
                raise DataError(
                    None,
                    "cache_latents: true needs training data without augmentation (data augmentation: none): "
                    "an augmented image has another latent at every step",
                )
            loader = datamodule.train_dataloader()
            self.posterior_cache = PosteriorCache.encode(
                self.first_stage, loader.dataset, loader.batch_size, self.device
            )
            self.print(f"xraydiff: cached the latents of {len(self.posterior_cache)} training images")

    def on_fit_end(self) -> None:
        self.posterior_cache = None

    def on_validation_start(self) -> None:
        self._ensure_scale_factor()

    def on_test_start(self) -> None:
        self._ensure_scale_factor()

    # ------------------------------------------------------------------------------ training

    def _training_latents(self, batch: dict) -> Tensor:
        """s z, z ~ q(z | x) of the batch: from the encoder, or from the cached posteriors (the same draw)."""
        if self.posterior_cache is None:
            return self.encode(self._images(batch))
        return self.posterior_cache.draw(batch["index"]) * self.scale_factor

    def training_x0(self, batch: dict) -> Tensor:
        return self._training_latents(batch)

    def evaluation_x0(self, batch: dict, generator: torch.Generator) -> Tensor:
        return self.encode(self._images(batch), generator)

    # ------------------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        num: int,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Images (num, 1, H, W) in [-1, 1]: z_T ~ N(0, I), reverse diffusion, decode."""
        z_T = torch.randn((num, *self.latent_shape), generator=generator, device=self.device)
        return self.decode(self.denoise(z_T, sampler, steps, generator, progress))
