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
    B = np.linalg.solve(Dc.T @ Dc + alpha * np.eye(D.shape[1]), Dc.T @ Wc)  # (a, d)
    return B, w_mean - d_mean @ B


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
