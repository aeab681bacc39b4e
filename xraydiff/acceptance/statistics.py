"""Shape statistics of the training landmarks: everything the acceptance check needs, fitted once
(``ShapeStatistics.fit``) and saved as one versioned JSON file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from xraydiff.acceptance.config import AcceptanceConfig
from xraydiff.acceptance.mrf import topology_edges
from xraydiff.data.imageio import atomic_write_bytes
from xraydiff.errors import DataError
from xraydiff.landmarks.shape import PointDistributionModel, apply_similarity, generalized_procrustes, similarity_fit

STATS_FORMAT = "xraydiff-shape-statistics"
STATS_VERSION = 1


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

        ``edge_distributions=False`` skips the Student-t fits of the pairwise term (one fit per edge, the
        slow part): such statistics serve ``check_configurations`` only, not the MRF labelling of heatmaps.
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
