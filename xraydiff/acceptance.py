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

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from scipy import stats as scipy_stats
from scipy.optimize import linear_sum_assignment
from skimage.measure import ransac
from skimage.transform import SimilarityTransform

from xraydiff.errors import DataError
from xraydiff.imageio import atomic_write_bytes
from xraydiff.mrf import Candidates, find_candidates, max_sum_bp, pairwise_potentials, topology_edges, unary_potentials
from xraydiff.shape import PointDistributionModel, apply_similarity, generalized_procrustes, similarity_fit

STATS_FORMAT = "xraydiff-shape-statistics"
STATS_VERSION = 1
PAPER_RULES = ("shared_coordinate", "stable_landmarks")
STRICT_RULES = (*PAPER_RULES, "shape_parameters", "unassigned_blob")
RULE_SETS = {"paper": PAPER_RULES, "strict": STRICT_RULES}
SHAPE_CALIBRATIONS = ("training", "leave_one_out")
# Energies of forbidden choices, finite so that BP and pgmpy (factors exp(energy)) see the same
# model: two landmarks on one blob, and a label slot without candidate. Both exceed any gain the
# other terms can offer (each pairwise term is at most about 2.2).
EXCLUSION = 50.0
UNAVAILABLE = 100.0


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
        bp_damping, bp_max_iterations, bp_tolerance: loopy belief propagation.
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


def check_statistics_output(path: Path, overwrite: bool = False) -> None:
    """DataError unless ``path`` may receive a statistics file: absent, or (with ``overwrite``) a
    statistics file of xraydiff (by its ``format``); never a folder or any other file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; --out takes the statistics file to write (.json)")
    if not path.exists():
        return
    if not overwrite:
        raise DataError(path, "statistics file exists (pass --overwrite to replace it)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
        raise DataError(path, "is not a shape-statistics file of xraydiff; --overwrite replaces only those")


def defaults_for(anatomy: str, num_landmarks: int) -> dict:
    """Anatomy-specific defaults: the paper's for hands, data-derived ones for skulls."""
    if anatomy == "hand":
        return {
            "shared_pairs": [[2, 3]], "stable_landmarks": list(range(18)), "stable_max_mm": 16.0,
            "shape_calibration": "training",
        }  # fmt: skip
    if anatomy == "ceph":
        # leave-one-out: in-sample, 2.7 % of the ISBI Test1 annotations failed (README, "Plausibility")
        return {
            "shared_pairs": CEPH_SHARED_PAIRS, "stable_landmarks": CEPH_STABLE_LANDMARKS, "stable_max_mm": 16.0,
            "shape_calibration": "leave_one_out",
        }  # fmt: skip
    return {
        "shared_pairs": [], "stable_landmarks": list(range(num_landmarks)), "stable_max_mm": 16.0,
        "shape_calibration": "training",
    }  # fmt: skip


# ----------------------------------------------------------------------------- shape statistics


@dataclass
class ShapeStatistics:
    """Everything the acceptance check needs, fitted once from the training landmarks.

    Coordinates are model pixels of an (H, W) = ``image_size`` frame; ``mm_per_px`` (x, y) is how
    those pixels map to millimetres (median over the training set), which generated samples are
    judged by.
    """

    anatomy: str
    image_size: tuple[int, int]
    mm_per_px: np.ndarray  # (2,)
    mean_coords: np.ndarray  # (N, 2) model pixels
    coord_covariance: np.ndarray  # (N, 2, 2) model pixels^2
    edges: np.ndarray  # (E, 2)
    mean_distance_mm: np.ndarray  # (E,)
    t_params: np.ndarray  # (E, 3) df, loc, scale in mm
    ssm: PointDistributionModel  # in mm
    shape_distance_limit: float  # sum b^2 / lambda at the configured training quantile
    config: AcceptanceConfig
    frame: dict = field(default_factory=dict)
    num_shapes: int = 0

    @property
    def num_landmarks(self) -> int:
        return self.mean_coords.shape[0]

    @classmethod
    def fit(
        cls,
        shapes_px: np.ndarray,
        mm_per_px: np.ndarray,
        image_size: tuple[int, int],
        anatomy: str,
        config: AcceptanceConfig | None = None,
        frame: dict | None = None,
        edge_distributions: bool = True,
    ) -> ShapeStatistics:
        """Fit from (M, N, 2) training shapes in model pixels and their (x, y) mm per model pixel,
        (2,) or one row per shape (M, 2), whose median becomes the statistics' mm per pixel.

        ``edge_distributions=False`` skips the Student-t fits of the pairwise term (about 0.2 s per
        edge): such statistics serve ``check_configurations`` only, not the MRF labelling of heatmaps.
        """
        shapes_px = np.asarray(shapes_px, dtype=np.float64)
        if shapes_px.ndim != 3 or shapes_px.shape[0] < 3:
            raise DataError(None, f"need at least 3 training shapes (M, N, 2), got {shapes_px.shape}")
        num_landmarks = shapes_px.shape[1]
        config = (config or AcceptanceConfig()).resolved(anatomy, num_landmarks)
        mm_per_px = np.asarray(mm_per_px, dtype=np.float64)
        mm_per_px = np.median(mm_per_px, axis=0) if mm_per_px.ndim == 2 else mm_per_px
        shapes_mm = shapes_px * mm_per_px
        mean_coords = shapes_px.mean(axis=0)
        centred = shapes_px - mean_coords
        covariance = np.einsum("mni,mnj->nij", centred, centred) / (len(shapes_px) - 1)
        edges = topology_edges(config.topology, mean_coords * mm_per_px, config.knn)
        distances = np.linalg.norm(shapes_mm[:, edges[:, 0]] - shapes_mm[:, edges[:, 1]], axis=-1)
        if edge_distributions:
            t_params = np.array([scipy_stats.t.fit(distances[:, e]) for e in range(len(edges))])
        else:
            t_params = np.full((len(edges), 3), np.nan)
        aligned, _ = generalized_procrustes(shapes_mm, scaling=True)
        ssm = PointDistributionModel.fit(aligned, config.variance_share)
        limit = float(np.quantile(calibration_distances(shapes_mm, aligned, ssm, config), config.shape_quantile))
        return cls(
            anatomy,
            tuple(image_size),
            mm_per_px,
            mean_coords,
            covariance,
            edges,
            distances.mean(axis=0),
            t_params,
            ssm,
            limit,
            config,
            dict(frame or {}),
            len(shapes_px),
        )

    # ---------------------------------------------------------------------------- persistence

    def to_json(self) -> dict:
        return {
            "format": STATS_FORMAT,
            "version": STATS_VERSION,
            "anatomy": self.anatomy,
            "num_landmarks": self.num_landmarks,
            "num_shapes": self.num_shapes,
            "image_size": list(self.image_size),
            "mm_per_px": self.mm_per_px.tolist(),
            "frame": self.frame,
            "mean_coords": self.mean_coords.tolist(),
            "coord_covariance": self.coord_covariance.tolist(),
            "topology": {"kind": self.config.topology, "edges": self.edges.tolist()},
            "mean_distance_mm": self.mean_distance_mm.tolist(),
            "t_params": {"columns": ["df", "loc", "scale"], "values": self.t_params.tolist()},
            "ssm": {
                "mean_shape_mm": self.ssm.mean_shape.tolist(),
                "modes": self.ssm.modes.tolist(),
                "eigenvalues": self.ssm.eigenvalues.tolist(),
                "shape_distance_limit": self.shape_distance_limit,
            },
            "config": asdict(self.config),
        }

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), json.dumps(self.to_json(), indent=1).encode())

    @classmethod
    def load(cls, path: Path, num_landmarks: int | None = None) -> ShapeStatistics:
        """Read a statistics file; DataError naming the file for another format, version or size."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "statistics file not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(path, f"not a statistics file ({err})") from None
        if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
            raise DataError(path, f"not an xraydiff shape-statistics file (format {data.get('format')!r})")
        if data.get("version") != STATS_VERSION:
            raise DataError(
                path,
                f"statistics file version {data.get('version')} is not supported "
                f"(this xraydiff reads version {STATS_VERSION}); refit it with `acceptance fit`",
            )
        if num_landmarks is not None and data["num_landmarks"] != num_landmarks:
            raise DataError(path, f"statistics are for {data['num_landmarks']} landmarks, expected {num_landmarks}")
        ssm = data["ssm"]
        return cls(
            data["anatomy"],
            tuple(data["image_size"]),
            np.asarray(data["mm_per_px"]),
            np.asarray(data["mean_coords"]),
            np.asarray(data["coord_covariance"]),
            np.asarray(data["topology"]["edges"], dtype=np.int64),
            np.asarray(data["mean_distance_mm"]),
            np.asarray(data["t_params"]["values"]),
            PointDistributionModel(
                np.asarray(ssm["mean_shape_mm"]), np.asarray(ssm["modes"]), np.asarray(ssm["eigenvalues"])
            ),
            float(ssm["shape_distance_limit"]),
            AcceptanceConfig(**data["config"]),
            data.get("frame", {}),
            data.get("num_shapes", 0),
        )


def shape_distance(ssm: PointDistributionModel, aligned: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance sum_k b_k^2 / lambda_k of shapes (..., N, 2) in the SSM frame."""
    return (ssm.parameters(aligned) ** 2 / ssm.eigenvalues).sum(axis=-1)


def calibration_distances(
    shapes_mm: np.ndarray, aligned: np.ndarray, ssm: PointDistributionModel, config: AcceptanceConfig
) -> np.ndarray:
    """(M,) training distances sum b^2 / lambda whose quantile bounds the 'mahalanobis' rule.

    'training': each aligned training shape in the SSM fitted on all of them. 'leave_one_out': shape i
    aligned (``align_to_mean``) to an SSM built by GPA and PCA from the other M - 1, as a configuration
    the model never saw is at check time.
    """
    if config.shape_calibration == "training":
        return shape_distance(ssm, aligned)
    distances = np.empty(len(shapes_mm))
    for i in range(len(shapes_mm)):
        others, _ = generalized_procrustes(np.delete(shapes_mm, i, axis=0), scaling=True)
        model = PointDistributionModel.fit(others, config.variance_share)
        distances[i] = shape_distance(model, align_to_mean(model, shapes_mm[i]))
    return distances


def align_to_mean(ssm: PointDistributionModel, shape: np.ndarray) -> np.ndarray:
    """Least-squares similarity alignment of a shape (N, 2) onto the SSM mean, as in training."""
    rotation, scale, translation = similarity_fit(shape, ssm.mean_shape)
    return apply_similarity(shape, rotation, scale, translation)


# ------------------------------------------------------------------------------------- checking


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


@dataclass
class MRFProblem:
    """The MRFs of a batch: ``unary`` (B, N, M), ``pairwise`` (B, E, M, M) over ``edges`` (E, 2);
    ``chosen`` (B, N, M) maps labels to candidate indices (-1 = no candidate)."""

    @property
    def available(self) -> torch.Tensor:
        """(B, N, M) label slots that hold a candidate."""
        return self.chosen >= 0

    unary: torch.Tensor
    pairwise: torch.Tensor
    edges: torch.Tensor
    chosen: torch.Tensor
    candidates: Candidates


@dataclass
class Labelling:
    """MRF labelling of a batch: landmark coordinates (B, N, 2), candidates and BP statistics."""

    coords: np.ndarray
    candidate_coords: np.ndarray  # (B, 2K, 2) all maxima found, strongest first
    candidate_values: np.ndarray  # (B, 2K)
    candidate_valid: np.ndarray  # (B, 2K)
    candidate_index: np.ndarray  # (B, N) index into the K candidates
    iterations: int


class AcceptanceChecker:
    """Batched MRF-SSM check of heatmaps against ``ShapeStatistics``.

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
        self.seed = seed
        self.mm_per_px = torch.from_numpy(stats.mm_per_px)
        self.mean_coords = torch.from_numpy(stats.mean_coords)
        self.precision = torch.from_numpy(np.linalg.inv(stats.coord_covariance + np.eye(2) * 1.0))
        self.edges = torch.from_numpy(stats.edges)
        self.mean_distance = torch.from_numpy(stats.mean_distance_mm)
        self.t_params = torch.from_numpy(stats.t_params)
        self.sigma_px = self.config.unary_sigma_mm / self.mm_per_px
        allowed = {tuple(sorted(pair)) for pair in self.config.shared_pairs}
        n = stats.num_landmarks
        # exclusive_pairs[i, j]: landmarks i and j may not take the same blob (symmetric).
        exclusive = np.array([[i != j and tuple(sorted((i, j))) not in allowed for j in range(n)] for i in range(n)])
        # Every pair is kept apart in the MRF (a finite penalty: when two landmarks have only one
        # blob between them they still share it); the shared pairs are then allowed by rule (i).
        self.exclusion_pairs = ~torch.eye(n, dtype=torch.bool)
        self.exclusive_pairs = torch.from_numpy(exclusive)
        self.shared_mask = np.triu(exclusive, k=1)

    # ------------------------------------------------------------------------------- labelling

    def predict_positions(self, candidates_mm: np.ndarray) -> np.ndarray:
        """Shape-model prediction (N, 2) in mm of every landmark from one sample's blobs (K, 2) in mm.

        Active-shape-model style: match the current shape to the blobs one-to-one (Hungarian
        assignment), fit a similarity transform and shape parameters b clamped to +-3 sqrt(lambda),
        repeat until the matching no longer changes. It starts from the mean training position.
        """
        ssm = self.stats.ssm
        limit = 3.0 * np.sqrt(ssm.eigenvalues)
        start = self.stats.mean_coords * self.stats.mm_per_px
        if len(candidates_mm) < 3:
            return start
        centre, target_centre = start.mean(axis=0), candidates_mm.mean(axis=0)
        spread = np.sqrt(((candidates_mm - target_centre) ** 2).sum(1).mean() / ((start - centre) ** 2).sum(1).mean())
        prediction = (start - centre) * spread + target_centre
        previous = None
        for _ in range(self.config.shape_fit_iterations):
            cost = np.linalg.norm(prediction[:, None] - candidates_mm[None], axis=-1)
            rows, cols = linear_sum_assignment(cost)
            target = prediction.copy()
            target[rows] = candidates_mm[cols]
            rotation, scale, translation = similarity_fit(ssm.mean_shape, target)
            b = np.clip(ssm.parameters((target - translation) @ rotation / scale), -limit, limit)
            shape = ssm.shape(b)
            rotation, scale, translation = similarity_fit(shape, target)
            prediction = apply_similarity(shape, rotation, scale, translation)
            if previous is not None and np.array_equal(cols, previous):
                break
            previous = cols
        return prediction

    def build_mrf(self, heatmaps: np.ndarray) -> MRFProblem:
        """The MRF of each of (B, H, W) heatmaps in [0, 1], over pruned candidate sets."""
        if np.isnan(self.stats.t_params).any():
            raise DataError(
                None, "these statistics were fitted without edge distributions: they check configurations only"
            )
        config = self.config
        # Twice K maxima: the K strongest are the MRF's candidates, all strong ones count as blobs.
        found = find_candidates(heatmaps, 2 * config.candidate_count, config.min_candidate_value, config.peak_window)
        k = config.candidate_count
        candidates = Candidates(found.coords[:, :k], found.values[:, :k], found.valid[:, :k])
        unary = unary_potentials(candidates, self.mean_coords, self.sigma_px)  # (B, N, K)
        # Per-landmark pruning: a landmark only considers the blobs near its shape-model prediction
        # (the energy of eq. 5 is unchanged, only the label sets shrink).
        coords_mm = (candidates.coords * self.mm_per_px).numpy()
        valid = candidates.valid.numpy()
        predictions = np.stack([self.predict_positions(coords_mm[b][valid[b]]) for b in range(len(coords_mm))])
        distance = torch.from_numpy(np.linalg.norm(coords_mm[:, None] - predictions[:, :, None], axis=-1))
        distance = torch.where(candidates.valid[:, None, :], distance, torch.full_like(distance, math.inf))
        m = min(config.candidates_per_landmark, k)
        nearest, chosen = (-distance).topk(m, dim=-1)
        usable = (-nearest <= config.prune_radius_mm) & torch.isfinite(nearest)
        usable[..., 0] = torch.isfinite(nearest[..., 0])  # the nearest candidate always stays
        chosen = torch.where(usable, chosen, torch.full_like(chosen, -1))
        batch = torch.arange(len(chosen))[:, None, None]
        unary_m = torch.where(
            usable,
            unary[batch, torch.arange(unary.shape[1])[None, :, None], chosen.clamp_min(0)],
            torch.full(chosen.shape, -UNAVAILABLE, dtype=unary.dtype),
        )
        coords_m = candidates.coords[batch, chosen.clamp_min(0)]  # (B, N, M, 2)
        edges = self.edges
        pairwise = pairwise_potentials(
            coords_m[:, edges[:, 0]], coords_m[:, edges[:, 1]], self.mm_per_px, self.mean_distance, self.t_params
        )
        # Exclusion factors: two landmarks should not take the same blob. On MRF edges they join
        # the pairwise term; landmark pairs without an edge whose candidate sets overlap get an
        # edge of their own carrying only this factor.
        overlap = (chosen[:, :, None, :, None] == chosen[:, None, :, None, :]) & (chosen[:, :, None, :, None] >= 0)
        competing = overlap.flatten(3).any(-1).any(0) & self.exclusion_pairs
        competing[edges[:, 0], edges[:, 1]] = False
        extra = torch.nonzero(torch.triu(competing, diagonal=1))
        all_edges = torch.cat([edges, extra])
        pairwise = torch.cat([pairwise, pairwise.new_zeros(len(chosen), len(extra), m, m)], dim=1)
        same = (chosen[:, all_edges[:, 0], :, None] == chosen[:, all_edges[:, 1], None, :]) & (
            chosen[:, all_edges[:, 0], :, None] >= 0
        )
        pairwise = torch.where(same, torch.full_like(pairwise, -EXCLUSION), pairwise)
        return MRFProblem(unary_m, pairwise, all_edges, chosen, found)

    def label(self, heatmaps: np.ndarray) -> Labelling:
        """MRF labelling of (B, H, W) heatmaps in [0, 1]."""
        config = self.config
        problem = self.build_mrf(heatmaps)
        result = max_sum_bp(
            problem.unary,
            problem.pairwise,
            problem.edges,
            config.bp_damping,
            config.bp_max_iterations,
            config.bp_tolerance,
        )
        index = problem.chosen.gather(2, result.labels[:, :, None])[..., 0]  # (B, N) into the candidates
        found = problem.candidates
        coords = found.coords[torch.arange(len(index))[:, None], index.clamp_min(0)]
        return Labelling(
            coords.numpy(),
            found.coords.numpy(),
            found.values.numpy(),
            found.valid.numpy(),
            index.numpy(),
            result.iterations,
        )

    # ----------------------------------------------------------------------------------- rules

    def check(self, heatmaps: np.ndarray, ids: list[str] | None = None) -> list[Verdict]:
        """Verdicts for (B, H, W) heatmaps in [-1, 1] (the sample format)."""
        heatmaps = np.asarray(heatmaps, dtype=np.float32)
        if heatmaps.ndim != 3 or heatmaps.shape[1:] != tuple(self.stats.image_size):
            raise DataError(
                None,
                f"heatmaps must be (B, {self.stats.image_size[0]}, {self.stats.image_size[1]}), got {heatmaps.shape}",
            )
        unit = np.clip((heatmaps + 1.0) * 0.5, 0.0, 1.0)
        labelling = self.label(unit)
        ids = ids or [str(k) for k in range(len(heatmaps))]
        return [self._judge(ids[b], labelling, b) for b in range(len(heatmaps))]

    def _judge(self, sample_id: str, labelling: Labelling, b: int) -> Verdict:
        strong = labelling.candidate_valid[b] & (labelling.candidate_values[b] >= self.config.blob_threshold)
        failed = self.apply_rules(
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
        return [[rule for rule in self.apply_rules(c, index, no_blobs) if rule in rules] for c in coords]

    def apply_rules(self, coords: np.ndarray, candidate_index: np.ndarray, strong_blobs: np.ndarray) -> list[str]:
        """The rules failed by one labelled configuration.

        Args:
            coords: (N, 2) labelled landmark positions in model pixels.
            candidate_index: (N,) the candidate each landmark took (equal indices = shared blob).
            strong_blobs: (S, 2) every heatmap maximum above ``blob_threshold``.
        """
        config, stats = self.config, self.stats
        failed = []
        if (np.equal.outer(candidate_index, candidate_index) & self.shared_mask).any():
            failed.append("shared_coordinate")
        coords_mm = coords * stats.mm_per_px
        source = stats.ssm.mean_shape
        stop = int(math.ceil(config.ransac_stop_fraction * len(coords)))
        transform, _ = ransac(
            (source, coords_mm),
            SimilarityTransform,
            min_samples=3,
            residual_threshold=config.ransac_threshold_mm,
            max_trials=config.ransac_max_trials,
            stop_sample_num=stop,
            stop_probability=config.ransac_stop_probability,
            rng=self.seed,
        )
        if transform is None:
            failed.append("stable_landmarks")
        else:
            residual = np.linalg.norm(transform(source) - coords_mm, axis=1)
            if (residual[config.stable_landmarks] > config.stable_max_mm).any():
                failed.append("stable_landmarks")
        aligned = align_to_mean(stats.ssm, coords_mm)
        if config.shape_rule == "box":
            b_params = stats.ssm.parameters(aligned)
            implausible = (np.abs(b_params) > config.shape_sd_limit * np.sqrt(stats.ssm.eigenvalues)).any()
        else:
            implausible = shape_distance(stats.ssm, aligned) > stats.shape_distance_limit
        if implausible:
            failed.append("shape_parameters")
        if len(strong_blobs):
            nearest = np.linalg.norm(strong_blobs[:, None] - coords[None], axis=-1).min(axis=1)
            if (nearest > config.blob_radius_px).any():
                failed.append("unassigned_blob")
        return failed
