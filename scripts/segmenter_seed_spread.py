"""How much a real-only segmenter's DSC depends on its training seed (the blend study's reference row).

Trains the blend study's real-only row (the segmenter of ``--study``'s config, its data overrides) once per
seed for exactly ``--steps`` optimizer steps, tests each on the hold-out split and prints the mean DSC per
seed, their mean and SD, and the seconds per run. Extra LightningCLI overrides after ``--`` choose the
network and schedule to measure (e.g. ``-- --model.init_args.network unet``). Resumable: a seed whose
``test_metrics.json`` exists is read, not retrained.

    python -m scripts.segmenter_seed_spread --out runs/segmenter_seeds/unet400 --steps 400 -- \\
        --model.init_args.network unet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from commands.lightning_cli import XrayCLI
from commands.parsing import read_yaml
from experiments.steps import CSV_LOGGER, StepRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=Path("configs/panoramic/blend_cpu.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides of the segmenter, after --")
    args = parser.parse_args()

    study = read_yaml(args.study)["experiment"]
    segmenter = study["segmenter"]
    common = [a for c in segmenter["config"] for a in ("--config", c)]
    common += [str(a) for a in segmenter.get("args", [])] + StepRunner.data_args(study.get("data", {}))
    common += [str(a) for a in args.overrides]
    scores = {}
    for seed in args.seeds:
        folder = args.out / f"seed{seed}"
        metrics = folder / "test_metrics.json"
        run = [
            "--trainer.default_root_dir",
            str(folder),
            "--trainer.logger",
            CSV_LOGGER,
            "--seed_everything",
            str(seed),
        ]
        start = time.perf_counter()
        if not metrics.is_file():
            budget = [
                "--trainer.max_steps",
                str(args.steps),
                "--trainer.max_epochs",
                "-1",
                "--trainer.max_time",
                "null",
            ]
            XrayCLI(args=["fit", *common, *run, *budget, "--trainer.limit_val_batches", "0", "--ckpt_path", "last"])
            XrayCLI(args=["test", *common, *run, "--ckpt_path", str(folder / "checkpoints/last.ckpt")])
        scores[seed] = json.loads(metrics.read_text())["dsc"]
        print(f"seed {seed}: DSC {scores[seed]:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    values = np.array(list(scores.values()))
    spread = values.std(ddof=1) if len(values) > 1 else float("nan")
    setting = " ".join(args.overrides) or "the study config"
    print(f"{args.steps} steps, {setting}: DSC {values.mean():.3f}, seed SD {spread:.3f} over {len(values)} seeds")


if __name__ == "__main__":
    main()
