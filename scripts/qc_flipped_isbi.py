"""Does the prediction QC catch a cephalogram facing the other way? (docs/cephalograms.md).

Loads a trained landmark model (``LandmarkDiffusion``, baseline or diffusion), predicts the first
``--images`` Test1 images as they are and flipped left-right, and checks every predicted configuration
with the QC of ``callbacks.plausibility`` (fitted on the training annotations, as in evaluation).
Prints how many of each the QC flags and the rules that failed.

    python scripts/qc_flipped_isbi.py runs/ceph_landmarks_cpu/diffusion/checkpoints/last.ckpt \
        --sampler ddim --steps 5 [--root ../shared/data/isbi2015] [--images 10]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

from callbacks.plausibility import fit_prediction_checker
from datamodules import CephalometricDataModule
from lightning_modules import LandmarkDiffusion
from lightning_modules.generative import load_model
from xraydiff.diffusion.choices import DEFAULT_SAMPLER, LANDMARK_SAMPLERS
from xraydiff.diffusion.engine import check_sampling

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2015"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--root", type=Path, default=DATA, help="ISBI 2015 in the challenge layout")
    parser.add_argument("--images", type=int, default=10, help="the first N Test1 images")
    parser.add_argument("--sampler", choices=LANDMARK_SAMPLERS, default=DEFAULT_SAMPLER, help="diffusion models only")
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps k")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        sys.exit(f"{args.root}: no such folder (the ISBI 2015 images are needed)")
    model = load_model(args.checkpoint, LandmarkDiffusion).eval()
    dm = CephalometricDataModule(root=str(args.root), image_size=model.image_size, batch_size=args.images)
    dm.setup()
    checker = fit_prediction_checker(dm)
    batch = next(iter(dm.make_loader(dm.dataset("val", augment=False))))
    steps = check_sampling(args.sampler, args.steps, 0.0, model.schedule.num_train_timesteps, "landmark")
    mode = args.sampler if model.hparams.diffusion else "baseline"
    settings = {"mode": mode, "steps": steps if model.hparams.diffusion else 1, "ensemble": 1}
    print(f"{args.checkpoint}: {settings['mode']} ({steps} calls), QC fitted on {checker.stats.num_shapes} shapes")
    for name, image in (("as they are", batch["image"]), ("flipped left-right", batch["image"].flip(-1))):
        with torch.no_grad():
            predicted = model.infer(image, batch["index"], settings)["members"][:, 0]
        failed = checker.check_configurations(predicted.numpy())
        rules = dict(Counter(rule for f in failed for rule in f))
        flagged = sum(bool(f) for f in failed)
        print(f"  {len(failed)} Test1 images {name:<18}: {flagged} flagged by the QC; failed rules: {rules}")


if __name__ == "__main__":
    main()
