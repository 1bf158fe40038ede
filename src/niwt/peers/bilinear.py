"""Shared pieces of the bilinear-compatibility peers (DEVISE, ALE, SJE, SAE).

Xian, Lampert, Schiele & Akata (TPAMI'18, "Zero-Shot Learning — The Good, the Bad and the Ugly")
write every linear compatibility method as

    f(x) = argmax_c F(x, c),    F(x, c) = theta(x)^T W phi(c).

Here ``theta(x)`` is a precomputed image feature (a row of ``X``, D values), ``phi(c)`` the class's
attribute vector (a row of ``S``, A values) and ``V`` (D, A) plays the paper's ``W``. The classifier
row of class c is therefore ``V s_c`` with bias 0, for seen and unseen classes alike: a method of this
family replaces the seen rows too (``replaces_seen``), as ESZSL does.

The SGD methods here all minimise a per-image loss of the score vector ``x^T V S^T`` by minibatch
SGD on the batch mean; :func:`fit_sgd` is that loop and each method supplies its loss.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from niwt.errors import InputError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, C) scores, (B,) labels -> (B,) losses
Array = np.ndarray | torch.Tensor


def check_inputs(X: Array, y: Array, S: Array) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and convert (features, labels, class attributes) to float64/int64 tensors.

    Raises:
        InputError: wrong ranks, mismatched lengths, labels outside ``0..C-1`` or non-finite values,
            each named, because a silent broadcast here would train on the wrong pairs.
    """
    X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
    S = torch.as_tensor(np.asarray(S), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y))
    if X.ndim != 2 or S.ndim != 2 or y.ndim != 1:
        raise InputError(f"expected X (N, D), y (N,), S (C, A); got {tuple(X.shape)}, {tuple(y.shape)}, "
                         f"{tuple(S.shape)}")
    if y.shape[0] != X.shape[0] or X.shape[0] == 0:
        raise InputError(f"{X.shape[0]} feature rows for {y.shape[0]} labels (need the same, at least 1)")
    if y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= S.shape[0]:
        raise InputError(f"labels must be integers in 0..{S.shape[0] - 1} (rows of S)")
    if not (torch.isfinite(X).all() and torch.isfinite(S).all()):
        raise InputError("features or class attributes contain NaN or infinity")
    return X, y.long(), S


def l2_rows(M: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm (all-zero rows stay zero)."""
    return M / M.norm(dim=1, keepdim=True).clamp(min=torch.finfo(M.dtype).tiny)


def class_rows(V: torch.Tensor, S: Array) -> torch.Tensor:
    """(C, D) float32 classifier rows ``V s_c`` for (C, A) class attributes (seen, unseen or both).

    The score of image x for class c is ``x . row_c`` (bias 0), i.e. ``x^T V s_c``.
    """
    S = torch.as_tensor(np.asarray(S), dtype=torch.float64)
    return (S @ V.double().T).float()


def hinge_terms(scores: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """(B, C) ranking hinges ``[Delta(y, j) + s_j - s_y]_+`` with ``Delta(y, j) = margin * [j != y]``.

    The true class's own entry is ``[0]_+ = 0``, so summing a row sums over the wrong classes only.
    """
    true = scores.gather(1, y[:, None])  # (B, 1)
    delta = torch.full_like(scores, margin).scatter(1, y[:, None], 0.0)
    return torch.relu(delta + scores - true)


def fit_sgd(X: Array, y: Array, S: Array, loss: LossFn, *, lr: float, epochs: int, batch_size: int,
            seed: int, normalize: bool = True, init: torch.Tensor | None = None) -> torch.Tensor:
    """Minibatch SGD on ``mean_n loss(x_n^T V S^T, y_n)``, returning V (D, A) float32.

    Args:
        X: (N, D) features of seen-class images.
        y: (N,) labels, rows of ``S``.
        S: (C, A) seen-class attributes.
        loss: per-image loss of the (B, C) score matrix; its autograd gradient drives the update.
        lr: step size of ``V <- V - lr * grad(batch mean)``. An epoch takes N / batch_size such steps,
            where the papers' per-image SGD takes N steps at its rate, so useful rates here are larger.
        epochs: passes over the data, each in a fresh seeded order.
        batch_size: images per step.
        seed: seeds the order (``torch.Generator``), so a fit is reproducible.
        normalize: L2-normalise each training image first. A positive per-image scale does not change
            that image's argmax over classes, so the rows still apply to raw test features; it makes
            one learning-rate grid fit any backbone's feature scale.
        init: start V (D, A); zeros when None. With V0 = 0 and no regulariser, a margin m with rate
            ``lr`` gives exactly m times the iterates of margin 1 with rate ``lr / m`` (all these losses
            are positively homogeneous), so the margin never needs tuning beside the rate.

    Returns:
        V (D, A) float32.

    Cost: one epoch is two (N, D) x (D, A) products plus small ones. At CUB size (7,057 x 2,048 features,
    150 classes, 312 attributes, batch 64) an epoch took 0.2-0.4 s on 2 CPU cores when the machine was
    quiet and up to 6 s while other jobs shared it, so 10 epochs take 2 s to a minute.
    """
    if lr <= 0 or epochs < 1 or batch_size < 1:
        raise InputError(f"need lr > 0, epochs >= 1, batch_size >= 1; got {lr}, {epochs}, {batch_size}")
    X, y, S = check_inputs(X, y, S)
    X, S = (l2_rows(X) if normalize else X).float(), S.float()
    V = torch.zeros(X.shape[1], S.shape[1]) if init is None else init.detach().clone().float()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(X.shape[0], generator=gen)
        for idx in order.split(batch_size):
            V.requires_grad_(True)
            value = loss(X[idx] @ V @ S.T, y[idx]).mean()
            (grad,) = torch.autograd.grad(value, V)
            V = (V - lr * grad).detach()
    return V
