"""A tiny copy of the project (dvc.yaml, params, code) in a temp dir, for end-to-end runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"synthetic": {"n_classes": 12, "n_unseen": 3, "images_per_class": 12, "image_size": 32}},
    "model": {"width": 8, "hidden": 32, "image_size": 32},
    "finetune": {"epochs": 2, "batch_size": 32},
    "mapping": {"epochs": 4, "n_val_classes": 2, "candidate_epochs": [2, 4]},
    "inject": {"max_iters": 20, "pool_size": 24, "lr": [0.001, 0.01], "lambda": [0.001],
               "ridge_alpha": [0.1, 1.0], "eszsl_exponents": [-1, 0, 1],
               "methods": ["niwt", "icis", "regression", "regression_rescaled", "eszsl"]},
    "validate": {"fraction": 0.25, "min_classes": 2, "finetune_epochs": 1},
}


# Execution settings of the tiny runs (several importance shards, small batches).
TINY_RUNTIME = {"NIWT_BATCH_SIZE": "16", "NIWT_SHARD_SIZE": "40"}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def env(tmp: Path) -> dict[str, str]:
    """Subprocess environment: the venv's scripts on PATH, tracking into the temp project."""
    e = os.environ.copy()
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "NIWT_PROGRESS": "0", **TINY_RUNTIME,
              "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
              "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
              "GIT_COMMITTER_EMAIL": "t@t"})
    return e


def make_project(tmp: Path, overrides: dict | None = None) -> Path:
    """Copy dvc.yaml, a tiny params.yaml and the stage code into ``tmp``; git + dvc init."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", tmp / "dvc.yaml")
    shutil.copytree(REPO / "src", tmp / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), overrides or {})
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / ".gitignore", tmp / ".gitignore")
    run(["git", "init", "-q"], tmp)
    run([sys.executable, "-m", "dvc", "init", "-q"], tmp)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], tmp)
    run(["git", "add", "-A"], tmp)
    run(["git", "commit", "-q", "-m", "tiny"], tmp)
    return tmp


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600,
        env_: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env_ or env(cwd), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def dvc(args: list[str], cwd: Path, check: bool = True,
        env_: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check=check, env_=env_)
