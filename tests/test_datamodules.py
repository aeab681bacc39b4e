import json

import numpy as np
import pytest
import torch

from datamodules import CephalometricDataModule, HandDataModule, PanoramicDataModule
from xraydiff.data.geometry import to_original_pixels
from xraydiff.errors import DataError


@pytest.mark.parametrize("cls,count", [(HandDataModule, 37), (CephalometricDataModule, 19)])
def test_landmark_batches_follow_the_data_contract(cls, count):
    dm = cls(image_size=(48, 40), batch_size=3, phantom_counts={"train": 5, "val": 2, "test": 2})
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 1, 48, 40) and batch["image"].dtype == torch.float32
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["landmarks"].shape == (3, count, 2) and batch["landmarks"].dtype == torch.float32
    assert batch["visible"].shape == (3, count) and batch["visible"].dtype == torch.bool
    assert batch["scale"].shape == (3, 2) and (batch["scale"] > 0).all()
    assert batch["mm_per_px"].shape == (3,) and (batch["mm_per_px"] > 0).all()
    assert len(batch["id"]) == 3 and all(isinstance(i, str) for i in batch["id"])
    assert len(dm.dataset("val")) == 2 and len(dm.dataset("test")) == 2


def test_unaugmented_samples_map_back_to_original_pixels():
    dm = HandDataModule(image_size=(64, 64), augmentation="none", phantom_counts={"train": 3})
    sample = dm.dataset("train")[0]
    item = dm.items["train"][0]
    original = to_original_pixels(sample["landmarks"].double().numpy(), sample["scale"].double().numpy())
    np.testing.assert_allclose(original, item.landmarks_original, atol=1e-3)


def test_phantom_data_is_deterministic_by_seed_and_train_fraction_is_reproducible():
    a = HandDataModule(image_size=(32, 32), seed=4, train_fraction=0.1, phantom_counts={"train": 60})
    b = HandDataModule(image_size=(32, 32), seed=4, train_fraction=0.1, phantom_counts={"train": 60})
    a.setup()
    b.setup()
    assert len(a.items["train"]) == 6
    assert [i.id for i in a.items["train"]] == [i.id for i in b.items["train"]]
    np.testing.assert_array_equal(a.items["train"][0].image, b.items["train"][0].image)
    c = HandDataModule(image_size=(32, 32), seed=5, train_fraction=0.1, phantom_counts={"train": 60})
    c.setup()
    assert [i.id for i in c.items["train"]] != [i.id for i in a.items["train"]]


def test_augmented_training_samples_are_reproducible_under_a_torch_seed():
    dm = CephalometricDataModule(image_size=(64, 48), phantom_counts={"train": 2})
    torch.manual_seed(0)
    first = dm.dataset("train")[0]
    torch.manual_seed(0)
    again = dm.dataset("train")[0]
    torch.testing.assert_close(first["image"], again["image"])
    torch.testing.assert_close(first["landmarks"], again["landmarks"])
    plain = dm.dataset("train", augment=False)[0]
    assert not torch.equal(first["image"], plain["image"])


def test_panoramic_phantoms_have_masks_and_unlabelled_images():
    dm = PanoramicDataModule(image_size=(64, 128), phantom_counts={"train": 3, "val": 1, "test": 1, "unlabelled": 2})
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 1, 64, 128) and batch["mask"].shape == (3, 1, 64, 128)
    assert 0 < batch["mask"].mean() < 0.1
    unlabelled = dm.dataset("unlabelled")[0]
    assert "mask" not in unlabelled and unlabelled["image"].shape == (1, 64, 128)
    assert dm.summary()["unlabelled"] == 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"image_size": (4, 64)}, "image_size"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"augmentation": "nope"}, "augmentation preset"),
    ],
)
def test_bad_datamodule_settings_are_refused(kwargs, message):
    with pytest.raises(DataError, match=message):
        HandDataModule(**kwargs)


def test_summary_cli_writes_counts_landmarks_and_preview(cli, tmp_path):
    out = tmp_path / "summary"
    code, stdout, err = cli(
        "data",
        "summary",
        "--config",
        "configs/data/hand_phantom.yaml",
        "--data.init_args.image_size",
        "[64, 64]",
        "--data.init_args.phantom_counts",
        '{"train": 6, "val": 2, "test": 3}',
        "--out",
        out,
    )
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"] == {"train": 6, "val": 2, "test": 3}
    assert summary["num_landmarks"] == 37 and summary["image_size"] == [64, 64]
    lines = (out / "landmarks.csv").read_text().splitlines()
    assert lines[0] == "split,id,landmark,x,y,mm_per_px" and len(lines) == 1 + 11 * 37
    assert (out / "preview.png").stat().st_size > 10_000
    # A second run refuses to overwrite without --overwrite and leaves the folder as it was.
    before = sorted(p.name for p in out.iterdir())
    code, _, err = cli("data", "summary", "--config", "configs/data/hand_phantom.yaml", "--out", out)
    assert code != 0 and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_summary_cli_panoramic_phantom(cli, tmp_path):
    code, _, err = cli(
        "data",
        "summary",
        "--config",
        "configs/data/panoramic_phantom.yaml",
        "--data.init_args.image_size",
        "[64, 128]",
        "--data.init_args.phantom_counts",
        '{"train": 4, "val": 1, "test": 1, "unlabelled": 2}',
        "--out",
        tmp_path / "p",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "p/summary.json").read_text())
    assert summary["labelled"] == 6 and summary["unlabelled"] == 2 and summary["mask_coverage"]["mean"] > 0
    assert (tmp_path / "p/preview.png").exists()


def test_unknown_config_keys_are_refused(cli, tmp_path):
    code, _, err = cli(
        "data",
        "summary",
        "--config",
        "configs/data/hand_phantom.yaml",
        "--data.init_args.no_such_option",
        "1",
        "--out",
        tmp_path / "x",
    )
    assert code != 0 and "no_such_option" in err
    assert not (tmp_path / "x").exists()
