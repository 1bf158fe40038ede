"""The tiny project behind the stage-failure tests, and how those tests run a stage and judge its failure.

The ``proj`` fixture (``conftest.py``) prepares, fine-tunes, validates, extracts, fits the mapping and
injects once on the tiny config; its outputs are the inputs of every later stage a test runs. Each
test runs a stage through ``niwt.cli.main`` exactly as ``dvc.yaml`` types it (tracking off), with
its outputs in the test's own temp directory. Plain helpers live here, fixtures in ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from niwt.cli import main  # noqa: E402
from niwt.data.tables import read_classes  # noqa: E402
from tiny_project import REPO, TINY, merge  # noqa: E402

# Only the two fast peers: injection itself is not under test here.
FAST = {"inject": {"methods": ["regression", "regression_rescaled"]}}


def write_params(path: Path, overrides: dict | None = None) -> Path:
    params = merge(merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), FAST), overrides or {})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@dataclasses.dataclass(frozen=True)
class Project:
    root: Path
    params: Path
    data: Path
    model: Path
    importances: Path
    mapping: Path
    injected: Path
    validation: Path


def build_project(root: Path) -> Project:
    """prepare -> finetune -> validate -> extract -> fit_mapping -> inject in ``root``, on the tiny config."""
    p = Project(root, write_params(root / "params.yaml"), root / "data/prepared", root / "models/finetuned.pt",
                root / "data/importances", root / "models/mapping.pt", root / "models/injected",
                root / "models/validation.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIWT_TRACKING", "off")
        mp.setenv("NIWT_PROGRESS", "0")
        for argv in (["prepare", "--out", p.data],
                     ["finetune", "--data", p.data, "--out", p.model, "--history", root / "plots/ft.csv"],
                     ["finetune_validation", "--data", p.data, "--out", root / "models/validation_backbone.pt"],
                     ["validate", "--data", p.data, "--backbone", root / "models/validation_backbone.pt",
                      "--out", p.validation],
                     ["extract", "--data", p.data, "--model", p.model, "--out", p.importances],
                     ["fit_mapping", "--data", p.data, "--importances", p.importances, "--validation", p.validation,
                      "--out", p.mapping, "--inverse-out", root / "models/inverse_map.pt",
                      "--history", root / "plots/map.csv"],
                     ["inject", "--data", p.data, "--model", p.model, "--mapping", p.mapping,
                      "--validation", p.validation, "--out", p.injected]):
            assert main([str(a) for a in argv] + ["--params", str(p.params)]) == 0, argv[0]
    return p


def class_names(proj: Project) -> list[str]:
    return read_classes(proj.data / "classes.parquet").names


def snapshot(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def temp_leftovers(root: Path) -> list[str]:
    """Temporaries of ``atomic_path`` / ``atomic_files`` (``.<name>.<random>.tmp``) anywhere under root."""
    return [str(f) for f in root.rglob(".*.tmp")]


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def stage_argv(stage: str, proj: Project, out: Path, params: Path, data: Path | None = None,
               model: Path | None = None, mapping: Path | None = None, injected: Path | None = None) -> list:
    """The dvc.yaml command of ``stage``, inputs from the tiny project (or overrides), outputs in ``out``."""
    data = data or proj.data
    model = model or proj.model
    args = {
        "finetune": ["--data", data, "--out", out / "finetuned.pt", "--history", out / "finetune.csv"],
        "extract": ["--data", data, "--model", model, "--out", out / "importances"],
        "fit_mapping": ["--data", data, "--importances", proj.importances, "--validation", proj.validation,
                        "--out", out / "mapping.pt", "--inverse-out", out / "inverse_map.pt",
                        "--history", out / "mapping.csv"],
        "inject": ["--data", data, "--model", model, "--mapping", mapping or proj.mapping,
                   "--validation", proj.validation, "--out", out / "injected"],
        "evaluate": ["--data", data, "--injected", injected or proj.injected, "--validation", proj.validation,
                     "--plots", out / "plots", "--headline", out / "gzsl"],
    }[stage]
    return [stage, *args, "--params", params, "--stats", out / "metrics.json"]


def assert_failed_cleanly(rc: int, err: str, pattern: str, out: Path) -> None:
    assert rc == 2, err
    assert re.search(pattern, err, re.S), f"stderr does not match {pattern!r}:\n{err}"
    assert "Traceback" not in err
    left = sorted(str(f.relative_to(out)) for f in out.rglob("*")) if out.exists() else []
    assert left == [], f"partial outputs left behind: {left}"


def fail_on_call(n: int, real: Callable, exc: BaseException) -> Callable:
    """``real`` that raises ``exc`` on its n-th call (1-based) instead of returning."""
    count = {"calls": 0}

    def wrapper(*args, **kwargs):
        count["calls"] += 1
        if count["calls"] == n:
            raise exc
        return real(*args, **kwargs)

    return wrapper
