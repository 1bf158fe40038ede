"""The NIWT pipeline as a Prefect flow, run through DVC so caching is shared with `dvc repro`.

Each stage is a sub-flow run named after the stage, holding one task that calls
``dvc repro --single-item <stage>``; a stage DVC found up to date ends ``Completed`` with the state
name ``Skipped`` (and says so in the log and the summary artifact). The first stage that runs creates
one MLflow parent run for this flow run (carrying every pipeline param and the git commit); every
stage's run is its child, so one pipeline run is one row (with children) in the MLflow UI, and a
flow run in which nothing ran creates none. When something ran, ``niwt register`` then puts the
injected NIWT model into the MLflow model registry with the alias ``champion``.

    python -m flows.pipeline                      # run once
    python -m flows.pipeline --serve --cron "0 3 * * *"   # a deployment on a schedule
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed
from tasks.dvc_stage import (
    PIPELINE_STAGES,
    SIDE_BY_SIDE,
    TRACKED_STAGES,
    commit_stages,
    current_stages,
    dvc_status_clean,
    register_injected,
    run_dvc_stage,
    run_stage_alongside,
)
from tasks.reporting import publish_summary


def close_parent_run(workdir: Path, invocation: str, status: str) -> str | None:
    """Mark the parent run of this flow run (created by the first stage that ran) ``status``;
    returns its id, or None when nothing ran (then no run exists: no empty parent)."""
    from niwt.integration import tracking

    if not tracking.enabled():
        return None
    from mlflow import MlflowClient

    from niwt.config.load import load_params

    root = tracking.project_root(Path(workdir))
    client = MlflowClient(tracking_uri=tracking.tracking_uri(root))
    exp = client.get_experiment_by_name(load_params(root / "params.yaml").tracking.experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`niwt.invocation` = '{invocation}'",
                               max_results=1)
    if not found:
        return None
    client.set_terminated(found[0].info.run_id, status=status)
    return found[0].info.run_id


@flow(name="niwt-stage", flow_run_name="{stage}")
def stage_flow(stage: str, workdir: str = ".", invocation: str | None = None, force: bool = False):
    """One pipeline stage as its own flow run: ``"ran"`` or ``"skipped"``; a skipped stage's flow run
    (and task run) ends ``Completed`` with the state name ``Skipped``."""
    state = run_dvc_stage(stage, workdir, invocation, invocation, force, return_state=True)
    outcome = state.result()  # raises the stage's error
    return Completed(name="Skipped", message=f"{stage}: up to date", data=outcome) if outcome == "skipped" \
        else outcome


def check_params(workdir: Path) -> None:
    """``niwt check``'s reading of ``params.yaml``: one line (InputError) for a file that would fail a stage
    or hang DVC, before any stage runs."""
    from niwt.config.load import load_params

    load_params(workdir / "params.yaml")


@flow(name="niwt-stages-side-by-side", flow_run_name="{label}")
def side_by_side_flow(stages: list[str], label: str, workdir: str = ".", invocation: str | None = None,
                      force: bool = False) -> dict[str, str]:
    """Stages that share no outputs, at the same time (each its own task, streaming its log), then
    ``dvc commit`` for those that finished, even when another failed (its work is kept, not redone);
    ``"ran"`` or ``"skipped"`` per stage, or the first failure raised."""
    skip = set() if force else current_stages(stages, workdir)
    todo = [s for s in stages if s not in skip]
    futures = {s: run_stage_alongside.submit(s, workdir, invocation, invocation) for s in todo}
    states = {s: f.wait() or f.state for s, f in futures.items()}  # both end before anything is decided
    done = [s for s, state in states.items() if state.is_completed()]
    if done:
        commit_stages(done, workdir)
    for state in states.values():
        if not state.is_completed():
            state.result()  # raises the stage's error
    return {s: "skipped" if s in skip else "ran" for s in stages}


@flow(name="niwt-pipeline", log_prints=True)
def pipeline(workdir: str = ".", stages: list[str] | None = None, force: bool = False,
             register_as: str = "niwt-injected", parallel_training: bool = False) -> str:
    """Run the stages in DAG order through DVC, publish the comparison table, register the model.

    Args:
        workdir: the project checkout (holding dvc.yaml).
        stages: a subset of stages (default: all, in order).
        force: rerun stages even when DVC finds them up to date.
        register_as: registered model name of the injected NIWT model ('' to skip the register step;
            it runs only when the whole pipeline ran).
        parallel_training: run ``finetune`` and ``finetune_validation`` at the same time (they share
            no outputs, but the same devices: it pays when they leave each other room, e.g. a large GPU).
    """
    check_params(Path(workdir))  # before DVC reads the file (it expands YAML aliases: an alias bomb hangs it)
    logger = get_run_logger()
    selected = list(stages or PIPELINE_STAGES)
    unknown = sorted(set(selected) - set(PIPELINE_STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; valid: {list(PIPELINE_STAGES)}")
    invocation = f"prefect:{flow_run.get_id() or os.getpid()}"
    ran: dict[str, str] = {}
    status = "FAILED"
    try:
        pair = [s for s in SIDE_BY_SIDE if s in selected] if parallel_training else []
        for stage in [s for s in PIPELINE_STAGES if s in selected]:
            if stage in pair[1:]:
                continue  # ran beside the first of the pair
            if stage in pair and len(pair) > 1:
                outcomes = side_by_side_flow(pair, " + ".join(pair), workdir, invocation, force)
            else:
                outcomes = {stage: stage_flow(stage, workdir, invocation, force)}
            for name, outcome in outcomes.items():
                ran[name] = "skipped (up to date)" if outcome == "skipped" else "ran"
                logger.info("stage %s: %s", name, ran[name])
        if not dvc_status_clean(workdir):
            raise RuntimeError("dvc status still reports changes after the run; see `dvc status`")
        summary = publish_summary(workdir, stages=ran) if "evaluate" in selected else ""
        status = "FINISHED"
        tracked_ran = any(what == "ran" for stage, what in ran.items() if stage in TRACKED_STAGES)
        if register_as and tracked_ran and set(selected) == set(PIPELINE_STAGES):
            register_injected(workdir, register_as, invocation)
        return summary
    finally:
        close_parent_run(Path(workdir), invocation, status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run or serve the NIWT pipeline flow.")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--force", action="store_true", help="rerun stages DVC finds up to date")
    parser.add_argument("--parallel-training", action="store_true",
                        help="run finetune and finetune_validation at the same time")
    parser.add_argument("--serve", action="store_true", help="serve as a deployment (needs a Prefect server)")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule for --serve (default: %(default)s)")
    parser.add_argument("--name", default="niwt-nightly", help="deployment name for --serve")
    args = parser.parse_args(argv)
    workdir = str(Path(args.workdir).resolve())
    if args.serve:
        pipeline.serve(name=args.name, cron=args.cron, parameters={"workdir": workdir})
        return 0
    print(pipeline(workdir=workdir, force=args.force, parallel_training=args.parallel_training))
    return 0


if __name__ == "__main__":
    sys.exit(main())
