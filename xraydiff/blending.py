"""Anatomy-guided latent blending (Lim et al., sect. 2 and Appendix A), framework-free.

A labelled radiograph X_a with binary mask G_a and an unlabelled X_u similar to it become one synthetic
pair: their latents are blended so that the structure region comes from z_a and the rest from z_u, the
blend is noised and denoised by the LDM, and the decoded image S_a inherits the label G_a.

Shapes: latents (C, h, w) or (N, C, h, w); masks (H, W) in image pixels, latent masks (h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from xraydiff.errors import DataError


def latent_ssim(z_a: Tensor, pool: Tensor, data_range: float, chunk: int = 256, kernel_size: int = 11) -> Tensor:
    """SSIM (Wang et al. 2004; torchmetrics) between the latent z_a (C, h, w) and each latent of ``pool``
    (N, C, h, w), computed per channel and averaged over channels and positions: (N,) scores.

    ``data_range`` fixes SSIM's stabilising constants for every pair alike (latents are unbounded). The
    pool is scored ``chunk`` latents at a time, so memory stays linear in N. The Gaussian window shrinks
    (to the largest odd size that fits) on latents smaller than ``kernel_size``.
    """
    if z_a.dim() != 3 or pool.dim() != 4 or pool.shape[1:] != z_a.shape:
        raise DataError(None, f"latent shapes differ: labelled {tuple(z_a.shape)}, unlabelled {tuple(pool.shape[1:])}")
    size = min(kernel_size, *z_a.shape[-2:])
    size -= 1 - size % 2
    scores = []
    for start in range(0, pool.shape[0], chunk):
        part = pool[start : start + chunk].float()
        reference = z_a.float()[None].expand_as(part)
        scores.append(
            structural_similarity_index_measure(
                part, reference, data_range=data_range, kernel_size=size, sigma=1.5 * size / 11, reduction="none"
            )
        )
    return torch.cat(scores)


def top_k_partners(z_a: Tensor, pool: Tensor, k: int, data_range: float, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """(indices, scores) of the ``k`` latents of ``pool`` most similar to z_a by ``latent_ssim``, best first
    (ties by pool order). DataError when k exceeds the pool."""
    if not 1 <= k <= pool.shape[0]:
        raise DataError(None, f"top-k {k} must be in [1, the unlabelled pool's {pool.shape[0]} images]")
    scores = latent_ssim(z_a, pool, data_range, chunk)
    order = torch.argsort(-scores, stable=True)[:k]
    return order, scores[order]


def latent_mask(mask: Tensor, latent_size: tuple[int, int], radius: int = 1, mode: str = "max") -> Tensor:
    """G'_a = dilate(downsample(G_a)): the image mask (H, W) at the latent resolution (h, w), as float {0, 1}.

    ``mode`` 'max' marks every latent cell that holds any structure pixel (a thin canal never vanishes in
    the downsampling, the choice made here), 'area' the cells at least half covered. The dilation with a
    (2 radius + 1)^2 square widens the region (Lim et al.: against the information imbalance of a narrow
    structure between the two sources); radius 0 keeps the downsampled mask.
    """
    if mask.dim() != 2:
        raise DataError(None, f"mask must be (H, W), got shape {tuple(mask.shape)}")
    if radius < 0:
        raise DataError(None, f"dilation radius must be >= 0, got {radius}")
    binary = (mask > 0).float()[None, None]
    if mode == "max":
        small = F.adaptive_max_pool2d(binary, latent_size)
    elif mode == "area":
        small = (F.adaptive_avg_pool2d(binary, latent_size) >= 0.5).float()
    else:
        raise DataError(None, f"mask downsampling mode must be 'max' or 'area', got {mode!r}")
    if radius:
        small = F.max_pool2d(small, 2 * radius + 1, stride=1, padding=radius)
    return small[0, 0]


def blend_latents(z_a: Tensor, z_u: Tensor, region: Tensor) -> Tensor:
    """z_init = G'_a * z_a + (1 - G'_a) * z_u: the structure region from the labelled latent, the rest from
    the unlabelled one. Appendix A of Lim et al. writes z'_u = z_u x G'_a and z'_a = z_a x (1 - G'_a), which
    would paste the unlabelled image into the structure and leave G_a labelling nothing of z_a; the text's
    meaning ("G_a ... used to synthesize the anatomical structure within the unlabeled PANs") is this one.

    z_a (C, h, w) or (N, C, h, w), z_u (N, C, h, w) or (C, h, w), region (h, w): broadcast to (N, C, h, w).
    """
    if z_a.shape[-3:] != z_u.shape[-3:] or tuple(region.shape) != tuple(z_a.shape[-2:]):
        raise DataError(
            None,
            f"shapes differ: z_a {tuple(z_a.shape)}, z_u {tuple(z_u.shape)}, latent mask {tuple(region.shape)}",
        )
    region = region.to(z_a.dtype)
    return region * z_a + (1 - region) * z_u
