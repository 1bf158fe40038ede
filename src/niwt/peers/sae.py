"""SAE: Semantic Autoencoder (Kodirov, Xiang & Gong, "Semantic Autoencoder for Zero-Shot Learning", CVPR 2017).

A linear encoder W (A x D) maps an image feature to its class's attributes, and its transpose must
decode them back. With images as rows here (X (N, D), and S_n (N, A) the attribute row of each
image's class), the paper's objective and its stationarity condition read

    min_W ||X^T - W^T S_n^T||_F^2 + lam * ||W X^T - S_n^T||_F^2
    =>  (S_n^T S_n) W + W (lam X^T X) = (1 + lam) S_n^T X          (a Sylvester equation).

Kodirov et al. solve it with the Bartels-Stewart algorithm (``scipy.linalg.solve_sylvester`` here;
it took 63 s at CUB size on 2 shared CPU cores). Both coefficient matrices are symmetric PSD, so with
``S_n^T S_n = U diag(a) U^T`` and ``X^T X = Q diag(b) Q^T`` the solution is elementwise:

    W = U [ (1 + lam) (U^T S_n^T X Q)_ij / (a_i + lam b_j) ] Q^T,

two symmetric eigendecompositions (at CUB size, 7,057 x 2,048 features, 150 classes and 312
attributes: 1.5 s on 2 quiet CPU cores, 9-50 s while other jobs shared them), after which every
further lam costs two matrix products, 0.03-0.1 s (:class:`SaeSystem`). Pairs with
``a_i + lam b_j = 0`` (both matrices singular, e.g. more attributes than classes and more dimensions
than images) get 0: the right side has no component there, so this is the minimum-norm exact
solution rather than a division by rounding noise.

The paper classifies with the same W in two ways. mvp18/Popular-ZSL-Algorithms first L2-normalises
each row of W (one per attribute), ``Wn``, and scores by cosine similarity; so do these rows:

- F->S (encode): ``cos(Wn x, s_c)``; per image this ranks classes as the rows ``Wn^T s_c / |s_c|``.
- S->F (decode): ``cos(x, Wn^T s_c)``; per image this ranks classes as the unit rows
  ``Wn^T s_c / |Wn^T s_c|``.

S->F is the default: in mvp18's reproduction on the xlsa17 features it beats F->S on all five
datasets in ZSL top-1 and GZSL H (CUB H 24.6 vs 21.7, AWA2 22.4 vs 9.4), and its unit rows put seen
and unseen classes on one scale in the joint argmax. GBU's published SAE row (CUB H 13.6) does not
say which reading it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from niwt.errors import InputError
from niwt.peers.bilinear import Array, check_inputs, l2_rows


@dataclass(frozen=True)
class SaeSystem:
    """The lam-independent eigendecomposition of SAE's Sylvester equation (float64 numpy).

    Attributes:
        U: (A, A) eigenvectors of ``S_n^T S_n``; a: (A,) its eigenvalues.
        Q: (D, D) eigenvectors of ``X^T X``; b: (D,) its eigenvalues.
        M: (A, D) ``U^T S_n^T X Q``.
    """

    U: np.ndarray
    a: np.ndarray
    Q: np.ndarray
    b: np.ndarray
    M: np.ndarray

    def solve(self, lam: float) -> torch.Tensor:
        """V = W^T (D, A) float32 for one ``lam > 0``: the encoder in compatibility orientation."""
        if lam <= 0:
            raise InputError(f"SAE needs lam > 0 (the decoder weight); got {lam}")
        denom = self.a[:, None] + lam * self.b[None, :]  # (A, D)
        tol = float(denom.max()) * max(denom.shape) * np.finfo(np.float64).eps
        inner = np.where(denom > tol, (1.0 + lam) * self.M / np.where(denom > tol, denom, 1.0), 0.0)
        return torch.as_tensor((self.U @ inner @ self.Q.T).T, dtype=torch.float32)


def sae_system(X: Array, y: Array, S: Array, *, normalize: bool = True) -> SaeSystem:
    """Decompose SAE's Sylvester equation for seen-class features X (N, D), labels y, attributes S (C, A).

    ``normalize`` L2-normalises each training image first, as mvp18's SAE does; the lam values quoted
    in :func:`fit_sae` refer to that scale.
    """
    X, y, S = check_inputs(X, y, S)
    X = l2_rows(X) if normalize else X
    counts = torch.bincount(y, minlength=S.shape[0]).double()  # (C,)
    sums = torch.zeros(S.shape[0], X.shape[1], dtype=torch.float64).index_add_(0, y, X)  # (C, D)
    a, U = np.linalg.eigh(((S.T * counts) @ S).numpy())  # S_n^T S_n = S^T diag(counts) S, (A, A)
    b, Q = np.linalg.eigh((X.T @ X).numpy())  # (D, D)
    M = U.T @ (S.T @ sums).numpy() @ Q  # U^T S_n^T X Q, (A, D)
    return SaeSystem(U, a, Q, b, M)


def fit_sae(X: Array, y: Array, S: Array, lam: float = 0.2, *, normalize: bool = True) -> torch.Tensor:
    """Solve SAE in closed form; returns V = W^T (D, A) float32, W the paper's encoder (A, D).

    Args:
        X: (N, D) seen-class image features; y: (N,) labels (rows of S); S: (C, A) seen attributes.
        lam: weight of the encoder term ``||W X^T - S_n^T||^2`` against the decoder term. Kodirov et
            al. pick it by cross-validation. mvp18 (L2-normalised features, xlsa17 attributes) searches
            CUB over 5..5000 for F->S and 0.05..5 for S->F (best 80 and 0.2 for GZSL; AWA2 0.8 and 0.2,
            SUN 0.32 and 0.08). Suggested grid: 10^e for e in -2..4 (all readings), since each extra
            lam is cheap with :func:`sae_system`.
        normalize: see :func:`sae_system`.

    Returns:
        V (D, A) float32; turn it into classifier rows with :func:`sae_rows`.
    """
    return sae_system(X, y, S, normalize=normalize).solve(lam)


def sae_rows(V: torch.Tensor, S: Array, reading: str = "s2f") -> torch.Tensor:
    """(C, D) float32 classifier rows (bias 0) of SAE's cosine classifier for (C, A) class attributes.

    Args:
        V: (D, A) from :func:`fit_sae`.
        S: (C, A) attributes of the classes to score (seen, unseen or both).
        reading: ``"s2f"`` (decode attributes into feature space: unit rows ``Wn^T s_c``) or ``"f2s"``
            (encode images into attribute space: rows ``Wn^T s_c / |s_c|``); see the module docstring.

    Returns:
        Rows whose dot product with any image feature ranks classes as the paper's cosine does.
    """
    Wn = l2_rows(V.double().T)  # (A, D): each attribute's encoder row at unit norm
    S = torch.as_tensor(np.asarray(S), dtype=torch.float64)
    if reading == "s2f":
        return l2_rows(S @ Wn).float()
    if reading == "f2s":
        return (l2_rows(S) @ Wn).float()
    raise InputError(f"SAE reading must be 's2f' or 'f2s'; got {reading!r}")
