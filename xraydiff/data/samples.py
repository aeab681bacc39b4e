"""Folders of generated image/heatmap pairs, the exchange format between sampling and acceptance.

A folder holds, per sample, ``<id>.npz`` with float32 arrays ``image`` (H, W) and, for paired
generators, ``heatmap`` (H, W), both in [-1, 1] (optionally ``landmarks`` (N, 2) in model pixels),
``<id>.png`` (the image, with its heatmap beside it) and one ``manifest.json`` describing how the
folder was made.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xraydiff.data.imageio import atomic_write_bytes, read_image, write_png
from xraydiff.errors import DataError

MANIFEST = "manifest.json"


def sample_id(seed: int, index: int) -> str:
    """The id of the ``index``-th sample drawn with ``seed``: unique and reproducible."""
    return f"s{seed}-{index:06d}"


def batch_seed(seed: int, batch: int) -> int:
    """An independent 63-bit seed for one batch of a sampling run (NumPy SeedSequence)."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0]) >> 1


def side_by_side(image: np.ndarray, heatmap: np.ndarray, gap: int = 2) -> np.ndarray:
    """(H, 2W + gap) preview: image left, heatmap right, separated by a white gap."""
    separator = np.ones((image.shape[0], gap), dtype=np.float32)
    return np.concatenate([image, separator, heatmap], axis=1)


def write_sample(
    directory: Path, sample: str, image: np.ndarray, heatmap: np.ndarray | None = None, **extra: np.ndarray
) -> None:
    """Write ``<sample>.npz`` and ``<sample>.png`` into ``directory`` (each file atomically)."""
    arrays = {"image": np.asarray(image, np.float32)}
    if heatmap is not None:
        arrays["heatmap"] = np.asarray(heatmap, np.float32)
    arrays.update({k: np.asarray(v, np.float32) for k, v in extra.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(directory / f"{sample}.npz", buffer.getvalue())
    staging = directory / f".{sample}.png.partial.png"
    write_png(staging, arrays["image"] if heatmap is None else side_by_side(arrays["image"], arrays["heatmap"]))
    staging.replace(directory / f"{sample}.png")


RANGE_TOLERANCE = 1e-3  # float rounding of a [-1, 1] map written by another tool


def read_sample(path: Path, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Read and check one ``.npz`` sample: a finite (H, W) heatmap in [-1, 1] is required, an image optional."""
    arrays = _read_npz(Path(path))
    if "heatmap" not in arrays:
        raise DataError(path, f"sample has no 'heatmap' array (found {sorted(arrays)})")
    heatmap = arrays["heatmap"]
    if heatmap.ndim != 2:
        raise DataError(path, f"heatmap must be (H, W), got shape {heatmap.shape}")
    if size is not None and heatmap.shape != tuple(size):
        raise DataError(path, f"heatmap size {heatmap.shape} differs from the expected {tuple(size)}")
    for key, array in arrays.items():
        if array.dtype.kind == "f":
            check_finite(path, key, array)
    check_unit_range(path, "heatmap", heatmap)
    if "image" in arrays and arrays["image"].shape != heatmap.shape:
        raise DataError(path, f"image shape {arrays['image'].shape} differs from heatmap shape {heatmap.shape}")
    return arrays


def check_finite(path: Path, key: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise DataError(path, f"'{key}' contains NaN or infinite values")


def check_unit_range(path: Path, key: str, array: np.ndarray) -> None:
    """DataError naming ``path`` unless ``array`` lies in [-1, 1], the sample format's range (up to rounding)."""
    low, high = float(array.min()), float(array.max())
    if low < -1.0 - RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise DataError(path, f"{key} values must lie in [-1, 1] (the sample format), found [{low:.3g}, {high:.3g}]")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file; DataError naming the file when it is empty, truncated or no archive."""
    if not path.is_file():
        raise DataError(path, "sample file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "sample file is empty")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's "pickled data" error: neither .npy nor .npz
        raise DataError(path, "not a NumPy .npz archive (text or other content)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(path, f"not a readable .npz archive ({type(err).__name__}: {err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(path, "a single .npy array, not an .npz sample archive")
    try:
        with data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(path, f"truncated or corrupt .npz archive ({type(err).__name__}: {err})") from None


def list_samples(directory: Path) -> list[Path]:
    """The ``.npz`` samples of a folder, sorted; DataError when the folder is missing or empty."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "samples folder not found")
    paths = sorted(directory.glob("*.npz"))
    if not paths:
        raise DataError(directory, "samples folder holds no .npz samples")
    return paths


@dataclass(frozen=True)
class SampleImages:
    """The images of a folder the project wrote: ``sample`` / ``acceptance render`` (``<id>.npz``) or ``blend``
    (``images/<id>.png``)."""

    folder: Path
    ids: list[str]
    images: np.ndarray  # (N, H, W) float32 in [-1, 1]
    files: list[Path]
    paired: bool  # the samples carry heatmaps (a landmark anatomy)
    manifest: dict | None

    @property
    def anatomy(self) -> str | None:
        """The anatomy the manifest names (None for folders written before manifests named it)."""
        return (self.manifest or {}).get("anatomy")


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"unreadable manifest ({type(err).__name__}: {err})") from None
    if not isinstance(manifest, dict):
        raise DataError(path, "manifest is not a JSON object")
    return manifest


def read_sample_images(directory: Path) -> SampleImages:
    """Every image of a samples folder, checked (2-D, finite, in [-1, 1], one size: DataError naming the file)."""
    directory = Path(directory)
    manifest = read_manifest(directory) if directory.is_dir() else None
    if (directory / "images").is_dir() and (manifest or {}).get("command") == "blend":
        files = sorted(p for p in (directory / "images").iterdir() if p.suffix == ".png")
        if not files:
            raise DataError(directory / "images", "blend folder holds no images")
        images = [read_image(path) / 127.5 - 1.0 for path in files]  # write_png's 8-bit scale
        paired = False
    else:
        files = list_samples(directory)
        arrays = [_read_npz(path) for path in files]
        for path, sample in zip(files, arrays, strict=True):
            if "image" not in sample:
                raise DataError(path, f"sample has no 'image' array (found {sorted(sample)})")
        images, paired = [sample["image"] for sample in arrays], "heatmap" in arrays[0]
    for path, image in zip(files, images, strict=True):
        if image.ndim != 2:
            raise DataError(path, f"image must be (H, W), got shape {image.shape}")
        if image.shape != images[0].shape:
            raise DataError(path, f"image size {image.shape} differs from {images[0].shape} of {files[0].name}")
        check_finite(path, "image", image)
        check_unit_range(path, "image", image)
    ids = [path.stem for path in files]
    return SampleImages(directory, ids, np.stack(images).astype(np.float32), files, paired, manifest)


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=2).encode())
