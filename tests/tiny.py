"""Command-line overrides that shrink the demo configs to test size (16 x 16 phantoms, tiny nets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XRAYDIFF = [sys.executable, "-m", "cli"]  # DDP re-launches this same command in each rank

DATA = [
    "--data.init_args.image_size",
    "[16, 16]",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.phantom_counts",
    json.dumps({"train": 8, "val": 2, "test": 2}),
]
CSV = ["--config", "configs/trainer/csv.yaml"]
# The DDPM demo config shrunk to test size, with the default (W&B) logger.
DDPM_WANDB = [
    "--config",
    "configs/demo/hand_ddpm.yaml",
    "--model.init_args.image_size",
    "[16, 16]",
    "--model.init_args.network.channels",
    "[8, 16]",
    "--model.init_args.network.norm_num_groups",
    "8",
    "--model.init_args.network.num_res_blocks",
    "1",
    "--model.init_args.schedule.num_train_timesteps",
    "20",
    "--model.init_args.sampling.sampling_steps",
    "5",
    "--trainer.callbacks",
    "[]",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.log_every_n_steps",
    "1",
    *DATA,
]
DDPM = [*DDPM_WANDB, *CSV]
VAE = [
    "--config",
    "configs/demo/hand_vae.yaml",
    "--config",
    "configs/trainer/csv.yaml",
    "--model.init_args.image_size",
    "[16, 16]",
    "--model.init_args.channels",
    "[8, 16]",
    "--model.init_args.strides",
    "[2, 2]",
    "--model.init_args.latent_size",
    "8",
    "--trainer.callbacks",
    "[]",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.log_every_n_steps",
    "1",
    *DATA,
]
LOCALIZER = [
    "--config",
    "configs/demo/hand_localizer.yaml",
    "--config",
    "configs/trainer/csv.yaml",
    "--model.init_args.image_size",
    "[32, 32]",
    "--model.init_args.channels",
    "[8, 16, 32]",
    "--data.init_args.image_size",
    "[32, 32]",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.phantom_counts",
    '{"train": 8, "val": 3, "test": 5}',
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.check_val_every_n_epoch",
    "1",
]
DDP_TWO_CPU_PROCESSES = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def run(args: list[str], timeout: float = 600, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``xraydiff <args>``: in a fresh process where it must be one (several devices, which DDP
    re-launches; an environment of its own), otherwise in this one (a process start-up, mostly
    importing Lightning, costs about 10 s on a 2-core CPU)."""
    args = [str(a) for a in args]
    if env is None and not kwargs and not _several_processes(args):
        return _in_this_process(args)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [*XRAYDIFF, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=environment, **kwargs
    )


def _several_processes(args: list[str]) -> bool:
    for k, arg in enumerate(args[:-1]):
        if arg in ("--trainer.devices", "--devices") and args[k + 1] not in ("1", "[0]", "auto"):
            return True
    return False


def _in_this_process(args: list[str]) -> subprocess.CompletedProcess:
    import contextlib
    import io

    from conftest import run_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(REPO):
        code, _, _ = run_cli(args)
    return subprocess.CompletedProcess([*XRAYDIFF, *args], code, out.getvalue(), err.getvalue())


# Panoramic generators at 32 x 64 (latents 4 x 4 x 8): 12 unlabelled phantoms, 4 kept for synthesis, 8 train
# the generators (batch 4: 2 steps per epoch).
PANORAMIC_DATA = [
    "--data.init_args.image_size",
    "[32, 64]",
    "--data.init_args.batch_size",
    "4",
    "--data.init_args.synthesis_fraction",
    "0.34",
    "--data.init_args.phantom_counts",
    json.dumps({"train": 2, "val": 2, "test": 2, "unlabelled": 12}),
]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.check_val_every_n_epoch", "1"]
AUTOENCODER = [
    "--config",
    "configs/demo/panoramic_autoencoder.yaml",
    *CSV,
    "--model.init_args.image_size",
    "[32, 64]",
    "--model.init_args.channels",
    "[8, 8, 16, 16]",
    "--model.init_args.norm_num_groups",
    "8",
    "--trainer.callbacks",
    "[]",
    "--trainer.log_every_n_steps",
    "1",
    *QUIET,
    *PANORAMIC_DATA,
]
LDM = [
    "--config",
    "configs/demo/panoramic_ldm.yaml",
    *CSV,
    "--model.init_args.image_size",
    "[32, 64]",
    "--model.init_args.network.channels",
    "[16, 16]",
    "--model.init_args.network.attention_levels",
    "[false, true]",
    "--model.init_args.network.num_head_channels",
    "8",
    "--model.init_args.network.norm_num_groups",
    "8",
    "--model.init_args.schedule.num_train_timesteps",
    "50",
    "--model.init_args.sampling.sampling_steps",
    "4",
    "--trainer.callbacks",
    "[]",
    "--trainer.log_every_n_steps",
    "1",
    *QUIET,
    *PANORAMIC_DATA,
]


# The landmark diffusion demo config at 32 x 32 (32 phantom skulls, batch 4: 8 steps per epoch).
LANDMARK_DIFFUSION = [
    "--config",
    "configs/demo/ceph_landmark_diffusion.yaml",
    "--config",
    "configs/trainer/csv.yaml",
    "--model.init_args.image_size",
    "[32, 32]",
    "--model.init_args.network.channels",
    "[16, 32, 32]",
    "--model.init_args.network.attention_levels",
    "[false, false, true]",
    "--model.init_args.schedule.num_train_timesteps",
    "20",
    "--model.init_args.schedule.beta_end",  # sum of betas 2.0 as for the paper's T = 200 to 0.02: the same abar_T
    "0.2",
    "--model.init_args.inference.sampling_steps",
    "4",
    "--model.init_args.inference.sigma_max",
    "3.0",
    "--data.init_args.image_size",
    "[32, 32]",
    "--data.init_args.batch_size",
    "4",
    "--data.init_args.phantom_counts",
    '{"train": 32, "val": 4, "test": 5}',
    "--trainer.check_val_every_n_epoch",
    "100",
]

# The panoramic segmenter at 32 x 64 (8 phantom jaws, batch 2: 4 steps per epoch).
SEGMENTER = [
    "--config",
    "configs/demo/panoramic_segmenter.yaml",
    *CSV,
    "--data.init_args.image_size",
    "[32, 64]",
    "--model.init_args.image_size",
    "[32, 64]",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.phantom_counts",
    json.dumps({"train": 8, "val": 2, "test": 3, "unlabelled": 0}),
    "--trainer.enable_progress_bar",
    "false",
]
