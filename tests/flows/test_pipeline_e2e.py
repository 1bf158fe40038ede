"""End to end on a tiny generated dataset: `dvc repro` (twice) and the Prefect flow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import dvc, env, make_project  # noqa: E402

pytestmark = pytest.mark.slow
from tasks.dvc_stage import status_is_clean  # noqa: E402

from niwt.injection.registry import METHODS  # noqa: E402
from niwt.stages import STAGE_NAMES as STAGES  # noqa: E402
from niwt.stages import STAGES as STAGE_LIST  # noqa: E402

TRACKED = [s.name for s in STAGE_LIST if s.tracked]  # fingerprint opens no MLflow run


def _clean(project: Path) -> bool:
    """`dvc status` has nothing to do but the always-changed fingerprint stage."""
    return status_is_clean(dvc(["status", "--json"], project).stdout)


def _mlflow_runs(project: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("niwt")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_dvc_repro_twice_second_is_noop(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    dvc(["repro"], project)
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert set(metrics) == set(METHODS)
    for m in metrics.values():
        assert {"S", "U", "H", "zsl_top1", "ausuc", "seen_acc"} <= set(m)
        assert all(0.0 <= v <= 1.0 for v in m.values())
    lock_before = (project / "dvc.lock").read_text()
    second = dvc(["repro"], project)
    # only the raw-data fingerprint runs (always); it finds nothing changed, so nothing else runs
    assert [s for s in STAGES if f"Running stage '{s}'" in second.stdout] == ["fingerprint"], second.stdout
    assert (project / "dvc.lock").read_text() == lock_before
    assert _clean(project)
    runs = _mlflow_runs(project)
    assert sorted(r.info.run_name for r in runs) == sorted(TRACKED)
    assert all(r.info.status == "FINISHED" for r in runs)
    evaluate_run = next(r for r in runs if r.info.run_name == "evaluate")
    assert evaluate_run.data.metrics["evaluate/niwt/H"] == pytest.approx(metrics["niwt"]["H"])
    # execution settings are not params: switching device, loader workers or runner reruns nothing
    moved = {**env(project), "NIWT_DEVICE": "cpu", "NIWT_WORKERS": "1", "NIWT_RUNNER": "dask",
             "NIWT_DASK_WORKERS": "3"}
    moved_run = dvc(["repro"], project, env_=moved).stdout
    assert [s for s in STAGES if f"Running stage '{s}'" in moved_run] == ["fingerprint"], moved_run
    # editing a file that a stage imports makes DVC report exactly the stages that import it
    store = project / "src" / "niwt" / "mapping" / "store.py"
    store.write_text(store.read_text() + "\n# edited\n")
    status = dvc(["status"], project).stdout
    assert {"fit_mapping:", "inject:", "explain:"} <= set(status.split())
    assert not {"prepare:", "finetune:", "extract:", "evaluate:"} & set(status.split()), status
    # the importance layer belongs to extract: changing it reruns extract and after, never finetune
    params = (project / "params.yaml").read_text().replace("layer: body.block4", "layer: body.block3")
    (project / "params.yaml").write_text(params)
    third = dvc(["repro"], project).stdout
    ran = [s for s in STAGES if f"Running stage '{s}'" in third]
    assert ran == ["fingerprint", "extract", "fit_mapping", "inject", "evaluate", "explain"], third
    assert torch.load(project / "models" / "injected" / "niwt.pt", weights_only=True)["layer"] == "body.block3"


def test_prefect_flow_runs_pipeline_with_mlflow_parent(tmp_path: Path, monkeypatch, prefect_harness) -> None:
    project = make_project(tmp_path / "proj")
    for key, value in env(project).items():
        monkeypatch.setenv(key, value)
    from flows.pipeline import pipeline

    summary = pipeline(workdir=str(project))
    assert "| NIWT |" in summary and "zsl_top1" in summary
    runs = _mlflow_runs(project)
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted([*TRACKED, "register"])
    assert _clean(project)
    # the register step, not a stage, put the model into the registry: one version
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").search_model_versions(
        "name='niwt-injected'")
    assert [str(v.version) for v in versions] == ["1"]
