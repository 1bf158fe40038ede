"""DEVISE (Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NIPS 2013) on fixed features.

As benchmarked by Xian et al. (TPAMI'18, "Zero-Shot Learning — The Good, the Bad and the Ugly"):
a pairwise ranking hinge summed over the wrong training classes,

    L(x_n, y_n; V) = sum_{j in Y_tr} [Delta(y_n, j) + x_n^T V s_j - x_n^T V s_{y_n}]_+ ,

with ``Delta(y, j) = margin * [j != y]``, minimised by SGD. Frome et al. also fine-tune the CNN and
stop the sum at the first violating class they draw (a sampled estimate of it); here the features
are fixed, as in GBU, and the sum is taken exactly over all classes of a minibatch's images.
"""

from __future__ import annotations

import functools

import torch

from niwt.peers.bilinear import Array, fit_sgd, hinge_terms


def devise_loss(scores: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """(B,) DEVISE losses ``sum_j [Delta(y, j) + s_j - s_y]_+`` of (B, C) scores ``x^T V S^T``."""
    return hinge_terms(scores, y, margin).sum(dim=1)


def fit_devise(X: Array, y: Array, S: Array, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 64,
               margin: float = 1.0, seed: int = 0, normalize: bool = True,
               init: torch.Tensor | None = None) -> torch.Tensor:
    """Fit DEVISE's compatibility matrix by minibatch SGD (see :func:`niwt.peers.bilinear.fit_sgd`).

    Args:
        X: (N, D) seen-class image features; y: (N,) labels (rows of S); S: (C, A) seen attributes.
        lr, epochs: GBU tunes both on the validation classes of its split (the grid is not printed);
            mvp18/Popular-ZSL-Algorithms (per-image SGD) validated lr 1.0 for CUB with L2-normalised
            features. Rates here step the batch mean (``fit_sgd``). On planted CUB-shaped data
            (attributes -> features, batch 64) lr 0.1-0.3 with 5-20 epochs did best. Suggested grid:
            lr in {0.03, 0.1, 0.3, 1}, epochs in {5, 10, 20}. 10 epochs at CUB size: 2-20 s on 2 cores.
        batch_size: images per step.
        margin: Delta for wrong classes (Frome et al.: 0.1 with unit text vectors). From V0 = 0 it is
            redundant with lr (``fit_sgd``), so keep 1 and tune lr.
        seed, normalize, init: see ``fit_sgd``.

    Returns:
        V (D, A) float32; class c's classifier row is ``V s_c`` (``bilinear.class_rows``), bias 0.
    """
    loss = functools.partial(devise_loss, margin=margin)
    return fit_sgd(X, y, S, loss, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
                   normalize=normalize, init=init)
