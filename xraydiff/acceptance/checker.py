"""MRF-SSM acceptance of generated image/heatmap pairs (Hadzic et al., sect. 2.2).

``ShapeStatistics.fit`` turns training landmarks (model pixels) into everything the check needs,
saved as one versioned JSON file. ``AcceptanceChecker`` then, for a batch of heatmaps:

1. finds candidates (local maxima by a maximum filter), keeps per landmark the most plausible few,
2. labels them by maximising the MRF energy of eq. 5 with batched loopy max-sum BP (``mrf``),
3. aligns the SSM mean shape to the labelled configuration with RANSAC (scikit-image,
   similarity transform, Euclidean residuals in mm), and
4. applies the rules:
   * ``shared_coordinate`` (paper rule i): no two landmarks on the same candidate, except the
     configured pairs (hand: 2 and 3);
   * ``stable_landmarks`` (paper rule ii): every stable landmark (hand: the wrist, 0-17) within
     ``stable_max_mm`` (16 mm) of its aligned SSM mean position; also failed when RANSAC finds no
     consensus;
   * ``shape_parameters`` (strict): the shape parameters b of the configuration, aligned to the
     mean shape like the training shapes, must be plausible: by default (``shape_rule:
     mahalanobis``) sum_k b_k^2 / lambda_k within the ``shape_quantile`` (99.5 %) of the
     training shapes (``shape_calibration`` 'training': their distances to the SSM they built,
     biased low; 'leave_one_out': each one's distance to the SSM of the others, which is what a
     new configuration meets), the ellipsoidal form of the +-3 sqrt(lambda) box; ``shape_rule: box``
     checks |b_k| <= ``shape_sd_limit`` sqrt(lambda_k) per mode, which on real hands rejects 14 %
     of perfectly labelled shapes with the 35 modes needed to see a shifted wrist
     (a stretched thumb, swapped fingers, a shifted wrist);
   * ``unassigned_blob`` (strict): no strong heatmap blob left without a landmark (a sixth finger).

Rule set ``paper`` uses the first two rules, ``strict`` (the default) all four; every verdict lists
all failed rules, so both sets are measured in one run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xraydiff.acceptance.config import RULE_SETS
from xraydiff.acceptance.labelling import Labelling, MRFLabeller
from xraydiff.acceptance.rules import AcceptanceRules
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.errors import DataError


@dataclass
class Verdict:
    """The check of one sample. ``landmarks`` (N, 2) model pixels as labelled by the MRF."""

    id: str
    accepted: bool
    failed_rules: list[str]
    landmarks: np.ndarray
    accepted_by_rule_set: dict[str, bool]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "accepted": self.accepted,
            "failed_rules": self.failed_rules,
            "accepted_by_rule_set": self.accepted_by_rule_set,
            "landmarks": np.round(self.landmarks, 3).tolist(),
        }


class AcceptanceChecker:
    """Batched MRF-SSM check of heatmaps against ``ShapeStatistics``: ``labeller`` then ``rules``.

    Args:
        stats: the fitted statistics (their ``config`` holds every threshold).
        rule_set: overrides ``stats.config.rule_set`` ('paper' or 'strict').
        seed: seed of RANSAC's random sampling.
    """

    def __init__(self, stats: ShapeStatistics, rule_set: str | None = None, seed: int = 0):
        self.stats = stats
        self.config = stats.config
        self.rule_set = rule_set or self.config.rule_set
        if self.rule_set not in RULE_SETS:
            raise DataError(None, f"rule set must be one of {sorted(RULE_SETS)}, got {self.rule_set!r}")
        self.labeller = MRFLabeller(stats)
        self.rules = AcceptanceRules(stats, seed)

    def check(self, heatmaps: np.ndarray, ids: list[str] | None = None) -> list[Verdict]:
        """Verdicts for (B, H, W) heatmaps in [-1, 1] (the sample format)."""
        heatmaps = np.asarray(heatmaps, dtype=np.float32)
        if heatmaps.ndim != 3 or heatmaps.shape[1:] != tuple(self.stats.image_size):
            raise DataError(
                None,
                f"heatmaps must be (B, {self.stats.image_size[0]}, {self.stats.image_size[1]}), got {heatmaps.shape}",
            )
        unit = np.clip((heatmaps + 1.0) * 0.5, 0.0, 1.0)
        labelling = self.labeller.label(unit)
        ids = ids or [str(k) for k in range(len(heatmaps))]
        return [self._judge(ids[b], labelling, b) for b in range(len(heatmaps))]

    def _judge(self, sample_id: str, labelling: Labelling, b: int) -> Verdict:
        strong = labelling.candidate_valid[b] & (labelling.candidate_values[b] >= self.config.blob_threshold)
        failed = self.rules.failed(
            labelling.coords[b], labelling.candidate_index[b], labelling.candidate_coords[b][strong]
        )
        by_set = {name: not set(failed) & set(rules) for name, rules in RULE_SETS.items()}
        return Verdict(sample_id, by_set[self.rule_set], failed, labelling.coords[b], by_set)

    def check_configurations(self, coords: np.ndarray) -> list[list[str]]:
        """Shape rules failed by each of (B, N, 2) predicted landmark configurations in model pixels.

        Quality control of a localizer's predictions: every landmark is its own point, so only the
        RANSAC-aligned ``stable_landmarks`` rule and (strict set) ``shape_parameters`` can fail. A
        similarity transform cannot reflect, so a left-right mirrored configuration (a cephalogram
        facing the other way) fails the alignment.
        """
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 3 or coords.shape[1:] != (self.stats.num_landmarks, 2):
            raise DataError(None, f"configurations must be (B, {self.stats.num_landmarks}, 2), got {coords.shape}")
        index, no_blobs = np.arange(coords.shape[1]), np.zeros((0, 2))
        rules = RULE_SETS[self.rule_set]
        return [[rule for rule in self.rules.failed(c, index, no_blobs) if rule in rules] for c in coords]
