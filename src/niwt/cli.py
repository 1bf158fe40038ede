"""``niwt <stage>``: the command line a person (and ``dvc.yaml``) types.

One subcommand per stage (:data:`niwt.pipeline.STAGES`), named exactly as the DVC stage, the Prefect
task and the MLflow run, plus the commands ``predict``, ``register`` and ``layers``. Paths come from the
command line, hyperparameters only from ``params.yaml`` (each stage sees only the params it
declares), execution settings (device, loader workers, Dask) from ``NIWT_*`` variables or flags.
Each stage opens its MLflow run, writes its metrics JSON (for DVC) and logs the same dict to MLflow.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from niwt.config.load import load_params
from niwt.config.runtime import load_runtime
from niwt.config.view import declared_view
from niwt.distributed import launch
from niwt.distributed.ddp import SINGLE, launched_world
from niwt.errors import InputError
from niwt.io.project import project_root
from niwt.params import Params, section_dict
from niwt.pipeline import STAGES

# The decoded-image cache (the cache stage's output), for every stage that reads images; without it
# they decode the image files.
CACHE = ("--cache", False, None, "decoded-image cache from the cache stage (default: decode the image files)")
# The stage's paths: (flag, required, default, help). Every path a stage reads or writes is a flag,
# so dvc.yaml's cmd, deps and outs name the same files side by side; each flag's name is the
# keyword argument of the stage's ``run``.
PATHS: dict[str, list[tuple[str, bool, str | None, str]]] = {
    "fingerprint": [("--out", True, None, "fingerprint JSON of the raw dataset (a dep of prepare and cache)"),
                    ("--model-files", False, None, "content digests of model.weights / model.class_names (a dep of "
                     "the fine-tuning stages)"),
                    ("--pool-files", False, None, "digest of an inject.pool folder (a dep of validate and inject)")],
    "prepare": [("--out", True, None, "prepared data directory")],
    "cache": [("--data", True, None, "prepared data"), ("--out", True, None, "decoded-image cache directory"),
              ("--raw", False, None, "the raw files' fingerprint (a rewritten image rebuilds the cache)")],
    "finetune": [("--data", True, None, "prepared data"), ("--out", True, None, "finetuned checkpoint"),
                 ("--history", True, None, "per-epoch CSV (a DVC plot)"), CACHE],
    "finetune_validation": [("--data", True, None, "prepared data"),
                            ("--out", True, None, "the validation backbone checkpoint"), CACHE],
    "validate": [("--data", True, None, "prepared data"), ("--backbone", True, None, "the validation backbone"),
                 ("--out", True, None, "the choices (JSON) that fit_mapping, inject and evaluate read"), CACHE],
    "extract": [("--data", True, None, "prepared data"), ("--model", True, None, "finetuned checkpoint"),
                ("--out", True, None, "importance dataset directory"), CACHE],
    "fit_mapping": [("--data", True, None, "prepared data"), ("--importances", True, None, "importance dataset"),
                    ("--validation", True, None, "validate's choices (the forward map's epochs)"),
                    ("--out", True, None, "the map domain vector -> importance"),
                    ("--inverse-out", True, None, "the inverse map importance -> domain vector"),
                    ("--history", True, None, "per-epoch selection CSV (a DVC plot)")],
    "inject": [("--data", True, None, "prepared data"), ("--model", True, None, "finetuned checkpoint"),
               ("--mapping", True, None, "the map from fit_mapping"),
               ("--validation", True, None, "validate's choices (each method's hyperparameters)"),
               ("--out", True, None, "directory of injected checkpoints"), CACHE],
    "evaluate": [("--data", True, None, "prepared data"), ("--injected", True, None, "injected checkpoints"),
                 ("--validation", True, None, "validate's choices (each method's calibration gamma)"),
                 ("--plots", True, None, "plot directory"),
                 ("--headline", True, None, "directory of the headline metrics, one JSON per method (DVC metrics)"),
                 CACHE],
    "explain": [("--data", True, None, "prepared data"), ("--injected", True, None, "injected checkpoints"),
                ("--importances", True, None, "importance dataset"),
                ("--inverse-map", True, None, "the inverse map from fit_mapping"),
                ("--out", True, None, "report directory"),
                ("--comparison", False, "stats/evaluate.json", "evaluate's numbers, for the report"),
                ("--evaluation", False, "plots/evaluate", "evaluate's plots and per-class accuracies, for the report"),
                ("--validation", False, "models/validation.json", "validate's choices, for the report's provenance"),
                CACHE],
}


def _add_runtime(sp: argparse.ArgumentParser) -> None:
    """Execution settings: they change where and how fast a stage runs, never its results."""
    g = sp.add_argument_group("execution settings (not params: never make DVC rerun; default from NIWT_*)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="NIWT_DEVICE (default: auto)")
    g.add_argument("--workers", type=int, help="DataLoader worker processes, NIWT_WORKERS (default: 0)")
    g.add_argument("--runner", choices=["local", "dask"],
                   help="where extraction shards, validation settings and injection methods run, NIWT_RUNNER")
    g.add_argument("--dask-address", help="Dask scheduler address, NIWT_DASK_ADDRESS (default: a LocalCluster)")
    g.add_argument("--dask-workers", type=int, help="LocalCluster processes, NIWT_DASK_WORKERS (default: 2)")
    g.add_argument("--batch-size", type=int, help="images per forward pass in inference, NIWT_BATCH_SIZE "
                   "(default 0: 64 for importances, 128 for features)")
    g.add_argument("--shard-size", type=int, help="images per importance shard, NIWT_SHARD_SIZE (default: 512)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="extraction's memory format, NIWT_CHANNELS_LAST (default: on)")
    g.add_argument("--nproc", type=int, help="processes of finetune / finetune_validation (data-parallel, one per "
                   "GPU, gloo on CPU), NIWT_NPROC (default: 1; other stages ignore it)")
    g.add_argument("--quiet", dest="progress", action="store_const", const=False,
                   help="no progress bars (NIWT_PROGRESS=0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="niwt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND")
    for stage in STAGES:
        sp = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        sp.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
        sp.add_argument("--stats", type=Path,
                        help="write every number of the stage here (JSON; also logged to MLflow)")
        for flag, required, default, help_ in PATHS[stage.name]:
            suffix = "" if required or default is None else " (default: %(default)s)"
            sp.add_argument(flag, type=Path, required=required, default=None if default is None else Path(default),
                            help=help_ + suffix)
        _add_runtime(sp)
    for name, help_ in COMMANDS.items():
        _command(name).add_arguments(sub.add_parser(name, help=help_, description=help_))
    return parser


# Commands that are not stages (no params deps, no DVC stage, no stage run).
COMMANDS = {"predict": "rank seen + unseen classes of images; --explain for Grad-CAM",
            "register": "register an injected checkpoint in the MLflow model registry",
            "sync": "upload MLflow metrics that stages kept when tracking failed",
            "layers": "list a network's candidate importance layers, their shapes and nonlinearities",
            "lineage": "write each stage's code deps (its import closure) into dvc.yaml; --check compares",
            "seeds": "run the pipeline over several base.seed values (DVC experiments); mean ± std tables",
            "check": "read params.yaml as every stage will, before DVC does (aliases, bounds, size)"}


def _command(name: str):
    """``niwt.commands.<name>``, imported by name (``name`` is a key of :data:`COMMANDS`), so that a
    stage's import closure, which ``dvc.yaml`` must cover, holds no command code."""
    return importlib.import_module(f"niwt.commands.{name}")


def _stage_module(name: str):
    """``niwt.stages.<name>`` (``name`` is one of :data:`niwt.pipeline.STAGES`), imported only when run."""
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


def committed_baseline(root: Path) -> tuple[str, dict[str, Any], dict[str, dict[str, float]]] | None:
    """The reference run git holds at ``root``: (digest, HEAD's params flattened as a pipeline run logs
    them, each method's committed headline ``metrics/gzsl/<method>.json``); None without one."""
    import hashlib
    import json
    import subprocess
    import tempfile

    def show(path: str) -> str | None:
        proc = subprocess.run(["git", "show", f"HEAD:./{path}"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        return proc.stdout if proc.returncode == 0 else None

    try:
        text = show("params.yaml")
        if text is None:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "params.yaml").write_text(text, encoding="utf-8")
            params = load_params(Path(tmp) / "params.yaml")
        headline = {}
        for method in params.inject.methods:
            found = show(f"metrics/gzsl/{method}.json")
            if found is not None:
                headline[method] = {k: float(v) for k, v in json.loads(found).items()}
    except (OSError, ValueError, InputError, subprocess.SubprocessError):
        return None
    if not headline:
        return None
    flat = _logged_params(params, tuple(s for s in vars(params) if s != "tracking"))
    digest = hashlib.sha256(json.dumps([{k: str(v) for k, v in flat.items()}, headline], sort_keys=True).encode())
    return digest.hexdigest(), flat, headline


def _artifact_dir(artifact: Path, args: argparse.Namespace) -> str | None:
    """Keep an artifact's sub-directory below the stage's output (``curves/niwt.csv``), so files of
    the same name do not overwrite each other in MLflow."""
    for flag in ("plots", "out"):
        root = getattr(args, flag, None)
        if root is not None:
            try:
                parent = Path(artifact).relative_to(root).parent
            except ValueError:
                continue
            return None if parent == Path(".") else parent.as_posix()
    return None


SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "fish"}
# Set by the Prefect flow for a stage it runs outside dvc (parallel training): stop with that process.
WATCH_ENV = "NIWT_WATCH_PARENT"
PARENT_POLL_S = 1.0
PARENT_GRACE_S = 15.0
_parent_gone = threading.Event()


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, start time) of a live, non-zombie process, from /proc; else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    if rest[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by its parent
        return None
    return name, int(rest[1]), int(rest[19])


def _dvc_ancestors() -> list[tuple[int, int]]:
    """The processes this stage lives for: the parent and, when that is the shell DVC runs the
    command in (``$SHELL -c <cmd>``), the DVC process above it; (pid, start time) each."""
    watched = []
    pid = os.getppid()
    for _ in range(2):
        stat = _proc_stat(pid)
        if stat is None:
            break
        watched.append((pid, stat[2]))
        if stat[0] not in SHELLS:
            break
        pid = stat[1]
    return watched


def _interrupt_if_orphaned(signum: int, frame: object) -> None:
    """The watcher's interrupt of a stage started with SIGINT ignored: a KeyboardInterrupt once its parent is gone."""
    if _parent_gone.is_set():
        raise KeyboardInterrupt


def _stop_with_parent(stage: str) -> None:
    """Under ``dvc repro`` (``DVC_STAGE`` set), stop this stage when the dvc process that started it
    is gone (killed alone, e.g. ``kill -9 <dvc pid>``): a stage left running would later overwrite
    outputs that the next ``dvc`` command restored. A rank of a data-parallel stage
    (``TORCHELASTIC_RUN_ID`` set) likewise stops when its launcher is gone, and a stage the Prefect flow
    runs outside dvc (``NIWT_WATCH_PARENT``) when the flow is: no orphan keeps training.
    Checked every second; the main thread gets a KeyboardInterrupt (temporaries are cleaned, nothing
    is committed), then a hard exit after a grace period."""
    launched = any(os.environ.get(v) for v in ("DVC_STAGE", "TORCHELASTIC_RUN_ID", WATCH_ENV))
    if not launched or not Path("/proc/self/stat").exists():
        return
    watched, parent = _dvc_ancestors(), os.getppid()
    if not watched:
        return
    interrupt = signal.SIGINT
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A background job of a script inherits SIGINT ignored, and then interrupting with it does nothing
        # (the stage trained on and wrote its outputs). SIGINT stays ignored (the user's choice, inherited
        # by the processes the stage starts, Dask workers too); the watcher interrupts through SIGUSR1.
        interrupt = signal.SIGUSR1
        signal.signal(interrupt, _interrupt_if_orphaned)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            gone = [pid for pid, start in watched if (_proc_stat(pid) or ("", 0, -1))[2] != start]
            if gone or os.getppid() != parent:
                _parent_gone.set()
                print(f"niwt {stage}: error: the process that started this stage (dvc, the Prefect flow or the "
                      "launcher of its ranks; "
                      f"pid {(gone or [parent])[-1]}) "
                      "is gone; stopping without writing outputs, so nothing overwrites what DVC restores",
                      file=sys.stderr, flush=True)
                _thread.interrupt_main(interrupt)
                time.sleep(PARENT_GRACE_S)
                os._exit(3)

    threading.Thread(target=watch, name="niwt-dvc-parent", daemon=True).start()


# Third-party warnings a user of niwt cannot act on (they name code inside torch and MLflow, not theirs):
# silenced in the ``niwt`` commands, so the warnings that remain are worth reading.
THIRD_PARTY_NOISE = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),  # torch's own modules script themselves
    (UserWarning, r"There is a performance drop because we have not yet implemented the batching rule"),  # vmap
    (UserWarning, r".*Add type hints to the `predict` method"),  # MLflow (colour codes first), about niwt's pyfunc
)


def quiet_third_party_warnings() -> None:
    """Install the filters of :data:`THIRD_PARTY_NOISE` (message regexes, any module)."""
    import warnings

    for category, message in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``niwt`` console script; returns the exit status."""
    quiet_third_party_warnings()
    args = build_parser().parse_args(argv)
    if args.stage in COMMANDS:
        return _command(args.stage).command(args)
    from niwt.integration import tracking

    tracking.quiet_telemetry()
    stage = next(s for s in STAGES if s.name == args.stage)
    _stop_with_parent(stage.name)
    # Only the fine-tuning stages run as ranks: elsewhere a RANK/WORLD_SIZE exported for every process
    # (a PyTorchJob pod) must not make a stage skip its outputs.
    world = launched_world() if stage.name in launch.DISTRIBUTED_STAGES else SINGLE
    if not world.distributed:
        return _run_stage(args, argv, stage, world, tracking)
    launch.stop_on_sigterm()  # the launcher stops ranks with SIGTERM: unwind (temporaries, MLflow FAILED)
    try:
        return _run_stage(args, argv, stage, world, tracking)
    except launch.Terminated:  # stopped while reporting another error: that error was said
        return 128 + int(signal.SIGTERM)
    finally:  # exiting already: a late SIGTERM (the launcher stopping the others) ends the process quietly
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_stage(args: argparse.Namespace, argv: list[str] | None, stage, world, tracking) -> int:
    """Run one stage (or launch its ranks) and report; returns the exit status."""
    from niwt.io.atomic import disk_error, write_json

    try:
        params = load_params(args.params)
        runtime = load_runtime(overrides={k: getattr(args, k) for k in
                                          ("device", "workers", "runner", "dask_address", "dask_workers", "progress",
                                           "batch_size", "shard_size", "channels_last", "nproc")})
        if runtime.nproc > 1 and stage.name in launch.DISTRIBUTED_STAGES and not world.distributed:
            launch.check_devices(runtime)
            launch.check_batch(params.finetune.batch_size, runtime.nproc)
            launch.run_ranks(list(sys.argv[1:] if argv is None else argv), runtime.nproc)
            return 0  # rank 0 said "done"
        # The project is where the params file is (not the working directory): mlflow.db, artifacts.
        root = project_root(Path(args.params).absolute().parent, default=Path.cwd())
        logged = _logged_params(params, stage.params)
        everything = _logged_params(params, tuple(s for s in vars(params) if s != "tracking"))
        run_ctx = (tracking.stage_run(stage.name, params.tracking.experiment, logged, everything, root=root,
                                      baseline=lambda: committed_baseline(root))
                   if stage.tracked and world.main else contextlib.nullcontext())  # rank 0 alone tracks
        with run_ctx as ml:
            paths = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
                     for flag, *_ in PATHS[stage.name]}
            result = _stage_module(stage.name).run(declared_view(params, stage.name, stage.params), runtime, **paths)
            if not world.main:  # rank 0 alone writes (stats, MLflow) and drops the resume state
                return 0
            if args.stats:
                write_json(args.stats, result.metrics)
            if ml is not None:  # never raises: a tracking failure warns and keeps the metrics for `niwt sync`
                ml.finish(_numeric(result.metrics, stage.name), list(result.artifacts), result.steps, result.runs,
                          {a: _artifact_dir(a, args) for a in result.artifacts})
            # Only now, with every output and the stats written, is state kept for a rerun dropped
            # (finetune's resume file): a failure above leaves it, and the rerun costs nothing.
            for leftover in result.cleanup:
                Path(leftover).unlink(missing_ok=True)
    except launch.LaunchFailed as err:
        if _parent_gone.is_set():  # the dvc process is gone: its message is printed, every rank stopped
            return 3
        if str(err):
            print(f"niwt {args.stage}: error: {err}", file=sys.stderr)
        return err.exitcode
    except (InputError, FileNotFoundError) as err:
        # a rank may fail alone (an unreadable image in its slice): each says it, naming itself
        where = f" [rank {world.rank}]" if world.distributed else ""
        print(f"niwt {args.stage}{where}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        if _parent_gone.is_set():
            return 3
        if not world.main:
            return 130
        # Ctrl-C: one line, not a traceback. Outputs are written atomically, so they are as they were; the
        # resume state (finetune's <out>.resume, extract's finished shards) is kept for the rerun.
        print(f"niwt {args.stage}: interrupted; its outputs are as they were, and a rerun continues from what "
              "was saved", file=sys.stderr, flush=True)
        return 130
    except RuntimeError as err:
        if not (world.distributed and launch.peer_lost(err)):
            raise
        # not the cause: the rank that failed first has its own message; the launcher names it
        first = (str(err).splitlines() or [""])[0].split(". This is typically")[0][:200]
        print(f"niwt {args.stage} [rank {world.rank}]: stopped: another rank of this run is gone ({first})",
              file=sys.stderr, flush=True)
        return launch.PEER_LOST
    except OSError as err:  # out of space anywhere (a shard, a plot): one line naming the file and free space
        full = disk_error(err.filename or Path.cwd(), err)
        if full is None:
            raise
        print(f"niwt {args.stage}: error: {full}", file=sys.stderr)
        return 2
    print(f"niwt {args.stage}: done" + (f" ({world.size} processes)" if world.distributed else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
