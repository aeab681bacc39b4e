"""The prediction plausibility check on real cephalograms (the "Plausibility" figures of docs/localization.md).

Fits the check (``callbacks.plausibility.fit_prediction_checker``) on the 150 ISBI 2015 training
annotations (mean of the two doctors) at 320 x 256, once per calibration of the shape rule's limit
(``AcceptanceConfig.shape_calibration``: the in-sample 99.5 % quantile of the training distances, or
that quantile of their leave-one-out distances), and judges the Test1 annotations of the mean, of the
senior and of the junior doctor as they are and mirrored left-right (a cephalogram facing the other
way). The thresholds are chosen on the training annotations alone; Test1 only measures them.
Prints the limit, the share that passes and the rules that failed.

    python scripts/plausibility_isbi.py [--root ../shared/data/isbi2015]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from callbacks.plausibility import fit_prediction_checker
from datamodules import CephalometricDataModule
from xraydiff.acceptance.config import SHAPE_CALIBRATIONS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2015"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DATA, help="ISBI 2015 in the challenge layout")
    parser.add_argument("--image-size", type=int, nargs=2, default=[320, 256], metavar=("H", "W"))
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        sys.exit(f"{args.root}: no such folder (the ISBI 2015 annotations are needed)")
    size = tuple(args.image_size)
    modules = {
        truth: CephalometricDataModule(root=str(args.root), image_size=size, annotations_only=True, ground_truth=truth)
        for truth in ("mean", "senior", "junior")
    }
    for calibration in SHAPE_CALIBRATIONS:
        checker = fit_prediction_checker(modules["mean"], shape_calibration=calibration)
        print(
            f"{calibration}: fitted on {checker.stats.num_shapes} training annotations at {size[0]} x {size[1]}; "
            f"shape limit sum b^2 / lambda <= {checker.stats.shape_distance_limit:.1f} "
            f"(the {checker.config.shape_quantile:.1%} quantile of the {calibration.replace('_', '-')} distances, "
            f"{checker.stats.ssm.eigenvalues.size} modes)"
        )
        for truth, dm in modules.items():
            test1 = dm.shape_table("val")[0]
            mirrored = test1.copy()
            mirrored[..., 0] = size[1] - 1 - mirrored[..., 0]
            for name, shapes in ((f"Test1 {truth}", test1), (f"Test1 {truth} mirrored", mirrored)):
                failed = checker.check_configurations(shapes)
                passing = sum(not f for f in failed) / len(failed)
                rules = dict(Counter(rule for f in failed for rule in f))
                print(f"  {name:<22} {len(shapes)} configurations, {passing:6.1%} plausible; failed rules: {rules}")


if __name__ == "__main__":
    main()
