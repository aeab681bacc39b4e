"""The forward process and the training objectives of xraydiff's generative models (Ho et al. 2020;
Salimans & Ho 2022; Kingma & Welling 2014), framework-free. MONAI's ``DDPMScheduler`` holds the variance
schedule and the forward noising. A ``denoiser`` is any callable ``(x_t, t) -> prediction`` whose prediction
is of the scheduler's ``prediction_type`` (epsilon, v or x0), so conditional models close over their condition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler
from torch import Tensor

from xraydiff.diffusion.specs import ScheduleSpec
from xraydiff.errors import DataError

PredictionType = Literal["epsilon", "v_prediction", "sample"]
# 'scaled': the linear betas' ends x 1000 / T (Nichol & Dhariwal's improved-diffusion); 'literal': as given
BetaScaling = Literal["scaled", "literal"]
MAX_BETA = 0.999  # a scaled beta never reaches 1 (alpha_t = 0 would end the chain in one step)
Denoiser = Callable[[Tensor, Tensor], Tensor]


def make_scheduler(
    num_train_timesteps: int,
    beta_schedule: str = "linear_beta",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: PredictionType = "epsilon",
    clip_sample: bool = True,
    beta_scaling: BetaScaling = "literal",
) -> DDPMScheduler:
    """MONAI's scheduler holding the variance schedule beta_1..beta_T (linear in the papers), its
    alphas_cumprod and the forward noising; ``reverse_process`` steps with it whatever the sampler.

    ``beta_scaling`` 'scaled' multiplies both ends by 1000 / T, as improved-diffusion's linear schedule does
    (Nichol & Dhariwal 2021), capped at ``MAX_BETA``, so that x_{T-1} is noise at any T; 'literal' keeps them."""
    if beta_scaling not in get_args(BetaScaling):
        raise DataError(None, f"beta_scaling must be one of {get_args(BetaScaling)}, got {beta_scaling!r}")
    if beta_scaling == "scaled":
        factor = 1000.0 / num_train_timesteps
        beta_start, beta_end = min(beta_start * factor, MAX_BETA), min(beta_end * factor, MAX_BETA)
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        clip_sample=clip_sample,
        prediction_type=prediction_type,
    )


def scheduler_of(schedule: ScheduleSpec, clip_sample: bool = True) -> DDPMScheduler:
    """``make_scheduler`` of a model's schedule options."""
    s = schedule
    return make_scheduler(
        s.num_train_timesteps, s.beta_schedule, s.beta_start, s.beta_end, s.prediction_type, clip_sample, s.beta_scaling
    )


def regression_target(scheduler: DDPMScheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What the network regresses: eps, v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022,
    sect. 4) or x0, by the scheduler's ``prediction_type``."""
    prediction_type = scheduler.prediction_type
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return x0 if prediction_type == "sample" else noise


def diffusion_loss(
    denoiser: Denoiser, x0: Tensor, scheduler: DDPMScheduler, generator: torch.Generator | None = None
) -> Tensor:
    """E_{t, x0, eps} ||target - f_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 (Ho et al., eq. 14;
    Hadzic et al., eq. 4), with t ~ U{0, T - 1} and the target of ``regression_target``.

    The squared error is taken in float32 whatever the autocast dtype of the network.
    """
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    t = torch.randint(0, scheduler.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    xt = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(denoiser(xt, t).float(), regression_target(scheduler, x0, noise, t))


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over the latent (Kingma & Welling, appendix B)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).flatten(1).sum(dim=1)


def vae_loss(reconstruction: Tensor, x0: Tensor, mu: Tensor, logvar: Tensor, kl_weight: float = 1.0):
    """(total, reconstruction, KL), each per element of a sample: ||x - x_hat||^2 / D + kl_weight KL / D,
    the negative ELBO of a Gaussian decoder up to a constant when kl_weight = 1 (D = elements per sample)."""
    elements = x0[0].numel()
    recon = F.mse_loss(reconstruction.float(), x0.float())
    kl = gaussian_kl(mu, logvar).mean() / elements
    return recon + kl_weight * kl, recon, kl
