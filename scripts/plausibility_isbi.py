"""The prediction plausibility check on real cephalograms (the README's "Plausibility" figures).

Fits the check (``callbacks.plausibility.fit_prediction_checker``) on the 150 ISBI 2015 training
annotations at 320 x 256 and judges the 150 Test1 annotations as they are and mirrored left-right
(a cephalogram facing the other way). Prints the share that passes and the rules that failed.

    python scripts/plausibility_isbi.py [--root ../shared/data/isbi2015]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from callbacks.plausibility import fit_prediction_checker
from datamodules import CephalometricDataModule

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2015"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DATA, help="ISBI 2015 in the challenge layout")
    parser.add_argument("--image-size", type=int, nargs=2, default=[320, 256], metavar=("H", "W"))
    args = parser.parse_args()
    if not args.root.is_dir():
        sys.exit(f"{args.root}: no such folder (the ISBI 2015 annotations are needed)")
    dm = CephalometricDataModule(root=str(args.root), image_size=tuple(args.image_size), annotations_only=True)
    checker = fit_prediction_checker(dm)
    test1 = dm.shape_table("val")[0]
    mirrored = test1.copy()
    mirrored[..., 0] = args.image_size[1] - 1 - mirrored[..., 0]
    print(f"fitted on {checker.stats.num_shapes} training annotations at {args.image_size[0]} x {args.image_size[1]}")
    for name, shapes in (("Test1 annotations", test1), ("Test1 mirrored", mirrored)):
        failed = checker.check_configurations(shapes)
        passing = sum(not f for f in failed) / len(failed)
        rules = dict(Counter(rule for f in failed for rule in f))
        print(f"{name:<18} {len(shapes)} configurations, {passing:6.1%} plausible; failed rules: {rules}")


if __name__ == "__main__":
    main()
