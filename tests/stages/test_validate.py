"""``validate`` on a tiny project built by the real stages: what it tunes, on which signal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from niwt.config.load import load_params
from niwt.config.runtime import load_runtime
from niwt.mapping.linear import peak_of
from niwt.params import Params
from niwt.stages import finetune_validation, prepare, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import TINY, merge  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> dict:
    """prepare -> finetune_validation -> validate (NIWT and ridge), tiny; validation.json."""
    root = tmp_path_factory.mktemp("validate_project")
    raw = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY),
                {"inject": {"methods": ["niwt", "regression"]},
                 "mapping": {"lr": [0.001, 0.01], "weight_decay": [0.0, 0.0001], "candidate_epochs": [1, 2, 4]}})
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load_params(root / "params.yaml")
    rt = load_runtime({"NIWT_DEVICE": "cpu", "NIWT_PROGRESS": "0"})
    prepare.run(p, rt, root / "data")
    finetune_validation.run(p, rt, root / "data", root / "backbone.pt")
    validate.run(p, rt, root / "data", root / "backbone.pt", root / "validation.json")
    return json.loads((root / "validation.json").read_text())


def test_the_map_is_chosen_on_its_heldout_trace_and_niwt_is_tuned_on_that_map(validation: dict) -> None:
    """Four (lr, weight decay) traces on record; the map is the one where held-out rank
    correlation peaks among the candidate epochs; NIWT's grid is its own lr x lambda on that map."""
    traces = validation["mapping_traces"]
    candidates = [(0.001, 0.0), (0.001, 0.0001), (0.01, 0.0), (0.01, 0.0001)]
    assert [(t["lr"], t["weight_decay"]) for t in traces] == candidates
    assert all([h["epoch"] for h in t["history"]] == [1, 2, 3, 4] for t in traces)
    lr, weight_decay, epochs = peak_of(traces, (1, 2, 4), "rank_corr")
    assert validation["mapping_chosen_by"] == "heldout rank_corr"
    assert validation["mapping"] == {"lr": lr, "weight_decay": weight_decay, "epochs": epochs}
    niwt = [r["setting"] for r in validation["grid"] if r["method"] == "niwt"]
    assert niwt == [{"mapping_lr": lr, "mapping_weight_decay": weight_decay, "mapping_epochs": epochs,
                     "lr": a, "lambda": 0.001} for a in (0.001, 0.01)]
    assert len([r for r in validation["grid"] if r["method"] == "regression"]) == 2


def test_without_a_heldout_trace_the_map_grid_is_tuned_with_the_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """Too few fitting classes to hold any out: no trace, and the whole map grid goes to the methods."""
    def no_trace(*args, **kwargs):
        raise ValueError("held-out classes must leave images on both sides of the split")

    monkeypatch.setattr(validate, "heldout_trace", no_trace)
    p = Params()
    rng = np.random.default_rng(0)
    traces, grid, rule = validate._map_traces(rng.normal(size=(4, 3)), np.repeat(np.arange(4), 3),
                                              rng.normal(size=(12, 5)), np.repeat(np.arange(4), 3), p)
    assert rule == "joint" and grid == p.mapping
    assert [t["history"] for t in traces] == [None] * 4


def test_niwt_chosen_by_h_gets_a_calibrated_reading_of_its_own(validation: dict) -> None:
    """NIWT (tuned by uncalibrated H) has a second choice for its calibrated reading: the best
    calibrated H of its grid on the chosen forward map, with that row's gamma and margin (written
    even where it is the same setting); ridge, tuned by its held-out signal, has none."""
    by = validation["chosen_by"]["niwt"]
    own = validation["calibrated_choices"]
    assert "regression" not in own and "calibrated" not in validation["chosen_by"]["regression"]
    if by["criterion"] != "H":  # H flat near zero on this draw: the one choice already serves both
        assert "niwt" not in own
        return
    assert by["calibrated"]["criterion"] in ("cal_H", "ausuc")
    rows = [r for r in validation["grid"] if r["method"] == "niwt"]
    best = max(r["cal_H"] for r in rows)
    row = next(r for r in rows if r["setting"] == {k: v for k, v in own["niwt"].items()
                                                    if not k.startswith("calibration_")})
    assert row["cal_H"] == best
    assert (own["niwt"]["calibration_gamma"], own["niwt"]["calibration_margin"]) == \
        (row["calibration_gamma"], row["calibration_margin"])
