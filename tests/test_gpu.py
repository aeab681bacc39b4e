"""Every model on a CUDA device (``scripts/gpu_check.sh``): training steps under bf16-mixed, a checkpoint
saved and loaded again (test from ``last``), and sampling on the GPU. Skipped without CUDA;
XRAYDIFF_GPU_CHECK_ON_CPU=1 runs the same flow on the CPU in 32-bit (a dry run of the check)."""

from __future__ import annotations

import os

import pytest
import torch
from tiny import AUTOENCODER, DDPM, LANDMARK_DIFFUSION, LDM, LOCALIZER, SEGMENTER, VAE, run

ON_CPU = os.environ.get("XRAYDIFF_GPU_CHECK_ON_CPU") == "1"
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason="no CUDA device (gpu_check.sh)")
ACCELERATOR, PRECISION = ("cpu", "32-true") if ON_CPU else ("gpu", "bf16-mixed")
GPU = ["--trainer.accelerator", ACCELERATOR, "--trainer.devices", "1", "--trainer.precision", PRECISION]
SAMPLE = ["--accelerator", ACCELERATOR, "--precision", PRECISION]
STEPS = ["--trainer.max_steps", "4", "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1"]


def _fit_and_test(tmp_path, name: str, args: list[str]) -> str:
    root = ["--trainer.default_root_dir", str(tmp_path / name)]
    result = run(["fit", *args, *GPU, *STEPS, *root])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / name / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file(), f"{name}: no last.ckpt"
    result = run(["test", *args, *GPU, *root, "--ckpt_path", str(checkpoint)])
    assert result.returncode == 0, result.stderr[-3000:]
    return str(checkpoint)


@needs_gpu
@pytest.mark.parametrize(
    ("name", "args"),
    [("ddpm", DDPM), ("vae", VAE), ("localizer", LOCALIZER), ("landmark_diffusion", LANDMARK_DIFFUSION),
     ("segmenter", SEGMENTER)],
)  # fmt: skip
def test_each_model_trains_saves_loads_and_evaluates_on_the_gpu(tmp_path, name, args):
    checkpoint = _fit_and_test(tmp_path, name, args)
    if name in ("ddpm", "vae"):
        for sampler in (["--sampler", "dpmpp_2m", "--steps", "4"] if name == "ddpm" else []), []:
            out = tmp_path / f"{name}_samples{len(sampler)}"
            result = run(["sample", "--ckpt_path", checkpoint, "--num_samples", "4", *SAMPLE, "--out", str(out),
                          *sampler])  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            assert len(list(out.glob("*.npz"))) == 4


@needs_gpu
def test_the_latent_diffusion_model_trains_on_its_autoencoder_and_samples_on_the_gpu(tmp_path):
    autoencoder = _fit_and_test(tmp_path, "autoencoder", AUTOENCODER)
    ldm = _fit_and_test(tmp_path, "ldm", [*LDM, "--model.init_args.autoencoder_ckpt", autoencoder])
    for sampler in ("ddim", "unipc"):
        out = tmp_path / f"ldm_{sampler}"
        result = run(["sample", "--ckpt_path", ldm, "--num_samples", "4", *SAMPLE, "--sampler", sampler, "--steps",
                      "4", "--out", str(out)])  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(list(out.glob("*.npz"))) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check runs for real")
def test_the_gpu_check_says_there_is_no_gpu_and_passes():
    import shutil
    import subprocess

    from tiny import REPO

    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi is installed: the script would go on to check")
    result = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "no GPU on this machine" in result.stdout
