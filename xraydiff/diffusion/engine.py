"""The one reverse engine of every xraydiff sampler (paired DDPM, LDM, blending, landmark diffusion):
a timestep sequence, the DDPM/DDIM posterior step of Song et al. (eq. 12), x0 and x hooks, per-item noise.
MONAI's scheduler supplies the schedule (alphas_cumprod); the engine does the stepping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import Tensor
from tqdm.auto import tqdm

from xraydiff.diffusion.objectives import Denoiser, PredictionType
from xraydiff.errors import DataError

Sampler = Literal["ddpm", "ddim"]


def check_diffusion_options(
    sampler: str, prediction_type: str, ddim_eta: float, steps: int | None, num_train_timesteps: int
) -> None:
    """DataError for a prediction type, sampler, DDIM steps or eta outside what the engine implements."""
    if prediction_type not in get_args(PredictionType):
        raise DataError(None, f"prediction_type must be one of {get_args(PredictionType)}, got {prediction_type!r}")
    check_sampling(sampler, steps, ddim_eta, num_train_timesteps)


def check_sampling(sampler: str, steps: int | None, eta: float, num_train_timesteps: int) -> int:
    """The number of reverse steps ``sampler`` takes (T for 'ddpm', ``steps`` for 'ddim'); DataError for an
    unknown sampler, DDIM steps outside [1, T] or eta outside [0, 1]. The one check of every sampling path."""
    if sampler not in get_args(Sampler):
        raise DataError(None, f"sampler must be one of {get_args(Sampler)}, got {sampler!r}")
    if not 0.0 <= eta <= 1.0:
        raise DataError(None, f"ddim_eta must be in [0, 1], got {eta}")
    if sampler == "ddpm":
        return num_train_timesteps
    if steps is None or not 1 <= steps <= num_train_timesteps:
        raise DataError(None, f"DDIM steps must be in [1, T = {num_train_timesteps}], got {steps}")
    return int(steps)


def reverse_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The sub-sequence tau of the reverse process, descending from T - 1 to 0 (Song et al., sect. 4.2):
    round(linspace(T - 1, 0, k)), MONAI's DDIM grid; all of T - 1 .. 0 when k = T.

    Each step goes to the *next* element (then to -1, i.e. x0). MONAI 1.6's ``DDIMScheduler.step`` instead
    steps to t - T // k, which is not its own next timestep unless k divides T - 1: at k = 10, T = 800 the
    last network call saw x at noise level 9 that was never removed. So the engine keeps MONAI's schedule
    arithmetic (alphas_cumprod, add_noise) and steps with ``posterior_step``."""
    return torch.linspace(num_train_timesteps - 1, 0, steps).round().long().tolist()


def predict_x0(prediction: Tensor, x_t: Tensor, abar_t: Tensor, prediction_type: str) -> Tensor:
    """x0_hat from a network output of ``prediction_type`` at x_t (abar_t broadcastable): epsilon
    (x_t - sqrt(1 - abar) eps) / sqrt(abar) (Ho et al., eq. 15), v: sqrt(abar) x_t - sqrt(1 - abar) v
    (Salimans & Ho, sect. 4), sample: the output itself. float32."""
    prediction, x_t, abar_t = prediction.float(), x_t.float(), abar_t.float()
    if prediction_type == "epsilon":
        return (x_t - (1 - abar_t).sqrt() * prediction) / abar_t.sqrt()
    if prediction_type == "v_prediction":
        return abar_t.sqrt() * x_t - (1 - abar_t).sqrt() * prediction
    if prediction_type == "sample":
        return prediction
    raise DataError(None, f"prediction_type must be one of {get_args(PredictionType)}, got {prediction_type!r}")


def posterior_step(
    x_t: Tensor, x0: Tensor, t: int, t_prev: int, alphas_cumprod: Tensor, eta: float, noise: Tensor
) -> Tensor:
    """x_{t_prev} from x_t and a prediction of x0 (Song et al. 2021, eq. 12):

        x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps_hat + s z,
        eps_hat = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t),
        s^2 = eta^2 (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev),

    with abar_prev = 1 for t_prev < 0. With eta = 1 and t_prev = t - 1 this is a draw from the DDPM
    posterior q(x_{t-1} | x_t, x0) of Ho et al. (eq. 6-7, variance beta~_t, MONAI's 'fixed_small'); eta = 0
    is DDIM. eps_hat comes from the x0 actually used (clipped, blurred), so x stays on that x0's trajectory.
    """
    abar_t = alphas_cumprod[t].double()
    abar_prev = alphas_cumprod[t_prev].double() if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    x_t, x0 = x_t.float(), x0.float()
    eps_hat = (x_t - abar_t.sqrt().float() * x0) / (1 - abar_t).sqrt().float()
    variance = eta**2 * (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    direction = (1 - abar_prev - variance).clamp_min(0).sqrt()
    return abar_prev.sqrt().float() * x0 + direction.float() * eps_hat + variance.sqrt().float() * noise.float()


# A sampler's randomness: one generator for the batch, one per item (a prediction independent of its
# batch, process and device), or None (the global state).
Noise = torch.Generator | Sequence[torch.Generator] | None


def draw_noise(noise: Noise, shape: Sequence[int], device: torch.device) -> Tensor:
    """Standard normal draws of ``shape`` (batch first): from the one generator, or row i from noise[i]
    (drawn on the CPU, so the numbers do not depend on the device)."""
    if noise is None or isinstance(noise, torch.Generator):
        return torch.randn(tuple(shape), generator=noise, device=device)
    if len(noise) != shape[0]:
        raise DataError(None, f"{len(noise)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in noise]).to(device)


@torch.no_grad()
def reverse_process(
    denoiser: Denoiser,
    x: Tensor,
    scheduler: DDPMScheduler,
    timesteps: Sequence[int],
    eta: float = 0.0,
    noise: Noise = None,
    x0_hook: Callable[[Tensor, int], Tensor] | None = None,
    x_hook: Callable[[Tensor, int], Tensor] | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> Tensor:
    """The reverse engine of every xraydiff sampler: from x at timesteps[0] to x_0 through ``timesteps``
    (descending, e.g. ``reverse_timesteps``), one network call each.

    Per step: x0_hat = ``predict_x0`` of the denoiser's output (the scheduler's schedule and prediction
    type), then ``x0_hook(x0_hat, t)`` (clipping, the landmark blur of eq. 12), then ``posterior_step`` to
    the next timestep with ``eta`` (1 on the full chain: the DDPM sampler, Ho et al. Algorithm 2; 0: DDIM,
    Song et al. eq. 12), then ``x_hook(x, t_prev)`` (blending's re-imposition). Noise from ``noise``.
    """
    abar = scheduler.alphas_cumprod.to(x.device)
    timesteps = [int(t) for t in timesteps]
    x = x.float()
    for t, t_prev in tqdm(
        list(zip(timesteps, [*timesteps[1:], -1], strict=True)), desc=desc, disable=not progress, leave=False
    ):
        batch_t = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0 = predict_x0(denoiser(x, batch_t), x, abar[t], scheduler.prediction_type)
        if x0_hook is not None:
            x0 = x0_hook(x0, t)
        z = draw_noise(noise, x.shape, x.device) if eta > 0 and t_prev >= 0 else torch.zeros_like(x)
        x = posterior_step(x, x0, t, t_prev, abar, eta, z)
        if x_hook is not None:
            x = x_hook(x, t_prev)
    return x


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    scheduler: DDPMScheduler,
    sampler: Sampler,
    steps: int | None,
    eta: float = 0.0,
    noise: Noise = None,
    clip: bool = True,
    progress: bool = False,
    desc: str = "sampling",
) -> Tensor:
    """x_0 from x_T ~ N(0, I): 'ddpm' the T-step chain (eta 1), 'ddim' ``steps`` steps with ``eta``. With
    ``clip`` every x0_hat and the result are clamped to [-1, 1] (images; latents are not bounded)."""
    steps = check_sampling(sampler, steps, eta, scheduler.num_train_timesteps)
    eta = 1.0 if sampler == "ddpm" else eta
    hook = (lambda x0, t: x0.clamp(-1.0, 1.0)) if clip else None
    timesteps = reverse_timesteps(scheduler.num_train_timesteps, steps)
    x = reverse_process(denoiser, x_T, scheduler, timesteps, eta, noise, hook, progress=progress, desc=desc)
    return x.clamp(-1.0, 1.0) if clip else x
