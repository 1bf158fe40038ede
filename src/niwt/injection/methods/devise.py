"""DEVISE (Frome et al., NIPS'13) as benchmarked by Xian et al. (GBU, TPAMI'18), on the finetuned
network's penultimate features of the seen training images (computed once, as for ESZSL): a bilinear
compatibility ``F(x, c) = x^T V s_c`` trained by minibatch SGD (batch 64, from V = 0, features
L2-normalised, seeded by ``base.seed``) on the pairwise ranking hinge

    L(x_n, y_n; V) = sum_{j in Y_tr} [Delta(y_n, j) + x_n^T V s_j - x_n^T V s_{y_n}]_+ ,
    Delta(y, j) = [j != y]                                              (:mod:`niwt.peers.devise`).

Class c's row is ``V s_c`` with bias 0 (``s_c`` its L2-normalised domain vector), for the unseen AND
(replacing them) the seen classes: a compatibility model, used with calibrated stacking.
Hyperparameters: ``lr`` in ``inject.devise_lr`` x ``epochs`` in ``inject.bilinear_epochs``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.registry import Method
from niwt.params import InjectParams
from niwt.peers.bilinear import class_rows
from niwt.peers.devise import fit_devise

Fit = Callable[..., torch.Tensor]  # fit(X, y, S, *, lr, epochs, seed) -> V (D, A)


def sgd_settings(rates: tuple[float, ...], cfg: InjectParams) -> list[dict[str, float]]:
    """lr x epochs (``inject.bilinear_epochs``), epochs innermost."""
    return [{"lr": lr, "epochs": e} for lr in rates for e in cfg.bilinear_epochs]


def compatibility_rows(ctx: Context, part: Partition, V: torch.Tensor, stats: dict,
                       to_rows: Callable[[torch.Tensor, np.ndarray], torch.Tensor] = class_rows) -> Rows:
    """Rows ``to_rows(V, S)`` of the unseen and the seen classes of ``part``, bias 0."""
    unseen, seen = to_rows(V, ctx.domain(part.unseen)), to_rows(V, ctx.domain(part.seen))
    return Rows(unseen, torch.zeros(len(part.unseen)), (seen, torch.zeros(len(part.seen))), stats)


def sgd_rows(ctx: Context, part: Partition, fit: Fit) -> Rows:
    """Fit one SGD compatibility model (DEVISE, ALE, SJE) with the ``lr`` and ``epochs`` ``validate``
    chose on the seen classes' training features, and return its rows."""
    X, y = ctx.seen_training(part.seen)
    lr, epochs = ctx.setting("lr"), int(ctx.setting("epochs"))
    V = fit(X, y, ctx.domain(part.seen), lr=lr, epochs=epochs, seed=ctx.seed)
    return compatibility_rows(ctx, part, V, {"lr": lr, "epochs": epochs})


def settings(cfg: InjectParams) -> list[dict[str, float]]:
    """``inject.devise_lr`` x ``inject.bilinear_epochs``."""
    return sgd_settings(cfg.devise_lr, cfg)


def build(ctx: Context, part: Partition) -> Rows:
    """DEVISE rows for every class of ``part``."""
    return sgd_rows(ctx, part, fit_devise)


METHOD = Method("devise", "DEVISE", build, settings, needs_images=True, replaces_seen=True, reading="calibrated")
