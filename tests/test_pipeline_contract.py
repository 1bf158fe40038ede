"""The names agree everywhere: dvc.yaml stages, CLI subcommands, Prefect stages, params sections."""

from __future__ import annotations

from pathlib import Path

import yaml

from niwt.cli import SECTIONS, build_parser
from niwt.params import load_params

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _subcommands() -> set[str]:
    action = next(a for a in build_parser()._actions if a.dest == "stage")
    return set(action.choices)


def test_every_dvc_stage_is_a_cli_subcommand_named_in_its_cmd() -> None:
    for name, stage in DVC.items():
        assert name in _subcommands()
        assert stage["cmd"].split()[:2] == ["niwt", name]


def test_prefect_pipeline_runs_the_dvc_stages_in_dag_order() -> None:
    from tasks.dvc_stage import PIPELINE_STAGES

    assert list(PIPELINE_STAGES) == [s for s in DVC if s in PIPELINE_STAGES]
    assert set(PIPELINE_STAGES) <= set(DVC)


def test_each_stage_depends_on_its_own_module_and_params_sections_exist() -> None:
    params = load_params(REPO / "params.yaml")
    for name, stage in DVC.items():
        assert f"src/niwt/stages/{name}.py" in stage["deps"], name
        for section in stage.get("params", []):
            key = section if isinstance(section, str) else next(iter(section))
            top = key.split(".")[0]
            assert hasattr(params, top), f"{name}: params section {top!r} unknown"
        assert set(SECTIONS[name]) <= {s.split(".")[0] for s in stage.get("params", [])}, name


def test_core_has_no_orchestration_imports() -> None:
    """The pure core never imports Prefect, DVC or MLflow (one-way imports)."""
    core = [p for d in ("data", "models", "importance", "mapping", "injection", "peers", "io")
            for p in (REPO / "src" / "niwt" / d).glob("*.py")]
    core += [REPO / "src" / "niwt" / f for f in ("metrics.py", "training.py", "params.py")]
    for path in core:
        text = path.read_text()
        for banned in ("import prefect", "from prefect", "import mlflow", "from mlflow", "import dvc", "from dvc"):
            assert banned not in text, f"{path}: {banned}"
