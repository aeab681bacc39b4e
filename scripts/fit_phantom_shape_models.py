"""Fit the shape models that place landmarks on phantom hands and skulls, from real annotations.

Writes ``xraydiff/assets/hand_shape_model.json`` (Digital Hand Atlas, all 910 annotated hands of
Payer et al.) and ``xraydiff/assets/ceph_shape_model.json`` (ISBI 2015, mean of the two doctors on
the 300 public images). Each file holds, in millimetres:

* the point distribution model x = x_m + P b of the Procrustes-aligned shapes (rotation and
  translation removed, size kept) with the modes up to 98 % of the variance;
* the pose statistics that put a shape into an image: rotation of the image frame relative to the
  model frame, centroid position as a fraction of the image size, the image size in mm and the
  original pixel spacing.

Usage (from the repository root, with ../shared/data present):

    python scripts/fit_phantom_shape_models.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.data.readers import read_ceph_annotation, read_ceph_dataset, read_hand_annotations, read_hand_dataset
from xraydiff.landmarks.shape import PointDistributionModel, generalized_procrustes, similarity_fit

ASSETS = Path(__file__).resolve().parents[1] / "xraydiff" / "assets"


def shape_statistics(shapes_mm: np.ndarray, variance_share: float = 0.98) -> dict:
    """PDM in the image-frame orientation plus the per-shape rotation away from it."""
    centred = shapes_mm - shapes_mm.mean(axis=1, keepdims=True)
    aligned, mean = generalized_procrustes(centred, scaling=False)
    # Orient the model frame like the average image: rotate the Procrustes mean onto the mean of
    # the unaligned (centred) shapes.
    rotation, _, _ = similarity_fit(mean, centred.mean(axis=0), scaling=False)
    mean = mean @ rotation.T
    aligned = aligned @ rotation.T
    pdm = PointDistributionModel.fit(aligned, variance_share)
    to_image, _, _ = similarity_fit(aligned, centred, scaling=False)
    angles = np.degrees(np.arctan2(to_image[:, 1, 0], to_image[:, 0, 0]))
    return {
        "mean_shape": np.round(pdm.mean_shape, 4).tolist(),
        "modes": np.round(pdm.modes, 6).tolist(),
        "eigenvalues": np.round(pdm.eigenvalues, 6).tolist(),
        "rotation_deg": {"mean": float(angles.mean()), "sd": float(angles.std())},
    }


def fraction_stats(centroids_px: np.ndarray, sizes_hw: np.ndarray) -> dict:
    fractions = centroids_px / sizes_hw[:, ::-1]
    return {"mean": fractions.mean(axis=0).tolist(), "sd": fractions.std(axis=0).tolist()}


def fit_hand(data: Path) -> dict:
    root = data / "hand_dha"
    csv = root / "setup" / "all.csv"
    rows = read_hand_annotations(csv)
    landmarks = np.stack([points for points, _ in rows.values()])
    mm_per_px = np.array([50.0 / np.linalg.norm(p[1] - p[5]) for p in landmarks])
    stats = shape_statistics(landmarks * mm_per_px[:, None, None])
    # Image size and position are known only where the image is present (9 of 910).
    with_images = read_hand_dataset(root, split_dir="setup/cv_reduced/set1")
    records = with_images["train"] + with_images["test"]
    sizes = np.array([r.original_size for r in records], dtype=float)
    centroids = np.array([r.landmarks.mean(axis=0) for r in records])
    canvas_mm = (sizes * np.array([r.mm_per_px for r in records])[:, None]).mean(axis=0)
    return {
        "name": "hand",
        "version": 1,
        "units": "mm",
        "num_landmarks": 37,
        "provenance": (
            f"Digital Hand Atlas annotations of Payer et al., all {len(landmarks)} rows of {csv.name}; "
            "millimetres by the 50 mm wrist-width convention (landmarks 1 and 5); image size and "
            f"centroid position from the {len(records)} images present in hand_dha/images. "
            "Produced by scripts/fit_phantom_shape_models.py."
        ),
        **stats,
        "centroid_fraction": fraction_stats(centroids, sizes),
        "canvas_mm": np.round(canvas_mm, 2).tolist(),
        "mm_per_px": {
            "mean": float(mm_per_px.mean()),
            "sd": float(mm_per_px.std()),
            "min": float(mm_per_px.min()),
            "max": float(mm_per_px.max()),
        },
    }


def fit_ceph(data: Path) -> dict:
    root = data / "isbi2015"
    splits = read_ceph_dataset(root)
    records = [r for split in splits.values() for r in split]
    landmarks = np.stack([r.landmarks for r in records])
    stats = shape_statistics(landmarks * 0.1)
    sizes = np.array([r.original_size for r in records], dtype=float)
    centroids = landmarks.mean(axis=1)
    # Inter-observer spread, kept for reference: senior vs junior distance per landmark in mm.
    spread = np.mean(
        [
            np.linalg.norm(
                read_ceph_annotation(root / "AnnotationsByMD/400_senior" / f"{r.id}.txt")
                - read_ceph_annotation(root / "AnnotationsByMD/400_junior" / f"{r.id}.txt"),
                axis=1,
            )
            * 0.1
            for r in records
        ],
        axis=0,
    )
    return {
        "name": "ceph",
        "version": 1,
        "units": "mm",
        "num_landmarks": 19,
        "provenance": (
            f"ISBI 2015 cephalometric challenge, mean of senior and junior doctor on {len(records)} "
            "images (TrainingData and Test1Data), 0.1 mm per pixel. "
            "Produced by scripts/fit_phantom_shape_models.py."
        ),
        **stats,
        "centroid_fraction": fraction_stats(centroids, sizes),
        "canvas_mm": np.round(sizes.mean(axis=0) * 0.1, 2).tolist(),
        "mm_per_px": {"mean": 0.1, "sd": 0.0, "min": 0.1, "max": 0.1},
        "observer_difference_mm": np.round(spread, 3).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    for name, fit in (("hand", fit_hand), ("ceph", fit_ceph)):
        model = fit(args.data)
        path = args.out / f"{name}_shape_model.json"
        atomic_write_bytes(path, json.dumps(model, indent=1).encode())
        print(f"{path}: {len(model['eigenvalues'])} modes, rotation sd {model['rotation_deg']['sd']:.2f} deg")


if __name__ == "__main__":
    main()
