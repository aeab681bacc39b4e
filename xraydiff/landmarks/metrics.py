"""Landmark localisation metrics: radial (point-to-point) errors in millimetres, success detection rates,
outlier counts, ensemble spread and two-doctor agreement.

Errors are collected per image with its dataset index (``LandmarkErrors``, a torchmetrics ``Metric`` that
synchronises under DDP), so that samples repeated by a distributed sampler's padding are counted once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from xraydiff.errors import DataError
from xraydiff.metrics import IndexedRows

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


class LandmarkErrors(IndexedRows):
    """Collects (B, N) radial errors in mm with each image's dataset index.

    ``compute()`` returns the errors (M, N) of the distinct images seen (on all processes).
    """

    higher_is_better = False

    def distinct_errors(self) -> Tensor:
        return self.distinct()[1]

    def compute(self) -> Tensor:
        return self.distinct_errors()


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


def _key(radius: float) -> str:
    return f"{radius:g}"
