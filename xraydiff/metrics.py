"""Metrics shared by the studies: per-image rows counted once under DDP (``IndexedRows``), paired
comparisons of two rows on the same images, and segmentation scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from xraydiff.errors import DataError


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
