"""The readers reproduce the real files exactly (skipped without ../shared/data)."""

import csv

import numpy as np
import pytest
from conftest import SHARED_DATA, requires_shared_data

from datamodules import HandDataModule, PanoramicDataModule
from xraydiff.data.geometry import to_original_pixels
from xraydiff.data.readers import read_ceph_dataset, read_hand_annotations, read_panoramic_dataset

pytestmark = requires_shared_data
HAND = SHARED_DATA / "hand_dha"
ISBI = SHARED_DATA / "isbi2015"
UFBA = SHARED_DATA / "ufba425"


def test_hand_csv_coordinates_equal_the_file():
    rows = read_hand_annotations(HAND / "setup/all.csv")
    with open(HAND / "setup/all.csv") as handle:
        raw = [line for line in csv.reader(handle) if line]
    assert len(rows) == len(raw) == 910
    for line in raw:
        expected = np.array([int(v) for v in line[1:]], dtype=float).reshape(37, 2)
        np.testing.assert_array_equal(rows[line[0]][0], expected)


def test_hand_summary_reports_original_pixels_and_wrist_width_spacing(cli, tmp_path):
    code, _, err = cli(
        "data",
        "summary",
        "--config",
        "configs/data/hand_dha.yaml",
        "--data.init_args.root",
        HAND,
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "out/landmarks.csv")))
    annotations = read_hand_annotations(HAND / "setup/all.csv")
    assert {r["id"] for r in rows} == {p.stem for p in (HAND / "images").glob("*.mha")}
    for row in rows:
        points = annotations[row["id"]][0]
        assert (float(row["x"]), float(row["y"])) == tuple(points[int(row["landmark"])])
        assert float(row["mm_per_px"]) == pytest.approx(50 / np.linalg.norm(points[1] - points[5]))


def test_hand_images_decode_and_landmarks_map_back():
    dm = HandDataModule(root=str(HAND), split_dir="setup/cv_reduced/set1", image_size=(256, 256), val_fraction=0.0)
    dm.setup()
    assert len(dm.items["train"]) == 6 and len(dm.items["test"]) == 3
    for item in dm.items["train"]:
        assert item.image.shape == (256, 256) and -1 <= item.image.min() < item.image.max() <= 1
        np.testing.assert_allclose(
            to_original_pixels(item.landmarks.astype(float), item.scale), item.landmarks_original, atol=1e-3
        )
    # The full cross-validation lists of Payer et al.: 597 / 298 ids, all annotated.
    annotations = read_hand_annotations(HAND / "setup/all.csv")
    for split, count in (("train", 597), ("test", 298)):
        ids = (HAND / "setup/cv/set1" / f"{split}.txt").read_text().split()
        assert len(ids) == count and set(ids) <= set(annotations)


def test_hand_train_fraction_draws_the_reduced_dataset_reproducibly():
    from xraydiff.data.readers import read_hand_dataset

    records = read_hand_dataset(HAND, split_dir="setup/cv/set1", require_images=False)
    assert len(records["train"]) == 597
    dm = HandDataModule(root=str(HAND), split_dir="setup/cv_reduced/set1", train_fraction=0.5, seed=3, val_fraction=0.0)
    dm.setup()
    again = HandDataModule(
        root=str(HAND), split_dir="setup/cv_reduced/set1", train_fraction=0.5, seed=3, val_fraction=0.0
    )
    again.setup()
    assert [i.id for i in dm.items["train"]] == [i.id for i in again.items["train"]]
    assert len(dm.items["train"]) == 3


def test_ceph_ground_truth_is_the_doctors_mean(cli, tmp_path):
    code, _, err = cli(
        "data",
        "summary",
        "--config",
        "configs/data/isbi2015.yaml",
        "--data.init_args.root",
        ISBI,
        "--data.init_args.image_size",
        "[100, 80]",
        "--num_preview",
        "2",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "o/landmarks.csv")))
    assert len(rows) == 300 * 19
    for row in rows[::7]:
        senior = np.loadtxt(ISBI / "AnnotationsByMD/400_senior" / f"{row['id']}.txt", delimiter=",", max_rows=19)
        junior = np.loadtxt(ISBI / "AnnotationsByMD/400_junior" / f"{row['id']}.txt", delimiter=",", max_rows=19)
        k = int(row["landmark"])
        assert (float(row["x"]), float(row["y"])) == tuple((senior[k] + junior[k]) / 2)
        assert float(row["mm_per_px"]) == 0.1
    splits = {r["split"] for r in rows}
    assert splits == {"train", "val"}  # Test2Data is not in the public copy: an empty split


def test_ceph_single_doctor_ground_truth():
    senior = read_ceph_dataset(ISBI, ground_truth="senior")
    first = senior["train"][0]
    np.testing.assert_array_equal(
        first.landmarks, np.loadtxt(ISBI / "AnnotationsByMD/400_senior/001.txt", delimiter=",", max_rows=19)
    )
    assert [len(senior[s]) for s in ("train", "val", "test")] == [150, 150, 0]
    # both doctors are kept for two-doctor evaluation, senior first, whatever the ground truth
    junior = np.loadtxt(ISBI / "AnnotationsByMD/400_junior/001.txt", delimiter=",", max_rows=19)
    np.testing.assert_array_equal(first.observers, np.stack([first.landmarks, junior]))
    mean = read_ceph_dataset(ISBI)["train"][0]
    np.testing.assert_array_equal(mean.observers, first.observers)
    np.testing.assert_array_equal(read_ceph_dataset(ISBI, ground_truth="junior")["train"][0].observers, first.observers)
    # Test1Data is the validation split; sizes come from the headers (the summary test decodes the pixels).
    first_val = senior["val"][0]
    assert first_val.original_size == (2400, 1935) and first_val.id == "151"


def test_panoramic_label_maps_give_binary_targets():
    labelled, _ = read_panoramic_dataset(UFBA, mask_dir="labels")
    assert len(labelled) == 215
    dm = PanoramicDataModule(root=str(UFBA), mask_dir="labels", classes=[36, 37, 38, 46, 47, 48])
    dm.setup()
    summary = dm.summary()
    assert summary["labelled"] == 215 and sum(summary["splits"].values()) == 215
    assert 0.01 < summary["mask_coverage"]["mean"] < 0.1
    sample = dm.dataset("train", augment=False)[0]
    assert sample["image"].shape == (1, 256, 512) and set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
