"""Tiny datasets in the real layouts, written to a temporary folder, for error-path tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_png(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 255, (height, width), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def hand_landmarks(seed: int, width: int = 100, height: int = 120) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform([5, 5], [width - 6, height - 6], size=(37, 2)))


def make_hand(root: Path, ids=("1001", "1002", "1003"), width: int = 100, height: int = 120) -> Path:
    """root/setup/all.csv, root/setup/cv/set1/{train,test}.txt, root/images/<id>.png"""
    rows = []
    for k, sample_id in enumerate(ids):
        points = hand_landmarks(k, width, height)
        rows.append(",".join([sample_id, *(str(int(v)) for v in points.ravel())]))
        write_png(root / "images" / f"{sample_id}.png", height, width, k)
    (root / "setup/cv/set1").mkdir(parents=True, exist_ok=True)
    (root / "setup/all.csv").write_text("\n".join(rows) + "\n")
    (root / "setup/cv/set1/train.txt").write_text("\n".join(ids[:-1]) + "\n")
    (root / "setup/cv/set1/test.txt").write_text(ids[-1] + "\n")
    return root


def make_ceph(root: Path, ids=("001", "002"), width: int = 90, height: int = 110) -> Path:
    """ISBI 2015 layout with TrainingData only."""
    for k, sample_id in enumerate(ids):
        write_png(root / "RawImage/TrainingData" / f"{sample_id}.png", height, width, k)
        for d, doctor in enumerate(("400_senior", "400_junior")):
            points = np.round(np.random.default_rng(10 * k + d).uniform([3, 3], [width - 4, height - 4], (19, 2)))
            text = "\n".join(f"{int(x)},{int(y)}" for x, y in points) + "\n3\n1\n"  # extra lines are ignored
            path = root / "AnnotationsByMD" / doctor / f"{sample_id}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return root


def make_panoramic(root: Path, stems=("a", "b", "c"), size=(40, 80)) -> Path:
    for k, stem in enumerate(stems):
        write_png(root / "images" / f"{stem}.png", *size, seed=k)
        labels = np.zeros(size, np.uint8)
        labels[10:20, 10 + 5 * k : 30 + 5 * k] = 36
        labels[25:28, 5:70] = 1
        (root / "masks").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(root / "masks" / f"{stem}.png"))
    return root
