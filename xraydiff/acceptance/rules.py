"""The rules that accept or reject one labelled landmark configuration (Hadzic et al., sect. 2.2;
the rules themselves are described in ``xraydiff.acceptance.checker``)."""

from __future__ import annotations

import math

import numpy as np
from skimage.measure import ransac
from skimage.transform import SimilarityTransform

from xraydiff.acceptance.statistics import ShapeStatistics, align_to_mean, shape_distance


class AcceptanceRules:
    """The four rules over ``ShapeStatistics``; ``seed`` seeds RANSAC's random sampling."""

    def __init__(self, stats: ShapeStatistics, seed: int = 0):
        self.stats = stats
        self.config = stats.config
        self.seed = seed
        allowed = {tuple(sorted(pair)) for pair in self.config.shared_pairs}
        n = stats.num_landmarks
        # exclusive[i, j]: landmarks i and j may not take the same blob (symmetric).
        exclusive = np.array([[i != j and tuple(sorted((i, j))) not in allowed for j in range(n)] for i in range(n)])
        self.shared_mask = np.triu(exclusive, k=1)

    def failed(self, coords: np.ndarray, candidate_index: np.ndarray, strong_blobs: np.ndarray) -> list[str]:
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
