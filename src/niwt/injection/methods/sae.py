"""SAE, the semantic autoencoder (Kodirov, Xiang & Gong, CVPR'17), on the finetuned network's
penultimate features of the seen training images X (N, D, L2-normalised rows), S_n (N, A) the
(L2-normalised) domain vector of each image's class: a linear encoder W (A, D) whose transpose decodes,

    min_W ||X^T - W^T S_n^T||_F^2 + lam ||W X^T - S_n^T||_F^2
    <=>  (S_n^T S_n) W + W (lam X^T X) = (1 + lam) S_n^T X        (closed form, :mod:`niwt.peers.sae`).

Classified in the S->F reading (decode each class into feature space, cosine): class c's row is the
unit vector ``Wn^T s_c / |Wn^T s_c|`` (``Wn``: W with unit rows), bias 0, for the unseen AND
(replacing them) the seen classes, used with calibrated stacking. Hyperparameter: ``lam``, 10^e for e
in ``inject.sae_exponents``; the lam-independent eigendecomposition is computed once per partition,
so every further lam costs two matrix products."""

from __future__ import annotations

import functools

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.methods.devise import compatibility_rows
from niwt.injection.registry import Method
from niwt.params import InjectParams
from niwt.peers.sae import SaeSystem, sae_rows, sae_system

READING = "s2f"  # decode attributes into feature space (see niwt.peers.sae)


def settings(cfg: InjectParams) -> list[dict[str, float]]:
    """One setting per exponent: lam = 10^e."""
    return [{"lam": 10.0**e} for e in cfg.sae_exponents]


def build(ctx: Context, part: Partition) -> Rows:
    """SAE rows for every class of ``part``, with the ``lam`` ``validate`` chose."""
    def system() -> SaeSystem:
        X, y = ctx.seen_training(part.seen)
        return sae_system(X, y, ctx.domain(part.seen))

    key = "sae_system:" + ",".join(str(int(c)) for c in part.seen)  # shared by every lam of this partition
    lam = ctx.setting("lam")
    V = ctx.cached(key, system).solve(lam)  # type: ignore[union-attr]
    return compatibility_rows(ctx, part, V, {"lam": lam}, functools.partial(sae_rows, reading=READING))


METHOD = Method("sae", "SAE", build, settings, needs_images=True, replaces_seen=True, reading="calibrated")
