"""Multi-process and cluster behaviour, run as real subprocesses: DDP, signals, SLURM, W&B."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import AUTOENCODER, DDP_TWO_CPU_PROCESSES, DDPM, DDPM_WANDB, LDM, XRAYDIFF, run

from xraydiff.data.samples import read_sample


def test_ddp_fit_and_sample_with_two_cpu_processes(tmp_path):
    root = tmp_path / "ddp"
    result = run(
        [
            "fit",
            *DDPM,
            "--trainer.default_root_dir",
            root,
            "--trainer.max_epochs",
            "2",
            *DDP_TWO_CPU_PROCESSES,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(root / "checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4  # 8 phantoms, batch 2, split over 2 ranks: 2 steps per epoch
    assert len(checkpoint["callbacks"]["RandomStateCheckpoint"]["ranks"]) == 2

    out = tmp_path / "samples"
    result = run(
        [
            "sample",
            "--ckpt_path",
            root / "checkpoints/last.ckpt",
            "--num_samples",
            5,
            "--batch_size",
            2,
            "--sampler",
            "ddim",
            "--steps",
            3,
            "--devices",
            2,
            "--accelerator",
            "cpu",
            "--out",
            out,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ids"] == [f"s0-{k:06d}" for k in range(5)] and manifest["devices"] == 2
    assert sorted(p.stem for p in out.glob("*.npz")) == manifest["ids"]
    assert sorted(p.stem for p in out.glob("*.png")) == manifest["ids"]
    for sample in manifest["ids"]:
        assert read_sample(out / f"{sample}.npz", (16, 16))["image"].shape == (16, 16)
    # The same seed and batch size on one device give the same samples.
    single = tmp_path / "single"
    result = run(
        [
            "sample",
            "--ckpt_path",
            root / "checkpoints/last.ckpt",
            "--num_samples",
            5,
            "--batch_size",
            2,
            "--sampler",
            "ddim",
            "--steps",
            3,
            "--out",
            single,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for sample in manifest["ids"]:
        np.testing.assert_allclose(
            np.load(out / f"{sample}.npz")["heatmap"], np.load(single / f"{sample}.npz")["heatmap"], atol=1e-5
        )


# Every kind of training loop: the paired DDPM, the autoencoder with its GAN (manual optimization, two
# optimizers), the LDM on a frozen autoencoder. (model class, fit arguments, steps per epoch on the tiny data)
ADVERSARIAL = (
    "--model.init_args.gan.adversarial_weight",
    "0.1",
    "--model.init_args.gan.adversarial_warmup",
    "1",
)
MODELS = {
    "paired_ddpm": ("PairedDDPM", DDPM, 4),
    "adversarial_autoencoder": ("LatentAutoencoder", [*AUTOENCODER, *ADVERSARIAL], 2),
    "ldm": ("LatentDiffusion", LDM, 2),
}


@pytest.fixture(params=list(MODELS))
def model(request) -> tuple[str, list, int]:
    name, base, steps = MODELS[request.param]
    if name == "LatentDiffusion":
        base = [*base, "--model.init_args.autoencoder_ckpt", str(request.getfixturevalue("autoencoder_checkpoint"))]
    return name, base, steps


def _completed_steps(checkpoint: dict) -> int:
    """Training batches done: the autoencoder's own counter (Lightning counts both GAN optimizers)."""
    state = checkpoint["state_dict"]
    return int(state["autoencoder_steps"]) if "autoencoder_steps" in state else checkpoint["global_step"]


def _start_fit(root: Path, base=DDPM, env: dict | None = None, extra: tuple = ()) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})}
    args = [
        "fit",
        *base,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_epochs",
        "100000",
        "--trainer.check_val_every_n_epoch",
        "1000",
        *extra,
    ]
    return subprocess.Popen(
        [*XRAYDIFF, *args],
        cwd=Path(__file__).resolve().parents[1],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)
    time.sleep(0.5)


def _continue_and_compare(root: Path, base: list, ckpt_path: str | Path, total: int, tmp_path: Path) -> None:
    """Resume ``root`` from ``ckpt_path`` to ``total`` steps; the result equals a straight run of ``total``
    steps bit for bit (weights, EMA, optimizer)."""
    same = ["--trainer.max_epochs", "100000", "--trainer.check_val_every_n_epoch", "1000", "--trainer.max_steps", total]
    resumed = run(["fit", *base, "--trainer.default_root_dir", root, "--ckpt_path", ckpt_path, *same])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "xraydiff: resumed" in resumed.stderr and "not resumable" not in resumed.stderr
    straight = run(["fit", *base, "--trainer.default_root_dir", tmp_path / "straight", *same])
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = (torch.load(r / "checkpoints/last.ckpt", weights_only=False) for r in (tmp_path / "straight", root))
    assert a["global_step"] == b["global_step"] == total
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for optimizer_a, optimizer_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for state_a, state_b in zip(optimizer_a["state"].values(), optimizer_b["state"].values(), strict=True):
            assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def _stop_and_resume(tmp_path: Path, model: tuple[str, list, int], sig: signal.Signals, said: str) -> None:
    """Stop a fit with ``sig`` after its first epoch: it saves last.ckpt at the step it stopped, says ``said``
    and exits 0; --ckpt_path last then continues bit for bit."""
    name, base, steps_per_epoch = model
    root = tmp_path / "run"
    process = _start_fit(root, base)
    _wait_for(root / "checkpoints/last.ckpt", process)
    time.sleep(1.0)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert said in stderr and "Detected KeyboardInterrupt" not in stderr
    stopped = torch.load(root / "checkpoints/last.ckpt", weights_only=False)
    assert stopped["xraydiff"]["model_class"].endswith(name)
    assert _completed_steps(stopped) > steps_per_epoch  # saved at the step it stopped, not at the epoch's end
    # 4 more optimizer steps: 2 batches of the GAN (both optimizers step), 4 otherwise; mid-epoch or not.
    _continue_and_compare(root, base, "last", stopped["global_step"] + 4, tmp_path)


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(tmp_path, model):
    _stop_and_resume(tmp_path, model, signal.SIGTERM, "Stopped by SIGTERM")


def test_ctrl_c_saves_like_sigterm_and_resumes_exactly(tmp_path):
    """Lightning alone reports "Detected KeyboardInterrupt" on Ctrl-C, exits 1 and saves nothing."""
    _stop_and_resume(tmp_path, MODELS["paired_ddpm"], signal.SIGINT, "Stopped by Ctrl-C (SIGINT)")


def test_slurm_signal_saves_hpc_checkpoint_and_requeues(tmp_path):
    """SIGUSR1 before the time limit: Lightning's SLURM environment saves and requeues the job. (The HPC
    checkpoint is written at a step's end, as the step checkpoint, for every loop kind; one model here.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    root = tmp_path / "run"
    name, base, _ = MODELS["paired_ddpm"]
    process = _start_fit(root, base, env=slurm)
    _wait_for(root / "checkpoints/last.ckpt", process)
    process.send_signal(signal.SIGUSR1)
    _wait_for(root / "hpc_ckpt_1.ckpt", process, timeout=60)
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().split() == ["requeue", "4242"]
    process.send_signal(signal.SIGTERM)  # what SLURM sends once the job is requeued
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    hpc = torch.load(root / "hpc_ckpt_1.ckpt", weights_only=False)
    assert _completed_steps(hpc) > 0 and hpc["xraydiff"]["model_class"].endswith(name)
    # The requeued job continues from the HPC checkpoint exactly.
    _continue_and_compare(root, base, root / "hpc_ckpt_1.ckpt", hpc["global_step"] + 4, tmp_path)


def test_wandb_is_the_default_logger_offline_and_keeps_its_run_id_on_resume(tmp_path):
    root = tmp_path / "run"
    gallery = '[{"class_path": "callbacks.gallery.SampleGallery", "init_args": {"num_samples": 2, "steps": 2}}]'
    args = ["fit", *DDPM_WANDB, "--trainer.default_root_dir", root, "--trainer.callbacks", gallery]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    first = run([*args, "--trainer.max_epochs", "1"], env={"WANDB_MODE": "offline", "WANDB_SILENT": "false"})
    assert first.returncode == 0, first.stderr[-3000:]
    # Nothing a user cannot act on: W&B's warnings about Lightning's settings, a FLOPs total of 0.
    printed = first.stdout + first.stderr
    assert "wandb sync" in printed and "PairedDDPM: " in printed  # what W&B and the summary do say
    for noise in ("anonymous setting", "git root", "Total FLOPs", "not resumable"):
        assert noise not in printed, noise
    sampled = run(
        ["sample", "--ckpt_path", root / "checkpoints/last.ckpt", "--num_samples", 2, "--out", tmp_path / "s"]
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert "batch indices" not in sampled.stderr and "ddim x2" not in sampled.stderr  # one progress bar
    run_id = torch.load(root / "checkpoints/last.ckpt", weights_only=False)["xraydiff"]["wandb_run_id"]
    runs = list((root / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and (root / "config.yaml").exists()
    assert list(runs[0].rglob("samples_*.png")), "the sample gallery was not logged to W&B"
    assert (root / "galleries/epoch=0000.png").exists()
    second = run([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"], env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert torch.load(root / "checkpoints/last.ckpt", weights_only=False)["xraydiff"]["wandb_run_id"] == run_id
    assert len(list((root / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert not list(Path.cwd().glob("wandb/offline-run-*"))
