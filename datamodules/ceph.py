"""Lateral cephalograms with the 19 landmarks of the ISBI 2015 challenge."""

from __future__ import annotations

from datamodules.landmarks import LandmarkDataModule
from xraydiff.augment import AugmentationSpec
from xraydiff.phantoms import PhantomSample, ceph_phantom
from xraydiff.readers import CEPH_FOLDERS, CEPH_MM_PER_PX, CEPH_NUM_LANDMARKS, LandmarkRecord, read_ceph_dataset


class CephalometricDataModule(LandmarkDataModule):
    """ISBI 2015 cephalograms, or phantom skulls when ``root`` is None.

    Layout under ``root``: ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.<ext>`` and
    ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt``. Splits: train = TrainingData,
    val = Test1Data, test = Test2Data (a missing folder is an empty split). 0.1 mm per pixel.

    Args:
        ground_truth: 'mean' of the two doctors (default, as in the literature), 'senior' or 'junior'.
        folders: split name -> folder under RawImage.
        mm_per_px: pixel spacing of the original images.
        (the remaining arguments: see ``LandmarkDataModule``; the default augmentation is the
        published recipe, see ``xraydiff.augment.CEPH_RECIPE``)
    """

    anatomy = "ceph"
    num_landmarks = CEPH_NUM_LANDMARKS

    def __init__(
        self,
        root: str | None = None,
        ground_truth: str = "mean",
        folders: dict[str, str] | None = None,
        mm_per_px: float = CEPH_MM_PER_PX,
        image_size: tuple[int, int] = (800, 640),
        batch_size: int = 4,
        num_workers: int = 0,
        augmentation: AugmentationSpec = "default",
        train_fraction: float = 1.0,
        seed: int = 0,
        phantom_counts: dict[str, int] | None = None,
        load_workers: int = 2,
    ):
        super().__init__(
            root, image_size, batch_size, num_workers, augmentation, train_fraction, seed, phantom_counts, load_workers
        )
        self.ground_truth = ground_truth
        self.folders = dict(folders or CEPH_FOLDERS)
        self.mm_per_px = mm_per_px

    def read_records(self) -> dict[str, list[LandmarkRecord]]:
        return read_ceph_dataset(self.root, self.ground_truth, self.folders, mm_per_px=self.mm_per_px)

    def render_phantom(self, seed: int) -> PhantomSample:
        return ceph_phantom(seed, self.image_size)
