"""Latent blending on hand-made tensors: the region comes from the labelled latent, the rest from the
unlabelled one; the latent mask covers the structure; SSIM ranking is the library's and scales linearly."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from xraydiff.blending import blend_latents, latent_mask, latent_ssim, top_k_partners


def test_the_blend_takes_the_region_from_the_labelled_latent_and_the_rest_from_the_unlabelled():
    z_a = torch.full((4, 6, 8), 3.0)
    z_u = torch.arange(3 * 4 * 6 * 8, dtype=torch.float32).reshape(3, 4, 6, 8)
    region = torch.zeros(6, 8)
    region[2:4, 1:5] = 1
    z_init = blend_latents(z_a, z_u, region)
    assert z_init.shape == (3, 4, 6, 8)
    inside = region.bool()
    assert torch.equal(z_init[:, :, inside], z_a[None].expand(3, -1, -1, -1)[:, :, inside])
    assert torch.equal(z_init[:, :, ~inside], z_u[:, :, ~inside])
    with pytest.raises(ValueError, match="shapes differ"):
        blend_latents(z_a, z_u, torch.zeros(5, 8))


def test_the_latent_mask_covers_the_downsampled_structure_and_dilates_it():
    mask = torch.zeros(64, 128)
    mask[30, 10:100] = 1  # a one-pixel-thin canal
    down = latent_mask(mask, (8, 16), radius=0)
    # Every 8 x 8 cell that holds a canal pixel is marked, and only those.
    expected = mask.reshape(8, 8, 16, 8).amax(dim=(1, 3))
    assert torch.equal(down, expected) and down.sum() == 12
    dilated = latent_mask(mask, (8, 16), radius=1)
    assert torch.all(dilated >= down) and dilated[2:5, 0:14].all() and dilated.sum() == 3 * 14
    assert latent_mask(mask, (8, 16), mode="area").sum() == 0  # a thin structure vanishes by area
    with pytest.raises(ValueError, match="'max' or 'area'"):
        latent_mask(mask, (8, 16), mode="nearest")


def test_partners_are_ranked_by_the_library_ssim_per_channel_averaged():
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(4, 16, 32, generator=generator)
    pool = torch.randn(10, 4, 16, 32, generator=generator)
    pool[3] = z_a + 0.01 * torch.randn(4, 16, 32, generator=generator)  # nearly identical
    pool[7] = z_a + 0.5 * torch.randn(4, 16, 32, generator=generator)
    data_range = float(pool.max() - pool.min())
    scores = latent_ssim(z_a, pool, data_range, chunk=3)
    per_channel = torch.stack(
        [
            torch.stack(
                [
                    structural_similarity_index_measure(
                        pool[n, c][None, None], z_a[c][None, None], data_range=data_range
                    )
                    for c in range(4)
                ]
            ).mean()
            for n in range(10)
        ]
    )
    torch.testing.assert_close(scores, per_channel, rtol=1e-5, atol=1e-6)
    indices, best = top_k_partners(z_a, pool, 2, data_range)
    assert indices.tolist() == [3, 7] and best[0] > 0.99 > best[1]
    with pytest.raises(ValueError, match="top-k 11 must be in"):
        top_k_partners(z_a, pool, 11, data_range)
