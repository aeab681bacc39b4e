"""Paired DDPM of Hadzic et al.: one diffusion model over (image, heatmap) pairs."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from lightning_modules.generative import DiffusionSamplingMixin, PairedGenerativeModule, WeightAverageMixin
from xraydiff.diffusion.choices import DEFAULT_SAMPLER, Sampler
from xraydiff.diffusion.engine import check_diffusion_options
from xraydiff.diffusion.objectives import PredictionType, diffusion_loss


class PairedDDPM(DiffusionSamplingMixin, WeightAverageMixin, PairedGenerativeModule):
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
        channels: U-Net features per level (the paper: 3 levels starting at 32).
        num_res_blocks: residual blocks per level (3 in the paper).
        attention_levels: self-attention per level (the paper: none; MONAI's bottleneck always
            holds residual - attention - residual).
        norm_num_groups: GroupNorm groups.
        use_flash_attention: fused scaled-dot-product attention in the bottleneck (the same function, faster
            and leaner than the explicit attention matrix).
        num_train_timesteps: T (800 in the paper).
        beta_start, beta_end, beta_schedule: the variance schedule (linear 1e-4 to 0.02).
        prediction_type: what the U-Net predicts, 'epsilon' (the paper), 'v_prediction' or 'sample' (x0).
        learning_rate: Adam learning rate (1e-3).
        ema_decay: decay of the exponential moving average of the weights used for sampling.
        ema_warmup: warm the average's decay up over the first updates (see ``init_weight_average``): without
            it, 0.9999 keeps most of the weight on the initial network for the first 10 000 steps, and the
            acceptance measured during training samples that.
        sampler: default sampler, 'ddpm' (T steps, the paper's), 'ddim', or a solver: 'dpmpp_2m', 'dpmpp_2m_sde',
            'unipc'. The default, DDIM 10 at eta 1, is the cheapest whose acceptance interval overlaps DDIM 100's
            on the demo DDPM (docs/hands.md); ``configs/hand/ddpm.yaml`` keeps the paper's chain.
        sampling_steps: steps k of every sampler but 'ddpm' (default 10).
        ddim_eta: DDIM's eta (Song et al., eq. 16): 0 is the deterministic DDIM, 1 (default) adds the DDPM
            posterior noise at every one of the k steps, which corrects the errors of earlier steps: on the demo
            DDPM eta 1 accepts more than twice the pairs of eta 0 at 10 steps (docs/hands.md, the sampler table),
            and the study's default DDIM 10 runs at the model's eta.
    """

    sampling_memory_format = torch.channels_last  # measured faster per call (DiffusionSamplingMixin)

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 256),
        heatmap_sigma: float = 1.0,
        channels: tuple[int, ...] = (32, 64, 128),
        num_res_blocks: int = 3,
        attention_levels: tuple[bool, ...] | None = None,
        norm_num_groups: int = 32,
        use_flash_attention: bool = True,
        num_train_timesteps: int = 800,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear_beta",
        prediction_type: PredictionType = "epsilon",
        learning_rate: float = 1e-3,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        sampler: Sampler = DEFAULT_SAMPLER,
        sampling_steps: int = 10,
        ddim_eta: float = 1.0,
    ):
        super().__init__(image_size, heatmap_sigma)
        self.save_hyperparameters()
        check_diffusion_options(sampler, prediction_type, ddim_eta, sampling_steps, num_train_timesteps)
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=2,
            out_channels=2,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels or (False,) * len(channels)),
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            use_flash_attention=use_flash_attention,
        )
        self.init_weight_average("unet", ema_decay, ema_warmup)
        self.scheduler = self.make_scheduler()

    # ------------------------------------------------------------------------------ training

    def diffusion_loss(
        self, x0: Tensor, model: nn.Module | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """The objective of ``prediction_type`` (eq. 4 for epsilon) on pairs x0, see ``xraydiff.diffusion``."""
        network = model or self.unet
        return diffusion_loss(lambda x, t: network(x, timesteps=t), x0, self.scheduler, generator)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(self.to_pairs(batch))
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> Tensor:
        # A fixed generator per batch makes the loss comparable across epochs and leaves the
        # global random state (and thus exact resumption) untouched.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.diffusion_loss(self.to_pairs(batch), self.ema.module, generator)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.unet.parameters(), lr=self.hparams.learning_rate)

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
