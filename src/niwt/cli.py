"""``niwt <stage>``: the command line a person (and ``dvc.yaml``) types.

One subcommand per stage (:data:`niwt.stages.STAGES`), named exactly as the DVC stage, the Prefect
task and the MLflow run, plus the commands ``predict``, ``register`` and ``layers``. Paths come from the
command line, hyperparameters only from ``params.yaml`` (each stage sees only the params it
declares), execution settings (device, loader workers, Dask) from ``NIWT_*`` variables or flags.
Each stage opens its MLflow run, writes its metrics JSON (for DVC) and logs the same dict to MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from niwt.params import InputError, Params, declared_view, load_params, load_runtime, section_dict
from niwt.stages import STAGES

# The stage's paths: (flag, required, default, help). Every path a stage reads or writes is a flag,
# so dvc.yaml's cmd, deps and outs name the same files side by side; each flag's name is the
# keyword argument of the stage's ``run``.
PATHS: dict[str, list[tuple[str, bool, str | None, str]]] = {
    "prepare": [("--out", True, None, "prepared data directory")],
    "finetune": [("--data", True, None, "prepared data"), ("--out", True, None, "finetuned checkpoint"),
                 ("--history", True, None, "per-epoch CSV (a DVC plot)")],
    "extract": [("--data", True, None, "prepared data"), ("--model", True, None, "finetuned checkpoint"),
                ("--out", True, None, "importance dataset directory")],
    "fit_mapping": [("--data", True, None, "prepared data"), ("--importances", True, None, "importance dataset"),
                    ("--out", True, None, "the map domain vector -> importance"),
                    ("--inverse-out", True, None, "the inverse map importance -> domain vector"),
                    ("--history", True, None, "per-epoch selection CSV (a DVC plot)")],
    "inject": [("--data", True, None, "prepared data"), ("--model", True, None, "finetuned checkpoint"),
               ("--mapping", True, None, "the map from fit_mapping"),
               ("--out", True, None, "directory of injected checkpoints")],
    "evaluate": [("--data", True, None, "prepared data"), ("--injected", True, None, "injected checkpoints"),
                 ("--plots", True, None, "plot directory")],
    "explain": [("--data", True, None, "prepared data"), ("--injected", True, None, "injected checkpoints"),
                ("--importances", True, None, "importance dataset"),
                ("--inverse-map", True, None, "the inverse map from fit_mapping"),
                ("--out", True, None, "report directory"),
                ("--comparison", False, "metrics/evaluate.json", "evaluate's metrics, for the report"),
                ("--per-class", False, "plots/evaluate/per_class_accuracy.csv",
                 "evaluate's per-class accuracies, for the report")],
}


def _add_runtime(sp: argparse.ArgumentParser) -> None:
    """Execution settings: they change where and how fast a stage runs, never its results."""
    g = sp.add_argument_group("execution settings (not params: never make DVC rerun; default from NIWT_*)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="NIWT_DEVICE (default: auto)")
    g.add_argument("--workers", type=int, help="DataLoader worker processes, NIWT_WORKERS (default: 0)")
    g.add_argument("--runner", choices=["local", "dask"], help="where extraction shards run, NIWT_RUNNER")
    g.add_argument("--dask-address", help="Dask scheduler address, NIWT_DASK_ADDRESS (default: a LocalCluster)")
    g.add_argument("--dask-workers", type=int, help="LocalCluster processes, NIWT_DASK_WORKERS (default: 2)")
    g.add_argument("--quiet", dest="progress", action="store_const", const=False,
                   help="no progress bars (NIWT_PROGRESS=0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="niwt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND")
    for stage in STAGES:
        sp = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        sp.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
        sp.add_argument("--metrics", type=Path, help="write the stage's metrics JSON here")
        for flag, required, default, help_ in PATHS[stage.name]:
            suffix = "" if required else " (default: %(default)s)"
            sp.add_argument(flag, type=Path, required=required, default=None if default is None else Path(default),
                            help=help_ + suffix)
        _add_runtime(sp)
    for name, help_ in COMMANDS.items():
        _command(name).add_arguments(sub.add_parser(name, help=help_, description=help_))
    return parser


# Commands that are not stages (no params deps, no DVC stage, no stage run).
COMMANDS = {"predict": "rank seen + unseen classes of images; --explain for Grad-CAM",
            "register": "register an injected checkpoint in the MLflow model registry",
            "layers": "list a network's candidate importance layers, their shapes and nonlinearities"}


def _command(name: str):
    """``niwt.commands.<name>``, imported by name (``name`` is a key of :data:`COMMANDS`), so that a
    stage's import closure, which ``dvc.yaml`` must cover, holds no command code."""
    return importlib.import_module(f"niwt.commands.{name}")


def _stage_module(name: str):
    """``niwt.stages.<name>`` (``name`` is one of :data:`niwt.stages.STAGES`), imported only when run."""
    return importlib.import_module(f"niwt.stages.{name}")


def _numeric(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flatten nested metrics to ``prefix/key`` -> float for MLflow."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_numeric(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}/{key}"] = float(value)
    return flat


def _logged_params(params: Params, keys: tuple[str, ...]) -> dict[str, Any]:
    """The stage's declared params, flattened to ``section.key`` for MLflow."""
    out = {}
    for key in keys:
        section, _, leaf = key.partition(".")
        flat = section_dict(getattr(params, section))
        out.update({f"{section}.{k}": v for k, v in flat.items() if not leaf or k == leaf})
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``niwt`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.stage in COMMANDS:
        return _command(args.stage).command(args)
    from niwt.integration import tracking
    from niwt.io.atomic import write_json

    tracking.quiet_telemetry()
    stage = next(s for s in STAGES if s.name == args.stage)
    try:
        params = load_params(args.params)
        runtime = load_runtime(overrides={k: getattr(args, k) for k in
                                          ("device", "workers", "runner", "dask_address", "dask_workers", "progress")})
        with tracking.stage_run(stage.name, params.tracking.experiment, _logged_params(params, stage.params)) as ml:
            paths = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
                     for flag, *_ in PATHS[stage.name]}
            result = _stage_module(stage.name).run(declared_view(params, stage.name, stage.params), runtime, **paths)
            if args.metrics:
                write_json(args.metrics, result.metrics)
            if ml is not None:
                ml.log_metrics(_numeric(result.metrics, stage.name))
                for artifact in result.artifacts:
                    ml.log_artifact(str(artifact))
    except (InputError, FileNotFoundError) as err:
        print(f"niwt {args.stage}: error: {err}", file=sys.stderr)
        return 2
    print(f"niwt {args.stage}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
