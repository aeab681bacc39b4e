"""The paired comparison of two rows over images and training seeds, checked by simulating studies whose
truth is known: how often an interval excludes 0 when the rows do not differ, and when they do."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_ind

from xraydiff.errors import DataError
from xraydiff.metrics import paired_difference

SEEDS, IMAGES, STUDIES = 3, 64, 200


def simulated_study(rng: np.random.Generator, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Two rows (seeds, images): a score per image shared by both rows (SD 0.1, removed by pairing), a
    training-seed effect per seed and row (SD 0.05) and image noise per seed (SD 0.01); row a is ``shift``
    higher."""
    image = rng.normal(0.6, 0.1, IMAGES)
    rows = [image + rng.normal(0, 0.05, (SEEDS, 1)) + rng.normal(0, 0.01, (SEEDS, IMAGES)) for _ in range(2)]
    return rows[0] + shift, rows[1]


def excludes_zero(result: dict) -> bool:
    low, high = result["ci95"]
    return low > 0 or high < 0


def test_with_no_true_difference_the_seed_aware_interval_rarely_excludes_zero_and_the_images_only_one_often():
    rng = np.random.default_rng(0)
    seed_aware = images_only = 0
    for _ in range(STUDIES):
        a, b = simulated_study(rng, 0.0)
        seed_aware += excludes_zero(paired_difference(a, b))
        # the previous statistic: a bootstrap over images of the seed-averaged scores
        images_only += excludes_zero(paired_difference(a.mean(0), b.mean(0), resamples=2000))
    assert seed_aware <= 0.10 * STUDIES, seed_aware
    assert images_only >= 0.5 * STUDIES, images_only


def test_a_true_difference_of_0_2_is_found():
    rng = np.random.default_rng(1)
    found = sum(paired_difference(*simulated_study(rng, 0.2))["verdict"] == "higher" for _ in range(STUDIES))
    assert found >= 0.8 * STUDIES, found


def test_without_image_noise_the_interval_is_welchs_over_the_seed_means():
    rng = np.random.default_rng(2)
    a = rng.normal(0.7, 0.05, (3, 1)) + np.zeros((3, 10))
    b = rng.normal(0.6, 0.05, (4, 1)) + np.zeros((4, 10))
    result = paired_difference(a, b)
    welch = ttest_ind(a[:, 0], b[:, 0], equal_var=False).confidence_interval(0.95)
    np.testing.assert_allclose(result["ci95"], [welch.low, welch.high], rtol=1e-9)
    assert result["seeds"] == 3 and result["seeds_per_row"] == [3, 4]
    np.testing.assert_allclose(result["seed_sd"], [a[:, 0].std(ddof=1), b[:, 0].std(ddof=1)])


def test_one_seed_is_said_and_bad_rows_are_refused():
    rng = np.random.default_rng(3)
    one = paired_difference(rng.normal(0, 1, 20), rng.normal(0, 1, 20))
    assert one["seeds"] == 1 and one["seed_sd"] == [None, None] and "one training seed" in one["method"]
    mixed = paired_difference(rng.normal(0, 1, (3, 20)), rng.normal(0, 1, 20))
    assert mixed["seeds"] == 1 and mixed["seeds_per_row"] == [3, 1]
    with pytest.raises(DataError, match="two equal rows"):
        paired_difference(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(DataError, match="NaN"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])


@pytest.mark.parametrize(
    "counts, published",
    [  # Newcombe (1998), Stat Med 17:873-890, Table II, method 10 (hybrid score, no continuity correction)
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ],
)
def test_rate_difference_reproduces_newcombes_intervals(counts, published):
    from xraydiff.metrics import rate_difference

    result = rate_difference(*counts)
    np.testing.assert_allclose(result["ci95"], published, atol=1e-4)
    assert result["difference"] == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3])
    assert result["verdict"] == ("higher" if published[0] > 0 else "no difference shown")
