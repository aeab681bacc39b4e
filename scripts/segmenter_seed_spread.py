"""How much a real-only segmenter's DSC depends on its training seed (the blend study's reference row).

Runs the real-only segmenter step of ``--study`` (``BlendStudy.train_segmenter``: exactly ``--steps`` optimizer
steps, no validation, then the test on the hold-out split) once per seed into ``--out`` and prints the mean DSC
per seed, their mean and SD, and the seconds per run. Extra LightningCLI overrides after ``--`` choose the
network and schedule to measure (e.g. ``-- --model.init_args.network unet``). Resumable: finished seeds are
steps of an xraydiff output folder, read rather than retrained.

    python -m scripts.segmenter_seed_spread --out runs/segmenter_seeds/unet400 --steps 400 -- \\
        --model.init_args.network unet
"""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial
from pathlib import Path

import numpy as np

from experiments.blend import BlendStudy, load_blend_study_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=Path("configs/panoramic/blend_cpu.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides of the segmenter, after --")
    args = parser.parse_args()

    config = dataclasses.replace(load_blend_study_config(args.study), segmenter_steps=args.steps)
    study = BlendStudy(config, args.out)
    study.prepare_folder()
    overrides = [str(a) for a in args.overrides]
    scores = []
    for seed in args.seeds:
        record = study.step(
            args.out / f"seed{seed}",
            f"real only, seed {seed}: train {args.steps} steps and test",
            partial(study.train_segmenter, extra=overrides, seed=seed),
        )
        scores.append(record["metrics"]["dsc"])
        print(f"seed {seed}: DSC {scores[-1]:.3f} ({record['seconds']:.0f} s)", flush=True)
    values = np.array(scores)
    spread = values.std(ddof=1) if len(values) > 1 else float("nan")
    setting = " ".join(overrides) or "the study config"
    print(f"{args.steps} steps, {setting}: DSC {values.mean():.3f}, seed SD {spread:.3f} over {len(values)} seeds")


if __name__ == "__main__":
    main()
