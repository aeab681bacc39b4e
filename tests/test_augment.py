import numpy as np
import pytest

from xraydiff.data.transforms import CEPH_RECIPE, apply_augmentation, build_augmentation, visible_landmarks
from xraydiff.errors import DataError


def _dot_image(points, size, sigma=1.5):
    ys, xs = np.mgrid[: size[0], : size[1]]
    image = np.zeros(size, np.float32)
    for x, y in points:
        image = np.maximum(image, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return image * 2 - 1


def _centroid_near(image, point, radius=4):
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    weight = ((image + 1) / 2) * (np.hypot(xs - point[0], ys - point[1]) < radius)
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


@pytest.mark.parametrize(
    "name", [entry["name"] for entry in CEPH_RECIPE if entry["name"] in ("Affine", "ScaledElasticTransform")]
)
def test_landmarks_move_with_the_image(name):
    size = (160, 128)
    rng = np.random.default_rng(0)
    points = rng.uniform(30, 100, size=(6, 2)).astype(np.float32)
    entry = next(e for e in CEPH_RECIPE if e["name"] == name)
    pipeline = build_augmentation([{**entry, "params": {**entry["params"], "p": 1.0}}], "none")
    for seed in range(3):
        image, moved, _ = apply_augmentation(pipeline, _dot_image(points, size), seed, points)
        assert moved.shape == points.shape
        # something happened (the paper's elastic moves a point by about 0.15 % of the image: 0.25 px here)
        assert np.abs(moved - points).max() > (0.1 if "Elastic" in name else 0.5)
        for k in range(len(points)):
            assert np.linalg.norm(_centroid_near(image, moved[k]) - moved[k]) < 0.35


@pytest.mark.parametrize("name", ["Affine", "ScaledElasticTransform"])
def test_the_ceph_recipe_moves_the_same_fraction_of_the_image_at_every_size(name):
    """The recipe's pixel quantities are the paper's at 800 x 640: at 160 x 128 a landmark moves by
    the same fraction of the image (mean over 40 draws of 50 points, within 25 %: the Gaussian's
    truncation and the border differ between a sigma of 30 px and one of 6 px)."""
    entry = next(e for e in CEPH_RECIPE if e["name"] == name)
    pipeline = build_augmentation([{**entry, "params": {**entry["params"], "p": 1.0}}], "none")
    fractions = {}
    for size in ((800, 640), (160, 128)):
        rng = np.random.default_rng(1)
        shifts = []
        for seed in range(40):
            points = (rng.uniform(0.25, 0.75, size=(50, 2)) * [size[1], size[0]]).astype(np.float32)
            _, moved, _ = apply_augmentation(pipeline, np.zeros(size, np.float32), seed, points)
            shifts.append(np.linalg.norm(moved - points, axis=1) / size[0])
        fractions[size] = float(np.mean(shifts))
    assert fractions[(160, 128)] == pytest.approx(fractions[(800, 640)], rel=0.25), fractions
    assert fractions[(160, 128)] > 0.001  # something moved


def test_published_ceph_recipe_keeps_every_landmark_in_order_and_reports_leavers():
    size = (120, 96)
    pipeline = build_augmentation("default", "ceph")
    points = np.array([[2.0, 2.0], [50.0, 60.0], [94.0, 118.0]], np.float32)
    left = 0
    for seed in range(40):
        _, moved, _ = apply_augmentation(pipeline, np.zeros(size, np.float32), seed, points)
        assert moved.shape == (3, 2) and np.isfinite(moved).all()
        assert np.linalg.norm(moved[1] - points[1]) < 25  # the middle one stays roughly in place
        left += int((~visible_landmarks(moved, size)).sum())
    assert left > 0  # corner landmarks sometimes leave the image and are reported, not dropped


def test_augmentation_is_reproducible_by_seed():
    pipeline = build_augmentation("default", "ceph")
    image = np.random.default_rng(1).uniform(-1, 1, (64, 48)).astype(np.float32)
    points = np.array([[10.0, 20.0]], np.float32)
    a = apply_augmentation(pipeline, image, 5, points)
    b = apply_augmentation(pipeline, image, 5, points)
    c = apply_augmentation(pipeline, image, 6, points)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].min() >= -1 and a[0].max() <= 1


def test_masks_follow_the_image():
    pipeline = build_augmentation([{"name": "Affine", "params": {"rotate": [20, 20], "p": 1.0}}], "none")
    image = -np.ones((64, 64), np.float32)
    image[20:40, 10:30] = 1
    mask = (image > 0).astype(np.uint8)
    out, _, out_mask = apply_augmentation(pipeline, image, 0, mask=mask)
    assert ((out > 0) == (out_mask > 0)).mean() > 0.97


@pytest.mark.parametrize(
    "spec,message",
    [
        ("fancy", "unknown augmentation preset"),
        ([{"name": "NoSuchTransform"}], "not an albumentations transform"),
        ([{"params": {}}], "must be a mapping with 'name'"),
        ([{"name": "Affine", "params": {"rotat": 3}}], "Affine"),
    ],
)
def test_bad_augmentation_specs_are_reported(spec, message):
    with pytest.raises(DataError, match=message):
        build_augmentation(spec, "ceph")
