"""The execution settings (:class:`niwt.params.Runtime`) from ``NIWT_*`` variables and ``niwt`` flags.

Where and how a stage runs, never what it computes: they are not in ``params.yaml`` (no stage lists
them), so switching to a GPU, to Dask or to more loader workers never makes DVC rerun anything.
``dvc repro`` passes the environment to its stages; a ``niwt`` flag overrides its variable.
"""

from __future__ import annotations

import typing
from typing import Any

from niwt.config.load import build
from niwt.errors import ParamsError
from niwt.params import Runtime

RUNTIME_ENV = {"device": "NIWT_DEVICE", "workers": "NIWT_WORKERS", "runner": "NIWT_RUNNER",
               "dask_address": "NIWT_DASK_ADDRESS", "dask_workers": "NIWT_DASK_WORKERS", "progress": "NIWT_PROGRESS",
               "batch_size": "NIWT_BATCH_SIZE", "shard_size": "NIWT_SHARD_SIZE", "channels_last": "NIWT_CHANNELS_LAST",
               "nproc": "NIWT_NPROC"}
RUNTIME_BOUNDS = {"workers": ("NIWT_WORKERS", 0, 512), "dask_workers": ("NIWT_DASK_WORKERS", 1, 4096),
                  "batch_size": ("NIWT_BATCH_SIZE", 0, 65_536), "shard_size": ("NIWT_SHARD_SIZE", 1, 10_000_000),
                  "nproc": ("NIWT_NPROC", 1, 4096)}


def _from_env(text: str, hint: Any, where: str) -> Any:
    if hint is bool:
        lowered = text.strip().lower()
        if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise ParamsError(f"{where}: expected 1/0/true/false, got {text!r}")
        return lowered in {"1", "true", "yes", "on"}
    if hint is int:
        try:
            return int(text)
        except ValueError as err:
            raise ParamsError(f"{where}: expected an integer, got {text!r}") from err
    return text


def load_runtime(environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None,
                 terminal: bool | None = None) -> Runtime:
    """The execution settings from ``NIWT_*`` environment variables, then ``overrides`` (CLI flags;
    None values are ignored). Progress bars default to whether stderr is a terminal (``terminal``):
    in a pipe, a log file or a Prefect log a bar is hundreds of carriage-return fragments, and the
    stages print their own one-line progress (epochs, shards) anyway; ``NIWT_PROGRESS`` decides
    when set."""
    import os
    import sys

    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(Runtime)
    raw: dict[str, Any] = {"progress": sys.stderr.isatty() if terminal is None else terminal}
    for key, var in RUNTIME_ENV.items():
        if environ.get(var, "") != "":
            raw[key] = _from_env(environ[var], hints[key], var)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    runtime = build(Runtime, raw, "execution settings (NIWT_* environment variables, niwt flags)")
    for key, (var, low, high) in RUNTIME_BOUNDS.items():
        value = getattr(runtime, key)
        if not low <= value <= high:
            flag = "--" + key.replace("_", "-")
            raise ParamsError(f"execution setting {var} (or {flag}) must be between {low} and {high}, got {value}")
    return runtime
