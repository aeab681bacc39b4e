"""The one reverse engine (``xraydiff.diffusion.engine.reverse_process``) against exact denoisers and MONAI."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from xraydiff.diffusion import choices
from xraydiff.diffusion.engine import (
    PosteriorRule,
    check_sampling,
    draw_noise,
    posterior_step,
    reverse_process,
    reverse_timesteps,
    sample,
    step_rule,
)
from xraydiff.diffusion.objectives import make_scheduler
from xraydiff.errors import DataError

T = 800
SOLVER_NAMES = [n for n, s in choices.REGISTRY.items() if s.rule == "solver"]


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
                        PosteriorRule(reverse_timesteps(T, k), 0.0, scheduler.alphas_cumprod))  # fmt: skip
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
        step_rule("ddim", scheduler, 4),
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
        ("ddim", 0, 0.0, "ddim steps"),
        ("ddim", T + 1, 0.0, "ddim steps"),
        ("unipc", None, 0.0, "unipc steps"),
        ("ddim", 10, 1.5, "ddim_eta"),
    ],  # fmt: skip
)
def test_sampling_options_are_checked_once(sampler, steps, eta, message):
    with pytest.raises(DataError, match=message):
        check_sampling(sampler, steps, eta, T)
    assert check_sampling("ddpm", None, 0.0, T) == T and check_sampling("ddim", 10, 0.5, T) == 10


@pytest.mark.parametrize("sampler", SOLVER_NAMES)
@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_every_solver_returns_x0_from_an_exact_denoiser(sampler, k):
    """A network whose x0 prediction is x0 whatever it is given: DPM-Solver++ (2M, SDE) and UniPC, driven
    by the engine on MONAI's betas, end on x0 (their last step goes to sigma = 0)."""
    scheduler = make_scheduler(T, prediction_type="sample", clip_sample=False)
    x0 = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x_T = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    out = sample(lambda x, t: x0.expand_as(x), x_T, scheduler, sampler, k, noise=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_deterministic_solvers_stay_on_an_exact_trajectory(sampler, kind):
    """With eps (or v) exact on x0's trajectory, every call of the ODE solvers sees x at its own noise level
    and the result is x0: the solvers integrate MONAI's schedule, not one of their own."""
    scheduler = make_scheduler(T, prediction_type=kind, clip_sample=False)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 2, 8, 8, generator=generator) * 2 - 1
    eps0 = torch.randn(2, 2, 8, 8, generator=generator)
    rule = step_rule(sampler, scheduler, 10)
    abar = scheduler.alphas_cumprod[rule.timesteps[0]]
    x_start = abar.sqrt() * x0 + (1 - abar).sqrt() * eps0
    calls: list[float] = []
    x = reverse_process(_on_trajectory_oracle(scheduler, x0, eps0, kind, calls), x_start, scheduler, rule)
    assert len(calls) == 10 and max(calls) < 1e-3
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)


def test_a_solver_started_part_way_takes_the_last_steps_of_its_grid():
    scheduler = make_scheduler(1000, clip_sample=False)
    full, tail = step_rule("dpmpp_2m", scheduler, 50), step_rule("dpmpp_2m", scheduler, 50, last=25)
    assert len(tail.timesteps) == 25 and tail.timesteps == full.timesteps[-25:]
    assert step_rule("ddim", scheduler, 50, last=25).timesteps == reverse_timesteps(1000, 50)[-25:]


@pytest.mark.parametrize("checkpoint", ["demo_hand_ddpm", "demo_panoramic_ldm"])
def test_solvers_sample_the_shipped_models_finite_in_range_and_reproducibly(checkpoint):
    """The trained demo models (paired DDPM in pixels, LDM in latents) through every solver: finite, in
    [-1, 1], the same from the same seed, another from another (the SDE solver's noise is the seed's too)."""
    from tiny import REPO

    from lightning_modules.generative import load_model

    model = load_model(REPO / "xraydiff" / "assets" / f"{checkpoint}.ckpt").eval()
    for sampler in SOLVER_NAMES:
        draw = lambda seed: model.generate(2, torch.Generator().manual_seed(seed), sampler, 4)  # noqa: B023, E731
        first = draw(0)
        assert torch.isfinite(first).all() and first.abs().max() <= 1, sampler
        torch.testing.assert_close(draw(0), first, atol=0, rtol=0)
        assert not torch.equal(draw(1), first), sampler
