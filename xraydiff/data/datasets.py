"""Torch datasets over samples decoded, resized and cached in memory once.

A landmark sample (the data contract) is a dict:

* ``image``: (1, H, W) float32 in [-1, 1]
* ``landmarks``: (N, 2) float32 pixels of the resized image (x = column, y = row)
* ``visible``: (N,) bool, False for a landmark that augmentation moved out of the image
* ``scale``: (2,) float32, maps back to original pixels by ``geometry.to_original_pixels``
* ``mm_per_px``: float32 scalar, millimetres per original pixel
* ``id``: str
* ``index``: int, position in the dataset (lets metrics drop the repeats of distributed padding)
* ``synthetic``: bool, True for generated training pairs

A segmentation sample holds ``image`` (1, H, W), ``mask`` (1, H, W) float32 in {0, 1} and ``id``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from xraydiff.data.geometry import estimate_original_size, resize_scale, to_model_pixels
from xraydiff.data.imageio import normalize_intensity, read_image, read_label_map, resize_image, resize_label_map
from xraydiff.data.readers import LandmarkRecord, SegmentationRecord
from xraydiff.data.transforms import apply_augmentation, visible_landmarks
from xraydiff.errors import DataError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class LandmarkItem:
    """A decoded, resized landmark sample, cached in memory."""

    id: str
    image: np.ndarray | None  # (H, W) float32 in [-1, 1]; None for annotations-only data
    landmarks: np.ndarray  # (N, 2) float32 model pixels
    landmarks_original: np.ndarray  # (N, 2) float64 original pixels as read
    scale: np.ndarray  # (2,) float32
    mm_per_px: float
    original_size: tuple[int, int]
    synthetic: bool = False
    observers_original: np.ndarray | None = None  # (K, N, 2) float64 every annotator's original pixels


@dataclass(frozen=True)
class SegmentationItem:
    """A decoded, resized panoramic image with its binary target (None when unlabelled)."""

    id: str
    image: np.ndarray  # (H, W) float32 in [-1, 1]
    mask: np.ndarray | None  # (H, W) uint8 in {0, 1}


def parallel_map(function: Callable[[T], R], items: Sequence[T], workers: int = 2) -> list[R]:
    """``[function(x) for x in items]`` on a thread pool (decoding releases the GIL)."""
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def load_landmark_item(record: LandmarkRecord, size: tuple[int, int]) -> LandmarkItem:
    """Decode, normalise and resize one image; map its landmarks to the resized frame."""
    if record.image_path is None:
        raise DataError(record.source, "record has no image")
    raw = read_image(record.image_path)
    if record.original_size is not None and raw.shape != tuple(record.original_size):
        raise DataError(record.image_path, f"decoded size {raw.shape} differs from the header {record.original_size}")
    scale = resize_scale(raw.shape, size)
    image = normalize_intensity(resize_image(raw, size))
    landmarks = to_model_pixels(record.landmarks, scale).astype(np.float32)
    return LandmarkItem(
        record.id, image, landmarks, record.landmarks, scale, record.mm_per_px, raw.shape, False, record.observers
    )


def load_segmentation_item(
    record: SegmentationRecord, size: tuple[int, int], classes: Sequence[int]
) -> SegmentationItem:
    """Decode an image (and label map), check their sizes agree, resize, binarise by ``classes``."""
    raw = read_image(record.image_path)
    image = normalize_intensity(resize_image(raw, size))
    mask = None
    if record.mask_path is not None:
        labels = read_label_map(record.mask_path)
        if labels.shape != raw.shape:
            raise DataError(
                record.mask_path,
                f"mask size {labels.shape[1]} x {labels.shape[0]} differs from image {record.image_path} "
                f"size {raw.shape[1]} x {raw.shape[0]} (W x H)",
            )
        target = binary_target(labels, classes)  # binarised first: the nearest-neighbour resize commutes
        if not target.any():
            found = ", ".join(str(v) for v in np.unique(labels)[:12])
            print(f"xraydiff: warning: {record.mask_path}: no pixel of classes {list(classes)} "
                  f"(values found: {found}): an empty target", file=sys.stderr)  # fmt: skip
        mask = resize_label_map(target, size).astype(np.uint8)
    return SegmentationItem(record.id, image, mask)


def check_targets(items: Sequence[SegmentationItem], records: Sequence[SegmentationRecord], classes) -> None:
    """DataError when no training mask holds a pixel of ``classes`` (a ``classes`` list for another
    labelling, e.g. FDI numbers for 0/255 masks), naming the values the masks do hold."""
    if not items or any(item.mask is not None and item.mask.any() for item in items):
        return
    values = sorted({int(v) for record in records[:8] for v in np.unique(read_label_map(record.mask_path))})
    raise DataError(
        records[0].mask_path.parent,
        f"no training mask holds a pixel of classes {list(classes)}; the masks hold the values "
        f"{', '.join(map(str, values[:20]))}: set data.init_args.classes to some of them",
    )


def annotation_item(
    record: LandmarkRecord,
    image_size: tuple[int, int],
    original_size: tuple[int, int] | None = None,
    extent_margin: tuple[float, float] = (1.0, 1.0),
) -> LandmarkItem:
    """A landmark item without image, in the frame of the image resized to ``image_size``.

    The original frame is the image's own size where its header was read (``record.original_size``),
    else ``original_size`` when configured, else estimated from the landmark extent times ``extent_margin``.
    """
    size = record.original_size or original_size or estimate_original_size(record.landmarks, extent_margin)
    scale = resize_scale(size, image_size)
    landmarks = to_model_pixels(record.landmarks, scale).astype(np.float32)
    return LandmarkItem(
        record.id, None, landmarks, record.landmarks, scale, record.mm_per_px, tuple(size), False, record.observers
    )


def training_subset(items: Sequence[T], fraction: float, seed: int) -> list[T]:
    """A reproducible share ``fraction`` of ``items`` (at least one), in their original order
    (0.1 gives the ReducedDataset of Hadzic et al.)."""
    if fraction >= 1.0 or not items:
        return list(items)
    count = max(1, int(round(fraction * len(items))))
    chosen = np.sort(np.random.default_rng(seed).permutation(len(items))[:count])
    return [items[k] for k in chosen]


def shape_table(items: Sequence[LandmarkItem]) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks for shape statistics: (shapes (M, N, 2) in model pixels, mm per model pixel (M, 2) in x, y)."""
    shapes = np.stack([item.landmarks for item in items]).astype(np.float64)
    spacing = np.stack([item.mm_per_px * np.asarray(item.scale, dtype=np.float64) for item in items])
    return shapes, spacing


def binary_target(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """1 where the label map holds one of ``classes``, else 0 (uint8)."""
    return np.isin(labels, np.asarray(list(classes))).astype(np.uint8)


def _index_and_seed(key: int | tuple[int, int]) -> tuple[int, int]:
    """``(index, seed)`` from an ``EpochSampler`` element, or a plain index with a seed drawn from torch's
    random state (previews and other direct access)."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), int(torch.randint(0, 2**31 - 1, ()).item())


class LandmarkDataset(Dataset):
    """Landmark samples from cached items, optionally augmented (keypoint-aware).

    When every item carries several annotators' landmarks, samples also hold ``observers``
    (K, N, 2) in original pixels (never augmented: they serve evaluation only).
    """

    def __init__(self, items: Sequence[LandmarkItem], augmentation: A.Compose | None = None):
        self.items = list(items)
        self.augmentation = augmentation
        shapes = {None if item.observers_original is None else item.observers_original.shape for item in self.items}
        self.observers = len(shapes) == 1 and None not in shapes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = _index_and_seed(key)
        item = self.items[index]
        image, landmarks = item.image, item.landmarks
        if self.augmentation is not None:
            image, landmarks, _ = apply_augmentation(self.augmentation, image, seed, landmarks)
        sample = {
            "image": torch.from_numpy(np.require(image, np.float32, ["C", "W"]))[None],
            "landmarks": torch.from_numpy(np.require(landmarks, np.float32, ["C", "W"])),
            "visible": torch.from_numpy(visible_landmarks(landmarks, image.shape)),
            "scale": torch.from_numpy(np.require(item.scale, np.float32, ["C", "W"])),
            "mm_per_px": torch.tensor(item.mm_per_px, dtype=torch.float32),
            "id": item.id,
            "index": index,
            "synthetic": item.synthetic,
        }
        if self.observers:
            sample["observers"] = torch.from_numpy(item.observers_original.astype(np.float32))
        return sample


class EpochSampler(DistributedSampler):
    """The order of one epoch and a seed for each draw, from (seed, epoch) alone; sharded over ranks; resumable.

    Each element is ``(index, item_seed)``: datasets augment item ``index`` with ``item_seed``, so
    the data of an epoch depends on nothing but the seed and the epoch number (not on the global
    random state, the number of workers or where a run was interrupted).

    Indices 0 .. n_real - 1 are real samples, each once per epoch; n_real .. n_real + n_synthetic - 1
    synthetic ones, drawn without replacement while they last so that a ``share`` of the epoch is
    synthetic (None: all of them once, their natural proportion). ``shuffle`` False keeps the real order.

    Under DDP, rank r takes positions r, r + R, ... of the epoch's order, padded by repetition to a
    multiple of R (as ``DistributedSampler``, whose subclass this is, so that Lightning neither wraps
    nor replaces it and calls ``set_epoch`` on it). ``resume_at(k)`` makes the next iteration start
    at this rank's k-th element: the rest of an epoch interrupted after k elements.
    """

    def __init__(
        self,
        n_real: int,
        n_synthetic: int = 0,
        share: float | None = None,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if share is not None and not 0.0 <= share < 1.0:
            raise DataError(None, f"synthetic_share must be in [0, 1), got {share}")
        if not 0 <= rank < num_replicas:
            raise DataError(None, f"rank {rank} outside 0 .. {num_replicas - 1}")
        self.n_real, self.n_synthetic, self.share, self.seed = n_real, n_synthetic, share, seed
        self.shuffle, self.num_replicas, self.rank = shuffle, num_replicas, rank
        self.epoch, self.start = 0, 0
        if n_synthetic == 0:
            self.count = 0
        elif share is None:
            self.count = n_synthetic
        else:
            self.count = int(round(n_real * share / (1.0 - share)))
        self.total = self.n_real + self.count
        self.num_samples = -(-self.total // num_replicas) if self.total else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, position: int) -> None:
        self.start = position

    def epoch_order(self) -> list[tuple[int, int]]:
        """(index, item seed) of the whole epoch, every rank's share interleaved, before padding."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        rounds = -(-self.count // max(self.n_synthetic, 1))
        synthetic = [torch.randperm(self.n_synthetic, generator=generator) for _ in range(rounds)]
        synthetic = torch.cat(synthetic)[: self.count] if synthetic else torch.empty(0, dtype=torch.long)
        indices = torch.cat([torch.arange(self.n_real), self.n_real + synthetic])
        if self.shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        seeds = torch.randint(0, 2**31 - 1, (len(indices),), generator=generator)
        return list(zip(indices.tolist(), seeds.tolist(), strict=True))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        order = self.epoch_order()
        if order:
            order += order[: self.num_samples * self.num_replicas - len(order)]
        mine = order[self.rank :: self.num_replicas]
        start, self.start = self.start, 0
        yield from mine[start:]


class SegmentationDataset(Dataset):
    """Panoramic images with binary masks (or without, for unlabelled images), optionally augmented."""

    def __init__(self, items: Sequence[SegmentationItem], augmentation: A.Compose | None = None):
        self.items = list(items)
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = _index_and_seed(key)
        item = self.items[index]
        image, mask = item.image, item.mask
        if self.augmentation is not None:
            image, _, mask = apply_augmentation(self.augmentation, image, seed, mask=mask)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image))[None], "id": item.id, "index": index}
        if mask is not None:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return sample
