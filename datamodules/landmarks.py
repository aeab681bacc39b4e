"""Shared machinery of the landmark DataModules (hand, cephalometric)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from datamodules.base import CachedSplitsDataModule
from xraydiff.data.datasets import (
    LandmarkDataset,
    LandmarkItem,
    annotation_item,
    load_landmark_item,
    parallel_map,
    shape_table,
    training_subset,
)
from xraydiff.data.geometry import to_original_pixels
from xraydiff.data.phantoms import PhantomSample
from xraydiff.data.readers import LandmarkRecord, read_synthetic_dataset
from xraydiff.data.transforms import AugmentationSpec, build_augmentation
from xraydiff.errors import DataError

SPLITS = ("train", "val", "test")
# Phantoms rendered in this process, by (renderer, seed, render): the steps of a study load the same
# phantoms again and again (generator, statistics, localizer fit and test); rendering them is the cost.
_PHANTOM_CACHE: dict[tuple, PhantomSample] = {}
_PHANTOM_CACHE_LIMIT = 20_000


def _cached_phantom(renderer, seed: int, render: bool) -> PhantomSample:
    key = (type(renderer.__self__).__name__, tuple(renderer.__self__.image_size), seed, render)
    if key not in _PHANTOM_CACHE:
        if len(_PHANTOM_CACHE) >= _PHANTOM_CACHE_LIMIT:
            _PHANTOM_CACHE.clear()
        sample = renderer(seed, render=render)
        for array in (sample.image, sample.landmarks):
            if array is not None:
                array.setflags(write=False)  # shared between DataModules: nobody may change it
        _PHANTOM_CACHE[key] = sample
    return _PHANTOM_CACHE[key]


SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class LandmarkDataModule(CachedSplitsDataModule):
    """Base class: real records (``root`` given) or phantoms, cached in memory, augmented on the fly.

    Subclasses define ``anatomy``, ``num_landmarks``, ``read_records`` and ``render_phantom``.
    Every split is loaded and checked in ``setup`` before any work starts, whatever the stage.

    Args:
        root: dataset folder; None serves phantoms.
        image_size: (H, W) of the model input.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        augmentation: preset name ('default' = the anatomy's preset, 'none'), a list of
            albumentations transforms ``[{"name": ..., "params": {...}}]``, or None.
        train_fraction: share of the training split kept, drawn reproducibly from ``seed``
            (0.1 gives the ReducedDataset of Hadzic et al.).
        seed: seed of the phantoms and of the ``train_fraction`` draw.
        phantom_counts: number of phantoms per split when no root is given.
        load_workers: threads decoding images in ``setup``.
        annotations_only: read landmarks without images (no training possible), for shape
            statistics and ground-truth renderings when the images are not at hand.
        original_size: (H0, W0) assumed for every image in annotations-only mode; None estimates
            each one from its landmark extent times ``extent_margin`` (x, y)
            (``xraydiff.data.geometry.estimate_original_size``).
        extent_margin: see ``original_size``.
        extra_train_dirs: folders of synthetic training pairs in the layout ``xraydiff acceptance
            run`` exports (``accepted/``); never used for validation or testing.
        synthetic_share: share of synthetic samples in each training epoch (and so, on average,
            in each batch); None mixes them in their natural proportion.
        predict_splits: the splits ``predict`` runs on, one DataLoader (and one predictions CSV)
            each; None = every non-empty one of 'val' and 'test'.
    """

    anatomy = "landmarks"
    num_landmarks = 0

    def __init__(
        self,
        root: str | None = None,
        image_size: tuple[int, int] = (256, 256),
        batch_size: int = 4,
        num_workers: int = 0,
        augmentation: AugmentationSpec = "default",
        train_fraction: float = 1.0,
        seed: int = 0,
        phantom_counts: dict[str, int] | None = None,
        load_workers: int = 2,
        annotations_only: bool = False,
        original_size: tuple[int, int] | None = None,
        extent_margin: tuple[float, float] = (1.0, 1.0),
        extra_train_dirs: list[str] | None = None,
        synthetic_share: float | None = None,
        predict_splits: list[str] | None = None,
    ):
        super().__init__()
        if len(image_size) != 2 or min(image_size) < 8:
            raise DataError(None, f"image_size must be (H, W) with both at least 8, got {image_size}")
        if not 0.0 < train_fraction <= 1.0:
            raise DataError(None, f"train_fraction must be in (0, 1], got {train_fraction}")
        if batch_size < 1:
            raise DataError(None, f"batch_size must be at least 1, got {batch_size}")
        self.root = None if root is None else Path(root)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation_spec = augmentation
        self.augmentation = build_augmentation(augmentation, self.anatomy)
        self.train_fraction = train_fraction
        self.seed = seed
        self.phantom_counts = {"train": 64, "val": 16, "test": 16, **(phantom_counts or {})}
        self.load_workers = load_workers
        self.annotations_only = annotations_only
        self.original_size = None if original_size is None else (int(original_size[0]), int(original_size[1]))
        self.extent_margin = (float(extent_margin[0]), float(extent_margin[1]))
        self.extra_train_dirs = [Path(d) for d in extra_train_dirs or []]
        if synthetic_share is not None and not 0.0 <= synthetic_share < 1.0:
            raise DataError(None, f"synthetic_share must be in [0, 1), got {synthetic_share}")
        self.synthetic_share = synthetic_share
        if predict_splits is not None and (not predict_splits or set(predict_splits) - {"train", "val", "test"}):
            raise DataError(None, f"predict_splits must name some of 'train', 'val', 'test', got {predict_splits}")
        self.predict_splits = None if predict_splits is None else list(predict_splits)
        self.items: dict[str, list[LandmarkItem]] | None = None
        self._sized_ids: set[str] = set()

    # ----------------------------------------------------------------- subclass interface

    def read_records(self, require_images: bool = True) -> dict[str, list[LandmarkRecord]]:
        """Real records per split, checked against their files (raise DataError on any problem)."""
        raise NotImplementedError

    def render_phantom(self, seed: int, render: bool = True) -> PhantomSample:
        raise NotImplementedError

    # ----------------------------------------------------------------------------- loading

    def setup(self, stage: str | None = None) -> None:
        if self.items is not None:
            return
        if self.root is None:
            items = {split: self._phantom_items(split) for split in SPLITS}
        else:
            records = self.read_records(require_images=not self.annotations_only)
            self._sized_ids = {r.id for split in records.values() for r in split if r.original_size is not None}
            if not any(records.values()):
                raise DataError(self.root, "dataset is empty: no split holds any sample")
            load = self._annotation_item if self.annotations_only else partial(load_landmark_item, size=self.image_size)
            items = {split: parallel_map(load, records.get(split, []), self.load_workers) for split in SPLITS}
            items["train"] = training_subset(items["train"], self.train_fraction, self.seed)
        items["synthetic"] = [item for folder in self.extra_train_dirs for item in self._synthetic_items(folder)]
        self.items = items

    def _synthetic_items(self, folder: Path) -> list[LandmarkItem]:
        """Generated pairs exported by ``xraydiff acceptance run`` (``accepted/``), checked."""
        records = read_synthetic_dataset(folder, self.num_landmarks, self.synthetic_mm_per_px)
        items = parallel_map(partial(load_landmark_item, size=self.image_size), records, self.load_workers)
        return [dataclasses.replace(item, synthetic=True) for item in items]

    def synthetic_mm_per_px(self, landmarks: np.ndarray, manifest: dict) -> float:
        """Millimetres per pixel of a synthetic image (hands: the wrist-width convention)."""
        if "mm_per_px" not in manifest:
            raise DataError(None, f"{type(self).__name__} needs mm_per_px in a synthetic folder's manifest")
        return float(manifest["mm_per_px"])

    def _annotation_item(self, record: LandmarkRecord) -> LandmarkItem:
        return annotation_item(record, self.image_size, self.original_size, self.extent_margin)

    def _phantom_items(self, split: str) -> list[LandmarkItem]:
        base = self.seed * 10_000_000 + SPLIT_SEED_OFFSET[split]
        indices = list(range(self.phantom_counts.get(split, 0)))
        if split == "train":  # draw the subset first: only the phantoms kept are rendered
            indices = training_subset(indices, self.train_fraction, self.seed)
        render = partial(_cached_phantom, self.render_phantom, render=not self.annotations_only)
        phantoms = parallel_map(render, [base + k for k in indices], self.load_workers)
        return [
            LandmarkItem(
                f"phantom-{split}-{k:05d}",
                p.image,
                p.landmarks,
                to_original_pixels(p.landmarks.astype(np.float64), p.scale),
                p.scale,
                p.mm_per_px,
                p.original_size,
            )
            for k, p in zip(indices, phantoms, strict=True)
        ]

    # ---------------------------------------------------------------------------- datasets

    def dataset(self, split: str, augment: bool | None = None) -> LandmarkDataset:
        """The dataset of a split; augmented by default only for 'train'."""
        self.setup()
        augment = split == "train" if augment is None else augment
        return LandmarkDataset(self.items[split], self.augmentation if augment else None)

    def _loader(self, split: str) -> DataLoader:
        if self.annotations_only:
            raise DataError(self.root, "annotations_only data has no images to train or evaluate on")
        return super()._loader(split)

    def predicted_splits(self) -> list[str]:
        """The splits ``predict`` runs on, in DataLoader order."""
        self.setup()
        if self.predict_splits is not None:
            return self.predict_splits
        splits = [split for split in ("val", "test") if self.items[split]]
        if not splits:
            raise DataError(self.empty_split_source("test"), "nothing to predict: the val and test splits are empty")
        return splits

    def predict_dataloader(self) -> list[DataLoader]:
        # un-augmented, in dataset order; an empty split that was asked for is an error
        if self.annotations_only:
            raise DataError(self.root, "annotations_only data has no images to predict on")
        loaders = []
        for split in self.predicted_splits():
            dataset = self.dataset(split, augment=False)
            if len(dataset) == 0:
                raise DataError(self.empty_split_source(split), f"the {split} split is empty")
            loaders.append(self.make_loader(dataset))
        return loaders

    def train_dataloader(self) -> DataLoader:
        self.setup()
        synthetic = self.items["synthetic"]
        if not synthetic:
            return self._loader("train") if self.annotations_only else super().train_dataloader()
        real = self.items["train"]
        dataset = LandmarkDataset(real + synthetic, self.augmentation)
        sampler = self.epoch_sampler(len(real), len(synthetic), self.synthetic_share)
        return self.make_loader(dataset, sampler=sampler)

    # ------------------------------------------------------------------------- description

    def summary(self) -> dict:
        """Counts and units of the loaded data, for ``xraydiff data summary``."""
        self.setup()
        spacing = [item.mm_per_px for split in SPLITS for item in self.items[split]]
        return {
            "anatomy": self.anatomy,
            "source": self.source,
            "splits": {split: len(self.items[split]) for split in SPLITS},
            "num_landmarks": self.num_landmarks,
            "image_size": list(self.image_size),
            "mm_per_px": {"min": float(np.min(spacing)), "mean": float(np.mean(spacing)), "max": float(np.max(spacing))}
            if spacing
            else None,
            "augmentation": self.augmentation_spec,
            "synthetic": len(self.items["synthetic"]),
        }

    def training_set_description(self) -> dict:
        """What the training split is: recorded in every checkpoint of a model trained on it, so that a
        study can check that a generator row was trained on exactly that row's training set."""
        self.setup()
        split = (
            f"phantoms seed {self.seed}, {self.phantom_counts['train']} train" if self.root is None else self.split_name
        )
        return {
            "anatomy": self.anatomy,
            "source": self.source,
            "split": split,
            "train_fraction": self.train_fraction,
            "seed": self.seed,
            "train_images": len(self.items["train"]),
            "synthetic_images": len(self.items["synthetic"]),
            "image_size": list(self.image_size),
        }

    @property
    def split_name(self) -> str:
        """The name of the real training split (subclasses with several split layouts refine it)."""
        return "train"

    def shape_table(self, split: str = "train") -> tuple[np.ndarray, np.ndarray, dict]:
        """Landmarks of a split for shape statistics: (shapes (M, N, 2) model pixels, mm per model
        pixel (M, 2) in x and y, a description of the frame)."""
        self.setup()
        items = self.items[split]
        if len(items) < 3:
            raise DataError(self.root, f"the {split} split holds {len(items)} shapes; shape statistics need at least 3")
        shapes, spacing = shape_table(items)
        from_headers = all(item.image is not None or self._header_sized(item) for item in items)
        frame = {
            "source": self.source,
            "split": split,
            "annotations_only": self.annotations_only,
            "original_frame": "image sizes" if from_headers else "configured" if self.original_size else "estimated",
            "original_size": list(self.original_size) if not from_headers and self.original_size else None,
            "extent_margin": list(self.extent_margin) if not from_headers and not self.original_size else None,
            "convention": "landmarks in pixels of the image resized to image_size; mm_per_px is the median "
            "over the shapes of (original mm per pixel) x (resize factor)",
        }
        return shapes, spacing, frame

    def _header_sized(self, item: LandmarkItem) -> bool:
        """Whether an annotations-only item was framed by its image's true size (phantoms: always)."""
        return self.root is None or item.id in self._sized_ids

    def landmark_rows(self) -> Iterator[tuple[str, str, int, float, float, float]]:
        """(split, id, landmark, x, y, mm_per_px) with x, y in original pixels as read."""
        self.setup()
        for split in SPLITS:
            for item in self.items[split]:
                for k, (x, y) in enumerate(item.landmarks_original):
                    yield split, item.id, k, float(x), float(y), float(item.mm_per_px)
