"""ESZSL: Embarrassingly Simple Zero-Shot Learning (Romera-Paredes & Torr, ICML'15), closed form.

The paper writes features as columns (X is d x m) and attributes as columns (S is a x z). Here rows
are samples and classes, as everywhere in the project, so with ``X`` (N, d) and ``S_att`` (S, a):

    V = (X^T X + gamma I_d)^-1  X^T Y S_att  (S_att^T S_att + alpha I_a)^-1      (d, a)

``gamma`` regularises the feature side (the paper's gamma) and ``alpha`` the attribute side (the
paper's lambda). Note that the mvp18 re-implementation names them the other way round. ``Y`` is
(N, S) in {-1, 1} (1 for the true class), as in the paper, rather than {0, 1}.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from niwt.evaluation.metrics import mean_per_class_accuracy


def _label_matrix(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) matrix in {-1, 1}, +1 at each sample's class (the paper's choice)."""
    out = -np.ones((y.shape[0], n_classes))
    out[np.arange(y.shape[0]), y] = 1.0
    return out


def _right_solve(m: np.ndarray, s_att: np.ndarray, alpha: float) -> np.ndarray:
    """``m (S_att^T S_att + alpha I)^-1`` via a solve (the matrix is symmetric)."""
    k = s_att.T @ s_att + alpha * np.eye(s_att.shape[1])  # (a, a)
    return np.linalg.solve(k, m.T).T


def fit_eszsl(X: np.ndarray, y: np.ndarray, S_att: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    """Fit the ESZSL compatibility matrix in closed form.

    Args:
        X: (N, d) features of seen-class samples.
        y: (N,) labels in 0..S-1, indexing rows of ``S_att``.
        S_att: (S, a) seen-class attribute vectors.
        alpha: attribute-side ridge (paper's lambda), a raw value (not an exponent).
        gamma: feature-side ridge (paper's gamma), a raw value.

    Returns:
        V (d, a); score of class c for sample x is ``x^T V s_c``.
    """
    X = np.asarray(X, dtype=np.float64)
    S_att = np.asarray(S_att, dtype=np.float64)
    Y = _label_matrix(np.asarray(y, dtype=int), S_att.shape[0])  # (N, S)
    a = X.T @ X + gamma * np.eye(X.shape[1])  # (d, d)
    left = np.linalg.solve(a, X.T @ Y @ S_att)  # (d, a)
    return _right_solve(left, S_att, alpha)


def eszsl_scores(X: np.ndarray, V: np.ndarray, S_all: np.ndarray) -> np.ndarray:
    """(N, C) compatibility scores ``X V S_all^T`` for any class set (seen, unseen or joint)."""
    return np.asarray(X, dtype=np.float64) @ V @ np.asarray(S_all, dtype=np.float64).T


class EszslChoice(NamedTuple):
    """Grid-search result: the chosen raw regularisers and their validation accuracy."""

    alpha: float
    gamma: float
    val_acc: float


def grid_search_eszsl(
    X_tr: np.ndarray,
    y_tr: np.ndarray,
    S_tr: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    S_val: np.ndarray,
    exps: range | list[int] = range(-3, 4),
) -> EszslChoice:
    """Choose (alpha, gamma) = (10^i, 10^j) by ZSL accuracy on held-out seen classes.

    The validation classes must be disjoint from the training classes (xlsa17 ``train_loc`` ->
    ``val_loc``), so the choice mimics the unseen-class setting without touching test data. The
    caller then refits on all seen classes with the chosen values.

    Args:
        X_tr: (N_tr, d) training features; y_tr: (N_tr,) labels indexing rows of S_tr (T, a).
        X_val: (N_val, d) validation features; y_val: (N_val,) labels indexing rows of S_val (V, a).
        exps: exponents tried for both regularisers.

    Returns:
        The best ``EszslChoice``; ties go to the first pair in (alpha, gamma) grid order.
    """
    X_tr = np.asarray(X_tr, dtype=np.float64)
    S_tr = np.asarray(S_tr, dtype=np.float64)
    Y = _label_matrix(np.asarray(y_tr, dtype=int), S_tr.shape[0])
    xtx, rhs = X_tr.T @ X_tr, X_tr.T @ Y @ S_tr  # (d, d), (d, a)
    left = {j: np.linalg.solve(xtx + 10.0**j * np.eye(xtx.shape[0]), rhs) for j in exps}
    best = EszslChoice(float("nan"), float("nan"), -1.0)
    for i in exps:
        for j in exps:
            v = _right_solve(left[j], S_tr, 10.0**i)
            pred = np.argmax(eszsl_scores(X_val, v, S_val), axis=1)
            acc = mean_per_class_accuracy(np.asarray(y_val), pred)
            if acc > best.val_acc:
                best = EszslChoice(10.0**i, 10.0**j, acc)
    return best
