"""ALE: Attribute Label Embedding (Akata, Perronnin, Harchaoui & Schmid, CVPR 2013 / TPAMI 2016).

As benchmarked by Xian et al. (TPAMI'18, "Zero-Shot Learning — The Good, the Bad and the Ugly"):
DEVISE's hinges weighted by the image's rank (the weighted approximate ranking loss of Weston et
al.'s WSABIE),

    L(x_n, y_n; V) = (l_r / r) * sum_{j in Y_tr} [Delta(y_n, j) + x_n^T V s_j - x_n^T V s_{y_n}]_+ ,
    r = #{j : Delta(y_n, j) + x_n^T V s_j - x_n^T V s_{y_n} > 0},    l_r = sum_{i=1}^{r} 1/i,  l_0/0 := 0,

with ``Delta(y, j) = margin * [j != y]``. The first violator costs 1, the r-th 1/r: an image's total
weight ``l_r`` grows like log r rather than r as in DEVISE, so the loss cares most about putting the
true class at the top, not about the order lower down. Akata et al. estimate r by drawing classes until one violates
(the WARP sampler, O(1) per draw); here r is counted exactly over all classes of a minibatch's images,
which is the loss itself rather than its sampled estimate. r is piecewise constant in V, so the
autograd gradient (r held fixed) is the loss's exact gradient wherever it exists.
"""

from __future__ import annotations

import functools

import torch

from niwt.peers.bilinear import Array, fit_sgd, hinge_terms


def rank_weights(n_classes: int) -> torch.Tensor:
    """(n_classes + 1,) float64 weights ``l_r / r`` for r = 0..n_classes (0 at r = 0)."""
    r = torch.arange(1, n_classes + 1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(1.0 / r, 0) / r])


def ale_loss(scores: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """(B,) ALE losses ``(l_r / r) * sum_j [Delta(y, j) + s_j - s_y]_+`` of (B, C) scores."""
    hinge = hinge_terms(scores, y, margin)
    weight = rank_weights(scores.shape[1]).to(scores.dtype)[(hinge > 0).sum(dim=1)]
    return weight * hinge.sum(dim=1)


def fit_ale(X: Array, y: Array, S: Array, *, lr: float = 3.0, epochs: int = 10, batch_size: int = 64,
            margin: float = 1.0, seed: int = 0, normalize: bool = True,
            init: torch.Tensor | None = None) -> torch.Tensor:
    """Fit ALE's compatibility matrix by minibatch SGD (see :func:`niwt.peers.bilinear.fit_sgd`).

    Args:
        X: (N, D) seen-class image features; y: (N,) labels (rows of S); S: (C, A) seen attributes.
        lr, epochs: GBU tunes both on the validation classes of its split (the grid is not printed);
            mvp18/Popular-ZSL-Algorithms (per-image WARP SGD) validated lr 0.3 for CUB, 0.01 for
            AWA2, 0.1 for SUN, all with L2-normalised features. Rates here step the batch mean
            (``fit_sgd``), and the weights ``l_r / r <= 1`` shrink steps further: on planted CUB-shaped
            data (batch 64) lr 1-3 with 5-20 epochs did best, lr <= 0.1 had barely moved after 20.
            Suggested grid: lr in {0.3, 1, 3, 10}, epochs in {5, 10, 20}. 10 epochs at CUB size: 2-40 s.
        batch_size: images per step.
        margin: Delta for wrong classes (Akata et al.: 1, the 0/1 loss). Redundant with lr from V0 = 0.
        seed, normalize, init: see ``fit_sgd``.

    Returns:
        V (D, A) float32; class c's classifier row is ``V s_c`` (``bilinear.class_rows``), bias 0.
    """
    loss = functools.partial(ale_loss, margin=margin)
    return fit_sgd(X, y, S, loss, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
                   normalize=normalize, init=init)
