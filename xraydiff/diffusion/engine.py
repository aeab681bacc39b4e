"""The one reverse engine of every xraydiff sampler (paired DDPM, LDM, blending, landmark diffusion):
a step rule (its timestep sequence and its update), x0 and x hooks, per-item noise. MONAI's scheduler
supplies the schedule (alphas_cumprod). The rules: the DDPM/DDIM posterior step of Song et al. (eq. 12),
and the multistep solvers of diffusers driven by the engine's x0 predictions: DPM-Solver++(2M) and its SDE
variant (Lu et al. 2022, sect. 4 and 5) and UniPC (Zhao et al. 2023, bh2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, get_args

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import Tensor
from tqdm.auto import tqdm

from xraydiff.diffusion import choices
from xraydiff.diffusion.choices import SOLVER_ORDER
from xraydiff.diffusion.objectives import Denoiser, PredictionType
from xraydiff.errors import DataError


def check_diffusion_options(
    sampler: str, prediction_type: str, ddim_eta: float, steps: int | None, num_train_timesteps: int
) -> None:
    """DataError for a prediction type, sampler, DDIM steps or eta outside what the engine implements."""
    if prediction_type not in get_args(PredictionType):
        raise DataError(None, f"prediction_type must be one of {get_args(PredictionType)}, got {prediction_type!r}")
    check_sampling(sampler, steps, ddim_eta, num_train_timesteps)


def check_sampling(
    sampler: str, steps: int | None, eta: float, num_train_timesteps: int, model: choices.Model = "image"
) -> int:
    """The number of network calls ``sampler`` makes (T for the full chain, 1 for a one-call mode, ``steps`` on a
    grid); DataError for a sampler the registry does not give ``model``, steps outside [1, T] or eta outside
    [0, 1] (eta is DDIM's; the solvers ignore it). The one check of every sampling path."""
    known = choices.names(model)
    if sampler not in known:
        raise DataError(None, f"sampler must be one of {known}, got {sampler!r}")
    if not 0.0 <= eta <= 1.0:
        raise DataError(None, f"ddim_eta must be in [0, 1], got {eta}")
    entry = choices.spec(sampler)
    if not entry.grid:
        return 1 if entry.one_call else num_train_timesteps
    if steps is None or not 1 <= steps <= num_train_timesteps:
        raise DataError(None, f"{sampler} steps must be in [1, T = {num_train_timesteps}], got {steps}")
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


class StepRule(Protocol):
    """How the engine steps: ``timesteps`` (descending) at which the network is called, and ``step`` from x at
    timesteps[i] with the (hooked) x0 prediction to the next timestep (x0 after the last); ``stochastic`` rules
    are given standard normal ``noise`` of x's shape."""

    timesteps: list[int]
    stochastic: bool

    def step(self, x: Tensor, x0: Tensor, i: int, noise: Tensor | None) -> Tensor: ...


@dataclass
class PosteriorRule:
    """DDPM (eta 1 on the full chain) and DDIM (eta 0; Song et al. eq. 12): ``posterior_step`` to the next
    timestep of ``timesteps``."""

    timesteps: list[int]
    eta: float
    alphas_cumprod: Tensor

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, x: Tensor, x0: Tensor, i: int, noise: Tensor | None) -> Tensor:
        t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
        noise = torch.zeros_like(x) if noise is None or t_prev < 0 else noise
        return posterior_step(x, x0, self.timesteps[i], t_prev, self.alphas_cumprod.to(x.device), self.eta, noise)


class SolverRule:
    """A multistep solver of diffusers (a registry entry's ``solver``) on MONAI's betas, fed the engine's x0
    predictions, so that clipping and the other x0 hooks act on what the solver integrates. ``last``: only the
    last ``last`` of the ``steps`` timesteps (a chain started part-way, as blending does)."""

    def __init__(self, name: str, scheduler: DDPMScheduler, steps: int, last: int | None = None):
        import diffusers

        entry = choices.spec(name)
        class_name, options = entry.solver
        self.solver = getattr(diffusers, class_name)(
            num_train_timesteps=scheduler.num_train_timesteps,
            trained_betas=scheduler.betas.double().cpu().numpy(),
            prediction_type="sample",
            **{"solver_order": SOLVER_ORDER, **options},
        )
        self.solver.set_timesteps(steps)
        timesteps = [int(t) for t in self.solver.timesteps]
        if last is not None:
            self.solver.set_begin_index(len(timesteps) - last)
            timesteps = timesteps[-last:]
        self.timesteps = timesteps
        self.stochastic = entry.noise == "always"

    def step(self, x: Tensor, x0: Tensor, i: int, noise: Tensor | None) -> Tensor:
        extra = {"variance_noise": noise} if self.stochastic else {}
        return self.solver.step(x0.float(), self.timesteps[i], x.float(), **extra).prev_sample.float()


def step_rule(
    sampler: str, scheduler: DDPMScheduler, steps: int | None, eta: float = 0.0, last: int | None = None
) -> StepRule:
    """The rule of the chain ``sampler`` (checked by ``check_sampling`` for every model it serves) over k =
    ``steps`` timesteps (T for the full chain), or the last ``last`` of them."""
    entry = choices.spec(sampler) if sampler in choices.REGISTRY else None
    model = entry.models[0] if entry is not None else "image"
    steps = check_sampling(sampler, steps, eta, scheduler.num_train_timesteps, model)
    if entry.rule == "solver":
        return SolverRule(sampler, scheduler, steps, last)
    if entry.rule != "posterior":
        raise DataError(None, f"{sampler} is a one-call decoding, not a chain")
    timesteps = reverse_timesteps(scheduler.num_train_timesteps, steps)
    timesteps = timesteps if last is None else timesteps[-last:]
    return PosteriorRule(timesteps, eta if entry.eta is None else entry.eta, scheduler.alphas_cumprod)


# Called with 1 after every network call of ``reverse_process``: a command's progress counts the steps of
# every chain it runs, whichever loop (Lightning's predict, the acceptance rate, blending) drives them.
_STEP_OBSERVERS: ContextVar[tuple[Callable[[int], object], ...]] = ContextVar("step_observers", default=())


@contextlib.contextmanager
def observing_steps(observer: Callable[[int], object]) -> Iterator[None]:
    """Inside the block, ``observer(1)`` runs after every step of every reverse process (e.g. ``tqdm.update``)."""
    token = _STEP_OBSERVERS.set((*_STEP_OBSERVERS.get(), observer))
    try:
        yield
    finally:
        _STEP_OBSERVERS.reset(token)


@torch.no_grad()
def reverse_process(
    denoiser: Denoiser,
    x: Tensor,
    scheduler: DDPMScheduler,
    rule: StepRule,
    noise: Noise = None,
    x0_hook: Callable[[Tensor, int], Tensor] | None = None,
    x_hook: Callable[[Tensor, int], Tensor] | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> Tensor:
    """The reverse engine of every xraydiff sampler: from x at rule.timesteps[0] to x_0, one network call per
    timestep.

    Per step: x0_hat = ``predict_x0`` of the denoiser's output (the scheduler's schedule and prediction
    type), then ``x0_hook(x0_hat, t)`` (clipping, the landmark blur of eq. 12), then the rule's step to the
    next timestep (``PosteriorRule``: DDPM, Ho et al. Algorithm 2, or DDIM, Song et al. eq. 12;
    ``SolverRule``: DPM-Solver++, UniPC), then ``x_hook(x, t_prev)`` (blending's re-imposition; t_prev = -1
    after the last step). Noise from ``noise``.
    """
    abar = scheduler.alphas_cumprod.to(x.device)
    timesteps = rule.timesteps
    x = x.float()
    for i in tqdm(range(len(timesteps)), desc=desc, disable=not progress, leave=False):
        t, t_prev = timesteps[i], timesteps[i + 1] if i + 1 < len(timesteps) else -1
        batch_t = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0 = predict_x0(denoiser(x, batch_t), x, abar[t], scheduler.prediction_type)
        if x0_hook is not None:
            x0 = x0_hook(x0, t)
        z = draw_noise(noise, x.shape, x.device) if rule.stochastic and t_prev >= 0 else None
        x = rule.step(x, x0, i, z)
        if x_hook is not None:
            x = x_hook(x, t_prev)
        for observe in _STEP_OBSERVERS.get():
            observe(1)
    return x


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    scheduler: DDPMScheduler,
    sampler: str,
    steps: int | None,
    eta: float = 0.0,
    noise: Noise = None,
    clip: bool = True,
    progress: bool = False,
    desc: str = "sampling",
) -> Tensor:
    """x_0 from x_T ~ N(0, I) by ``sampler`` of the registry (``xraydiff.diffusion.choices``) in ``steps`` steps
    (the full chain: T), ``eta`` for DDIM. With ``clip`` every x0_hat and the result are clamped to [-1, 1]
    (images; latents are not bounded)."""
    rule = step_rule(sampler, scheduler, steps, eta)
    hook = (lambda x0, t: x0.clamp(-1.0, 1.0)) if clip else None
    x = reverse_process(denoiser, x_T, scheduler, rule, noise, hook, progress=progress, desc=desc)
    return x.clamp(-1.0, 1.0) if clip else x
