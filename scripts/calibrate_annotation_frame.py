"""Calibrate the annotations-only frame of the hand data from the images that are present.

Without its image, a hand's original image size is estimated from its landmarks as
``H0 = (max y + 1) * margin_y`` and ``W0 = (max x + 1) * margin_x``. The margins printed here
are the mean ratios of true image size to landmark extent over the images in
``hand_dha/images`` (9 of 910 in the development copy); they are the defaults of
``HandDataModule.extent_margin``.

    python scripts/calibrate_annotation_frame.py --data ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from xraydiff.data.readers import read_hand_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    splits = read_hand_dataset(args.data / "hand_dha", split_dir="setup/cv_reduced/set1")
    records = splits["train"] + splits["test"]
    ratios = np.array(
        [
            [r.original_size[1] / (r.landmarks[:, 0].max() + 1), r.original_size[0] / (r.landmarks[:, 1].max() + 1)]
            for r in records
        ]
    )
    print(
        f"{len(records)} images; W0 / (max x + 1): mean {ratios[:, 0].mean():.3f} sd {ratios[:, 0].std():.3f}; "
        f"H0 / (max y + 1): mean {ratios[:, 1].mean():.3f} sd {ratios[:, 1].std():.3f}"
    )
    print(f"extent_margin: [{ratios[:, 0].mean():.2f}, {ratios[:, 1].mean():.2f}]  # (x, y)")


if __name__ == "__main__":
    main()
