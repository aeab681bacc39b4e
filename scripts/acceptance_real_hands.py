"""The acceptance check's figures on real hands: how many real hands it accepts, how many corrupted
ones it rejects (the "Measured" paragraph of docs/hands.md).

Statistics from the 597 training annotations of CV set 1 of the Digital Hand Atlas (no validation
hold-out, as in the paper), the 298 set-1 test hands rendered as sigma-1 heatmaps at 256 x 256, each
as it is and under every corruption of ``xraydiff.acceptance.corruptions`` (swapped fingers, a sixth finger, a
thumb stretched by 50 %, the wrist shifted by 20 mm, three blobs missing). Prints, per case, the share
accepted (real) or rejected (corrupted) by the strict and by the paper's rule set.

    python scripts/acceptance_real_hands.py [--root ../shared/data/hand_dha]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from datamodules import HandDataModule
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.corruptions import KINDS, corrupted, render
from xraydiff.acceptance.statistics import ShapeStatistics

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hand_dha"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DATA, help="Digital Hand Atlas in the Payer et al. layout")
    parser.add_argument("--split-dir", default="setup/cv/set1")
    args = parser.parse_args()
    if not args.root.is_dir():
        sys.exit(f"{args.root}: no such folder (the real hand annotations are needed)")
    dm = HandDataModule(root=str(args.root), split_dir=args.split_dir, annotations_only=True, val_fraction=0.0)
    shapes, spacing, frame = dm.shape_table("train")
    stats = ShapeStatistics.fit(shapes, spacing, (256, 256), "hand", AcceptanceConfig(), frame)
    test = dm.shape_table("test")[0]
    checker = AcceptanceChecker(stats)
    print(f"statistics: {len(shapes)} training hands of {args.split_dir}; judged: {len(test)} test hands, 256 x 256")
    print(f"{'case':<14} {'measure':<9} {'strict':>7} {'paper':>7}")

    def report(case: str, measure: str, heatmaps: np.ndarray) -> None:
        verdicts = checker.check(heatmaps)
        share = {s: np.mean([v.accepted_by_rule_set[s] for v in verdicts]) for s in ("strict", "paper")}
        if measure == "rejected":
            share = {s: 1.0 - value for s, value in share.items()}
        print(f"{case:<14} {measure:<9} {share['strict']:>7.1%} {share['paper']:>7.1%}", flush=True)

    report("real", "accepted", render(test))
    for kind in KINDS:
        # the seeds are the tests' (tests/test_acceptance.py::test_corrupted_real_hands_are_rejected)
        configurations, extras = corrupted(kind, test, stats.mm_per_px, seed=KINDS.index(kind))
        report(kind, "rejected", render(configurations, extras=extras))


if __name__ == "__main__":
    main()
