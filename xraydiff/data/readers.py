"""Readers for the three real dataset layouts. Every problem raises DataError naming file and line.

* Hand (Digital Hand Atlas, Payer et al.): ``<annotations>.csv`` without header, rows
  ``id, x1, y1, ..., x37, y37`` in original pixels; split lists ``<split_dir>/{train,test}.txt``;
  images ``<image_dir>/<id>.<ext>``. Millimetres by the 50 mm wrist-width convention.
* Cephalometric (ISBI 2015): ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.<ext>`` and
  ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt`` with 19 lines ``x,y`` (further lines ignored).
* Panoramic: ``<image_dir>/<stem>.<ext>`` with label maps ``<mask_dir>/<stem>.png``, and optionally
  a folder of unlabelled images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xraydiff.data.geometry import inside_image
from xraydiff.data.imageio import find_image, list_images, read_image_size
from xraydiff.errors import DataError

HAND_NUM_LANDMARKS = 37
HAND_WRIST_LANDMARKS = (1, 5)
HAND_WRIST_WIDTH_MM = 50.0
CEPH_NUM_LANDMARKS = 19
CEPH_MM_PER_PX = 0.1
CEPH_FOLDERS = {"train": "TrainingData", "val": "Test1Data", "test": "Test2Data"}
# Image numbers of the ISBI 2015 challenge splits; used only to tell an annotation whose image
# folder is absent altogether (allowed: an empty split) from one whose image is missing (an error).
CEPH_SPLIT_IDS = {"train": range(1, 151), "val": range(151, 301), "test": range(301, 401)}
CEPH_DOCTORS = ("400_senior", "400_junior")
CEPH_OBSERVERS = ("senior", "junior")  # names of CEPH_DOCTORS in metrics


@dataclass(frozen=True)
class LandmarkRecord:
    """One annotated image as read from disk, before any resizing.

    ``landmarks`` are (N, 2) float64 original-image pixels (x = column, y = row); ``source`` names
    the annotation file and line for messages; ``original_size`` is (H, W) or None when unknown.
    ``observers`` holds every annotator's landmarks (K, N, 2) when the dataset has several (ISBI
    2015: senior and junior doctor, in ``CEPH_OBSERVERS`` order), for inter-observer evaluation.
    """

    id: str
    landmarks: np.ndarray
    mm_per_px: float
    image_path: Path | None
    source: str
    original_size: tuple[int, int] | None = None
    observers: np.ndarray | None = None


@dataclass(frozen=True)
class SegmentationRecord:
    """One panoramic image, with its label map when labelled."""

    id: str
    image_path: Path
    mask_path: Path | None = None


def parse_float(token: str, path: Path, line: int, what: str) -> float:
    """A finite float from ``token`` or a DataError naming file and line."""
    try:
        value = float(token)
    except ValueError:
        raise DataError(path, f"{what}: {token.strip()!r} is not a number", line) from None
    if not math.isfinite(value):
        raise DataError(path, f"{what}: value {token.strip()!r} is not finite", line)
    return value


def read_split_list(path: Path) -> list[tuple[str, int]]:
    """Ids of a split list file, one per line, with their 1-based line numbers (blank lines skipped)."""
    if not path.is_file():
        raise DataError(path, "split list not found")
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        token = raw.strip()
        if token:
            entries.append((token, number))
    return entries


# --------------------------------------------------------------------------------------- hand


def read_hand_annotations(path: Path, num_landmarks: int = HAND_NUM_LANDMARKS) -> dict[str, tuple[np.ndarray, int]]:
    """Parse the annotation CSV of Payer et al.: ``id, x1, y1, ..., xN, yN`` per row, no header.

    Returns ``{id: (landmarks (N, 2) original pixels, line number)}``.
    """
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    expected = 1 + 2 * num_landmarks
    rows: dict[str, tuple[np.ndarray, int]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        tokens = [token.strip() for token in raw.split(",")]
        if tokens and tokens[-1] == "":
            tokens = tokens[:-1]
        if len(tokens) != expected:
            found = (len(tokens) - 1) / 2
            raise DataError(
                path,
                f"expected an id and {num_landmarks} coordinate pairs ({expected} fields), "
                f"found {len(tokens)} fields ({found:g} pairs)",
                number,
            )
        sample_id = tokens[0]
        if sample_id in rows:
            raise DataError(path, f"id {sample_id} appears twice (first on line {rows[sample_id][1]})", number)
        values = [parse_float(t, path, number, f"id {sample_id}, field {k + 2}") for k, t in enumerate(tokens[1:])]
        rows[sample_id] = (np.asarray(values, dtype=np.float64).reshape(num_landmarks, 2), number)
    if not rows:
        raise DataError(path, "annotation file holds no rows")
    return rows


def wrist_width_mm_per_px(
    landmarks: np.ndarray,
    pair: Sequence[int] = HAND_WRIST_LANDMARKS,
    width_mm: float = HAND_WRIST_WIDTH_MM,
) -> float:
    """Millimetres per pixel by the wrist-width convention: ``width_mm / |l_a - l_b|``."""
    distance = float(np.linalg.norm(landmarks[pair[0]] - landmarks[pair[1]]))
    if distance <= 0:
        raise ValueError(f"landmarks {pair[0]} and {pair[1]} coincide: the wrist width is zero")
    return width_mm / distance


def read_hand_dataset(
    root: Path,
    annotations: str = "setup/all.csv",
    split_dir: str = "setup/cv/set1",
    image_dir: str = "images",
    split_files: dict[str, str | None] | None = None,
    num_landmarks: int = HAND_NUM_LANDMARKS,
    require_images: bool = True,
) -> dict[str, list[LandmarkRecord]]:
    """Records of every split of the hand dataset under ``root``.

    ``split_files`` maps split name to a list file inside ``split_dir`` (None = empty split); the
    default is ``{"train": "train.txt", "test": "test.txt"}``. With ``require_images`` every id of a
    split must have an image ``<image_dir>/<id>.<ext>`` and its landmarks must lie inside it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset root not found")
    csv_path = root / annotations
    rows = read_hand_annotations(csv_path, num_landmarks)
    split_files = split_files or {"train": "train.txt", "test": "test.txt"}
    images = root / image_dir
    if require_images and not images.is_dir():
        raise DataError(images, "image folder not found")
    result: dict[str, list[LandmarkRecord]] = {}
    for split, name in split_files.items():
        if name is None:
            result[split] = []
            continue
        list_path = root / split_dir / name
        records = []
        for sample_id, list_line in read_split_list(list_path):
            if sample_id not in rows:
                image = find_image(images, sample_id) if images.is_dir() else None
                what = f"image {image} has no annotation in {csv_path}" if image else f"unknown id {sample_id}"
                raise DataError(list_path, f"{what} (not in {csv_path})", list_line)
            landmarks, csv_line = rows[sample_id]
            source = f"{csv_path}:{csv_line}"
            try:
                mm_per_px = wrist_width_mm_per_px(landmarks)
            except ValueError as err:
                raise DataError(csv_path, str(err), csv_line) from None
            # Without required images, an image that is present still gives the true frame (its header).
            image_path = find_image(images, sample_id) if images.is_dir() else None
            size = None
            if require_images and image_path is None:
                raise DataError(
                    csv_path, f"annotation of id {sample_id} has no image {images}/{sample_id}.<ext>", csv_line
                )
            if image_path is not None:
                size = read_image_size(image_path)
                _check_inside(landmarks, size, csv_path, csv_line, image_path)
            if not require_images:
                image_path = None
            records.append(LandmarkRecord(sample_id, landmarks, mm_per_px, image_path, source, size))
        result[split] = records
    return result


# ------------------------------------------------------------------------------- cephalometric


def read_ceph_annotation(path: Path, num_landmarks: int = CEPH_NUM_LANDMARKS) -> np.ndarray:
    """The first ``num_landmarks`` lines ``x,y`` of an ISBI 2015 annotation file, (N, 2) float64."""
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    lines = path.read_text().splitlines()
    points = []
    for number, raw in enumerate(lines[:num_landmarks], start=1):
        tokens = [t for t in raw.replace(" ", "").split(",") if t != ""]
        if len(tokens) != 2:
            raise DataError(path, f"expected 'x,y' for landmark {number}, found {raw.strip()!r}", number)
        points.append([parse_float(t, path, number, f"landmark {number}") for t in tokens])
    if len(points) < num_landmarks:
        raise DataError(path, f"expected {num_landmarks} landmarks, found only {len(points)} lines", len(lines))
    return np.asarray(points, dtype=np.float64)


def read_ceph_dataset(
    root: Path,
    ground_truth: str = "mean",
    folders: dict[str, str] | None = None,
    num_landmarks: int = CEPH_NUM_LANDMARKS,
    mm_per_px: float = CEPH_MM_PER_PX,
    require_images: bool = True,
) -> dict[str, list[LandmarkRecord]]:
    """Records per split of the ISBI 2015 layout under ``root``.

    ``ground_truth`` is ``mean`` (average of senior and junior doctor, the literature's convention),
    ``senior`` or ``junior``. Where both doctors annotated an image, its record also keeps both
    (``observers``, whatever the ground truth). A missing image folder gives an empty split. With
    ``require_images=False`` the splits are formed from the annotation files by the challenge's
    numbering (1-150 train, 151-300 val, 301-400 test).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset root not found")
    if ground_truth not in ("mean", "senior", "junior"):
        raise DataError(None, f"ground_truth must be 'mean', 'senior' or 'junior', got {ground_truth!r}")
    folders = folders or CEPH_FOLDERS
    doctors = {"mean": CEPH_DOCTORS, "senior": CEPH_DOCTORS[:1], "junior": CEPH_DOCTORS[1:]}[ground_truth]
    annotation_dirs = [root / "AnnotationsByMD" / doctor for doctor in doctors]
    for directory in annotation_dirs:
        if not directory.is_dir():
            raise DataError(directory, f"annotation folder needed for ground truth '{ground_truth}' not found")

    def annotation_ids(directory: Path) -> set[str]:
        return {p.stem for p in directory.glob("*.txt")}

    result: dict[str, list[LandmarkRecord]] = {}
    seen_ids: set[str] = set()
    present_splits = set()
    for split, folder in folders.items():
        image_folder = root / "RawImage" / folder
        if require_images:
            if not image_folder.is_dir():
                result[split] = []
                continue
            present_splits.add(split)
            ids = list(list_images(image_folder))
        else:
            numbers = CEPH_SPLIT_IDS.get(split, range(0))
            ids = sorted(i for i in annotation_ids(annotation_dirs[0]) if i.isdigit() and int(i) in numbers)
            present_splits.add(split)
        records = []
        for sample_id in ids:
            seen_ids.add(sample_id)
            files = [directory / f"{sample_id}.txt" for directory in annotation_dirs]
            image_path = find_image(image_folder, sample_id) if image_folder.is_dir() else None
            for file in files:
                if not file.is_file():
                    what = "the doctors' mean needs both files" if ground_truth == "mean" else "no annotation"
                    raise DataError(image_path or file, f"image has no annotation {file} ({what})")
            per_doctor = [read_ceph_annotation(f, num_landmarks) for f in files]
            size = None
            if image_path is not None:  # without required images, a present image still gives the true frame
                size = read_image_size(image_path)
                for file, points in zip(files, per_doctor, strict=True):
                    _check_inside(points, size, file, None, image_path)
            if not require_images:
                image_path = None
            landmarks = np.mean(per_doctor, axis=0)
            observers = np.stack(per_doctor) if len(per_doctor) == len(CEPH_DOCTORS) else None
            if observers is None:  # one doctor is the ground truth; the other's file may still be there
                other = root / "AnnotationsByMD" / next(d for d in CEPH_DOCTORS if d not in doctors) / files[0].name
                if other.is_file():
                    pair = [per_doctor[0], read_ceph_annotation(other, num_landmarks)]
                    if size is not None:
                        _check_inside(pair[1], size, other, None, image_path)
                    observers = np.stack(pair if doctors[0] == CEPH_DOCTORS[0] else pair[::-1])
            records.append(LandmarkRecord(sample_id, landmarks, mm_per_px, image_path, str(files[0]), size, observers))
        result[split] = records
    if require_images:
        # An annotation whose image is missing is an error unless its whole split folder is absent.
        for directory in annotation_dirs:
            for sample_id in sorted(annotation_ids(directory) - seen_ids):
                split = next(
                    (s for s, ids in CEPH_SPLIT_IDS.items() if sample_id.isdigit() and int(sample_id) in ids), None
                )
                if split is not None and split not in present_splits:
                    continue
                raise DataError(directory / f"{sample_id}.txt", "annotation has no image in any RawImage folder")
    return result


# ------------------------------------------------------------------------------------ panoramic


def read_panoramic_dataset(
    root: Path,
    image_dir: str = "images",
    mask_dir: str = "masks",
    unlabelled_dir: str | None = None,
) -> tuple[list[SegmentationRecord], list[SegmentationRecord]]:
    """(labelled, unlabelled) records of a panoramic dataset, sorted by id.

    Every image in ``image_dir`` needs a label map ``<mask_dir>/<stem>.png`` and vice versa; the
    sizes are checked when the pixels are loaded.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset root not found")
    images, masks = root / image_dir, root / mask_dir
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(folder, "folder not found")
    image_files, mask_files = list_images(images), list_images(masks)
    for stem, path in image_files.items():
        if stem not in mask_files:
            raise DataError(path, f"image has no mask {masks}/{stem}.png")
    for stem, path in mask_files.items():
        if stem not in image_files:
            raise DataError(path, f"mask has no image {images}/{stem}.<ext>")
    labelled = [SegmentationRecord(stem, image_files[stem], mask_files[stem]) for stem in sorted(image_files)]
    unlabelled: list[SegmentationRecord] = []
    if unlabelled_dir is not None:
        folder = root / unlabelled_dir
        if not folder.is_dir():
            raise DataError(folder, "unlabelled image folder not found")
        unlabelled = [SegmentationRecord(stem, path) for stem, path in list_images(folder).items()]
    return labelled, unlabelled


def _check_inside(landmarks: np.ndarray, size: tuple[int, int], path: Path, line: int | None, image: Path) -> None:
    """DataError unless all landmarks lie in the image; ``line=None`` means one landmark per line."""
    inside = inside_image(landmarks, size)
    if not inside.all():
        k = int(np.flatnonzero(~inside)[0])
        x, y = landmarks[k]
        raise DataError(
            path,
            f"landmark {k} at ({x:g}, {y:g}) lies outside the image {image} of size {size[1]} x {size[0]} (W x H)",
            line if line is not None else k + 1,
        )


# ----------------------------------------------------------------------------------- synthetic

SYNTHETIC_MANIFEST = "manifest.json"


def read_synthetic_dataset(root: Path, num_landmarks: int, mm_per_px_of) -> list[LandmarkRecord]:
    """Records of a folder of accepted synthetic pairs (the layout ``xraydiff acceptance run``
    exports): ``setup/all.csv``, ``setup/cv/set1/train.txt``, ``images/<id>.png`` and a
    ``manifest.json`` with ``image_size`` and ``num_landmarks``; every image must have that size.

    ``mm_per_px_of(landmarks, manifest)`` gives each sample's spacing.
    """
    import json

    root = Path(root)
    manifest_path = root / SYNTHETIC_MANIFEST
    if not manifest_path.is_file():
        raise DataError(manifest_path, "synthetic folder has no manifest (export it with `xraydiff acceptance run`)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("num_landmarks") != num_landmarks:
        raise DataError(
            manifest_path, f"synthetic pairs have {manifest.get('num_landmarks')} landmarks, the data {num_landmarks}"
        )
    size = tuple(manifest["image_size"])
    records = read_hand_dataset(root, split_files={"train": "train.txt"}, num_landmarks=num_landmarks)["train"]
    out = []
    for record in records:
        if tuple(record.original_size) != size:
            raise DataError(
                record.image_path,
                f"synthetic image of size {record.original_size} (H, W), the manifest says {list(size)}",
            )
        out.append(
            LandmarkRecord(
                record.id,
                record.landmarks,
                mm_per_px_of(record.landmarks, manifest),
                record.image_path,
                record.source,
                record.original_size,
            )
        )
    return out
