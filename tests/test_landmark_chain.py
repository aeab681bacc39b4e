"""The reverse process of landmark diffusion against what training showed its network.

A chain can refine only if every input it hands the network looks like a training input at that t:
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 3). These tests capture the tensors the network
receives along the chain and compare them with that distribution, computed here from the schedule
alone. On the code before the chain was mended each test failed for its reason:

* the schedule: abar_{T-1} was 0.132 (``test_the_forward_process_ends_in_noise_at_the_shipped_T``);
* the start: x_T ~ N(0, I), mean 0 where training shows -0.364 at t = T - 1 under the literal schedule
  (``test_the_chain_starts_and_stays_where_training_was``, the mean assertions);
* the blur: a 13 x 13 kernel of sigma 14 px at 160 x 128 left 4 % of training's landmark contrast
  (``test_an_oracle_chain_shows_the_network_training_like_contrast``, the contrast assertion);
* decoding: a plateau was decoded at its first pixel (``test_a_plateau_is_decoded_at_its_centre``).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import lightning_modules.landmark_diffusion as ld_module
import xraydiff.diffusion.landmark as ld
from commands.parsing import compose_configs
from xraydiff.diffusion.engine import reverse_timesteps
from xraydiff.errors import DataError
from xraydiff.landmarks.heatmaps import gaussian_heatmaps

ROOT = Path(__file__).resolve().parents[1]
STUDY_SIZE = (160, 128)  # configs/ceph/landmarks_cpu.yaml


def shipped_timesteps() -> int:
    """T of the CPU recipe: its configs' value, else LandmarkDiffusion's default."""
    given = compose_configs([ROOT / "configs/ceph/landmark_diffusion_cpu.yaml"])["model"]["init_args"]
    default = inspect.signature(ld_module.LandmarkDiffusion.__init__).parameters["schedule"].default
    return int((given.get("schedule") or {}).get("num_train_timesteps", default.num_train_timesteps))


def tiny_model(**schedule):
    from lightning_modules import LandmarkDiffusion

    network = {"channels": (8, 8), "norm_num_groups": 4, "num_head_channels": 8}
    return LandmarkDiffusion(num_landmarks=2, image_size=(16, 16), network=network, schedule=schedule)


class Recorder:
    """A predictor of x0 logits that keeps every input x_t it is given, by t."""

    def __init__(self, logits):
        self.logits, self.inputs = logits, {}

    def __call__(self, x_t, t):
        self.inputs[int(t[0])] = x_t.clone()
        return self.logits(x_t)


def empty_predictor() -> Recorder:
    """Always the empty heatmap: logits -1 everywhere, which the 'clamp' estimate takes as x0 = -1."""
    return Recorder(lambda x: torch.full_like(x, -1.0))


def test_the_forward_process_ends_in_noise_at_the_shipped_T():
    T = shipped_timesteps()
    scaled = tiny_model(num_train_timesteps=T).scheduler.alphas_cumprod
    # improved-diffusion's linear schedule: both ends of Ho et al.'s (1e-4, 0.02) times 1000 / T
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    assert float(scaled[-1]) < 1e-3
    assert float(scaled[-1]) == pytest.approx(np.prod(1 - betas), rel=1e-4)
    literal = tiny_model(num_train_timesteps=T, beta_scaling="literal").scheduler.alphas_cumprod
    assert float(literal[-1]) == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, T)), rel=1e-4)  # 0.132 at T = 200
    # A short chain's last beta is capped below 1, so alpha_{T-1} > 0.
    assert float(ld.landmark_scheduler(20).betas[-1]) == pytest.approx(ld.MAX_BETA)
    with pytest.raises(DataError, match="beta_scaling must be one of"):
        ld.landmark_scheduler(200, scaling="1000/T")


def test_a_checkpoint_saved_before_the_scaled_schedule_is_refused_with_the_option_to_pass():
    model = tiny_model(num_train_timesteps=20)
    hparams = dict(model.hparams)
    hparams["schedule"] = {k: v for k, v in hparams["schedule"].items() if k != "beta_scaling"}
    with pytest.raises(DataError, match=r"beta_scaling literal, the model config scaled .*beta_scaling literal"):
        model.on_load_checkpoint({"hyper_parameters": hparams, "state_dict": {}})
    tiny_model(num_train_timesteps=20, beta_scaling="literal").on_load_checkpoint({"hyper_parameters": hparams})


@pytest.mark.parametrize("scaling", ["scaled", "literal"])
@pytest.mark.parametrize("mode", ["single", "ddim"])
def test_the_chain_starts_and_stays_where_training_was(mode, scaling):
    """The network's input at every visited t has the mean sqrt(abar_t) x0_background and the spread
    sqrt(1 - abar_t) of training's, here with a predictor that always returns the empty heatmap."""
    scheduler = ld.landmark_scheduler(200, scaling=scaling)
    abar = scheduler.alphas_cumprod.double()
    predictor = empty_predictor()
    generators = ld.item_generators(0, range(4), 1)
    ld.sample_heatmaps(predictor, (19, 64, 48), scheduler, mode, generators, "cpu", steps=5, x0_estimate="clamp")
    visited = [199] if mode == "single" else reverse_timesteps(200, 5)
    assert sorted(predictor.inputs) == sorted(visited)
    for t in visited:
        x = predictor.inputs[t].double()
        assert float(x.mean()) == pytest.approx(-math.sqrt(abar[t]), abs=0.02), t
        assert float(x.std()) == pytest.approx(math.sqrt(1 - abar[t]), abs=0.02), t


def test_the_diagnostic_call_sees_the_empty_heatmap_at_t_0():
    scheduler = ld.landmark_scheduler(200)
    abar0 = float(scheduler.alphas_cumprod[0])
    predictor = empty_predictor()
    generators = ld.item_generators(0, range(2), 1)
    _, _, calls = ld.sample_heatmaps(predictor, (19, 64, 48), scheduler, "empty", generators, "cpu")
    assert calls == 1 and list(predictor.inputs) == [0]
    x = predictor.inputs[0].double()
    assert float(x.mean()) == pytest.approx(-math.sqrt(abar0), abs=0.002)
    assert float(x.std()) == pytest.approx(math.sqrt(1 - abar0), rel=0.05)


def test_an_oracle_chain_shows_the_network_training_like_contrast():
    """With a predictor that returns the true heatmap's logits, DDIM 5 at the study's 160 x 128 hands the
    network, at every visited t >= 50 after the start, at least half the landmark contrast training shows at
    that t, and decodes every landmark within 1 px.

    The contrast is measured without noise: with eta 0 the chain is affine in x0 (blur and posterior alike),
    so the oracle chain minus the empty-heatmap chain from the same noise is the landmark's signal alone;
    training's at the landmark's pixel p is sqrt(abar_t) (x0[p] + 1). The start carries none: x0 is not
    known there, and at t = T - 1 training's is 2 sqrt(abar_{T-1}) = 0.01."""
    height, width = STUDY_SIZE
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.uniform([8, 8], [width - 9, height - 9], (2, 6, 2))).float()  # (B, N, 2) x, y
    x0 = gaussian_heatmaps(points, STUDY_SIZE, 1.0, normalize=True)
    oracle = Recorder(lambda x: ((x0 + 1) / 2).clamp_min(1e-6).log())
    empty = empty_predictor()
    scheduler = ld.landmark_scheduler(200)
    shape = (6, height, width)
    final, _, _ = ld.sample_heatmaps(oracle, shape, scheduler, "ddim", ld.item_generators(1, [0, 1], 1), "cpu", 5)
    ld.sample_heatmaps(empty, shape, scheduler, "ddim", ld.item_generators(1, [0, 1], 1), "cpu", 5, x0_estimate="clamp")
    pixel = points.round().long()
    b, n = torch.meshgrid(torch.arange(2), torch.arange(6), indexing="ij")
    for t in [t for t in reverse_timesteps(200, 5) if 50 <= t < 199]:
        signal = (oracle.inputs[t] - empty.inputs[t])[b, n, pixel[..., 1], pixel[..., 0]]
        training = math.sqrt(scheduler.alphas_cumprod[t]) * (x0[b, n, pixel[..., 1], pixel[..., 0]] + 1)
        ratio = signal / training
        assert float(ratio.min()) >= 0.5, (t, ratio)
    errors = torch.linalg.vector_norm(ld.decode_heatmaps(final) - points, dim=-1)
    assert float(errors.max()) < 1.0, errors


def test_the_blur_is_the_papers_at_its_size_and_scales_with_the_image():
    rng = np.random.default_rng(0)
    for size in [(800, 640), STUDY_SIZE, (160, 256)]:
        x0 = torch.from_numpy(rng.uniform(-1, 1, (1, 2, *size)).astype(np.float32))
        scale = ld.blur_scale(size)
        sy, sx = size[0] / 800, size[1] / 640
        sigma = (0, 0, 14 * sy, 14 * sx)
        radius = (0, 0, int(6 * sy + 0.5), int(6 * sx + 0.5))  # round((13 - 1) / 2 x s) pixels
        # scipy truncates at int(truncate x sigma + 0.5) pixels; one truncate per axis
        reference = (x0.numpy() + 1) / 2
        for axis in (2, 3):
            reference = gaussian_filter(
                reference, [sigma[a] if a == axis else 0 for a in range(4)], truncate=radius[axis] / sigma[axis],
                mode="constant",
            )  # fmt: skip
        np.testing.assert_allclose(ld.blur_heatmaps(x0, 14.0, scale=scale).numpy(), reference * 2 - 1, atol=1e-5)
    x0 = torch.zeros(1, 1, 64, 48)
    assert torch.equal(ld.blur_heatmaps(x0, 14.0, scale=ld.blur_scale((64, 48))), x0)  # radius 0.48 px: no kernel
    assert ld.blur_scale((160, 128), "pixels") == (1.0, 1.0)
    with pytest.raises(DataError, match="blur_scaling must be one of"):
        ld.blur_scale((160, 128), "mm")


def test_a_plateau_is_decoded_at_its_centre():
    """A clamped heatmap is flat at 1.0 where the logits exceed 1: its landmark is the plateau's centre, not the
    first tied pixel (the arg-max of the previous code, 2.2 px off here)."""
    heatmap = -torch.ones(1, 2, 24, 20)
    heatmap[0, 0, 5:12, 3:8] = 1.0  # rows 5..11, columns 3..7: centre (x 5, y 8)
    heatmap[0, 1, 15:17, 12:16] = 1.0  # rows 15..16, columns 12..15: centre (x 13.5, y 15.5)
    decoded = ld.decode_heatmaps(heatmap)
    torch.testing.assert_close(decoded, torch.tensor([[[5.0, 8.0], [13.5, 15.5]]]), atol=0.01, rtol=0)
