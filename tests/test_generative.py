"""Paired DDPM and VAE: real (tiny) training, sampling, exact resume and bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import DDPM, VAE

from lightning_modules import PairedDDPM, PairedVAE, load_model
from xraydiff.data.samples import read_sample
from xraydiff.diffusion.engine import predict_x0


def fit(cli, root, base, *extra):
    code, out, err = cli("fit", *base, "--trainer.default_root_dir", root, *extra)
    assert code == 0, err[-3000:]
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def ddpm_checkpoint(tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("ddpm")
    code, _, err = run_cli(["fit", *DDPM, "--trainer.default_root_dir", root, "--trainer.max_epochs", "3"])
    assert code == 0, err
    return root / "checkpoints" / "last.ckpt"


def test_ddpm_trains_and_its_loss_falls(ddpm_checkpoint):
    metrics = list((ddpm_checkpoint.parent.parent).rglob("metrics.csv"))
    assert metrics, "the CSV logger wrote no metrics"
    rows = [line.split(",") for line in metrics[0].read_text().splitlines()]
    header = rows[0]
    losses = [float(r[header.index("train/loss")]) for r in rows[1:] if r[header.index("train/loss")]]
    assert len(losses) == 12 and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert any(r[header.index("val/loss")] for r in rows[1:])
    model = load_model(ddpm_checkpoint)
    assert isinstance(model, PairedDDPM) and model.global_step == 0  # a loaded module is detached
    checkpoint = torch.load(ddpm_checkpoint, weights_only=False)
    assert checkpoint["global_step"] == 12 and checkpoint["xraydiff"]["model_class"].endswith("PairedDDPM")
    # EMA weights are saved and differ from the raw weights after training.
    ema = {k[len("ema.module.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("ema.module.")}
    raw = {k[len("unet.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("unet.")}
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in raw)
    assert (ddpm_checkpoint.parent / "epoch=0002-step=0000012.ckpt").exists()


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 4)])
def test_sample_writes_complete_reproducible_files(cli, tmp_path, ddpm_checkpoint, sampler, steps):
    extra = ["--steps", steps] if steps else []
    out = tmp_path / "s"
    code, _, err = cli(
        "sample",
        "--ckpt_path",
        ddpm_checkpoint,
        "--num_samples",
        5,
        "--batch_size",
        2,
        "--seed",
        3,
        "--sampler",
        sampler,
        "--out",
        out,
        *extra,
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampler"] == sampler and manifest["steps"] == (steps or 20)
    assert manifest["seed"] == 3 and manifest["count"] == 5 and manifest["image_size"] == [16, 16]
    assert manifest["model"].endswith("PairedDDPM") and manifest["checkpoint"] == str(ddpm_checkpoint.resolve())
    ids = manifest["ids"]
    assert len(set(ids)) == 5 and ids == [f"s3-{k:06d}" for k in range(5)]
    for sample_id in ids:
        arrays = read_sample(out / f"{sample_id}.npz", (16, 16))
        assert arrays["image"].dtype == np.float32 and arrays["heatmap"].dtype == np.float32
        assert -1 <= arrays["image"].min() and arrays["heatmap"].max() <= 1
        assert (out / f"{sample_id}.png").stat().st_size > 0
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    again = tmp_path / "again"
    code, _, err = cli(
        "sample",
        "--ckpt_path",
        ddpm_checkpoint,
        "--num_samples",
        5,
        "--batch_size",
        2,
        "--seed",
        3,
        "--sampler",
        sampler,
        "--out",
        again,
        *extra,
    )
    assert code == 0, err
    for sample_id in ids:
        np.testing.assert_array_equal(
            np.load(out / f"{sample_id}.npz")["heatmap"], np.load(again / f"{sample_id}.npz")["heatmap"]
        )
    other = np.load(out / "s3-000001.npz")["image"]
    assert not np.array_equal(np.load(out / "s3-000000.npz")["image"], other)


def test_vae_trains_and_samples_from_its_prior(cli, tmp_path):
    checkpoint = fit(cli, tmp_path / "vae", VAE, "--trainer.max_epochs", "2")
    model = load_model(checkpoint)
    assert isinstance(model, PairedVAE)
    code, _, err = cli("sample", "--ckpt_path", checkpoint, "--num_samples", 3, "--out", tmp_path / "s")
    assert code == 0, err
    manifest = json.loads((tmp_path / "s/manifest.json").read_text())
    assert manifest["sampler"] == "prior" and manifest["count"] == 3
    code, _, err = cli(
        "sample", "--ckpt_path", checkpoint, "--num_samples", 3, "--sampler", "ddim", "--out", tmp_path / "x"
    )
    assert code != 0 and "samples from its prior" in err

    # scripts/export_demo_checkpoint.py on a model without EMA (how the demo's VAEs ship): its own weights in
    # float16, no optimizer state, and it samples like the source
    spec = importlib.util.spec_from_file_location("export_demo_checkpoint", "scripts/export_demo_checkpoint.py")
    exporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exporter)
    exporter.export(Path(checkpoint), tmp_path / "slim.ckpt")
    source, slim = (torch.load(p, weights_only=False) for p in (checkpoint, tmp_path / "slim.ckpt"))
    assert "optimizer_states" not in slim and slim["xraydiff"]["train_data"] == source["xraydiff"]["train_data"]
    assert slim["state_dict"].keys() == source["state_dict"].keys()
    assert all(torch.equal(slim["state_dict"][k], v.half()) for k, v in source["state_dict"].items())
    code, _, err = cli("sample", "--ckpt_path", tmp_path / "slim.ckpt", "--num_samples", 3, "--out", tmp_path / "e")
    assert code == 0, err
    for name in ("s0-000000.npz", "s0-000002.npz"):
        np.testing.assert_allclose(
            np.load(tmp_path / "e" / name)["image"], np.load(tmp_path / "s" / name)["image"], atol=0.05
        )


def _same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for state_a, state_b in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize(
    "base,stop,total",
    [(DDPM, 3, 6)],  # mid-epoch (4 steps per epoch)
    ids=["ddpm-mid-epoch"],
)
def test_resume_from_the_step_checkpoint_continues_exactly(cli, tmp_path, base, stop, total):
    """The rolling ``last-step.ckpt`` (what a run killed without a signal leaves) resumes bit for bit too;
    ``tests/test_resume.py`` covers ``last.ckpt`` of every model."""
    common = [
        *base,
        "--data.init_args.augmentation",
        "default",
        "--step_checkpoint.every_n_train_steps",
        str(stop),
        "--trainer.callbacks",
        "[]",
        "--trainer.check_val_every_n_epoch",
        "1",
    ]
    straight = fit(cli, tmp_path / "a", common, "--trainer.max_steps", str(total))
    fit(cli, tmp_path / "b", common, "--trainer.max_steps", str(stop))
    step_checkpoint = tmp_path / "b" / "checkpoints" / "last-step.ckpt"
    assert torch.load(step_checkpoint, weights_only=False)["global_step"] == stop
    resumed = fit(cli, tmp_path / "b", common, "--trainer.max_steps", str(total), "--ckpt_path", step_checkpoint)
    _same_training_state(torch.load(straight, weights_only=False), torch.load(resumed, weights_only=False))


def test_bad_runs_are_refused_before_any_work(cli, tmp_path, ddpm_checkpoint):
    code, _, err = cli("fit", *DDPM, "--trainer.default_root_dir", tmp_path / "r", "--model.init_args.no_such", "1")
    assert code != 0 and "no_such" in err
    code, _, err = cli(
        "fit", *DDPM, "--trainer.default_root_dir", tmp_path / "r", "--ckpt_path", tmp_path / "nope.ckpt"
    )
    assert code != 0 and "nope.ckpt: checkpoint not found" in err
    code, _, err = cli("fit", *VAE, "--trainer.default_root_dir", tmp_path / "r", "--ckpt_path", ddpm_checkpoint)
    assert code != 0 and "PairedDDPM" in err and "PairedVAE" in err
    code, _, err = cli(
        "fit", *DDPM, "--trainer.default_root_dir", tmp_path / "r", "--data.init_args.root", tmp_path / "missing"
    )
    assert code != 0 and "missing: dataset root not found" in err
    assert not (tmp_path / "r" / "checkpoints" / "last.ckpt").exists()
    code, _, err = cli("sample", "--ckpt_path", tmp_path / "nope.ckpt", "--num_samples", 2, "--out", tmp_path / "s")
    assert code != 0 and "checkpoint not found" in err
    code, _, err = cli("sample", "--ckpt_path", ddpm_checkpoint, "--num_samples", 0, "--out", tmp_path / "s")
    assert code != 0 and "num_samples: must be > 0" in err
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    code, _, err = cli("sample", "--ckpt_path", tmp_path / "junk.ckpt", "--num_samples", 2, "--out", tmp_path / "s")
    assert code != 0 and "not a checkpoint" in err
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s*"))


def test_print_config_and_config_composition(cli):
    code, out, err = cli("fit", *DDPM, "--print_config")
    assert code == 0, err
    assert "PairedDDPM" in out and "image_size:\n    - 16" in out and "CSVLogger" in out


@pytest.mark.parametrize("base", [DDPM, VAE], ids=["ddpm", "vae"])
def test_bf16_autocast_training_and_sampling(cli, tmp_path, base):
    checkpoint = fit(cli, tmp_path / "run", base, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed")
    code, _, err = cli(
        "sample", "--ckpt_path", checkpoint, "--num_samples", 2, "--precision", "bf16-mixed", "--out", tmp_path / "s"
    )
    assert code == 0, err
    for path in (tmp_path / "s").glob("*.npz"):
        arrays = read_sample(path, (16, 16))  # checks dtype-clean, finite float32 output
        assert arrays["image"].dtype == np.float32


def test_validate_and_test_report_the_loss_and_predict_points_to_sample(cli, tmp_path, ddpm_checkpoint):
    for stage in ("validate", "test"):
        code, out, err = cli(
            stage, *DDPM, "--trainer.default_root_dir", tmp_path / stage, "--ckpt_path", ddpm_checkpoint
        )
        assert code == 0, err
        assert f"{'val' if stage == 'validate' else 'test'}/loss" in out
    code, _, err = cli("predict", *DDPM, "--trainer.default_root_dir", tmp_path / "p", "--ckpt_path", ddpm_checkpoint)
    assert code != 0 and "xraydiff sample" in err


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_regresses_its_own_target(prediction_type):
    """An oracle that knows x0 predicts eps, v = sqrt(abar) eps - sqrt(1 - abar) x0 or x0 exactly:
    only the loss of the matching objective is zero, and the sampler recovers x0 from it in one step."""
    model = PairedDDPM(
        image_size=(16, 16),
        network={"channels": (8, 8), "num_res_blocks": 1, "norm_num_groups": 4},
        schedule={"num_train_timesteps": 50, "prediction_type": prediction_type},
    )
    x0 = torch.rand(3, 2, 16, 16) * 2 - 1
    abar = model.scheduler.alphas_cumprod

    def oracle(kind):
        def predict(xt, timesteps):
            a = abar[timesteps].view(-1, 1, 1, 1)
            eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
            return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[kind]

        return predict

    for kind in ("epsilon", "v_prediction", "sample"):
        loss = model.diffusion_loss(x0, oracle(kind), torch.Generator().manual_seed(0))
        assert (loss.item() < 1e-8) == (kind == prediction_type), (kind, loss.item())
    xt, t = torch.randn_like(x0), 25  # t = 25 of 50: x0 is half drowned in noise
    x0_predicted = predict_x0(oracle(prediction_type)(xt, torch.full((3,), t)), xt, abar[t], prediction_type)
    torch.testing.assert_close(x0_predicted, x0, atol=1e-4, rtol=0)


def test_v_prediction_with_stochastic_ddim_trains_and_samples_reproducibly(cli, tmp_path):
    checkpoint = fit(
        cli,
        tmp_path / "run",
        DDPM,
        "--trainer.max_epochs",
        "1",
        "--model.init_args.schedule.prediction_type",
        "v_prediction",
        "--model.init_args.sampling.ddim_eta",
        "1.0",
    )
    model = load_model(checkpoint)
    assert model.schedule.prediction_type == "v_prediction" and model.sampling.ddim_eta == 1.0
    draws = [model.generate(2, torch.Generator().manual_seed(seed), "ddim", 3) for seed in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    code, _, err = cli("sample", "--ckpt_path", checkpoint, "--num_samples", 2, "--steps", 3, "--out", tmp_path / "s")
    assert code == 0, err
    assert len(list((tmp_path / "s").glob("*.npz"))) == 2
    for bad in (["--model.init_args.schedule.prediction_type", "noise"], ["--model.init_args.sampling.ddim_eta", "2"]):
        code, _, err = cli("fit", *DDPM, "--trainer.default_root_dir", tmp_path / "bad", *bad)
        assert code != 0 and bad[0].split(".")[-1] in err, err[-500:]


def test_sample_never_replaces_a_folder_it_did_not_write(cli, tmp_path, ddpm_checkpoint):
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "important.csv").write_text("a,b\n")
    (foreign / "sub/x.txt").write_text("x")
    for extra in ([], ["--overwrite"]):
        code, _, err = cli("sample", "--ckpt_path", ddpm_checkpoint, "--num_samples", 2, "--out", foreign, *extra)
        assert code != 0 and "was not written by xraydiff" in err
    assert sorted(p.relative_to(foreign).as_posix() for p in foreign.rglob("*")) == [
        "important.csv",
        "sub",
        "sub/x.txt",
    ]
    # an earlier sample run is replaced only with --overwrite
    out = tmp_path / "samples"
    args = ["sample", "--ckpt_path", ddpm_checkpoint, "--num_samples", 2, "--sampler", "ddim", "--steps", 2,
            "--out", out]  # fmt: skip
    assert cli(*args)[0] == 0
    code, _, err = cli(*args)
    assert code != 0 and "--overwrite" in err
    assert cli(*args, "--overwrite")[0] == 0
    # --steps does nothing for the full DDPM chain: refused, not ignored
    code, _, err = cli("sample", "--ckpt_path", ddpm_checkpoint, "--num_samples", 2, "--sampler", "ddpm", "--steps", 5,
                       "--out", tmp_path / "d")  # fmt: skip
    assert code != 0 and "--steps 5: ddpm always runs the full chain" in err
    assert not (tmp_path / "d").exists()


def test_sigterm_stops_sampling_and_leaves_nothing(tmp_path, ddpm_checkpoint):
    import signal
    import subprocess
    import time

    from tiny import REPO, XRAYDIFF

    out = tmp_path / "samples"
    process = subprocess.Popen(
        [*XRAYDIFF, "sample", "--ckpt_path", str(ddpm_checkpoint), "--num_samples", "100000", "--batch_size", "1",
         "--sampler", "ddpm", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    staging = out.with_name(f".{out.name}.partial")
    deadline = time.monotonic() + 120
    while not any(staging.glob("*.npz")):  # samples are being written
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by signal" in err
    assert not out.exists() and not staging.exists()


def test_warmed_up_weight_average_follows_its_recursion_and_forgets_the_initial_weights():
    """``warmup_ema``: the n-th update (n = 0, 1, ...) uses d_n = min(decay, (1 + n) / (10 + n)); recomputed
    here by hand on a scalar weight that takes the values 1, 2, 3, ... after each optimizer step."""
    from torch.optim.swa_utils import AveragedModel

    from lightning_modules.generative import warmup_ema

    decay, steps = 0.998, 500
    weight = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.ParameterList([weight])
    average = AveragedModel(module, multi_avg_fn=warmup_ema(decay), use_buffers=True)
    expected = 0.0
    for n in range(steps):
        with torch.no_grad():
            weight.fill_(n + 1.0)
        average.update_parameters(module)
        if n == 0:  # AveragedModel copies the weights on its first update
            expected = 1.0
            continue
        d = min(decay, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * (n + 1.0)
    assert average.module[0].item() == pytest.approx(expected, rel=1e-5)
    assert expected > 400  # a fixed 0.998 would sit at 185, far behind the weights


@pytest.mark.parametrize("warmup", [True, False])
def test_the_paired_ddpm_average_warms_up_like_the_other_models(warmup):
    """With its 0.9999 of the paper, the paired DDPM's average after a few steps is (warm-up) near the trained
    weights, or (no warm-up) still the initial network: what acceptance during training would sample."""
    network = {"channels": (8, 8), "num_res_blocks": 1, "norm_num_groups": 4}
    optim = {"ema_decay": 0.9999, "ema_warmup": warmup}
    model = PairedDDPM(image_size=(16, 16), network=network, schedule={"num_train_timesteps": 50}, optim=optim)
    initial = [p.detach().clone() for p in model.unet.parameters()]
    model.ema.update_parameters(model.unet)  # the first update copies
    for step in range(1, 11):
        with torch.no_grad():
            for p, p0 in zip(model.unet.parameters(), initial, strict=True):
                p.copy_(p0 + step)  # "trained" weights move away by 1 per step
        model.ema.update_parameters(model.unet)
    shift = float(next(iter(model.ema.module.parameters()))[0].flatten()[0] - initial[0].flatten()[0])
    assert shift > 5.0 if warmup else shift < 0.01


def test_channels_last_sampling_draws_the_same_pairs_and_then_trains_on():
    """The paired DDPM samples with its EMA U-Net in channels-last (faster on CPU, ``sampling_memory_format``):
    the same pairs as in the contiguous format from the same seed, a contiguous result, and training goes on
    (an EMA update, a loss) with the converted average."""
    torch.manual_seed(0)
    network = {"channels": (8, 8), "num_res_blocks": 1, "norm_num_groups": 4}
    sampling = {"sampler": "ddim", "sampling_steps": 4}
    model = PairedDDPM(image_size=(16, 16), network=network, schedule={"num_train_timesteps": 20}, sampling=sampling)
    assert model.sampling_memory_format == torch.channels_last
    draws = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        model.sampling_memory_format = fmt
        draws[fmt] = model.generate(2, torch.Generator().manual_seed(3), "ddim", 4)
    assert draws[torch.channels_last].is_contiguous()
    torch.testing.assert_close(draws[torch.channels_last], draws[torch.contiguous_format], atol=1e-5, rtol=1e-5)
    assert next(p for p in model.ema.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    model.ema.update_parameters(model.unet)
    batch = {"image": torch.rand(2, 1, 16, 16) * 2 - 1, "landmarks": torch.rand(2, 37, 2) * 15}
    assert torch.isfinite(model.diffusion_loss(model.to_pairs(batch)))


def test_the_vae_loss_learns_one_fixed_pair_and_stays_finite():
    """Optimised on one fixed (image, heatmap) pair, the negative ELBO reconstructs it from the posterior mean:
    the error ends under a tenth of the pair's variance (what decoding its mean value would score). An encoder
    that outputs an enormous log-variance (exp overflows float32 past 88) still gives a finite loss."""
    torch.manual_seed(0)
    model = PairedVAE(image_size=(16, 16), channels=(8, 16), strides=(2, 2), num_res_units=1, latent_size=8)
    batch = {"image": torch.rand(1, 1, 16, 16) * 2 - 1, "landmarks": torch.rand(1, 37, 2) * 15}
    x0 = model.to_pairs(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        loss, _, kl = model.vae_loss(x0)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mu, _ = model.encode(x0)
        decoded = torch.tanh(model.net.decode_forward(mu, use_sigmoid=False))
    assert float(((decoded - x0) ** 2).mean()) < 0.1 * float(x0.var())
    assert float(kl) > 0
    with torch.no_grad():
        model.net.logvar.bias.fill_(200.0)
    assert all(torch.isfinite(term) for term in model.vae_loss(x0))
