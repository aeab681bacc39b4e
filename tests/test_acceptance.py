"""The MRF-SSM acceptance check: statistics, rules, pgmpy agreement, and the paper's criteria on
real hands (CV set 1) and on phantoms."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import SHARED_DATA, requires_shared_data

from datamodules import HandDataModule
from xraydiff.acceptance.checker import AcceptanceChecker
from xraydiff.acceptance.config import CEPH_SHARED_PAIRS, AcceptanceConfig, defaults_for
from xraydiff.acceptance.corruptions import KINDS, corrupted, render, sixth_finger, stretch_thumb
from xraydiff.acceptance.mrf import max_sum_bp, pgmpy_map
from xraydiff.acceptance.statistics import ShapeStatistics
from xraydiff.errors import DataError


def _phantom_split(split: str, count: int, seed: int = 0):
    dm = HandDataModule(image_size=(256, 256), annotations_only=True, seed=seed, phantom_counts={split: count})
    return dm.shape_table(split) if count >= 3 else None


@pytest.fixture(scope="module")
def phantom_stats():
    shapes, spacing, frame = _phantom_split("train", 400)
    return ShapeStatistics.fit(shapes, spacing, (256, 256), "hand", AcceptanceConfig(), frame)


@pytest.fixture(scope="module")
def phantom_test():
    shapes, _, _ = _phantom_split("test", 100)
    return shapes


def test_statistics_hold_what_the_check_needs(phantom_stats, tmp_path):
    stats = phantom_stats
    assert stats.mean_coords.shape == (37, 2) and stats.coord_covariance.shape == (37, 2, 2)
    assert stats.edges.shape[1] == 2 and len(stats.edges) > 60  # Delaunay over 37 points
    assert stats.t_params.shape == (len(stats.edges), 3) and (stats.t_params[:, 2] > 0).all()
    assert stats.ssm.modes.shape[1] == 74 and (np.diff(stats.ssm.eigenvalues) <= 0).all()
    assert stats.config.shared_pairs == [[2, 3]] and stats.config.stable_landmarks == list(range(18))
    assert stats.config.stable_max_mm == 16.0 and stats.config.unary_sigma_mm == 25.0
    stats.save(tmp_path / "s.json")
    loaded = ShapeStatistics.load(tmp_path / "s.json", num_landmarks=37)
    np.testing.assert_allclose(loaded.t_params, stats.t_params)
    np.testing.assert_allclose(loaded.ssm.modes, stats.ssm.modes)
    assert loaded.config == stats.config and loaded.shape_distance_limit == stats.shape_distance_limit
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["format"] == "xraydiff-shape-statistics" and data["version"] == 1


def test_bad_statistics_files_are_refused(phantom_stats, tmp_path):
    phantom_stats.save(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    (tmp_path / "v.json").write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(DataError, match="v.json: statistics file version 99"):
        ShapeStatistics.load(tmp_path / "v.json")
    with pytest.raises(DataError, match="for 37 landmarks, expected 19"):
        ShapeStatistics.load(tmp_path / "s.json", num_landmarks=19)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="not an xraydiff shape-statistics file"):
        ShapeStatistics.load(tmp_path / "x.json")


def test_config_defaults_and_validation():
    assert defaults_for("ceph", 19)["shared_pairs"] == CEPH_SHARED_PAIRS
    with pytest.raises(DataError, match="out of range"):
        AcceptanceConfig(stable_landmarks=[40]).resolved("hand", 37)
    with pytest.raises(DataError, match="rule_set"):
        AcceptanceConfig(rule_set="lenient").resolved("hand", 37)


def test_phantom_hands_pass_and_corruptions_fail_end_to_end(phantom_stats, phantom_test):
    checker = AcceptanceChecker(phantom_stats)
    real = checker.check(render(phantom_test))
    assert np.mean([v.accepted for v in real]) >= 0.97
    good = next(k for k, v in enumerate(real) if v.accepted)
    shape = phantom_test[good]
    np.testing.assert_allclose(real[good].landmarks, shape, atol=0.3)  # labels are the true blobs
    gone = shape.copy()
    gone[25] = np.nan  # a blob missing: two landmarks must share one
    assert "shared_coordinate" in checker.check(render([gone]))[0].failed_rules
    config, extra = sixth_finger(shape)
    verdict = checker.check(render([config], extras=[extra]))[0]
    assert "unassigned_blob" in verdict.failed_rules and not verdict.accepted
    # A faint stray blob between the index and middle fingertips (heatmap level 0.7: above the 0.5
    # strong-blob level, below the 37 true blobs, so every landmark keeps its own blob): only the
    # strict set's unassigned-blob rule sees it.
    heatmap = render([shape])
    stray = (shape[24] + shape[28]) / 2
    faint = render([stray[None]])  # one blob in [-1, 1]; as [0, 1] levels: (faint + 1) / 2
    heatmap = np.maximum(heatmap, 0.7 * (faint + 1) - 1)
    strict = checker.check(heatmap)[0]
    assert strict.failed_rules == ["unassigned_blob"] and not strict.accepted
    paper = AcceptanceChecker(phantom_stats, rule_set="paper").check(heatmap)[0]
    assert paper.accepted and paper.accepted_by_rule_set == {"paper": True, "strict": False}
    np.testing.assert_allclose(paper.landmarks, shape, atol=0.3)
    assert "shape_parameters" in checker.check(render([stretch_thumb(shape, 1.6)]))[0].failed_rules


def test_each_rule_on_labelled_configurations(phantom_stats, phantom_test):
    checker = AcceptanceChecker(phantom_stats)
    shape = phantom_test[0]
    index = np.arange(37)
    assert checker.rules.failed(shape, index, shape) == []
    # Rule (i): two landmarks on one candidate; the configured pair 2-3 may.
    shared = index.copy()
    shared[10] = shared[11]
    assert checker.rules.failed(shape, shared, shape) == ["shared_coordinate"]
    pair = index.copy()
    pair[3] = pair[2]
    assert "shared_coordinate" not in checker.rules.failed(shape, pair, shape)
    # Rule (ii): three wrist landmarks 25 mm off while RANSAC aligns on the rest.
    moved = shape.copy()
    moved[[0, 1, 6]] += 25.0 / phantom_stats.mm_per_px * np.array([1.0, 0.0])
    assert "stable_landmarks" in checker.rules.failed(moved, index, moved)
    # 10 mm is within the paper's 16 mm.
    near = shape.copy()
    near[[0, 1, 6]] += 10.0 / phantom_stats.mm_per_px * np.array([1.0, 0.0])
    assert "stable_landmarks" not in checker.rules.failed(near, index, near)
    # Strict: shape parameters outside the training distribution (a 50 % longer thumb).
    assert "shape_parameters" in checker.rules.failed(stretch_thumb(shape), index, stretch_thumb(shape))
    box = AcceptanceChecker(
        dataclasses.replace(phantom_stats, config=dataclasses.replace(phantom_stats.config, shape_rule="box"))
    )
    assert "shape_parameters" in box.rules.failed(stretch_thumb(shape, 1.8), index, stretch_thumb(shape, 1.8))
    # Strict: a strong blob nobody took.
    blobs = np.concatenate([shape, [[5.0, 5.0]]])
    assert checker.rules.failed(shape, index, blobs) == ["unassigned_blob"]


def _with_candidates(stats, count: int, rule_set: str = "paper") -> AcceptanceChecker:
    return AcceptanceChecker(
        dataclasses.replace(stats, config=dataclasses.replace(stats.config, candidate_count=count)), rule_set=rule_set
    )


def test_twice_l_candidates_keep_the_true_landmark_a_spurious_blob_pushes_out(phantom_stats, phantom_test):
    """A true hand whose ring-finger blob 30 is fainter (0.8) than a spurious blob in the image's corner: with the
    paper's L candidates that blob is the 38th maximum and is lost, the ring finger's landmarks slide along it
    (here two share a blob), with 2L every true blob is a candidate and the MRF labels them all."""
    shape = phantom_test[1]
    spurious = np.array([[20.0, 20.0]])
    heatmap = render([np.delete(shape, 30, axis=0)], extras=[spurious])
    heatmap = np.maximum(heatmap, 0.8 * (render([shape[[30]]]) + 1) - 1)
    paper_l = _with_candidates(phantom_stats, 37).check(heatmap)[0]
    assert np.linalg.norm(paper_l.landmarks - shape, axis=1).max() > 10  # px: mislabelled
    assert not paper_l.accepted and "shared_coordinate" in paper_l.failed_rules
    twice = _with_candidates(phantom_stats, 74).check(heatmap)[0]
    assert twice.accepted
    np.testing.assert_allclose(twice.landmarks, shape, atol=0.3)
    # The strict set still sees the spurious blob that nobody took.
    assert _with_candidates(phantom_stats, 74, "strict").check(heatmap)[0].failed_rules == ["unassigned_blob"]
    assert AcceptanceConfig().resolved("hand", 37).candidate_count == 37  # the paper's L by default


def test_the_pair_the_paper_lets_share_a_coordinate_shares_one_blob_when_there_is_one(phantom_stats, phantom_test):
    """The MRF's exclusion factor (not in the paper's eq. 5) also keeps landmarks 2 and 3 apart, so that each takes
    its own blob when both exist (without it both take one and, in the strict rules, the other blob is left
    unassigned: clean phantom hands fell from >= 97 % to 89 % accepted). It is finite: on one blob they share it,
    as rule (i) allows."""
    shape = phantom_test[0].copy()
    shape[3] = shape[2]
    for rule_set in ("paper", "strict"):
        verdict = AcceptanceChecker(phantom_stats, rule_set=rule_set).check(render([shape]))[0]
        assert verdict.accepted, verdict.failed_rules
        np.testing.assert_allclose(verdict.landmarks, shape, atol=0.3)
    other = phantom_test[0].copy()
    other[11] = other[10]  # any other pair on one blob is rejected
    assert not AcceptanceChecker(phantom_stats, rule_set="paper").check(render([other]))[0].accepted


def test_checks_are_deterministic_and_shape_checked(phantom_stats, phantom_test):
    heatmaps = render(phantom_test[:8])
    a = AcceptanceChecker(phantom_stats).check(heatmaps)
    b = AcceptanceChecker(phantom_stats).check(heatmaps)
    assert [v.to_json() for v in a] == [v.to_json() for v in b]
    with pytest.raises(DataError, match="heatmaps must be"):
        AcceptanceChecker(phantom_stats).check(heatmaps[:, :128])


def test_bp_agrees_with_pgmpy_mplp_on_random_loopy_cases(phantom_stats, phantom_test):
    """Random phantom hands, jittered by 1 pixel, every third with a stray blob, through the check's
    own MRF: Delaunay edges plus exclusion factors (loopy) over the pruned candidate sets."""
    rng = np.random.default_rng(5)
    cases = [shape + rng.normal(0, 1.0, shape.shape) for shape in phantom_test[:30]]
    extras = [rng.uniform(20, 230, (1, 2)) if k % 3 == 0 else None for k in range(30)]
    problem = AcceptanceChecker(phantom_stats).labeller.build_mrf((render(cases, extras=extras) + 1) / 2)
    assert (problem.available.sum(-1) > 1).any(-1).float().mean() > 0.5  # most samples hold real choices
    ours = max_sum_bp(problem.unary, problem.pairwise, problem.edges).labels.numpy()
    agree = [
        np.array_equal(
            ours[b],
            pgmpy_map(
                problem.unary[b].numpy(),
                problem.pairwise[b].numpy(),
                problem.edges.numpy(),
                "mplp",
                problem.available[b].numpy(),
            ),
        )
        for b in range(len(cases))
    ]
    assert np.mean(agree) >= 0.95


# -------------------------------------------------------------------------------- real hands


@pytest.fixture(scope="module")
def real_hands():
    # the 597 training hands of CV set 1, as in the paper (no validation hold-out)
    dm = HandDataModule(
        root=str(SHARED_DATA / "hand_dha"), split_dir="setup/cv/set1", annotations_only=True, val_fraction=0.0
    )
    shapes, spacing, frame = dm.shape_table("train")
    stats = ShapeStatistics.fit(shapes, spacing, (256, 256), "hand", AcceptanceConfig(), frame)
    return stats, dm.shape_table("test")[0]


@requires_shared_data
def test_real_hands_are_accepted(real_hands):
    stats, test = real_hands
    assert len(test) == 298
    verdicts = AcceptanceChecker(stats).check(render(test))
    assert np.mean([v.accepted for v in verdicts]) >= 0.97


@requires_shared_data
@pytest.mark.parametrize("kind", KINDS)
def test_corrupted_real_hands_are_rejected(real_hands, kind):
    stats, test = real_hands
    configurations, extras = corrupted(kind, test, stats.mm_per_px, seed=KINDS.index(kind))
    verdicts = AcceptanceChecker(stats).check(render(configurations, extras=extras))
    assert 1 - np.mean([v.accepted for v in verdicts]) >= 0.95


# ------------------------------------------------------------------ predicted configurations


def _ceph_checker(root):
    from callbacks.plausibility import fit_prediction_checker
    from datamodules import CephalometricDataModule

    dm = CephalometricDataModule(
        root=root, image_size=(320, 256), annotations_only=True, phantom_counts={"train": 150, "val": 60}
    )
    return fit_prediction_checker(dm), dm.shape_table("val")[0]


def _mirrored(shapes: np.ndarray, width: int = 256) -> np.ndarray:
    out = shapes.copy()
    out[..., 0] = width - 1 - out[..., 0]
    return out


def test_predicted_skulls_are_checked_and_mirrored_ones_flagged():
    checker, val = _ceph_checker(None)
    assert checker.stats.num_shapes == 150 and checker.stats.image_size == (320, 256)
    assert np.mean([not failed for failed in checker.check_configurations(val)]) >= 0.9
    # facing the other way: no rotation + scale + shift maps the mirrored skull onto the mean
    assert all("stable_landmarks" in failed for failed in checker.check_configurations(_mirrored(val)))
    with pytest.raises(DataError, match="configurations must be"):
        checker.check_configurations(val[:, :5])


@requires_shared_data
def test_real_test1_annotations_pass_and_their_mirror_images_fail():
    checker, val = _ceph_checker(str(SHARED_DATA / "isbi2015"))
    assert len(val) == 150
    # Limits chosen on the 150 training annotations alone (leave-one-out): measured 99.3 % of Test1
    # pass (97.3 % with the in-sample quantile); the bar is 98 %.
    assert checker.config.shape_calibration == "leave_one_out"
    assert np.mean([not failed for failed in checker.check_configurations(val)]) >= 0.98
    assert all("stable_landmarks" in failed for failed in checker.check_configurations(_mirrored(val)))


def test_leave_one_out_calibration_passes_new_shapes_at_its_nominal_rate():
    """Shapes drawn from one Gaussian shape model: the in-sample 99.5 % limit of 50 training shapes
    rejects far more than 0.5 % of new draws (the SSM fits its own shapes), the leave-one-out limit
    about its nominal share (a new draw is exchangeable with the 50 left-out ones, so it passes with
    probability about 49.75 / 51 = 97.5 %, up to the spread of a quantile this far out). New shapes
    are judged here by their own alignment and distance."""
    from xraydiff.acceptance.statistics import align_to_mean, shape_distance

    rng = np.random.default_rng(0)
    mean = rng.uniform(20, 100, size=(19, 2))
    modes = rng.normal(0, 1, size=(15, 19, 2))

    def draw(count: int) -> np.ndarray:
        return (
            mean + np.einsum("mk,kni->mni", rng.normal(0, 1.5, (count, 15)), modes) + rng.normal(0, 0.3, (count, 19, 2))
        )

    training, new = draw(50), draw(3000)
    passing = {}
    for calibration in ("training", "leave_one_out"):
        config = AcceptanceConfig(shape_calibration=calibration, stable_landmarks=list(range(19)))
        stats = ShapeStatistics.fit(training, np.ones(2), (128, 128), "other", config, edge_distributions=False)
        distances = np.array([shape_distance(stats.ssm, align_to_mean(stats.ssm, s)) for s in new])
        passing[calibration] = float((distances <= stats.shape_distance_limit).mean())
    assert passing["training"] < 0.85 and passing["leave_one_out"] > 0.9, passing
    with pytest.raises(DataError, match="shape_calibration must be one of"):
        AcceptanceConfig(shape_calibration="bootstrap").resolved("ceph", 19)
