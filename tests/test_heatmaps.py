import math

import pytest
import torch

from xraydiff.landmarks.heatmaps import gaussian_heatmaps


def test_per_landmark_channels_follow_the_gaussian_formula():
    landmarks = torch.tensor([[[3.0, 5.0], [10.25, 2.5]]])
    maps = gaussian_heatmaps(landmarks, (12, 16), sigma=2.0)
    assert maps.shape == (1, 2, 12, 16) and maps.dtype == torch.float32
    # Peak 1 exactly at an integer landmark, located at (row=y, col=x).
    assert maps[0, 0, 5, 3] == pytest.approx(1.0)
    assert torch.argmax(maps[0, 0]).item() == 5 * 16 + 3
    # Any pixel: exp(-d^2 / (2 sigma^2)).
    y, x = 7, 1
    expected = math.exp(-((x - 3.0) ** 2 + (y - 5.0) ** 2) / (2 * 2.0**2))
    assert maps[0, 0, y, x].item() == pytest.approx(expected, rel=1e-6)
    expected = math.exp(-((11 - 10.25) ** 2 + (4 - 2.5) ** 2) / 8.0)
    assert maps[0, 1, 4, 11].item() == pytest.approx(expected, rel=1e-6)


def test_combined_channel_is_the_max_over_landmarks_and_normalizes_to_minus_one_one():
    landmarks = torch.rand(3, 37, 2) * 63
    separate = gaussian_heatmaps(landmarks, (64, 64), sigma=1.0)
    combined = gaussian_heatmaps(landmarks, (64, 64), sigma=1.0, combine=True)
    assert combined.shape == (3, 1, 64, 64)
    torch.testing.assert_close(combined[:, 0], separate.amax(dim=1))
    normalized = gaussian_heatmaps(landmarks, (64, 64), combine=True, normalize=True)
    torch.testing.assert_close(normalized, combined * 2 - 1)
    assert normalized.min() >= -1 and normalized.max() <= 1


def test_non_finite_landmarks_give_empty_channels():
    landmarks = torch.tensor([[float("nan"), 3.0], [4.0, 4.0]])
    maps = gaussian_heatmaps(landmarks, (8, 8))
    assert torch.isfinite(maps).all()
    assert maps[0].max() == 0 and maps[1].max() == pytest.approx(1.0)


def test_rendering_is_differentiable_and_dtype_clean_under_autocast():
    landmarks = (torch.rand(2, 5, 2, generator=torch.Generator().manual_seed(0)) * 15).requires_grad_()
    sigma = 1.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = gaussian_heatmaps(landmarks, (16, 16), sigma)
    # float32 values, identical to rendering without autocast (bf16 would be off by ~1e-2)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, gaussian_heatmaps(landmarks.detach(), (16, 16), sigma), rtol=0, atol=1e-6)
    # d/dx of exp(-((u - x)^2 + (v - y)^2) / 2 s^2), summed over the pixels (u, v): sum(map * (u - x)) / s^2
    maps.sum().backward()
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    m = maps.detach()
    expected = (
        torch.stack(
            [
                (m * (xs - landmarks[..., 0, None, None])).sum((-2, -1)),
                (m * (ys - landmarks[..., 1, None, None])).sum((-2, -1)),
            ],
            dim=-1,
        ).detach()
        / sigma**2
    )
    torch.testing.assert_close(landmarks.grad, expected, rtol=1e-4, atol=1e-5)
