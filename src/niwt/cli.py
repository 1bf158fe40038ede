"""``niwt <stage>``: the command line a person (and ``dvc.yaml``) types.

One subcommand per stage, named exactly as the DVC stage, the Prefect task and the MLflow run.
Paths come from the command line, hyperparameters only from ``params.yaml``. Each stage opens its
MLflow run, writes its metrics JSON (for DVC) and logs the same dict to MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from niwt.params import Params, ParamsError, load_params, section_dict

SECTIONS = {
    "prepare": ("base", "data"),
    "finetune": ("base", "model", "finetune"),
    "extract": ("base", "model", "extract"),
    "fit_mapping": ("base", "mapping"),
    "inject": ("base", "model", "inject"),
    "evaluate": ("base", "evaluate"),
    "explain": ("base", "evaluate", "mapping"),
}


def _prepare(p: Params, a: argparse.Namespace):
    from niwt.stages import prepare

    return prepare.run(p, a.out, progress=a.progress)


def _finetune(p: Params, a: argparse.Namespace):
    from niwt.stages import finetune

    return finetune.run(p, a.data, a.out, a.history, progress=a.progress)


def _extract(p: Params, a: argparse.Namespace):
    from niwt.stages import extract

    runner = None
    if p.extract.runner == "dask":
        from flows.extract import dask_runner  # Prefect tasks on a Dask cluster (prefect-dask)

        runner = dask_runner(p.extract.dask_address, p.extract.dask_workers)
    return extract.run(p, a.data, a.model, a.out, progress=a.progress, runner=runner)


def _fit_mapping(p: Params, a: argparse.Namespace):
    from niwt.stages import fit_mapping

    return fit_mapping.run(p, a.data, a.importances, a.out, a.history)


def _inject(p: Params, a: argparse.Namespace):
    from niwt.stages import inject

    return inject.run(p, a.data, a.model, a.mapping, a.out)


def _evaluate(p: Params, a: argparse.Namespace):
    from niwt.stages import evaluate

    return evaluate.run(p, a.data, a.injected, a.plots, progress=a.progress)


STAGE_FUNCS: dict[str, Callable[[Params, argparse.Namespace], Any]] = {
    "prepare": _prepare, "finetune": _finetune, "extract": _extract, "fit_mapping": _fit_mapping,
    "inject": _inject, "evaluate": _evaluate,
}


def _explain(p: Params, a: argparse.Namespace):
    from niwt import tracking
    from niwt.stages import explain

    result = explain.run(p, a.data, a.injected, a.importances, a.out, a.comparison, a.per_class, progress=a.progress)
    if a.register_as and tracking.enabled():  # model registry: a side effect, not a DVC output
        from niwt.registry import register_model

        mv = register_model(explain.explained_checkpoint(a.injected), a.register_as, tracking.tracking_uri())
        print(f"niwt explain: registered {explain.explained_checkpoint(a.injected)} as models:/{mv.name}/{mv.version}")
    return result


STAGE_FUNCS["explain"] = _explain


def _predict(a: argparse.Namespace) -> int:
    from niwt.predict import command

    return command(a)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"predict": _predict}  # not stages: no params, no run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="niwt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
        sp.add_argument("--metrics", type=Path, help="write the stage's metrics JSON here")
        sp.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
        return sp

    sp = stage("prepare", "generate or read the dataset; write classes.parquet and splits.parquet")
    sp.add_argument("--out", type=Path, required=True)
    sp = stage("finetune", "train the classifier on seen classes")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--history", type=Path, required=True, help="per-epoch CSV (a DVC plot)")
    sp = stage("extract", "neuron importances of every seen training image (sharded Parquet)")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True)
    sp = stage("fit_mapping", "fit the domain-vector -> importance map")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--importances", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--history", type=Path, required=True)
    sp = stage("inject", "add unseen-class rows to the classifier (NIWT and peers)")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--mapping", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True)
    sp = stage("evaluate", "GZSL metrics (S, U, H, ZSL T1, AUSUC) of every injected model")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--injected", type=Path, required=True)
    sp.add_argument("--plots", type=Path, required=True)
    sp = stage("explain", "Grad-CAM panels, inverse map (importance -> attributes), neuron names, report")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--injected", type=Path, required=True)
    sp.add_argument("--importances", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--comparison", type=Path, default=Path("metrics/evaluate.json"),
                    help="evaluate's metrics, for the report (default: %(default)s)")
    sp.add_argument("--per-class", type=Path, default=Path("plots/evaluate/per_class_accuracy.csv"),
                    help="evaluate's per-class accuracies, for the report (default: %(default)s)")
    sp.add_argument("--register-as", default="niwt-injected", metavar="NAME",
                    help="MLflow registered model name ('' to skip; default: %(default)s)")
    from niwt.predict import add_arguments

    add_arguments(sub.add_parser("predict", help="rank seen + unseen classes of images; --explain for Grad-CAM",
                                 description="rank seen + unseen classes of images; --explain for Grad-CAM"))
    return parser


def _numeric(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flatten nested metrics to ``prefix/key`` -> float for MLflow."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_numeric(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}/{key}"] = float(value)
    return flat


def _known_errors() -> tuple[type[BaseException], ...]:
    from niwt.data.raw import DatasetError
    from niwt.injection.jacobian import JacobianError
    from niwt.io.parquet import ImportanceFileError
    from niwt.models.networks import ModelError

    return ParamsError, DatasetError, ModelError, ImportanceFileError, JacobianError, FileNotFoundError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``niwt`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.stage in COMMANDS:
        return COMMANDS[args.stage](args)
    if os.environ.get("NIWT_PROGRESS", "1") == "0":
        args.progress = False
    from niwt import tracking
    from niwt.io.atomic import write_json

    tracking.quiet_telemetry()
    try:
        params = load_params(args.params)
        logged = {f"{s}.{k}": v for s in SECTIONS[args.stage] for k, v in section_dict(getattr(params, s)).items()}
        with tracking.stage_run(args.stage, params.tracking.experiment, logged) as mlflow:
            result = STAGE_FUNCS[args.stage](params, args)
            if args.metrics:
                write_json(args.metrics, result.metrics)
            if mlflow is not None:
                mlflow.log_metrics(_numeric(result.metrics, args.stage))
                for artifact in result.artifacts:
                    mlflow.log_artifact(str(artifact))
    except _known_errors() as err:
        print(f"niwt {args.stage}: error: {err}", file=sys.stderr)
        return 2
    print(f"niwt {args.stage}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
