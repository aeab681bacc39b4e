"""`xraydiff acceptance fit|render|run|rate` and the acceptance callback, on phantoms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from tiny import DDPM

from datamodules import HandDataModule
from xraydiff.data.samples import write_sample

HAND = [
    "--config",
    "configs/data/hand_phantom.yaml",
    "--data.init_args.phantom_counts",
    '{"train": 120, "val": 4, "test": 24}',
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import acceptance_outputs

    root = tmp_path_factory.mktemp("acceptance")
    acceptance_outputs(root, HAND)
    return root


def test_fit_writes_versioned_statistics(fitted):
    data = json.loads((fitted / "stats.json").read_text())
    assert data["format"] == "xraydiff-shape-statistics" and data["num_landmarks"] == 37
    assert data["num_shapes"] == 120 and data["image_size"] == [256, 256]
    assert data["frame"]["annotations_only"] is True and data["config"]["rule_set"] == "strict"
    assert len(data["mm_per_px"]) == 2 and data["topology"]["kind"] == "delaunay"


def test_render_writes_ground_truth_in_the_sample_format(fitted):
    manifest = json.loads((fitted / "gt/manifest.json").read_text())
    assert manifest["count"] == 24 and manifest["source"] == "ground truth"
    sample = np.load(fitted / "gt" / f"{manifest['ids'][0]}.npz")
    assert sample["heatmap"].shape == (256, 256) and sample["landmarks"].shape == (37, 2)
    assert sample["image"].std() > 0.1  # phantoms have images
    peak = np.unravel_index(sample["heatmap"].argmax(), (256, 256))
    assert np.linalg.norm(sample["landmarks"][:, ::-1] - peak, axis=1).min() < 1.0


def test_run_reports_exports_and_draws(cli, fitted, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli(
        "acceptance", "run", "--samples", fitted / "gt", "--stats", fitted / "stats.json", "--out", out
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 24 and report["accepted"] >= 23 and report["acceptance_rate"] == report["accepted"] / 24
    assert set(report["acceptance_rate_by_rule_set"]) == {"paper", "strict"}
    sample = report["samples"][0]
    assert set(sample) >= {"id", "accepted", "failed_rules", "landmarks"} and len(sample["landmarks"]) == 37
    rows = list(csv.reader(open(out / "accepted/setup/all.csv")))
    assert len(rows) == report["accepted"] and len(rows[0]) == 75
    dm = HandDataModule(root=str(out / "accepted"), image_size=(256, 256), augmentation="none", val_fraction=0.0)
    dm.setup()
    assert len(dm.items["train"]) == report["accepted"]
    accepted = next(s for s in report["samples"] if s["accepted"])
    item = next(i for i in dm.items["train"] if i.id == accepted["id"])
    np.testing.assert_allclose(item.landmarks, accepted["landmarks"], atol=2e-3)
    assert (out / "gallery.png").stat().st_size > 20_000
    # The paper's rule set in one more run; refusing to overwrite.
    code, _, err = cli(
        "acceptance",
        "run",
        "--samples",
        fitted / "gt",
        "--stats",
        fitted / "stats.json",
        "--out",
        out,
        "--rule_set",
        "paper",
    )
    assert code != 0 and "--overwrite" in err


def _bad_samples(folder, kind):
    folder.mkdir()
    image = np.zeros((256, 256), np.float32)
    if kind == "no heatmap":
        np.savez(folder / "a.npz", image=image)
    elif kind == "size":
        write_sample(folder, "a", np.zeros((64, 64)), np.zeros((64, 64)))
    elif kind in ("zero bytes", "truncated", "text"):
        write_sample(folder, "a", image, np.zeros((256, 256), np.float32))
        whole = (folder / "a.npz").read_bytes()
        content = {"zero bytes": b"", "truncated": whole[: len(whole) // 2], "text": b"id,x,y\n1,2,3\n"}[kind]
        (folder / "a.npz").write_bytes(content)
    elif kind == "range":  # a [0, 255] map that was never scaled to the sample format
        write_sample(folder, "a", image, np.full((256, 256), 255.0, np.float32))
    elif kind == "nan":
        heatmap = np.zeros((256, 256), np.float32)
        heatmap[3, 4] = np.nan
        write_sample(folder, "a", image, heatmap)
    return folder


@pytest.mark.parametrize(
    "kind,message",
    [
        ("no heatmap", "a.npz: sample has no 'heatmap' array"),
        # The samples' size differs from the statistics': refit them at the samples' size (the command).
        (
            "size",
            "are (64, 64): fit statistics at their size, e.g. xraydiff acceptance fit --config DATA_CONFIG "
            "--data.init_args.image_size '[64, 64]'",
        ),  # fmt: skip
        ("nan", "a.npz: 'heatmap' contains NaN"),
        ("range", "a.npz: heatmap values must lie in [-1, 1] (the sample format), found [255, 255]"),
        ("empty", "samples folder holds no .npz samples"),
        ("zero bytes", "a.npz: sample file is empty"),
        ("truncated", "a.npz: not a readable .npz archive (BadZipFile"),
        ("text", "a.npz: not a NumPy .npz archive (text or other content)"),
    ],
)
def test_bad_samples_are_refused(cli, fitted, tmp_path, kind, message):
    folder = _bad_samples(tmp_path / "s", kind) if kind != "empty" else tmp_path / "s"
    folder.mkdir(exist_ok=True)
    code, _, err = cli(
        "acceptance", "run", "--samples", folder, "--stats", fitted / "stats.json", "--out", tmp_path / "o"
    )
    assert code != 0 and message in err
    assert not (tmp_path / "o").exists()


def test_bad_statistics_are_refused(cli, fitted, tmp_path):
    data = json.loads((fitted / "stats.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({**data, "version": 0}))
    code, _, err = cli(
        "acceptance", "run", "--samples", fitted / "gt", "--stats", tmp_path / "old.json", "--out", tmp_path / "o"
    )
    assert code != 0 and "old.json: statistics file version 0 is not supported" in err
    write_sample(tmp_path / "g", "x", np.zeros((256, 256)), np.zeros((256, 256)), landmarks=np.zeros((19, 2)))
    code, _, err = cli(
        "acceptance", "run", "--samples", tmp_path / "g", "--stats", fitted / "stats.json", "--out", tmp_path / "o"
    )
    assert code != 0 and "x.npz: sample has 19 landmarks, the statistics 37" in err
    assert not (tmp_path / "o").exists()


def test_rate_reproduces_the_papers_protocol(cli, tmp_path):
    root = tmp_path / "ddpm"
    code, _, err = cli("fit", *DDPM, "--trainer.default_root_dir", root, "--trainer.max_epochs", "1")
    assert code == 0, err
    code, _, err = cli(
        "acceptance",
        "fit",
        "--config",
        "configs/data/hand_phantom.yaml",
        "--data.init_args.image_size",
        "[16, 16]",
        "--annotations_only",
        "--out",
        tmp_path / "s.json",
    )
    assert code == 0, err
    code, stdout, err = cli(
        "acceptance",
        "rate",
        "--ckpt_path",
        root / "checkpoints/last.ckpt",
        "--stats",
        tmp_path / "s.json",
        "--runs",
        3,
        "--num_samples",
        4,
        "--steps",
        2,
        "--sampler",
        "ddim",
        "--out",
        tmp_path / "rate",
    )
    assert code == 0, err
    result = json.loads((tmp_path / "rate/acceptance.json").read_text())
    assert result["runs"] == 3 and len(result["per_run"]) == 3 and [r["seed"] for r in result["per_run"]] == [0, 1, 2]
    assert all(r["n"] == 4 for r in result["per_run"])
    # the summary follows from the runs' counts: mean and Bessel-corrected SD of accepted / 4
    counts = [r["accepted"] for r in result["per_run"]]
    assert [r["acceptance_rate"] for r in result["per_run"]] == [c / 4 for c in counts]
    assert result["mean"] == pytest.approx(np.mean(counts) / 4)
    assert result["sd"] == pytest.approx(np.std(counts, ddof=1) / 4)
    assert "acceptance rate (strict)" in stdout
    code, _, err = cli(
        "acceptance",
        "rate",
        "--ckpt_path",
        root / "checkpoints/last.ckpt",
        "--stats",
        tmp_path / "s.json",
        "--runs",
        0,
        "--out",
        tmp_path / "r2",
    )
    assert code != 0 and "runs: must be > 0" in err


def test_acceptance_callback_logs_the_rate_during_training(cli, tmp_path):
    callbacks = (
        '[{"class_path": "callbacks.acceptance.AcceptanceCallback", '
        '"init_args": {"every_n_epochs": 1, "num_samples": 3, "steps": 2}}]'
    )
    root = tmp_path / "run"
    code, _, err = cli(
        "fit", *DDPM, "--trainer.default_root_dir", root, "--trainer.max_epochs", "2", "--trainer.callbacks", callbacks
    )
    assert code == 0, err
    metrics = next(root.rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in metrics[1:]]
    rates = [r["acceptance/rate"] for r in rows if r.get("acceptance/rate")]
    # a rate of 3 judged samples is a whole number of thirds
    assert len(rates) == 2 and all(float(r) * 3 == pytest.approx(round(float(r) * 3)) for r in rates)
    assert [float(r["acceptance/n"]) for r in rows if r.get("acceptance/n")] == [3.0, 3.0]
    assert (root / "acceptance/shape_stats.json").exists() and (root / "acceptance/epoch=0001.png").exists()


def test_rate_mean_and_sd_match_a_hand_computed_case(tmp_path, fitted):
    """Runs of a stand-in generator with a known number of plausible hands per run: run 0 yields 3 of 4
    accepted, run 1 1 of 4, run 2 2 of 4. Mean 0.5; SD with Bessel's correction sqrt((0.25^2 + 0.25^2 + 0) / 2)."""
    import math

    import torch

    from xraydiff.acceptance.rate import measure_acceptance_rate
    from xraydiff.acceptance.statistics import ShapeStatistics
    from xraydiff.landmarks.heatmaps import gaussian_heatmaps

    stats = ShapeStatistics.load(fitted / "stats.json")
    real = [np.load(p)["landmarks"] for p in sorted((fitted / "gt").glob("*.npz"))[:3]]
    plan = iter([3, 1, 2])

    class StandIn:
        image_size, device = tuple(stats.image_size), torch.device("cpu")

        def sampling_description(self, sampler, steps):
            return "ddim", 1

        def generate(self, num, generator=None, sampler=None, steps=None):
            good = next(plan)
            heatmaps = [
                gaussian_heatmaps(torch.from_numpy(real[k % len(real)]), self.image_size, 1.0, combine=True,
                                  normalize=True)[0]
                if k < good else torch.full(self.image_size, -1.0)  # no hand at all: rejected
                for k in range(num)
            ]  # fmt: skip
            return torch.stack([torch.stack([torch.zeros(self.image_size), h]) for h in heatmaps])

    result = measure_acceptance_rate(StandIn(), "standin", fitted / "stats.json", tmp_path, runs=3, num_samples=4,
                                     batch_size=4, rule_set="paper")  # fmt: skip
    assert [row["accepted"] for row in result["per_run"]] == [3, 1, 2]
    assert result["mean"] == pytest.approx(0.5)
    assert result["sd"] == pytest.approx(math.sqrt((0.25**2 + 0.25**2 + 0.0) / 2))
