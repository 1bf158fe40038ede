"""End to end on a tiny generated dataset: `dvc repro` (twice) and the Prefect flow."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import REPO, dvc, env, make_project  # noqa: E402

pytestmark = pytest.mark.slow
from tasks.dvc_stage import status_is_clean  # noqa: E402

from niwt.injection.registry import defaults  # noqa: E402
from niwt.pipeline import STAGE_NAMES as STAGES  # noqa: E402
from niwt.pipeline import STAGES as STAGE_LIST  # noqa: E402

METHODS = defaults()  # the default run's methods (the tiny project lists the same ones)
TRACKED = [s.name for s in STAGE_LIST if s.tracked]  # fingerprint opens no MLflow run


def _clean(project: Path) -> bool:
    """`dvc status` has nothing to do but the always-changed fingerprint stage."""
    return status_is_clean(dvc(["status", "--json"], project).stdout)


def client_for(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def _mlflow_runs(project: Path):
    client = client_for(project)
    exp = client.get_experiment_by_name("niwt")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_dvc_repro_twice_second_is_noop(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    dvc(["repro"], project)
    metrics = json.loads((project / "stats" / "evaluate.json").read_text())
    assert set(metrics) == set(METHODS)
    for m in metrics.values():
        assert {"S", "U", "H", "zsl_top1", "ausuc", "seen_acc"} <= set(m)
    # the declared DVC metrics: the headline only, one file per method, at most 40 numbers, rounded
    shown = dvc(["metrics", "show", "--json"], project).stdout
    declared = next(iter(json.loads(shown).values()))["data"]  # the workspace
    assert sorted(declared) == sorted(f"metrics/gzsl/{m}.json" for m in METHODS)
    values = [v for f in declared.values() for v in f["data"].values()]
    assert len(values) <= 40 and all(isinstance(v, float) and round(v, 4) == v and 0 <= v <= 1 for v in values)
    for f in declared.values():
        assert set(f["data"]) == {"S", "U", "H", "cal_H", "AUSUC", "ZSL_T1", "seen_acc"}
    table = dvc(["metrics", "show"], project).stdout
    assert max(len(line) for line in table.splitlines()) <= 160, table
    # DVC plots: one series per method for the curves, one panel per method for per-class accuracy
    plots = json.loads(dvc(["plots", "show", "--json"], project).stdout)
    assert "errors" not in plots, plots.get("errors")
    # the offline view (the README's): the PNG plots dvc.yaml lists, as images DVC shows without a CDN
    pngs = {"plots/evaluate/seen_unseen_curve.png", "plots/evaluate/unseen_per_class.png", "plots/finetune_history.png"}
    assert pngs <= set(plots["data"]) and all(plots["data"][p][0]["type"] == "image" for p in pngs), list(plots["data"])
    curves = plots["data"]["seen_unseen_curves"][0]["content"]["data"]["values"]
    assert {v["filename"] for v in curves} == {f"{m}.csv" for m in METHODS}
    bars = plots["data"]["per_class_accuracy"][0]["content"]
    assert bars["encoding"]["column"]["field"] == "filename" and len(bars["data"]["values"]) == 5 * 12
    lock_before = (project / "dvc.lock").read_text()
    second = dvc(["repro"], project)
    # only the raw-data fingerprint runs (always); it finds nothing changed, so nothing else runs
    assert [s for s in STAGES if f"Running stage '{s}'" in second.stdout] == ["fingerprint"], second.stdout
    assert (project / "dvc.lock").read_text() == lock_before
    assert _clean(project)
    runs = _mlflow_runs(project)
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("niwt.stage") in TRACKED
                  and "method" not in r.data.tags) == sorted(TRACKED)
    assert all(r.info.status == "FINISHED" for r in runs)
    evaluate_run = next(r for r in runs if r.info.run_name == "evaluate")
    assert evaluate_run.data.metrics["evaluate/niwt/H"] == pytest.approx(metrics["niwt"]["H"])
    # one parent run for the `dvc repro`, holding every pipeline param; the stages its children
    (parent,) = [r for r in runs if r.data.tags.get("niwt.stage") == "pipeline"]
    assert parent.data.params["inject.lambda"] == "0.001"  # the tiny config fixes it (one candidate)
    assert parent.data.params["extract.layer"] == "auto"
    # and every method's headline: the run to compare across experiments (params and metrics together)
    assert parent.data.metrics["niwt/H"] == pytest.approx(metrics["niwt"]["H"])
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == set(TRACKED)
    # one run per method, same metric names, tagged ``method``: the compare view puts them side by side
    per_method = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == evaluate_run.info.run_id]
    assert {r.data.tags["method"] for r in per_method} == set(METHODS)
    assert all(set(r.data.metrics) == {"S", "U", "H", "cal_H", "AUSUC", "ZSL_T1", "seen_acc"} for r in per_method)
    # per-epoch step metrics
    finetune_run = next(r for r in runs if r.info.run_name == "finetune")
    history = client_for(project).get_metric_history(finetune_run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    # the default DVC remote is a local directory beside the checkout: push and pull work offline
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")
    dvc(["push"], project)
    assert any((project.parent / "niwt-dvc-remote").rglob("*")), "dvc push stored nothing"
    # execution settings are not params: switching device, loader workers or runner reruns nothing
    moved = {**env(project), "NIWT_DEVICE": "cpu", "NIWT_WORKERS": "1", "NIWT_RUNNER": "dask",
             "NIWT_DASK_WORKERS": "3"}
    n_runs = len(_mlflow_runs(project))
    moved_run = dvc(["repro"], project, env_=moved).stdout
    assert [s for s in STAGES if f"Running stage '{s}'" in moved_run] == ["fingerprint"], moved_run
    assert len(_mlflow_runs(project)) == n_runs  # nothing tracked ran: no run, no empty parent
    # editing a file that a stage imports makes DVC report exactly the stages that import it
    store = project / "src" / "niwt" / "mapping" / "store.py"
    store.write_text(store.read_text() + "\n# edited\n")
    status = dvc(["status"], project).stdout
    lineage = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    importers = {f"{s}:" for s, spec in lineage.items() if "src/niwt/mapping/store.py" in spec.get("deps", [])}
    assert {"validate:", "fit_mapping:", "inject:"} <= importers
    assert {w for w in status.split() if w.endswith(":") and w[:-1] in STAGES} - {"fingerprint:"} == importers, status
    assert not {"prepare:", "finetune:", "finetune_validation:", "extract:"} & set(status.split()), status
    # the importance layer belongs to extract: changing it reruns extract and after, never finetune
    params = (project / "params.yaml").read_text().replace("layer: auto", "layer: body.block3")
    (project / "params.yaml").write_text(params)
    third = dvc(["repro"], project).stdout
    ran = [s for s in STAGES if f"Running stage '{s}'" in third]
    assert ran == ["fingerprint", "validate", "extract", "fit_mapping", "inject", "evaluate", "explain"], third
    assert torch.load(project / "models" / "injected" / "niwt.pt", weights_only=True)["layer"] == "body.block3"


def test_prefect_flow_runs_pipeline_with_mlflow_parent(tmp_path: Path, monkeypatch, prefect_harness) -> None:
    project = make_project(tmp_path / "proj")
    for key, value in env(project).items():
        monkeypatch.setenv(key, value)
    from flows.pipeline import pipeline

    # the two fine-tuning stages side by side (they share no outputs), then recorded with dvc commit
    summary = pipeline(workdir=str(project), parallel_training=True)
    assert "| NIWT |" in summary and "zsl_top1" in summary
    runs = _mlflow_runs(project)
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted([*TRACKED, "register"])
    a, b = (next(r.info for r in children if r.info.run_name == s) for s in ("finetune", "finetune_validation"))
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the fine-tuning stages did not overlap"
    assert _clean(project)
    # the register step, not a stage, put the model into the registry: one version
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    versions = client.search_model_versions("name='niwt-injected'")
    assert [str(v.version) for v in versions] == ["1"]
    assert client.get_model_version_by_alias("niwt-injected", "champion").version == versions[0].version
    # a second flow run: DVC skips every stage, each is marked so, and no MLflow run or version appears
    n_runs = len(_mlflow_runs(project))
    again = pipeline(workdir=str(project), parallel_training=True)
    assert all(f"| {stage} | skipped (up to date) |" in again for stage in TRACKED), again
    assert "| fingerprint | ran |" in again  # the raw-data fingerprint runs every time (0.2 s at 37k files)
    assert len(_mlflow_runs(project)) == n_runs
    assert len(client.search_model_versions("name='niwt-injected'")) == 1


def test_telemetry_is_off_before_prefect_is_imported() -> None:
    """Importing the flows sets the offline telemetry settings before Prefect (or MLflow) loads."""
    import subprocess

    code = ("import sys, os; import flows; assert 'prefect' not in sys.modules; "
            "print(os.environ['DO_NOT_TRACK'], os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'], "
            "os.environ['MLFLOW_DISABLE_TELEMETRY'])")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["true", "false", "true"]
