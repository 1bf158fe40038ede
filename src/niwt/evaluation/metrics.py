"""Zero-shot evaluation metrics: the Xian et al. per-class protocol and calibrated stacking.

All functions take scores over the project's joint label space: columns ``0..S-1`` are seen classes
and ``S..S+U-1`` unseen, but nothing here relies on that order; seen columns are named by a boolean
mask so any layout works. Accuracies are fractions in [0, 1] (multiply by 100 for tables).

Per-class averaging (Xian et al., TPAMI'18) is used everywhere because the benchmarks are
imbalanced: a per-sample mean would let the large classes dominate. Calibrated stacking (Chao et
al., ECCV'16) subtracts ``gamma`` from every seen-class score; sweeping ``gamma`` traces the
seen-unseen accuracy curve whose area is AUSUC.
"""

from __future__ import annotations

import numpy as np


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> dict[int, float]:
    """Top-1 accuracy of each class, so that imbalanced classes can be weighted equally.

    Args:
        y_true: (N,) true labels.
        y_pred: (N,) predicted labels.
        classes: classes to report. A class with no sample in ``y_true`` is left out (its accuracy
            is undefined, and counting it as 0 would punish a split for a missing class).

    Returns:
        ``{class: fraction of its samples predicted correctly}``.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    out: dict[int, float] = {}
    for c in np.asarray(classes).ravel():
        sel = y_true == c
        n = int(sel.sum())
        if n:
            out[int(c)] = float((y_pred[sel] == c).sum() / n)
    return out


def mean_per_class_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray | None = None
) -> float:
    """Mean over classes of per-class top-1 (Xian et al.), the headline ZSL/GZSL number.

    Args:
        y_true: (N,) true labels.
        y_pred: (N,) predicted labels.
        classes: classes to average over; None means the classes present in ``y_true``. Classes
            absent from ``y_true`` are ignored either way.

    Returns:
        A fraction in [0, 1]; 0.0 when no class has a sample.
    """
    y_true = np.asarray(y_true).ravel()
    if classes is None:
        classes = np.unique(y_true)
    accs = per_class_accuracy(y_true, y_pred, classes)
    return float(np.mean(list(accs.values()))) if accs else 0.0


def harmonic_mean(s: float, u: float) -> float:
    """GZSL harmonic mean ``H = 2SU/(S+U)``: high only when both seen and unseen are good.

    Returns 0.0 when ``s + u == 0`` (the limit, and avoids a division by zero).
    """
    return 0.0 if s + u == 0 else float(2.0 * s * u / (s + u))


def _mask(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """A boolean (n_classes,) mask from either a boolean mask or integer class indices."""
    classes = np.asarray(classes)
    if classes.dtype == bool:
        if classes.shape != (n_classes,):
            raise ValueError(f"class mask has shape {classes.shape}, expected ({n_classes},)")
        return classes
    mask = np.zeros(n_classes, dtype=bool)
    mask[classes.astype(int).ravel()] = True
    return mask


def calibrated_predict(scores: np.ndarray, seen_mask_classes: np.ndarray, gamma: float = 0.0) -> np.ndarray:
    """Calibrated-stacking argmax: subtract ``gamma`` from seen scores, then argmax over all classes.

    Args:
        scores: (N, C) class scores.
        seen_mask_classes: (C,) bool, True for seen classes.
        gamma: calibration; 0 is plain stacking, larger values favour unseen classes.

    Returns:
        (N,) predicted class indices (ties go to the lowest index, as ``np.argmax``).
    """
    scores = np.asarray(scores)
    seen = _mask(seen_mask_classes, scores.shape[1])
    return np.argmax(scores - gamma * seen[None, :], axis=1)


def gzsl_metrics(
    scores: np.ndarray,
    y_true: np.ndarray,
    seen_mask_classes: np.ndarray,
    is_unseen_sample: np.ndarray,
    gamma: float = 0.0,
) -> dict[str, float]:
    """GZSL S, U and H at one calibration ``gamma`` (Xian et al. protocol).

    Args:
        scores: (N, S+U) scores over the joint label space.
        y_true: (N,) true labels in the joint space.
        seen_mask_classes: (S+U,) bool, True for seen classes.
        is_unseen_sample: (N,) bool, True for test-unseen samples, False for test-seen ones.
        gamma: calibrated-stacking offset subtracted from seen scores.

    Returns:
        ``{"S": acc on seen samples, "U": acc on unseen samples, "H": harmonic mean}``, each the
        per-class mean over the classes present in that subset.
    """
    y_true = np.asarray(y_true).ravel()
    unseen_s = np.asarray(is_unseen_sample, dtype=bool).ravel()
    pred = calibrated_predict(scores, seen_mask_classes, gamma)
    s = mean_per_class_accuracy(y_true[~unseen_s], pred[~unseen_s])
    u = mean_per_class_accuracy(y_true[unseen_s], pred[unseen_s])
    return {"S": s, "U": u, "H": harmonic_mean(s, u)}


def zsl_top1(scores: np.ndarray, y_true: np.ndarray, unseen_classes: np.ndarray) -> float:
    """Conventional ZSL accuracy: argmax restricted to unseen classes, per-class mean.

    Args:
        scores: (N, C) scores over the joint label space (extra seen columns are ignored).
        y_true: (N,) true labels in the joint space.
        unseen_classes: unseen class indices (int) or a (C,) bool mask.

    Returns:
        Per-class mean top-1 over the samples whose label is an unseen class (other samples are
        dropped, so passing the whole test set is safe).
    """
    scores = np.asarray(scores)
    y_true = np.asarray(y_true).ravel()
    cols = np.flatnonzero(_mask(unseen_classes, scores.shape[1]))  # (U,)
    keep = np.isin(y_true, cols)
    pred = cols[np.argmax(scores[keep][:, cols], axis=1)]
    return mean_per_class_accuracy(y_true[keep], pred, cols)


def _sample_weights(y_true: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Per-sample weights 1/(n_class * n_classes) on ``subset`` (0 elsewhere).

    Summing ``weight * correct`` then equals the per-class mean accuracy of that subset, which
    turns the curve into cumulative sums.
    """
    w = np.zeros(y_true.shape[0])
    labels, inverse, counts = np.unique(y_true[subset], return_inverse=True, return_counts=True)
    if labels.size:
        w[subset] = 1.0 / (counts[inverse] * labels.size)
    return w


def _flip_points(
    scores: np.ndarray, y_true: np.ndarray, seen_mask_classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: the gamma where the prediction flips, and whether each side is correct.

    Within the seen (or unseen) group the argmax does not depend on gamma, so a sample predicts its
    best seen class while ``gamma < delta`` and its best unseen class while ``gamma > delta``, with
    ``delta = max seen score - max unseen score``.

    Returns:
        ``delta`` (N,), ``seen_ok`` (N,) bool, ``unseen_ok`` (N,) bool.
    """
    scores = np.asarray(scores, dtype=np.float64)
    seen = _mask(seen_mask_classes, scores.shape[1])
    if seen.all() or not seen.any():
        raise ValueError("need at least one seen and one unseen class")
    seen_cols, unseen_cols = np.flatnonzero(seen), np.flatnonzero(~seen)
    s_sc, u_sc = scores[:, seen_cols], scores[:, unseen_cols]  # (N, S), (N, U)
    best_s = seen_cols[np.argmax(s_sc, axis=1)]
    best_u = unseen_cols[np.argmax(u_sc, axis=1)]
    delta = s_sc.max(axis=1) - u_sc.max(axis=1)
    return delta, best_s == y_true, best_u == y_true


def _region_gammas(delta: np.ndarray) -> np.ndarray:
    """One gamma inside every interval between consecutive distinct flip points.

    Returns ``[d_1 - m, midpoints..., d_K + m]`` (sorted), so the first value predicts every sample
    as seen, the last every sample as unseen, and no value sits on a tie.
    """
    d = np.unique(delta)
    margin_lo, margin_hi = 1.0 + abs(d[0]), 1.0 + abs(d[-1])
    return np.concatenate([[d[0] - margin_lo], (d[:-1] + d[1:]) / 2.0, [d[-1] + margin_hi]])


def _curve_at(
    gammas: np.ndarray, delta: np.ndarray, seen_ok: np.ndarray, unseen_ok: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """Weighted accuracy at each gamma in O((N + G) log N) via sorting and cumulative sums."""
    order = np.argsort(delta, kind="stable")
    d_sorted = delta[order]
    # cumulative weight of correct-if-unseen for samples with delta < g (they predict unseen).
    cu = np.concatenate([[0.0], np.cumsum((w * unseen_ok)[order])])
    cs = np.concatenate([[0.0], np.cumsum((w * seen_ok)[order])])
    k = np.searchsorted(d_sorted, gammas, side="left")  # samples with delta < gamma
    return cu[k] + (cs[-1] - cs[k])


def seen_unseen_curve(
    scores: np.ndarray,
    y_true: np.ndarray,
    seen_classes_mask: np.ndarray,
    is_unseen_sample: np.ndarray,
    n_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact calibrated-stacking seen-unseen curve (Chao et al., 2016).

    The curve is piecewise constant in gamma and only changes where some sample's prediction flips,
    so one gamma per interval between flip points gives every operating point exactly. The first
    point predicts every sample as seen (U = 0, S = seen-only accuracy), the last every sample as
    unseen (S = 0, U = accuracy among unseen classes).

    Args:
        scores: (N, C) scores over the joint label space.
        y_true: (N,) true labels.
        seen_classes_mask: (C,) bool, True for seen classes.
        is_unseen_sample: (N,) bool, True for test-unseen samples.
        n_points: None for the exact curve (at most N + 1 points); otherwise at most this many
            points, subsampled evenly from the exact ones with both endpoints kept (approximate).

    Returns:
        ``(gammas, S_arr, U_arr)``, each (G,), gammas increasing, S non-increasing, U
        non-decreasing. ``gzsl_metrics`` at ``gammas[i]`` gives ``S_arr[i]``, ``U_arr[i]``.
    """
    y_true = np.asarray(y_true).ravel()
    unseen_s = np.asarray(is_unseen_sample, dtype=bool).ravel()
    delta, seen_ok, unseen_ok = _flip_points(scores, y_true, seen_classes_mask)
    gammas = _region_gammas(delta)
    if n_points is not None and gammas.size > n_points:
        idx = np.unique(np.round(np.linspace(0, gammas.size - 1, max(n_points, 2))).astype(int))
        gammas = gammas[idx]
    s_arr = _curve_at(gammas, delta, seen_ok, unseen_ok, _sample_weights(y_true, ~unseen_s))
    u_arr = _curve_at(gammas, delta, seen_ok, unseen_ok, _sample_weights(y_true, unseen_s))
    return gammas, s_arr, u_arr


def ausuc(s_arr: np.ndarray, u_arr: np.ndarray) -> float:
    """Area under the seen-unseen curve (x = U, y = S, trapezoid rule), in [0, 1].

    Points are sorted by U ascending and, for equal U, by S descending, which is the order the
    curve is traced in as gamma grows (vertical segments then add no area). The curve is not
    extended beyond its own U range, as in Chao et al.
    """
    s_arr = np.asarray(s_arr, dtype=np.float64).ravel()
    u_arr = np.asarray(u_arr, dtype=np.float64).ravel()
    order = np.lexsort((-s_arr, u_arr))
    s, u = s_arr[order], u_arr[order]
    return float(np.sum(np.diff(u) * (s[1:] + s[:-1]) / 2.0))


def select_gamma(
    scores: np.ndarray,
    y_true: np.ndarray,
    seen_classes_mask: np.ndarray,
    is_unseen_sample: np.ndarray,
) -> float:
    """The calibrated-stacking gamma that maximises H on a validation set.

    Must be called on validation data whose "unseen" classes are held-out seen classes (e.g. the
    xlsa17 ``train_loc``/``val_loc`` class split), never on test data: choosing gamma on the test
    set leaks test labels into the reported H.

    Every operating point of the exact curve is considered. H is constant on the open interval
    between two flip points, so the returned gamma is the interval midpoint (or the outer value for
    the end regions), which is as far from a flip as possible; if 0 lies strictly inside a best
    interval, 0.0 is returned (no calibration needed). Ties between intervals go to smaller |gamma|.
    """
    y_true = np.asarray(y_true).ravel()
    unseen_s = np.asarray(is_unseen_sample, dtype=bool).ravel()
    delta, seen_ok, unseen_ok = _flip_points(scores, y_true, seen_classes_mask)
    gammas = _region_gammas(delta)
    s = _curve_at(gammas, delta, seen_ok, unseen_ok, _sample_weights(y_true, ~unseen_s))
    u = _curve_at(gammas, delta, seen_ok, unseen_ok, _sample_weights(y_true, unseen_s))
    h = np.where(s + u > 0, 2 * s * u / np.maximum(s + u, 1e-300), 0.0)
    best = np.flatnonzero(h >= h.max() - 1e-12)
    d = np.unique(delta)
    lo = np.concatenate([[-np.inf], d])[best]  # interval bounds of each best region
    hi = np.concatenate([d, [np.inf]])[best]
    if np.any((lo < 0.0) & (0.0 < hi)):
        return 0.0
    cand = gammas[best]
    return float(cand[np.argmin(np.abs(cand))])


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)
