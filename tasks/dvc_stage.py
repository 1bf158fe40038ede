"""Run one DVC stage as a Prefect task.

DVC is the only cache authority (it knows when code, params or data changed), so the task has
no Prefect cache (``NO_CACHE``): it always asks ``dvc repro --single-item <stage>``, which is a
no-op when the stage is up to date. Stages run one at a time in one workspace (concurrent
``dvc repro`` calls fight over DVC's lock).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from niwt.stages import STAGE_NAMES

PIPELINE_STAGES = STAGE_NAMES  # the one stage list (niwt.stages.STAGES), in pipeline order


def stage_env(parent_run_id: str | None, pipeline_id: str | None) -> dict[str, str]:
    """The environment of a stage subprocess: the venv on PATH, the MLflow parent run id."""
    env = os.environ.copy()
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # dvc.yaml cmds call the `niwt` script
    env.setdefault("DVC_NO_ANALYTICS", "1")
    if parent_run_id:
        env["NIWT_PARENT_RUN_ID"] = parent_run_id
    if pipeline_id:
        env["NIWT_PIPELINE_ID"] = pipeline_id
    return env


@task(cache_policy=NO_CACHE, retries=0, task_run_name="{stage}", log_prints=True)
def run_dvc_stage(stage: str, workdir: str = ".", parent_run_id: str | None = None,
                  pipeline_id: str | None = None, force: bool = False) -> str:
    """``dvc repro --single-item <stage>``; raises with DVC's stdout and stderr on failure."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    proc = subprocess.run(cmd, cwd=workdir, env=stage_env(parent_run_id, pipeline_id), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    print(proc.stdout[-4000:])
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro {stage} failed (exit {proc.returncode}):\n"
                           f"STDOUT:\n{proc.stdout[-8000:]}\nSTDERR:\n{proc.stderr[-8000:]}")
    return proc.stdout


@task(cache_policy=NO_CACHE)
def dvc_status_clean(workdir: str = ".") -> bool:
    """True when ``dvc status`` reports every stage up to date (the pipeline really finished).

    ``fingerprint`` is ``always_changed`` (it must look at the raw files on every run), so DVC
    always lists it as "always changed"; that alone is clean."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=workdir,
                          env=stage_env(None, None), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return proc.returncode == 0 and status_is_clean(proc.stdout)


def status_is_clean(status_json: str) -> bool:
    """``dvc status --json`` output with nothing to do but rerun the always-changed stages."""
    import json

    try:
        status = json.loads(status_json or "{}")
    except ValueError:
        return False
    return all(changes == ["always changed"] for changes in status.values())


@task(cache_policy=NO_CACHE, retries=0, log_prints=True)
def register_injected(workdir: str = ".", name: str = "niwt-injected", parent_run_id: str | None = None) -> str:
    """``niwt register``: the injected NIWT model into the MLflow registry (a step of the flow, never
    a side effect of a stage, so DVC experiment sweeps do not flood the registry)."""
    cmd = [str(Path(sys.executable).parent / "niwt"), "register", "--name", name]
    proc = subprocess.run(cmd, cwd=workdir, env=stage_env(parent_run_id, None), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    print(proc.stdout[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"niwt register failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip()
