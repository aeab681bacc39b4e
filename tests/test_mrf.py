"""Each term of the MRF energy, the candidates, and belief propagation against pgmpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy import stats as scipy_stats

from xraydiff.acceptance.mrf import (
    Candidates,
    delaunay_edges,
    energy,
    find_candidates,
    knn_edges,
    max_sum_bp,
    pairwise_potentials,
    pgmpy_map,
    student_t_pdf,
    topology_edges,
    tree_edges,
    unary_potentials,
)


def test_student_t_pdf_matches_scipy():
    x = torch.linspace(-5, 60, 101, dtype=torch.float64)
    for df, loc, scale in ((1.5, 10.0, 2.0), (30.0, 25.0, 4.0), (1e6, 5.0, 1.0)):
        ours = student_t_pdf(x, torch.tensor(df), torch.tensor(loc), torch.tensor(scale)).numpy()
        np.testing.assert_allclose(ours, scipy_stats.t.pdf(x.numpy(), df, loc, scale), rtol=1e-6, atol=1e-12)


def test_unary_is_heatmap_value_times_gaussian_at_the_mean_position():
    candidates = Candidates(
        torch.tensor([[[10.0, 20.0], [40.0, 20.0]]], dtype=torch.float64),
        torch.tensor([[0.8, 0.5]], dtype=torch.float64),
        torch.tensor([[True, False]]),
    )
    mean = torch.tensor([[13.0, 24.0]], dtype=torch.float64)
    sigma = torch.tensor([25 / 0.5, 25 / 1.0], dtype=torch.float64)  # 25 mm at 0.5 and 1.0 mm per pixel
    unary = unary_potentials(candidates, mean, sigma)
    expected = 0.8 * math.exp(-0.5 * ((3 / 50) ** 2 + (4 / 25) ** 2))
    assert unary[0, 0, 0].item() == pytest.approx(expected)
    assert unary[0, 0, 1].item() == -math.inf  # not a candidate


def test_pairwise_is_t_pdf_plus_twice_the_distance_cost_in_mm():
    ci = torch.tensor([[[[0.0, 0.0]]]], dtype=torch.float64)
    cj = torch.tensor([[[[6.0, 8.0], [3.0, 0.0]]]], dtype=torch.float64)
    mm = torch.tensor([1.0, 2.0], dtype=torch.float64)  # distances: |(6, 16)| and |(3, 0)| mm
    t = torch.tensor([[4.0, 12.0, 3.0]], dtype=torch.float64)
    values = pairwise_potentials(ci, cj, mm, torch.tensor([15.0], dtype=torch.float64), t)[0, 0, 0]
    for value, d in zip(values.tolist(), (math.hypot(6, 16), 3.0), strict=True):
        assert value == pytest.approx(scipy_stats.t.pdf(d, 4, 12, 3) + 2 * math.exp(-abs(15 - d)))


def test_energy_sums_the_chosen_terms():
    unary = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    pairwise = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    edges = torch.tensor([[0, 1], [1, 2]])
    labels = torch.tensor([[1, 0, 1]])
    assert energy(labels, unary, pairwise, edges).item() == 2 + 3 + 6 + pairwise[0, 0, 1, 0] + pairwise[0, 1, 0, 1]


def test_candidates_are_the_strongest_local_maxima_refined_to_subpixel():
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:64, :64]
    truth = rng.uniform(5, 58, (6, 2))
    heights = np.linspace(1.0, 0.5, 6)
    heatmap = np.max(
        [h * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2.0) for (x, y), h in zip(truth, heights, strict=True)], axis=0
    ).astype(np.float32)
    found = find_candidates(heatmap[None], count=4, min_value=0.1)
    peaks = (heatmap == ndimage.maximum_filter(heatmap, 3)) & (heatmap >= 0.1)
    assert found.valid.all() and peaks.sum() == 6
    np.testing.assert_allclose(found.values[0].numpy(), np.sort(heatmap[peaks])[::-1][:4], rtol=1e-6)
    for x, y in found.coords[0].numpy():
        assert np.linalg.norm(truth - [x, y], axis=1).min() < 0.1  # sub-pixel
    assert not find_candidates(heatmap[None], count=10, min_value=0.1).valid[0, 6:].any()


def test_topologies():
    points = np.random.default_rng(1).uniform(0, 100, (20, 2))
    delaunay = delaunay_edges(points)
    assert (delaunay[:, 0] < delaunay[:, 1]).all() and len(delaunay) >= 2 * 20 - 3 - 10
    tree = tree_edges(points)
    assert len(tree) == 19 and len(np.unique(tree)) == 20
    assert set(map(tuple, knn_edges(points, 1))) <= set(map(tuple, delaunay))  # nearest neighbours are Delaunay edges
    with pytest.raises(ValueError, match="unknown MRF topology"):
        topology_edges("grid", points)


def _random_mrf(rng, edges, nodes=37, labels=4):
    """Potentials shaped like the check's: unary in [0, 1], pairwise = t-pdf-like + 2 exp(-|dd|)."""
    unary = torch.from_numpy(rng.uniform(0, 1, (1, nodes, labels)))
    mismatch = torch.from_numpy(rng.exponential(3.0, (1, len(edges), labels, labels)))
    pairwise = 0.1 * torch.exp(-mismatch / 4) + 2 * torch.exp(-mismatch)
    return unary, pairwise


def test_bp_on_trees_equals_pgmpys_exact_map():
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 100, (37, 2))
    edges = torch.from_numpy(tree_edges(points))
    for _ in range(5):
        unary, pairwise = _random_mrf(rng, edges)
        ours = max_sum_bp(unary, pairwise, edges, max_iterations=100)
        assert ours.converged.all()
        reference = pgmpy_map(unary[0].numpy(), pairwise[0].numpy(), edges.numpy(), "exact")
        np.testing.assert_array_equal(ours.labels[0].numpy(), reference)


def test_bp_is_batched_and_stops_when_converged():
    rng = np.random.default_rng(3)
    edges = torch.from_numpy(tree_edges(rng.uniform(0, 100, (10, 2))))
    unary, pairwise = _random_mrf(rng, edges, nodes=10)
    batch = max_sum_bp(unary.repeat(3, 1, 1), pairwise.repeat(3, 1, 1, 1), edges, max_iterations=200)
    single = max_sum_bp(unary, pairwise, edges, max_iterations=200)
    assert (batch.labels == single.labels).all() and batch.iterations < 200
