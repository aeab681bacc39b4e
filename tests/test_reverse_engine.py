"""The one reverse engine (``xraydiff.diffusion.engine.reverse_process``) against exact denoisers and MONAI."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from xraydiff.diffusion.engine import (
    check_sampling,
    draw_noise,
    posterior_step,
    reverse_process,
    reverse_timesteps,
    sample,
)
from xraydiff.diffusion.objectives import make_scheduler
from xraydiff.errors import DataError

T = 800


def _on_trajectory_oracle(scheduler, x0, eps0, kind, calls):
    """A network that is exact only on x0's trajectory x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps0: it
    returns eps0 (or the v of (x0, eps0)) whatever x it is given, so x0_hat is x0 only when x is at the
    noise level of the t it is called with. ``calls`` records how far each x was from that trajectory."""

    def predict(x, t):
        abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        on_trajectory = abar.sqrt() * x0 + (1 - abar).sqrt() * eps0
        calls.append(float((x - on_trajectory).abs().max()))
        if kind == "epsilon":
            return eps0.expand_as(x)
        return abar.sqrt() * eps0 - (1 - abar).sqrt() * x0  # v_prediction

    return predict


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("k", [1, 7, 10, 50, T])
def test_deterministic_ddim_with_an_exact_denoiser_returns_x0_for_any_number_of_steps(kind, k):
    scheduler = make_scheduler(T, prediction_type=kind, clip_sample=False)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 2, 8, 8, generator=generator) * 2 - 1
    eps0 = torch.randn(2, 2, 8, 8, generator=generator)
    abar = scheduler.alphas_cumprod[T - 1]
    x_T = abar.sqrt() * x0 + (1 - abar).sqrt() * eps0
    calls: list[float] = []
    x = reverse_process(_on_trajectory_oracle(scheduler, x0, eps0, kind, calls), x_T, scheduler,
                        reverse_timesteps(T, k), eta=0.0)  # fmt: skip
    assert len(calls) == k and max(calls) < 1e-4  # every call saw x at its own noise level
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=0)


def test_monais_ddim_stepping_leaves_noise_at_ten_steps():
    """What the engine replaces: MONAI's DDIMScheduler.step goes to t - T // k, not to its own next
    timestep round(linspace), so the same exact denoiser ends away from x0 (the defect of issue 29)."""
    monai = DDIMScheduler(num_train_timesteps=T, clip_sample=False)
    monai.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 2, 8, 8, generator=generator) * 2 - 1
    eps0 = torch.randn(2, 2, 8, 8, generator=generator)
    abar = monai.alphas_cumprod[int(monai.timesteps[0])]
    x = abar.sqrt() * x0 + (1 - abar).sqrt() * eps0
    calls: list[float] = []
    oracle = _on_trajectory_oracle(monai, x0, eps0, "epsilon", calls)
    for t in monai.timesteps:
        x, _ = monai.step(oracle(x, torch.full((2,), int(t))), int(t), x)
    assert max(calls) > 1e-2 and float((x - x0).abs().max()) > 1e-2


def test_the_ddpm_step_is_monais_posterior_draw_and_the_chain_ends_on_x0():
    scheduler = make_scheduler(50, prediction_type="sample", clip_sample=False)
    x_t, x0 = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1
    expected, _ = scheduler.step(x0, 20, x_t, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))  # the draw MONAI made
    mine = posterior_step(x_t, x0, 20, 19, scheduler.alphas_cumprod, eta=1.0, noise=noise)
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(posterior_step(x_t, x0, 0, -1, scheduler.alphas_cumprod, 1.0, noise), x0)
    assert reverse_timesteps(200, 200) == list(range(199, -1, -1))
    assert reverse_timesteps(200, 10)[0] == 199 and reverse_timesteps(200, 10)[-1] == 0
    # The whole DDPM chain with a fixed-x0 network returns x0 (the posterior's mean and variance at t = 0).
    fixed = lambda x, t: x0.expand_as(x)  # noqa: E731
    out = sample(fixed, torch.randn(2, 3, 8, 8), scheduler, "ddpm", None, noise=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_hooks_run_in_order_and_noise_is_per_item():
    scheduler = make_scheduler(20, prediction_type="sample")
    seen = []
    reverse_process(
        lambda x, t: torch.zeros_like(x),
        torch.zeros(1, 1, 4, 4),
        scheduler,
        reverse_timesteps(20, 4),
        x0_hook=lambda x0, t: seen.append(("x0", t)) or x0,
        x_hook=lambda x, t_prev: seen.append(("x", t_prev)) or x,
    )
    assert seen == [("x0", 19), ("x", 13), ("x0", 13), ("x", 6), ("x0", 6), ("x", 0), ("x0", 0), ("x", -1)]
    generators = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    together = draw_noise(generators([4, 9]), (2, 3, 5), "cpu")
    torch.testing.assert_close(together[1:], draw_noise(generators([9]), (1, 3, 5), "cpu"))


@pytest.mark.parametrize(
    ("sampler", "steps", "eta", "message"),
    [
        ("euler", 10, 0.0, "sampler must be one of"),
        ("ddim", 0, 0.0, "DDIM steps"),
        ("ddim", T + 1, 0.0, "DDIM steps"),
        ("ddim", 10, 1.5, "ddim_eta"),
    ],  # fmt: skip
)
def test_sampling_options_are_checked_once(sampler, steps, eta, message):
    with pytest.raises(DataError, match=message):
        check_sampling(sampler, steps, eta, T)
    assert check_sampling("ddpm", None, 0.0, T) == T and check_sampling("ddim", 10, 0.5, T) == 10
