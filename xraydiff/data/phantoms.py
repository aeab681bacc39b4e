"""Phantom radiographs: the default data of every DataModule, deterministic by seed.

Hand and cephalometric phantoms place their landmarks with a shape model fitted to real
annotations (``xraydiff/assets/*_shape_model.json``, produced by
``scripts/fit_phantom_shape_models.py``) and render anatomy around them in millimetres: bones with
bright cortical rims and darker medulla, a soft-tissue envelope, blur and noise. The landmarks
follow the data contract of the real readers: original-image pixels of a virtual original image
with realistic size and spacing, resized to the requested size.

Panoramic phantoms draw a jaw arch with teeth and a thin curved mandibular canal below them and
return an FDI-style label map (teeth 11-48, canal = 1).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy import ndimage
from skimage.draw import polygon2mask

from xraydiff.data.geometry import resize_scale, to_model_pixels
from xraydiff.data.readers import wrist_width_mm_per_px
from xraydiff.landmarks.shape import PointDistributionModel

CANAL_LABEL = 1

# Bones of the hand phantom along each ray, base to tip (0-based landmark indices).
HAND_METACARPALS = ((17, 18), (16, 21), (15, 25), (14, 29), (13, 33))  # thumb .. little finger
HAND_PHALANGES = (
    (18, 19),
    (19, 20),
    (21, 22),
    (22, 23),
    (23, 24),
    (25, 26),
    (26, 27),
    (27, 28),
    (29, 30),
    (30, 31),
    (31, 32),
    (33, 34),
    (34, 35),
    (35, 36),
)
HAND_CARPALS = (1, 2, 5, 6, 7, 8, 9, 10, 11, 12)
HAND_PALM = (0, 4, 17, 18, 21, 25, 29, 33, 13)


@dataclass(frozen=True)
class PhantomSample:
    """A rendered phantom in the data contract of the readers.

    ``image`` (H, W) float32 in [-1, 1] (None when only the geometry was asked for);
    ``landmarks`` (N, 2) float32 model pixels; ``scale`` (2,) maps model to original pixels;
    ``mm_per_px`` of the virtual original image.
    """

    image: np.ndarray | None
    landmarks: np.ndarray
    scale: np.ndarray
    mm_per_px: float
    original_size: tuple[int, int]


@dataclass(frozen=True)
class PhantomShapeModel:
    """Point distribution model plus pose statistics, in millimetres (see the asset files)."""

    pdm: PointDistributionModel
    rotation_deg: tuple[float, float]
    centroid_fraction: tuple[np.ndarray, np.ndarray]
    canvas_mm: np.ndarray
    mm_per_px: dict
    provenance: str

    @classmethod
    @functools.cache
    def load(cls, name: str) -> PhantomShapeModel:
        data = json.loads(resources.files("xraydiff.assets").joinpath(f"{name}_shape_model.json").read_text())
        pdm = PointDistributionModel(
            np.asarray(data["mean_shape"]), np.asarray(data["modes"]), np.asarray(data["eigenvalues"])
        )
        return cls(
            pdm,
            (data["rotation_deg"]["mean"], data["rotation_deg"]["sd"]),
            (np.asarray(data["centroid_fraction"]["mean"]), np.asarray(data["centroid_fraction"]["sd"])),
            np.asarray(data["canvas_mm"], dtype=float),
            data["mm_per_px"],
            data["provenance"],
        )

    def sample_shape(self, rng: np.random.Generator) -> np.ndarray:
        """A random shape (N, 2) in mm, centred, in the image-frame orientation (b within +-3 sd)."""
        b = np.clip(rng.standard_normal(len(self.pdm.eigenvalues)), -3, 3) * np.sqrt(self.pdm.eigenvalues)
        shape = self.pdm.shape(b)
        angle = np.radians(rng.normal(*self.rotation_deg))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shape = (shape - shape.mean(axis=0)) @ rotation.T
        return shape

    def place(
        self, shape_mm: np.ndarray, rng: np.random.Generator, mm_per_px: float, margin_mm: float = 8.0
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Put a centred mm shape into a virtual original image: (pixels (N, 2), size (H0, W0)).

        The image is at least as large as the shape plus ``margin_mm`` on every side, and the shape
        is shifted inside if the sampled position would cut a landmark off.
        """
        extent = shape_mm.max(axis=0) - shape_mm.min(axis=0) + 2 * margin_mm  # (x, y)
        canvas = np.maximum(self.canvas_mm * rng.uniform(0.95, 1.05, size=2), extent[::-1])
        original_size = (int(round(canvas[0] / mm_per_px)), int(round(canvas[1] / mm_per_px)))
        mean, sd = self.centroid_fraction
        centroid_mm = rng.normal(mean, sd) * canvas[::-1]
        low = margin_mm - shape_mm.min(axis=0)
        high = canvas[::-1] - margin_mm - shape_mm.max(axis=0)
        centroid_mm = np.clip(centroid_mm, low, np.maximum(low, high))
        # Pixel centre i sits at (i + 0.5) * spacing mm.
        pixels = (shape_mm + centroid_mm) / mm_per_px - 0.5
        return pixels, original_size


class MillimetreGrid:
    """Model-pixel centres expressed in millimetres of the virtual original image."""

    def __init__(self, size: tuple[int, int], scale: np.ndarray, mm_per_px: float):
        self.size = size
        self.mm_per_px = mm_per_px
        self.pixel_mm = np.asarray(scale, dtype=float) * mm_per_px  # (x, y) extent of one model pixel
        ys, xs = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
        self.x = (xs + 0.5) * self.pixel_mm[0]
        self.y = (ys + 0.5) * self.pixel_mm[1]

    def to_pixels(self, points_mm: np.ndarray) -> np.ndarray:
        return np.asarray(points_mm) / self.pixel_mm - 0.5

    def segment_distance(self, a, b, reach: float = np.inf) -> np.ndarray:
        """Distance (H, W) in mm of every pixel to the segment a-b.

        Only pixels within ``reach`` mm of the segment's bounding box are computed; the others are inf.
        """
        a, b = np.asarray(a, float), np.asarray(b, float)
        window = self._window(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        distance = np.full(self.size, np.inf)
        x, y = self.x[window], self.y[window]
        direction = b - a
        length2 = max(float(direction @ direction), 1e-9)
        t = np.clip(((x - a[0]) * direction[0] + (y - a[1]) * direction[1]) / length2, 0.0, 1.0)
        distance[window] = np.hypot(x - a[0] - t * direction[0], y - a[1] - t * direction[1])
        return distance

    def _window(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice]:
        low = np.floor(self.to_pixels(low_mm)).astype(int)
        high = np.ceil(self.to_pixels(high_mm)).astype(int) + 1
        height, width = self.size
        return (
            slice(int(np.clip(low[1], 0, height)), int(np.clip(high[1], 0, height))),
            slice(int(np.clip(low[0], 0, width)), int(np.clip(high[0], 0, width))),
        )

    def polygon(self, points_mm: np.ndarray) -> np.ndarray:
        """Boolean mask (H, W) of a polygon given in mm."""
        pixels = self.to_pixels(points_mm)
        return polygon2mask(self.size, pixels[:, ::-1])

    def depth(self, mask: np.ndarray) -> np.ndarray:
        """Distance in mm from each inside pixel to the outside of ``mask`` (0 outside)."""
        return ndimage.distance_transform_edt(mask, sampling=(self.pixel_mm[1], self.pixel_mm[0]))

    def blur(self, image: np.ndarray, sigma_mm: float) -> np.ndarray:
        return ndimage.gaussian_filter(image, sigma=(sigma_mm / self.pixel_mm[1], sigma_mm / self.pixel_mm[0]))


def cortical_bone(depth_mm: np.ndarray, rim_mm: float = 1.0) -> np.ndarray:
    """Radiographic density of bone by depth below its surface: bright cortex, darker medulla."""
    inside = depth_mm > 0
    return np.where(inside, 0.55 + 0.45 * np.exp(-((depth_mm / rim_mm) ** 2)), 0.0)


def capsule_bone(grid: MillimetreGrid, a, b, radius: float, rim_mm: float = 1.0) -> np.ndarray:
    """Density of a capsule-shaped bone (a long bone or phalanx) of ``radius`` mm around a-b."""
    depth = radius - grid.segment_distance(a, b, reach=radius + 1.0)
    return cortical_bone(np.clip(depth, 0, None), rim_mm) * np.clip(depth / 0.5 + 0.5, 0, 1)


def finish_radiograph(
    grid: MillimetreGrid, density: np.ndarray, rng: np.random.Generator, blur_mm: float, noise: float
) -> np.ndarray:
    """Film look: mottled texture, heel-effect shading, blur, quantum noise; scaled to [-1, 1]."""
    height, width = grid.size
    texture = ndimage.gaussian_filter(rng.standard_normal(grid.size), sigma=max(1.0, min(grid.size) / 64))
    texture /= max(np.abs(texture).max(), 1e-6)
    shading = np.linspace(-1.0, 1.0, width)[None, :] * rng.uniform(-0.08, 0.08) + np.linspace(-1.0, 1.0, height)[
        :, None
    ] * rng.uniform(-0.08, 0.08)
    image = density * (1.0 + 0.06 * texture) + shading
    image = grid.blur(image, blur_mm)
    image = image + rng.normal(0.0, noise, size=grid.size)
    return np.clip(image, -1.0, 1.0).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-9)


# -------------------------------------------------------------------------------------- hand


def hand_phantom(seed: int, size: tuple[int, int] = (256, 256), render: bool = True) -> PhantomSample:
    """A left-hand radiograph phantom with the 37 landmarks of the Digital Hand Atlas.

    ``render=False`` returns the landmarks alone (image None), drawn from the same random stream.
    """
    rng = np.random.default_rng(seed)
    model = PhantomShapeModel.load("hand")
    shape = model.sample_shape(rng)
    # Millimetres follow the dataset convention: the wrist (landmarks 1-5) is 50 mm wide.
    shape *= 50.0 / np.linalg.norm(shape[1] - shape[5])
    stats = model.mm_per_px
    spacing = float(np.clip(rng.normal(stats["mean"], stats["sd"]), stats["min"], stats["max"]))
    original, original_size = model.place(shape, rng, spacing)
    scale = resize_scale(original_size, size)
    landmarks = to_model_pixels(original, scale).astype(np.float32)
    mm_per_px = wrist_width_mm_per_px(original)
    if not render:
        return PhantomSample(None, landmarks, scale, mm_per_px, original_size)
    grid = MillimetreGrid(size, scale, spacing)
    mm = (original + 0.5) * spacing  # landmark positions in grid millimetres

    down = _unit(mm[0:6].mean(axis=0) - mm[25])  # from the middle finger towards the forearm
    thickness = rng.uniform(0.9, 1.1)
    bones = []
    radius_top = 0.5 * (mm[3] + mm[4])
    bones.append(capsule_bone(grid, radius_top, radius_top + 90 * down, 10.5 * thickness, 1.6))
    ulna_top = mm[0] + 4 * down
    bones.append(capsule_bone(grid, ulna_top, ulna_top + 90 * down, 6.5 * thickness, 1.4))
    for k in HAND_CARPALS:
        bones.append(capsule_bone(grid, mm[k], mm[k] + 0.5 * down, 5.2 * thickness, 1.0))
    for (a, b), radius in zip(HAND_METACARPALS, (4.6, 4.4, 4.5, 4.1, 3.8), strict=True):
        bones.append(capsule_bone(grid, mm[a], mm[b], radius * thickness, 1.1))
    for a, b in HAND_PHALANGES:
        gap = 1.2 * _unit(mm[b] - mm[a])
        tip = b in (20, 24, 28, 32, 36)
        radius = (2.6 if tip else 3.3) * thickness
        bones.append(capsule_bone(grid, mm[a] + gap, mm[b] - (0 if tip else gap), radius, 0.9))
    bone = np.max(bones, axis=0)

    envelope = grid.polygon(mm[list(HAND_PALM)])
    for a, b in HAND_METACARPALS + HAND_PHALANGES:
        envelope |= grid.segment_distance(mm[a], mm[b], reach=8.0) < 7.5
    forearm = np.array([mm[0] - 8 * _unit(mm[4] - mm[0]), mm[4] + 8 * _unit(mm[4] - mm[0])])
    envelope |= grid.polygon(np.concatenate([forearm, forearm[::-1] + 200 * down]))
    soft = grid.blur(envelope.astype(float), 2.0)

    density = -0.92 + rng.uniform(0.35, 0.5) * soft + rng.uniform(1.0, 1.25) * bone
    image = finish_radiograph(grid, density, rng, blur_mm=0.35, noise=rng.uniform(0.01, 0.03))
    return PhantomSample(image, landmarks, scale, mm_per_px, original_size)


# ------------------------------------------------------------------------------- cephalometric


def ceph_phantom(seed: int, size: tuple[int, int] = (800, 640), render: bool = True) -> PhantomSample:
    """A lateral cephalogram phantom (face to the right) with the 19 ISBI 2015 landmarks.

    ``render=False`` returns the landmarks alone (image None), drawn from the same random stream.
    """
    rng = np.random.default_rng(seed)
    model = PhantomShapeModel.load("ceph")
    spacing = float(model.mm_per_px["mean"])
    original, original_size = model.place(model.sample_shape(rng), rng, spacing)
    scale = resize_scale(original_size, size)
    landmarks = to_model_pixels(original, scale).astype(np.float32)
    if not render:
        return PhantomSample(None, landmarks, scale, spacing, original_size)
    grid = MillimetreGrid(size, scale, spacing)
    p = (original + 0.5) * spacing
    sella, nasion, orbitale, porion, a_point, b_point, pogonion, menton, gnathion, gonion = p[:10]
    lower_incisor, upper_incisor, upper_lip, lower_lip, subnasale, soft_pogonion, pns, ans, articulare = p[10:]

    # Soft tissue: cranium plus the facial profile.
    centre = np.array([sella[0] - 12.0, sella[1] - 18.0])
    axes = np.array([nasion[0] - centre[0] + 4.0, 84.0])
    radial = np.hypot((grid.x - centre[0]) / axes[0], (grid.y - centre[1]) / axes[1])
    profile = np.array(
        [
            nasion + [7, -45],
            nasion + [7, 0],
            subnasale + [16, -12],
            subnasale,
            upper_lip,
            0.5 * (upper_lip + lower_lip) + [-3, 0],
            lower_lip,
            0.5 * (lower_lip + soft_pogonion) + [-4, 0],
            soft_pogonion,
            menton + [2, 9],
            menton + [-25, 40],
            menton + [-25, 200],
            centre + [-axes[0], 200],
        ]
    )
    soft = grid.blur(((radial < 1.0 + 7.0 / axes[1]) | grid.polygon(profile)).astype(float), 1.5)

    bones = []
    vault = np.clip(1.0 - np.abs(radial - 1.0) * axes[1] / 3.5, 0, 1) * (grid.y < sella[1] + 12)
    bones.append(0.85 * vault)
    bones.append(capsule_bone(grid, sella, nasion, 4.0, 1.2))  # anterior cranial base
    bones.append(capsule_bone(grid, sella, articulare + [6, 4], 4.5, 1.2))  # clivus
    bones.append(capsule_bone(grid, nasion, nasion + [9, 20], 1.8, 0.8))  # nasal bone
    orbit_centre = orbitale + [-4, -16]
    ring = np.abs(np.hypot(grid.x - orbit_centre[0], grid.y - orbit_centre[1]) - 15.0)
    bones.append(0.7 * np.clip(1.0 - ring / 1.6, 0, 1))
    maxilla = grid.polygon(
        np.array([pns + [0, -6], ans + [0, -3], ans, a_point, upper_incisor + [-8, -6], pns + [4, 10]])
    )
    bones.append(0.8 * cortical_bone(grid.depth(maxilla), 1.5))
    mandible = grid.polygon(
        np.array(
            [
                articulare,
                articulare + [4, -6],
                gonion + [16, -30],
                b_point + [-14, -10],
                lower_incisor + [-5, 4],
                b_point,
                pogonion,
                gnathion,
                menton,
                gonion,
            ]
        )
    )
    bones.append(cortical_bone(grid.depth(mandible), 2.0))
    bones.append(1.2 * capsule_bone(grid, a_point + [-3, 8], upper_incisor, 3.3, 0.8))
    bones.append(1.2 * capsule_bone(grid, b_point + [-4, -6], lower_incisor, 3.0, 0.8))
    occlusal = 0.5 * (upper_incisor + lower_incisor)
    for k in range(3):
        molar = pns + (k + 1) / 4 * (occlusal - pns) + [6, 4]
        bones.append(1.1 * capsule_bone(grid, molar + [0, -6], molar + [0, 6], 4.2, 0.8))
    for k in range(3):
        vertebra = articulare + [-4, 32 + 19 * k]
        bones.append(capsule_bone(grid, vertebra + [-4, 0], vertebra + [4, 0], 6.0, 1.5))
    bone = np.max(bones, axis=0)
    turcica = np.hypot(grid.x - sella[0], grid.y - sella[1] - 1.5)
    ear_rod = np.clip(1.0 - np.abs(np.hypot(grid.x - porion[0], grid.y - porion[1]) - 5.0) / 1.2, 0, 1)

    density = -0.9 + 0.35 * soft + rng.uniform(0.9, 1.1) * bone - 0.35 * (turcica < 5.0) + 0.9 * ear_rod
    image = finish_radiograph(grid, density, rng, blur_mm=0.6, noise=rng.uniform(0.01, 0.03))
    return PhantomSample(image, landmarks, scale, spacing, original_size)


# ----------------------------------------------------------------------------------- panoramic

# Mesio-distal crown widths in mm from the midline: central incisor .. third molar.
TOOTH_WIDTHS_MM = (8.5, 6.5, 7.5, 7.0, 7.0, 10.0, 9.5, 9.0)


def panoramic_phantom(seed: int, size: tuple[int, int] = (256, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A panoramic radiograph phantom and its label map (0 background, 1 canal, 11-48 FDI teeth).

    Returns (image (H, W) float32 in [-1, 1], labels (H, W) int64).
    """
    rng = np.random.default_rng(seed)
    canvas_mm = np.array([150.0, 300.0])
    scale = np.array([canvas_mm[1] / size[1], canvas_mm[0] / size[0]])
    grid = MillimetreGrid(size, scale, 1.0)
    mid = canvas_mm[1] / 2 + rng.normal(0, 3)
    smile = rng.uniform(4, 12)
    occlusal_y = rng.uniform(68, 78)

    def occlusal(x):
        return occlusal_y - smile * ((x - mid) / 150.0) ** 2

    labels = np.zeros(size, dtype=np.int64)
    bone = np.zeros(size)
    lower_border = occlusal_y + rng.uniform(44, 52) - 14 * ((grid.x - mid) / 150.0) ** 2
    ramus = rng.uniform(108, 118)
    mandible = (grid.y > occlusal(grid.x) + 3) & (grid.y < lower_border) & (np.abs(grid.x - mid) < ramus)
    for side in (-1, 1):
        x0 = mid + side * ramus
        mandible |= grid.polygon(
            np.array(
                [[x0 - 14, lower_border.max() - 10], [x0 + 8, lower_border.max() - 20], [x0 + 4, 22], [x0 - 10, 22]]
            )
        )
    bone = np.maximum(bone, 0.55 * cortical_bone(grid.depth(mandible), 2.5))
    maxilla = (grid.y < occlusal(grid.x) - 3) & (grid.y > 18) & (np.abs(grid.x - mid) < ramus - 12)
    bone = np.maximum(bone, 0.4 * maxilla)
    for side in (-1, 1):  # maxillary sinuses
        bone -= 0.2 * (np.hypot((grid.x - mid - side * 45) / 24, (grid.y - 38) / 12) < 1.0)

    teeth = np.zeros(size)
    for quadrant, (side, jaw) in {1: (-1, -1), 2: (1, -1), 3: (1, 1), 4: (-1, 1)}.items():
        position = 0.0
        for number, width in enumerate(TOOTH_WIDTHS_MM, start=1):
            width *= rng.uniform(0.92, 1.08)
            centre_x = mid + side * (position + width / 2)
            position += width
            if number > 1 and rng.random() < 0.06:  # a missing tooth
                continue
            top = occlusal(centre_x) + jaw * 1.0
            crown_end = top + jaw * rng.uniform(7, 9)
            apex = top + jaw * (rng.uniform(19, 22) if number > 2 else rng.uniform(20, 24))
            crown = capsule_bone(grid, [centre_x, top + jaw * width * 0.35], [centre_x, crown_end], width * 0.45, 1.0)
            root = capsule_bone(grid, [centre_x, crown_end], [centre_x, apex], width * 0.3, 0.8)
            tooth = np.maximum(1.2 * crown, 0.75 * root)
            labels[tooth > 0] = 10 * quadrant + number
            teeth = np.maximum(teeth, tooth)

    canal_density = np.zeros(size)
    for side in (-1, 1):
        start = np.array([mid + side * (ramus - 4), rng.uniform(50, 60)])
        bend = np.array([mid + side * rng.uniform(78, 90), lower_border.min() + rng.uniform(-4, 2)])
        foramen = np.array([mid + side * rng.uniform(38, 46), occlusal_y + rng.uniform(26, 32)])
        t = np.linspace(0.0, 1.0, 24)[:, None]
        curve = (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * foramen
        distance = np.min(
            [grid.segment_distance(a, b, reach=4.0) for a, b in zip(curve[:-1], curve[1:], strict=True)], axis=0
        )
        width = rng.uniform(1.3, 1.8)
        labels[distance < width] = CANAL_LABEL
        canal_density += -0.3 * (distance < width) + 0.15 * (np.abs(distance - width - 0.4) < 0.5)

    soft = np.clip(1.0 - np.abs(grid.y - 80) / 90, 0, 1)
    density = -0.85 + 0.3 * soft + bone + teeth + canal_density
    image = finish_radiograph(grid, density, rng, blur_mm=0.5, noise=rng.uniform(0.01, 0.03))
    return image, labels
