"""LightningDataModules, one per anatomy. Without a ``root`` each one serves phantoms."""

from datamodules.ceph import CephalometricDataModule
from datamodules.hand import HandDataModule
from datamodules.landmarks import LandmarkDataModule
from datamodules.panoramic import PanoramicDataModule

__all__ = ["CephalometricDataModule", "HandDataModule", "LandmarkDataModule", "PanoramicDataModule"]
