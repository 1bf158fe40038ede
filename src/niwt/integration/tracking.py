"""MLflow helpers for stage runs: one run per stage, grouped under a pipeline parent when present.

The tracking URI is explicit: ``MLFLOW_TRACKING_URI`` when set (any server), otherwise a SQLite
file at the project root. The root is found from the working directory, stepping out of
``.dvc/tmp/exps/...`` so that ``dvc exp run --queue/--temp`` log to the same database as the
workspace instead of a copy that DVC deletes afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARENT_ENV = "NIWT_PARENT_RUN_ID"
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


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, params: dict[str, Any]) -> Iterator[Any]:
    """Open the MLflow run of one stage; yields the ``mlflow`` module (or None when disabled).

    Under a Prefect pipeline run the parent id arrives through ``NIWT_PARENT_RUN_ID`` and the run
    becomes its child; under plain ``dvc repro`` it is a standalone run tagged with the git
    commit and the DVC experiment name, so the UI can still group and compare.
    """
    if not enabled():
        yield None
        return
    quiet_telemetry()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    ensure_experiment(mlflow, experiment)
    tags = {"niwt.stage": stage, "mlflow.source.git.commit": _git_commit(project_root())}
    for env, tag in ((PIPELINE_ENV, "niwt.pipeline_id"), ("DVC_EXP_NAME", "niwt.dvc_exp")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    parent = os.environ.get(PARENT_ENV) or None
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags):
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        yield mlflow
