"""Choosing a method's setting by a criterion that carries signal (niwt.evaluation.selection)."""

from __future__ import annotations

import math

import pytest

from niwt.evaluation.selection import FLAT_NEAR_ZERO, HELDOUT, choose


def _rows(*triples: tuple[float, float, float]) -> list[dict]:
    return [{"setting": {"i": i}, "H": h, "cal_H": c, "ausuc": a} for i, (h, c, a) in enumerate(triples)]


def test_preferred_criterion_with_signal_decides() -> None:
    rows = _rows((0.40, 0.50, 0.9), (0.45, 0.40, 0.5))
    assert choose(rows, "H").row["setting"] == {"i": 1} and choose(rows, "H").criterion == "H"
    assert choose(rows, "cal_H").row["setting"] == {"i": 0}
    assert choose(rows, "ausuc").row["setting"] == {"i": 0}


def test_flat_uncalibrated_h_falls_back_to_calibrated_h() -> None:
    """Ridge at CUB scale: H about 0 everywhere; the first setting would win on noise."""
    rows = _rows((0.04, 0.60, 0.70), (0.0, 0.97, 0.99), (0.01, 0.80, 0.80))
    choice = choose(rows, "H")
    assert choice.row["setting"] == {"i": 1} and choice.criterion == "cal_H"
    assert "H flat near zero (best 0.040" in choice.note


def test_everything_flat_falls_back_to_ausuc() -> None:
    rows = _rows((0.0, 0.01, 0.30), (0.0, 0.02, 0.60))
    assert choose(rows, "H").criterion == "ausuc" and choose(rows, "H").row["setting"] == {"i": 1}
    assert choose(rows, "ausuc").note == ""


def test_ties_keep_grid_order_and_nan_never_wins() -> None:
    rows = _rows((math.nan, math.nan, math.nan), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert choose(rows, "H").row["setting"] == {"i": 1}
    assert FLAT_NEAR_ZERO == pytest.approx(0.05)
    with pytest.raises(ValueError, match="no settings"):
        choose([], "H")


def test_a_methods_own_heldout_signal_decides_even_where_negative() -> None:
    """Ridge at CUB scale: validation cal_H preferred the smallest alpha; the rows' held-out R²
    (any real number, not a rate: never 'flat near zero') ranks the settings."""
    rows = [{**r, HELDOUT: r2} for r, r2 in zip(_rows((0.3, 0.31, 0.15), (0.2, 0.30, 0.14), (0.1, 0.27, 0.12)),
                                                  (-0.2, -0.01, -0.05), strict=True)]
    choice = choose(rows, HELDOUT)
    assert choice.row["setting"] == {"i": 1} and choice.criterion == HELDOUT and choice.note == ""


def test_heldout_signal_missing_everywhere_falls_back_to_calibrated_h() -> None:
    rows = [{**r, HELDOUT: -math.inf} for r in _rows((0.3, 0.31, 0.15), (0.2, 0.40, 0.14))]
    choice = choose(rows, HELDOUT)
    assert choice.row["setting"] == {"i": 1} and choice.criterion == "cal_H"
    assert choice.note == "heldout is not finite for any setting: chosen by cal_H"
    assert choose(_rows((0.3, 0.31, 0.15), (0.2, 0.40, 0.14)), HELDOUT).criterion == "cal_H"  # no such key
    nulls = [{**r, HELDOUT: None} for r in _rows((0.3, 0.01, 0.15), (0.2, 0.02, 0.34))]  # as validation.json holds them
    double = choose(nulls, HELDOUT)
    assert double.row["setting"] == {"i": 1} and double.criterion == "ausuc"
    assert double.note == "heldout is not finite for any setting, cal_H too: chosen by ausuc"
