"""Metrics shared by the studies: per-image rows counted once under DDP (``IndexedRows``), paired
comparisons of two rows on the same images, rates of two independent draws, and segmentation scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def _seeds_by_images(row: Sequence[float] | Sequence[Sequence[float]], name: str) -> np.ndarray:
    """A row's scores as (seeds, images) float64; a 1-D row is one training seed."""
    array = np.asarray(row, dtype=np.float64)
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[0] < 1:
        raise DataError(None, f"{name}: scores must be (images,) or (seeds, images), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(None, f"{name}: scores hold NaN or infinite values")
    return array


def paired_difference(
    values: Sequence[float] | Sequence[Sequence[float]],
    reference: Sequence[float] | Sequence[Sequence[float]],
    resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Paired comparison of two rows scored on the same images, each row trained with its own seeds.

    ``values`` (S_a, n) and ``reference`` (S_b, n): per training seed, per image (a 1-D row is one seed). The
    estimate is the difference of the rows' means, mean_i (mean_s a_si - mean_s b_si).

    Its 95 % interval must say whether a *rerun* would disagree, so it carries both sources of variance:
    the seeds, drawn independently for each row (the variance of each row's seed means, / S), and the
    images, drawn once and shared by the rows (the variance of the per-image differences d_i of the seed
    averages, / n). With few seeds a bootstrap interval is far too narrow (resampling 3 seeds shows a third
    of their spread less and uses normal quantiles: about 20 % false differences where 5 % are due), so the
    interval is Student's t with the Welch-Satterthwaite degrees of freedom of the summed variances:
    with 3 seeds a row, t_{0.975} is about 2.8 rather than 1.96. Where one row has a single seed its seed
    variance is taken from the other (the same training, another input), with one degree of freedom.

    With one seed in both rows only the images vary: a 95 % percentile bootstrap of the d_i
    (``scipy.stats.bootstrap``, ``resamples``, ``seed``), and ``seeds`` 1 says the verdict is one training
    seed's. ``verdict`` is 'lower' / 'higher' only where the interval excludes 0, else 'no difference shown'.
    """
    from scipy.stats import bootstrap
    from scipy.stats import t as student

    a, b = _seeds_by_images(values, "values"), _seeds_by_images(reference, "reference")
    if a.shape[1] != b.shape[1] or a.shape[1] < 2:
        raise DataError(None, f"a paired comparison needs two equal rows of >= 2 images, got {a.shape} and {b.shape}")
    difference = a.mean(axis=0) - b.mean(axis=0)
    n = len(difference)
    seed_means = [a.mean(axis=1), b.mean(axis=1)]
    seed_sd = [float(m.std(ddof=1)) if len(m) > 1 else None for m in seed_means]
    counts = [len(m) for m in seed_means]
    if max(counts) == 1:
        method = "percentile bootstrap over images (one training seed)"
        if np.ptp(difference) == 0:
            low = high = float(difference[0])
        else:
            result = bootstrap(
                (difference,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
                random_state=np.random.default_rng(seed),
            )  # fmt: skip
            low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    else:
        method = "Student t, Welch-Satterthwaite df, seed and image variance"
        known = [sd**2 for sd in seed_sd if sd is not None]
        # (variance of the mean, degrees of freedom) of each component
        components = [
            ((sd**2 if sd is not None else known[0]) / c, max(c - 1, 1)) for sd, c in zip(seed_sd, counts, strict=True)
        ]
        components.append((float(difference.var(ddof=1)) / n, n - 1))
        variance = sum(v for v, _ in components)
        if variance == 0:
            low = high = float(difference.mean())
        else:
            df = variance**2 / sum(v**2 / d for v, d in components)
            half = float(student.ppf(0.975, df)) * np.sqrt(variance)
            low, high = float(difference.mean()) - half, float(difference.mean()) + half
    verdict = "lower" if high < 0 else "higher" if low > 0 else "no difference shown"
    return {
        "n_images": n,
        "mean_difference": float(difference.mean()),
        "ci95": [low, high],
        "verdict": verdict,
        "seeds": min(counts),
        "seeds_per_row": counts,
        "seed_sd": seed_sd,
        "method": method,
    }


def common_image_rows(
    values: Sequence[Mapping[str, float]], reference: Sequence[Mapping[str, float]]
) -> tuple[list[list[float]], list[list[float]]]:
    """Two rows of per-image scores ({image id: score}, one mapping per training seed) as (seeds, images) lists
    on the images every run of both rows holds, in the first run's order: what ``paired_difference`` compares."""
    runs = [*values, *reference]
    ids = [i for i in runs[0] if all(i in run for run in runs)]
    return [[run[i] for i in ids] for run in values], [[run[i] for i in ids] for run in reference]


def seed_spread(values: Sequence[float]) -> str:
    """'S (seed SD x)' of a row's per-seed means, for the tables; 'one training seed' for one."""
    if len(values) < 2:
        return "1 (one training seed)"
    return f"{len(values)} (seed SD {float(np.std(values, ddof=1)):.3f})"


def describe_paired(result: dict, verdicts: dict[str, str], digits: int = 3) -> str:
    """A ``paired_difference`` result in a table cell: the difference, its interval, the verdict, marked
    'one training seed' where a row had one."""
    low, high = result["ci95"]
    text = f"{result['mean_difference']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] "
    text += verdicts[result["verdict"]]
    return text + (" (one training seed)" if result.get("seeds", 1) == 1 else "")


def wilson_interval(count: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of a proportion ``count / n`` (scipy's)."""
    from scipy.stats import binomtest

    interval = binomtest(count, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def describe_rate(count: int, n: int) -> str:
    """'60% [49%, 70%] (48 of 80)': a proportion with its Wilson 95 % interval, for the tables."""
    low, high = wilson_interval(count, n)
    return f"{count / n:.0%} [{low:.0%}, {high:.0%}] ({count} of {n})"


def rate_difference(count_a: int, n_a: int, count_b: int, n_b: int) -> dict:
    """``count_a / n_a - count_b / n_b`` of two independent draws (e.g. two generators' samples) with its 95 %
    interval: Newcombe's hybrid score interval from the two Wilson intervals (Newcombe 1998, method 10), and a
    verdict ("higher", "lower") only where it excludes 0."""
    (low_a, high_a), (low_b, high_b) = wilson_interval(count_a, n_a), wilson_interval(count_b, n_b)
    p_a, p_b = count_a / n_a, count_b / n_b
    difference = p_a - p_b
    low = difference - float(np.hypot(p_a - low_a, high_b - p_b))
    high = difference + float(np.hypot(high_a - p_a, p_b - low_b))
    verdict = "higher" if low > 0 else "lower" if high < 0 else "no difference shown"
    return {"difference": difference, "ci95": [low, high], "verdict": verdict}


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
