"""Near copies: is a generated image closer to a training image than real held-out images are to theirs?

The distance of an image to a set is ``1 - max NCC``: the normalised cross-correlation (Pearson's r of the pixels)
with its nearest member, maximised over relative shifts of up to ``max_shift`` pixels (a copy moved by a pixel or
two, or brightened, stays a copy; NCC ignores gain and offset). Images are compared at a reduced size (area
averaging), so that noise and texture below that scale do not count.

A sample is a near copy when its distance is below the ``level`` quantile (1 %) of the distances of real
held-out images (the validation split) to the same training set: it is closer to a training image than all but
1 % of new real patients are (``calibrate``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xraydiff.errors import DataError

LEVEL = 0.01
# The empirical LEVEL quantile is used once this many held-out images lie below it (n >= 1000 at 1 %): estimated from
# fewer tail points it errs by several times the level (scripts/novelty_calibration.py, docs/novelty.md).
TAIL_POINTS = 10
MIN_HELD_OUT = 5  # fewer held-out distances cannot be fitted
FEW_HELD_OUT = 64  # below, the fitted threshold's level varies by several times between draws (docs/novelty.md)


def reduced(images: Tensor, size: int) -> Tensor:
    """(N, C, H, W) -> (N, C, h, w) by area averaging, the longer side ``size`` (never enlarged)."""
    height, width = images.shape[-2:]
    scale = min(1.0, size / max(height, width))
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    return images if target == (height, width) else F.interpolate(images.float(), size=target, mode="area")


def unit_vectors(images: Tensor) -> Tensor:
    """(N, ...) -> (N, D): each image flattened, centred and scaled to unit length, so that the dot product of
    two is their NCC (a constant image: the zero vector, NCC 0 with everything)."""
    flat = images.flatten(1).float()
    return F.normalize(flat - flat.mean(1, keepdim=True), dim=1)


def window(images: Tensor, shift: int, dy: int = 0, dx: int = 0) -> Tensor:
    """(N, C, H, W) -> (N, D): unit vectors of the (H - 2 shift, W - 2 shift) window displaced by (dy, dx) from the
    centre (|dy|, |dx| <= shift)."""
    height, width = images.shape[-2:]
    return unit_vectors(images[..., shift + dy : height - shift + dy, shift + dx : width - shift + dx])


def windows(images: Tensor, shift: int) -> Tensor:
    """(N, C, H, W) -> (S, N, D) with S = (2 shift + 1)^2: every ``window`` displaced by (dy, dx) in
    [-shift, shift]^2."""
    offsets = range(-shift, shift + 1)
    return torch.stack([window(images, shift, dy, dx) for dy in offsets for dx in offsets])


def nearest(queries: Tensor, references: Tensor, max_shift: int = 2, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """Distance (Q,) of each query to its nearest reference, ``1 - max NCC`` over references and relative shifts of
    up to ``max_shift`` pixels, and that reference's index (Q,). Queries (Q, C, H, W), references (R, C, H, W) of
    one size; one batched matrix product per ``chunk`` queries."""
    if queries.shape[1:] != references.shape[1:]:
        raise ValueError(f"queries {tuple(queries.shape[1:])} and references {tuple(references.shape[1:])} differ")
    if min(queries.shape[-2:]) <= 2 * max_shift:
        raise ValueError(f"max_shift {max_shift} leaves no window of {tuple(queries.shape[-2:])} images")
    centre = window(references, max_shift)  # (R, D)
    distance, index = [], []
    for start in range(0, len(queries), chunk):
        views = windows(queries[start : start + chunk], max_shift)  # (S, q, D)
        best = (views @ centre.T).amax(dim=0)  # (q, R): the best shift of every pair
        similarity, which = best.max(dim=1)
        distance.append((1.0 - similarity).clamp(0.0, 2.0))
        index.append(which)
    return torch.cat(distance), torch.cat(index)


@dataclass(frozen=True)
class Threshold:
    """The near-copy threshold: the ``level`` quantile of ``n`` held-out images' distances, found by ``method``."""

    value: float
    level: float
    n: int
    method: str  # "empirical" (the sample quantile) or "gamma" (of a gamma distribution fitted to the distances)
    held_out_min: float
    held_out_median: float
    held_out_below: float  # the share of the held-out images themselves below the threshold

    def describe(self) -> str:
        how = (
            f"the empirical {self.level:.0%} quantile of"
            if self.method == "empirical"
            else f"the {self.level:.0%} quantile of a gamma distribution fitted (maximum likelihood) to"
        )
        return (
            f"{how} the nearest-training-image distances of {self.n} held-out images (min {self.held_out_min:.4f}, "
            f"median {self.held_out_median:.4f}; {self.held_out_below:.1%} of them below it)"
        )


def calibrate(held_out: np.ndarray, level: float = LEVEL) -> Threshold:
    """The distance below which a sample is closer to the training set than all but ``level`` of real held-out
    images: their empirical ``level`` quantile when at least ``TAIL_POINTS`` of them lie below it, else the
    ``level`` quantile of a gamma distribution fitted to them (maximum likelihood, location 0)."""
    from scipy import stats

    distances = np.asarray(held_out, dtype=np.float64)
    if len(distances) < MIN_HELD_OUT or not np.isfinite(distances).all():
        raise ValueError(f"need at least {MIN_HELD_OUT} finite held-out distances, got {len(distances)}")
    if len(distances) * level >= TAIL_POINTS:
        value, method = float(np.quantile(distances, level)), "empirical"
    else:
        shape, _, scale = stats.gamma.fit(np.maximum(distances, 1e-9), floc=0)
        value, method = float(stats.gamma.ppf(level, shape, scale=scale)), "gamma"
    return Threshold(
        value, level, len(distances), method, float(distances.min()), float(np.median(distances)),
        float(np.mean(distances < value)),
    )  # fmt: skip


def near_copy_ids(report: Path, ids: Sequence[str]) -> set[str]:
    """The samples a novelty ``report.json`` flags as near copies; DataError naming it unless it judged exactly
    the samples ``ids``."""
    try:
        judged = {s["id"]: bool(s["near_copy"]) for s in json.loads(Path(report).read_text())["samples"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(report, f"not a report of xraydiff novelty ({type(err).__name__}: {err})") from None
    if set(judged) != set(ids):
        missing = sorted(set(ids) - set(judged))[:3] or sorted(set(judged) - set(ids))[:3]
        raise DataError(report, f"judged other samples than these ({len(judged)} vs {len(ids)}; e.g. {missing})")
    return {sample for sample, flagged in judged.items() if flagged}
