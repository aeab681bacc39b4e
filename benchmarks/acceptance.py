"""Speed of the MRF-SSM acceptance check, and pgmpy's Mplp on the same MRFs.

Fits the statistics on CV set 1 train of ../shared/data/hand_dha (annotations only) and checks
the 298 set-1 test hands rendered as 256 x 256 heatmaps with sigma 1; without the real data it uses
phantom hands. Prints end-to-end samples per second (candidates + MRF + RANSAC + rules, batches
of 100), pgmpy Mplp seconds per sample on the same MRFs, the speed ratio and the agreement rate.

    python benchmarks/acceptance.py [--mplp-samples 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from datamodules import HandDataModule
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.mrf import max_sum_bp, pgmpy_map
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.landmarks.heatmaps import gaussian_heatmaps

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hand_dha"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mplp-samples", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    if DATA.is_dir():
        source = "real hands, CV set 1"
        dm = HandDataModule(root=str(DATA), split_dir="setup/cv/set1", annotations_only=True)
    else:
        source = "phantom hands"
        dm = HandDataModule(annotations_only=True, phantom_counts={"train": 600, "test": 300})
    shapes, spacing, frame = dm.shape_table("train")
    stats = ShapeStatistics.fit(shapes, spacing, (256, 256), "hand", AcceptanceConfig(), frame)
    test = dm.shape_table("test")[0]
    heatmaps = gaussian_heatmaps(
        torch.tensor(test, dtype=torch.float32), (256, 256), 1.0, combine=True, normalize=True
    )[:, 0].numpy()
    checker = AcceptanceChecker(stats)
    checker.check(heatmaps[:8])  # warm-up
    rates, accepted = [], 0
    for _ in range(3):
        start = time.perf_counter()
        verdicts = []
        for b in range(0, len(heatmaps), args.batch):
            verdicts += checker.check(heatmaps[b : b + args.batch])
        rates.append(len(heatmaps) / (time.perf_counter() - start))
        accepted = sum(v.accepted for v in verdicts)
    ours = statistics.median(rates)

    problem = checker.labeller.build_mrf((heatmaps[: args.mplp_samples] + 1) / 2)
    labels = max_sum_bp(problem.unary, problem.pairwise, problem.edges).labels.numpy()
    start = time.perf_counter()
    agree = 0
    for b in range(args.mplp_samples):
        reference = pgmpy_map(
            problem.unary[b].numpy(),
            problem.pairwise[b].numpy(),
            problem.edges.numpy(),
            "mplp",
            problem.available[b].numpy(),
        )
        agree += np.array_equal(reference, labels[b])
    mplp = (time.perf_counter() - start) / args.mplp_samples
    print(
        f"{source}: {len(test)} test heatmaps 256 x 256, 37 landmarks, {len(stats.edges)} MRF edges, "
        f"torch threads {torch.get_num_threads()}, python {sys.version.split()[0]}"
    )
    print(f"  end-to-end check      {ours:8.1f} samples/s  ({1000 / ours:.2f} ms/sample, batches of {args.batch})")
    print(f"  accepted              {accepted}/{len(test)} ({accepted / len(test):.1%}, strict rules)")
    print(f"  pgmpy Mplp, same MRFs {mplp:8.3f} s/sample  (MRF solve only, {args.mplp_samples} samples)")
    print(f"  speed-up vs Mplp      {mplp * ours:8.0f}x per sample")
    print(f"  labels equal to Mplp  {agree}/{args.mplp_samples}")


if __name__ == "__main__":
    main()
