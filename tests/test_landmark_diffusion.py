"""Landmark diffusion: the maths against independent references, then a tiny model trained for real."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from tiny import DDP_TWO_CPU_PROCESSES, run
from tiny import LANDMARK_DIFFUSION as TINY

import xraydiff.diffusion.landmark as ld
from xraydiff.diffusion.engine import draw_noise
from xraydiff.diffusion.objectives import make_scheduler
from xraydiff.errors import DataError
from xraydiff.landmarks.heatmaps import gaussian_heatmaps


def test_loss_equals_a_hand_computed_case():
    # One landmark, two pixels: x0 = [1, -1] -> q = [1, 0]; x0_hat = [0.5, -0.5].
    x0 = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)
    x0_hat = torch.tensor([0.5, -0.5]).view(1, 1, 1, 2)
    total, nll, mse = ld.landmark_diffusion_loss(x0_hat, x0, lambda_nll=1.0, lambda_s=0.01)
    assert float(nll) == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)  # -log softmax = log(1 + e^-1)
    assert float(mse) == pytest.approx((0.5**2 + 0.5**2) / 2)
    assert float(total) == pytest.approx(math.log(1 + math.exp(-1.0)) + 0.01 * 0.25, rel=1e-6)
    # A masked landmark contributes nothing.
    two = torch.cat([x0, -x0], dim=1), torch.cat([x0_hat, x0_hat], dim=1)
    masked = ld.landmark_diffusion_loss(two[1], two[0], mask=torch.tensor([[True, False]]))
    assert float(masked[1]) == pytest.approx(float(nll)) and float(masked[2]) == pytest.approx(float(mse))
    # Unbounded logits [4, -3]: L_nll on the raw values (log(1 + e^-7)), L_s on x0_hat = clamp = [1, -1].
    logits = torch.tensor([4.0, -3.0]).view(1, 1, 1, 2)
    _, nll, mse = ld.landmark_diffusion_loss(logits, x0)
    assert float(nll) == pytest.approx(math.log1p(math.exp(-7.0)), rel=1e-4) and float(mse) == 0.0


def test_blur_schedule_is_eq_12_and_the_kernel_is_13_by_13_gaussian():
    assert ld.blur_sigma(0, 200, 14.0, 1.0) == 1.0
    assert ld.blur_sigma(199, 200, 14.0, 1.0) == 14.0
    assert ld.blur_sigma(99, 200, 14.0, 1.0) == pytest.approx(1.0 + 99 * 13.0 / 199)
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.uniform(-1, 1, (1, 2, 31, 27)).astype(np.float32))
    for sigma in (1.0, 4.0, 14.0):
        # scipy: a normalised Gaussian truncated at radius int(truncate * sigma + 0.5) = 6, zero padding.
        reference = gaussian_filter((x0.numpy() + 1) / 2, (0, 0, sigma, sigma), truncate=6 / sigma, mode="constant")
        np.testing.assert_allclose(ld.blur_heatmaps(x0, sigma).numpy(), reference * 2 - 1, atol=1e-5)
    assert torch.equal(ld.blur_heatmaps(x0, 0.0), x0)
    # The reverse process blurs with sigma_max at t = T - 1 and sigma_min at t = 0.
    used = []
    original = ld.blur_heatmaps
    try:
        ld.blur_heatmaps = lambda x, sigma, **scaled: used.append(sigma) or original(x, sigma, **scaled)
        alphas = make_scheduler(10, prediction_type="sample")
        generators = ld.item_generators(0, [0], 1)
        zeros = lambda x, t: torch.zeros_like(x)  # noqa: E731
        ld.sample_heatmaps(zeros, (1, 8, 8), alphas, "ddpm", generators, "cpu", None, 0.0, 6.0, 0.5)
    finally:
        ld.blur_heatmaps = original
    assert used[0] == 6.0 and used[-1] == 0.5 and len(used) == 10
    np.testing.assert_allclose(np.diff(used), -(6.0 - 0.5) / 9)
    with pytest.raises(DataError, match="sigma_min <= sigma_max"):
        ld.check_blur(1.0, 2.0)


def test_decoding_recovers_sub_pixel_positions_and_ensemble_statistics():
    points = torch.tensor([[[10.3, 7.6], [3.0, 20.45]]])
    heatmaps = gaussian_heatmaps(points, (24, 16), 1.0, normalize=True)
    # The 5 x 5 window truncates the Gaussian: its centre of mass is biased towards the arg-max by < 0.05 px.
    torch.testing.assert_close(ld.decode_heatmaps(heatmaps), points, atol=0.05, rtol=0)
    members = torch.tensor([[[[0.0, 0.0]], [[2.0, 0.0]], [[1.0, 3.0]], [[1.0, -3.0]]]])  # (1, 4, 1, 2)
    mean, spread = ld.ensemble_statistics(members)
    torch.testing.assert_close(mean, torch.tensor([[[1.0, 0.0]]]))
    assert float(spread) == pytest.approx(math.sqrt((1 + 1 + 9 + 9) / 4))
    assert float(ld.ensemble_statistics(members[:, :1])[1]) == 0.0


def test_sampling_noise_is_per_image_not_per_batch():
    alphas = make_scheduler(20, prediction_type="sample")

    def predictor(x, t):  # any deterministic function of (x, t)
        return torch.tanh(x * 0.5 + t[:, None, None, None] / 20)

    def run_for(indices):
        generators = ld.item_generators(7, indices, 2)
        return ld.sample_heatmaps(predictor, (2, 6, 6), alphas, "ddim", generators, "cpu", 5, 1.0, 3.0, 1.0)[0]

    together = run_for([4, 9])
    alone = run_for([9])
    torch.testing.assert_close(together[2:], alone)  # image 9's two members, batched with image 4 or not
    assert not torch.equal(together[0], together[1])  # members differ


@pytest.mark.parametrize(
    ("mode", "steps", "ensemble", "message"),
    [
        ("ddim", 300, 1, r"ddim steps must be in \[1, T = 200\]"),
        ("ddim", None, 1, "ddim steps"),
        ("ddpm", None, 0, "ensemble size M must be at least 1"),
        ("fast", None, 1, "sampler must be one of"),
    ],
)
def test_bad_inference_settings_are_refused(mode, steps, ensemble, message):
    with pytest.raises(DataError, match=message):
        ld.check_inference(mode, steps, ensemble, 200)


# ---------------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("landmark_diffusion")
    result = run(["fit", *TINY, "--trainer.default_root_dir", root, "--trainer.max_steps", "400"])
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _test(root, *args, devices: list[str] = ()) -> dict:
    result = run(["test", *TINY, "--trainer.default_root_dir", root, "--ckpt_path", "last", *args, *devices])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "test_metrics.json").read_text())


def test_multi_step_sampling_beats_pure_noise(trained):
    multi = _test(trained, "--model.init_args.inference.sampler", "ddpm")
    assert multi["inference"]["mode"] == "ddpm" and multi["inference"]["network_calls_per_image"] == 20
    assert multi["inference"]["seconds_per_image"] > 0 and multi["n_images"] == 5
    # Pure noise: decoding x_T itself puts each landmark at an arbitrary pixel of the 32 x 32 image.
    from datamodules import CephalometricDataModule

    dm = CephalometricDataModule(image_size=(32, 32), phantom_counts={"train": 32, "val": 4, "test": 5})
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    noise = draw_noise(ld.item_generators(0, batch["index"].tolist(), 1), (len(batch["index"]), 19, 32, 32), "cpu")
    errors = torch.linalg.vector_norm(ld.decode_heatmaps(noise) - batch["landmarks"], dim=-1)
    noise_mre_px = float(errors.mean())
    mm_per_px = float(batch["mm_per_px"][0] * batch["scale"][0, 0])
    assert multi["mre_mm"] < 0.25 * noise_mre_px * mm_per_px, (multi["mre_mm"], noise_mre_px * mm_per_px)


def test_ensemble_uncertainty_and_ddp_give_the_same_metrics(trained):
    one = _test(trained, "--model.init_args.inference.sampler", "ddim", "--model.init_args.inference.ensemble", "1")
    assert "uncertainty" not in one and one["inference"]["network_calls_per_image"] == 4
    args = [
        "--model.init_args.inference.sampler",
        "ddim",
        "--model.init_args.inference.ensemble",
        "3",
        "--model.init_args.inference.ddim_eta",
        "1",
    ]
    single = _test(trained, *args)
    assert single["inference"]["ensemble"] == 3 and single["inference"]["network_calls_per_image"] == 12
    assert single["uncertainty"]["mean_spread_mm"] > 0 and -1 <= single["uncertainty"]["spearman"] <= 1
    assert (trained / "test_error_vs_spread.png").exists()
    double = _test(trained, *args, devices=DDP_TWO_CPU_PROCESSES)
    assert double["n_images"] == single["n_images"] == 5
    assert double["mre_mm"] == pytest.approx(single["mre_mm"], rel=1e-5)
    assert double["uncertainty"]["spearman"] == pytest.approx(single["uncertainty"]["spearman"], rel=1e-5)
    np.testing.assert_allclose(double["per_landmark_mm"], single["per_landmark_mm"], rtol=1e-5)
    assert single["plausibility"]["checked"] == 5 and single["plausibility"]["training_shapes"] == 32
    # predict under DDP: one CSV per split, each image once; the test split's spreads are the test's
    result = run(
        ["predict", *TINY, "--trainer.default_root_dir", trained, "--ckpt_path", "last", *args, *DDP_TWO_CPU_PROCESSES]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for split, count in (("val", 4), ("test", 5)):
        with open(trained / f"predictions_{split}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count * 19 and len({r["id"] for r in rows}) == count
        assert set(rows[0]) == {"id", "landmark", "x", "y", "mm_per_px", "plausible", "uncertainty_mm"}
    spreads = [float(r["uncertainty_mm"]) for r in rows]
    assert np.mean(spreads) == pytest.approx(single["uncertainty"]["mean_spread_mm"], rel=1e-3)
    flagged = sorted({r["id"] for r in rows if r["plausible"] == "0"})
    assert flagged == sorted(single["plausibility"]["implausible_ids"])


def test_baseline_is_the_same_network_without_noise(trained, tmp_path):
    root = tmp_path / "baseline"
    args = ["--trainer.default_root_dir", root, "--trainer.max_steps", "2", "--model.init_args.diffusion", "false"]
    result = run(["fit", *TINY, *args])
    assert result.returncode == 0, result.stderr[-3000:]
    baseline = torch.load(root / "checkpoints/last.ckpt", weights_only=False)
    diffusion = torch.load(trained / "checkpoints/last.ckpt", weights_only=False)
    shapes = {k: v.shape for k, v in baseline["state_dict"].items()}
    assert shapes == {k: v.shape for k, v in diffusion["state_dict"].items()}
    metrics = _test(root, "--model.init_args.diffusion", "false")
    assert metrics["inference"] == {**metrics["inference"], "mode": "baseline", "network_calls_per_image": 1}


def test_mismatched_checkpoint_and_data_are_refused(trained, cli):
    test = ["test", *TINY, "--trainer.default_root_dir", trained, "--ckpt_path", "last"]
    code, _, err = cli(*test, "--model.init_args.inference.sampling_steps", "30")
    assert code != 0 and "ddim steps must be in [1, T = 20]" in err
    code, _, err = cli(*test, "--model.init_args.inference.sigma_min", "20")
    assert code != 0 and "sigma_min <= sigma_max" in err
    code, _, err = cli(*test, "--data.init_args.image_size", "[64, 64]")
    assert code != 0 and "data image size (64, 64) differs from the model's (32, 32)" in err
    # Loading a checkpoint into a model configured for other heatmaps names the file.
    from lightning_modules import LandmarkDiffusion

    model = LandmarkDiffusion(
        num_landmarks=18, image_size=(32, 32), network={"channels": (16, 32, 32)}, schedule={"num_train_timesteps": 20}
    )
    with pytest.raises(DataError, match="checkpoint has num_landmarks 19, the model config 18"):
        model.on_load_checkpoint(torch.load(trained / "checkpoints/last.ckpt", weights_only=False))


def test_old_names_are_refused_with_the_new_ones_and_old_checkpoints_load(trained, cli, tmp_path):
    from lightning_modules import LandmarkDiffusion, load_model

    test = ["test", *TINY, "--trainer.default_root_dir", trained, "--ckpt_path", "last"]
    code, _, err = cli(*test, "--model.init_args.ddim_steps", "3")
    assert code != 0 and "--model.init_args.ddim_steps is now --model.init_args.inference.sampling_steps" in err
    config = tmp_path / "old.yaml"
    config.write_text(
        "model:\n  class_path: lightning_modules.LandmarkDiffusion\n  init_args:\n    num_landmarks: 19\n"
        "    sampler: ddpm\n"
    )
    code, _, err = cli("test", "--config", config, "--trainer.default_root_dir", tmp_path / "r")
    assert code != 0 and "model.init_args.sampler is now 'inference.sampler'" in err and "old.yaml:5" in err
    # A checkpoint saved when the network was called `net` loads into `unet`.
    checkpoint = torch.load(trained / "checkpoints/last.ckpt", weights_only=False)
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {("net." + k[5:] if k.startswith("unet.") else k): v for k, v in state.items()}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model = load_model(tmp_path / "old.ckpt", LandmarkDiffusion)
    torch.testing.assert_close(model.unet.state_dict(), {k[5:]: v for k, v in state.items() if k.startswith("unet.")})
