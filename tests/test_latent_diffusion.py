"""Latent diffusion: the autoencoder and the latent denoiser train for real on phantom jaws, resume exactly,
sample, and refuse a wrong first stage before any work."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from tiny import AUTOENCODER, DDP_TWO_CPU_PROCESSES, LDM, run

from datamodules import PanoramicDataModule
from lightning_modules import LatentAutoencoder, LatentDiffusion, load_model
from xraydiff.diffusion.latent import PosteriorCache


def fit(cli, root, base, *extra):
    code, out, err = cli("fit", *base, "--trainer.default_root_dir", root, *extra)
    assert code == 0, err[-3000:]
    return root / "checkpoints" / "last.ckpt"


def metric_rows(root) -> list[dict]:
    path = next(root.rglob("metrics.csv"))
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def generator_images() -> torch.Tensor:
    """The images the tiny generators train on, rebuilt from the data arguments of ``tiny``."""
    dm = PanoramicDataModule(
        image_size=(32, 64),
        synthesis_fraction=0.34,
        train_split="generator",
        phantom_counts={"train": 2, "val": 2, "test": 2, "unlabelled": 12},
    )
    dataset = dm.dataset("generator", augment=False)
    return torch.stack([dataset[(k, 0)]["image"] for k in range(len(dataset))])


def test_the_generators_train_on_the_pool_without_the_synthesis_images():
    dm = PanoramicDataModule(
        image_size=(32, 64),
        synthesis_fraction=0.34,
        train_split="generator",
        phantom_counts={"train": 2, "val": 2, "test": 2, "unlabelled": 12},
    )
    dm.setup()
    pool = {item.id for item in dm.items["unlabelled"]}
    synthesis = {item.id for item in dm.items["synthesis"]}
    generator = [item.id for item in dm.items["generator"]]
    assert len(synthesis) == round(0.34 * 12) == 4 and synthesis < pool
    assert sorted(generator) == sorted(pool - synthesis) and all(item.mask is None for item in dm.items["generator"])
    description = dm.training_set_description()
    assert description["split"] == "generator" and description["ids"] == generator
    # The labelled training images' pixels join by config, without their masks; exclude removes ids.
    dm = PanoramicDataModule(
        image_size=(32, 64),
        synthesis_fraction=0.34,
        generator_includes_train=True,
        exclude=["phantom-train-00001", generator[0]],
        phantom_counts={"train": 2, "val": 2, "test": 2, "unlabelled": 12},
    )
    dm.setup()
    ids = {item.id for item in dm.items["generator"]}
    assert ids == (set(generator) - {generator[0]}) | {"phantom-train-00000"}


def test_a_bad_exclude_list_names_the_file_and_line(tmp_path):
    listing = tmp_path / "exclude.txt"
    listing.write_text("# held out\nphantom-unlabelled-00001\nphantom-unlabeled-00002\n")
    dm = PanoramicDataModule(image_size=(32, 64), exclude=str(listing), phantom_counts={"unlabelled": 4})
    with pytest.raises(ValueError, match=rf"^{listing}:3: exclude: no image with id 'phantom-unlabeled-00002'"):
        dm.setup()
    missing = PanoramicDataModule(image_size=(32, 64), exclude=str(tmp_path / "none.txt"))
    with pytest.raises(ValueError, match="exclude list not found"):
        missing.setup()


def test_autoencoder_trains_and_its_reconstruction_error_falls(autoencoder_checkpoint):
    rows = metric_rows(autoencoder_checkpoint.parent.parent)
    train_l1 = [float(r["train/l1"]) for r in rows if r["train/l1"]]
    val = [r for r in rows if r["val/l1"]]
    assert len(train_l1) == 16 and len(val) == 8
    assert np.mean(train_l1[-4:]) < 0.85 * np.mean(train_l1[:4])
    assert float(val[-1]["val/l1"]) < float(val[0]["val/l1"])
    # The logged PSNR is the mean over validation images of 10 log10(range^2 / MSE), recomputed here.
    model = load_model(autoencoder_checkpoint, expected=LatentAutoencoder)
    dm = PanoramicDataModule(
        image_size=(32, 64), synthesis_fraction=0.34, phantom_counts={"train": 2, "val": 2, "test": 2, "unlabelled": 12}
    )
    images = torch.stack([dm.dataset("val", augment=False)[(k, 0)]["image"] for k in range(2)])
    with torch.no_grad():
        reconstruction = model.reconstruct(images).clamp(-1, 1).numpy().astype(np.float64)
    mse = ((reconstruction - images.numpy()) ** 2).reshape(2, -1).mean(axis=1)
    assert float(val[-1]["val/psnr"]) == pytest.approx(np.mean(10 * np.log10(4.0 / mse)), rel=1e-4)
    l1 = np.abs(reconstruction - images.numpy()).mean()
    assert float(val[-1]["val/l1"]) == pytest.approx(l1, rel=1e-3)


def test_adversarial_autoencoder_resumes_exactly_with_both_optimizers(cli, tmp_path):
    """Two epochs in one go equal one epoch, a checkpoint and a resumed second epoch: autoencoder,
    discriminator, both optimizers and the warm-up clock (the discriminator starts after 3 steps)."""
    gan = [
        *AUTOENCODER,
        "--model.init_args.gan.adversarial_weight",
        "0.1",
        "--model.init_args.gan.adversarial_warmup",
        "3",
    ]
    straight = fit(cli, tmp_path / "a", gan, "--trainer.max_epochs", "2")
    first = fit(cli, tmp_path / "b", gan, "--trainer.max_epochs", "1")
    resumed = fit(cli, tmp_path / "b", gan, "--trainer.max_epochs", "2", "--ckpt_path", first)
    a, b = torch.load(straight, weights_only=False), torch.load(resumed, weights_only=False)
    # 4 autoencoder steps, the 4th with a discriminator step: Lightning counts both optimizers.
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"] == 4 + 1
    assert int(a["state_dict"]["autoencoder_steps"]) == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert len(a["optimizer_states"]) == 2
    for optimizer_a, optimizer_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for state_a, state_b in zip(optimizer_a["state"].values(), optimizer_b["state"].values(), strict=True):
            assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(key.startswith("discriminator.") for key in a["state_dict"])


def test_ldm_trains_on_a_frozen_autoencoder_with_the_latents_scaled_to_unit_variance(
    autoencoder_checkpoint, ldm_checkpoint
):
    ldm = torch.load(ldm_checkpoint, weights_only=False)
    first_stage = torch.load(autoencoder_checkpoint, weights_only=False)["state_dict"]
    frozen = {k[len("first_stage.") :]: v for k, v in ldm["state_dict"].items() if k.startswith("first_stage.")}
    trained = {k[len("autoencoder.") :]: v for k, v in first_stage.items() if k.startswith("autoencoder.")}
    assert frozen.keys() == trained.keys() and all(torch.equal(frozen[k], trained[k]) for k in trained)
    assert ldm["global_step"] == 6 and ldm["xraydiff"]["train_data"]["train_images"] == 8
    # s = 1 / std of the training latents, here by Monte Carlo over draws z ~ q(z | x).
    autoencoder = load_model(autoencoder_checkpoint, expected=LatentAutoencoder)
    with torch.no_grad():
        z_mu, z_sigma = autoencoder.autoencoder.posterior(generator_images())
    draws = z_mu[None] + z_sigma[None] * torch.randn((400, *z_mu.shape), generator=torch.Generator().manual_seed(1))
    assert float(ldm["state_dict"]["scale_factor"]) == pytest.approx(1 / draws.double().std().item(), rel=0.01)
    rows = metric_rows(ldm_checkpoint.parent.parent)
    assert len([r for r in rows if r["val/loss"]]) == 3 and all(
        np.isfinite(float(r["train/loss"])) for r in rows if r["train/loss"]
    )
    # The saved LDM rebuilds its autoencoder without the autoencoder's file.
    model = load_model(ldm_checkpoint, expected=LatentDiffusion)
    assert model.hparams["autoencoder"]["latent_channels"] == 4 and model.latent_shape == (4, 4, 8)


def test_sample_writes_reproducible_images_without_heatmap(cli, tmp_path, ldm_checkpoint):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, _, err = cli("sample", "--ckpt_path", ldm_checkpoint, "--num_samples", 3, "--batch_size", 2, "--seed", 4,
                           "--sampler", "ddim", "--steps", 3, "--out", out)  # fmt: skip
        assert code == 0, err
        outs.append(out)
    manifest = json.loads((outs[0] / "manifest.json").read_text())
    assert manifest["channels"] == ["image"] and manifest["model"].endswith("LatentDiffusion")
    assert manifest["ids"] == ["s4-000000", "s4-000001", "s4-000002"] and manifest["steps"] == 3
    images = []
    for sample in manifest["ids"]:
        arrays = np.load(outs[0] / f"{sample}.npz")
        assert set(arrays.files) == {"image"} and arrays["image"].shape == (32, 64)
        assert -1 <= arrays["image"].min() and arrays["image"].max() <= 1
        np.testing.assert_array_equal(arrays["image"], np.load(outs[1] / f"{sample}.npz")["image"])
        images.append(arrays["image"])
        assert (outs[0] / f"{sample}.png").is_file()
    assert not np.array_equal(images[0], images[1])
    missing = ldm_checkpoint.parent.parent.parent / "missing.ckpt"
    code, _, err = cli("sample", "--ckpt_path", missing, "--num_samples", 1, "--out", tmp_path / "c")
    assert code != 0 and "checkpoint not found" in err


def test_ldm_resumes_exactly_from_an_epoch_end(cli, tmp_path, autoencoder_checkpoint):
    base = [*LDM, "--model.init_args.autoencoder_ckpt", str(autoencoder_checkpoint)]
    straight = fit(cli, tmp_path / "a", base, "--trainer.max_epochs", "2")
    first = fit(cli, tmp_path / "b", base, "--trainer.max_epochs", "1")
    resumed = fit(cli, tmp_path / "b", base, "--trainer.max_epochs", "2", "--ckpt_path", first)
    a, b = torch.load(straight, weights_only=False), torch.load(resumed, weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():  # the U-Net, its EMA, the scale factor, the frozen autoencoder
        assert torch.equal(value, b["state_dict"][key]), key
    for state_a, state_b in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_cached_latents_are_the_encoders_draws_and_resume_exactly(
    cli, tmp_path, autoencoder_checkpoint, ldm_checkpoint
):
    # The cached path draws z ~ q(z | x) from the same random stream as the encoder's path.
    model = load_model(ldm_checkpoint, expected=LatentDiffusion)
    dm = PanoramicDataModule(
        image_size=(32, 64),
        synthesis_fraction=0.34,
        train_split="generator",
        augmentation="none",
        phantom_counts={"train": 2, "val": 2, "test": 2, "unlabelled": 12},
    )
    dataset = dm.dataset("generator", augment=False)
    model.posterior_cache = PosteriorCache.encode(model.first_stage, dataset, 3, model.device)
    batch = {"index": torch.tensor([5, 0, 2]), "image": torch.stack([dataset[k]["image"] for k in (5, 0, 2)])}
    torch.manual_seed(7)
    cached = model._training_latents(batch)
    torch.manual_seed(7)
    with torch.no_grad():
        encoded = model.encode(batch["image"])
    torch.testing.assert_close(cached, encoded, rtol=1e-5, atol=1e-5)
    # Training with the cache, interrupted and resumed, ends where the straight run ends.
    cached_args = [*LDM, "--model.init_args.autoencoder_ckpt", str(autoencoder_checkpoint),
                   "--model.init_args.cache_latents", "true"]  # fmt: skip
    straight = fit(cli, tmp_path / "a", cached_args, "--trainer.max_epochs", "2")
    first = fit(cli, tmp_path / "b", cached_args, "--trainer.max_epochs", "1")
    resumed = fit(cli, tmp_path / "b", cached_args, "--trainer.max_epochs", "2", "--ckpt_path", first)
    a, b = (torch.load(path, weights_only=False)["state_dict"] for path in (straight, resumed))
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    code, _, err = cli(
        "fit", *cached_args, "--data.init_args.augmentation", "default", "--trainer.default_root_dir", tmp_path / "c"
    )
    assert code != 0 and "cache_latents: true needs training data without augmentation" in err
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_a_wrong_autoencoder_is_refused_before_training(cli, tmp_path, autoencoder_checkpoint, ldm_checkpoint):
    other_size = ["--model.init_args.image_size", "[64, 64]", "--data.init_args.image_size", "[64, 64]"]
    cases = [
        (tmp_path / "none.ckpt", [], "checkpoint not found"),
        (ldm_checkpoint, [], "checkpoint holds a LatentDiffusion, expected a LatentAutoencoder"),
        (
            autoencoder_checkpoint,
            ["--model.init_args.latent_channels", "3"],
            "the autoencoder's latents have 4 channels",
        ),
        (autoencoder_checkpoint, other_size, "the autoencoder was trained on (32, 64) images"),
    ]
    for k, (checkpoint, extra, message) in enumerate(cases):
        root = tmp_path / f"run{k}"
        code, _, err = cli("fit", *LDM, "--model.init_args.autoencoder_ckpt", checkpoint, *extra,
                           "--trainer.default_root_dir", root)  # fmt: skip
        assert code != 0 and message in err and str(checkpoint) in err, err[-2000:]
        assert not (root / "checkpoints").exists()


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips is installed: weights may load")
def test_perceptual_loss_without_its_weights_stops_at_start(cli, tmp_path):
    code, _, err = cli("fit", *AUTOENCODER, "--model.init_args.perceptual_weight", "0.1",
                       "--trainer.default_root_dir", tmp_path / "r")  # fmt: skip
    assert code != 0 and "perceptual_weight > 0 needs the pretrained 'squeeze' weights" in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_ddp_ldm_shares_one_scale_factor_and_samples_complete_unique_sets(tmp_path, autoencoder_checkpoint):
    base = [*LDM, "--model.init_args.autoencoder_ckpt", autoencoder_checkpoint, "--trainer.max_epochs", "1"]
    single = run(["fit", *base, "--trainer.default_root_dir", tmp_path / "one"])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run(["fit", *base, "--trainer.default_root_dir", tmp_path / "ddp", *DDP_TWO_CPU_PROCESSES])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # Both ranks printed the scale factor they use; all 8 images are covered either way, so it is the same.
    printed = [line for line in ddp.stdout.splitlines() + ddp.stderr.splitlines() if "latent scale factor" in line]
    one = torch.load(tmp_path / "one/checkpoints/last.ckpt", weights_only=False)["state_dict"]["scale_factor"]
    two = torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=False)["state_dict"]["scale_factor"]
    assert float(two) == pytest.approx(float(one), rel=1e-6) and printed
    out = tmp_path / "samples"
    result = run(["sample", "--ckpt_path", tmp_path / "ddp/checkpoints/last.ckpt", "--num_samples", 5,
                  "--batch_size", 2, "--steps", 2, "--devices", 2, "--accelerator", "cpu", "--out", out])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ids"] == [f"s0-{k:06d}" for k in range(5)] and manifest["devices"] == 2
    assert sorted(p.stem for p in out.glob("*.npz")) == manifest["ids"]
    images = [read_sample_image(out / f"{sample}.npz") for sample in manifest["ids"]]
    assert len({image.tobytes() for image in images}) == 5


def read_sample_image(path) -> np.ndarray:
    arrays = np.load(path)
    assert set(arrays.files) == {"image"}
    return arrays["image"]


def test_the_demo_export_keeps_the_ema_weights_once_and_samples(cli, tmp_path, ldm_checkpoint):
    """scripts/export_demo_checkpoint.py on an LDM: float16 EMA weights as the U-Net, the frozen autoencoder
    inside, no optimizer state; the export samples like the EMA weights of the source."""
    spec = importlib.util.spec_from_file_location("export_demo_checkpoint", "scripts/export_demo_checkpoint.py")
    exporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exporter)
    target = tmp_path / "demo_ldm.ckpt"
    exporter.export(ldm_checkpoint, target)
    source = torch.load(ldm_checkpoint, weights_only=False)
    slim = torch.load(target, weights_only=False)
    assert "optimizer_states" not in slim and slim["xraydiff"]["train_data"] == source["xraydiff"]["train_data"]
    ema = {k: v for k, v in source["state_dict"].items() if k.startswith("ema.module.")}
    for key, value in ema.items():
        unet = slim["state_dict"]["unet." + key[len("ema.module.") :]]
        assert unet.dtype == torch.float16 and torch.equal(unet, value.half()), key
        assert unet.untyped_storage().data_ptr() == slim["state_dict"][key].untyped_storage().data_ptr()
    assert target.stat().st_size < 0.5 * sum(v.numel() * 4 for v in source["state_dict"].values())
    outs = []
    for name, checkpoint in (("source", ldm_checkpoint), ("export", target)):
        code, _, err = cli("sample", "--ckpt_path", checkpoint, "--num_samples", 2, "--seed", 1, "--sampler", "ddim",
                           "--steps", 3, "--out", tmp_path / name)  # fmt: skip
        assert code == 0, err
        outs.append(np.load(tmp_path / name / "s1-000000.npz")["image"])
    np.testing.assert_allclose(outs[0], outs[1], atol=0.05)  # float16 weights: close, not equal
