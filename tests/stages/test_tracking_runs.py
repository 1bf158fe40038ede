"""How stage runs land in MLflow: one readable run list (issue 26).

Direct ``niwt <stage>`` calls nest under one run; a pipeline parent whose stage failed says so in its name;
the reference run committed in git is logged once, so a fresh clone has a run to compare a sweep with.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from _project import Project, cli, fail_on_call, stage_argv

from niwt.config.load import load_params


def test_direct_calls_nest_under_one_run_and_a_failed_pipeline_parent_says_so(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`niwt <stage>` typed by hand: every call nested under one FINISHED "direct stage calls" run (the
    run list stays readable). A pipeline parent whose stage failed is FAILED and named "... (failed at
    <stage>)", and gets its own name back when the stage reruns in the same invocation."""
    from mlflow import MlflowClient

    import niwt.stages.evaluate as evaluate

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("NIWT_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.delenv("NIWT_INVOCATION", raising=False)
    params = tmp_path / "params.yaml"
    shutil.copy(proj.params, params)
    for k in range(2):
        rc, err = cli(capsys, *stage_argv("evaluate", proj, tmp_path / f"out{k}", params))
        assert rc == 0, err
    client = MlflowClient(tracking_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("niwt").experiment_id])
    (direct,) = [r for r in runs if r.data.tags.get("niwt.stage") == "direct"]
    assert direct.info.run_name == "direct stage calls" and direct.info.status == "FINISHED" and not direct.data.params
    stage_runs = [r for r in runs if r.info.run_name == "evaluate"]
    assert len(stage_runs) == 2 and {r.data.tags["mlflow.parentRunId"] for r in stage_runs} == {direct.info.run_id}

    monkeypatch.setenv("NIWT_INVOCATION", "flow-run-7")
    real = evaluate.draw_seen_unseen_curves
    monkeypatch.setattr(evaluate, "draw_seen_unseen_curves", fail_on_call(1, real, KeyboardInterrupt()))
    rc, _ = cli(capsys, *stage_argv("evaluate", proj, tmp_path / "out2", params))
    assert rc == 130
    (parent,) = client.search_runs([direct.info.experiment_id], "tags.`niwt.invocation` = 'flow-run-7'")
    assert parent.info.status == "FAILED" and parent.info.run_name == "pipeline (failed at evaluate)"
    monkeypatch.setattr(evaluate, "draw_seen_unseen_curves", real)
    rc, err = cli(capsys, *stage_argv("evaluate", proj, tmp_path / "out2", params))
    assert rc == 0, err
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline"



def test_the_committed_baseline_is_logged_once(proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """A pipeline run in a git checkout that commits params.yaml and metrics/gzsl/*.json logs that
    reference run once ("committed baseline": HEAD's params as a pipeline run logs them, every method's
    headline as ``<method>/<metric>``), beside its own parent run; a second invocation adds none."""
    from mlflow import MlflowClient

    root = tmp_path / "project"
    root.mkdir()
    params = root / "params.yaml"
    shutil.copy(proj.params, params)
    methods = load_params(params).inject.methods
    (root / "metrics" / "gzsl").mkdir(parents=True)
    committed = {m: {"S": 0.5, "U": 0.25 + i / 100, "H": 0.3333} for i, m in enumerate(methods)}
    for m, values in committed.items():
        (root / "metrics" / "gzsl" / f"{m}.json").write_text(json.dumps(values))
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "baseline"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("NIWT_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    for invocation in ("flow-run-1", "flow-run-2"):
        monkeypatch.setenv("NIWT_INVOCATION", invocation)
        rc, err = cli(capsys, *stage_argv("evaluate", proj, tmp_path / invocation, params))
        assert rc == 0, err
    client = MlflowClient(tracking_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("niwt").experiment_id])
    (baseline,) = [r for r in runs if r.info.run_name == "committed baseline"]
    parents = [r for r in runs if r.data.tags.get("niwt.stage") == "pipeline"]
    assert len(parents) == 2 and baseline.info.status == "FINISHED"
    assert baseline.data.metrics == {f"{m}/{k}": v for m, values in committed.items() for k, v in values.items()}
    assert baseline.data.params == parents[0].data.params  # the same params, the same names: comparable
