"""MLflow helpers for stage runs: one run per stage, grouped under a pipeline parent when present.

The tracking URI is explicit: ``MLFLOW_TRACKING_URI`` when set (any server), otherwise a SQLite
file at the project root. The root is found from the working directory, stepping out of
``.dvc/tmp/exps/...`` so that ``dvc exp run --queue/--temp`` log to the same database as the
workspace instead of a copy that DVC deletes afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from niwt.errors import InputError
from niwt.io.project import project_root

PARENT_ENV = "NIWT_PARENT_RUN_ID"
INVOCATION_ENV = "NIWT_INVOCATION"
PIPELINE_ENV = "NIWT_PIPELINE_ID"
DISABLE_ENV = "NIWT_TRACKING"  # set to "off" to skip MLflow entirely (quick local debugging)


def quiet_telemetry() -> None:
    """Offline-friendly defaults: no analytics look-ups from MLflow, Prefect or DVC."""
    for key, value in {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
        os.environ.setdefault(key, value)


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite file at the project root (found from
    ``root``, default the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(root) / 'mlflow.db'}"


def git_commit(root: Path | None = None) -> str:
    """The project's current git commit (``unknown`` outside git)."""
    return _git_commit(project_root(root))


def active_run_id() -> str | None:
    """The id of the MLflow run this process logs to, if any (without importing MLflow when unused)."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None and enabled() else None
    return run.info.run_id if run is not None else None


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(client, name: str, root: Path | None = None) -> str:
    """Get or create the experiment, with artifacts under the project root (an absolute path),
    never under the working directory, which is a throw-away copy in ``dvc exp run --temp``."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=(project_root(root) / "mlartifacts").as_uri())


def ensure_experiment(mlflow, name: str) -> str:
    """:func:`experiment_id`, made the fluent API's current experiment."""
    exp_id = experiment_id(mlflow.MlflowClient(), name)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "on").lower() not in {"off", "0", "false"}


class TrackingError(InputError):
    """The tracking server or database cannot be used; raised before a stage does any work."""


# MLflow's HTTP client retries a dead server for minutes (7 retries, exponential back-off, 120 s
# timeouts: a stage blocked 269 s on a refused port). These defaults bound a later outage; a user
# may still set them. Reachability itself is checked before any work (:func:`check_reachable`).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
REACH_TIMEOUT_S = 5.0
PENDING_DIR = ".niwt/pending-tracking"  # under the project root; ``niwt sync`` uploads and empties it


def _fix_hint() -> str:
    return (f"start the server, point MLFLOW_TRACKING_URI at a running one, or set {DISABLE_ENV}=off "
            "to run without tracking")


API_PROBE = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
SLOW_NOTICE_S = 5.0  # a tracking call silent for this long says what it waits for


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail within ``2 * timeout`` seconds, naming ``uri``, when an HTTP tracking server does not answer.

    Any HTTP answer counts as reachable (a proxy may not serve ``/health``); only a refused or
    timed-out connection, or a host that does not resolve, fails. Both the health endpoint and one
    read-only REST call are tried: a server that answers ``/health`` but hangs on its API (a dead
    database behind it) would otherwise hold a stage for MLflow's retries (about 90 s) in silence.
    """
    import http.client
    import urllib.error
    import urllib.request

    if not _is_http(uri):
        return
    for path, what in (("/health", "is unreachable"), (API_PROBE, "answers /health but not its REST API")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + path, timeout=timeout):  # noqa: S310 (http only)
                pass
        except urllib.error.HTTPError:
            continue
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            # HTTPException: something that is no HTTP server answers there (an SSH banner)
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            raise TrackingError(f"MLflow tracking server {uri} {what} ({reason}; checked for "
                                f"{timeout:g} s before any work); {_fix_hint()}") from None


def _patience_s() -> float:
    """How long MLflow's HTTP client may wait before giving up: timeouts, retries and back-off."""
    def setting(key: str) -> float:
        try:
            return float(os.environ.get(key, HTTP_DEFAULTS[key]))
        except ValueError:
            return float(HTTP_DEFAULTS[key])

    retries = int(setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    backoff = setting("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    return setting("MLFLOW_HTTP_REQUEST_TIMEOUT") * (retries + 1) + sum(backoff * 2 ** i for i in range(retries))


def _is_http(uri: str) -> bool:
    from urllib.parse import urlparse

    return urlparse(uri).scheme in ("http", "https")


@contextlib.contextmanager
def slow_notice(who: str, uri: str, doing: str) -> Iterator[None]:
    """Say once, after :data:`SLOW_NOTICE_S` of silence, that ``who`` waits for the tracking server and
    for how long at most (``MLFLOW_HTTP_REQUEST_*``), instead of a silent minute and a half. Only for a
    server (http, https): a local store (SQLite, files) is not bound by those settings."""
    import threading

    if not _is_http(uri):
        yield
        return

    timer = threading.Timer(SLOW_NOTICE_S, lambda: print(
        f"{who}: waiting for the MLflow server at {uri} ({doing}); it gives up after about "
        f"{_patience_s():.0f} s (MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_HTTP_REQUEST_MAX_RETRIES)",
        file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class StageRun:
    """The open MLflow run of one stage. :meth:`finish` never raises: when logging fails, the
    stage's results stay (exit 0, DVC records the stage) and the metrics are kept for ``niwt sync``."""

    def __init__(self, mlflow: Any, run_id: str, stage: str, uri: str, root: Path,
                 parent: str | None = None, params: dict[str, Any] | None = None) -> None:
        self.mlflow, self.run_id, self.stage, self.uri, self.root = mlflow, run_id, stage, uri, root
        self.parent, self.params = parent, params or {}

    def finish(self, metrics: dict[str, float], artifacts: list[Path],
               steps: dict[str, list[tuple[int, float]]] | None = None,
               children: dict[str, dict[str, float]] | None = None,
               artifact_dirs: dict[Path, str | None] | None = None) -> Path | None:
        """Log ``metrics``, per-epoch ``steps``, one child run per entry of ``children`` (tagged
        ``method``) and ``artifacts`` (under ``artifact_dirs[path]``), and end the run FINISHED (and
        this invocation's parent run, until a later stage reopens it). On any failure: a warning on
        stderr and a pending entry (returned, the metrics) that ``niwt sync`` uploads later."""
        try:
            with slow_notice(f"niwt {self.stage}", self.uri, "logging the stage's results; they are written already"):
                self._log(metrics, artifacts, steps, children, artifact_dirs)
            return None
        except Exception as err:  # noqa: BLE001  any tracking failure: the results are kept regardless
            pending = save_pending(self.root, self.uri, self.run_id, self.stage, metrics, artifacts, err,
                                   self.parent)
            _abandon(self.mlflow)
            print(f"niwt {self.stage}: warning: MLflow logging to {self.uri} failed "
                  f"({type(err).__name__}: {_first_line(err)}); the stage's outputs are kept and its metrics "
                  f"are saved in {pending}; upload them with `niwt sync`", file=sys.stderr, flush=True)
            return pending

    def _log(self, metrics: dict[str, float], artifacts: list[Path], steps: dict[str, list[tuple[int, float]]] | None,
             children: dict[str, dict[str, float]] | None, artifact_dirs: dict[Path, str | None] | None) -> None:
        """Everything :meth:`finish` sends, in order; raises on the first tracking failure."""
        self.mlflow.log_metrics(metrics)
        log_steps(self.mlflow, steps or {})
        log_children(self.mlflow, children or {}, self.params)
        if self.parent and children:  # the headline per method on the parent: one run per experiment to compare
            log_headline(self.mlflow.MlflowClient(), self.parent, children)
        for artifact in artifacts:
            self.mlflow.log_artifact(str(artifact), artifact_path=(artifact_dirs or {}).get(artifact))
        self.mlflow.end_run("FINISHED")
        if self.parent:
            self.mlflow.MlflowClient().set_terminated(self.parent, "FINISHED")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _abandon(mlflow: Any) -> None:
    """Forget the fluent API's active run without contacting the server."""
    with contextlib.suppress(Exception):
        mlflow.tracking.fluent._active_run_stack.get().clear()  # mlflow 3: a thread-local list


def save_pending(root: Path, uri: str, run_id: str, stage: str, metrics: dict[str, float],
                 artifacts: list[Path], err: BaseException, parent: str | None = None) -> Path:
    """Keep what a stage could not log: ``<root>/.niwt/pending-tracking/<run_id>/`` with
    ``pending.json`` (URI, run, its pipeline parent run, metrics) and copies of the artifacts as they were."""
    import json
    import shutil
    import time

    folder = Path(root) / PENDING_DIR / run_id
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    copied = []
    for artifact in artifacts:
        if Path(artifact).is_file():
            shutil.copy2(artifact, folder / "artifacts" / Path(artifact).name)
            copied.append(Path(artifact).name)
    entry = {"uri": uri, "run_id": run_id, "stage": stage, "metrics": metrics, "artifacts": copied,
             "error": f"{type(err).__name__}: {_first_line(err)}", "time": time.time(), "parent": parent}
    (folder / "pending.json").write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    return folder


def sync_pending(root: Path, uri: str | None = None) -> tuple[int, list[str]]:
    """Upload every pending entry under ``root`` (to its own URI, or ``uri``); returns (number
    uploaded, problems). An uploaded entry is removed; a failing one stays."""
    import json
    import shutil

    quiet_telemetry()
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    done, problems = 0, []
    for entry_file in sorted((Path(root) / PENDING_DIR).glob("*/pending.json")):
        folder = entry_file.parent
        try:
            entry = json.loads(entry_file.read_text())
            target = uri or entry["uri"]
            check_reachable(target)
            client = MlflowClient(tracking_uri=target)
            stamp = int(entry["time"] * 1000)
            with slow_notice("niwt sync", target, f"uploading {folder.name}"):
                client.log_batch(entry["run_id"], metrics=[Metric(k, float(v), stamp, 0)
                                                           for k, v in entry["metrics"].items()])
                for name in entry["artifacts"]:
                    client.log_artifact(entry["run_id"], str(folder / "artifacts" / name))
                client.set_terminated(entry["run_id"], "FINISHED")
            # the pipeline's parent run, left RUNNING when the server went away mid-stage, ends as the stage
            # would have ended it (a parent that a later stage marked FAILED stays so). Not part of the upload:
            # a deleted parent must not keep an uploaded entry for ever.
            parent = entry.get("parent")
            with contextlib.suppress(Exception):
                if parent and client.get_run(parent).info.status == "RUNNING":
                    client.set_terminated(parent, "FINISHED")
        except Exception as err:  # noqa: BLE001  report and keep the entry
            problems.append(f"{folder}: {type(err).__name__}: {_first_line(err)}")
            continue
        shutil.rmtree(folder)
        done += 1
    return done, problems


def invocation_key() -> str | None:
    """What groups the stage runs of one pipeline invocation under one parent run.

    ``NIWT_INVOCATION`` when the Prefect flow set it (its flow-run id); under ``dvc repro`` /
    ``dvc exp run`` (DVC sets ``DVC_STAGE`` for a stage's command) the ``dvc`` process that runs the
    stages: host, pid and start time; None for a ``niwt`` command typed by hand.
    """
    if os.environ.get(INVOCATION_ENV):
        return os.environ[INVOCATION_ENV]
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    for _ in range(4):  # the dvc process, above any shell DVC ran the command in
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return f"{socket.gethostname()}:{os.getppid()}"
        if _is_dvc(cmdline.split(" ")):
            return f"{socket.gethostname()}:{pid}:{stat[19]}"  # field 22: start time, in clock ticks
        pid = int(stat[1])  # field 4: the parent's pid
    return f"{socket.gethostname()}:{os.getppid()}"


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """One process at a time of this project looks up / creates the experiment and a parent run (an
    advisory file lock in DVC's ignored ``.dvc/tmp``); without it two stages started together could
    each create one."""
    import fcntl
    import tempfile

    folder = root / ".dvc" / "tmp"
    name = f"niwt-parent-run-{os.getuid() if hasattr(os, 'getuid') else 0}.lock"  # per user: /tmp is shared
    lock = folder / name if folder.is_dir() else Path(tempfile.gettempdir()) / name
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_dvc(argv: list[str]) -> bool:
    """A ``dvc`` process (``dvc ...``, ``python -m dvc ...``, ``python .../bin/dvc ...``), judged by its
    program names, not by "dvc" anywhere in the command line (a venv under ``~/niwt-dvc/`` would make
    the launcher of a data-parallel stage look like one)."""
    head = argv[:3]
    return any(Path(a).name == "dvc" for a in head) or (len(head) > 2 and head[1:3] == ["-m", "dvc"])


DIRECT_KEY = "direct"  # every ``niwt <stage>`` typed by hand: nested under one parent run per experiment
DIRECT_NAME = "direct stage calls"
FAILED_SUFFIX = " (failed at "  # a pipeline parent whose stage failed: "<name> (failed at <stage>)"


# (content digest, flattened params, {method: headline metrics}) of the run the repository commits
Baseline = tuple[str, dict[str, Any], dict[str, dict[str, float]]]


def log_baseline(client, exp_id: str, baseline: Baseline | None) -> str | None:
    """Log the committed reference run (HEAD's params and headline metrics) once per content: a fresh
    clone's ``dvc repro`` skips ``evaluate`` (its inputs and committed outputs match dvc.lock), so without
    it MLflow would hold nothing to compare a first sweep with. Returns the run id, None when logged before
    or there is nothing committed."""
    if baseline is None:
        return None
    digest, params, headline = baseline
    if client.search_runs([exp_id], filter_string=f"tags.`niwt.baseline_sha256` = '{digest}'", max_results=1):
        return None
    run = client.create_run(exp_id, run_name="committed baseline", tags={
        "niwt.stage": "baseline", "niwt.baseline_sha256": digest,
        "mlflow.note.content": "The reference run committed in git (params.yaml, metrics/gzsl/*.json of HEAD), "
                               "logged by niwt so that a sweep has something to be compared with."})
    _log_params(client, run.info.run_id, params)
    log_headline(client, run.info.run_id, headline)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _parent_run(client, exp_id: str, key: str, pipeline_params: dict[str, Any], tags: dict[str, str],
                baseline: Callable[[], Baseline | None] | None = None) -> str:
    """The parent run of invocation ``key``: found by its tag, or created (with every pipeline param).

    A pipeline parent that an earlier stage marked failed is RUNNING again, under its own name, when a
    stage of the same invocation reruns (a retried Prefect task). Direct calls (:data:`DIRECT_KEY`) share
    one parent that carries no params (they differ from call to call) and is always FINISHED: the run list
    shows it once, the calls (FAILED ones too) nested below it."""
    found = client.search_runs([exp_id], filter_string=f"tags.`niwt.invocation` = '{key}'", max_results=1)
    direct = key == DIRECT_KEY
    if found:
        run_id, name = found[0].info.run_id, found[0].info.run_name or ""
        if not direct:
            client.update_run(run_id, status="RUNNING", name=name.split(FAILED_SUFFIX)[0])
        return run_id
    name = DIRECT_NAME if direct else os.environ.get("DVC_EXP_NAME") or "pipeline"
    run = client.create_run(exp_id, run_name=name, tags={**tags, "niwt.invocation": key,
                                                         "niwt.stage": "direct" if direct else "pipeline"})
    if direct:
        client.set_terminated(run.info.run_id, "FINISHED")
    else:
        _log_params(client, run.info.run_id, pipeline_params)
        if baseline is not None:
            with contextlib.suppress(Exception):  # a convenience: never the cause of a failed stage
                log_baseline(client, exp_id, baseline())
    return run.info.run_id


def mark_failed(client, run_id: str, stage: str) -> None:
    """End a pipeline parent FAILED and say where in its name, so a failed attempt is told apart from the
    rerun of the same experiment name (and filtered out by ``attributes.status != 'FAILED'``)."""
    name = (client.get_run(run_id).info.run_name or "pipeline").split(FAILED_SUFFIX)[0]
    client.update_run(run_id, status="FAILED", name=f"{name}{FAILED_SUFFIX}{stage})")
    client.set_terminated(run_id, "FAILED")


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:500]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=items[start:start + 100])


def log_children(mlflow, runs: dict[str, dict[str, float]], params: dict[str, Any]) -> None:
    """One child run of the active run per entry, tagged ``method``, with the same metric names in
    each (MLflow's compare view then puts them side by side) and the stage's params."""
    if not runs:
        return
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    for name, metrics in runs.items():
        child = client.create_run(active.info.experiment_id, run_name=name,
                                  tags={"mlflow.parentRunId": active.info.run_id, "method": name,
                                        "niwt.stage": active.data.tags.get("niwt.stage", "")})
        _log_params(client, child.info.run_id, {**params, "method": name})
        for key, value in metrics.items():
            client.log_metric(child.info.run_id, key, value)
        client.set_terminated(child.info.run_id)


def log_headline(client, run_id: str, runs: dict[str, dict[str, float]]) -> None:
    """Every method's metrics on one run, as ``<method>/<metric>`` (``niwt/H``): the pipeline's parent run
    then holds its params and every method's numbers, so MLflow's compare view puts a sweep's points (one
    parent run each) side by side; the per-method child runs stay as the detail."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(f"{method}/{key}", float(value), now, 0) for method, metrics in runs.items()
             for key, value in metrics.items()]
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[start:start + 1000])


def log_steps(mlflow, steps: dict[str, list[tuple[int, float]]]) -> None:
    """Per-epoch metrics of the active run, each value at its step (MLflow draws them as curves)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(name, float(v), now, int(step)) for name, series in steps.items() for step, v in series]
    client = mlflow.MlflowClient()
    for start in range(0, len(items), 1000):
        client.log_batch(mlflow.active_run().info.run_id, metrics=items[start:start + 1000])


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, params: dict[str, Any], pipeline_params: dict[str, Any] | None = None,
              root: Path | None = None, baseline: Callable[[], Baseline | None] | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage; yields a :class:`StageRun` (or None when disabled).

    The run is the child of one parent run per pipeline invocation (:func:`invocation_key`: a
    Prefect flow run, or one ``dvc repro`` / ``dvc exp run``), which carries every pipeline param
    (``pipeline_params``) and the git commit; the first stage that actually runs creates it, so a
    no-op ``dvc repro`` creates no run. ``NIWT_PARENT_RUN_ID`` names a parent explicitly instead. The
    ``niwt`` commands typed by hand nest under one "direct stage calls" run per experiment, so the run
    list shows pipeline runs (a failed one named "... (failed at <stage>)") and that one entry.

    Everything that can fail in tracking before the stage's work fails here, as a
    :class:`TrackingError` naming the URI, within seconds (an unreachable server is detected by
    :func:`check_reachable`). After the work, :meth:`StageRun.finish` never costs the results. A
    stage that raises ends its run FAILED (best effort).

    Args:
        root: the project root (``mlflow.db``, artifacts, pending uploads); default: from the
            working directory.
        baseline: reads the committed reference run, logged once (:func:`log_baseline`) when a pipeline
            parent run is created.
    """
    if not enabled():
        yield None
        return
    quiet_telemetry()
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    root = project_root(root)
    uri = tracking_uri(root)
    check_reachable(uri)
    import mlflow

    key = None
    with slow_notice(f"niwt {stage}", uri, "opening the stage's run, before any work"):
        try:
            mlflow.set_tracking_uri(uri)
            client = mlflow.MlflowClient()
            with _exclusive(root):  # stages started together (the flow's parallel training) make one experiment
                exp_id = experiment_id(client, experiment, root)
            mlflow.set_experiment(experiment_id=exp_id)
            tags = {"niwt.stage": stage, "mlflow.source.git.commit": _git_commit(root)}
            for env, tag in ((PIPELINE_ENV, "niwt.pipeline_id"), ("DVC_EXP_NAME", "niwt.dvc_exp")):
                if os.environ.get(env):
                    tags[tag] = os.environ[env]
            parent = os.environ.get(PARENT_ENV) or None
            key = None if parent else (invocation_key() or DIRECT_KEY)
            if key is not None:
                with _exclusive(root):  # stages run side by side (the flow's parallel training) find one parent
                    parent = _parent_run(client, exp_id, key, pipeline_params or params,
                                         {k: v for k, v in tags.items() if k != "niwt.stage"}, baseline)
            if parent:
                tags["mlflow.parentRunId"] = parent
            created = client.create_run(exp_id, run_name=stage, tags=tags)
            active = mlflow.start_run(run_id=created.info.run_id)
            _log_params(client, active.info.run_id, params)
        except Exception as err:  # noqa: BLE001  nothing done yet: fail now, in one line
            _abandon(mlflow)
            raise TrackingError(f"MLflow tracking at {uri} failed before any work ({type(err).__name__}: "
                                f"{_first_line(err)}); {_fix_hint()}") from err
    pipeline = parent if key not in (None, DIRECT_KEY) else None  # the invocation's parent: headline, status
    run = StageRun(mlflow, active.info.run_id, stage, uri, root, pipeline, params)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):
            if mlflow.active_run() is not None:
                mlflow.end_run("FAILED")
            if pipeline is not None:
                mark_failed(client, pipeline, stage)
        _abandon(mlflow)
        raise
    if mlflow.active_run() is not None:  # the caller did not finish (register): end it, never failing
        run.finish({}, [])
