"""ESZSL: Embarrassingly Simple Zero-Shot Learning (Romera-Paredes & Torr, ICML'15), closed form.

The paper writes features as columns (X is d x m) and attributes as columns (S is a x z). Here rows
are samples and classes, as everywhere in the project, so with ``X`` (N, d) and ``S_att`` (S, a):

    V = (X^T X + gamma I_d)^-1  X^T Y S_att  (S_att^T S_att + alpha I_a)^-1      (d, a)

``gamma`` regularises the feature side (the paper's gamma) and ``alpha`` the attribute side (the
paper's lambda). Note that the mvp18 re-implementation names them the other way round. ``Y`` is
(N, S) in {-1, 1} (1 for the true class), as in the paper, rather than {0, 1}.
"""

from __future__ import annotations

import numpy as np


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
