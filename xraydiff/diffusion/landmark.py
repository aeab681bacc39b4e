"""Landmark detection as conditional heatmap generation (the landmark-diffusion paper), framework-free.

A DDPM over N heatmap channels x (one per landmark, a "few-hot" Gaussian of sigma ~1 px scaled to
[-1, 1] by ``xraydiff.heatmaps.gaussian_heatmaps(..., normalize=True)``) conditioned on the image y
by channel concatenation: the network sees [y, x_t] and t and predicts x0 directly (eq. 8-9).
Its output l are unbounded logits (the paper's tanh replaces the SiLU *before* the output
convolution, sect. 3.1); x0_hat = clamp(l, -1, 1). Training minimises (eq. 10-11)

    L = lambda_nll * E[-q . log softmax(l)] + lambda_s * E ||x0 - x0_hat||^2,

with q the target renormalised to [0, 1] and then to a distribution over pixels. The reverse process
blurs every x0_hat with a fixed 13 x 13 Gaussian whose sigma falls linearly with t (eq. 12)
before x_{t-1} is drawn from the posterior q(x_{t-1} | x_t, x0_blurred).

Every random draw of sampling is per image (and per ensemble member) from its own generator, so a
prediction does not depend on the batch it was computed in, the process that computed it, or the
device: DDP and a single process give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from monai.networks.layers import gaussian_1d, separable_filtering
from monai.networks.schedulers import DDPMScheduler
from torch import Tensor

from xraydiff.diffusion.engine import check_sampling, draw_noise, reverse_process, step_rule
from xraydiff.errors import DataError
from xraydiff.landmarks.localization import decode_landmarks, spatial_softmax_nll

LandmarkSampler = Literal["single", "ddpm", "ddim"]  # one call, the T-step chain, k DDIM steps
X0Estimate = Literal["softmax", "clamp"]
ChainDecoding = Literal["argmax", "topk"]
BLUR_KERNEL_SIZE = 13
# Predicts the logits l of x0 from (x_t, t); the condition (image) is closed over.
X0Predictor = Callable[[Tensor, Tensor], Tensor]


def check_inference(mode: str, steps: int | None, ensemble: int, num_train_timesteps: int, eta: float = 0.0) -> None:
    """DataError for an unknown mode, DDIM steps outside [1, T], eta outside [0, 1] or an ensemble below 1."""
    if mode not in get_args(LandmarkSampler):
        raise DataError(None, f"sampler must be one of {get_args(LandmarkSampler)}, got {mode!r}")
    if mode != "single":
        check_sampling(mode, steps, eta, num_train_timesteps)
    if ensemble < 1:
        raise DataError(None, f"ensemble size M must be at least 1, got {ensemble}")


def check_blur(sigma_max: float, sigma_min: float) -> None:
    if sigma_min < 0 or sigma_max < sigma_min:
        raise DataError(None, f"blur sigmas need 0 <= sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")


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
    pulls the background to -1, so the clamped logits are salt and pepper (tiny phantom model: 12 % of
    the pixels above 0.5 against 0.2 % of the target's). Fed back into x_{t-1} that background is far
    from every x_t of training and each step made the prediction worse (README, "The comparison study").
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


def blur_heatmaps(x0: Tensor, sigma: float, kernel_size: int = BLUR_KERNEL_SIZE) -> Tensor:
    """x0 (B, N, H, W) in [-1, 1] convolved per channel with a normalised ``kernel_size``^2 Gaussian.

    The blur acts on the [0, 1] heatmap with zero padding, so the background stays -1 up to the
    border; sigma 0 returns x0 unchanged. The kernel is MONAI's sampled Gaussian truncated at
    (kernel_size - 1) / 2 pixels, renormalised to sum 1 (at sigma 14 it is nearly a box filter).
    """
    if sigma <= 0:
        return x0
    radius = (kernel_size - 1) / 2
    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=radius / sigma, approx="sampled", normalize=True)
    if kernel.numel() != kernel_size:
        raise DataError(None, f"blur kernel of {kernel.numel()} taps, expected {kernel_size}")
    unit = (x0.float() + 1.0) / 2.0
    blurred = separable_filtering(unit, [kernel.to(x0.device), kernel.to(x0.device)], mode="zeros")
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
) -> tuple[Tensor, Tensor, int]:
    """(x0 (B, N, H, W) in [-1, 1], the logits of the last call, network calls per image) from x_T ~ N(0, I).

    Each call's logits enter as ``estimate_x0(logits, x0_estimate)``.

    * ``single``: x0_hat(x_T, T - 1) in one network call, unblurred.
    * ``ddpm``: the T-step DDPM chain, eta = 1 (every step: predict x0, blur by eq. 12, draw from the posterior).
    * ``ddim``: k = ``steps`` steps with ``eta``, blurred likewise.

    The chains run on ``xraydiff.diffusion.engine.reverse_process`` (``scheduler``: prediction type 'sample'), the
    blur as its x0 hook. ``shape`` is (N, H, W) per item; row i draws all its noise from ``generators[i]``.
    """
    num_train_timesteps = scheduler.num_train_timesteps
    x = draw_noise(generators, (len(generators), *shape), device)
    if mode == "single":
        t = torch.full((x.shape[0],), num_train_timesteps - 1, device=device, dtype=torch.long)
        logits = predict_x0(x, t).float()
        return estimate_x0(logits, x0_estimate), logits, 1
    rule = step_rule(mode, scheduler, steps, eta)
    last: dict[str, Tensor] = {}

    def network(x_t: Tensor, t: Tensor) -> Tensor:
        last["logits"] = predict_x0(x_t, t).float()
        return last["logits"]

    def blurred(logits: Tensor, t: int) -> Tensor:
        return blur_heatmaps(estimate_x0(logits, x0_estimate), blur_sigma(t, num_train_timesteps, sigma_max, sigma_min))

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
    "ChainDecoding",
    "LandmarkSampler",
    "X0Estimate",
    "as_x0",
    "blur_heatmaps",
    "blur_sigma",
    "check_blur",
    "check_decoding",
    "check_inference",
    "decode_heatmaps",
    "decode_topk",
    "ensemble_statistics",
    "estimate_x0",
    "item_generators",
    "landmark_diffusion_loss",
    "sample_heatmaps",
    "softmax_heatmap",
]
