"""Lateral cephalograms with the 19 landmarks of the ISBI 2015 challenge."""

from __future__ import annotations

from datamodules.landmarks import LandmarkDataModule
from xraydiff.data.phantoms import PhantomSample, ceph_phantom
from xraydiff.data.readers import (
    CEPH_FOLDERS,
    CEPH_MM_PER_PX,
    CEPH_NUM_LANDMARKS,
    CEPH_OBSERVERS,
    LandmarkRecord,
    read_ceph_dataset,
)

# Every ISBI 2015 image is 1935 x 2400 (W x H): the annotations-only frame is exact.
ORIGINAL_SIZE = (2400, 1935)
EXTENT_MARGIN = (1.0, 1.0)


class CephalometricDataModule(LandmarkDataModule):
    """ISBI 2015 cephalograms, or phantom skulls when ``root`` is None.

    Layout under ``root``: ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.<ext>`` and
    ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt``. Splits: train = TrainingData,
    val = Test1Data, test = Test2Data (a missing folder is an empty split). 0.1 mm per pixel.
    Evaluation batches carry both doctors' annotations (``observers``, named by ``observer_names``),
    so that metrics can report the error to each doctor and the inter-observer agreement.

    Args:
        ground_truth: 'mean' of the two doctors (default, as in the literature), 'senior' or 'junior'.
        folders: split name -> folder under RawImage.
        mm_per_px: pixel spacing of the original images.
        **kwargs: see ``LandmarkDataModule``; the default augmentation is the published recipe
            (``xraydiff.data.transforms.CEPH_RECIPE``).
    """

    anatomy = "ceph"
    num_landmarks = CEPH_NUM_LANDMARKS
    observer_names = CEPH_OBSERVERS

    def __init__(
        self,
        root: str | None = None,
        ground_truth: str = "mean",
        folders: dict[str, str] | None = None,
        mm_per_px: float = CEPH_MM_PER_PX,
        image_size: tuple[int, int] = (800, 640),
        original_size: tuple[int, int] | None = ORIGINAL_SIZE,
        extent_margin: tuple[float, float] = EXTENT_MARGIN,
        **kwargs,
    ):
        super().__init__(
            root=root, image_size=image_size, original_size=original_size, extent_margin=extent_margin, **kwargs
        )
        self.ground_truth = ground_truth
        self.folders = dict(folders or CEPH_FOLDERS)
        self.mm_per_px = mm_per_px

    def read_records(self, require_images: bool = True) -> dict[str, list[LandmarkRecord]]:
        return read_ceph_dataset(
            self.root, self.ground_truth, self.folders, mm_per_px=self.mm_per_px, require_images=require_images
        )

    def empty_split_source(self, split: str):
        folder = self.folders.get(split)
        return self.root if self.root is None or folder is None else self.root / "RawImage" / folder

    def render_phantom(self, seed: int, render: bool = True) -> PhantomSample:
        return ceph_phantom(seed, self.image_size, render)
