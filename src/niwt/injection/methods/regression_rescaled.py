"""Ridge regression with the predicted rows rescaled to the mean seen row norm: a ridge fit shrinks
its predictions towards the mean, and small-norm rows are never chosen in GZSL. Its own ``alpha``,
validated on its own (the held-out R² of the rows as rescaled)."""

from __future__ import annotations

from niwt.injection.context import Context, Partition, Rows
from niwt.injection.methods.regression import heldout, ridge_rows, settings
from niwt.injection.registry import Method


def build(ctx: Context, part: Partition) -> Rows:
    """The ridge rows, rescaled."""
    return ridge_rows(ctx, part, rescale=True)


def heldout_rescaled(ctx: Context, part: Partition) -> float:
    """The held-out R² of the seen rows, each held-out prediction rescaled as :func:`build` ships it."""
    return heldout(ctx, part, rescale=True)


METHOD = Method("regression_rescaled", "ridge regression, rescaled", build, settings, heldout=heldout_rescaled)
