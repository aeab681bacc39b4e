"""Landmark matching with a Markov random field (Hadzic et al., sect. 2.2.1), batched.

A generated heatmap holds blobs; each landmark i picks one candidate c_i so that the energy

    f(c) = sum_i U_i(c_i) + sum_{(i,j) in E} B_ij(c_i, c_j)                          (eq. 5)

is maximal, with
    U_i(c)    = h(c) * exp(-|c - mu_i|^2 / (2 sigma^2)),   sigma = 25 mm  (heatmap value times a
                Gaussian at the landmark's mean training position),
    B_ij(c,d) = t_ij(|c - d|) + 2 exp(-| dbar_ij - |c - d| |)   (pdf of the Student-t fitted to
                the training distances of the edge, plus a distance cost; distances in mm).

The maximisation is loopy max-sum belief propagation, vectorised over samples, edges and
candidates. ``to_pgmpy`` expresses the same model as a pgmpy Markov network (factors exp(U),
exp(B)), the reference in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import Delaunay
from torch import Tensor

# ------------------------------------------------------------------------------------ topology


def delaunay_edges(points: np.ndarray) -> np.ndarray:
    """Undirected edges (E, 2), i < j, of the Delaunay triangulation of (N, 2) points."""
    simplices = Delaunay(points).simplices
    edges = {
        tuple(sorted((int(a), int(b))))
        for tri in simplices
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[0], tri[2]))
    }
    return np.array(sorted(edges), dtype=np.int64)


def knn_edges(points: np.ndarray, k: int) -> np.ndarray:
    """Undirected edges joining every point to its ``k`` nearest neighbours."""
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, :k]
    edges = {tuple(sorted((i, int(j)))) for i in range(len(points)) for j in nearest[i]}
    return np.array(sorted(edges), dtype=np.int64)


def tree_edges(points: np.ndarray) -> np.ndarray:
    """Edges of the Euclidean minimum spanning tree (a tree-shaped MRF: max-sum BP is exact)."""
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    tree = minimum_spanning_tree(distance).tocoo()
    return np.array(
        sorted(tuple(sorted((int(a), int(b)))) for a, b in zip(tree.row, tree.col, strict=True)), dtype=np.int64
    )


def topology_edges(kind: str, points: np.ndarray, k: int = 4) -> np.ndarray:
    """Edges of the MRF topology ``kind`` ('delaunay', 'knn' or 'tree') over the mean shape."""
    if kind == "delaunay":
        return delaunay_edges(points)
    if kind == "knn":
        return knn_edges(points, k)
    if kind == "tree":
        return tree_edges(points)
    raise ValueError(f"unknown MRF topology {kind!r}; choose 'delaunay', 'knn' or 'tree'")


# ---------------------------------------------------------------------------------- candidates


@dataclass
class Candidates:
    """Local maxima of a batch of heatmaps, strongest first.

    ``coords`` (B, K, 2) sub-pixel (x, y); ``values`` (B, K) heatmap values in [0, 1];
    ``valid`` (B, K) False where a sample has fewer than K maxima.
    """

    coords: Tensor
    values: Tensor
    valid: Tensor


def find_candidates(heatmaps: np.ndarray, count: int, min_value: float = 0.1, window: int = 3) -> Candidates:
    """The ``count`` strongest local maxima of each (H, W) heatmap in [0, 1] (maximum filter).

    A pixel is a maximum if it equals the maximum of its ``window`` x ``window`` neighbourhood
    (``scipy.ndimage.maximum_filter``) and is at least ``min_value``. Positions are refined to
    sub-pixel precision by a parabola through the peak and its neighbours along each axis.
    """
    heatmaps = np.ascontiguousarray(heatmaps, dtype=np.float32)
    batch, height, width = heatmaps.shape
    peaks = heatmaps == ndimage.maximum_filter(heatmaps, size=(1, window, window), mode="constant", cval=-np.inf)
    peaks &= heatmaps >= min_value
    # Plateaus (two equal neighbouring pixels) would give one blob twice: keep the first pixel.
    peaks[:, :, 1:] &= ~(peaks[:, :, :-1] & (heatmaps[:, :, 1:] == heatmaps[:, :, :-1]))
    peaks[:, 1:, :] &= ~(peaks[:, :-1, :] & (heatmaps[:, 1:, :] == heatmaps[:, :-1, :]))
    scores = torch.from_numpy(np.where(peaks, heatmaps, -np.inf).reshape(batch, -1))
    k = min(count, scores.shape[1])
    values, flat = scores.topk(k, dim=1)
    valid = torch.isfinite(values)
    rows, cols = flat // width, flat % width
    h = torch.from_numpy(heatmaps)
    b = torch.arange(batch)[:, None]

    def at(r, c):
        return h[b, r.clamp(0, height - 1), c.clamp(0, width - 1)]

    centre = at(rows, cols)
    # No refinement across the border (the neighbour outside would be a clamped copy).
    inner_x = (cols > 0) & (cols < width - 1)
    inner_y = (rows > 0) & (rows < height - 1)
    dx = torch.where(inner_x, _parabola_offset(at(rows, cols - 1), centre, at(rows, cols + 1)), 0.0)
    dy = torch.where(inner_y, _parabola_offset(at(rows - 1, cols), centre, at(rows + 1, cols)), 0.0)
    coords = torch.stack([cols + dx, rows + dy], dim=-1).double()
    values = torch.where(valid, values, torch.zeros_like(values)).double()
    return Candidates(coords, values, valid)


def _parabola_offset(left: Tensor, centre: Tensor, right: Tensor) -> Tensor:
    curvature = left - 2 * centre + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-12), torch.zeros_like(centre))
    return offset.clamp(-0.5, 0.5)


# -------------------------------------------------------------------------------- energy terms


def unary_potentials(candidates: Candidates, mean_coords: Tensor, sigma_px: Tensor) -> Tensor:
    """U_i(c) = h(c) * exp(-|(c - mu_i) / sigma|^2 / 2): (B, N, K), -inf for invalid candidates.

    ``mean_coords`` (N, 2) model pixels, ``sigma_px`` (2,) the 25 mm of the paper in x and y pixels.
    """
    offset = (candidates.coords[:, None, :, :] - mean_coords[None, :, None, :]) / sigma_px
    unary = candidates.values[:, None, :] * torch.exp(-0.5 * (offset**2).sum(-1))
    return torch.where(candidates.valid[:, None, :], unary, torch.full_like(unary, -math.inf))


def student_t_pdf(x: Tensor, df: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """pdf of the location-scale Student-t, as ``scipy.stats.t.pdf(x, df, loc, scale)``."""
    z = (x - loc) / scale
    half = df / 2
    # log Gamma(x + 1/2) - log Gamma(x): lgamma differences cancel catastrophically for large x
    # (fitted df reach 1e6), so use the asymptotic series there (error below 1e-9 for x > 50).
    series = 0.5 * torch.log(half) - 1 / (8 * half) + 1 / (192 * half**3)
    gamma_ratio = torch.where(
        half > 50, series, torch.lgamma(half.clamp(max=50) + 0.5) - torch.lgamma(half.clamp(max=50))
    )
    log_norm = gamma_ratio - 0.5 * torch.log(df * math.pi) - torch.log(scale)
    return torch.exp(log_norm - (df + 1) / 2 * torch.log1p(z**2 / df))


def pairwise_potentials(
    coords_i: Tensor, coords_j: Tensor, mm_per_px: Tensor, mean_distance: Tensor, t_params: Tensor
) -> Tensor:
    """B_ij(c, d) = t_ij(|c - d|) + 2 exp(-|dbar_ij - |c - d||), distances in mm.

    ``coords_i`` (B, E, Mi, 2), ``coords_j`` (B, E, Mj, 2) model pixels of the candidates of the
    two ends of each edge; ``mean_distance`` (E,) and ``t_params`` (E, 3) = (df, loc, scale).
    Returns (B, E, Mi, Mj).
    """
    delta = (coords_i[:, :, :, None, :] - coords_j[:, :, None, :, :]) * mm_per_px
    distance = torch.linalg.vector_norm(delta, dim=-1)
    df, loc, scale = (t_params[:, k][None, :, None, None] for k in range(3))
    pdf = student_t_pdf(distance, df, loc, scale)
    return pdf + 2.0 * torch.exp(-(mean_distance[None, :, None, None] - distance).abs())


def energy(labels: Tensor, unary: Tensor, pairwise: Tensor, edges: Tensor) -> Tensor:
    """f(c) of eq. 5 for labels (B, N): sum of the chosen unary and pairwise terms, (B,)."""
    batch = torch.arange(labels.shape[0])[:, None]
    unary_sum = unary.gather(2, labels[:, :, None])[..., 0].sum(1)
    li, lj = labels[:, edges[:, 0]], labels[:, edges[:, 1]]
    e = torch.arange(edges.shape[0])[None, :]
    return unary_sum + pairwise[batch, e, li, lj].sum(1)


# ---------------------------------------------------------------------------- belief propagation


@dataclass
class MaxSumResult:
    labels: Tensor  # (B, N) candidate index per landmark
    energy: Tensor  # (B,)
    iterations: int
    converged: Tensor  # (B,) bool


def max_sum_bp(
    unary: Tensor,
    pairwise: Tensor,
    edges: Tensor,
    damping: float = 0.5,
    max_iterations: int = 50,
    tolerance: float = 1e-6,
    polish: bool = True,
) -> MaxSumResult:
    """Loopy max-sum belief propagation, batched over samples.

    Messages m_{s->t}(x_t) = max_{x_s} [U_s(x_s) + B_st(x_s, x_t) + sum_{k in N(s)\\t} m_{k->s}(x_s)],
    normalised to a maximum of 0 and damped, m <- damping * m_old + (1 - damping) * m_new.
    A sample stops updating once no message moves more than ``tolerance``; the loop ends when
    every sample has converged or after ``max_iterations``. Labels maximise the beliefs
    U_i + sum of incoming messages (exact, the MAP, on trees) and are then polished by ``icm``.

    Args:
        unary: (B, N, M) unary terms (-inf for unavailable candidates).
        pairwise: (B, E, M, M) pairwise terms for edges (E, 2) = (i, j), indexed [x_i, x_j].
    """
    batch, nodes, labels_count = unary.shape
    num_edges = edges.shape[0]
    # Directed edges: d < E is i -> j, d >= E is j -> i; reverse(d) = d +- E.
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    reverse = torch.cat([torch.arange(num_edges, 2 * num_edges), torch.arange(num_edges)])
    directed = torch.cat([pairwise, pairwise.transpose(-1, -2)], dim=1)  # (B, 2E, M_src, M_dst)
    finite_unary = torch.where(torch.isfinite(unary), unary, torch.full_like(unary, -1e9))
    messages = unary.new_zeros(batch, 2 * num_edges, labels_count)
    active = torch.ones(batch, dtype=torch.bool)
    iteration = 0
    for iteration in range(1, max_iterations + 1):  # noqa: B007 - the count is reported
        incoming = unary.new_zeros(batch, nodes, labels_count).index_add_(1, dst, messages)
        belief = finite_unary[:, src] + incoming[:, src] - messages[:, reverse]
        new = (belief[..., :, None] + directed).amax(dim=-2)
        new = new - new.amax(dim=-1, keepdim=True)
        updated = damping * messages + (1 - damping) * new
        change = (updated - messages).abs().flatten(1).amax(dim=1)
        messages = torch.where(active[:, None, None], updated, messages)
        active &= change > tolerance
        if not active.any():
            break
    incoming = unary.new_zeros(batch, nodes, labels_count).index_add_(1, dst, messages)
    labels = (finite_unary + incoming).argmax(dim=-1)
    if polish:
        labels = icm(labels, finite_unary, pairwise, edges)
    return MaxSumResult(labels, energy(labels, finite_unary, pairwise, edges), iteration, ~active)


def icm(labels: Tensor, unary: Tensor, pairwise: Tensor, edges: Tensor, max_sweeps: int = 10) -> Tensor:
    """Iterated conditional modes (Besag, 1986): each node in turn takes the label maximising its
    unary plus the pairwise terms with its neighbours' current labels, until no label changes.
    The energy never decreases; started from loopy BP's labels it repairs the local errors BP
    makes on frustrated graphs. Batched over samples."""
    labels = labels.clone()
    batch = torch.arange(labels.shape[0])
    incident = [
        (torch.nonzero(edges[:, 0] == i)[:, 0], torch.nonzero(edges[:, 1] == i)[:, 0]) for i in range(unary.shape[1])
    ]
    for _ in range(max_sweeps):
        changed = False
        for i, (as_first, as_second) in enumerate(incident):
            score = unary[:, i].clone()
            for e in as_first.tolist():  # edge (i, j): pairwise[b, e, x_i, x_j]
                score += pairwise[batch, e, :, labels[:, edges[e, 1]]]
            for e in as_second.tolist():  # edge (j, i): pairwise[b, e, x_j, x_i]
                score += pairwise[batch, e, labels[:, edges[e, 0]], :]
            best = score.argmax(dim=-1)
            improved = score.gather(1, best[:, None])[:, 0] > score.gather(1, labels[:, i : i + 1])[:, 0] + 1e-12
            if improved.any():
                labels[:, i] = torch.where(improved, best, labels[:, i])
                changed = True
        if not changed:
            break
    return labels


# ------------------------------------------------------------------------------- pgmpy reference


def to_pgmpy(
    unary: np.ndarray,
    pairwise: np.ndarray,
    edges: np.ndarray,
    available: np.ndarray | None = None,
    log_potentials: bool = False,
):
    """The MRF of one sample as a pgmpy ``DiscreteMarkovNetwork``.

    Factors are exp(U_i) and exp(B_ij), whose product pgmpy's junction-tree inference maximises,
    or with ``log_potentials`` the energies U_i and B_ij themselves, whose sum pgmpy's Mplp
    maximises. Either way the optimum is the maximum of eq. 5. ``available`` (N, M) marks the label
    slots that hold a candidate; each variable ``L{i}`` gets only those as states (padding slots
    would make the dual decoding degenerate). Energies must be finite.
    Returns (network, states) with ``states[i]`` the label slots of variable i.
    """
    from pgmpy.factors.discrete import DiscreteFactor
    from pgmpy.models import DiscreteMarkovNetwork

    nodes, labels_count = unary.shape
    if available is None:
        available = np.ones_like(unary, dtype=bool)
    states = [np.flatnonzero(available[i]) for i in range(nodes)]
    network = DiscreteMarkovNetwork()
    network.add_nodes_from([f"L{i}" for i in range(nodes)])
    network.add_edges_from([(f"L{i}", f"L{j}") for i, j in edges])
    potential = (lambda x: x) if log_potentials else np.exp
    factors = [DiscreteFactor([f"L{i}"], [len(states[i])], potential(unary[i, states[i]])) for i in range(nodes)]
    factors += [
        DiscreteFactor(
            [f"L{i}", f"L{j}"], [len(states[i]), len(states[j])], potential(pairwise[e][np.ix_(states[i], states[j])])
        )
        for e, (i, j) in enumerate(edges)
    ]
    network.add_factors(*factors)
    return network, states


def pgmpy_map(
    unary: np.ndarray,
    pairwise: np.ndarray,
    edges: np.ndarray,
    method: str = "mplp",
    available: np.ndarray | None = None,
) -> np.ndarray:
    """MAP labels (N,) of one sample by pgmpy.

    'mplp': pgmpy's Mplp (LP relaxation with triplet tightening, on log-potentials). 'exact': max-product
    calibration of pgmpy's junction tree, then each variable's max-marginal maximised: the exact
    MAP when it is unique, for any topology (exponential in the tree width, so meant for trees).
    """
    from pgmpy.inference import BeliefPropagation, Mplp

    if method == "mplp":
        # pgmpy's Mplp only records assignments whose total exceeds 0 (its initial best); a constant
        # added to every unary factor keeps the maximiser and makes every total positive.
        bound = np.abs(unary).sum() + np.abs(pairwise).sum()
        unary = unary + bound / unary.shape[0]
    network, states = to_pgmpy(unary, pairwise, edges, available, log_potentials=method == "mplp")
    names = [f"L{i}" for i in range(unary.shape[0])]
    if method == "mplp":
        assignment = Mplp(network).map_query()
        return np.array([int(states[i][int(assignment[name])]) for i, name in enumerate(names)])
    if method != "exact":
        raise ValueError(f"unknown pgmpy method {method!r}")
    propagation = BeliefPropagation(network)
    propagation.max_calibrate()
    beliefs = propagation.get_clique_beliefs()
    labels = []
    for name in names:
        clique = next(c for c in beliefs if name in c)
        others = [v for v in beliefs[clique].scope() if v != name]
        marginal = beliefs[clique].maximize(others, inplace=False) if others else beliefs[clique]
        labels.append(int(states[len(labels)][int(np.argmax(marginal.values))]))
    return np.array(labels)
