"""Gaussian landmark heatmaps, vectorised in torch.

Two layouts share one formula, h_i(p) = exp(-||p - l_i||^2 / (2 sigma^2)) with peak 1:
  * one channel holding all landmarks (max over i): the paired-DDPM input of Hadzic et al.,
  * N channels, one per landmark: the localizer and landmark-diffusion targets.
Landmarks that are not finite (for example not visible after augmentation) give an empty channel.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_heatmaps(
    landmarks: Tensor,
    size: tuple[int, int],
    sigma: float = 1.0,
    *,
    combine: bool = False,
    normalize: bool = False,
) -> Tensor:
    """Render Gaussian heatmaps.

    Args:
        landmarks: (..., N, 2) pixel coordinates, x = column, y = row.
        size: (H, W) of the heatmap.
        sigma: standard deviation in pixels.
        combine: one channel with all landmarks (max over landmarks) instead of N channels.
        normalize: map [0, 1] to [-1, 1] (h -> 2h - 1), the range of diffusion-model inputs.

    Returns:
        (..., N, H, W), or (..., 1, H, W) when ``combine``, float32 on the landmarks' device.
    """
    height, width = size
    coords = landmarks.float()
    valid = torch.isfinite(coords).all(dim=-1, keepdim=True)
    coords = torch.where(valid, coords, torch.full_like(coords, -1e6))
    xs = torch.arange(width, device=coords.device, dtype=torch.float32)
    ys = torch.arange(height, device=coords.device, dtype=torch.float32)
    # Separable Gaussian: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
    inv = -0.5 / float(sigma) ** 2
    gx = torch.exp(inv * (xs - coords[..., 0:1]) ** 2)  # (..., N, W)
    gy = torch.exp(inv * (ys - coords[..., 1:2]) ** 2)  # (..., N, H)
    if combine:
        heatmaps = (gy.unsqueeze(-1) * gx.unsqueeze(-2)).amax(dim=-3, keepdim=True)
    else:
        heatmaps = gy.unsqueeze(-1) * gx.unsqueeze(-2)
    return heatmaps * 2.0 - 1.0 if normalize else heatmaps
