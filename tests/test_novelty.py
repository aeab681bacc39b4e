"""`xraydiff novelty`: the nearest-image search, the calibrated threshold and known answers on phantoms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli
from scipy import ndimage, stats

from xraydiff.data.imageio import write_png
from xraydiff.data.novelty import calibrate, nearest, reduced
from xraydiff.data.samples import write_manifest, write_sample

HAND = ["--config", "configs/data/hand_phantom.yaml"]  # train 64, val 16, test 16 phantoms
SIZE = ["--data.init_args.image_size", "[64, 64]"]
PANORAMIC = ["--config", "configs/data/panoramic_demo.yaml"]  # 64 x 128, the demo LDM's data
DEMO_LDM = REPO / "xraydiff/assets/demo_panoramic_ldm.ckpt"


def brute_force(queries: np.ndarray, references: np.ndarray, shift: int) -> np.ndarray:
    """1 - max Pearson r over references and every relative shift, by np.corrcoef on each pair of windows."""
    height, width = queries.shape[-2:]
    h, w = height - 2 * shift, width - 2 * shift
    centre = references[:, shift : shift + h, shift : shift + w]
    best = np.full(len(queries), -np.inf)
    for q, query in enumerate(queries):
        for dy in range(2 * shift + 1):
            for dx in range(2 * shift + 1):
                window = query[dy : dy + h, dx : dx + w].ravel()
                for ref in centre:
                    best[q] = max(best[q], np.corrcoef(window, ref.ravel())[0, 1])
    return 1 - best


def test_nearest_matches_brute_force_correlation():
    rng = np.random.default_rng(0)
    references = ndimage.gaussian_filter(rng.normal(size=(12, 14, 16)), (0, 1.5, 1.5))
    queries = np.concatenate([references[[3, 7]] * 2.0 + 0.3, rng.normal(size=(3, 14, 16))])  # two rescaled copies
    queries[1] = np.roll(queries[1], (1, -2), axis=(0, 1))  # a shifted copy
    distance, index = nearest(torch.tensor(queries)[:, None], torch.tensor(references)[:, None], max_shift=2, chunk=2)
    np.testing.assert_allclose(distance.numpy(), brute_force(queries, references, 2), atol=1e-5)
    assert index[:2].tolist() == [3, 7] and distance[:2].max() < 0.05  # gain, offset and the shift forgiven
    assert distance[2:].min() > 0.3


def test_reduced_keeps_the_aspect_and_never_enlarges():
    assert reduced(torch.ones(2, 1, 64, 128), 32).shape == (2, 1, 16, 32)
    assert reduced(torch.ones(1, 1, 20, 10), 32).shape == (1, 1, 20, 10)


@pytest.mark.parametrize("n, method", [(30, "gamma"), (500, "gamma"), (2000, "empirical")])
def test_calibrate_finds_the_one_percent_quantile(n, method):
    law = stats.gamma(4.0, scale=0.02)
    threshold = calibrate(law.rvs(n, random_state=np.random.default_rng(1)))
    assert threshold.method == method and threshold.n == n
    # the share of new held-out images below the threshold is near the level
    assert 0.001 < law.cdf(threshold.value) < 0.03, law.cdf(threshold.value)
    assert "1%" in threshold.describe() and str(n) in threshold.describe()


def test_calibrate_needs_held_out_images():
    with pytest.raises(ValueError, match="at least 5"):
        calibrate(np.array([0.1, 0.2]))


# ------------------------------------------------------------------------------------- known answers


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The phantom hands' train and test splits written as samples by ``acceptance render`` (64 x 64)."""
    root = tmp_path_factory.mktemp("novelty")
    for split in ("train", "test"):
        code, _, err = run_cli(["acceptance", "render", *HAND, *SIZE, "--split", split, "--out", root / split])
        assert code == 0, err
    return root


def novelty(cli, samples, out, *extra, data=HAND) -> dict:
    code, stdout, err = cli("novelty", *data, "--samples", samples, "--out", out, *extra)
    assert code == 0, err
    assert "near copies" in stdout and (out / "gallery.png").stat().st_size > 0
    return json.loads((out / "report.json").read_text())


def test_training_images_are_near_copies_and_test_images_are_not(cli, rendered, tmp_path):
    train = novelty(cli, rendered / "train", tmp_path / "train")
    assert train["near_copy_rate"] >= 0.95 and train["n"] == 64 and train["train_images"] == 64
    assert all(s["nearest"] == s["id"] for s in train["samples"])  # each one's own image
    threshold = train["threshold"]
    assert threshold["n"] == 16 and threshold["method"] == "gamma" and "16 held-out" in threshold["description"]
    test = novelty(cli, rendered / "test", tmp_path / "test")
    assert test["near_copy_rate"] <= 0.05 and test["n"] == 16
    assert test["threshold"] == threshold  # calibrated on the same held-out split
    low, high = test["near_copy_rate_ci95"]
    assert low == 0 and 0.1 < high < 0.3  # Wilson: 0 of 16


def test_slightly_augmented_training_images_are_still_near_copies(cli, rendered, tmp_path):
    rng = np.random.default_rng(0)
    samples = tmp_path / "augmented"
    samples.mkdir()
    for path in sorted((rendered / "train").glob("*.npz")):
        arrays = dict(np.load(path))
        dy, dx = rng.choice([-2, 2], size=2)
        moved = ndimage.shift(arrays["image"], (dy, dx), order=0, mode="nearest")  # 2 px, edges repeated
        gain = 1 + rng.choice([-0.05, 0.05])
        image = np.clip((moved + 1) * gain - 1, -1, 1)  # brightness +-5 %
        write_sample(samples, path.stem, image, arrays["heatmap"])
    report = novelty(cli, samples, tmp_path / "out")
    assert report["near_copy_rate"] >= 0.90, report["near_copy_rate"]
    assert np.mean([s["nearest"] == s["id"] for s in report["samples"]]) >= 0.90


def test_latent_space_and_the_blend_layout(cli, tmp_path):
    from datamodules import PanoramicDataModule

    data = PanoramicDataModule(
        image_size=(64, 128),
        augmentation="none",
        synthesis_fraction=0.25,
        phantom_counts={"train": 16, "val": 8, "test": 16, "unlabelled": 128},
    )  # fmt: skip  (configs/data/panoramic_demo.yaml)
    data.setup()
    folder = tmp_path / "blend"
    (folder / "images").mkdir(parents=True)
    for item in data.items["train"]:
        write_png(folder / "images" / f"{item.id}.png", item.image)
    write_manifest(folder, {"command": "blend", "anatomy": "panoramic"})
    latent = novelty(cli, folder, tmp_path / "latent", "--space", "latent", "--autoencoder", DEMO_LDM, data=PANORAMIC)
    assert latent["near_copy_rate"] >= 0.95 and latent["space"] == "latent" and latent["compared_size"] == [8, 16]
    pixel = novelty(cli, folder, tmp_path / "pixel", data=PANORAMIC)
    assert pixel["near_copy_rate"] >= 0.95 and pixel["compared_size"] == [16, 32]


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_naming_the_file(cli, rendered, tmp_path):
    def refused(samples, *extra, data=HAND) -> str:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        code, _, err = cli("novelty", *data, "--samples", samples, "--out", out, *extra)
        assert code != 0 and not out.exists()
        assert len(err.strip().splitlines()) == 1, err
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty" in refused(empty) and "no .npz samples" in refused(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_sample(mixed, "a", np.zeros((64, 64)), np.zeros((64, 64)))
    write_sample(mixed, "b", np.zeros((32, 32)), np.zeros((32, 32)))
    assert "b.npz" in refused(mixed) and "differs" in refused(mixed)
    assert "manifest.json" in refused(rendered / "train", data=PANORAMIC)  # hands against jaws: the manifest says
    drawn = tmp_path / "drawn"
    code, _, err = cli("sample", "--ckpt_path", REPO / "xraydiff/assets/demo_hand_vae.ckpt", "--num_samples", "2",
                       "--out", drawn)  # fmt: skip
    assert code == 0, err
    assert json.loads((drawn / "manifest.json").read_text())["anatomy"] == "hand"  # from the checkpoint's record
    assert "the samples are hand images, the data config's are panoramic" in refused(drawn, data=PANORAMIC)
    images_only = tmp_path / "images_only"
    images_only.mkdir()
    write_sample(images_only, "a", np.zeros((64, 64)))
    assert "a.npz" in refused(images_only) and "without heatmaps" in refused(images_only)
    wide = tmp_path / "wide"
    wide.mkdir()
    write_sample(wide, "a", np.zeros((64, 128)), np.zeros((64, 128)))
    assert "a.npz" in refused(wide) and "another anatomy" in refused(wide)
    no_val = refused(rendered / "test", "--data.init_args.phantom_counts", '{"train": 8, "val": 0, "test": 4}')
    assert "hand_phantom.yaml" in no_val and "'val' split is empty" in no_val
    too_far = refused(rendered / "test", "--size", "8", "--max_shift", "4")
    assert "--max_shift 4 leaves no window of the compared 8 x 8 pixel maps (at most 3" in too_far
    nan = tmp_path / "nan"
    nan.mkdir()
    write_sample(nan, "a", np.full((64, 64), math.nan), np.zeros((64, 64)))
    assert "a.npz" in refused(nan) and "NaN" in refused(nan)


def test_acceptance_marks_accepted_near_copies(cli, rendered, tmp_path):
    code, _, err = cli("acceptance", "fit", *HAND, *SIZE, "--annotations_only", "--out", tmp_path / "stats.json")
    assert code == 0, err
    judged = novelty(cli, rendered / "train", tmp_path / "novelty")
    copies = {s["id"] for s in judged["samples"] if s["near_copy"]}
    run = ["acceptance", "run", "--samples", rendered / "train", "--stats", tmp_path / "stats.json"]
    code, stdout, err = cli(*run, "--novelty", tmp_path / "novelty/report.json", "--out", tmp_path / "accepted")
    assert code == 0, err
    report = json.loads((tmp_path / "accepted/report.json").read_text())
    accepted = {s["id"] for s in report["samples"] if s["accepted"]}
    assert report["accepted"] > 0 and report["accepted_near_copies"] == len(accepted & copies)
    assert all(s["near_copy"] == (s["id"] in copies) for s in report["samples"])
    assert f"{len(accepted & copies)} of the {len(accepted)} accepted samples are near copies" in stdout
    code, _, err = cli(*run, "--novelty", tmp_path / "stats.json", "--out", tmp_path / "bad")  # not a report
    assert code == 1 and "stats.json" in err and not (tmp_path / "bad").exists()
    other = novelty(cli, rendered / "test", tmp_path / "novelty_test")["samples"]
    assert other  # a report of other samples
    code, _, err = cli(*run, "--novelty", tmp_path / "novelty_test/report.json", "--out", tmp_path / "bad")
    assert code == 1 and "judged other samples" in err and not (tmp_path / "bad").exists()


def test_ldm_samples_are_compared_with_the_ldms_training_images(cli, tmp_path):
    """`xraydiff sample` of the shipped phantom LDM (images without heatmaps, anatomy panoramic) against the jaws
    it was trained on (the generator split)."""
    drawn = tmp_path / "ldm"
    code, _, err = cli("sample", "--ckpt_path", DEMO_LDM, "--num_samples", "3", "--steps", "2", "--out", drawn)
    assert code == 0, err
    assert json.loads((drawn / "manifest.json").read_text())["anatomy"] == "panoramic"
    report = novelty(cli, drawn, tmp_path / "out", "--split", "generator", data=PANORAMIC)
    assert report["n"] == 3 and report["split"] == "generator" and report["compared_size"] == [16, 32]
    assert report["train_images"] == 128 - 32  # the unlabelled pool without the quarter kept for synthesis
