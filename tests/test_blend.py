"""Latent blending end to end on tiny phantom jaws: ``xraydiff blend`` writes a dataset the panoramic DataModule
trains on, refuses leakage and a foreign autoencoder before writing anything; the segmentation metrics match
hand-computed cases, in one process and in two (DDP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from tiny import DDP_TWO_CPU_PROCESSES, PANORAMIC_DATA, SEGMENTER, run
from torchmetrics.functional.image import structural_similarity_index_measure

from commands.parsing import compose_configs
from datamodules import PanoramicDataModule
from lightning_modules import LatentDiffusion
from xraydiff.data.imageio import read_image
from xraydiff.metrics import segmentation_scores

DATA = ["--config", "configs/demo/panoramic_ldm.yaml", *PANORAMIC_DATA]
BLEND = ["--top_k", "3", "--steps", "4", "--strength", "0.6", "--batch_size", "2"]


def blend(ldm, data, out, top_k, log=print, **settings) -> dict:
    """``run_blend`` with its options object, as ``xraydiff blend`` calls it."""
    from commands.blend import run_blend
    from commands.options import BlendOptions

    return run_blend(BlendOptions(ldm=ldm, out=out, top_k=top_k, **settings), data, log=log)


def tiny_data(**kwargs) -> PanoramicDataModule:
    """The DataModule of ``DATA`` (the phantom counts of ``tiny.PANORAMIC_DATA``)."""
    return PanoramicDataModule(
        image_size=(32, 64),
        batch_size=4,
        synthesis_fraction=0.34,
        phantom_counts={"train": 2, "val": 2, "test": 2, "unlabelled": 12},
        **kwargs,
    )


@pytest.fixture(scope="module")
def blended(tmp_path_factory, ldm_checkpoint):
    from conftest import _NoCapture, run_cli

    out = tmp_path_factory.mktemp("blend") / "k3"
    code, _, err = run_cli(["blend", *DATA, "--ldm", ldm_checkpoint, *BLEND, "--out", out], _NoCapture())
    assert code == 0, err
    return out


def test_blend_pairs_each_guide_with_its_top_k_partners_by_latent_ssim(blended, ldm_checkpoint):
    manifest = json.loads((blended / "manifest.json").read_text())
    data = tiny_data()
    data.setup()
    guides, partners = data.items["train"], data.items["synthesis"]
    assert manifest["count"] == len(guides) * 3 == len(manifest["samples"])
    model = LatentDiffusion.load_from_checkpoint(ldm_checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        pool = model.latents(torch.from_numpy(np.stack([p.image for p in partners]))[:, None])
        by_id = dict(zip([p.id for p in partners], pool, strict=True))
        data_range = float(pool.max() - pool.min())
        for guide in guides:
            z_a = model.latents(torch.from_numpy(guide.image)[None, None])
            # the library's SSIM of the guide's latent with every partner, per channel then averaged; on
            # 4 x 8 latents the 11 x 11 window shrinks to 3 x 3 with sigma 1.5 * 3 / 11 (latent_ssim's rule)
            ssim = {
                pid: float(
                    structural_similarity_index_measure(
                        z[None], z_a, data_range=data_range, kernel_size=3, sigma=1.5 * 3 / 11
                    )
                )
                for pid, z in by_id.items()
            }
            mine = [s for s in manifest["samples"] if s["guide"] == guide.id]
            expected = sorted(ssim, key=lambda pid: -ssim[pid])[:3]
            assert [s["partner"] for s in mine] == expected
            assert [s["rank"] for s in mine] == [1, 2, 3]
            for sample in mine:
                assert sample["ssim"] == pytest.approx(ssim[sample["partner"]], abs=1e-5)
                mask = read_image(blended / "masks" / f"{sample['id']}.png")
                assert np.array_equal(mask > 127, guide.mask.astype(bool))  # the label is the guide's
                image = read_image(blended / "images" / f"{sample['id']}.png")
                assert image.shape == (32, 64)
    assert (blended / "gallery.png").is_file()


def test_the_blended_pairs_train_a_segmenter_and_never_reach_val_or_test(blended):
    data = tiny_data(extra_train_dirs=[str(blended)], synthetic_share=0.6)
    data.setup()
    synthetic = data.items["synthetic"]
    assert len(synthetic) == 6
    assert all(item.mask is not None and item.mask.any() for item in synthetic)
    loader = data.train_dataloader()
    ids = [i for batch in loader for i in batch["id"]]
    # share 0.6 of an epoch with 2 real images: round(2 * 0.6 / 0.4) = 3 synthetic draws
    assert sum(i.startswith("synthetic-") for i in ids) == 3 and len(ids) == 5
    for split in ("val", "test", "generator"):
        assert not any(item.id.startswith("synthetic-") for item in data.items[split])
    only = tiny_data(extra_train_dirs=[str(blended)], train_split="synthetic")
    assert {i for batch in only.train_dataloader() for i in batch["id"]} == {item.id for item in synthetic}


def test_blending_images_the_ldm_was_trained_on_is_refused_before_writing(cli, tmp_path, ldm_checkpoint):
    out = tmp_path / "leak"
    code, _, err = cli("blend", *DATA, "--ldm", ldm_checkpoint, *BLEND, "--partners", "generator", "--out", out)
    assert code == 1
    assert str(ldm_checkpoint) in err and "training set" in err
    assert not out.exists() and not list(tmp_path.glob(".leak*"))


def test_a_foreign_autoencoder_or_image_size_is_refused(cli, tmp_path, ldm_checkpoint, autoencoder_checkpoint):
    checkpoint = torch.load(autoencoder_checkpoint, map_location="cpu", weights_only=False)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("autoencoder.") and k.endswith("weight"))
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] + 1.0
    foreign = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, foreign)
    out = tmp_path / "out"
    code, _, err = cli("blend", *DATA, "--ldm", ldm_checkpoint, "--autoencoder", foreign, *BLEND, "--out", out)
    assert code == 1 and str(foreign) in err and "weights differ" in err
    code, _, err = cli(
        "blend", *DATA, "--ldm", ldm_checkpoint, "--autoencoder", autoencoder_checkpoint, *BLEND, "--out", out
    )
    assert code == 0, err
    code, _, err = cli(
        "blend", *DATA, "--data.init_args.image_size", "[64, 64]", "--ldm", ldm_checkpoint, *BLEND, "--out",
        tmp_path / "size",
    )  # fmt: skip
    assert code == 1 and "image_size" in err and not (tmp_path / "size").exists()


# ------------------------------------------------------------------------------ segmentation


def test_segmentation_scores_match_hand_counted_cases():
    target = torch.zeros(4, 1, 4, 5, dtype=torch.bool)
    predicted = torch.zeros_like(target)
    target[0, 0, 1:3, 1:4] = True  # 6 pixels
    predicted[0, 0, 1:3, 1:3] = True  # 4 of them: TP 4, FP 0, FN 2
    target[1, 0, 0, 0] = True
    predicted[1, 0, 3, 4] = True  # TP 0, FP 1, FN 1
    predicted[2, 0, 0, :] = True  # nothing to find, 5 false positives
    # image 3: both empty
    scores = segmentation_scores(predicted, target)
    expected = torch.tensor(
        [[1.0, 4 / 6, 8 / 10], [0.0, 0.0, 0.0], [0.0, 1.0 * 0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float32
    )
    torch.testing.assert_close(scores, expected)


def dice_by_hand(predicted: np.ndarray, target: np.ndarray) -> float:
    both = np.logical_and(predicted, target).sum()
    total = predicted.sum() + target.sum()
    return 1.0 if total == 0 else 2.0 * both / total


@pytest.fixture(scope="module")
def segmenter_checkpoint(tmp_path_factory):
    from conftest import _NoCapture, run_cli

    root = tmp_path_factory.mktemp("segmenter")
    args = ["fit", *SEGMENTER, "--trainer.max_epochs", "6", "--trainer.default_root_dir", root]
    code, _, err = run_cli(args, _NoCapture())
    assert code == 0, err
    return root / "checkpoints" / "last.ckpt"


def test_segmenter_metrics_json_holds_each_test_image_once_with_hand_checked_dice(cli, tmp_path, segmenter_checkpoint):
    from lightning_modules import Segmenter

    root = tmp_path / "test"
    code, _, err = cli("test", *SEGMENTER, "--ckpt_path", segmenter_checkpoint, "--trainer.default_root_dir", root)
    assert code == 0, err
    metrics = json.loads((root / "test_metrics.json").read_text())
    data = PanoramicDataModule(image_size=(32, 64), phantom_counts={"train": 8, "val": 2, "test": 3, "unlabelled": 0})
    data.setup()
    model = Segmenter.load_from_checkpoint(segmenter_checkpoint, map_location="cpu").eval()
    assert set(metrics["per_image"]) == {item.id for item in data.items["test"]}
    dice = []
    with torch.no_grad():
        for item in data.items["test"]:
            probability = torch.sigmoid(model(torch.from_numpy(item.image)[None, None]))[0, 0].numpy()
            dice.append(dice_by_hand(probability > 0.5, item.mask.astype(bool)))
            assert metrics["per_image"][item.id]["dsc"] == pytest.approx(dice[-1], abs=1e-6)
    assert metrics["n_images"] == 3
    assert metrics["dsc"] == pytest.approx(np.mean(dice), abs=1e-6)
    assert metrics["dsc_sd"] == pytest.approx(np.std(dice), abs=1e-6)
    assert (root / "test_worst_cases.png").is_file()
    # the two processes of DDP split 3 images into 2 + 2 (one repeated): each still counted once
    ddp_root = tmp_path / "ddp"
    result = run(
        ["test", *SEGMENTER, *DDP_TWO_CPU_PROCESSES, "--ckpt_path", segmenter_checkpoint,
         "--trainer.default_root_dir", ddp_root],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((ddp_root / "test_metrics.json").read_text())
    assert ddp["n_images"] == 3
    for image_id, scores in metrics["per_image"].items():
        assert ddp["per_image"][image_id]["dsc"] == pytest.approx(scores["dsc"], abs=1e-6)


def test_segmenter_learns_the_phantom_canal(segmenter_checkpoint):
    """After 6 epochs the training loss has fallen (a model that does not learn fails here)."""
    rows = (segmenter_checkpoint.parents[1] / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [
        float(r.split(",")[header.index("train/loss")]) for r in rows[1:] if r.split(",")[header.index("train/loss")]
    ]
    assert losses[-1] < 0.8 * losses[0]


# ---------------------------------------------------------------------------------------- study


def test_the_study_writes_table_1_with_paired_intervals_and_resumes_step_by_step(cli, tmp_path, ldm_checkpoint):
    segmenter_args = [
        "--config", "configs/trainer/csv.yaml", "--model.init_args.image_size", "[32, 64]",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    config = {
        "experiment": {
            # no autoencoder entry: the one inside the LDM checkpoint blends (as for a shipped LDM)
            "ldm": {"ckpt": str(ldm_checkpoint)},
            "segmenter": {"config": "configs/demo/panoramic_segmenter.yaml", "args": segmenter_args},
            "top_k": [2],
            "segmenter_steps": 3,
            "blend": {"steps": 3, "batch_size": 4},
            "variants": [
                {"name": "copy_paste", "composite": "copy_paste"},
                {"name": "paper"},  # strength steps / T
                {"name": "pixel", "strength": 0.5, "composite": "pixel", "reimpose": True},
            ],
            "seeds": [0, 1],
            "data": {
                "image_size": [32, 64],
                "batch_size": 4,
                "synthesis_fraction": 0.34,
                "phantom_counts": {"train": 2, "val": 5, "test": 2, "unlabelled": 12},
            },
        }
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "study"
    code, stdout, err = cli("experiment", "blend", "--config", path, "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    # synthetic-only rows only for plain LDM blends (not the control, not re-imposed)
    assert list(results["rows"]) == [
        "real", "real+synthetic_k2_copy_paste", "synthetic_k2_paper", "real+synthetic_k2_paper",
        "real+synthetic_k2_pixel",
    ]  # fmt: skip
    blends = results["blends"]
    assert {name: b["count"] for name, b in blends.items()} == {"k2_copy_paste": 4, "k2_paper": 4, "k2_pixel": 4}
    # the paper's literal reading: 3 steps from t = 2 of the tiny LDM's T = 50 chain; strength 0.5 from t = 20
    # (MONAI's DDIM grid of round(3 / 0.5) = 6 steps, round(linspace(0, 49, 6)) = 0, 10, 20, 29, 39, 49)
    assert blends["k2_paper"]["t_start"] == 2 and blends["k2_paper"]["strength"] == pytest.approx(3 / 50)
    assert blends["k2_pixel"]["t_start"] == 20 and blends["k2_copy_paste"]["t_start"] is None
    assert blends["k2_copy_paste"]["survival"]["inside"]["median"] == pytest.approx(1.0, abs=1e-6)
    real = None
    for name, row in results["rows"].items():
        per_seed = []
        for seed in (0, 1):
            folder = out / "segmenter" / name / f"seed{seed}"
            metrics = json.loads((folder / "test_metrics.json").read_text())
            assert metrics["n_images"] == 2
            saved = yaml.safe_load(next(folder.rglob("config.yaml")).read_text())
            assert saved["seed_everything"] == seed
            if row["synthetic"] and row["real"]:  # a fixed synthetic share by default (issue 28)
                assert saved["data"]["init_args"]["synthetic_share"] == 0.5
            per_seed.append(metrics["per_image"])
        assert all(r["global_step"] == 3 for r in row["runs"])
        # the row's per-image DSC is the mean over the seeds, read back from the runs' own files
        dsc = {i: (per_seed[0][i]["dsc"] + per_seed[1][i]["dsc"]) / 2 for i in per_seed[0]}
        assert row["metrics"]["dsc"] == pytest.approx(np.mean(list(dsc.values())), abs=1e-6)
        if name == "real":
            real = dsc
            continue
        paired = row["paired_dsc"]
        assert paired["mean_difference"] == pytest.approx(np.mean([dsc[i] - real[i] for i in dsc]), abs=1e-6)
        low, high = paired["ci95"]
        assert low <= paired["mean_difference"] <= high
        assert row["synthetic_images"] == (4 if row["synthetic"] else 0)
        assert not row["real"] or row["train_images"] == 2
    # every blend's near copies of the LDM's training images (the generators' split), calibrated on val
    for name, copies in results["near_copies"].items():
        assert copies["n"] == 4 and copies["train_images"] == 8 and copies["threshold"]["n"] == 5, name
        assert (out / "novelty" / name / "report/gallery.png").exists()
    report = (out / "results.md").read_text()
    assert "| near copies [95 % CI] |" in report and "of the 'generator' split (what the LDM trained on)" in report
    assert "copy-paste (no diffusion)" in report and "LDM from t = 2 (latent)" in report
    assert "| 1.00 (1.00-1.00) / " in report  # the control's survival inside the mask: the guide's own pixels
    assert "LDM from t = 20 (pixel composite, re-imposed)" in report and "95 % CI" in report
    assert "50% of each epoch from the synthetic pairs" in report and "once per seed (0, 1)" in report
    assert results["autoencoder"]["checkpoint"] is None
    assert "the autoencoder inside the LDM checkpoint" in report
    # resume: a step whose marker is gone runs again, every other step is kept
    (out / "segmenter" / "synthetic_k2_paper" / "seed1" / "done.json").unlink()
    code, stdout, err = cli("experiment", "blend", "--config", path, "--out", out)
    assert code == 0, err
    assert stdout.count("[run ]") == 1 and "[run ] segmenter synthetic_k2_paper seed 1" in stdout


def test_a_bad_study_config_names_the_file_and_line(tmp_path):
    from experiments.blend import load_blend_study_config

    path = tmp_path / "study.yaml"
    path.write_text(
        "experiment:\n"
        "  autoencoder: {config: configs/demo/panoramic_autoencoder.yaml}\n"
        "  ldm: {config: configs/demo/panoramic_ldm.yaml}\n"
        "  segmenter: {config: configs/demo/panoramic_segmenter.yaml}\n"
        "  top_k: [5, 10]\n  segmenter_steps: 10\n  reimpose_k: [20]\n"
    )
    with pytest.raises(
        ValueError, match=r"study.yaml:7: experiment.reimpose_k is gone: a re-imposed blend is a variant"
    ):
        load_blend_study_config(path)
    path.write_text(
        "experiment:\n"
        "  autoencoder: {config: configs/demo/panoramic_autoencoder.yaml}\n"
        "  ldm: {config: configs/demo/panoramic_ldm.yaml}\n"
        "  segmenter: {config: configs/demo/panoramic_segmenter.yaml}\n"
        "  top_k: [5]\n  segmenter_steps: 10\n"
        "  variants:\n    - {name: paper}\n    - {name: half, strength: 1.5}\n"
    )
    with pytest.raises(ValueError, match=r"study.yaml:9: experiment.variants\[1\].strength must be in \(0, 1\]"):
        load_blend_study_config(path)
    # without variants one blend of the shared options: its strength is kept, not replaced by the default
    path.write_text(
        "experiment:\n"
        "  ldm: {ckpt: xraydiff/assets/demo_panoramic_ldm.ckpt}\n"
        "  segmenter: {config: configs/demo/panoramic_segmenter.yaml}\n"
        "  top_k: [5]\n  segmenter_steps: 10\n  blend: {steps: 25, strength: 0.5}\n"
    )
    config = load_blend_study_config(path)
    assert [config.blend_options(v) for v in config.variants] == [{"steps": 25, "strength": 0.5}]
    path.write_text(
        "experiment:\n"
        "  ldm: {config: configs/demo/panoramic_ldm.yaml}\n"
        "  segmenter: {config: configs/demo/panoramic_segmenter.yaml}\n"
        "  top_k: [5]\n  segmenter_steps: 10\n"
    )
    with pytest.raises(ValueError, match=r"study.yaml:2: experiment.autoencoder is needed unless experiment.ldm"):
        load_blend_study_config(path)


@pytest.mark.parametrize("name", ["demo/panoramic_blend", "panoramic/blend", "panoramic/blend_cpu"])
def test_the_shipped_study_configs_are_valid(name):
    from experiments.blend import load_blend_study_config

    config = load_blend_study_config(f"configs/{name}.yaml")
    assert config.segmenter_steps > 0 and config.top_k


def test_a_folder_that_is_no_blend_output_is_refused_as_extra_training_data(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"manifest.json missing"):
        tiny_data(extra_train_dirs=[str(tmp_path)]).setup()
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"manifest.json: unreadable manifest"):
        tiny_data(extra_train_dirs=[str(tmp_path)]).setup()
    with pytest.raises(ValueError, match="needs extra_train_dirs"):
        tiny_data(train_split="synthetic")


def test_the_shipped_phantom_ldm_never_saw_the_demo_partners_and_blends_them(cli, tmp_path):
    """xraydiff/assets/demo_panoramic_ldm.ckpt (scripts/demo_panoramic_ldm.sh) against the demo's split."""
    checkpoint = "xraydiff/assets/demo_panoramic_ldm.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    dm = PanoramicDataModule(**compose_configs(["configs/demo/panoramic_segmenter.yaml"])["data"]["init_args"])
    dm.setup()
    trained = set(saved["xraydiff"]["train_data"]["ids"])
    assert trained == {item.id for item in dm.items["generator"]}
    assert not trained & {item.id for item in dm.items["synthesis"]}
    out = tmp_path / "blend"
    code, _, err = cli("blend", "--config", "configs/demo/panoramic_segmenter.yaml", "--ldm", checkpoint,
                       "--top_k", 1, "--steps", 3, "--out", out)  # fmt: skip
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == len(dm.items["train"]) == 16
    assert {s["partner"] for s in manifest["samples"]} <= {item.id for item in dm.items["synthesis"]}


def test_a_guide_whose_mask_is_empty_is_skipped_and_counted(tmp_path, ldm_checkpoint):
    """Lim et al. label every synthetic pair with its guide's mask: an empty one would mark the partner's
    structure background, so such guides are skipped, named in the manifest and the log."""
    data = tiny_data()
    setup = data.setup

    def setup_with_an_empty_mask(stage=None):
        setup(stage)
        data.items["train"][0].mask[:] = 0

    data.setup = setup_with_an_empty_mask
    logged: list[str] = []
    manifest = blend(ldm_checkpoint, data, tmp_path / "out", 2, steps=2, batch_size=2, log=logged.append)
    empty = data.items["train"][0].id
    assert manifest["skipped_empty_guides"] == [empty]
    assert {s["guide"] for s in manifest["samples"]} == {item.id for item in data.items["train"][1:]}
    assert manifest["count"] == 2 * (len(data.items["train"]) - 1)
    assert any("1 of" in line and empty in line for line in logged)
    for item in data.items["train"]:
        item.mask[:] = 0
    with pytest.raises(ValueError, match="no labelled image with a pixel of the structure"):
        blend(ldm_checkpoint, data, tmp_path / "none", 2, steps=2, batch_size=2, log=logged.append)
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------ strength, compositing, survival


def test_pixel_compositing_and_copy_paste_keep_the_partners_pixels_outside(tmp_path, ldm_checkpoint):
    from scipy.ndimage import gaussian_filter

    data = tiny_data()
    data.setup()
    images = {item.id: item for split in ("train", "synthesis") for item in data.items[split]}
    made = {
        mode: blend(ldm_checkpoint, tiny_data(), tmp_path / mode, 2, steps=3, strength=0.5, composite=mode,
                    batch_size=2)
        for mode in ("latent", "pixel", "copy_paste")
    }  # fmt: skip
    quantum = 1 / 127.5 + 1e-6  # 8-bit PNG
    for sample in made["pixel"]["samples"]:
        guide, partner = images[sample["guide"]], images[sample["partner"]]
        # the region by hand: 8 x 8 cells of the 32 x 64 image (4 x 8 latents) holding a mask pixel, dilated
        cells = guide.mask.reshape(4, 8, 8, 8).any(axis=(1, 3)).astype(float)
        padded = np.pad(cells, 1)
        cells = np.max([padded[i : i + 4, j : j + 8] for i in range(3) for j in range(3)], axis=0)
        region = np.kron(cells, np.ones((8, 8))).astype(bool)
        alpha = gaussian_filter(region.astype(float), 4.0, mode="constant")  # sigma: half a cell
        structure = guide.mask.astype(bool)
        latent = read_image(tmp_path / "latent" / "images" / f"{sample['id']}.png") / 127.5 - 1
        pixel = read_image(tmp_path / "pixel" / "images" / f"{sample['id']}.png") / 127.5 - 1
        copy = read_image(tmp_path / "copy_paste" / "images" / f"{sample['id']}.png") / 127.5 - 1
        assert (alpha < 0.5).any() and structure.any()
        # the same decoded blend as the latent mode (same seed) inside, the partner's own pixels outside
        np.testing.assert_allclose(pixel, alpha * latent + (1 - alpha) * partner.image, atol=0.02 * 2 + 2 * quantum)
        np.testing.assert_allclose(pixel[structure], latent[structure], atol=0.03 * 2 + 2 * quantum)
        np.testing.assert_allclose(copy[region], guide.image[region], atol=quantum)
        np.testing.assert_allclose(copy[~region], partner.image[~region], atol=quantum)
    assert made["copy_paste"]["t_start"] is None and made["pixel"]["composite"] == "pixel"
    assert made["copy_paste"]["survival"]["inside"]["median"] == pytest.approx(1.0, abs=1e-6)


def test_the_survival_check_tells_a_kept_structure_from_a_repainted_one(tmp_path, ldm_checkpoint):
    """At the paper's strength the guide's anatomy survives inside its mask; pure sampling (strength 1)
    repaints it, and the check must say so."""
    kept = blend(ldm_checkpoint, tiny_data(), tmp_path / "kept", 3, steps=3, batch_size=3)["survival"]
    repainted = blend(ldm_checkpoint, tiny_data(), tmp_path / "new", 3, steps=3, strength=1.0, batch_size=3)
    repainted = repainted["survival"]
    assert kept["inside"]["median"] > 0.8
    assert kept["inside"]["median"] > repainted["inside"]["median"] + 0.3
    assert kept["difference"]["median"] > repainted["difference"]["median"]
