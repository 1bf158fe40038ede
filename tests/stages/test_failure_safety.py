"""A stage that fails part-way loses nothing: it replaces none of its previous outputs and leaves no
temp file; the extract cache never serves a model rewritten at the same path; tracking failures cost
no results; fine-tuning keeps its resume state until the run is complete; a full disk is one line
naming the file and the free space; and a stage whose ``dvc`` parent is killed stops without writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _project import Project, cli, fail_on_call, stage_argv, temp_leftovers, write_params

from niwt.cli import main
from niwt.io.parquet import read_importances
from niwt.models.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("_quiet")


# ------------------------------------------------------- interruptions: atomic stage outputs


def _old_outputs(paths: list[Path]) -> dict[Path, bytes]:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"previous complete output of " + p.name.encode())
    return {p: p.read_bytes() for p in paths}


def _half_written_save(real: Callable) -> Callable:
    """``torch.save`` that dies half-way through writing the file (a full disk, a kill)."""
    def save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")
    return save


def _interrupt_prepare(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.prepare as m
    mp.setattr(m, "write_splits", fail_on_call(1, m.write_splits, KeyboardInterrupt()))


def _interrupt_finetune(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.finetune as m
    mp.setattr(m, "_write_history", fail_on_call(1, m._write_history, KeyboardInterrupt()))


def _interrupt_extract(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.extract as m
    mp.setattr(m, "write_manifest", fail_on_call(1, m.write_manifest, KeyboardInterrupt()))


def _interrupt_fit_mapping(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(torch, "save", _half_written_save(torch.save))


def _interrupt_inject(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.inject as m
    mp.setattr(m, "save_checkpoint", fail_on_call(2, m.save_checkpoint, KeyboardInterrupt()))


def _interrupt_evaluate(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.evaluate as m
    mp.setattr(m, "draw_seen_unseen_curves", fail_on_call(1, m.draw_seen_unseen_curves, KeyboardInterrupt()))


# stage -> (interruption, the stage's outputs relative to ``out``)
INTERRUPTIONS = {
    "prepare": (_interrupt_prepare, ["prepared/classes.parquet"]),
    "finetune": (_interrupt_finetune, ["finetuned.pt", "finetune.csv"]),
    "extract": (_interrupt_extract, ["importances/_manifest.json"]),
    "fit_mapping": (_interrupt_fit_mapping, ["mapping.pt", "mapping.csv"]),
    "inject": (_interrupt_inject, ["injected/regression.pt"]),
    "evaluate": (_interrupt_evaluate, ["plots/per_class_accuracy.csv", "plots/curves/regression.csv",
                                       "plots/seen_unseen_curve.png", "plots/comparison.md", "gzsl/regression.json"]),
}


@pytest.mark.parametrize("stage", list(INTERRUPTIONS))
def test_interrupted_stage_replaces_nothing(stage: str, proj: Project, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, untouched: None,
                                            capsys: pytest.CaptureFixture) -> None:
    """A stage that dies after part of its work (Ctrl-C: one line, exit 130) leaves its previous outputs
    (and metrics) as they were, and no temp file; only extraction keeps its finished shards, on purpose,
    for resuming."""
    interrupt, outputs = INTERRUPTIONS[stage]
    out = tmp_path / "out"
    old = _old_outputs([out / o for o in outputs] + [out / "metrics.json"])
    interrupt(monkeypatch)
    argv = ["prepare", "--out", out / "prepared", "--params", proj.params, "--stats", out / "metrics.json"] \
        if stage == "prepare" else stage_argv(stage, proj, out, proj.params)
    if stage == "fit_mapping":  # a full disk: the one-line error, nothing replaced
        assert main([str(a) for a in argv]) == 2
    else:
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 130
        err = capsys.readouterr().err
        assert err.endswith(f"niwt {stage}: interrupted; its outputs are as they were, and a rerun continues from "
                            "what was saved\n") and "Traceback" not in err
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in old} == old
    assert temp_leftovers(out) == []
    expected = {str(p.relative_to(out)) for p in old}
    if stage == "extract":
        shards = sorted(f.name for f in (out / "importances.partial").glob("part-*.parquet"))
        assert shards == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        expected |= {f"importances.partial/{s}" for s in shards} | {"importances.partial/_extraction_key"}
    if stage == "finetune":  # the per-epoch training state survives too: a rerun resumes from it
        expected |= {"finetuned.pt.resume"}
    assert {str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()} == expected


# ------------------------------------------------------------------------------ extract cache


def test_extract_cache_never_serves_a_stale_model(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  untouched: None) -> None:
    """Two extractions in one process (Prefect, a Dask worker) from a checkpoint rewritten at the
    same path must use the new weights."""
    ckpt = tmp_path / "finetuned.pt"
    shutil.copy(proj.model, ckpt)
    first = tmp_path / "a"
    assert main([str(a) for a in stage_argv("extract", proj, first, proj.params, model=ckpt)]) == 0
    model, meta = load_checkpoint(ckpt)
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)
    save_checkpoint(ckpt, model, meta)
    second = tmp_path / "b"
    assert main([str(a) for a in stage_argv("extract", proj, second, proj.params, model=ckpt)]) == 0
    a = read_importances(first / "importances").values
    b = read_importances(second / "importances").values
    # the importance is linear in the classifier row, so negated weights give negated importances
    np.testing.assert_array_equal(b, -a)
    assert np.abs(a).max() > 0


# ----------------------------------------------------------------------------------- tracking


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_within_seconds_naming_it(proj: Project, tmp_path: Path) -> None:
    """The stage checks the tracking server before any work: an unreachable one is exit 2 within
    seconds and one line naming the URI, not minutes of MLflow retries and a traceback."""
    import subprocess
    import time

    uri = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NIWT_TRACKING": "on", "NIWT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    out = tmp_path / "out"
    argv = [str(a) for a in stage_argv("evaluate", proj, out, proj.params)]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "niwt.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert elapsed < 45, f"took {elapsed:.0f} s"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"niwt evaluate: error: MLflow tracking server {uri} is "
                                                   "unreachable"), proc.stderr
    assert "NIWT_TRACKING=off" in lines[0] and not out.exists()


class _HangingApi:
    """An MLflow server whose ``/health`` answers but whose REST API hangs (a dead database behind it)."""

    def __enter__(self) -> str:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/health":
                    time.sleep(120)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_tracking_server_hanging_on_its_api_fails_within_seconds(proj: Project, tmp_path: Path) -> None:
    """A server that answers /health but hangs on its API is one line within seconds (stage and
    `niwt sync`), not 90 silent seconds of MLflow retries."""
    import subprocess
    import time

    env = {**os.environ, "NIWT_TRACKING": "on", "NIWT_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    params = tmp_path / "params.yaml"
    shutil.copy(proj.params, params)
    entry = tmp_path / ".niwt" / "pending-tracking" / "abc" / "pending.json"
    with _HangingApi() as uri:
        env["MLFLOW_TRACKING_URI"] = uri
        entry.parent.mkdir(parents=True)
        entry.write_text(json.dumps({"uri": uri, "run_id": "abc", "stage": "evaluate", "metrics": {"H": 1.0},
                                     "artifacts": [], "error": "", "time": 0.0, "parent": None}))
        for argv, rc in (([str(a) for a in stage_argv("evaluate", proj, tmp_path / "out", proj.params)], 2),
                         (["sync", "--params", str(params)], 1)):
            start = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "niwt.cli", *argv], env=env, capture_output=True,
                                  text=True, timeout=120, stdin=subprocess.DEVNULL)
            elapsed = time.monotonic() - start
            assert proc.returncode == rc, proc.stderr[-3000:]
            assert elapsed < 30, f"{argv[0]} took {elapsed:.0f} s"
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and f"MLflow tracking server {uri} answers /health but not its REST API" in lines[0]
    assert entry.is_file() and not (tmp_path / "out").exists()


def test_slow_tracking_call_says_what_it_waits_for(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    import time

    from niwt.integration import tracking

    monkeypatch.setattr(tracking, "SLOW_NOTICE_S", 0.05)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    with tracking.slow_notice("niwt x", "http://h", "logging"):
        time.sleep(0.3)
    with tracking.slow_notice("niwt y", "http://h", "logging"):
        pass
    time.sleep(0.1)
    err = capsys.readouterr().err
    # 3 tries of 10 s and back-offs of 1 + 2 s
    assert err == ("niwt x: waiting for the MLflow server at http://h (logging); it gives up after about 33 s "
                   "(MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_HTTP_REQUEST_MAX_RETRIES)\n")


def test_tracking_failure_after_the_work_keeps_results_and_sync_uploads_them(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A failure in MLflow logging after the outputs are written is a warning: exit 0 (so DVC records
    the run), outputs and metrics JSON kept, and `niwt sync` uploads the run later."""
    import mlflow
    from mlflow import MlflowClient

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("NIWT_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.setenv("NIWT_INVOCATION", "flow-run-1")  # a pipeline invocation: the stage has a parent run
    params = tmp_path / "params.yaml"
    shutil.copy(proj.params, params)  # the project (pending uploads) is where the params file is

    def down(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("tracking server went away")

    monkeypatch.setattr(mlflow, "log_metrics", down)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("evaluate", proj, out, params))
    assert rc == 0, err
    assert "niwt evaluate: warning: MLflow logging" in err and "niwt sync" in err and "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "plots" / "comparison.md").is_file()
    pending = list((tmp_path / ".niwt" / "pending-tracking").glob("*/pending.json"))
    assert len(pending) == 1
    run_id = json.loads(pending[0].read_text())["run_id"]
    monkeypatch.undo()
    monkeypatch.setenv("NIWT_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    rc, err = cli(capsys, "sync", "--params", params)
    assert rc == 0, err
    run = MlflowClient(tracking_uri=db).get_run(run_id)
    assert run.info.status == "FINISHED"
    parent = MlflowClient(tracking_uri=db).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED", "the pipeline's parent run stayed RUNNING after the sync"
    from niwt.cli import _numeric

    assert run.data.metrics == pytest.approx(_numeric(metrics, "evaluate")) and run.data.metrics
    assert list((tmp_path / ".niwt" / "pending-tracking").glob("*/pending.json")) == []


# --------------------------------------------------------------- resume state and a full disk


def _finetune_argv(proj: Project, out: Path) -> list[str]:
    return [str(a) for a in stage_argv("finetune", proj, out, proj.params)]


def test_finetune_keeps_its_resume_state_until_the_metrics_are_written(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The resume file is deleted only once the metrics are written: a failure after training (here
    writing the metrics JSON) keeps it, and the rerun trains no epoch."""
    import niwt.io.atomic as atomic

    out = tmp_path / "out"
    resume = out / "finetuned.pt.resume"

    def no_space(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_json", no_space)
    capsys.readouterr()
    rc = main(_finetune_argv(proj, out))
    printed = capsys.readouterr()
    assert rc == 2 and re.search(r"niwt finetune: error: \S*metrics\.json: no space left on device \(.* free",
                                 printed.err), printed.err
    assert resume.is_file(), "the training state was thrown away"
    monkeypatch.undo()
    monkeypatch.setenv("NIWT_TRACKING", "off")
    rc = main(_finetune_argv(proj, out))
    printed = capsys.readouterr().out
    assert rc == 0 and "resuming from" in printed and "epoch 1/2" not in printed and "epoch 2/2" not in printed
    assert not resume.exists() and (out / "metrics.json").is_file()


def _to_dev_full(real: Callable, when: Callable[[str], bool]) -> Callable:
    """``torch.save`` that writes to /dev/full (a real ENOSPC, as torch reports it) when ``when(name)``."""
    def save(obj, f, *args, **kwargs):
        if when(Path(f).name):
            return real(obj, "/dev/full", *args, **kwargs)
        return real(obj, f, *args, **kwargs)
    return save


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_failing_resume_save_is_a_warning_and_training_completes(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch, "save", _to_dev_full(torch.save, lambda name: ".resume" in name))
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(_finetune_argv(proj, out))
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "[finetune] warning: could not save the resume state after epoch 1" in printed.out
    assert "epoch 2/2" in printed.out and (out / "finetuned.pt").is_file()
    assert temp_leftovers(out) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_saving_the_checkpoint_names_the_file_and_the_free_space(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A full disk while saving the checkpoint is one line naming the file and the free space, not
    torch's '[enforce fail at inline_container.cc] unexpected pos' traceback; no partial file is left."""
    monkeypatch.setattr(torch, "save", _to_dev_full(torch.save, lambda name: name == "finetuned.pt"))
    out = tmp_path / "out"
    rc, err = cli(capsys, *_finetune_argv(proj, out))
    assert rc == 2, err
    assert re.fullmatch(r"niwt finetune: error: \S*/out/finetuned\.pt: the write failed \(.*\), most likely a "
                        r"full disk \([\d.]+ \w+ free on its filesystem\); free space there and rerun .*\n", err), err
    assert not (out / "finetuned.pt").exists() and temp_leftovers(out) == []


# -------------------------------------------------------------------- a killed dvc parent


FAKE_DVC = """
import os, signal, subprocess, sys
if sys.argv[2] == "ignore":  # as a background job of a script: its children inherit SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_IGN)
env = dict(os.environ, DVC_STAGE="finetune")
child = subprocess.Popen(["/bin/sh", "-c", sys.argv[1]], env=env)
print(child.pid, flush=True)
child.wait()
"""


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sigint", ["default", "ignore"])
def test_stage_stops_when_its_dvc_process_is_killed(proj: Project, tmp_path: Path, sigint: str) -> None:
    """Killing only the `dvc` process stops its `niwt` stage within seconds, without writing: a stage
    left running would overwrite the outputs DVC restores. Also when the stage inherited SIGINT
    ignored (dvc run as a background job of a script), well within the hard-exit grace period."""
    import shlex
    import signal
    import subprocess
    import time

    from niwt.cli import PARENT_GRACE_S

    params = write_params(tmp_path / "params.yaml", {"finetune": {"epochs": 500}})
    out = tmp_path / "out"
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "niwt.cli",
                                                  *stage_argv("finetune", proj, out, params)])
    env = {**os.environ, "NIWT_TRACKING": "off", "NIWT_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    fake_dvc = subprocess.Popen([sys.executable, "-c", FAKE_DVC, cmd, sigint], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    shell = int(fake_dvc.stdout.readline())
    stage_pids: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not (out / "finetuned.pt.resume").is_file():  # training is under way
            assert time.monotonic() < deadline and fake_dvc.poll() is None, fake_dvc.stderr.read()
            time.sleep(0.2)
        stage_pids = {shell} | _children(shell)
        fake_dvc.send_signal(signal.SIGKILL)
        fake_dvc.wait(timeout=10)
        deadline = time.monotonic() + PARENT_GRACE_S - 5  # the interrupt, not the hard exit after the grace period
        while any(_alive(p) for p in stage_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in stage_pids), "niwt kept running after its dvc process died"
        assert not (out / "finetuned.pt").exists() and temp_leftovers(out) == []
    finally:
        for pid in stage_pids | _children(shell) | {shell}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if fake_dvc.poll() is None:
            fake_dvc.kill()
