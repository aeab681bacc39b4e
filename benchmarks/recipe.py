"""What a time-capped CPU recipe reaches on this machine: seconds per training step, peak memory,
and the epochs that fit in the recipe's ``max_time``, at 32-bit and (where the CPU computes bf16
natively, or with ``--all-precisions``) at bf16 autocast.

A real ``Trainer`` runs ``--steps`` training steps of the config's model on the config's data
(the real data when its root exists, else the DataModule's phantoms), including data loading,
augmentation, optimizer and EMA; validation is timed once over its whole split. Each precision runs
in a fresh process so that peak resident memory belongs to it alone.

    python benchmarks/recipe.py configs/data/isbi2015.yaml configs/ceph/localizer_cpu.yaml
    python benchmarks/recipe.py configs/data/isbi2015.yaml configs/ceph/landmark_diffusion_cpu.yaml --steps 6

Configs compose as with ``--config``: later ones override earlier ones, key by key inside ``init_args``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from commands.parsing import compose_configs


def _instantiate(spec: dict):
    module, name = spec["class_path"].rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    return cls(**spec.get("init_args", {}))


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    days, hours, minutes, seconds = (int(part) for part in str(text).split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def worker(configs: list[str], precision: str, steps: int) -> dict:
    import lightning.pytorch as pl

    cfg = compose_configs(configs)
    pl.seed_everything(cfg.get("seed_everything", 0), verbose=False)
    data_spec = cfg["data"]
    root = data_spec.get("init_args", {}).get("root")
    if root and not Path(root).is_dir():
        data_spec = {**data_spec, "init_args": {**data_spec["init_args"], "root": None}}
    datamodule, model = _instantiate(data_spec), _instantiate(cfg["model"])

    class StepTimer(pl.Callback):
        def __init__(self):
            self.starts, self.ends, self.validation = [], [], 0.0

        def on_train_batch_start(self, *args):
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, *args):
            self.ends.append(time.perf_counter())

        def on_validation_epoch_start(self, *args):
            self._validation_start = time.perf_counter()

        def on_validation_epoch_end(self, *args):
            self.validation = time.perf_counter() - self._validation_start

    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=steps + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)
    # the step time includes loading its batch: from the end of one step to the end of the next
    per_step = (timer.ends[-1] - timer.ends[0]) / (len(timer.ends) - 1)
    start = time.perf_counter()
    validation = pl.Trainer(
        accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    validation.validate(model, datamodule=datamodule, verbose=False)
    return {
        "precision": precision,
        "data": "real" if data_spec["init_args"].get("root") else "phantoms",
        "steps_per_epoch": trainer.num_training_batches,
        "seconds_per_step": per_step,
        "validation_seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "configs", nargs="+", help="a recipe's configs, e.g. configs/data/isbi2015.yaml configs/ceph/localizer_cpu.yaml"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per precision")
    parser.add_argument("--all-precisions", action="store_true", help="also time bf16 on a CPU without native bf16")
    args = parser.parse_args()

    from xraydiff.precision import cpu_has_native_bf16

    cfg = compose_configs(args.configs)
    trainer_cfg = cfg.get("trainer", {})
    cap = _seconds(trainer_cfg.get("max_time"))
    epochs = trainer_cfg.get("max_epochs")
    every = trainer_cfg.get("check_val_every_n_epoch", 1)
    native = cpu_has_native_bf16()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, native bf16: {native}")
    recipe = " + ".join(args.configs)
    print(f"{recipe}: max_epochs {epochs}, max_time {trainer_cfg.get('max_time')}, validation every {every}")
    precisions = ["32-true"] + (["bf16-mixed"] if native or args.all_precisions else [])
    for precision in precisions:
        code = (
            "import json, benchmarks.recipe as b; "
            f"print(json.dumps(b.worker({args.configs!r}, {precision!r}, {args.steps})))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        epoch = r["steps_per_epoch"] * r["seconds_per_step"] + r["validation_seconds"] / every
        line = (
            f"  {precision:<10} {r['seconds_per_step']:6.2f} s/step ({r['data']}, {r['steps_per_epoch']} steps/epoch), "
            f"validation {r['validation_seconds']:5.1f} s, peak RSS {r['peak_rss_mb']:6.0f} MB"
        )
        if cap and epochs:
            reached = min(epochs, int(cap // epoch))
            line += f"; {epoch / 60:.2f} min/epoch -> {reached} of {epochs} epochs in the cap"
        print(line, flush=True)


if __name__ == "__main__":
    main()
