"""Exact tests of the ZSL/GZSL metrics on hand-made score tables."""

from __future__ import annotations

import time

import numpy as np
import pytest

from niwt.evaluation import metrics as M

# Hand-made 4-sample GZSL case: seen classes {0, 1}, unseen {2, 3}, one sample per class.
# Flip points delta = max seen - max unseen: s0 -> 1, s1 -> 3, u2 -> 2, u3 -> -1; every
# within-group argmax is correct. Regions of gamma and (S, U):
#   (-inf,-1): (1, 0)  (-1,1): (1, .5)  (1,2): (.5, .5)  (2,3): (.5, 1)  (3,inf): (0, 1)
# Curve in (U, S): (0,1) (.5,1) (.5,.5) (1,.5) (1,0) -> area .5*1 + .5*.5 = 0.75.
SCORES4 = np.array(
    [
        [2.0, 0.0, 1.0, 0.5],  # label 0, delta 1
        [0.0, 4.0, 1.0, 0.0],  # label 1, delta 3
        [3.0, 0.0, 1.0, 0.0],  # label 2, delta 2
        [0.0, 1.0, 0.0, 2.0],  # label 3, delta -1
    ]
)
Y4 = np.array([0, 1, 2, 3])
SEEN4 = np.array([True, True, False, False])
UNSEEN_SAMPLE4 = np.array([False, False, True, True])


def test_per_class_accuracy_hand_table() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 0, 2])
    acc = M.per_class_accuracy(y_true, y_pred, np.array([0, 1, 2, 3]))
    assert acc == pytest.approx({0: 2 / 3, 1: 1 / 2, 2: 1.0})  # class 3 has no sample: left out
    assert M.mean_per_class_accuracy(y_true, y_pred) == pytest.approx(13 / 18)  # per-sample: 2/3
    assert M.mean_per_class_accuracy(y_true, y_pred, np.array([0, 1, 3])) == pytest.approx(7 / 12)
    assert M.mean_per_class_accuracy(np.array([], dtype=int), np.array([], dtype=int)) == 0.0


def test_harmonic_mean() -> None:
    assert M.harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3)
    assert M.harmonic_mean(0.0, 0.0) == 0.0
    assert M.harmonic_mean(1.0, 0.0) == 0.0
    assert M.harmonic_mean(0.7, 0.7) == pytest.approx(0.7)


def test_calibrated_stacking_flips_at_known_gamma() -> None:
    scores = np.array([[1.0, 0.2, 0.1], [0.9, 0.1, 0.6]])  # second sample flips at 0.9 - 0.6 = 0.3
    y = np.array([0, 2])
    seen = np.array([True, True, False])
    unseen_sample = np.array([False, True])
    assert M.calibrated_predict(scores, seen, 0.29).tolist() == [0, 0]
    assert M.calibrated_predict(scores, seen, 0.31).tolist() == [0, 2]
    assert M.gzsl_metrics(scores, y, seen, unseen_sample, 0.0) == {"S": 1.0, "U": 0.0, "H": 0.0}
    assert M.gzsl_metrics(scores, y, seen, unseen_sample, 0.31) == pytest.approx({"S": 1, "U": 1, "H": 1})
    assert M.gzsl_metrics(scores, y, seen, unseen_sample, 0.95) == {"S": 0.0, "U": 1.0, "H": 0.0}
    # integer indices work as well as a boolean mask
    assert M.calibrated_predict(scores, np.array([0, 1]), 0.31).tolist() == [0, 2]


def test_zsl_top1_restricts_to_unseen() -> None:
    scores = np.array([[5.0, 0.1, 0.9], [5.0, 0.8, 0.2], [5.0, 0.3, 0.4], [9.0, 0.0, 0.0]])
    y = np.array([2, 1, 1, 0])  # the seen sample (label 0) is dropped
    # class 2: 1/1, class 1: 1/2 -> 0.75
    assert M.zsl_top1(scores, y, np.array([1, 2])) == pytest.approx(0.75)
    assert M.zsl_top1(scores, y, np.array([False, True, True])) == pytest.approx(0.75)


def test_curve_hand_case_and_ausuc() -> None:
    gammas, s, u = M.seen_unseen_curve(SCORES4, Y4, SEEN4, UNSEEN_SAMPLE4)
    np.testing.assert_allclose(gammas, [-3.0, 0.0, 1.5, 2.5, 7.0])
    np.testing.assert_allclose(s, [1.0, 1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(u, [0.0, 0.5, 0.5, 1.0, 1.0])
    assert M.ausuc(s, u) == pytest.approx(0.75)
    perm = np.array([3, 0, 4, 2, 1])  # order of the input points does not matter
    assert M.ausuc(s[perm], u[perm]) == pytest.approx(0.75)
    assert M.ausuc(np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0])) == pytest.approx(1.0)


def test_curve_matches_gzsl_metrics_and_endpoints() -> None:
    rng = np.random.default_rng(0)
    n_s, n_u, n = 6, 4, 300
    y = np.concatenate([rng.integers(0, n_s, 180), rng.integers(n_s, n_s + n_u, 120)])
    unseen_sample = y >= n_s
    seen = np.arange(n_s + n_u) < n_s
    scores = rng.normal(size=(n, n_s + n_u))
    scores[np.arange(n), y] += 1.5
    gammas, s, u = M.seen_unseen_curve(scores, y, seen, unseen_sample)
    assert np.all(np.diff(gammas) > 0) and np.all(np.diff(s) <= 1e-12) and np.all(np.diff(u) >= -1e-12)
    for g, si, ui in zip(gammas, s, u, strict=True):
        m = M.gzsl_metrics(scores, y, seen, unseen_sample, g)
        assert (m["S"], m["U"]) == pytest.approx((si, ui), abs=1e-12)
    seen_only = M.mean_per_class_accuracy(y[~unseen_sample], np.argmax(scores[~unseen_sample][:, :n_s], 1))
    assert (s[0], u[0]) == pytest.approx((seen_only, 0.0))
    assert (s[-1], u[-1]) == pytest.approx((0.0, M.zsl_top1(scores, y, ~seen)))
    assert 0.0 <= M.ausuc(s, u) <= 1.0
    g_sub, s_sub, u_sub = M.seen_unseen_curve(scores, y, seen, unseen_sample, n_points=10)
    assert g_sub.size <= 10 and (s_sub[0], u_sub[-1]) == (s[0], u[-1])


def test_curve_is_fast_on_10k_by_200() -> None:
    rng = np.random.default_rng(1)
    n, c = 10_000, 200
    y = rng.integers(0, c, n)
    scores = rng.normal(size=(n, c)).astype(np.float32)
    seen = np.arange(c) < 150
    start = time.perf_counter()
    gammas, s, u = M.seen_unseen_curve(scores, y, seen, y >= 150)
    M.select_gamma(scores, y, seen, y >= 150)
    assert time.perf_counter() - start < 2.0
    assert gammas.size <= n + 1


def test_select_gamma_unique_best() -> None:
    # s0 (delta 3), u2 (delta 1), u3 (delta 2): H is 1 only on (2, 3) -> midpoint 2.5.
    scores = np.array([[4.0, 0.0, 1.0, 0.0], [2.0, 0.0, 1.0, 0.0], [3.0, 0.0, 0.0, 1.0]])
    y = np.array([0, 2, 3])
    seen = np.array([True, True, False, False])
    gamma = M.select_gamma(scores, y, seen, np.array([False, True, True]))
    assert gamma == pytest.approx(2.5)
    assert M.gzsl_metrics(scores, y, seen, np.array([False, True, True]), gamma)["H"] == 1.0


def test_select_gamma_ties() -> None:
    # H = 2/3 on (-1, 1) and on (2, 3): 0 lies inside the first -> no calibration.
    assert M.select_gamma(SCORES4, Y4, SEEN4, UNSEEN_SAMPLE4) == 0.0
    # shifting seen scores by +2 moves the regions to (1, 3) and (4, 5): smaller |gamma| wins.
    shifted = SCORES4 + 2.0 * SEEN4[None, :]
    assert M.select_gamma(shifted, Y4, SEEN4, UNSEEN_SAMPLE4) == pytest.approx(2.0)


def test_confusion_matrix() -> None:
    cm = M.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    assert cm.sum() == 5
