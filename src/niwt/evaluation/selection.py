"""Choosing one setting per method on the validation problem, by a criterion that carries signal.

A method is tuned for the way it is used: NIWT ships its rows as they are (uncalibrated H is what a
user gets), while ridge regression, ICIS and ESZSL are only competitive after calibrated stacking,
so they are tuned by calibrated H (their calibration gamma is chosen after, on the same problem).
Whatever the criterion, one that is flat near zero for a method cannot rank its settings: at CUB
scale ridge regression's uncalibrated validation H was below 0.07 for every alpha, and choosing by
it landed on a grid edge whose calibrated H was far from the best. Such a criterion falls back to
the next one that carries signal (calibrated H, then AUSUC, which never needs a gamma).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A criterion whose best value over a method's settings is below this cannot rank them.
FLAT_NEAR_ZERO = 0.05
# The order in which criteria are tried when the preferred one is flat.
FALLBACK = ("H", "cal_H", "ausuc")


@dataclass(frozen=True)
class Choice:
    """The chosen row of a method's grid and the criterion that chose it (and why)."""

    row: dict
    criterion: str
    note: str = ""


def _value(row: dict, criterion: str) -> float:
    value = float(row[criterion])
    return value if math.isfinite(value) else -math.inf  # a diverged setting (NaN) never wins


def best_row(rows: Sequence[dict], criterion: str) -> dict:
    """The row with the highest ``criterion``; the first of equals (grid order breaks ties)."""
    return max(rows, key=lambda r: _value(r, criterion))


def choose(rows: Sequence[dict], preferred: str) -> Choice:
    """The best of ``rows`` by ``preferred``, or by the next criterion of :data:`FALLBACK` when
    ``preferred`` is flat near zero (its best value below :data:`FLAT_NEAR_ZERO`).

    Args:
        rows: one dict per setting, with the criteria as keys (``H``, ``cal_H``, ``ausuc``).
        preferred: the method's own criterion.
    """
    if not rows:
        raise ValueError("no settings to choose from")
    order = [preferred] + [c for c in FALLBACK[FALLBACK.index(preferred) + 1:] if c != preferred] \
        if preferred in FALLBACK else [preferred]
    for criterion in order:
        row = best_row(rows, criterion)
        if _value(row, criterion) >= FLAT_NEAR_ZERO or criterion == order[-1]:
            note = "" if criterion == preferred else (
                f"{preferred} flat near zero (best {_value(best_row(rows, preferred), preferred):.3f} "
                f"< {FLAT_NEAR_ZERO}): chosen by {criterion}")
            return Choice(row, criterion, note)
    raise AssertionError("unreachable")  # the last criterion always returns
