"""Panoramic dental radiographs with label maps, plus the unlabelled pool that trains the latent diffusion model
and feeds the latent blending."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.base import CachedSplitsDataModule
from xraydiff.data.datasets import (
    SegmentationDataset,
    SegmentationItem,
    binary_target,
    check_targets,
    load_segmentation_item,
    parallel_map,
)
from xraydiff.data.phantoms import CANAL_LABEL, panoramic_phantom
from xraydiff.data.readers import SegmentationRecord, read_panoramic_dataset
from xraydiff.data.transforms import AugmentationSpec, build_augmentation
from xraydiff.errors import DataError

SPLITS = ("train", "val", "test")
# Splits of images only: the whole unlabelled pool, its part reserved for synthesis, the generators' training set.
POOL_SPLITS = ("unlabelled", "synthesis", "generator")


class PanoramicDataModule(CachedSplitsDataModule):
    """Panoramic radiographs and binary targets from label maps, or phantom jaws when ``root`` is None.

    Layout under ``root``: ``<image_dir>/<stem>.<ext>`` with ``<mask_dir>/<stem>.png`` label maps,
    optionally ``<unlabelled_dir>/<stem>.<ext>``. The labelled images are split reproducibly into
    test / val / pool / train by ``test_fraction``, ``val_fraction`` and ``unlabelled_fraction`` (the
    pool's masks are never read: datasets that label every image, like UFBA-425, give their
    unlabelled pool this way).

    Splits: ``train``, ``val``, ``test`` (image and mask); ``unlabelled`` (the images of
    ``unlabelled_dir`` and the pool); ``synthesis`` (a ``synthesis_fraction`` of ``unlabelled``, kept
    for latent blending); ``generator``, what the autoencoder and the LDM train on: ``unlabelled``
    without ``synthesis`` (Lim et al. train the LDM without the images used for synthesis, against
    leakage), plus the labelled training images' pixels when ``generator_includes_train``, minus
    ``exclude``. ``synthetic``: the image/mask pairs of ``extra_train_dirs`` (``xraydiff blend``
    outputs); they join the training loader only, never val, test or the generators. ``train_split``
    chooses what the training loader serves.

    Args:
        classes: label values forming the binary target, e.g. 1 (the phantom canal) or a list of
            FDI tooth numbers such as [36, 37, 38, 46, 47, 48].
        image_size: (H, W) of the model input.
        unlabelled_fraction: share of the labelled images whose masks are set aside (into ``unlabelled``).
        synthesis_fraction: share of ``unlabelled`` reserved for synthesis, never in ``generator``.
        exclude: image ids (file stems), or a text file of ids (one per line), never in ``generator``.
        generator_includes_train: add the labelled training images' pixels to ``generator``.
        extra_train_dirs: folders of synthetic pairs written by ``xraydiff blend`` (images/, masks/,
            manifest.json).
        synthetic_share: share of synthetic pairs in each training epoch (None: all of them once, in
            their natural proportion to the real training images).
        train_split: 'train' (a segmentation model: real training pairs plus the synthetic ones),
            'synthetic' (synthetic pairs only) or 'generator' (the autoencoder and the LDM).
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
        unlabelled_fraction: float = 0.0,
        synthesis_fraction: float = 0.0,
        exclude: list[str] | str | None = None,
        generator_includes_train: bool = False,
        extra_train_dirs: list[str] | None = None,
        synthetic_share: float | None = None,
        train_split: Literal["train", "synthetic", "generator"] = "train",
        seed: int = 0,
        phantom_counts: dict[str, int] | None = None,
        load_workers: int = 2,
    ):
        super().__init__()
        if len(image_size) != 2 or min(image_size) < 8:
            raise DataError(None, f"image_size must be (H, W) with both at least 8, got {image_size}")
        fractions = (val_fraction, test_fraction, unlabelled_fraction)
        if min(fractions) < 0 or sum(fractions) >= 1:
            raise DataError(
                None,
                "need val_fraction, test_fraction, unlabelled_fraction >= 0 with a sum below 1, got "
                f"{val_fraction}, {test_fraction} and {unlabelled_fraction}",
            )
        if not 0 <= synthesis_fraction < 1:
            raise DataError(None, f"synthesis_fraction must be in [0, 1), got {synthesis_fraction}")
        if train_split not in ("train", "synthetic", "generator"):
            raise DataError(None, f"train_split must be 'train', 'synthetic' or 'generator', got {train_split!r}")
        if synthetic_share is not None and not 0.0 <= synthetic_share < 1.0:
            raise DataError(None, f"synthetic_share must be in [0, 1), got {synthetic_share}")
        self.extra_train_dirs = [Path(d) for d in extra_train_dirs or []]
        self.synthetic_share = synthetic_share
        if train_split == "synthetic" and not self.extra_train_dirs:
            raise DataError(None, "train_split 'synthetic' needs extra_train_dirs")
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
        self.unlabelled_fraction, self.synthesis_fraction = unlabelled_fraction, synthesis_fraction
        self.exclude = exclude
        self.generator_includes_train = generator_includes_train
        self.train_split = train_split
        self.seed = seed
        self.phantom_counts = {"train": 48, "val": 8, "test": 8, "unlabelled": 48, **(phantom_counts or {})}
        self.load_workers = load_workers
        self.items: dict[str, list[SegmentationItem]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.items is not None:
            return
        items = self._phantom_splits() if self.root is None else self._real_splits()
        pool = items["unlabelled"]
        reserved = np.random.default_rng([self.seed, 1]).permutation(len(pool))[
            : int(round(self.synthesis_fraction * len(pool)))
        ]
        items["synthesis"] = [pool[k] for k in sorted(reserved)]
        excluded = self._excluded_ids(items) | {item.id for item in items["synthesis"]}
        candidates = list(pool)
        if self.generator_includes_train:  # pixels only: the generators never see a mask
            candidates += [SegmentationItem(item.id, item.image, None) for item in items["train"]]
        items["generator"] = [item for item in candidates if item.id not in excluded]
        items["synthetic"] = [item for folder in self.extra_train_dirs for item in self._synthetic_items(folder)]
        self.items = items

    def _synthetic_items(self, folder: Path) -> list[SegmentationItem]:
        """The pairs of one ``xraydiff blend`` output, masks binarised by its manifest's ``mask_value``."""
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(folder, "not a synthetic dataset: manifest.json missing (write one with xraydiff blend)")
        try:
            manifest = json.loads(manifest_path.read_text())
            mask_value = int(manifest["mask_value"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(manifest_path, f"unreadable manifest: {err}") from None
        labelled, _ = read_panoramic_dataset(folder, "images", "masks")
        if not labelled:
            raise DataError(folder / "images", "synthetic dataset is empty")
        load = lambda r: load_segmentation_item(r, self.image_size, [mask_value])  # noqa: E731
        return [
            SegmentationItem(f"synthetic-{folder.name}-{item.id}", item.image, item.mask)
            for item in parallel_map(load, labelled, self.load_workers)
        ]

    def _phantom_splits(self) -> dict[str, list[SegmentationItem]]:
        return {name: self._phantoms(name) for name in (*SPLITS, "unlabelled")}

    def _real_splits(self) -> dict[str, list[SegmentationItem]]:
        labelled, unlabelled = read_panoramic_dataset(self.root, self.image_dir, self.mask_dir, self.unlabelled_dir)
        if not labelled:
            raise DataError(self.root / self.image_dir, "dataset is empty: no labelled image found")
        order = np.random.default_rng(self.seed).permutation(len(labelled))
        counts = [
            int(round(f * len(labelled))) for f in (self.test_fraction, self.val_fraction, self.unlabelled_fraction)
        ]
        ends = np.cumsum(counts)
        chosen = {"test": order[: ends[0]], "val": order[ends[0] : ends[1]], "pool": order[ends[1] : ends[2]]}
        chosen["train"] = order[ends[2] :]
        load = lambda r: load_segmentation_item(r, self.image_size, self.classes)  # noqa: E731
        records = {split: [labelled[k] for k in sorted(chosen[split])] for split in SPLITS}
        items = {split: parallel_map(load, records[split], self.load_workers) for split in SPLITS}
        check_targets(items["train"], records["train"], self.classes)
        # The pool's label maps stay unread: these images are unlabelled for every model.
        pool = [SegmentationRecord(labelled[k].id, labelled[k].image_path) for k in sorted(chosen["pool"])]
        items["unlabelled"] = parallel_map(load, unlabelled + pool, self.load_workers)
        return items

    def _excluded_ids(self, items: dict[str, list[SegmentationItem]]) -> set[str]:
        """The ids of ``exclude``; DataError naming an id that is no image of the dataset (a typo would
        otherwise leak the image into the generators' training)."""
        if self.exclude is None:
            return set()
        source, line_of = None, {}
        ids = self.exclude
        if isinstance(ids, str):
            source = Path(ids)
            if not source.is_file():
                raise DataError(source, "exclude list not found")
            lines = [line.strip() for line in source.read_text().splitlines()]
            line_of = {line: k + 1 for k, line in enumerate(lines) if line and not line.startswith("#")}
            ids = list(line_of)
        known = {item.id for split in items.values() for item in split}
        for image_id in ids:
            if image_id not in known:
                raise DataError(
                    source, f"exclude: no image with id {image_id!r} in {self.source}", line_of.get(image_id)
                )
        return set(ids)

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
        augment = split == self.train_split if augment is None else augment
        return SegmentationDataset(self.items[split], self.augmentation if augment else None)

    def train_dataloader(self):
        self.setup()
        if self.train_split == "train" and self.items["synthetic"]:
            real, synthetic = self.items["train"], self.items["synthetic"]
            dataset = SegmentationDataset(real + synthetic, self.augmentation)
            return self.make_loader(
                dataset, sampler=self.epoch_sampler(len(real), len(synthetic), self.synthetic_share)
            )
        dataset = self.dataset(self.train_split)
        if len(dataset) == 0:
            raise DataError(self.empty_split_source(self.train_split), f"the {self.train_split} split is empty")
        return self.make_loader(dataset, sampler=self.epoch_sampler(len(dataset)))

    def training_set_description(self) -> dict:
        """What the training split is, recorded in every checkpoint: a generator's image ids let the
        blending check that none of its synthesis images was seen in training."""
        self.setup()
        items = self.items[self.train_split]
        return {
            "anatomy": self.anatomy,
            "source": self.source,
            "split": self.train_split,
            "seed": self.seed,
            "train_images": len(items),
            "ids": [item.id for item in items],
            "image_size": list(self.image_size),
            "synthetic_images": len(self.items["synthetic"]) if self.train_split != "generator" else 0,
            "extra_train_dirs": [str(d) for d in self.extra_train_dirs],
            "synthetic_share": self.synthetic_share,
        }

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
            "synthesis": len(self.items["synthesis"]),
            "synthetic": len(self.items["synthetic"]),
            "generator": len(self.items["generator"]),
            "train_split": self.train_split,
            "classes": list(self.classes),
            "mask_coverage": {
                "mean": float(np.mean(coverage)),
                "min": float(np.min(coverage)),
                "max": float(np.max(coverage)),
            },
            "image_size": list(self.image_size),
            "augmentation": self.augmentation_spec,
        }
