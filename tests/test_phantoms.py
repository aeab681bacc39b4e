import numpy as np
import pytest
from conftest import SHARED_DATA, requires_shared_data

from xraydiff.data.geometry import inside_image, to_original_pixels
from xraydiff.data.phantoms import PhantomShapeModel, ceph_phantom, hand_phantom, panoramic_phantom
from xraydiff.data.readers import read_ceph_dataset, read_hand_annotations, wrist_width_mm_per_px
from xraydiff.landmarks.shape import generalized_procrustes


@pytest.mark.parametrize("render,size,count", [(hand_phantom, (64, 48), 37), (ceph_phantom, (80, 64), 19)])
def test_landmark_phantoms_are_deterministic_and_inside(render, size, count):
    a, b, c = render(7, size), render(7, size), render(8, size)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert not np.array_equal(a.landmarks, c.landmarks)
    assert a.image.shape == size and a.image.dtype == np.float32
    assert a.image.min() >= -1 and a.image.max() <= 1 and a.image.std() > 0.1
    assert a.landmarks.shape == (count, 2) and inside_image(a.landmarks, size).all()
    assert a.mm_per_px > 0


def test_hand_phantom_spacing_follows_the_wrist_width_convention():
    sample = hand_phantom(3, (128, 128))
    original = to_original_pixels(sample.landmarks.astype(np.float64), sample.scale)
    assert sample.mm_per_px == pytest.approx(wrist_width_mm_per_px(original), rel=1e-4)


def test_bones_are_brighter_than_soft_tissue_at_landmarks():
    sample = hand_phantom(0, (256, 256))
    rows, cols = np.round(sample.landmarks[:, 1]).astype(int), np.round(sample.landmarks[:, 0]).astype(int)
    at_landmarks = sample.image[rows, cols].mean()
    assert at_landmarks > np.median(sample.image) + 0.3


def test_panoramic_phantom_has_teeth_and_a_thin_canal():
    image, labels = panoramic_phantom(5, (128, 256))
    assert image.shape == labels.shape == (128, 256)
    canal = labels == 1
    assert 0.002 < canal.mean() < 0.05
    teeth = set(np.unique(labels)) - {0, 1}
    assert teeth <= {10 * q + n for q in range(1, 5) for n in range(1, 9)} and len(teeth) >= 24
    # The canal lies below the lower teeth (larger row) on both sides of the image.
    lower_teeth_rows = np.nonzero(np.isin(labels, [41, 42, 31, 32]))[0]
    assert np.nonzero(canal)[0].mean() > lower_teeth_rows.mean()
    assert canal[:, :128].any() and canal[:, 128:].any()


def _procrustes_stats(shapes_mm):
    aligned, mean = generalized_procrustes(shapes_mm, scaling=False)
    return mean, aligned.std(axis=0)


def _phantom_shapes_mm(render, count):
    """Phantom landmarks in millimetres of their virtual original images."""
    shapes = []
    for seed in range(count):
        sample = render(seed, (256, 256), render=False)
        original = to_original_pixels(sample.landmarks.astype(np.float64), sample.scale)
        shapes.append(original * sample.mm_per_px)
    return np.stack(shapes)


def _mean_distance(shape_a, shape_b):
    """Mean landmark distance of two shapes after rigid alignment."""
    both, _ = generalized_procrustes(np.stack([shape_a, shape_b]), scaling=False)
    return np.linalg.norm(both[0] - both[1], axis=1).mean()


def test_geometry_only_phantoms_match_rendered_ones():
    for render in (hand_phantom, ceph_phantom):
        full, light = render(11, (96, 80)), render(11, (96, 80), render=False)
        assert light.image is None
        np.testing.assert_array_equal(full.landmarks, light.landmarks)
        assert full.mm_per_px == light.mm_per_px


@pytest.mark.parametrize("name,render", [("hand", hand_phantom), ("ceph", ceph_phantom)])
def test_phantoms_reproduce_the_committed_shape_model(name, render):
    model = PhantomShapeModel.load(name)
    mean, sd = _procrustes_stats(_phantom_shapes_mm(render, 1000))
    assert _mean_distance(mean, model.pdm.mean_shape) < 2.0
    # Total shape variance (sum of the PDM eigenvalues) is reproduced within 20 %.
    assert 0.8 < (sd**2).sum() / model.pdm.eigenvalues.sum() < 1.2


@requires_shared_data
def test_phantom_hands_have_landmark_statistics_close_to_the_real_ones():
    rows = read_hand_annotations(SHARED_DATA / "hand_dha/setup/all.csv")
    real = np.stack([p * wrist_width_mm_per_px(p) for p, _ in rows.values()])
    real_mean, real_sd = _procrustes_stats(real)
    phantom_mean, phantom_sd = _procrustes_stats(_phantom_shapes_mm(hand_phantom, 1000))
    assert _mean_distance(real_mean, phantom_mean) < 2.0
    spread_real, spread_phantom = np.linalg.norm(real_sd, axis=1), np.linalg.norm(phantom_sd, axis=1)
    assert 0.8 < spread_phantom.mean() / spread_real.mean() < 1.2
    assert np.corrcoef(spread_real, spread_phantom)[0, 1] > 0.8
    # Pixel spacing of the virtual originals spans the real range (wrist width 184-526 px).
    spacing = [hand_phantom(seed, (64, 64), render=False).mm_per_px for seed in range(300)]
    real_spacing = [wrist_width_mm_per_px(p) for p, _ in rows.values()]
    assert abs(np.mean(spacing) - np.mean(real_spacing)) < 0.01


@requires_shared_data
def test_phantom_skulls_have_landmark_statistics_close_to_the_real_ones():
    records = [r for split in read_ceph_dataset(SHARED_DATA / "isbi2015").values() for r in split]
    real_mean, real_sd = _procrustes_stats(np.stack([r.landmarks * 0.1 for r in records]))
    phantom_mean, phantom_sd = _procrustes_stats(_phantom_shapes_mm(ceph_phantom, 1000))
    assert _mean_distance(real_mean, phantom_mean) < 2.0
    spread_real, spread_phantom = np.linalg.norm(real_sd, axis=1), np.linalg.norm(phantom_sd, axis=1)
    assert 0.8 < spread_phantom.mean() / spread_real.mean() < 1.2
    assert np.corrcoef(spread_real, spread_phantom)[0, 1] > 0.8
