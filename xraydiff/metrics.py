"""Landmark localisation metrics as torchmetrics ``Metric`` classes (they synchronise under DDP).

All work on radial (point-to-point) errors in millimetres, collected per landmark together with
the dataset index of each image, so that samples repeated by a distributed sampler's padding are
counted once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from xraydiff.errors import DataError

SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)
HAND_OUTLIER_RADII_MM = (2.0, 4.0, 10.0, 20.0)


def check_radii(radii: Sequence[float], what: str) -> tuple[float, ...]:
    radii = tuple(float(r) for r in radii)
    if not radii:
        raise DataError(None, f"{what} radii must not be empty")
    if any(r <= 0 for r in radii):
        raise DataError(None, f"{what} radii must be positive, got {list(radii)}")
    return radii


def radial_errors_mm(predicted: Tensor, target: Tensor, mm_per_px: Tensor) -> Tensor:
    """(B, N) Euclidean distances in mm of (B, N, 2) original-pixel positions, ``mm_per_px`` (B,)."""
    return torch.linalg.vector_norm(predicted.float() - target.float(), dim=-1) * mm_per_px.float()[:, None]


class IndexedRows(Metric):
    """Collects per-image rows (B, ...) with each image's dataset index; ``distinct()`` returns the indices and
    rows (M, ...) of the distinct images seen on all processes, by index (a distributed sampler's padding
    repeats images; each counts once)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, rows: Tensor, indices: Tensor) -> None:
        self.rows.append(rows.float())
        self.indices.append(indices.long())

    def distinct(self) -> tuple[Tensor, Tensor]:
        """(indices (M,), rows (M, ...)) sorted by index, each index once."""
        if isinstance(self.rows, list) and not self.rows:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, 0)
        rows, indices = dim_zero_cat(self.rows), dim_zero_cat(self.indices)
        order = torch.argsort(indices, stable=True)
        indices, rows = indices[order], rows[order]
        keep = torch.ones_like(indices, dtype=torch.bool)
        keep[1:] = indices[1:] != indices[:-1]
        return indices[keep], rows[keep]

    def compute(self) -> tuple[Tensor, Tensor]:
        """(indices, rows) of ``distinct``, after the states were gathered from all processes."""
        return self.distinct()


class LandmarkErrors(IndexedRows):
    """Collects (B, N) radial errors in mm with each image's dataset index.

    ``compute()`` returns the errors (M, N) of the distinct images seen (on all processes).
    """

    higher_is_better = False

    def distinct_errors(self) -> Tensor:
        return self.distinct()[1]

    def compute(self) -> Tensor:
        return self.distinct_errors()


class RadialError(LandmarkErrors):
    """Point-to-point error in mm over all landmarks of all images: mean, SD and median."""

    def compute(self) -> dict[str, Tensor]:
        errors = self.distinct_errors().flatten()
        return {"mean": errors.mean(), "sd": errors.std(unbiased=False), "median": errors.median()}


class SuccessDetectionRate(LandmarkErrors):
    """Percentage of landmarks within each radius (error <= r)."""

    def __init__(self, radii: Sequence[float] = SDR_RADII_MM, **kwargs):
        super().__init__(**kwargs)
        self.radii = check_radii(radii, "success detection rate")

    def compute(self) -> dict[float, Tensor]:
        errors = self.distinct_errors().flatten()
        return {r: (errors <= r).float().mean() * 100 for r in self.radii}


class OutlierCount(LandmarkErrors):
    """Number of landmarks with an error above each radius (error > r), as in Hadzic et al."""

    def __init__(self, radii: Sequence[float] = HAND_OUTLIER_RADII_MM, **kwargs):
        super().__init__(**kwargs)
        self.radii = check_radii(radii, "outlier")

    def compute(self) -> dict[float, Tensor]:
        errors = self.distinct_errors().flatten()
        return {r: (errors > r).sum() for r in self.radii}


class PerLandmarkError(LandmarkErrors):
    """Mean error in mm of each landmark (N,)."""

    def compute(self) -> Tensor:
        return self.distinct_errors().mean(dim=0)


def summarize_errors(errors: Tensor, sdr_radii: Sequence[float], outlier_radii: Sequence[float]) -> dict:
    """The metrics JSON of a set of distinct-image errors (M, N) in mm."""
    flat = errors.flatten()
    return {
        "mre_mm": float(flat.mean()),
        "mre_sd_mm": float(flat.std(unbiased=False)),
        "median_mm": float(flat.median()),
        "sdr": {_key(r): float((flat <= r).float().mean() * 100) for r in sdr_radii},
        "outliers": {_key(r): int((flat > r).sum()) for r in outlier_radii},
        "per_landmark_mm": [float(v) for v in errors.mean(dim=0)],
        "n_images": int(errors.shape[0]),
        "n_landmarks": int(errors.shape[1]),
    }


def spread_error_correlation(spread: Tensor, errors: Tensor) -> dict:
    """How well an ensemble's spread ranks its errors: the Spearman correlation (scipy) of the (M, N)
    spreads and radial errors over all landmarks of all images, with the mean spread per landmark."""
    from scipy.stats import spearmanr

    flat_spread, flat_errors = spread.flatten().double().numpy(), errors.flatten().double().numpy()
    rho = spearmanr(flat_spread, flat_errors).statistic if flat_spread.std() > 0 else float("nan")
    return {
        "spearman": float(rho),
        "mean_spread_mm": float(flat_spread.mean()),
        "per_landmark_spread_mm": [float(v) for v in spread.mean(dim=0)],
    }


def observer_errors_mm(predicted: Tensor, observers: Tensor, mm_per_px: Tensor) -> Tensor:
    """(B, K, N) radial errors in mm of (B, N, 2) predictions to each of K annotators' (B, K, N, 2)
    landmarks, all in original pixels; ``mm_per_px`` (B,)."""
    distance = torch.linalg.vector_norm(predicted.float()[:, None] - observers.float(), dim=-1)
    return distance * mm_per_px.float()[:, None, None]


def observer_agreement(errors: Tensor, inter_observer: Tensor, names: Sequence[str]) -> dict:
    """Two-doctor evaluation of (M, K, N) errors to K annotators, given the (M, N) distance in mm between
    the first two annotators: the MRE to each, the mean inter-observer distance, and the percentage of
    predictions within the inter-observer distance of the nearer annotator (min_k e_k <= d)."""
    if errors.shape[1] != len(names):
        raise DataError(None, f"{errors.shape[1]} annotators in the batch, {len(names)} names")
    within = errors.min(dim=1).values <= inter_observer
    return {
        "mre_mm_to": {name: float(errors[:, k].mean()) for k, name in enumerate(names)},
        "inter_observer_mm": float(inter_observer.mean()),
        "within_inter_observer": float(within.float().mean() * 100),
        "per_landmark_inter_observer_mm": [float(v) for v in inter_observer.mean(dim=0)],
    }


def paired_difference(
    values: Sequence[float], reference: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> dict:
    """Paired comparison of two rows on the same images: the mean of the per-image differences
    d_i = values_i - reference_i with a 95 % percentile bootstrap interval (``scipy.stats.bootstrap``,
    images resampled with their pair). ``verdict`` is 'lower' / 'higher' only where the interval
    excludes 0, else 'no difference shown'."""
    from scipy.stats import bootstrap

    a, b = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise DataError(None, f"a paired comparison needs two equal rows of >= 2 images, got {a.shape} and {b.shape}")
    difference = a - b
    if np.ptp(difference) == 0:
        low = high = float(difference[0])
    else:
        result = bootstrap(
            (difference,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
            random_state=np.random.default_rng(seed),
        )  # fmt: skip
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    verdict = "lower" if high < 0 else "higher" if low > 0 else "no difference shown"
    return {"n_images": len(a), "mean_difference": float(difference.mean()), "ci95": [low, high], "verdict": verdict}


def _key(radius: float) -> str:
    return f"{radius:g}"


# ------------------------------------------------------------------------------- segmentation

SEGMENTATION_SCORES = ("precision", "recall", "dsc")


def segmentation_scores(predicted: Tensor, target: Tensor) -> Tensor:
    """Per-image (B, 3) precision TP / (TP + FP), recall TP / (TP + FN) and Dice similarity coefficient
    DSC = 2 TP / (2 TP + FP + FN) of binary masks (B, 1, H, W) (Lim et al., Table 1).

    A score whose denominator is zero (no predicted or no true structure) is 1 when prediction and
    target are both empty and 0 otherwise.
    """
    if predicted.shape != target.shape:
        raise DataError(None, f"prediction {tuple(predicted.shape)} and mask {tuple(target.shape)} differ in shape")
    p, g = predicted.flatten(1).bool(), target.flatten(1).bool()
    tp = (p & g).sum(1).double()
    fp = (p & ~g).sum(1).double()
    fn = (~p & g).sum(1).double()
    both_empty = (tp + fp + fn) == 0

    def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
        value = numerator / denominator.clamp(min=1)
        return torch.where(denominator == 0, both_empty.double(), value)

    return torch.stack([ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)], dim=1).float()


def summarize_segmentation(scores: Tensor) -> dict:
    """Mean and SD (population) over images of each score of ``segmentation_scores`` (M, 3)."""
    summary = {"n_images": int(scores.shape[0])}
    for k, name in enumerate(SEGMENTATION_SCORES):
        column = scores[:, k].double()
        summary[name] = float(column.mean()) if len(column) else float("nan")
        summary[f"{name}_sd"] = float(column.std(unbiased=False)) if len(column) else float("nan")
    return summary
