"""`xraydiff experiment landmarks`: the comparison study at toy size, resumable; bad study configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from experiments.landmarks import load_landmark_study_config
from xraydiff.errors import DataError

# The demo model at 32 x 32 with T = 20 (the T-step chain is 20 calls), 4 phantom training skulls.
ARGS = [
    "--model.init_args.image_size", "[32, 32]",
    "--model.init_args.network.channels", "[16, 32, 32]",
    "--model.init_args.network.attention_levels", "[false, false, true]",
    "--model.init_args.schedule.num_train_timesteps", "20",
    "--model.init_args.schedule.beta_end", "0.2",
    "--model.init_args.inference.sigma_max", "3.0",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip
MODES = {
    "single": {"sampler": "single"},
    "ddim3": {"sampler": "ddim", "sampling_steps": 3},
    "ensemble3x2": {"sampler": "ddim", "sampling_steps": 3, "ensemble": 2, "ddim_eta": 1.0},
    "multi": {"sampler": "ddpm", "max_images": 2},
}
# (network calls per image, images evaluated on Test1 / Test2) known from the modes and the data:
# batch 2, 4 Test1 and 3 Test2 phantoms; max_images 2 = one batch.
EXPECTED = {
    "baseline": (1, 4, 3),
    "single": (1, 4, 3),
    "ddim3": (3, 4, 3),
    "ensemble3x2": (6, 4, 3),
    "multi": (20, 2, 2),
}


def _write(tmp_path, **changes) -> str:
    experiment = {
        "config": ["configs/demo/ceph_landmark_diffusion.yaml"],
        "args": ARGS,
        "data": {"image_size": [32, 32], "batch_size": 2, "phantom_counts": {"train": 4, "val": 4, "test": 3}},
        "max_steps": 3,
        "modes": MODES,
    }
    experiment.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"experiment": experiment}, sort_keys=False))
    return str(path)


def test_study_trains_both_models_equally_evaluates_every_mode_and_resumes(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = cli("experiment", "landmarks", "--config", _write(tmp_path), "--out", out)
    assert code == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    # Equal budget by construction: both checkpoints stopped after exactly max_steps optimizer steps.
    for name, diffusion in (("baseline", False), ("diffusion", True)):
        saved = torch.load(out / name / "checkpoints/last.ckpt", weights_only=False, map_location="cpu")
        assert saved["global_step"] == 3 and saved["hyper_parameters"]["diffusion"] is diffusion
        assert results["models"][f"{name} seed 0"]["global_step"] == 3
    assert results["budget"] == {"max_steps": 3, "batch_size": 2, "train_images": 4, "seeds": [0]}
    assert results["test_sets"] == {"Test1": "val", "Test2": "test"}
    assert list(results["rows"]) == list(EXPECTED)
    for name, (calls, test1, test2) in EXPECTED.items():
        metrics = results["rows"][name]["metrics"]
        assert metrics["Test1"]["inference"]["network_calls_per_image"] == calls, name
        assert (metrics["Test1"]["n_images"], metrics["Test2"]["n_images"]) == (test1, test2), name
        # the row is the evaluation's own metrics file, not a copy that could drift
        folder = out / "eval" / name
        assert json.loads((folder / "val_metrics.json").read_text())["mre_mm"] == metrics["Test1"]["mre_mm"]
        assert json.loads((folder / "test_metrics.json").read_text())["mre_mm"] == metrics["Test2"]["mre_mm"]
    assert results["rows"]["baseline"]["metrics"]["Test1"]["inference"]["mode"] == "baseline"
    assert "uncertainty" in results["rows"]["ensemble3x2"]["metrics"]["Test1"]
    assert all("uncertainty" not in results["rows"][n]["metrics"]["Test1"] for n in ("single", "ddim3", "multi"))
    table = (out / "results.md").read_text()
    single = results["rows"]["single"]["metrics"]["Test1"]
    assert f"{single['mre_mm']:.2f} +- {single['mre_sd_mm']:.2f}" in table
    assert all(line in stdout for line in table.splitlines() if line.startswith("| "))  # printed as written
    assert "DDIM k=3, ensemble M=2 [ensemble3x2]" in table
    # Paired against the baseline on the images both rows saw (multi: its 2), the mean of the
    # per-image differences of the two rows' own metrics files.
    baseline = results["rows"]["baseline"]["metrics"]["Test1"]["per_image_mre_mm"]
    assert len(baseline) == 4 and set(results["paired"]["Test1"]) == set(MODES)
    for name in MODES:
        row = results["rows"][name]["metrics"]["Test1"]["per_image_mre_mm"]
        expected = np.mean([row[i] - baseline[i] for i in row])
        paired = results["paired"]["Test1"][name]
        assert paired["n_images"] == len(row) == EXPECTED[name][1]
        assert paired["mean_difference"] == pytest.approx(expected)
        assert paired["ci95"][0] <= paired["mean_difference"] <= paired["ci95"][1]
        assert paired["seeds"] == 1 and "(one training seed)" in table
    assert "## Paired comparison with the baseline" in table and "## Two doctors and prediction QC" in table

    # Rerun: every step is skipped and the results are the same; a step without its marker reruns.
    (out / "eval" / "ddim3" / "done.json").unlink()
    code, stdout, err = cli("experiment", "landmarks", "--config", _write(tmp_path), "--out", out)
    assert code == 0, err[-3000:]
    assert stdout.count("[skip]") == 6 and "[run ] ddim3 seed 0: evaluate" in stdout
    again = json.loads((out / "results.json").read_text())
    assert again["rows"]["ddim3"]["metrics"]["Test1"]["mre_mm"] == pytest.approx(
        results["rows"]["ddim3"]["metrics"]["Test1"]["mre_mm"], rel=1e-6
    )  # the per-image seeds make inference a function of the checkpoint and the image


def test_several_training_seeds_are_trained_evaluated_and_compared_over_seeds(cli, tmp_path):
    out = tmp_path / "out"
    config = _write(tmp_path, seeds=[0, 1], modes={"single": {"sampler": "single"}}, max_steps=2)
    code, _, err = cli("experiment", "landmarks", "--config", config, "--out", out)
    assert code == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    for name in ("baseline", "diffusion"):  # seed 0 keeps the one-seed folder, seed 1 has its own
        first, second = (
            torch.load(out / f / "checkpoints/last.ckpt", weights_only=False) for f in (name, f"{name}_seed1")
        )
        assert not torch.equal(*(next(iter(c["state_dict"].values())) for c in (first, second)))
    row, baseline = (results["rows"][n]["by_seed"] for n in ("single", "baseline"))
    assert set(row) == {"0", "1"} and (out / "eval/single_seed1/val_metrics.json").exists()
    paired = results["paired"]["Test1"]["single"]
    assert paired["seeds"] == 2 and paired["seeds_per_row"] == [2, 2]
    expected = np.mean([[row[s]["Test1"]["per_image_mre_mm"][i] - baseline[s]["Test1"]["per_image_mre_mm"][i]
                         for i in row[s]["Test1"]["per_image_mre_mm"]] for s in ("0", "1")])  # fmt: skip
    assert paired["mean_difference"] == pytest.approx(expected)
    seed_sd = np.std([row[s]["Test1"]["mre_mm"] for s in ("0", "1")], ddof=1)
    assert f"2 (seed SD {seed_sd:.3f})" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modes": {"bad": {"sampler": "ddim", "sampling_steps": 30}}}, "ddim steps must be in [1, T = 20]"),
        ({"modes": {"bad": {"sampler": "ddim", "sampling_steps": 3, "ensemble": 0}}}, "ensemble must be at least 1"),
        ({"modes": {"bad": {"sampler": "ddpm", "sigma_min": 5.0}}}, "sigma_min <= sigma_max"),
        ({"modes": {"bad": {"sampler": "sideways"}}}, "sampler must be one of"),
        ({"modes": {"bad": {"inference": "ddim", "ddim_steps": 3}}}, "modes.bad.ddim_steps is now 'sampling_steps'"),
        ({"modes": {"bad": {"sampler": "single", "temperature": 2}}}, "unknown key experiment.modes.bad.temperature"),
        ({"modes": {"bad": {"sampler": "ddpm", "max_images": 0}}}, "modes.bad.max_images must be at least 1"),
        (
            {"modes": {"bad": {"sampler": "ddim", "sampling_steps": 3, "x0_estimate": "tanh"}}},
            "x0_estimate must be one of",
        ),
        (
            {"modes": {"bad": {"sampler": "ddim", "sampling_steps": 3, "chain_decoding": "mean"}}},
            "chain_decoding must be",
        ),
        ({"max_steps": 0}, "experiment.max_steps must be at least 1, got 0"),
        ({"test_sets": {"Test3": "train"}}, "experiment.test_sets.Test3 must be one of ['val', 'test'], got 'train'"),
        ({"config": ["configs/demo/missing.yaml"]}, "configs/demo/missing.yaml not found"),
    ],
)
def test_bad_study_configs_stop_before_any_work_naming_file_and_line(cli, tmp_path, change, message):
    path = _write(tmp_path, **change)
    with pytest.raises(DataError) as error:
        load_landmark_study_config(path)
    assert message in str(error.value) and str(error.value).startswith(f"{path}:")
    if "modes" in change:  # the line of the offending mode or of its offending key
        line = int(str(error.value).removeprefix(f"{path}:").split(":")[0])
        text = open(path).read().splitlines()[line - 1].strip()
        assert text.startswith("bad:") or text.split(":")[0] in change["modes"]["bad"], text
    code, _, err = cli("experiment", "landmarks", "--config", path, "--out", tmp_path / "out")
    assert code == 1 and message in err and not (tmp_path / "out").exists()


def test_the_shipped_study_configs_are_valid():
    for path, rows in (("configs/ceph/landmarks_cpu.yaml", 7), ("configs/demo/ceph_landmarks.yaml", 6)):
        config = load_landmark_study_config(path)
        assert len(config.modes) == rows and config.max_steps > 0
        multi = config.modes["multi"]
        assert multi["sampler"] == "ddpm" and math.isfinite(multi.get("max_images", math.inf))


def test_paired_difference_is_the_mean_per_image_difference_with_a_bootstrap_interval():
    from xraydiff.metrics import paired_difference

    rng = np.random.default_rng(0)
    reference = rng.uniform(1, 5, 60)
    same = paired_difference(reference, reference)
    assert same["mean_difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["verdict"] == "no difference shown"
    # A shift of -1 with per-image noise of SD 0.1: the interval is about mean +- 1.96 SD / sqrt(n).
    noise = rng.normal(0, 0.1, 60)
    better = paired_difference(reference - 1 + noise, reference)
    assert better["mean_difference"] == pytest.approx(float(np.mean(noise - 1)))
    half_width = 1.96 * np.std(noise, ddof=1) / np.sqrt(60)
    low, high = better["ci95"]
    assert low < better["mean_difference"] < high and (high - low) / 2 == pytest.approx(half_width, rel=0.2)
    assert better["verdict"] == "lower" and paired_difference(reference, reference - 1 + noise)["verdict"] == "higher"
    # Unpaired noise far larger than the shift: no verdict.
    assert paired_difference(reference + rng.normal(0.05, 2, 60), reference)["verdict"] == "no difference shown"
    with pytest.raises(DataError, match="two equal rows"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
