"""Direct weight regression: ridge from class descriptors to classifier rows (Sem2Weights style).

The simplest image-free way to inject unseen classes: learn a linear map from the seen classes'
domain vectors (attributes, text embeddings) to their classifier rows, apply it to unseen
descriptors, and rescale the result, because a ridge fit shrinks predicted rows towards the mean
and small-norm rows are never chosen in GZSL (the H = 0 failure in peers.md section 1.6).
"""

from __future__ import annotations

import numpy as np


def fit_ridge(D_seen: np.ndarray, W_seen: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an unpenalised intercept.

    Args:
        D_seen: (S, a) seen-class domain vectors.
        W_seen: (S, d) seen classifier rows (append the bias column yourself to regress it too).
        alpha: ridge penalty on B (the intercept is not penalised).

    Returns:
        ``(B (a, d), bias (d,))`` with ``W ~= D @ B + bias``.
    """
    D = np.asarray(D_seen, dtype=np.float64)
    W = np.asarray(W_seen, dtype=np.float64)
    d_mean, w_mean = D.mean(axis=0), W.mean(axis=0)  # (a,), (d,)
    Dc, Wc = D - d_mean, W - w_mean
    try:
        B = np.linalg.solve(Dc.T @ Dc + alpha * np.eye(D.shape[1]), Dc.T @ Wc)  # (a, d)
    except np.linalg.LinAlgError:  # alpha 0 with a singular design: the minimum-norm solution
        B = np.linalg.lstsq(Dc, Wc, rcond=None)[0]
    return B, w_mean - d_mean @ B


def heldout_r2(D_seen: np.ndarray, W_seen: np.ndarray, alpha: float, rescale: bool = False) -> float:
    """Leave-one-class-out R² of :func:`fit_ridge`'s predicted rows: the regression's own signal.

    Each class's row is predicted by the ridge fit on every other class (as an unseen class's row
    is predicted from the seen ones), and ``1 - sum ||w_i - w_hat_i||² / sum ||w_i - mean(w)||²``
    is returned (1: every held-out row exact; 0: no better than the mean row). The held-out
    predictions are exact without refitting: ridge with an unpenalised intercept is a linear
    smoother ``H = X (X'X + alpha P)^-1 X'`` (``X = [1, D]``, ``P = diag(0, I)``), so the prediction
    without class ``i`` is ``w_i - e_i / (1 - h_ii)`` (``e``: the full fit's residuals).

    Args:
        D_seen: (S, a) domain vectors of the classes.
        W_seen: (S, d) their classifier rows.
        alpha: the ridge penalty.
        rescale: score the rows as :func:`rescale_rows` ships them (each held-out prediction scaled to
            the mean norm of the other classes' rows).

    Returns:
        The held-out R²; ``-inf`` where a class's row is interpolated (``h_ii = 1``, e.g. ``alpha = 0``
        with fewer classes than attributes) or the fit is not unique, which no held-out class allows;
        NaN for fewer than 3 classes, where it cannot rank alphas.
    """
    D = np.asarray(D_seen, dtype=np.float64)
    W = np.asarray(W_seen, dtype=np.float64)
    n, a = D.shape
    if n < 3:  # with one class left after holding one out, every alpha predicts that class's row
        return float("nan")
    X = np.concatenate([np.ones((n, 1)), D], axis=1)  # (S, a + 1)
    penalty = alpha * np.eye(a + 1)
    penalty[0, 0] = 0.0  # the intercept is not penalised
    try:
        hat = X @ np.linalg.solve(X.T @ X + penalty, X.T)  # (S, S)
    except np.linalg.LinAlgError:  # alpha 0 with a singular design: the fit is not unique
        return -np.inf
    leverage = np.diag(hat)
    if np.any(1.0 - leverage < 1e-10):
        return -np.inf
    pred = W - (W - hat @ W) / (1.0 - leverage)[:, None]  # (S, d): each row predicted without itself
    if rescale:
        norms = np.linalg.norm(W, axis=1)
        others = (norms.sum() - norms) / (n - 1)  # the mean norm of the other classes' rows
        size = np.linalg.norm(pred, axis=1)
        pred = np.where(size[:, None] > 0, pred * (others / np.where(size > 0, size, 1.0))[:, None], 0.0)
    total = float(((W - W.mean(axis=0)) ** 2).sum())
    return 1.0 - float(((W - pred) ** 2).sum()) / total if total > 0 else -np.inf


def predict_rows(D: np.ndarray, B: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(C, d) predicted classifier rows ``D @ B + bias`` for (C, a) domain vectors."""
    return np.asarray(D, dtype=np.float64) @ B + bias


def rescale_rows(W_u: np.ndarray, W_seen: np.ndarray) -> np.ndarray:
    """Scale every unseen row to the mean seen row L2 norm, keeping its direction.

    Regression shrinks norms, so this puts unseen logits on the seen classes' scale. All-zero rows
    stay zero (they have no direction).

    Args:
        W_u: (U, d) predicted unseen rows.
        W_seen: (S, d) seen rows (same columns as ``W_u``, e.g. both with or without bias).

    Returns:
        (U, d) rescaled rows.
    """
    W_u = np.asarray(W_u, dtype=np.float64)
    target = float(np.linalg.norm(np.asarray(W_seen, dtype=np.float64), axis=1).mean())
    norms = np.linalg.norm(W_u, axis=1, keepdims=True)  # (U, 1)
    return np.where(norms > 0, W_u * (target / np.where(norms > 0, norms, 1.0)), 0.0)
