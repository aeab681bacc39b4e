"""Paired DDPM of Hadzic et al.: one diffusion model over (image, heatmap) pairs."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.diffusion import DiffusionModule
from lightning_modules.generative import PairedGenerativeModule
from xraydiff.diffusion.choices import DEFAULT_SAMPLER
from xraydiff.diffusion.specs import NetworkSpec, OptimSpec, SamplingSpec, ScheduleSpec


class PairedDDPM(DiffusionModule, PairedGenerativeModule):
    """DDPM over 2-channel samples x0 = [image, heatmap] (Hadzic et al., sect. 2.1).

    Forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 2); the U-Net
    eps_theta(x_t, t) is trained with the epsilon objective ||eps - eps_theta(x_t, t)||^2 (eq. 4).
    Sampling runs the DDPM chain of T steps or DDIM in k steps, with EMA weights.

    ``prediction_type`` 'v_prediction' trains the network on v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
    instead (Salimans & Ho 2022, sect. 4). Its loss weights the x0 error by 1 + SNR(t) instead of SNR(t),
    so the model also learns x0 where the signal is almost gone: with the epsilon objective a small
    network learns the nearly empty heatmap channel's background (-1) late, and samples keep a grey
    background full of spurious blobs that the acceptance check rightly rejects.

    Args:
        image_size: (H, W) of the samples.
        heatmap_sigma: Gaussian sigma in pixels of the heatmap channel (1 in the paper).
        network: the U-Net (the paper: 3 levels of 32, 64, 128 features, 3 residual blocks each, no attention
            but MONAI's bottleneck's, which always holds residual - attention - residual).
        schedule: T = 800, linear betas 1e-4 to 0.02, and what the U-Net predicts: 'epsilon' (the paper),
            'v_prediction' or 'sample' (x0).
        sampling: the default sampler, DDIM 10 at eta 1: the cheapest whose acceptance interval overlaps DDIM
            100's on the demo DDPM, where eta 1 (the DDPM posterior noise at every one of the k steps) accepts
            more than twice the pairs of eta 0 (docs/hands.md, the sampler table); ``configs/hand/ddpm.yaml``
            keeps the paper's chain ('ddpm', T steps).
        optim: Adam (AdamW without weight decay), lr 1e-3; the EMA of the weights used for sampling, its decay
            warmed up over the first updates (without, 0.9999 keeps most of the weight on the initial network
            for the first 10 000 steps, and the acceptance measured during training samples that).
    """

    sampling_memory_format = torch.channels_last  # measured faster per call (DiffusionSamplingMixin)

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 256),
        heatmap_sigma: float = 1.0,
        network: NetworkSpec = NetworkSpec(channels=(32, 64, 128), num_res_blocks=3, num_head_channels=8),
        schedule: ScheduleSpec = ScheduleSpec(num_train_timesteps=800),
        sampling: SamplingSpec = SamplingSpec(sampler=DEFAULT_SAMPLER, sampling_steps=10, ddim_eta=1.0),
        optim: OptimSpec = OptimSpec(learning_rate=1e-3),
    ):
        super().__init__(image_size, heatmap_sigma)
        self.save_hyperparameters()
        self.init_groups(network=network, schedule=schedule, sampling=sampling, optim=optim)
        self.init_denoiser(self.build_unet(in_channels=2, out_channels=2))

    # ------------------------------------------------------------------------------ training

    def training_x0(self, batch: dict) -> Tensor:
        return self.to_pairs(batch)

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
        """Reverse diffusion from x_T ~ N(0, I) with the EMA weights: (num, 2, H, W) in [-1, 1]."""
        x_T = torch.randn((num, 2, *self.image_size), generator=generator, device=self.device)
        return self.denoise(x_T, sampler, steps, generator, progress)
