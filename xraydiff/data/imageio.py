"""Reading medical image files (SimpleITK) and writing outputs atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import SimpleITK as sitk

from xraydiff.errors import DataError

IMAGE_EXTENSIONS = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def find_image(directory: Path, stem: str) -> Path | None:
    """The image file ``<directory>/<stem>.<ext>`` (any extension of IMAGE_EXTENSIONS), or None; a
    DataError naming both when two files share the id (``002.jpg`` and ``002.png``)."""
    found = [directory / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS if (directory / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise DataError(found[1], f"two images with the id {stem}: {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def list_images(directory: Path) -> dict[str, Path]:
    """The image files of a folder by id (name without its image extension), sorted by id; a DataError
    naming both files when two share an id."""
    images: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        stem = image_stem(path)
        if stem is None:
            continue
        if stem in images:
            raise DataError(path, f"two images with the id {stem}: {images[stem].name} and {path.name}; keep one")
        images[stem] = path
    return dict(sorted(images.items()))


def image_stem(path: Path) -> str | None:
    """The id of an image file (its name without a known image extension), or None if not an image."""
    name = path.name
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return None


# The first bytes of the raster formats a file name may misstate: (signature, format, SimpleITK ImageIO).
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG", "PNGImageIO"),
    (b"\xff\xd8\xff", "JPEG", "JPEGImageIO"),
    (b"BM", "BMP", "BMPImageIO"),
    (b"II*\x00", "TIFF", "TIFFImageIO"),
    (b"MM\x00*", "TIFF", "TIFFImageIO"),
)
EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def raster_format(path: Path) -> tuple[str, str] | None:
    """(format, SimpleITK ImageIO) of a PNG, JPEG, BMP or TIFF file from its signature, whatever its
    extension; None for other files (volumes, whose readers SimpleITK picks). A file named as one of
    these formats that has none of their signatures is a DataError saying so."""
    expected = EXTENSION_FORMATS.get(Path(path).suffix.lower())
    with open(path, "rb") as handle:
        head = handle.read(8)
    for signature, name, image_io in SIGNATURES:
        if head.startswith(signature):
            return name, image_io
    if expected is not None:
        raise DataError(path, f"not a {expected} file (it starts with bytes {head.hex(' ')}, no image signature)")
    return None


def _reader(path: Path, found: tuple[str, str] | None) -> sitk.ImageFileReader:
    """A SimpleITK reader for ``path`` that decodes by the file's content (``found``, its
    ``raster_format``), not its extension (a PNG renamed .jpg, a JPEG renamed .png)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if found is not None:
        reader.SetImageIO(found[1])
    return reader


def read_image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header only, without decoding the pixels."""
    reader = _reader(path, raster_format(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise DataError(path, f"cannot read image header ({_first_line(err)})") from None
    size = reader.GetSize()
    if len(size) == 3 and size[2] != 1:
        raise DataError(path, f"expected a 2-D image, got a volume of size {size}")
    return int(size[1]), int(size[0])


def read_image(path: Path) -> np.ndarray:
    """Decode a 2-D grey image as float32 (H, W) with its original intensities.

    Accepts single-slice volumes (D = 1) and RGB/RGBA files whose channels are averaged.
    """
    array = _read_2d(path, "image", lambda a: a[..., :3].mean(axis=-1, dtype=np.float32)).astype(np.float32)
    if not np.isfinite(array).all():
        raise DataError(path, "image contains NaN or infinite values")
    return array


def read_label_map(path: Path) -> np.ndarray:
    """Decode an integer label map (H, W) (the first channel of a multi-channel file)."""
    return _read_2d(path, "label map", lambda a: a[..., 0]).astype(np.int64)


def check_complete(path: Path, found: tuple[str, str] | None) -> None:
    """DataError for a JPEG or PNG file (``found``: its ``raster_format``) that ends before its end marker.

    Decoders fill the missing part of a truncated JPEG with grey and only warn, so a file cut short
    in a copy or download would otherwise be read as a valid image. In JPEG entropy-coded data an
    0xFF byte is always followed by 0x00 or a restart marker, so the end-of-image marker 0xFFD9
    occurs only at the end; a PNG ends with its IEND chunk.
    """
    if found is None or found[0] not in ("JPEG", "PNG"):
        return
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 4096))
        tail = handle.read()
    marker, name = (b"\xff\xd9", "JPEG end-of-image marker") if found[0] == "JPEG" else (b"IEND", "PNG IEND chunk")
    if marker not in tail:
        named = EXTENSION_FORMATS.get(Path(path).suffix.lower())
        kind = f"a {found[0]} file named {Path(path).suffix}" if named and named != found[0] else f"{size} bytes"
        raise DataError(path, f"cannot decode image: the file is truncated ({kind}, no {name})")


def _read_2d(path: Path, what: str, merge_channels) -> np.ndarray:
    """Decode a file with SimpleITK into a 2-D array; ``merge_channels`` reduces vector pixels."""
    found = raster_format(path)
    check_complete(path, found)
    try:
        image = _reader(path, found).Execute()
    except RuntimeError as err:
        raise DataError(path, f"cannot decode {what} ({_first_line(err)})") from None
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = merge_channels(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DataError(path, f"expected a 2-D {what}, got an array of shape {array.shape}")
    return array


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Min-max normalise one image to [-1, 1] (a constant image maps to -1)."""
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / max(high - low, 1e-8)
    return (2.0 * scaled - 1.0).astype(np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W) to ``size`` = (H', W'): area averaging when shrinking, bilinear when enlarging."""
    height, width = size
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32), (width, height), interpolation=interpolation)


def resize_label_map(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map to ``size`` = (H', W')."""
    height, width = size
    resized = cv2.resize(labels.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(np.int64)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a [-1, 1] float image (H, W) as an 8-bit PNG."""
    array = np.clip((np.asarray(image, dtype=np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


# Every output folder xraydiff writes holds this file: JSON naming the command that wrote the folder
# and the files it wrote. ``--overwrite`` replaces only a folder of the same command holding nothing else.
OUTPUT_MARKER = ".xraydiff-output"


def read_marker(folder: Path) -> dict | None:
    """The marker of an xraydiff output folder: {"command", "files"} (``files`` None for a marker of
    xraydiff before the file list); None when ``folder`` has none."""
    path = Path(folder) / OUTPUT_MARKER
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    try:
        marker = json.loads(text)
    except json.JSONDecodeError:
        return {"command": text.strip().splitlines()[0] if text.strip() else "", "files": None}
    return {"command": str(marker.get("command", "")), "files": marker.get("files")}


def _files_under(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file() and p.name != OUTPUT_MARKER
    )


def check_disjoint(target: Path, inputs: Sequence[str | Path | None]) -> None:
    """DataError when the output ``target`` equals, contains or lies inside one of the ``inputs``:
    replacing it would delete what the command was asked to read."""
    out = Path(target).resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).resolve()
        relation = (
            "is" if out == source else "lies inside" if source in out.parents else "contains" if out in source.parents
            else None
        )  # fmt: skip
        if relation:
            raise DataError(target, f"the output folder {relation} the input {source}; choose an output outside it")


def check_output_folder(
    target: Path,
    overwrite: bool = False,
    command: str | None = None,
    inputs: Sequence[str | Path | None] = (),
    resume: bool = False,
) -> None:
    """DataError unless ``target`` may be written: absent, or empty, or (with ``overwrite``) an earlier
    output of the same xraydiff ``command`` that holds nothing but the files that command wrote.

    A folder without the marker, a marker of another command, or files added since (listed in the
    message) are refused with or without ``overwrite``; so is an output that equals, contains or lies
    inside one of the command's ``inputs``. ``resume``: a study folder of the same command, which its
    steps keep filling (the file list is not checked).
    """
    target = Path(target)
    check_disjoint(target, inputs)
    if target.exists() and not target.is_dir():
        raise DataError(target, "output path exists and is not a folder")
    if not target.exists() or not any(target.iterdir()):
        return
    marker = read_marker(target)
    if marker is None:
        raise DataError(
            target, "folder is not empty and was not written by xraydiff; refusing to replace it (choose a new folder)"
        )
    if command is not None and marker["command"] != command:
        raise DataError(
            target, f"folder was written by `xraydiff {marker['command']}`, not by `xraydiff {command}`; "
            "refusing to replace it (choose a new folder)",
        )  # fmt: skip
    if resume:
        return
    if not overwrite:
        raise DataError(target, "output folder exists and is not empty (pass --overwrite to replace it)")
    if marker["files"] is not None:
        foreign = sorted(set(_files_under(target)) - set(marker["files"]))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise DataError(target, f"holds files xraydiff did not write ({shown}); refusing to replace it")


def mark_output(folder: Path, command: str) -> None:
    """Mark ``folder`` as an output of ``xraydiff command`` listing the files in it now (see
    ``check_output_folder``)."""
    folder = Path(folder)
    marker = {"command": command, "files": _files_under(folder)}
    atomic_write_bytes(folder / OUTPUT_MARKER, json.dumps(marker, indent=1).encode())


@contextlib.contextmanager
def atomic_directory(
    target: Path, overwrite: bool = False, command: str = "xraydiff", inputs: Sequence[str | Path | None] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``target`` only when the block succeeds.

    ``target`` must pass ``check_output_folder`` for ``command`` and its ``inputs``. On any exception the
    temporary folder is removed and ``target`` is left untouched, so a failed run never leaves partial
    output behind.
    """
    target = Path(target)
    check_output_folder(target, overwrite, command, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        mark_output(staging, command)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, target)


def replace_directory(staging: Path, target: Path) -> None:
    """Move a finished ``staging`` folder to ``target``, replacing what was there."""
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, trash)
        os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "ERROR" in line or "Exception" in line] or lines
    return useful[-1][:200] if useful else type(err).__name__
