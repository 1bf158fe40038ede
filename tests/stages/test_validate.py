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
from niwt.evaluation import selection
from niwt.mapping.linear import peak_of
from niwt.params import Params
from niwt.stages import finetune_validation, prepare, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import TINY, merge  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """prepare -> finetune_validation -> validate (NIWT and ridge), tiny; the project's root."""
    root = tmp_path_factory.mktemp("validate_project")
    raw = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY),
                {"inject": {"methods": ["niwt", "regression"]},
                 "mapping": {"lr": [0.001, 0.01], "weight_decay": [0.0, 0.0001], "candidate_epochs": [1, 2, 4]}})
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p, rt = _setup(root)
    prepare.run(p, rt, root / "data")
    finetune_validation.run(p, rt, root / "data", root / "backbone.pt")
    validate.run(p, rt, root / "data", root / "backbone.pt", root / "validation.json")
    return root


def _setup(root: Path) -> tuple[Params, object]:
    return load_params(root / "params.yaml"), load_runtime({"NIWT_DEVICE": "cpu", "NIWT_PROGRESS": "0"})


@pytest.fixture(scope="module")
def validation(project: Path) -> dict:
    """The tiny project's validation.json."""
    return json.loads((project / "validation.json").read_text())


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


def test_niwt_chosen_by_h_gets_a_calibrated_reading_of_its_own(project: Path, validation: dict,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """NIWT tuned by uncalibrated H has a second choice for its calibrated reading: the best
    calibrated H of its grid on the chosen forward map, with that row's gamma and margin; ridge,
    tuned by its held-out signal, has none. On the tiny project NIWT's H is flat near zero (its
    choice falls back to calibrated H, which serves both readings: no second choice); with the
    flatness floor removed, H ranks."""
    assert validation["chosen_by"]["niwt"]["criterion"] == "cal_H" and validation["calibrated_choices"] == {}
    monkeypatch.setattr(selection, "FLAT_NEAR_ZERO", -1.0)
    p, rt = _setup(project)
    validate.run(p, rt, project / "data", project / "backbone.pt", project / "by_h.json")
    doc = json.loads((project / "by_h.json").read_text())
    by = doc["chosen_by"]["niwt"]
    assert by["criterion"] == "H" and by["calibrated"]["criterion"] == "cal_H"
    assert list(doc["calibrated_choices"]) == ["niwt"] and "calibrated" not in doc["chosen_by"]["regression"]
    chosen, own = doc["choices"]["niwt"], doc["calibrated_choices"]["niwt"]
    on_map = [r for r in doc["grid"] if r["method"] == "niwt"
              and all(r["setting"][k] == chosen[k] for k in ("mapping_lr", "mapping_weight_decay", "mapping_epochs"))]
    assert len(on_map) == 2  # lr 0.001, 0.01 x lambda 0.001 on the one chosen map
    row = next(r for r in on_map if r["setting"] == {k: v for k, v in own.items() if not k.startswith("calibration_")})
    assert row["cal_H"] == max(r["cal_H"] for r in on_map)
    keys = ("calibration_gamma", "calibration_margin", "calibration_margin_sd")
    assert [own[k] for k in keys] == [row[k] for k in keys]
