"""Labelling heatmap candidates with the MRF of Hadzic et al. (eq. 5): candidates pruned around a
shape-model prediction, unary and pairwise energies, batched loopy max-sum BP (``mrf``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from xraydiff.acceptance.mrf import Candidates, find_candidates, max_sum_bp, pairwise_potentials, unary_potentials
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.errors import DataError
from xraydiff.landmarks.shape import apply_similarity, similarity_fit

# Energies of forbidden choices, finite so that BP and pgmpy (factors exp(energy)) see the same
# model: two landmarks on one blob, and a label slot without candidate. Both exceed any gain the
# other terms can offer (each pairwise term is at most about 2.2).
EXCLUSION = 50.0
UNAVAILABLE = 100.0


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


class MRFLabeller:
    """Batched MRF labelling of heatmaps against ``ShapeStatistics`` (their ``config`` holds every setting)."""

    def __init__(self, stats: ShapeStatistics):
        self.stats = stats
        self.config = stats.config
        self.mm_per_px = torch.from_numpy(stats.mm_per_px)
        self.mean_coords = torch.from_numpy(stats.mean_coords)
        self.edges = torch.from_numpy(stats.edges)
        self.mean_distance = torch.from_numpy(stats.mean_distance_mm)
        self.t_params = torch.from_numpy(stats.t_params)
        self.sigma_px = self.config.unary_sigma_mm / self.mm_per_px
        # Every pair is kept apart in the MRF (a finite penalty: when two landmarks have only one
        # blob between them they still share it); the shared pairs are then allowed by rule (i).
        self.exclusion_pairs = ~torch.eye(stats.num_landmarks, dtype=torch.bool)

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
