"""The NIWT pipeline as a Prefect flow, run through DVC so caching is shared with `dvc repro`.

Each stage is a sub-flow run named after the stage, holding one task that calls
``dvc repro --single-item <stage>``. The flow opens one MLflow parent run; every stage's MLflow
run becomes its child, so one pipeline run is one row (with children) in the MLflow UI. After the
stages, ``niwt register`` puts the injected NIWT model into the MLflow model registry.

    python -m flows.pipeline                      # run once
    python -m flows.pipeline --serve --cron "0 3 * * *"   # a deployment on a schedule
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from tasks.dvc_stage import PIPELINE_STAGES, dvc_status_clean, register_injected, run_dvc_stage
from tasks.reporting import publish_summary


def open_parent_run(workdir: Path) -> tuple[object, str] | tuple[None, None]:
    """Create the ACTIVE parent run the stage runs attach to (skipped when tracking is off), in the
    experiment named by the project's ``tracking.experiment``."""
    from niwt.integration import tracking

    if not tracking.enabled():
        return None, None
    tracking.quiet_telemetry()
    from mlflow import MlflowClient

    from niwt.params import load_params

    root = tracking.project_root(Path(workdir))
    client = MlflowClient(tracking_uri=tracking.tracking_uri(root))
    experiment = load_params(root / "params.yaml").tracking.experiment
    run = client.create_run(tracking.experiment_id(client, experiment, root), run_name="pipeline",
                            tags={"niwt.stage": "pipeline", "niwt.pipeline_id": str(flow_run.get_id() or "")})
    return client, run.info.run_id


@flow(name="niwt-stage", flow_run_name="{stage}")
def stage_flow(stage: str, workdir: str = ".", parent_run_id: str | None = None, force: bool = False) -> str:
    """One pipeline stage as its own flow run."""
    return run_dvc_stage(stage, workdir, parent_run_id, str(flow_run.get_id() or ""), force)


@flow(name="niwt-pipeline", log_prints=True)
def pipeline(workdir: str = ".", stages: list[str] | None = None, force: bool = False,
             register_as: str = "niwt-injected") -> str:
    """Run the stages in DAG order through DVC, publish the comparison table, register the model.

    Args:
        workdir: the project checkout (holding dvc.yaml).
        stages: a subset of stages (default: all, in order).
        force: rerun stages even when DVC finds them up to date.
        register_as: registered model name of the injected NIWT model ('' to skip the register step;
            it runs only when the whole pipeline ran).
    """
    logger = get_run_logger()
    selected = list(stages or PIPELINE_STAGES)
    unknown = sorted(set(selected) - set(PIPELINE_STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; valid: {list(PIPELINE_STAGES)}")
    client, parent = open_parent_run(Path(workdir))
    status = "FAILED"
    try:
        for stage in [s for s in PIPELINE_STAGES if s in selected]:
            logger.info("stage %s", stage)
            stage_flow(stage, workdir, parent, force)
        if not dvc_status_clean(workdir):
            raise RuntimeError("dvc status still reports changes after the run; see `dvc status`")
        summary = publish_summary(workdir) if "evaluate" in selected else ""
        if register_as and client is not None and set(selected) == set(PIPELINE_STAGES):
            register_injected(workdir, register_as, parent)
        status = "FINISHED"
        return summary
    finally:
        if client is not None:
            client.set_terminated(parent, status=status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run or serve the NIWT pipeline flow.")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--force", action="store_true", help="rerun stages DVC finds up to date")
    parser.add_argument("--serve", action="store_true", help="serve as a deployment (needs a Prefect server)")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule for --serve (default: %(default)s)")
    parser.add_argument("--name", default="niwt-nightly", help="deployment name for --serve")
    args = parser.parse_args(argv)
    workdir = str(Path(args.workdir).resolve())
    if args.serve:
        pipeline.serve(name=args.name, cron=args.cron, parameters={"workdir": workdir})
        return 0
    print(pipeline(workdir=workdir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
