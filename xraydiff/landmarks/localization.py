"""Heatmap-regression landmark localisation: targets, the spatial-softmax loss and decoding.

The network outputs one logit map per landmark. Its spatial softmax p_i(x) is a distribution over
pixels, trained by the negative log-likelihood against the target distribution q_i (a normalised
Gaussian at the landmark; Thaler et al., McCouat and Glocker; eq. 10 of the landmark-diffusion
paper):

    L_NLL = - 1/N sum_i sum_x q_i(x) log p_i(x)

Decoding takes the arg-max of each map and refines it to sub-pixel precision by a local
soft-argmax: the expectation of x under p_i restricted to a window around the arg-max.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from xraydiff.landmarks.heatmaps import gaussian_heatmaps


def target_distributions(landmarks: Tensor, size: tuple[int, int], sigma: float) -> Tensor:
    """q_i: (B, N, H, W) Gaussians at the landmarks, each normalised to sum 1 over the image.

    A landmark outside the image (or not finite) gives an all-zero map (it is masked in the loss).
    """
    maps = gaussian_heatmaps(landmarks, size, sigma)
    return maps / maps.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-12)


def spatial_softmax_nll(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over landmarks (and batch) of -sum_x q(x) log softmax(logits)(x).

    Args:
        logits: (B, N, H, W) network outputs.
        target: (B, N, H, W) target distributions (each sums to 1).
        mask: (B, N) landmarks to include (e.g. visible ones); default all.
    """
    log_p = F.log_softmax(logits.float().flatten(2), dim=-1)
    nll = -(target.flatten(2) * log_p).sum(-1)  # (B, N)
    if mask is None:
        return nll.mean()
    mask = mask.float()
    return (nll * mask).sum() / mask.sum().clamp_min(1.0)


def heatmap_mse(logits: Tensor, target: Tensor, sigma: float, mask: Tensor | None = None) -> Tensor:
    """MSE between predicted and target distributions scaled by 2 pi sigma^2 (peaks near 1)."""
    scale = 2 * math.pi * sigma**2
    probability = F.softmax(logits.float().flatten(2), dim=-1).view_as(target)
    error = ((probability - target) * scale).pow(2).mean(dim=(-1, -2))  # (B, N)
    if mask is None:
        return error.mean()
    mask = mask.float()
    return (error * mask).sum() / mask.sum().clamp_min(1.0)


def centred_argmax(flat: Tensor, width: int, tolerance: float = 1e-5) -> Tensor:
    """(...,) flat index of the maximum of each row of ``flat`` (..., H * W): among values within ``tolerance``
    of it, the one nearest their centroid. A plateau (a clamped heatmap's flat 1.0) is then decoded at its
    centre; ``argmax`` would return its first pixel, the top left corner."""
    index = torch.arange(flat.shape[-1], device=flat.device)
    rows, cols = (index // width).float(), (index % width).float()
    tied = (flat >= flat.amax(dim=-1, keepdim=True) - tolerance).float()
    count = tied.sum(dim=-1, keepdim=True)
    centre_row, centre_col = (tied * rows).sum(-1, keepdim=True) / count, (tied * cols).sum(-1, keepdim=True) / count
    distance = (rows - centre_row) ** 2 + (cols - centre_col) ** 2
    return distance.masked_fill(tied == 0, float("inf")).argmin(dim=-1)


def decode_landmarks(logits: Tensor, window: int = 5) -> Tensor:
    """(B, N, 2) sub-pixel positions (x, y): the arg-max (ties: ``centred_argmax``) refined by a soft-argmax
    in a window around it."""
    batch, count, height, width = logits.shape
    flat = logits.float().flatten(2)
    peak = centred_argmax(flat, width)
    row, col = peak // width, peak % width
    half = window // 2
    offsets = torch.arange(-half, half + 1, device=logits.device)
    rows = (row[..., None] + offsets).clamp(0, height - 1)  # (B, N, w)
    cols = (col[..., None] + offsets).clamp(0, width - 1)
    index = rows[..., :, None] * width + cols[..., None, :]  # (B, N, w, w)
    local = flat.gather(2, index.flatten(2)).view(batch, count, window, window)
    weights = F.softmax(local.flatten(2), dim=-1).view_as(local)
    y = (weights * rows[..., :, None].float()).sum(dim=(-1, -2))
    x = (weights * cols[..., None, :].float()).sum(dim=(-1, -2))
    return torch.stack([x, y], dim=-1)
