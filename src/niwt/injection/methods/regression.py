"""Direct weight regression: ridge from the seen classes' domain vectors to their [weight | bias] rows,
applied to the unseen ones (:mod:`niwt.peers.regression`). Hyperparameter: the ridge ``alpha``
(``inject.ridge_alpha``), tuned on the regression's own signal: the held-out R² of the rows of seen
classes left out of the fit (:func:`heldout`). At CUB's size that signal peaked at the same alpha on the
validation backbone's 100 classes and on the final network's 150, and at the alpha where the test
problem's calibrated H peaks; validation H did not (benchmarks/README.md, ``bench_protocol``)."""

from __future__ import annotations

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.registry import Method
from niwt.params import InjectParams
from niwt.peers.regression import fit_ridge, heldout_r2, predict_rows, rescale_rows


def settings(cfg: InjectParams) -> list[dict[str, float]]:
    """One setting per ridge alpha."""
    return [{"alpha": a} for a in cfg.ridge_alpha]


def ridge_rows(ctx: Context, part: Partition, rescale: bool = False) -> Rows:
    """Ridge from seen domain vectors to seen [weight | bias] rows, optionally rescaled to the mean
    seen row norm."""
    targets = ctx.seen_targets(part.seen)
    coef, intercept = fit_ridge(ctx.domain(part.seen), targets, alpha=ctx.setting("alpha"))
    rows = predict_rows(ctx.domain(part.unseen), coef, intercept)
    return Rows.from_array(rescale_rows(rows, targets) if rescale else rows)


def heldout(ctx: Context, part: Partition, rescale: bool = False) -> float:
    """Leave-one-class-out R² of the seen classes' [weight | bias] rows under the context's alpha
    (:func:`~niwt.peers.regression.heldout_r2`): how well the regression predicts a class it did not fit."""
    return heldout_r2(ctx.domain(part.seen), ctx.seen_targets(part.seen), ctx.setting("alpha"), rescale=rescale)


def build(ctx: Context, part: Partition) -> Rows:
    """The ridge rows as predicted."""
    return ridge_rows(ctx, part)


METHOD = Method("regression", "ridge regression", build, settings, heldout=heldout)
