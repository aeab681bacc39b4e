"""The thresholds of the MRF-SSM acceptance check (Hadzic et al., sect. 2.2) and their per-anatomy defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields

from xraydiff.errors import DataError

PAPER_RULES = ("shared_coordinate", "stable_landmarks")
STRICT_RULES = (*PAPER_RULES, "shape_parameters", "unassigned_blob")
RULE_SETS = {"paper": PAPER_RULES, "strict": STRICT_RULES}
SHAPE_CALIBRATIONS = ("training", "leave_one_out")


@dataclass
class AcceptanceConfig:
    """Every threshold of the check. ``None`` means the anatomy's default (``defaults_for``).

    Attributes:
        rule_set: 'strict' (default) or 'paper'.
        shared_pairs: landmark pairs allowed to share a candidate (hand: [[2, 3]]).
        stable_landmarks: landmarks checked against the aligned SSM (hand: the wrist, 0-17).
        stable_max_mm: rule (ii) threshold (16 mm).
        unary_sigma_mm: sigma of the unary Gaussian (25 mm).
        candidate_count: K strongest maxima kept (default: the number of landmarks).
        candidates_per_landmark: at most this many candidates per landmark after pruning.
        prune_radius_mm: a landmark keeps the candidates within this distance of its
            shape-model prediction (always at least the nearest one).
        shape_fit_iterations: iterations of the shape-model fit that predicts the positions.
        min_candidate_value: heatmap level in [0, 1] below which a maximum is no candidate.
        peak_window: maximum-filter window in pixels.
        ransac_threshold_mm: RANSAC inlier threshold.
        ransac_max_trials: RANSAC iterations at most.
        ransac_stop_fraction: RANSAC stops early once this share of landmarks are inliers.
        ransac_stop_probability: RANSAC also stops once it has drawn an all-inlier sample with this
            probability, given the best inlier ratio so far (scikit-image's adaptive stopping).
        shape_rule: 'mahalanobis' (default) or 'box', see the module docstring.
        shape_quantile: training quantile of sum b^2 / lambda accepted by the 'mahalanobis' rule.
        shape_calibration: which training distances that quantile is taken of: 'training' (in-sample)
            or 'leave_one_out' (skulls' default; see the module docstring).
        shape_sd_limit: limit of |b_k| / sqrt(lambda_k) of the 'box' rule.
        blob_threshold: heatmap level in [0, 1] of a "strong" blob for the unassigned-blob rule.
        blob_radius_px: a blob closer than this to a labelled landmark counts as assigned.
        bp_damping: share of the previous message kept in each loopy belief-propagation update.
        bp_max_iterations: belief-propagation sweeps at most.
        bp_tolerance: largest message change at which belief propagation has converged.
        topology: MRF edges over the mean shape: 'delaunay', 'knn' or 'tree'.
        knn: neighbours per landmark for the 'knn' topology.
        variance_share: SSM modes kept up to this share of the variance.
        heatmap_sigma: sigma in pixels of rendered ground-truth heatmaps.
    """

    rule_set: str = "strict"
    shared_pairs: list[list[int]] | None = None
    stable_landmarks: list[int] | None = None
    stable_max_mm: float | None = None
    unary_sigma_mm: float = 25.0
    candidate_count: int | None = None
    candidates_per_landmark: int = 3
    prune_radius_mm: float = 8.0
    shape_fit_iterations: int = 15
    min_candidate_value: float = 0.2
    peak_window: int = 3
    ransac_threshold_mm: float = 20.0
    ransac_max_trials: int = 100
    ransac_stop_fraction: float = 0.9
    ransac_stop_probability: float = 0.999
    shape_rule: str = "mahalanobis"
    shape_quantile: float = 0.995
    shape_calibration: str | None = None
    shape_sd_limit: float = 3.0
    blob_threshold: float = 0.5
    blob_radius_px: float = 2.5
    bp_damping: float = 0.5
    bp_max_iterations: int = 50
    bp_tolerance: float = 1e-4
    topology: str = "delaunay"
    knn: int = 4
    variance_share: float = 0.98
    heatmap_sigma: float = 1.0

    def resolved(self, anatomy: str, num_landmarks: int) -> AcceptanceConfig:
        """A copy with every ``None`` replaced by the anatomy's default, checked."""
        defaults = defaults_for(anatomy, num_landmarks)
        values = {
            f.name: getattr(self, f.name) if getattr(self, f.name) is not None else defaults.get(f.name)
            for f in fields(self)
        }
        values["candidate_count"] = values["candidate_count"] or num_landmarks
        config = AcceptanceConfig(**values)
        config.validate(num_landmarks)
        return config

    def validate(self, num_landmarks: int) -> None:
        if self.rule_set not in RULE_SETS:
            raise DataError(None, f"acceptance rule_set must be one of {sorted(RULE_SETS)}, got {self.rule_set!r}")
        if self.shape_rule not in ("mahalanobis", "box"):
            raise DataError(None, f"acceptance shape_rule must be 'mahalanobis' or 'box', got {self.shape_rule!r}")
        if not 0 < self.shape_quantile <= 1:
            raise DataError(None, f"acceptance shape_quantile must be in (0, 1], got {self.shape_quantile}")
        if self.shape_calibration not in SHAPE_CALIBRATIONS:
            raise DataError(
                None,
                f"acceptance shape_calibration must be one of {SHAPE_CALIBRATIONS}, got {self.shape_calibration!r}",
            )
        if self.topology not in ("delaunay", "knn", "tree"):
            raise DataError(None, f"acceptance topology must be 'delaunay', 'knn' or 'tree', got {self.topology!r}")
        indices = [i for pair in self.shared_pairs for i in pair] + list(self.stable_landmarks)
        bad = [i for i in indices if not 0 <= i < num_landmarks]
        if bad:
            raise DataError(None, f"acceptance landmark indices {bad} out of range for {num_landmarks} landmarks")
        if any(len(pair) != 2 for pair in self.shared_pairs):
            raise DataError(None, "acceptance shared_pairs must be pairs of landmark indices")
        for name in ("stable_max_mm", "unary_sigma_mm", "ransac_threshold_mm", "shape_sd_limit", "blob_radius_px"):
            if not getattr(self, name) > 0:
                raise DataError(None, f"acceptance {name} must be positive, got {getattr(self, name)}")
        if self.candidates_per_landmark < 1 or self.candidate_count < 1:
            raise DataError(None, "acceptance candidate counts must be at least 1")


# The cephalometric defaults, from the 150 ISBI 2015 training skulls
# (scripts/ceph_acceptance_defaults.py): the three pairs closer than 5 mm on average (incisal tips
# 3.9 mm, pogonion-gnathion 4.5 mm, menton-gnathion 4.7 mm) may share a blob; the stable landmarks
# are the cranial base and maxilla (sella, nasion, orbitale, porion, PNS, ANS, articulare), whose
# distance to the aligned mean shape stays below 9.9 mm in 99.5 % of real skulls, well inside 16 mm.
CEPH_SHARED_PAIRS = [[6, 8], [7, 8], [10, 11]]
CEPH_STABLE_LANDMARKS = [0, 1, 2, 3, 16, 17, 18]


def defaults_for(anatomy: str, num_landmarks: int) -> dict:
    """Anatomy-specific defaults: the paper's for hands, data-derived ones for skulls."""
    if anatomy == "hand":
        return {
            "shared_pairs": [[2, 3]], "stable_landmarks": list(range(18)), "stable_max_mm": 16.0,
            "shape_calibration": "training",
        }  # fmt: skip
    if anatomy == "ceph":
        # leave-one-out: the in-sample quantile rejects real Test1 annotations (docs/localization.md, "Plausibility")
        return {
            "shared_pairs": CEPH_SHARED_PAIRS, "stable_landmarks": CEPH_STABLE_LANDMARKS, "stable_max_mm": 16.0,
            "shape_calibration": "leave_one_out",
        }  # fmt: skip
    return {
        "shared_pairs": [], "stable_landmarks": list(range(num_landmarks)), "stable_max_mm": 16.0,
        "shape_calibration": "training",
    }  # fmt: skip
