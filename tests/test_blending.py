"""Latent blending on hand-made tensors: the region comes from the labelled latent, the rest from the
unlabelled one; the latent mask covers the structure; SSIM ranking is the library's and scales linearly; the
default strength is steps / T; pixel compositing feathers; the survival check is Pearson's r."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from xraydiff.diffusion.blending import (
    blend_denoise,
    blend_latents,
    blend_timesteps,
    latent_mask,
    latent_ssim,
    top_k_partners,
)
from xraydiff.diffusion.objectives import make_scheduler


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


def _oracle(scheduler, x0: torch.Tensor):
    """A denoiser that knows x0: eps_hat = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""

    def denoiser(x, t):
        abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    return denoiser


def test_the_blend_starts_at_strength_times_T_and_takes_the_configured_steps():
    scheduler = make_scheduler(1000, clip_sample=False)
    timesteps = blend_timesteps(scheduler, 25, 0.5)
    assert len(timesteps) == 25
    # 50 DDIM steps spread over [0, 999] by linspace; the last 25 start at index 25
    assert int(timesteps[0]) == round(999 - 25 * 999 / 49)
    assert int(timesteps[-1]) == 0
    assert int(blend_timesteps(scheduler, 25, 1.0)[0]) == 999
    with pytest.raises(ValueError, match="strength"):
        blend_timesteps(scheduler, 25, 0.0)
    with pytest.raises(ValueError, match="more than T"):
        blend_timesteps(scheduler, 25, 0.02)
    with pytest.raises(ValueError, match="not ddpm"):
        blend_timesteps(scheduler, 25, 0.5, "ddpm")


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
def test_a_blend_with_a_denoiser_that_knows_x0_reaches_its_clean_latent(sampler):
    """With a denoiser that knows x0, DDIM (eta 0) steps onto x0's trajectory and the solvers end on x0 from
    the same part-way start: z_0 = x0 (up to float error), whatever z_init and the strength."""
    scheduler = make_scheduler(1000, clip_sample=False)
    x0 = torch.randn(3, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    z_init = torch.randn(3, 4, 6, 8, generator=torch.Generator().manual_seed(2))
    for strength in (0.3, 1.0):
        generator = torch.Generator().manual_seed(0)
        z_0 = blend_denoise(_oracle(scheduler, x0), z_init, scheduler, 25, strength, generator, sampler=sampler)
        torch.testing.assert_close(z_0, x0, atol=1e-4, rtol=1e-4)


def test_reimposition_keeps_the_labelled_structure_and_lets_the_rest_change():
    scheduler = make_scheduler(1000, clip_sample=False)
    z_a = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(3))
    z_u = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(4))
    region = torch.zeros(6, 8)
    region[1:3, 2:6] = 1
    target = torch.zeros(2, 4, 6, 8)  # the denoiser pulls everything towards 0
    z_init = blend_latents(z_a, z_u, region)
    plain = blend_denoise(_oracle(scheduler, target), z_init, scheduler, 10, 0.5, torch.Generator().manual_seed(0))
    kept = blend_denoise(
        _oracle(scheduler, target), z_init, scheduler, 10, 0.5, torch.Generator().manual_seed(0), reimpose=(z_a, region)
    )
    inside = region.bool()
    assert torch.equal(kept[:, :, inside], z_a[None].expand(2, -1, -1, -1)[:, :, inside])
    assert plain[:, :, inside].abs().max() < 1e-3  # without re-imposition the structure follows the denoiser
    assert kept[:, :, ~inside].abs().max() < 1e-3  # outside, the denoiser's own result (it acts per element)


def test_the_default_strength_is_the_papers_steps_over_T():
    """Appendix A read literally: z_T = noise(z_init, T) with T = 25 denoising steps, then t = T .. 1."""
    from xraydiff.diffusion.blending import blend_timesteps, resolve_strength

    scheduler = make_scheduler(1000)
    assert resolve_strength(None, 25, 1000) == 0.025
    assert blend_timesteps(scheduler, 25, None) == list(range(24, -1, -1))
    # strength 0.5: MONAI's grid of round(25 / 0.5) = 50 DDIM steps, round(linspace(0, 999, 50)), its last 25
    grid = np.round(np.linspace(0, 999, 50)).astype(int)
    assert blend_timesteps(scheduler, 25, 0.5) == grid[:25][::-1].tolist()
    assert grid[24] == 489


def test_anatomy_survival_is_pearsons_r_inside_the_mask_against_outside():
    from xraydiff.diffusion.blending import anatomy_survival, survival_summary

    rng = np.random.default_rng(0)
    reference, synthetic = rng.normal(size=(2, 16, 32))
    inside = np.zeros((16, 32), dtype=bool)
    inside[4:8, 4:12] = True
    outside = np.zeros_like(inside)
    outside[:, 20:] = True
    synthetic[inside] = 2 * reference[inside] + 0.1 * rng.normal(size=int(inside.sum()))
    r_in, r_out = anatomy_survival(*map(torch.from_numpy, (synthetic, reference, inside, outside)))
    assert r_in == pytest.approx(np.corrcoef(synthetic[inside], reference[inside])[0, 1], abs=1e-9)
    assert r_out == pytest.approx(np.corrcoef(synthetic[outside], reference[outside])[0, 1], abs=1e-9)
    assert r_in > 0.99 and abs(r_out) < 0.2
    flat = np.zeros_like(synthetic)
    assert np.isnan(anatomy_survival(*map(torch.from_numpy, (flat, reference, inside, outside)))[0])
    summary = survival_summary([(0.9, 0.1), (0.5, 0.6), (float("nan"), 0.2), (0.7, 0.2)])
    assert summary["n"] == 3 and summary["undefined"] == 1
    assert summary["inside"]["median"] == pytest.approx(0.7) and summary["difference"]["median"] == pytest.approx(0.5)
    assert summary["kept_fraction"] == pytest.approx(2 / 3)


def test_the_feathered_region_keeps_the_structure_and_fades_to_zero():
    from scipy.ndimage import gaussian_filter

    from xraydiff.diffusion.blending import feathered, latent_mask, pixel_region

    mask = torch.zeros(32, 64)
    mask[13:15, 30:33] = 1
    region = pixel_region(latent_mask(mask, (8, 16), radius=1), (32, 64))
    # independently: the 4 x 4 cells holding a mask pixel, dilated by one cell, in pixels
    cells = np.zeros((8, 16))
    cells[3, 7:9] = 1
    cells = np.maximum.reduce([np.roll(np.roll(cells, i, 0), j, 1) for i in (-1, 0, 1) for j in (-1, 0, 1)])
    assert np.array_equal(region.numpy(), np.kron(cells, np.ones((4, 4))))
    alpha = feathered(region, sigma=2.0).numpy()
    np.testing.assert_allclose(alpha, gaussian_filter(region.numpy(), 2.0, mode="constant"), atol=0.02)
    assert alpha[mask.bool().numpy()].min() >= 0.97
    assert alpha[:, :16].max() < 1e-3
