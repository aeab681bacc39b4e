"""Landmark detection as conditional heatmap generation (the landmark-diffusion paper), framework-free.

A DDPM over N heatmap channels x (one per landmark, a "few-hot" Gaussian of sigma ~1 px scaled to
[-1, 1] by ``xraydiff.heatmaps.gaussian_heatmaps(..., normalize=True)``) conditioned on the image y
by channel concatenation: the network sees [y, x_t] and t and predicts x0 directly (eq. 8-9).
Its output l are unbounded logits (the paper's tanh replaces the SiLU *before* the output
convolution, sect. 3.1); x0_hat = clamp(l, -1, 1). Training minimises (eq. 10-11)

    L = lambda_nll * E[-q . log softmax(l)] + lambda_s * E ||x0 - x0_hat||^2,

with q the target renormalised to [0, 1] and then to a distribution over pixels. The reverse process
starts where training ends, from q(x_{T-1} | x0 = the empty heatmap) (eq. 3), and blurs every x0_hat
with a Gaussian whose sigma falls linearly with t (eq. 12) before x_{t-1} is drawn from the posterior
q(x_{t-1} | x_t, x0_blurred). The paper's 13 x 13 kernel and sigma hold at its 800 x 640 images; at
other sizes both scale with the image (``blur_scaling: image``), so one config blurs the same share of
the skull at every size. The linear betas scale with T (``landmark_scheduler``), so x_{T-1} is noise.

Every random draw of sampling is per image (and per ensemble member) from its own generator, so a
prediction does not depend on the batch it was computed in, the process that computed it, or the
device: DDP and a single process give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from monai.networks.layers import gaussian_1d, separable_filtering
from monai.networks.schedulers import DDPMScheduler
from torch import Tensor

from xraydiff.diffusion import choices
from xraydiff.diffusion.choices import DEFAULT_LANDMARK_SAMPLER, ONE_CALL, LandmarkSampler
from xraydiff.diffusion.engine import check_sampling, draw_noise, reverse_process, step_rule
from xraydiff.diffusion.objectives import MAX_BETA, BetaScaling, make_scheduler
from xraydiff.errors import DataError
from xraydiff.landmarks.localization import decode_landmarks, spatial_softmax_nll
from xraydiff.options import option

X0Estimate = Literal["softmax", "clamp"]
ChainDecoding = Literal["argmax", "topk"]
# 'image': kernel and sigma given at BLUR_REFERENCE_SIZE and scaled with the image; 'pixels': as given
BlurScaling = Literal["image", "pixels"]
BLUR_KERNEL_SIZE = 13
BLUR_REFERENCE_SIZE = (800, 640)  # (H, W) of the paper's downsampled ISBI images, where 13 x 13 and sigma 14 hold
# Predicts the logits l of x0 from (x_t, t); the condition (image) is closed over.
X0Predictor = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LandmarkInference:
    """How validate / test / predict infer: the mode (a sampler of the registry serving landmark diffusion, e.g.
    'single', 'ddpm', 'ddim', 'empty'), its steps and eta, the ensemble size M, the seed of the per-image noise,
    the blur of eq. 12 (``sigma_max`` at t = T - 1 to ``sigma_min``, scaled with the image or in pixels), the x0
    each step takes from the logits (``estimate_x0``) and how a chain's final x0 is decoded ('argmax' refined,
    or 'topk': the authors' framework). A choice of each run, not a property of the trained model."""

    sampler: LandmarkSampler = DEFAULT_LANDMARK_SAMPLER
    sampling_steps: int | None = option(None, min=1)
    ddim_eta: float = option(0.0, min=0, max=1)
    ensemble: int = option(1, min=1)
    seed: int = 0
    sigma_max: float = option(14.0, above=0)
    sigma_min: float = option(1.0, min=0)
    blur_scaling: BlurScaling = "image"
    x0_estimate: X0Estimate = "softmax"
    chain_decoding: ChainDecoding = "argmax"


def check_inference(mode: str, steps: int | None, ensemble: int, num_train_timesteps: int, eta: float = 0.0) -> None:
    """DataError for a mode the registry does not give landmark diffusion, steps outside [1, T], eta outside
    [0, 1] or an ensemble below 1."""
    check_sampling(mode, steps, eta, num_train_timesteps, "landmark")
    if ensemble < 1:
        raise DataError(None, f"ensemble size M must be at least 1, got {ensemble}")


def check_blur(sigma_max: float, sigma_min: float, scaling: str = "image") -> None:
    if sigma_min < 0 or sigma_max < sigma_min:
        raise DataError(None, f"blur sigmas need 0 <= sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    check_blur_scaling(scaling)


def check_blur_scaling(scaling: str) -> None:
    if scaling not in get_args(BlurScaling):
        raise DataError(None, f"blur_scaling must be one of {get_args(BlurScaling)}, got {scaling!r}")


def landmark_scheduler(
    num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, scaling: BetaScaling = "scaled"
) -> DDPMScheduler:
    """The variance schedule of eq. 1-3: betas linear from ``beta_start`` to ``beta_end``, prediction of x0.

    The paper gives the ends of Ho et al.'s T = 1000 schedule (1e-4, 0.02) "to allow x_T to approximate an
    isotropic Gaussian"; taken literally at its T = 200, abar_{T-1} = 0.13 and x_{T-1} still holds 36 % of the
    heatmap. ``scaled`` (default) multiplies both ends by 1000 / T, as improved-diffusion's linear schedule does
    (Nichol & Dhariwal 2021; T = 200: 5e-4 -> 0.1, abar_{T-1} = 2.4e-5), capped at ``MAX_BETA``; ``literal``
    keeps them as given.
    """
    return make_scheduler(num_train_timesteps, beta_start=beta_start, beta_end=beta_end, prediction_type="sample",
                          beta_scaling=scaling)  # fmt: skip


def empty_heatmap_at(noise: Tensor, scheduler: DDPMScheduler, t: int) -> Tensor:
    """x_t ~ q(x_t | x0 = -1) = sqrt(abar_t) (-1) + sqrt(1 - abar_t) noise (eq. 3): what training showed the
    network at t for the background, which is every pixel but N. At t = T - 1 the start of every reverse
    process: not N(0, I), which under a schedule that does not end in noise is offset from every input of
    training, an offset DDIM carries down the chain."""
    empty = torch.full_like(noise, -1.0)
    return scheduler.add_noise(empty, noise, torch.full((noise.shape[0],), t, dtype=torch.long, device=noise.device))


def check_decoding(x0_estimate: str, chain_decoding: str) -> None:
    """DataError for an unknown x0 estimate of the reverse steps or decoding of a chain's final x0."""
    if x0_estimate not in get_args(X0Estimate):
        raise DataError(None, f"x0 estimate must be one of {get_args(X0Estimate)}, got {x0_estimate!r}")
    if chain_decoding not in get_args(ChainDecoding):
        raise DataError(None, f"chain_decoding must be one of {get_args(ChainDecoding)}, got {chain_decoding!r}")


def as_x0(logits: Tensor) -> Tensor:
    """x0_hat = clamp(l, -1, 1): the network's logits as a heatmap in the data's range (float32)."""
    return logits.float().clamp(-1.0, 1.0)


def softmax_heatmap(logits: Tensor) -> Tensor:
    """The distribution softmax(l) the loss trains (eq. 10) as a heatmap: softmax / max = exp(l - max l)
    per channel, mapped to [-1, 1] (peak exactly 1). Shapes: (B, N, H, W) -> (B, N, H, W), float32."""
    logits = logits.float()
    return 2.0 * torch.exp(logits - logits.amax(dim=(-1, -2), keepdim=True)) - 1.0


def estimate_x0(logits: Tensor, kind: X0Estimate = "softmax") -> Tensor:
    """The x0 the reverse process steps with: ``softmax_heatmap`` or the clamped logits ``as_x0``.

    Why not the clamp by default: L_nll fixes only the logits' differences and lambda_s = 0.01 barely
    pulls the background to -1, so the clamped logits are salt and pepper, far more pixels above 0.5 than
    the target has. Fed back into x_{t-1} that background is far from every x_t of training and each step
    made the prediction worse (docs/cephalograms.md, docs/deviations.md).
    """
    check_decoding(kind, "argmax")
    return softmax_heatmap(logits) if kind == "softmax" else as_x0(logits)


def landmark_diffusion_loss(
    logits: Tensor, x0: Tensor, lambda_nll: float = 1.0, lambda_s: float = 0.01, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(L, L_nll, L_s) of eq. 10-11, in float32 whatever the autocast dtype.

    L_nll is the spatial-softmax cross-entropy of the raw logits against q = x0 renormalised to
    [0, 1] and to sum 1 over the pixels (``xraydiff.localization.spatial_softmax_nll``); L_s the MSE
    of eq. 9 on x0_hat = ``as_x0(logits)``. Logits bounded to [-1, 1] would cap any pixel's
    probability at e^2 / (e^2 + HW - 1) (3.6e-4 on 160 x 128): L_nll could then not tell a 1 px peak
    from a plateau of radius 10 px.

    Args:
        logits: (B, N, H, W) network outputs (unbounded).
        x0: (B, N, H, W) target heatmaps in [-1, 1].
        mask: (B, N) landmarks inside the image; others contribute to neither term.
    """
    x0 = x0.float()
    unit = (x0 + 1.0) / 2.0
    target = unit / unit.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
    nll = spatial_softmax_nll(logits, target, mask)
    squared = (as_x0(logits) - x0).pow(2).mean(dim=(-1, -2))
    if mask is None:
        mse = squared.mean()
    else:
        mask = mask.float()
        mse = (squared * mask).sum() / mask.sum().clamp_min(1.0)
    return lambda_nll * nll + lambda_s * mse, nll, mse


def blur_sigma(t: int, num_train_timesteps: int, sigma_max: float, sigma_min: float) -> float:
    """Eq. 12: sigma_blur(t) = sigma_min + t (sigma_max - sigma_min) / (T - 1), for t in 0 .. T - 1."""
    if num_train_timesteps < 2:
        return float(sigma_min)
    return float(sigma_min + t * (sigma_max - sigma_min) / (num_train_timesteps - 1))


def blur_scale(image_size: Sequence[int], scaling: BlurScaling = "image") -> tuple[float, float]:
    """(s_y, s_x) by which the blur's sigma and kernel radius are multiplied at ``image_size`` (H, W): the
    image's size over ``BLUR_REFERENCE_SIZE`` for ``image`` (at 160 x 128 sigma_max 14 -> 2.8 px, 13 x 13 -> 3 x 3),
    1 for ``pixels``."""
    check_blur_scaling(scaling)
    if scaling == "pixels":
        return (1.0, 1.0)
    return (image_size[0] / BLUR_REFERENCE_SIZE[0], image_size[1] / BLUR_REFERENCE_SIZE[1])


def blur_kernel(sigma: float, scale: float = 1.0, kernel_size: int = BLUR_KERNEL_SIZE) -> Tensor | None:
    """The 1-D kernel of one axis: MONAI's sampled Gaussian of sigma x ``scale``, truncated at the radius
    round((kernel_size - 1) / 2 x scale) pixels and renormalised to sum 1 (at sigma 14 and 13 taps nearly a box
    filter); None where that leaves no blur (sigma 0 or radius 0)."""
    sigma, radius = float(sigma) * scale, int((kernel_size - 1) / 2 * scale + 0.5)
    if sigma <= 0 or radius == 0:
        return None
    kernel = gaussian_1d(torch.tensor(sigma), truncated=radius / sigma, approx="sampled", normalize=True)
    if kernel.numel() != 2 * radius + 1:
        raise DataError(None, f"blur kernel of {kernel.numel()} taps, expected {2 * radius + 1}")
    return kernel


def blur_heatmaps(
    x0: Tensor, sigma: float, kernel_size: int = BLUR_KERNEL_SIZE, scale: Sequence[float] = (1.0, 1.0)
) -> Tensor:
    """x0 (B, N, H, W) in [-1, 1] convolved per channel with a normalised Gaussian of ``kernel_size`` taps
    (``blur_kernel``, rows scaled by scale[0] and columns by scale[1]; ``blur_scale``).

    The blur acts on the [0, 1] heatmap with zero padding, so the background stays -1 up to the
    border; sigma 0 (or a kernel scaled below 3 taps on both axes) returns x0 unchanged.
    """
    identity = torch.ones(1)
    kernels = [blur_kernel(sigma, s, kernel_size) for s in scale]
    if all(k is None for k in kernels):
        return x0
    kernels = [(identity if k is None else k).to(x0.device) for k in kernels]
    unit = (x0.float() + 1.0) / 2.0
    blurred = separable_filtering(unit, kernels, mode="zeros")
    return (blurred * 2.0 - 1.0).to(x0.dtype)


def item_generators(seed: int, indices: Sequence[int], members: int) -> list[torch.Generator]:
    """One generator per (image, ensemble member), image-major: seeded from (seed, dataset index, m)."""
    return [
        torch.Generator().manual_seed((seed * 1_000_003 + int(index)) * 1_009 + m)
        for index in indices
        for m in range(members)
    ]


@torch.no_grad()
def sample_heatmaps(
    predict_x0: X0Predictor,
    shape: Sequence[int],
    scheduler: DDPMScheduler,
    mode: LandmarkSampler,
    generators: Sequence[torch.Generator],
    device: torch.device,
    steps: int | None = None,
    eta: float = 0.0,
    sigma_max: float = 14.0,
    sigma_min: float = 1.0,
    x0_estimate: X0Estimate = "softmax",
    blur_scaling: BlurScaling = "image",
) -> tuple[Tensor, Tensor, int]:
    """(x0 (B, N, H, W) in [-1, 1], the logits of the last call, network calls per image).

    Each call's logits enter as ``estimate_x0(logits, x0_estimate)``; every mode starts from
    ``empty_heatmap_at`` T - 1 (t = 0 for ``empty``), the input training showed there for the empty heatmap.

    * ``single``: x0_hat(x_{T-1}, T - 1) in one network call, unblurred.
    * ``empty``: the diagnostic call x0_hat(x_0, 0) with x_0 ~ q(x_0 | x0 = the empty heatmap): what the network
      finds from the image alone where training showed it nearly noise-free heatmaps.
    * ``ddpm``: the T-step DDPM chain, eta = 1 (every step: predict x0, blur by eq. 12, draw from the posterior).
    * ``ddim``: k = ``steps`` steps with ``eta``, blurred likewise.

    The chains run on ``xraydiff.diffusion.engine.reverse_process`` (``scheduler``: prediction type 'sample'), the
    blur (scaled to the image by ``blur_scaling``) as its x0 hook. ``shape`` is (N, H, W) per item; row i draws
    all its noise from ``generators[i]``.
    """
    num_train_timesteps = scheduler.num_train_timesteps
    noise = draw_noise(generators, (len(generators), *shape), device)
    if mode in ONE_CALL:
        t = 0 if choices.spec(mode).t_start == "zero" else num_train_timesteps - 1
        batch_t = torch.full((noise.shape[0],), t, device=device, dtype=torch.long)
        logits = predict_x0(empty_heatmap_at(noise, scheduler, t), batch_t).float()
        return estimate_x0(logits, x0_estimate), logits, 1
    x = empty_heatmap_at(noise, scheduler, num_train_timesteps - 1)
    rule = step_rule(mode, scheduler, steps, eta)
    scale = blur_scale(shape[-2:], blur_scaling)
    last: dict[str, Tensor] = {}

    def network(x_t: Tensor, t: Tensor) -> Tensor:
        last["logits"] = predict_x0(x_t, t).float()
        return last["logits"]

    def blurred(logits: Tensor, t: int) -> Tensor:
        sigma = blur_sigma(t, num_train_timesteps, sigma_max, sigma_min)
        return blur_heatmaps(estimate_x0(logits, x0_estimate), sigma, scale=scale)

    x = reverse_process(network, x, scheduler, rule, generators, x0_hook=blurred)
    return x.clamp(-1, 1), last["logits"], len(rule.timesteps)


def decode_heatmaps(x0: Tensor, window: int = 5) -> Tensor:
    """(B, N, 2) positions (x, y) in pixels of heatmaps in [-1, 1]: each channel's arg-max refined by
    its centre of mass in a ``window`` window (``decode_landmarks`` on log of the [0, 1] heatmap)."""
    unit = ((x0.float() + 1.0) / 2.0).clamp_min(1e-6)
    return decode_landmarks(unit.log(), window)


def decode_topk(x0: Tensor, k: int = 9) -> Tensor:
    """(B, N, 2) positions (x, y): the mean of each channel's ``k`` highest pixels weighted by their
    [0, 1] values (the decoding of the authors' framework, there with their own k)."""
    unit = ((x0.float() + 1.0) / 2.0).flatten(2)
    values, index = unit.topk(k, dim=-1)
    weights = values.clamp_min(1e-12) / values.clamp_min(1e-12).sum(-1, keepdim=True)
    width = x0.shape[-1]
    x = (weights * (index % width).float()).sum(-1)
    y = (weights * (index // width).float()).sum(-1)
    return torch.stack([x, y], dim=-1)


def ensemble_statistics(positions: Tensor) -> tuple[Tensor, Tensor]:
    """(mean (B, N, 2), spread (B, N)) of M ensemble members' positions (B, M, N, 2).

    The spread is the root-mean-square distance of the members from their mean (0 for M = 1), in
    the units of ``positions``.
    """
    mean = positions.mean(dim=1)
    spread = (positions - mean[:, None]).pow(2).sum(-1).mean(dim=1).sqrt()
    return mean, spread


__all__ = [
    "BLUR_KERNEL_SIZE",
    "BLUR_REFERENCE_SIZE",
    "MAX_BETA",
    "ONE_CALL",
    "BetaScaling",
    "BlurScaling",
    "ChainDecoding",
    "LandmarkInference",
    "LandmarkSampler",
    "X0Estimate",
    "as_x0",
    "blur_heatmaps",
    "blur_kernel",
    "blur_scale",
    "blur_sigma",
    "check_blur",
    "check_blur_scaling",
    "check_decoding",
    "check_inference",
    "decode_heatmaps",
    "decode_topk",
    "empty_heatmap_at",
    "ensemble_statistics",
    "estimate_x0",
    "item_generators",
    "landmark_diffusion_loss",
    "landmark_scheduler",
    "sample_heatmaps",
    "softmax_heatmap",
]
