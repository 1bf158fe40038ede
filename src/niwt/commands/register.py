"""``niwt register``: put an injected checkpoint into the MLflow model registry, from a run of its own
(``register``; a child of the pipeline run under the Prefect flow).

A step of its own (the Prefect pipeline runs it after ``explain``), never a side effect of a stage,
so a ``dvc exp run`` sweep does not add a registry version per experiment.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DEFAULT_NAME = "niwt-injected"


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", type=Path, default=Path("models/injected/niwt.pt"),
                    help="injected checkpoint (default: %(default)s)")
    sp.add_argument("--name", default=DEFAULT_NAME, help="registered model name (default: %(default)s)")
    sp.add_argument("--alias", default="champion",
                    help="alias the new version gets, e.g. models:/NAME@champion (default: %(default)s; '' for none)")
    sp.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="params file, for tracking.experiment (default: %(default)s)")


def check_name(name: str) -> None:
    """A registered model name MLflow accepts and a ``models:/NAME@alias`` URI can carry: letters, digits,
    ``_``, ``-``, ``.``; checked before MLflow is touched (its own error is a traceback)."""
    from niwt.errors import InputError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name or ""):
        raise InputError(f"--name {name!r}: a registered model name is 1-128 letters, digits, '_', '-' or '.' "
                         "(it goes into models:/NAME/VERSION URIs)")


def command(args: argparse.Namespace) -> int:
    """Register ``args.model``; prints the model URI. Returns the exit status."""
    from niwt.config.load import load_params
    from niwt.errors import InputError, ParamsError
    from niwt.integration import tracking
    from niwt.integration.registry import register_model
    from niwt.models.networks import ModelError

    if not tracking.enabled():
        print(f"niwt register: error: tracking is off ({tracking.DISABLE_ENV}); nothing registered", file=sys.stderr)
        return 2
    try:
        check_name(args.name)
        if args.alias:
            check_name(args.alias)
        experiment = load_params(args.params).tracking.experiment
        with tracking.stage_run("register", experiment, {"model": str(args.model), "name": args.name}):
            mv, created = register_model(args.model, args.name, tracking.tracking_uri(), experiment, alias=args.alias)
    except (ModelError, ParamsError, InputError, FileNotFoundError) as err:
        print(f"niwt register: error: {err}", file=sys.stderr)
        return 2
    alias = f" (models:/{mv.name}@{args.alias})" if args.alias else ""
    if created:
        print(f"niwt register: registered {args.model} as models:/{mv.name}/{mv.version}{alias}", flush=True)
    else:
        print(f"niwt register: {args.model} has the weights of models:/{mv.name}/{mv.version}{alias}: "
              "no new version", flush=True)
    return 0
