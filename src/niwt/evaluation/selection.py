"""Choosing one setting per method on the validation problem, by a criterion that carries signal.

A method is tuned for the way it is used: NIWT ships its rows as they are (uncalibrated H is what a
user gets), while ridge regression, ICIS and ESZSL are only competitive after calibrated stacking,
so they are tuned by calibrated H (their calibration gamma is chosen after, on the same problem).
Whatever the criterion, one that is flat near zero for a method cannot rank its settings: at CUB
scale ridge regression's uncalibrated validation H was below 0.07 for every alpha, and choosing by
it landed on a grid edge whose calibrated H was far from the best. Such a criterion falls back to
the next one that carries signal (calibrated H, then AUSUC, which never needs a gamma).

A method with a signal of its own (a regression's held-out R² on seen classes left out of its fit,
criterion ``heldout``) is ranked by it; that score is not a rate, so it cannot rank only where it is
missing or infinite everywhere, and then falls back to calibrated H.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A criterion whose best value over a method's settings is below this cannot rank them.
FLAT_NEAR_ZERO = 0.05
# The order in which criteria are tried when the preferred one is flat.
FALLBACK = ("H", "cal_H", "ausuc")
# A method's own held-out signal (``Method.heldout``): ranked where finite, else calibrated H.
HELDOUT = "heldout"


@dataclass(frozen=True)
class Choice:
    """The chosen row of a method's grid and the criterion that chose it (and why)."""

    row: dict
    criterion: str
    note: str = ""


def criterion_value(row: dict, criterion: str) -> float:
    """A row's value of ``criterion``; -inf where it is missing, null or not finite (never wins)."""
    if row.get(criterion) is None:  # a score that could not be computed (written as null)
        return -math.inf
    value = float(row[criterion])
    return value if math.isfinite(value) else -math.inf  # a diverged setting (NaN) never wins


def best_row(rows: Sequence[dict], criterion: str) -> dict:
    """The row with the highest ``criterion``; the first of equals (grid order breaks ties)."""
    return max(rows, key=lambda r: criterion_value(r, criterion))


def choose(rows: Sequence[dict], preferred: str) -> Choice:
    """The best of ``rows`` by ``preferred``, or by the next criterion of :data:`FALLBACK` when
    ``preferred`` is flat near zero (its best value below :data:`FLAT_NEAR_ZERO`); a preferred
    criterion outside :data:`FALLBACK` (:data:`HELDOUT`) falls back to calibrated H where no
    setting has a finite value of it.

    Args:
        rows: one dict per setting, with the criteria as keys (``H``, ``cal_H``, ``ausuc``, and
            ``heldout`` for a method with a signal of its own).
        preferred: the method's own criterion.
    """
    if not rows:
        raise ValueError("no settings to choose from")
    if preferred in FALLBACK:
        order = list(FALLBACK[FALLBACK.index(preferred):])
    else:
        order = [preferred, *FALLBACK[1:]]
    for criterion in order:
        row = best_row(rows, criterion)
        if _ranks(row, criterion) or criterion == order[-1]:
            return Choice(row, criterion, "" if criterion == preferred else _why_not(rows, preferred, criterion))
    raise AssertionError("unreachable")  # the last criterion always returns


def _ranks(best: dict, criterion: str) -> bool:
    """Whether ``criterion`` can rank settings whose best row is ``best``: a rate (H, cal_H, AUSUC)
    not flat near zero; any other score where it is finite."""
    value = criterion_value(best, criterion)
    return value >= FLAT_NEAR_ZERO if criterion in FALLBACK else math.isfinite(value)


def _why_not(rows: Sequence[dict], preferred: str, used: str) -> str:
    if preferred not in FALLBACK:
        why = f"{preferred} is not finite for any setting"
    else:
        best = criterion_value(best_row(rows, preferred), preferred)
        why = f"{preferred} flat near zero (best {best:.3f} < {FLAT_NEAR_ZERO})"
    skipped = [c for c in FALLBACK[1:FALLBACK.index(used)] if c != preferred]
    return why + "".join(f", {c} too" for c in skipped) + f": chosen by {used}"
