"""Shape statistics: similarity alignment, generalised Procrustes analysis and the point
distribution model x = x_m + P b of Cootes et al. (Hadzic et al., sect. 2.2.2).

Shapes are (N, 2) arrays of landmark coordinates; batches are (M, N, 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def similarity_fit(
    source: np.ndarray, target: np.ndarray, scaling: bool = True
) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares similarity transform mapping ``source`` onto ``target`` (Umeyama, 1991).

    Finds rotation R (2, 2), scale s and translation t minimising sum_i ||s R p_i + t - q_i||^2.
    Batched: ``source`` and ``target`` may be (..., N, 2); R is then (..., 2, 2), s (...), t (..., 2).
    """
    mu_p, mu_q = source.mean(axis=-2, keepdims=True), target.mean(axis=-2, keepdims=True)
    p, q = source - mu_p, target - mu_q
    covariance = np.swapaxes(q, -1, -2) @ p  # (..., 2, 2) = sum q p^T
    u, sigma, vt = np.linalg.svd(covariance)
    d = np.sign(np.linalg.det(u @ vt))
    correction = np.ones(sigma.shape)
    correction[..., -1] = d
    rotation = (u * correction[..., None, :]) @ vt
    if scaling:
        variance = (p**2).sum(axis=(-1, -2))
        scale = (sigma * correction).sum(axis=-1) / np.maximum(variance, 1e-12)
    else:
        scale = np.ones(sigma.shape[:-1])
    translation = mu_q[..., 0, :] - scale[..., None] * (rotation @ mu_p[..., 0, :, None])[..., 0]
    return rotation, scale, translation


def apply_similarity(points: np.ndarray, rotation: np.ndarray, scale, translation: np.ndarray) -> np.ndarray:
    """s R p + t for points (..., N, 2)."""
    scale = np.asarray(scale)
    return scale[..., None, None] * (points @ np.swapaxes(rotation, -1, -2)) + translation[..., None, :]


def generalized_procrustes(
    shapes: np.ndarray, scaling: bool = True, iterations: int = 100, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes alignment (Gower, 1975) of (M, N, 2) shapes.

    Iteratively aligns every shape to the current mean and re-estimates the mean. The mean keeps
    the orientation of the first shape (centroid at the origin) and the average centroid size of
    the shapes, so it stays in the shapes' own units (for example millimetres).

    Returns (aligned shapes (M, N, 2), mean shape (N, 2)).
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    reference = centred[0]
    mean = reference.copy()
    aligned = centred
    for _ in range(iterations):
        rotation, scale, translation = similarity_fit(centred, mean[None], scaling)
        aligned = apply_similarity(centred, rotation, scale, translation)
        new_mean = aligned.mean(axis=0)
        # Re-anchor the mean to the reference frame so that the iteration cannot drift or shrink.
        r, s, t = similarity_fit(new_mean, reference, scaling)
        new_mean = apply_similarity(new_mean, r, s, t)
        new_mean -= new_mean.mean(axis=0)
        change = float(np.abs(new_mean - mean).max())
        mean = new_mean
        if change < tol:
            break
    if scaling:
        sizes = np.sqrt((centred**2).sum(axis=(1, 2)))
        mean *= sizes.mean() / np.sqrt((mean**2).sum())
    rotation, scale, translation = similarity_fit(centred, mean[None], scaling)
    return apply_similarity(centred, rotation, scale, translation), mean


@dataclass
class PointDistributionModel:
    """x = x_m + P b (Cootes et al., 1995).

    Attributes:
        mean_shape: (N, 2) mean of the aligned training shapes.
        modes: (K, 2N) orthonormal eigenvectors P^T of the covariance, largest first.
        eigenvalues: (K,) variances lambda_k of the shape parameters b_k.
    """

    mean_shape: np.ndarray
    modes: np.ndarray
    eigenvalues: np.ndarray

    @classmethod
    def fit(cls, aligned: np.ndarray, variance_share: float = 0.98) -> PointDistributionModel:
        """PCA of (M, N, 2) aligned shapes keeping the fewest modes that explain ``variance_share``."""
        flat = aligned.reshape(len(aligned), -1)
        mean = flat.mean(axis=0)
        _, singular, vt = np.linalg.svd(flat - mean, full_matrices=False)
        eigenvalues = singular**2 / max(len(aligned) - 1, 1)
        share = np.cumsum(eigenvalues) / max(eigenvalues.sum(), 1e-12)
        count = int(np.searchsorted(share, variance_share - 1e-12) + 1)
        count = min(count, len(eigenvalues))
        return cls(mean.reshape(-1, 2), vt[:count], eigenvalues[:count])

    @property
    def num_landmarks(self) -> int:
        return self.mean_shape.shape[0]

    def shape(self, b: np.ndarray) -> np.ndarray:
        """Shapes (..., N, 2) for parameters b (..., K)."""
        return self.mean_shape + (np.asarray(b) @ self.modes).reshape(*np.shape(b)[:-1], -1, 2)

    def parameters(self, shapes: np.ndarray) -> np.ndarray:
        """b = P^T (x - x_m) for shapes (..., N, 2) already in the model frame."""
        flat = (np.asarray(shapes) - self.mean_shape).reshape(*np.shape(shapes)[:-2], -1)
        return flat @ self.modes.T
