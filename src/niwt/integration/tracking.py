"""MLflow helpers for stage runs: one run per stage, grouped under a pipeline parent when present.

The tracking URI is explicit: ``MLFLOW_TRACKING_URI`` when set (any server), otherwise a SQLite
file at the project root. The root is found from the working directory, stepping out of
``.dvc/tmp/exps/...`` so that ``dvc exp run --queue/--temp`` log to the same database as the
workspace instead of a copy that DVC deletes afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARENT_ENV = "NIWT_PARENT_RUN_ID"
INVOCATION_ENV = "NIWT_INVOCATION"
PIPELINE_ENV = "NIWT_PIPELINE_ID"
DISABLE_ENV = "NIWT_TRACKING"  # set to "off" to skip MLflow entirely (quick local debugging)


def quiet_telemetry() -> None:
    """Offline-friendly defaults: no analytics look-ups from MLflow, Prefect or DVC."""
    for key, value in {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
        os.environ.setdefault(key, value)


def project_root(start: Path | None = None) -> Path:
    """The directory holding ``dvc.yaml``, outside any DVC experiment temp copy."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite file at the project root (found from
    ``root``, default the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(root) / 'mlflow.db'}"


def git_commit(root: Path | None = None) -> str:
    """The project's current git commit (``unknown`` outside git)."""
    return _git_commit(project_root(root))


def active_run_id() -> str | None:
    """The id of the MLflow run this process logs to, if any (without importing MLflow when unused)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None and enabled() else None
    return run.info.run_id if run is not None else None


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(client, name: str, root: Path | None = None) -> str:
    """Get or create the experiment, with artifacts under the project root (an absolute path),
    never under the working directory, which is a throw-away copy in ``dvc exp run --temp``."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=(project_root(root) / "mlartifacts").as_uri())


def ensure_experiment(mlflow, name: str) -> str:
    """:func:`experiment_id`, made the fluent API's current experiment."""
    exp_id = experiment_id(mlflow.MlflowClient(), name)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "on").lower() not in {"off", "0", "false"}


def invocation_key() -> str | None:
    """What groups the stage runs of one pipeline invocation under one parent run.

    ``NIWT_INVOCATION`` when the Prefect flow set it (its flow-run id); under ``dvc repro`` /
    ``dvc exp run`` (DVC sets ``DVC_STAGE`` for a stage's command) the ``dvc`` process that runs the
    stages: host, pid and start time; None for a ``niwt`` command typed by hand.
    """
    if os.environ.get(INVOCATION_ENV):
        return os.environ[INVOCATION_ENV]
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    for _ in range(4):  # the dvc process, above any shell DVC ran the command in
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return f"{socket.gethostname()}:{os.getppid()}"
        if "dvc" in cmdline:
            return f"{socket.gethostname()}:{pid}:{stat[19]}"  # field 22: start time, in clock ticks
        pid = int(stat[1])  # field 4: the parent's pid
    return f"{socket.gethostname()}:{os.getppid()}"


def _parent_run(client, exp_id: str, key: str, pipeline_params: dict[str, Any], tags: dict[str, str]) -> str:
    """The parent run of invocation ``key``: found by its tag, or created (with every pipeline param)."""
    found = client.search_runs([exp_id], filter_string=f"tags.`niwt.invocation` = '{key}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or "pipeline"
    run = client.create_run(exp_id, run_name=name, tags={**tags, "niwt.invocation": key, "niwt.stage": "pipeline"})
    _log_params(client, run.info.run_id, pipeline_params)
    return run.info.run_id


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:500]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=items[start:start + 100])


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, params: dict[str, Any],
              pipeline_params: dict[str, Any] | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage; yields the ``mlflow`` module (or None when disabled).

    The run is the child of one parent run per pipeline invocation (:func:`invocation_key`: a
    Prefect flow run, or one ``dvc repro`` / ``dvc exp run``), which carries every pipeline param
    and the git commit; the parent is created by the first stage that actually runs, so a no-op
    ``dvc repro`` creates no run. ``NIWT_PARENT_RUN_ID`` names a parent explicitly instead. A
    ``niwt`` command typed by hand makes a standalone run.
    """
    if not enabled():
        yield None
        return
    quiet_telemetry()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    exp_id = ensure_experiment(mlflow, experiment)
    client = mlflow.MlflowClient()
    tags = {"niwt.stage": stage, "mlflow.source.git.commit": _git_commit(project_root())}
    for env, tag in ((PIPELINE_ENV, "niwt.pipeline_id"), ("DVC_EXP_NAME", "niwt.dvc_exp")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    parent = os.environ.get(PARENT_ENV) or None
    key = None if parent else invocation_key()
    if key is not None:
        parent = _parent_run(client, exp_id, key, pipeline_params or params,
                             {k: v for k, v in tags.items() if k != "niwt.stage"})
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, run_name=stage, tags=tags)
    status = "FAILED"
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            _log_params(client, run.info.run_id, params)
            yield mlflow
        status = "FINISHED"
    finally:
        if key is not None:
            client.set_terminated(parent, status=status)


def log_children(mlflow, runs: dict[str, dict[str, float]], params: dict[str, Any]) -> None:
    """One child run of the active run per entry, tagged ``method``, with the same metric names in
    each (MLflow's compare view then puts them side by side) and the stage's params."""
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    for name, metrics in runs.items():
        child = client.create_run(active.info.experiment_id, run_name=name,
                                  tags={"mlflow.parentRunId": active.info.run_id, "method": name,
                                        "niwt.stage": active.data.tags.get("niwt.stage", "")})
        _log_params(client, child.info.run_id, {**params, "method": name})
        for key, value in metrics.items():
            client.log_metric(child.info.run_id, key, value)
        client.set_terminated(child.info.run_id)


def log_steps(mlflow, steps: dict[str, list[tuple[int, float]]]) -> None:
    """Per-epoch metrics of the active run, each value at its step (MLflow draws them as curves)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(name, float(v), now, int(step)) for name, series in steps.items() for step, v in series]
    client = mlflow.MlflowClient()
    for start in range(0, len(items), 1000):
        client.log_batch(mlflow.active_run().info.run_id, metrics=items[start:start + 1000])
