"""ICIS (Christensen et al., ICCV'23): encoder-decoders trained on the seen rows, applied to the unseen
classes' domain vectors; image-free, with its fixed configuration (no hyperparameter to validate)."""

from __future__ import annotations

import numpy as np

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.registry import Method
from niwt.peers.icis import IcisConfig, fit_icis, predict_unseen_rows


def build(ctx: Context, part: Partition) -> Rows:
    """ICIS rows for ``part.unseen`` (weight and bias, as one regressed row)."""
    dom = ctx.domain(np.concatenate([part.seen, part.unseen]))
    model = fit_icis(dom, ctx.seen_targets(part.seen), len(part.seen), IcisConfig(seed=ctx.seed))
    return Rows.from_array(predict_unseen_rows(model, ctx.domain(part.unseen)))


METHOD = Method("icis", "ICIS", build)
