"""ESZSL (Romera-Paredes & Torr, ICML'15) on the finetuned network's penultimate features: rows
``V s_c`` for the unseen AND (replacing them) the seen classes, a compatibility model. Reads the seen
training images (their features, computed once). Hyperparameters: the two ridge strengths
``alpha`` x ``gamma``, each 10^e for e in ``inject.eszsl_exponents``."""

from __future__ import annotations

import numpy as np
import torch

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.registry import Method
from niwt.params import InjectParams
from niwt.peers.eszsl import fit_eszsl


def settings(cfg: InjectParams) -> list[dict[str, float]]:
    """alpha x gamma over the exponent list, gamma innermost."""
    return [{"alpha": 10.0**i, "gamma": 10.0**j} for i in cfg.eszsl_exponents for j in cfg.eszsl_exponents]


def build(ctx: Context, part: Partition) -> Rows:
    """ESZSL rows for every class of ``part``, with the two ridge strengths ``validate`` chose."""
    seen, unseen = part.seen, part.unseen
    feats, labels = ctx.train_features()
    keep = np.isin(labels, seen)
    local = np.full(ctx.classes.n_seen + ctx.classes.n_unseen, -1)
    local[seen] = np.arange(len(seen))
    alpha, gamma = ctx.setting("alpha"), ctx.setting("gamma")
    v = fit_eszsl(feats[keep].astype(np.float64), local[labels[keep]], ctx.domain(seen), alpha=alpha, gamma=gamma)
    to_rows = lambda idx: torch.as_tensor(ctx.domain(idx) @ v.T, dtype=torch.float32)  # noqa: E731
    return Rows(to_rows(unseen), torch.zeros(len(unseen)), (to_rows(seen), torch.zeros(len(seen))),
                {"alpha": alpha, "gamma": gamma})


METHOD = Method("eszsl", "ESZSL", build, settings, needs_images=True, replaces_seen=True)
