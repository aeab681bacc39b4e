"""Running the acceptance check on folders of samples, and exporting what it accepts.

``run_acceptance`` reads the ``*.npz`` samples written by ``xraydiff sample`` (or
``xraydiff acceptance render``), checks them in batches and writes, all or nothing:

* ``report.json``: counts, acceptance rate (for the active rule set and for both), failed-rule
  counts and one verdict per sample;
* ``accepted/``: the accepted pairs as a dataset in the hand reader's layout
  (``images/<id>.png``, ``setup/all.csv`` with the labelled landmarks in pixels of the saved
  images, ``setup/cv/set1/train.txt``, an empty ``test.txt`` and ``manifest.json``), loadable by
  ``HandDataModule`` directly or as ``extra_train_dirs``;
* ``gallery.png``: accepted (green frame) and rejected (red frame) samples with the MRF labels.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xraydiff.acceptance.checker import AcceptanceChecker, Verdict
from xraydiff.acceptance.config import RULE_SETS, STRICT_RULES
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.data.imageio import atomic_directory, atomic_write_bytes, check_output_folder, write_png
from xraydiff.data.novelty import near_copy_ids
from xraydiff.data.preview import acceptance_grid
from xraydiff.data.samples import list_samples, read_sample, write_manifest, write_sample
from xraydiff.errors import DataError


def load_samples(
    directory: Path, stats: ShapeStatistics, stats_path: Path | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, images (B, H, W), heatmaps (B, H, W)) of a samples folder, every file checked first; samples
    of another size than the statistics' are refused with the command that refits them."""
    ids, images, heatmaps = [], [], []
    paths = list_samples(directory)
    if paths:
        size = read_sample(paths[0])["heatmap"].shape
        if size != tuple(stats.image_size):
            raise DataError(
                stats_path,
                f"statistics are for {tuple(stats.image_size)} (H, W) images, the samples in {directory} are "
                f"{size}: fit statistics at their size, e.g. xraydiff acceptance fit --config DATA_CONFIG "
                f"--data.init_args.image_size '{list(size)}' --out STATS.json",
            )
    for path in paths:
        arrays = read_sample(path, stats.image_size)
        if "landmarks" in arrays and arrays["landmarks"].shape != (stats.num_landmarks, 2):
            raise DataError(
                path, f"sample has {arrays['landmarks'].shape[0]} landmarks, the statistics {stats.num_landmarks}"
            )
        ids.append(path.stem)
        heatmaps.append(arrays["heatmap"])
        images.append(arrays.get("image", np.full(stats.image_size, -1.0, np.float32)))
    return ids, np.stack(images), np.stack(heatmaps)


def check_in_batches(
    checker: AcceptanceChecker, heatmaps: np.ndarray, ids: Sequence[str], batch_size: int = 128
) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for start in range(0, len(heatmaps), batch_size):
        verdicts += checker.check(heatmaps[start : start + batch_size], list(ids[start : start + batch_size]))
    return verdicts


def summarize(verdicts: Sequence[Verdict], rule_set: str) -> dict:
    """Counts and rates of a list of verdicts."""
    n = len(verdicts)
    accepted = sum(v.accepted for v in verdicts)
    return {
        "n": n,
        "accepted": accepted,
        "acceptance_rate": accepted / n if n else 0.0,
        "rule_set": rule_set,
        "acceptance_rate_by_rule_set": {
            name: sum(v.accepted_by_rule_set[name] for v in verdicts) / n if n else 0.0 for name in RULE_SETS
        },
        "failed_rule_counts": {
            rule: Counter(r for v in verdicts for r in v.failed_rules)[rule] for rule in STRICT_RULES
        },
    }


def write_accepted_dataset(
    directory: Path, ids: Sequence[str], images: np.ndarray, landmarks: np.ndarray, stats: ShapeStatistics
) -> None:
    """The hand reader's layout: images/<id>.png, setup/all.csv, setup/cv/set1/{train,test}.txt, and
    manifest.json (image size, landmark count, mm per pixel) read by ``extra_train_dirs``."""
    (directory / "images").mkdir(parents=True)
    (directory / "setup/cv/set1").mkdir(parents=True)
    rows = io.StringIO()
    for sample_id, image, points in zip(ids, images, landmarks, strict=True):
        write_png(directory / "images" / f"{sample_id}.png", image)
        rows.write(",".join([sample_id, *(f"{v:.3f}" for v in np.asarray(points).ravel())]) + "\n")
    atomic_write_bytes(directory / "setup/all.csv", rows.getvalue().encode())
    atomic_write_bytes(directory / "setup/cv/set1/train.txt", "".join(f"{i}\n" for i in ids).encode())
    atomic_write_bytes(directory / "setup/cv/set1/test.txt", b"")
    manifest = {
        "image_size": list(stats.image_size),
        "num_landmarks": stats.num_landmarks,
        "mm_per_px": float(np.mean(stats.mm_per_px)),
        "anatomy": stats.anatomy,
        "count": len(ids),
    }
    atomic_write_bytes(directory / "manifest.json", json.dumps(manifest, indent=1).encode())


def run_acceptance(
    samples: Path,
    stats_path: Path,
    out: Path,
    rule_set: str | None = None,
    overwrite: bool = False,
    batch_size: int = 128,
    gallery_size: int = 32,
    novelty: Path | None = None,
) -> dict:
    """Check a samples folder against a statistics file and write report, dataset and gallery; with the
    ``novelty`` report of the same samples (``xraydiff novelty``), accepted near copies are counted and marked."""
    out = Path(out)
    check_output_folder(out, overwrite, "acceptance run", inputs=(samples, stats_path))
    stats = ShapeStatistics.load(stats_path)
    checker = AcceptanceChecker(stats, rule_set)
    ids, images, heatmaps = load_samples(samples, stats, stats_path)
    copies = None if novelty is None else near_copy_ids(novelty, ids)
    verdicts = check_in_batches(checker, heatmaps, ids, batch_size)
    report = {
        **summarize(verdicts, checker.rule_set),
        "samples_dir": str(samples),
        "stats": str(stats_path),
        "samples": [v.to_json() for v in verdicts],
    }
    if copies is not None:
        report["novelty"] = str(novelty)
        report["accepted_near_copies"] = sum(v.accepted and v.id in copies for v in verdicts)
        for entry in report["samples"]:
            entry["near_copy"] = entry["id"] in copies
    accepted = [k for k, v in enumerate(verdicts) if v.accepted]
    with atomic_directory(out, overwrite, "acceptance run", inputs=(samples, stats_path)) as staging:
        atomic_write_bytes(staging / "report.json", json.dumps(report, indent=1).encode())
        write_accepted_dataset(
            staging / "accepted",
            [ids[k] for k in accepted],
            images[accepted],
            np.stack([verdicts[k].landmarks for k in accepted]) if accepted else np.empty((0, 0, 2)),
            stats,
        )
        shown = _gallery_selection(verdicts, gallery_size)
        acceptance_grid(
            staging / "gallery.png",
            images[shown],
            heatmaps[shown],
            [verdicts[k] for k in shown],
            title=f"{report['accepted']} of {report['n']} accepted ({checker.rule_set} rules)"
            + ("" if copies is None else f"; {report['accepted_near_copies']} accepted near copies (orange)"),
            near_copies=copies or (),
        )
    return report


def render_ground_truth(
    items: Sequence, image_size: tuple[int, int], sigma: float, out: Path, source: dict, overwrite: bool = False
) -> None:
    """Write landmark items (``xraydiff.data.datasets.LandmarkItem``) in the sample format: the image (zeros
    when annotations only), the combined heatmap of sigma ``sigma`` and the ``landmarks`` array, plus a
    manifest naming ``source``. The calibration set of the check."""
    import torch

    from xraydiff.landmarks.heatmaps import gaussian_heatmaps

    with atomic_directory(out, overwrite=overwrite, command="acceptance render") as staging:
        for item in items:
            heatmap = gaussian_heatmaps(
                torch.from_numpy(item.landmarks), image_size, sigma, combine=True, normalize=True
            )[0].numpy()
            image = item.image if item.image is not None else np.zeros(image_size, np.float32)
            write_sample(staging, item.id, image, heatmap, landmarks=item.landmarks)
        write_manifest(
            staging,
            {
                "source": "ground truth",
                **source,
                "sigma": sigma,
                "image_size": list(image_size),
                "count": len(items),
                "ids": [item.id for item in items],
            },
        )


def _gallery_selection(verdicts: Sequence[Verdict], count: int) -> list[int]:
    """Up to ``count`` samples, half accepted and half rejected where possible, in id order."""
    accepted = [k for k, v in enumerate(verdicts) if v.accepted]
    rejected = [k for k, v in enumerate(verdicts) if not v.accepted]
    take_accepted = min(len(accepted), max(count // 2, count - len(rejected)))
    return sorted(accepted[:take_accepted] + rejected[: count - take_accepted])
