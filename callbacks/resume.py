"""Callbacks that make a killed or preempted run continue exactly where it stopped."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


def capture_random_state() -> dict:
    """The state of Python's, NumPy's and torch's generators, in types safe for ``weights_only`` loading."""
    # The legacy global generator is what seed_everything seeds and third-party code draws from.
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStateCheckpoint(Callback):
    """Checkpoints the random generators of every rank and restores them when training resumes.

    Lightning restores weights, optimizer, loops and callbacks, but not the generators that draw
    noise, timesteps, shuffling and augmentation; with them a resumed run is bit-identical to an
    uninterrupted one (on CPU). Under DDP each rank continues its own stream; a fresh DDP run
    offsets each rank's torch seed so that ranks draw different diffusion noise.
    """

    def __init__(self) -> None:
        self._pending: list[dict] | None = None

    def state_dict(self) -> dict:
        state = capture_random_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return {"ranks": states}
        return {"ranks": [state]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("ranks")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:
            rank = trainer.global_rank if trainer.global_rank < len(self._pending) else 0
            restore_random_state(self._pending[rank])
            self._pending = None
        elif trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + trainer.global_rank)


class PreemptionCheckpoint(Callback):
    """Saves ``last.ckpt`` when a SIGTERM stops training, so ``--ckpt_path last`` continues from it.

    Lightning turns SIGTERM into a clean stop at the next step boundary (SIGTERMException); this
    callback writes the checkpoint at that moment. SLURM's early-warning signal (SIGUSR1, with
    auto-requeue) is handled by Lightning's SLURM environment, which saves ``hpc_ckpt_N.ckpt`` in
    the run folder and requeues the job.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        checkpoint = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
        directory = Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath else Path(trainer.default_root_dir)
        path = directory / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(f"Stopped by SIGTERM at step {trainer.global_step}: saved {path}")
