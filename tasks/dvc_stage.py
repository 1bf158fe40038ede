"""Run one DVC stage as a Prefect task.

DVC is the only cache authority (it knows when code, params or data changed), so the task has
no Prefect cache (``NO_CACHE``): it always asks ``dvc repro --single-item <stage>``, which is a
no-op when the stage is up to date; such a run ends in a ``Completed`` state named ``Skipped``.
Stages run one at a time in one workspace (concurrent ``dvc repro`` calls fight over DVC's lock), except
the fine-tuning pair with the flow's ``parallel_training``: they run their own commands side by side
(:func:`run_stage_alongside`) and are then recorded with ``dvc commit``.
The stage's output is streamed to the Prefect log line by line while it runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from niwt.cli import WATCH_ENV
from niwt.integration.tracking import INVOCATION_ENV, PIPELINE_ENV
from niwt.pipeline import STAGE_NAMES, STAGES

PIPELINE_STAGES = STAGE_NAMES  # the one stage list (niwt.stages.STAGES), in pipeline order
TRACKED_STAGES = tuple(s.name for s in STAGES if s.tracked)  # fingerprint runs every time and logs nothing


def stage_env(invocation: str | None, pipeline_id: str | None) -> dict[str, str]:
    """The environment of a stage subprocess: the venv on PATH; the invocation key under which the
    first stage that runs creates the MLflow parent run (so a no-op flow run leaves no empty run)."""
    env = os.environ.copy()
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # dvc.yaml cmds call the `niwt` script
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["PYTHONUNBUFFERED"] = "1"  # stream, do not block-buffer, the stage's output
    if invocation:
        env[INVOCATION_ENV] = invocation
    if pipeline_id:
        env[PIPELINE_ENV] = pipeline_id
    return env


def _stream(cmd: list[str], workdir: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run ``cmd``, logging each output line as it comes; returns (exit status, all lines)."""
    logger = get_run_logger()
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            if line:
                logger.info(line)
        return proc.wait(), lines


def skipped(stage: str, output: str) -> bool:
    """DVC found the stage up to date and ran nothing."""
    return f"Running stage '{stage}'" not in output


@task(cache_policy=NO_CACHE, retries=0, task_run_name="{stage}")
def run_dvc_stage(stage: str, workdir: str = ".", invocation: str | None = None,
                  pipeline_id: str | None = None, force: bool = False) -> State:
    """``dvc repro --single-item <stage>``; raises with the output's tail on failure; a stage DVC
    skipped ends ``Completed`` with the state name ``Skipped``."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    code, lines = _stream(cmd, workdir, stage_env(invocation, pipeline_id))
    output = "\n".join(lines)
    if code != 0:
        raise RuntimeError(f"dvc repro {stage} failed (exit {code}):\n{output[-8000:]}")
    if skipped(stage, output):
        return Completed(name="Skipped", message=f"{stage}: up to date, DVC ran nothing", data="skipped")
    return Completed(message=f"{stage}: ran", data="ran")


# Stages that share no outputs and may train at the same time (the flow's ``parallel_training``).
SIDE_BY_SIDE = ("finetune", "finetune_validation")


SAFE_TOKEN = re.compile(r"[A-Za-z0-9_./=:,+-]+")


def stage_command(stage: str, workdir: str) -> list[str]:
    """The stage's ``cmd`` in ``dvc.yaml`` as an argument list, accepted only in the form this project
    writes (``niwt <stage> --flag path ...``: plain tokens, no shell syntax, no interpolation, no
    ``wdir``/``foreach``/``matrix``), so that it is what ``dvc repro`` would run; it is run without a
    shell, and nothing else written in the file is ever executed."""
    import shlex

    import yaml

    spec = (yaml.safe_load((Path(workdir) / "dvc.yaml").read_text()) or {}).get("stages", {}).get(stage, {})
    cmd = spec.get("cmd") if isinstance(spec, dict) and not {"wdir", "foreach", "matrix", "do"} & set(spec) else None
    argv = shlex.split(cmd) if isinstance(cmd, str) else []
    if argv[:2] != ["niwt", stage] or not all(SAFE_TOKEN.fullmatch(a) for a in argv):
        raise ValueError(f"dvc.yaml: stage {stage}'s cmd is not a plain `niwt {stage} --flag path ...` command; "
                         "run the flow without parallel_training")
    return [str(Path(sys.executable).parent / "niwt"), *argv[1:]]


def current_stages(stages: list[str], workdir: str) -> set[str]:
    """Which of ``stages`` DVC finds up to date themselves (their upstream stages ran before them in the
    flow): one ``dvc status`` for all, before they start (it takes DVC's repository lock)."""
    import json

    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], cwd=workdir,
                          env=stage_env(None, None), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc status {' '.join(stages)} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    changed = json.loads(proc.stdout or "{}")
    return {s for s in stages if s not in changed}


@task(cache_policy=NO_CACHE, retries=0, task_run_name="{stage}")
def run_stage_alongside(stage: str, workdir: str = ".", invocation: str | None = None,
                        pipeline_id: str | None = None) -> str:
    """The stage's own command, run outside ``dvc repro`` (whose repository lock admits one ``dvc repro``
    at a time) so that another stage can run beside it; ``dvc commit`` records its outputs after. The
    stage stops if this process dies (``NIWT_WATCH_PARENT``), as under ``dvc repro``."""
    env = {**stage_env(invocation, pipeline_id), WATCH_ENV: "1"}
    code, lines = _stream(stage_command(stage, workdir), workdir, env)
    if code != 0:
        raise RuntimeError(f"{stage} failed (exit {code}):\n" + "\n".join(lines)[-8000:])
    return "ran"


@task(cache_policy=NO_CACHE, retries=0)
def commit_stages(stages: list[str], workdir: str = ".") -> None:
    """``dvc commit`` the stages run beside each other: dvc.lock and the cache record their outputs,
    as ``dvc repro`` would have."""
    cmd = [sys.executable, "-m", "dvc", "commit", "--force", *stages]
    code, lines = _stream(cmd, workdir, stage_env(None, None))
    if code != 0:
        raise RuntimeError(f"dvc commit {' '.join(stages)} failed (exit {code}):\n" + "\n".join(lines)[-4000:])


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


@task(cache_policy=NO_CACHE, retries=0)
def register_injected(workdir: str = ".", name: str = "niwt-injected", invocation: str | None = None) -> str:
    """``niwt register``: the injected NIWT model into the MLflow registry, with the alias
    ``champion`` (a step of the flow, never a side effect of a stage, so DVC experiment sweeps do
    not flood the registry)."""
    cmd = [str(Path(sys.executable).parent / "niwt"), "register", "--name", name, "--alias", "champion"]
    code, lines = _stream(cmd, workdir, stage_env(invocation, None))
    if code != 0:
        raise RuntimeError(f"niwt register failed (exit {code}):\n" + "\n".join(lines)[-4000:])
    return "\n".join(lines)
