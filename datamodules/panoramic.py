"""Panoramic dental radiographs with label maps, plus unlabelled images for latent blending."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.base import CachedSplitsDataModule
from xraydiff.augment import AugmentationSpec, build_augmentation
from xraydiff.datasets import (
    SegmentationDataset,
    SegmentationItem,
    binary_target,
    load_segmentation_item,
    parallel_map,
)
from xraydiff.errors import DataError
from xraydiff.phantoms import CANAL_LABEL, panoramic_phantom
from xraydiff.readers import read_panoramic_dataset

SPLITS = ("train", "val", "test")


class PanoramicDataModule(CachedSplitsDataModule):
    """Panoramic radiographs and binary targets from label maps, or phantom jaws when ``root`` is None.

    Layout under ``root``: ``<image_dir>/<stem>.<ext>`` with ``<mask_dir>/<stem>.png`` label maps,
    optionally ``<unlabelled_dir>/<stem>.<ext>``. The labelled images are split reproducibly into
    train / val / test by ``val_fraction`` and ``test_fraction``.

    Args:
        classes: label values forming the binary target, e.g. 1 (the phantom canal) or a list of
            FDI tooth numbers such as [36, 37, 38, 46, 47, 48].
        image_size: (H, W) of the model input.
        phantom_counts: phantoms per split ('train', 'val', 'test', 'unlabelled').
        (see ``LandmarkDataModule`` for the other arguments)
    """

    anatomy = "panoramic"

    def __init__(
        self,
        root: str | None = None,
        image_dir: str = "images",
        mask_dir: str = "masks",
        unlabelled_dir: str | None = None,
        classes: int | list[int] = CANAL_LABEL,
        image_size: tuple[int, int] = (256, 512),
        batch_size: int = 8,
        num_workers: int = 0,
        augmentation: AugmentationSpec = "default",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        phantom_counts: dict[str, int] | None = None,
        load_workers: int = 2,
    ):
        super().__init__()
        if len(image_size) != 2 or min(image_size) < 8:
            raise DataError(None, f"image_size must be (H, W) with both at least 8, got {image_size}")
        if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
            raise DataError(
                None,
                f"need val_fraction, test_fraction >= 0 with a sum below 1, got {val_fraction} and {test_fraction}",
            )
        self.root = None if root is None else Path(root)
        self.image_dir, self.mask_dir, self.unlabelled_dir = image_dir, mask_dir, unlabelled_dir
        self.classes: Sequence[int] = [classes] if isinstance(classes, int) else list(classes)
        if not self.classes:
            raise DataError(None, "classes must name at least one label value")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augmentation_spec = augmentation
        self.augmentation = build_augmentation(augmentation, self.anatomy)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed = seed
        self.phantom_counts = {"train": 48, "val": 8, "test": 8, "unlabelled": 48, **(phantom_counts or {})}
        self.load_workers = load_workers
        self.items: dict[str, list[SegmentationItem]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.items is not None:
            return
        if self.root is None:
            self.items = {name: self._phantoms(name) for name in (*SPLITS, "unlabelled")}
            return
        labelled, unlabelled = read_panoramic_dataset(self.root, self.image_dir, self.mask_dir, self.unlabelled_dir)
        if not labelled:
            raise DataError(self.root / self.image_dir, "dataset is empty: no labelled image found")
        order = np.random.default_rng(self.seed).permutation(len(labelled))
        n_test = int(round(self.test_fraction * len(labelled)))
        n_val = int(round(self.val_fraction * len(labelled)))
        chosen = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        load = lambda r: load_segmentation_item(r, self.image_size, self.classes)  # noqa: E731
        self.items = {
            split: parallel_map(load, [labelled[k] for k in sorted(idx)], self.load_workers)
            for split, idx in chosen.items()
        }
        self.items["unlabelled"] = parallel_map(load, unlabelled, self.load_workers)

    def _phantoms(self, name: str) -> list[SegmentationItem]:
        offset = {"train": 0, "val": 1_000_000, "test": 2_000_000, "unlabelled": 3_000_000}[name]
        base = self.seed * 10_000_000 + offset
        rendered = parallel_map(
            lambda s: panoramic_phantom(s, self.image_size),
            list(range(base, base + self.phantom_counts.get(name, 0))),
            self.load_workers,
        )
        return [
            SegmentationItem(
                f"phantom-{name}-{k:05d}", image, None if name == "unlabelled" else binary_target(labels, self.classes)
            )
            for k, (image, labels) in enumerate(rendered)
        ]

    def dataset(self, split: str, augment: bool | None = None) -> SegmentationDataset:
        self.setup()
        augment = split == "train" if augment is None else augment
        return SegmentationDataset(self.items[split], self.augmentation if augment else None)

    def summary(self) -> dict:
        self.setup()
        labelled = [item for split in SPLITS for item in self.items[split]]
        coverage = [float(item.mask.mean()) for item in labelled]
        return {
            "anatomy": self.anatomy,
            "source": self.source,
            "splits": {split: len(self.items[split]) for split in SPLITS},
            "labelled": len(labelled),
            "unlabelled": len(self.items["unlabelled"]),
            "classes": list(self.classes),
            "mask_coverage": {
                "mean": float(np.mean(coverage)),
                "min": float(np.min(coverage)),
                "max": float(np.max(coverage)),
            },
            "image_size": list(self.image_size),
            "augmentation": self.augmentation_spec,
        }
