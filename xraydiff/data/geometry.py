"""Coordinate conventions shared by readers, phantoms, models and metrics.

Pixel coordinates are (x = column, y = row) with pixel centres at integer positions. Resizing an
image of size (H0, W0) to (H, W) scales by ``scale = (W0 / W, H0 / H)`` about the pixel *corners*,
the convention of area and bilinear resampling (OpenCV, PyTorch ``align_corners=False``):

    x_original = (x_model + 0.5) * scale_x - 0.5
"""

from __future__ import annotations

import numpy as np


def resize_scale(original_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``scale = (W0 / W, H0 / H)`` for resizing (H0, W0) to (H, W), float32 (2,)."""
    return np.array([original_size[1] / size[1], original_size[0] / size[0]], dtype=np.float32)


def to_model_pixels(points, scale):
    """Original-image pixels -> pixels of the resized image. Works on numpy arrays and tensors."""
    return (points + 0.5) / scale - 0.5


def to_original_pixels(points, scale):
    """Pixels of the resized image -> original-image pixels. Works on numpy arrays and tensors."""
    return (points + 0.5) * scale - 0.5


def inside_image(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean (N,) mask: which (N, 2) points lie within [0, W-1] x [0, H-1]."""
    height, width = size
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


def estimate_original_size(landmarks: np.ndarray, margin: tuple[float, float]) -> tuple[int, int]:
    """The annotations-only frame: (H0, W0) = ceil((max y + 1) * margin_y), ceil((max x + 1) * margin_x).

    Stands in for the unknown original image size when only annotations are available, so that
    landmarks map into the model frame with the same resize convention as real images.
    """
    extent = np.asarray(landmarks).max(axis=0) + 1.0
    return int(np.ceil(extent[1] * margin[1])), int(np.ceil(extent[0] * margin[0]))
