"""Localizer loss and decoding, metrics against hand-computed values, real + synthetic training."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from tiny import DDP_TWO_CPU_PROCESSES, LOCALIZER, REPO, run

from datamodules import HandDataModule
from xraydiff.data.datasets import EpochSampler
from xraydiff.errors import DataError
from xraydiff.landmarks.localization import decode_landmarks, spatial_softmax_nll, target_distributions
from xraydiff.landmarks.metrics import (
    LandmarkErrors,
    check_radii,
    observer_agreement,
    observer_errors_mm,
    radial_errors_mm,
    summarize_errors,
)


def test_target_distributions_sum_to_one_and_nll_is_minimal_at_the_target():
    landmarks = torch.tensor([[[5.0, 7.0], [20.0, 3.5]]])
    target = target_distributions(landmarks, (24, 24), sigma=1.5)
    torch.testing.assert_close(target.sum(dim=(-1, -2)), torch.ones(1, 2))
    sharp = spatial_softmax_nll(torch.log(target + 1e-12), target)
    flat = spatial_softmax_nll(torch.zeros_like(target), target)
    assert sharp < flat
    assert flat.item() == pytest.approx(math.log(24 * 24), rel=1e-5)  # uniform prediction: log(HW)
    masked = spatial_softmax_nll(torch.zeros_like(target), target, mask=torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(math.log(24 * 24), rel=1e-5)


def test_decoding_finds_subpixel_peaks():
    truth = torch.tensor([[[10.3, 12.6], [3.0, 20.0]]])
    logits = torch.log(target_distributions(truth, (32, 32), sigma=1.0) + 1e-30)
    torch.testing.assert_close(decode_landmarks(logits, window=5), truth, atol=0.05, rtol=0)


def test_metrics_match_hand_computed_values():
    predicted = torch.tensor([[[0.0, 0.0], [10.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]]])
    target = torch.tensor([[[3.0, 4.0], [10.0, 0.0]], [[3.0, 4.0], [0.0, 30.0]]])
    errors = radial_errors_mm(predicted, target, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(errors, torch.tensor([[2.5, 0.0], [0.0, 30.0]]))
    summary = summarize_errors(errors, [2, 2.5], [2, 20])
    assert summary["mre_mm"] == pytest.approx(8.125) and summary["sdr"] == {"2": 50.0, "2.5": 75.0}
    assert summary["outliers"] == {"2": 2, "20": 1} and summary["n_images"] == 2 and summary["n_landmarks"] == 2
    assert summary["mre_sd_mm"] == pytest.approx(np.std([2.5, 0, 0, 30])) and summary["median_mm"] in (0.0, 2.5)
    assert summary["per_landmark_mm"] == pytest.approx([1.25, 15.0])


def test_two_doctor_metrics_match_hand_computed_values():
    # one image, two landmarks at 0.5 mm per pixel; senior and junior 6 px apart on landmark 0, 2 px on 1
    predicted = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])
    observers = torch.tensor([[[[0.0, 4.0], [10.0, 11.0]], [[0.0, -2.0], [10.0, 13.0]]]])
    errors = observer_errors_mm(predicted, observers, torch.tensor([0.5]))
    torch.testing.assert_close(errors, torch.tensor([[[2.0, 0.5], [1.0, 1.5]]]))
    inter = radial_errors_mm(observers[:, 0], observers[:, 1], torch.tensor([0.5]))
    torch.testing.assert_close(inter, torch.tensor([[3.0, 1.0]]))
    summary = observer_agreement(errors, inter, ["senior", "junior"])
    assert summary["mre_mm_to"] == {"senior": pytest.approx(1.25), "junior": pytest.approx(1.25)}
    assert summary["inter_observer_mm"] == pytest.approx(2.0)
    # landmark 0: nearer doctor 1.0 <= 3.0; landmark 1: nearer doctor 0.5 <= 1.0: both within
    assert summary["within_inter_observer"] == pytest.approx(100.0)
    far = observer_agreement(errors * 3, inter, ["senior", "junior"])  # 3.0 <= 3.0 within, 1.5 > 1.0 not
    assert far["within_inter_observer"] == pytest.approx(50.0)


def test_repeated_images_count_once():
    metric = LandmarkErrors()
    metric.update(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 1]))
    metric.update(torch.tensor([[1.0]]), torch.tensor([0]))  # padding repeat of image 0
    assert metric.compute().flatten().tolist() == [1.0, 2.0]


@pytest.mark.parametrize("radii,message", [([], "must not be empty"), ([2, -1], "must be positive")])
def test_bad_radii_are_refused(radii, message):
    with pytest.raises(DataError, match=message):
        check_radii(radii, "success detection rate")
    from callbacks.landmark_eval import LandmarkEvaluation

    with pytest.raises(DataError, match=message):
        LandmarkEvaluation(outlier_radii=radii)


def test_epoch_sampler_shares_is_reproducible_and_resumes():
    sampler = EpochSampler(n_real=30, n_synthetic=7, share=0.25, seed=1)
    epoch0 = list(sampler)
    indices = [i for i, _ in epoch0]
    assert len(epoch0) == 40 and sorted(i for i in indices if i < 30) == list(range(30))
    assert sum(i >= 30 for i in indices) == 10  # 30 real * 0.25 / 0.75
    assert list(EpochSampler(30, 7, 0.25, seed=1)) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    # the rest of an interrupted epoch, element for element
    resumed = EpochSampler(30, 7, 0.25, seed=1)
    resumed.resume_at(13)
    assert list(resumed) == epoch0[13:] and list(resumed) == epoch0  # only the next iteration is shortened
    # two ranks split the epoch's order without overlap, padded to equal length
    ranks = [list(EpochSampler(30, 7, 0.25, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks[0] + ranks[1] != epoch0 and sorted(ranks[0] + ranks[1]) == sorted(epoch0)
    with pytest.raises(DataError, match="synthetic_share"):
        EpochSampler(3, 3, 1.0)


def test_localizer_trains_tests_and_writes_metrics(cli, tmp_path):
    root = tmp_path / "loc"
    code, _, err = cli("fit", *LOCALIZER, "--trainer.default_root_dir", root, "--trainer.max_epochs", "3")
    assert code == 0, err
    metrics = json.loads((root / "val_metrics.json").read_text())
    assert set(metrics) >= {"mre_mm", "mre_sd_mm", "sdr", "outliers", "per_landmark_mm", "n_images", "n_landmarks"}
    assert metrics["n_images"] == 3 and metrics["n_landmarks"] == 37 and len(metrics["per_landmark_mm"]) == 37
    assert list(metrics["sdr"]) == ["2", "2.5", "3", "4"] and list(metrics["outliers"]) == ["2", "4", "10", "20"]
    assert (root / "val_per_landmark.png").exists() and (root / "val_worst_cases.png").exists()
    code, stdout, err = cli("test", *LOCALIZER, "--trainer.default_root_dir", root, "--ckpt_path", "last")
    assert code == 0, err
    test = json.loads((root / "test_metrics.json").read_text())
    assert test["n_images"] == 5 and test["mre_mm"] > 0 and "test/mre_mm" in stdout
    code, _, err = cli(
        "fit",
        *LOCALIZER,
        "--trainer.default_root_dir",
        tmp_path / "x",
        "--trainer.callbacks",
        '[{"class_path": "callbacks.landmark_eval.LandmarkEvaluation", "init_args": {"sdr_radii": []}}]',
    )
    assert code != 0 and "radii must not be empty" in err


def test_ddp_metrics_equal_single_process(tmp_path):
    root = tmp_path / "loc"
    assert run(["fit", *LOCALIZER, "--trainer.default_root_dir", root, "--trainer.max_epochs", "1"]).returncode == 0
    single = run(["test", *LOCALIZER, "--trainer.default_root_dir", root, "--ckpt_path", "last"])
    assert single.returncode == 0, single.stderr[-2000:]
    one = json.loads((root / "test_metrics.json").read_text())
    double = run(
        [
            "test",
            *LOCALIZER,
            "--trainer.default_root_dir",
            root,
            "--ckpt_path",
            "last",
            *DDP_TWO_CPU_PROCESSES,
        ]
    )
    assert double.returncode == 0, double.stderr[-2000:]
    two = json.loads((root / "test_metrics.json").read_text())
    assert two["n_images"] == one["n_images"] == 5  # 5 images over 2 ranks: one padded repeat dropped
    assert two["mre_mm"] == pytest.approx(one["mre_mm"], rel=1e-5)
    assert two["outliers"] == one["outliers"] and two["sdr"] == pytest.approx(one["sdr"])
    np.testing.assert_allclose(two["per_landmark_mm"], one["per_landmark_mm"], rtol=1e-5)


def test_synthetic_folders_join_training_only(tmp_path):
    from xraydiff.acceptance.config import AcceptanceConfig
    from xraydiff.acceptance.corruptions import render
    from xraydiff.acceptance.run import write_accepted_dataset
    from xraydiff.acceptance.statistics import ShapeStatistics

    dm = HandDataModule(image_size=(64, 64), annotations_only=True, phantom_counts={"train": 20, "test": 4})
    shapes, spacing, frame = dm.shape_table("train")
    stats = ShapeStatistics.fit(shapes, spacing, (64, 64), "hand", AcceptanceConfig(), frame)
    test = dm.shape_table("test")[0]
    write_accepted_dataset(tmp_path / "acc", ["a", "b", "c", "d"], render(test, (64, 64)), test, stats)
    mixed = HandDataModule(
        image_size=(32, 32),
        augmentation="none",
        phantom_counts={"train": 6, "val": 2, "test": 2},
        extra_train_dirs=[str(tmp_path / "acc")],
        synthetic_share=0.5,
    )
    batches = list(mixed.train_dataloader())
    flags = torch.cat([b["synthetic"] for b in batches])
    assert len(flags) == 12 and int(flags.sum()) == 6
    assert not any(b["synthetic"].any() for b in mixed.val_dataloader())
    assert mixed.summary()["synthetic"] == 4
    bad = HandDataModule(image_size=(32, 32), extra_train_dirs=[str(tmp_path / "acc")])
    bad.num_landmarks = 19
    with pytest.raises(DataError, match="synthetic pairs have 37 landmarks, the data 19"):
        bad.setup()
    manifest = json.loads((tmp_path / "acc/manifest.json").read_text())
    (tmp_path / "acc/manifest.json").write_text(json.dumps({**manifest, "image_size": [32, 32]}))
    with pytest.raises(DataError, match="synthetic image of size"):
        HandDataModule(image_size=(32, 32), extra_train_dirs=[str(tmp_path / "acc")]).setup()


assert REPO.is_dir()


def test_ceph_test_split_runs_when_present_and_is_named_when_missing(cli, tmp_path):
    from fakedata import make_ceph, write_png

    root = make_ceph(tmp_path / "isbi", ids=("001", "002", "003", "004"))
    args = [
        "--config",
        "configs/ceph/localizer_cpu.yaml",
        "--data.init_args.root",
        root,
        "--data.init_args.image_size",
        "[32, 32]",
        "--model.init_args.image_size",
        "[32, 32]",
        "--model.init_args.channels",
        "[8, 16, 32]",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        tmp_path / "run",
        "--data.init_args.augmentation",
        "none",
    ]
    code, _, err = cli("fit", *args)
    assert code == 0, err
    code, _, err = cli("test", *args, "--ckpt_path", "last")
    assert code != 0 and "RawImage/Test2Data: the test split is empty" in err
    (root / "RawImage/TrainingData/003.png").unlink()
    (root / "RawImage/Test2Data").mkdir()
    write_png(root / "RawImage/Test2Data/301.png", 110, 90)
    for doctor in ("400_senior", "400_junior"):
        (root / "AnnotationsByMD" / doctor / "003.txt").rename(root / "AnnotationsByMD" / doctor / "301.txt")
    code, stdout, err = cli("test", *args, "--ckpt_path", "last")
    assert code == 0, err
    metrics = json.loads((tmp_path / "run/test_metrics.json").read_text())
    assert metrics["n_images"] == 1

    # Two-doctor evaluation, recomputed from predictions.csv and the two annotation files.
    code, _, err = cli("predict", *args, "--ckpt_path", "last")
    assert code == 0, err
    with open(tmp_path / "run/predictions_test.csv") as f:  # Test1Data (val) is absent: test only
        rows = list(csv.DictReader(f))
    assert not (tmp_path / "run/predictions_val.csv").exists()
    # the shape check of the prediction, fitted on the 3 training shapes, agrees between CSV and JSON
    assert metrics["plausibility"]["checked"] == 1 and metrics["plausibility"]["training_shapes"] == 3
    assert {r["plausible"] for r in rows} == {"0" if metrics["plausibility"]["implausible_ids"] == ["301"] else "1"}
    assert [(r["id"], int(r["landmark"])) for r in rows] == [("301", k) for k in range(19)]
    predicted = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    doctors = [
        np.loadtxt(root / "AnnotationsByMD" / doctor / "301.txt", delimiter=",", max_rows=19)
        for doctor in ("400_senior", "400_junior")
    ]
    to_doctor = [np.linalg.norm(predicted - d, axis=1) * 0.1 for d in doctors]
    inter = np.linalg.norm(doctors[0] - doctors[1], axis=1) * 0.1
    np.testing.assert_allclose(
        metrics["mre_mm"], np.linalg.norm(predicted - (doctors[0] + doctors[1]) / 2, axis=1).mean() * 0.1, rtol=1e-4
    )
    observers = metrics["observers"]
    np.testing.assert_allclose(observers["mre_mm_to"]["senior"], to_doctor[0].mean(), rtol=1e-4)
    np.testing.assert_allclose(observers["mre_mm_to"]["junior"], to_doctor[1].mean(), rtol=1e-4)
    np.testing.assert_allclose(observers["inter_observer_mm"], inter.mean(), rtol=1e-4)
    within = (np.minimum(*to_doctor) <= inter).mean() * 100
    np.testing.assert_allclose(observers["within_inter_observer"], within, rtol=1e-4)


def test_ddp_epochs_draw_different_synthetic_subsets(tmp_path):
    """Under DDP (2 processes) Lightning must call set_epoch on the training sampler: each epoch draws
    its own synthetic subset, every real image once, and the two ranks never share an item."""
    from xraydiff.acceptance.config import AcceptanceConfig
    from xraydiff.acceptance.corruptions import render
    from xraydiff.acceptance.run import write_accepted_dataset
    from xraydiff.acceptance.statistics import ShapeStatistics

    dm = HandDataModule(image_size=(64, 64), annotations_only=True, phantom_counts={"train": 20, "test": 8})
    shapes, spacing, frame = dm.shape_table("train")
    stats = ShapeStatistics.fit(shapes, spacing, (64, 64), "hand", AcceptanceConfig(), frame)
    test = dm.shape_table("test")[0]
    synthetic_ids = [f"syn{k}" for k in range(8)]
    write_accepted_dataset(tmp_path / "acc", synthetic_ids, render(test, (64, 64)), test, stats)
    root = tmp_path / "loc"
    callback = {"class_path": "recording.RecordTrainingIds", "init_args": {"out": str(root)}}
    result = run(
        [
            "fit",
            *LOCALIZER,
            "--trainer.default_root_dir",
            root,
            "--trainer.max_epochs",
            "3",
            "--trainer.check_val_every_n_epoch",
            "10",
            "--data.init_args.extra_train_dirs",
            json.dumps([str(tmp_path / "acc")]),
            "--data.init_args.synthetic_share",
            "0.2",  # 8 real images -> 2 synthetic per epoch
            "--trainer.callbacks+",
            json.dumps(callback),
            *DDP_TWO_CPU_PROCESSES,
        ],
        env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((root / f"ids_rank{r}.json").read_text()) for r in (0, 1)]
    drawn = []
    for epoch in ("0", "1", "2"):
        first, second = ranks[0][epoch], ranks[1][epoch]
        assert len(first) == len(second) == 5 and not set(first) & set(second)
        real = sorted(i for i in first + second if i not in synthetic_ids)
        assert len(real) == len(set(real)) == 8
        drawn.append(frozenset(first + second) & set(synthetic_ids))
        assert len(drawn[-1]) == 2
    assert len(set(drawn)) > 1, f"every epoch drew the same synthetic pair {sorted(drawn[0])}: set_epoch not called"


def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_per_step():
    from lightning_modules.optim import warmup_cosine

    # warm-up of 10 steps of 110: 0, 0.1, ..., then 0.5 (1 + cos(pi (step - 10) / 100)), computed here
    assert [warmup_cosine(k, 110, 10) for k in (0, 5)] == [0.0, 0.5]
    for k in (10, 35, 60, 110, 200):
        assert warmup_cosine(k, 110, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * min(k - 10, 100) / 100)))
    assert warmup_cosine(50, None, 10) == 1.0  # no known length: constant after the warm-up
