"""Hand radiographs with the 37 landmarks of the Digital Hand Atlas (Payer et al.)."""

from __future__ import annotations

import numpy as np

from datamodules.landmarks import LandmarkDataModule
from xraydiff.data.phantoms import PhantomSample, hand_phantom
from xraydiff.data.readers import HAND_NUM_LANDMARKS, LandmarkRecord, read_hand_dataset, wrist_width_mm_per_px
from xraydiff.errors import DataError

# Annotations-only frame: each original image size is estimated from the landmark extent times
# these margins (x, y), the mean ratio over the images present (scripts/calibrate_annotation_frame.py).
ORIGINAL_SIZE = None
EXTENT_MARGIN = (1.09, 1.07)


class HandDataModule(LandmarkDataModule):
    """Hand X-rays: the layout of Payer et al., or phantom hands when ``root`` is None.

    Layout under ``root``: ``<annotations>`` (CSV without header: ``id, x1, y1, ..., x37, y37`` in
    original pixels), ``<split_dir>/<train_list>`` and ``<split_dir>/<test_list>`` (one id per
    line) and images ``<image_dir>/<id>.<ext>`` (.mha, .nii, .png, .jpg, .bmp, .tif, ...).
    Millimetres follow the 50 mm wrist-width convention (landmarks 1 and 5).

    Args:
        annotations: CSV path relative to ``root``.
        split_dir: folder of the split lists relative to ``root`` (e.g. ``setup/cv/set2``).
        image_dir: image folder relative to ``root``.
        train_list, test_list: split list file names inside ``split_dir``.
        val_fraction: share of the training list held out for validation (drawn reproducibly from
            ``seed``), so that neither model selection nor calibration ever sees the test list; 0
            validates on the test list (the cross-validation setups of Payer et al. have no separate
            validation set), which leaks the test set into every choice made on validation.
        **kwargs: see ``LandmarkDataModule`` (batch size, augmentation, phantoms, synthetic data, ...).
    """

    anatomy = "hand"
    num_landmarks = HAND_NUM_LANDMARKS

    def __init__(
        self,
        root: str | None = None,
        annotations: str = "setup/all.csv",
        split_dir: str = "setup/cv/set1",
        image_dir: str = "images",
        train_list: str = "train.txt",
        test_list: str = "test.txt",
        val_fraction: float = 0.1,
        image_size: tuple[int, int] = (256, 256),
        original_size: tuple[int, int] | None = ORIGINAL_SIZE,
        extent_margin: tuple[float, float] = EXTENT_MARGIN,
        **kwargs,
    ):
        super().__init__(
            root=root, image_size=image_size, original_size=original_size, extent_margin=extent_margin, **kwargs
        )
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(None, f"val_fraction must be in [0, 1), got {val_fraction}")
        self.annotations = annotations
        self.split_dir = split_dir
        self.image_dir = image_dir
        self.split_files = {"train": train_list, "test": test_list}
        self.val_fraction = val_fraction

    def read_records(self, require_images: bool = True) -> dict[str, list[LandmarkRecord]]:
        splits = read_hand_dataset(
            self.root, self.annotations, self.split_dir, self.image_dir, self.split_files, require_images=require_images
        )
        train = splits["train"]
        if self.val_fraction > 0 and train:
            count = max(1, int(round(self.val_fraction * len(train))))
            held_out = set(np.random.default_rng(self.seed + 1).permutation(len(train))[:count].tolist())
            splits["val"] = [r for k, r in enumerate(train) if k in held_out]
            splits["train"] = [r for k, r in enumerate(train) if k not in held_out]
        else:
            splits["val"] = splits["test"]
        return splits

    @property
    def split_name(self) -> str:
        return f"{self.split_dir}/{self.split_files['train']}"

    def synthetic_mm_per_px(self, landmarks: np.ndarray, manifest: dict) -> float:
        return wrist_width_mm_per_px(landmarks)

    def render_phantom(self, seed: int, render: bool = True) -> PhantomSample:
        return hand_phantom(seed, self.image_size, render)
