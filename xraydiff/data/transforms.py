"""Keypoint- and mask-aware augmentation with albumentations.

An augmentation is configured as a preset name or as a list of albumentations transforms,
``[{"name": "Affine", "params": {"rotate": [-3, 3], "p": 1.0}}, ...]``. Landmarks move with the
image and are never dropped or reordered; a landmark that leaves the image keeps its (outside)
coordinates and is flagged as not visible.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.geometric.distortion import BaseDistortion
from scipy import ndimage

from xraydiff.data.geometry import inside_image
from xraydiff.errors import DataError

AugmentationSpec = str | Sequence[dict[str, Any]] | None

# The published cephalometric recipe (landmark-diffusion paper, after Thaler et al.), whose pixel
# quantities hold for its 800 x 640 images: rotation +-3 deg, translation +-10 px (as fractions of the
# image: 10 / 640 across, 10 / 800 down), scale 0.95-1.05, shear +-10 deg, intensity multiplication,
# elastic deformation (alpha 500, sigma 30 at 800 px high, scaled to the image by ``ScaledElasticTransform``),
# one cut-out of up to 0.3 of the image, gamma 0.5-2. The same anatomy moves at every image size.
CEPH_RECIPE: list[dict[str, Any]] = [
    {
        "name": "Affine",
        "params": {
            "rotate": [-3, 3],
            "translate_percent": {"x": [-10 / 640, 10 / 640], "y": [-10 / 800, 10 / 800]},
            "scale": [0.95, 1.05],
            "shear": [-10, 10],
            "p": 1.0,
        },
    },
    {"name": "MultiplicativeNoise", "params": {"multiplier": [0.75, 1.25], "p": 0.5}},
    {"name": "ScaledElasticTransform", "params": {"alpha": 500, "sigma": 30, "reference_height": 800, "p": 0.5}},
    {
        "name": "CoarseDropout",
        "params": {
            "num_holes_range": [1, 1],
            "hole_height_range": [0.05, 0.3],
            "hole_width_range": [0.05, 0.3],
            "p": 0.5,
        },
    },
    {"name": "RandomGamma", "params": {"gamma_limit": [50, 200], "p": 0.5}},
]
# Hands vary more in pose than skulls; intensity changes mimic different exposures.
HAND_RECIPE: list[dict[str, Any]] = [
    {
        "name": "Affine",
        "params": {"rotate": [-15, 15], "translate_percent": [-0.05, 0.05], "scale": [0.9, 1.1], "p": 1.0},
    },
    {"name": "RandomBrightnessContrast", "params": {"brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.5}},
    {"name": "RandomGamma", "params": {"gamma_limit": [70, 150], "p": 0.5}},
]
PANORAMIC_RECIPE: list[dict[str, Any]] = [
    {
        "name": "Affine",
        "params": {"rotate": [-5, 5], "translate_percent": [-0.03, 0.03], "scale": [0.95, 1.05], "p": 1.0},
    },
    {"name": "RandomBrightnessContrast", "params": {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5}},
    {"name": "RandomGamma", "params": {"gamma_limit": [70, 150], "p": 0.5}},
]
PRESETS = {"ceph": CEPH_RECIPE, "hand": HAND_RECIPE, "panoramic": PANORAMIC_RECIPE, "none": []}


def invert_distortion_keypoints(keypoints: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, iterations: int = 20):
    """Move keypoints through a distortion remap ``out(q) = in(map(q))`` with sub-pixel precision.

    A keypoint k goes to the q with map(q) = k, found by the fixed-point iteration
    q <- q - (map(q) - k) on the bilinearly interpolated map. Unlike albumentations' own
    keypoint handling for distortions, this neither quantises to whole pixels nor clamps, drops or
    reorders points; outside the image the displacement of the nearest border pixel is used.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    if len(points) == 0:
        return keypoints
    target = points[:, :2]
    q = target.copy()
    for _ in range(iterations):
        coords = np.stack([q[:, 1], q[:, 0]])
        mapped = np.stack(
            [
                ndimage.map_coordinates(map_x, coords, order=1, mode="nearest")
                + (q[:, 0] - np.clip(q[:, 0], 0, map_x.shape[1] - 1)),
                ndimage.map_coordinates(map_y, coords, order=1, mode="nearest")
                + (q[:, 1] - np.clip(q[:, 1], 0, map_x.shape[0] - 1)),
            ],
            axis=1,
        )
        residual = mapped - target
        q -= residual
        if np.abs(residual).max() < 1e-3:
            break
    out = points.copy()
    out[:, :2] = q
    return out.astype(np.asarray(keypoints).dtype)


def _with_exact_keypoints(cls: type) -> type:
    """A distortion transform whose keypoints follow ``invert_distortion_keypoints``."""

    def apply_to_keypoints(self, keypoints, map_x, map_y, **params):
        return invert_distortion_keypoints(keypoints, map_x, map_y)

    return type(cls.__name__, (cls,), {"apply_to_keypoints": apply_to_keypoints, "__module__": __name__})


# Every remap-based distortion of albumentations, with exact keypoint handling.
EXACT_KEYPOINT_TRANSFORMS = {
    name: _with_exact_keypoints(cls)
    for name in dir(A)
    if isinstance(cls := getattr(A, name), type) and issubclass(cls, BaseDistortion) and cls is not BaseDistortion
}


class ScaledElasticTransform(EXACT_KEYPOINT_TRANSFORMS["ElasticTransform"]):
    """albumentations' ``ElasticTransform`` whose ``alpha`` and ``sigma`` are pixels of an image
    ``reference_height`` high, scaled to the image it is applied to (height H, s = H / reference_height):
    sigma s, alpha s^2. The displacement field is alpha x (Gaussian of sigma) * U(-1, 1), whose amplitude
    goes as alpha / sigma, so it moves points by s times the reference's pixels: the same fraction of
    the image (and the same millimetres of anatomy) at every size. Keypoints move exactly.
    """

    def __init__(self, alpha: float = 1.0, sigma: float = 50.0, reference_height: float = 800.0, **kwargs):
        super().__init__(alpha=alpha, sigma=sigma, **kwargs)
        if reference_height <= 0:
            raise ValueError(f"reference_height must be positive, got {reference_height}")
        self.reference_alpha, self.reference_sigma, self.reference_height = alpha, sigma, reference_height

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        scale = params["shape"][0] / self.reference_height
        self.alpha, self.sigma = self.reference_alpha * scale**2, self.reference_sigma * scale
        return super().get_params_dependent_on_data(params, data)


PROJECT_TRANSFORMS = {"ScaledElasticTransform": ScaledElasticTransform}


def resolve_spec(spec: AugmentationSpec, default: str) -> list[dict[str, Any]]:
    """The transform list of a spec: a preset name ('default' = the anatomy's preset), a list, or None."""
    if spec is None:
        return []
    if isinstance(spec, str):
        name = default if spec == "default" else spec
        if name not in PRESETS:
            raise DataError(None, f"unknown augmentation preset {spec!r}; choose one of {sorted(PRESETS)} or a list")
        return PRESETS[name]
    return list(spec)


def _tuples(value: Any) -> Any:
    """Lists of a config as the tuples albumentations expects, inside mappings too."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def build_augmentation(spec: AugmentationSpec, default: str) -> A.Compose | None:
    """An albumentations pipeline for images, keypoints ('xy') and masks, or None for no augmentation."""
    transforms = []
    for position, entry in enumerate(resolve_spec(spec, default)):
        if not isinstance(entry, dict) or "name" not in entry:
            raise DataError(None, f"augmentation entry {position} must be a mapping with 'name' and 'params'")
        name = str(entry["name"])
        cls = PROJECT_TRANSFORMS.get(name) or EXACT_KEYPOINT_TRANSFORMS.get(name) or getattr(A, name, None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
            raise DataError(
                None, f"augmentation entry {position}: {entry['name']!r} is not an albumentations transform"
            )
        params = {k: _tuples(v) for k, v in dict(entry.get("params") or {}).items()}
        accepted = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(params) - set(accepted))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            raise DataError(None, f"augmentation entry {position} ({entry['name']}): unknown parameter(s) {unknown}")
        try:
            transforms.append(cls(**params))
        except (TypeError, ValueError) as err:
            raise DataError(None, f"augmentation entry {position} ({entry['name']}): {err}") from None
    if not transforms:
        return None
    return A.Compose(transforms, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


def apply_augmentation(
    pipeline: A.Compose,
    image: np.ndarray,
    seed: int,
    landmarks: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Augment a [-1, 1] image (H, W) with its landmarks (N, 2) and/or mask (H, W), reproducibly.

    Returns (image, landmarks, mask); landmarks keep their order and count.
    """
    pipeline.set_random_seed(seed)
    inputs: dict[str, Any] = {"image": ((image + 1.0) * 0.5).astype(np.float32)}
    if landmarks is not None:
        inputs["keypoints"] = np.asarray(landmarks, dtype=np.float32)
    if mask is not None:
        inputs["mask"] = mask
    out = pipeline(**inputs)
    augmented = np.clip(out["image"], 0.0, 1.0) * 2.0 - 1.0
    points = None
    if landmarks is not None:
        points = np.asarray(out["keypoints"], dtype=np.float32)[:, :2]
        if points.shape != np.shape(landmarks):
            raise RuntimeError(f"augmentation changed the landmark count from {len(landmarks)} to {len(points)}")
    return augmented.astype(np.float32), points, out.get("mask")


def visible_landmarks(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean (N,) mask of landmarks inside the image after augmentation."""
    return inside_image(np.asarray(landmarks), size)
