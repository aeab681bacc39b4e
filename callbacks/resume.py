"""Callbacks that make a killed or preempted run continue exactly where it stopped."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
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


def settle_epoch_end(fit_loop: dict) -> None:
    """Rewrite the fit loop's progress in a checkpoint saved at or after an epoch's end so that Lightning
    resumes it where it stopped also under a step budget (``max_steps``).

    Lightning resumes a step-budget run as "restarting" even when the epoch had finished, and then
    (2.6) keeps the finished epoch's batch count, so the next epoch starts as already done and its data
    is skipped; a checkpoint written by the epoch-end hooks (``ModelCheckpoint`` at the epoch end, which
    also runs for an epoch cut short by ``max_steps``) counts the epoch as processed, and the sampler
    moves on to the next epoch's order. Here an epoch whose last batch ran is recorded as completed with
    no batch of the next one done; an epoch cut short is recorded as not yet processed, so that it
    continues with its next batch. Checkpoints written inside an epoch are left as they are.
    """
    epoch = fit_loop["epoch_progress"]
    batches = fit_loop["epoch_loop.batch_progress"]
    ready, started, processed, completed = (epoch["current"][k] for k in ("ready", "started", "processed", "completed"))
    if not ready == started == processed or completed not in (processed, processed - 1):
        return  # inside an epoch
    if completed == processed - 1:  # written by the epoch-end hooks
        for count in (epoch["current"], epoch["total"]):
            if batches["is_last_batch"]:
                count["completed"] = count["processed"]
            else:
                count["processed"] = count["completed"]
    if batches["is_last_batch"]:
        optimization = fit_loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
        counters = [batches["current"], fit_loop["epoch_loop.scheduler_progress"]["current"]]
        counters += [progress["current"] for progress in optimization.values()]
        manual = fit_loop.get("epoch_loop.manual_optimization.optim_step_progress")
        counters += [manual["current"]] if manual else []
        for counter in counters:
            for key in counter:
                counter[key] = 0
        batches["is_last_batch"] = False


class RandomStateCheckpoint(Callback):
    """Checkpoints the random generators of every rank and restores them when training resumes.

    Lightning restores weights, optimizer, loops and callbacks, but not the generators that draw
    noise, timesteps, shuffling and augmentation; with them a resumed run is bit-identical to an
    uninterrupted one (on CPU). Under DDP each rank continues its own stream; a fresh DDP run
    offsets each rank's torch seed so that ranks draw different diffusion noise.
    """

    def __init__(self) -> None:
        self._pending: list[dict] | None = None
        self._before_validation: dict | None = None

    def state_dict(self) -> dict:
        state = capture_random_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return {"ranks": states}
        return {"ranks": [state]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("ranks")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if "loops" in checkpoint and "fit_loop" in checkpoint["loops"]:
            settle_epoch_end(checkpoint["loops"]["fit_loop"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:
            rank = trainer.global_rank if trainer.global_rank < len(self._pending) else 0
            restore_random_state(self._pending[rank])
            self._pending = None
            # Lightning's "dataloader is not resumable" warning is silenced (commands.quiet): the
            # EpochSampler continues the interrupted epoch, and this line says so.
            if trainer.is_global_zero:
                print(
                    f"xraydiff: resumed {trainer.ckpt_path} at epoch {trainer.current_epoch}, step "
                    f"{trainer.global_step}: weights, EMA, optimizer, schedule, data order, augmentation and "
                    "random state restored",
                    file=sys.stderr,
                )
        elif trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + trainer.global_rank)

    # Validation inside training leaves the random state as it found it: the training noise and
    # augmentation do not depend on whether (or how often) a run validated, nor on where it resumed.
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._before_validation = capture_random_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._before_validation is not None:
            restore_random_state(self._before_validation)
            self._before_validation = None


class PreemptionCheckpoint(Callback):
    """Saves ``last.ckpt`` when a SIGTERM or a Ctrl-C (SIGINT) stops training, so ``--ckpt_path last``
    continues from it exactly; on SLURM, saves ``hpc_ckpt_N.ckpt`` and requeues the job when the
    early-warning signal arrives.

    Lightning turns SIGTERM into a clean stop at the next step boundary (SIGTERMException); this
    callback writes the checkpoint at that moment. Lightning's own SLURM handler saves the HPC
    checkpoint inside the signal handler, which breaks a checkpoint write that the signal happened
    to interrupt (a nested file-system transaction); here the handler only raises a flag and the
    checkpoint is written at the next step boundary, on every rank at once. A first Ctrl-C asks for the
    same stop as SIGTERM (Lightning's own KeyboardInterrupt handling would stop mid-step and save nothing);
    a second one stops at once.
    """

    def __init__(self) -> None:
        self._requeue_requested = False
        self._previous_handler = None
        self._signal = None
        self._previous_sigint = None
        self._stopped_by = "SIGTERM"

    def _stop_at_step_end(self, trainer: L.Trainer) -> Callable:
        def handler(signum, frame) -> None:
            signal.signal(signal.SIGINT, self._previous_sigint)  # a second Ctrl-C interrupts at once
            self._stopped_by = "Ctrl-C (SIGINT)"
            trainer._signal_connector.received_sigterm = True
            rank_zero_info("xraydiff: Ctrl-C: stopping at the end of this step and saving last.ckpt (again: stop now)")

        return handler

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._stop_at_step_end(trainer)) or signal.SIG_DFL
        # Installed before Lightning registers its handlers (it keeps an existing one and adds none).
        environment = trainer._accelerator_connector.cluster_environment
        if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        self._signal = environment.requeue_signal or signal.SIGUSR1
        self._previous_handler = signal.signal(self._signal, self._request_requeue)

    def _request_requeue(self, signum, frame) -> None:
        self._requeue_requested = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._signal is None:
            return
        requested = self._requeue_requested
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        self._requeue_requested = False
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        rank_zero_info(f"SLURM requeue signal at step {trainer.global_step}: saved {path}")
        if trainer.is_global_zero:
            job_id = os.environ["SLURM_JOB_ID"]
            if os.environ.get("SLURM_ARRAY_JOB_ID"):
                job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            result = subprocess.call(["scontrol", "requeue", job_id])
            rank_zero_info(f"requeue of SLURM job {job_id}: {'done' if result == 0 else f'failed ({result})'}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
        if self._signal is not None and self._previous_handler is not None:
            signal.signal(self._signal, self._previous_handler)
        self._signal = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        checkpoint = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
        directory = Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath else Path(trainer.default_root_dir)
        path = directory / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(f"Stopped by {self._stopped_by} at step {trainer.global_step}: saved {path}")
