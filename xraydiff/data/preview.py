"""Figures a person looks at: grids of samples with landmarks or mask outlines drawn."""

from __future__ import annotations

import functools
import io
from collections.abc import Collection, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xraydiff.data.imageio import atomic_write_bytes  # noqa: E402
from xraydiff.data.samples import side_by_side  # noqa: E402


def _grid(count: int, columns: int, aspect: float, tile: float = 3.0):
    columns = max(1, min(columns, count))
    rows = max(1, int(np.ceil(count / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(tile * columns, tile * aspect * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure atomically as PNG and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def landmark_grid(
    samples: Sequence[dict], path: Path, columns: int = 4, numbers: bool = True, title: str | None = None
) -> None:
    """Images with their landmarks drawn and numbered (0-based); landmarks outside the image in red.

    Each sample needs ``image`` (1, H, W) or (H, W) and ``landmarks`` (N, 2); ``visible`` and ``id``
    are used when present.
    """
    first = np.asarray(samples[0]["image"]).squeeze()
    fig, axes = _grid(len(samples), columns, first.shape[0] / first.shape[1])
    for ax, sample in zip(axes, samples, strict=False):
        image = np.asarray(sample["image"]).squeeze()
        points = np.asarray(sample["landmarks"])
        visible = np.asarray(sample.get("visible", np.ones(len(points), bool)), dtype=bool)
        ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
        colors = plt.cm.hsv(np.linspace(0, 0.9, len(points)))
        ax.scatter(points[visible, 0], points[visible, 1], s=8, c=colors[visible], edgecolors="none")
        ax.scatter(points[~visible, 0], points[~visible, 1], s=20, c="red", marker="x")
        if numbers:
            for k, (x, y) in enumerate(points):
                ax.text(x + 1.5, y - 1.5, str(k), color="yellow", fontsize=5)
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        ax.set_title(str(sample.get("id", "")), fontsize=7)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def mask_grid(samples: Sequence[dict], path: Path, columns: int = 3, title: str | None = None) -> None:
    """Images with the outline of their binary mask (when present) drawn in red."""
    first = np.asarray(samples[0]["image"]).squeeze()
    fig, axes = _grid(len(samples), columns, first.shape[0] / first.shape[1], tile=4.0)
    for ax, sample in zip(axes, samples, strict=False):
        ax.imshow(np.asarray(sample["image"]).squeeze(), cmap="gray", vmin=-1, vmax=1)
        if "mask" in sample:
            mask = np.asarray(sample["mask"]).squeeze()
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.7)
        ax.set_title(str(sample.get("id", "")), fontsize=7)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def pairs_grid(pairs: np.ndarray, path: Path, columns: int = 4, title: str | None = None) -> None:
    """Panels (B, C, H, W) in [-1, 1], e.g. generated (image, heatmap) pairs or (image, reconstruction):
    each tile shows a panel's C channels side by side."""
    tiles = [functools.reduce(side_by_side, panel) for panel in pairs]
    fig, axes = _grid(len(tiles), columns, tiles[0].shape[0] / tiles[0].shape[1], tile=4.0)
    for ax, tile in zip(axes, tiles, strict=False):
        ax.imshow(tile, cmap="gray", vmin=-1, vmax=1)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def _framed(ax, tile: np.ndarray, color: str, linewidth: float = 3) -> None:
    """A grey [-1, 1] tile without ticks, framed in ``color``."""
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.imshow(tile, cmap="gray", vmin=-1, vmax=1)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(linewidth)


def novelty_grid(path: Path, cases: Sequence[dict], columns: int = 4, title: str | None = None) -> None:
    """Samples beside their nearest training images (``image``, ``nearest`` (H, W) in [-1, 1], ``label``,
    ``near_copy``): framed orange when the sample is a near copy."""
    tiles = [side_by_side(case["image"], case["nearest"]) for case in cases]
    fig, axes = _grid(len(tiles), columns, tiles[0].shape[0] / tiles[0].shape[1], tile=4.0)
    for ax, tile, case in zip(axes, tiles, cases, strict=False):
        color = "darkorange" if case["near_copy"] else "grey"
        _framed(ax, tile, color, 3 if case["near_copy"] else 1)
        ax.set_title(case["label"], fontsize=7, color=color if case["near_copy"] else "black")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def acceptance_grid(
    path: Path,
    images: np.ndarray,
    heatmaps: np.ndarray,
    verdicts: Sequence,
    columns: int = 4,
    title: str | None = None,
    near_copies: Collection[str] = (),
) -> None:
    """Samples (image | heatmap) framed green when accepted and red when rejected, with the MRF labels
    drawn on both halves and the failed rules written underneath (like Figs. 5-7 of Hadzic et al.); accepted
    samples among ``near_copies`` (ids) framed orange, "near copy" written underneath."""
    if len(verdicts) == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no samples", ha="center", va="center")
        save_figure(fig, path)
        return
    tiles = [side_by_side(image, heatmap) for image, heatmap in zip(images, heatmaps, strict=True)]
    width = images.shape[-1]
    fig, axes = _grid(len(tiles), columns, tiles[0].shape[0] / tiles[0].shape[1], tile=4.0)
    for ax, tile, verdict in zip(axes, tiles, verdicts, strict=False):
        copy = verdict.accepted and verdict.id in near_copies
        color = "darkorange" if copy else "limegreen" if verdict.accepted else "red"
        _framed(ax, tile, color)
        points = np.asarray(verdict.landmarks)
        colors = plt.cm.hsv(np.linspace(0, 0.9, len(points)))
        for offset in (0, width + 2):
            ax.scatter(points[:, 0] + offset, points[:, 1], s=5, c=colors, edgecolors="none")
        ax.set_title(verdict.id, fontsize=7)
        verdict_text = "accepted, near copy" if copy else ", ".join(verdict.failed_rules) or "accepted"
        ax.set_xlabel(verdict_text, fontsize=6, color=color)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def error_bar_chart(path: Path, errors: np.ndarray, title: str | None = None) -> None:
    """Per-landmark mean radial error (bars) with its standard deviation, errors (M, N) in mm."""
    mean, sd = errors.mean(axis=0), errors.std(axis=0)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(mean)), 3.5))
    ax.bar(np.arange(len(mean)), mean, yerr=sd, color="steelblue", ecolor="gray", capsize=2)
    ax.set_xticks(np.arange(len(mean)))
    ax.set_xticklabels([str(k) for k in range(len(mean))], fontsize=6)
    ax.set_xlabel("landmark (0-based)")
    ax.set_ylabel("radial error (mm)")
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def error_spread_figure(path: Path, spread: np.ndarray, errors: np.ndarray, title: str | None = None) -> None:
    """Radial error against ensemble spread, one dot per (image, landmark), both (M, N) in mm."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(spread.ravel(), errors.ravel(), s=4, alpha=0.5, color="steelblue")
    ax.set_xlabel("ensemble spread (mm)")
    ax.set_ylabel("radial error (mm)")
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def worst_cases_figure(path: Path, cases: Sequence[dict], columns: int = 3) -> None:
    """Images with predictions (red), ground truth (green) and the error between them (yellow)."""
    if not cases:
        return
    fig, axes = _grid(len(cases), columns, cases[0]["image"].shape[0] / cases[0]["image"].shape[1], tile=3.5)
    for ax, case in zip(axes, cases, strict=False):
        ax.imshow(case["image"], cmap="gray", vmin=-1, vmax=1)
        predicted, target = np.asarray(case["predicted"]), np.asarray(case["target"])
        for (px, py), (tx, ty) in zip(predicted, target, strict=True):
            ax.plot([px, tx], [py, ty], color="yellow", linewidth=0.7)
        ax.scatter(target[:, 0], target[:, 1], s=6, c="lime", label="ground truth")
        ax.scatter(predicted[:, 0], predicted[:, 1], s=6, c="red", label="prediction")
        ax.set_title(f"{case['id']}: {case['error_mm']:.2f} mm", fontsize=7)
    save_figure(fig, path)


def segmentation_cases_figure(path: Path, cases: Sequence[dict], columns: int = 3) -> None:
    """Images with the outlines of the true mask (green) and the predicted mask (red), titled with DSC."""
    if not cases:
        return
    fig, axes = _grid(len(cases), columns, cases[0]["image"].shape[0] / cases[0]["image"].shape[1], tile=4.0)
    for ax, case in zip(axes, cases, strict=False):
        ax.imshow(case["image"], cmap="gray", vmin=-1, vmax=1)
        for key, colour in (("mask", "lime"), ("predicted", "red")):
            outline = np.asarray(case[key], dtype=np.float32)
            if outline.any():
                ax.contour(outline, levels=[0.5], colors=colour, linewidths=0.7)
        ax.set_title(f"{case['id']}: DSC {case['dsc']:.3f}", fontsize=7)
    save_figure(fig, path)
