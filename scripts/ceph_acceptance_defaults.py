"""Derive the cephalometric acceptance defaults from the real ISBI 2015 annotations.

Prints, for the 150 training skulls (mean of the two doctors, mm = px x 0.1):

* the landmark pairs closest on average: pairs under 3 mm may merge into one heatmap blob at the
  model's resolution and are allowed to share a candidate (rule i);
* per landmark, the distance to the similarity-aligned mean shape (the quantity of rule ii):
  median and 99.5th percentile. The stable landmarks are the cranial-base and maxillary ones
  with a small spread; 16 mm (the hands' threshold) lies above their 99.5th percentile.

    python scripts/ceph_acceptance_defaults.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from xraydiff.data.readers import read_ceph_dataset
from xraydiff.landmarks.shape import apply_similarity, generalized_procrustes, similarity_fit

NAMES = [
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower incisal incision",
    "upper incisal incision",
    "upper lip",
    "lower lip",
    "subnasale",
    "soft-tissue pogonion",
    "posterior nasal spine",
    "anterior nasal spine",
    "articulare",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    records = read_ceph_dataset(args.data / "isbi2015", require_images=False)["train"]
    shapes = np.stack([r.landmarks * r.mm_per_px for r in records])
    distance = np.linalg.norm(shapes[:, :, None] - shapes[:, None], axis=-1).mean(axis=0)
    print(f"{len(shapes)} training skulls")
    print("closest pairs (mean distance, mm):")
    for i, j in sorted(itertools.combinations(range(19), 2), key=lambda p: distance[p])[:5]:
        print(f"  {i:2d}-{j:2d} {distance[i, j]:5.2f}  {NAMES[i]} / {NAMES[j]}")
    _, mean = generalized_procrustes(shapes, scaling=True)
    residual = []
    for shape in shapes:
        rotation, scale, translation = similarity_fit(mean, shape)
        residual.append(np.linalg.norm(apply_similarity(mean, rotation, scale, translation) - shape, axis=1))
    residual = np.array(residual)
    print("distance to the aligned mean shape (mm): landmark, median, 99.5th percentile")
    for k in np.argsort(np.percentile(residual, 99.5, axis=0)):
        print(f"  {k:2d} {np.median(residual[:, k]):5.2f} {np.percentile(residual[:, k], 99.5):6.2f}  {NAMES[k]}")


if __name__ == "__main__":
    main()
