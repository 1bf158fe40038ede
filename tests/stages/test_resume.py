"""Interrupted stages resume, and runs are reproducible.

* ``niwt extract`` killed with SIGKILL after at least one shard is on disk: the rerun computes only
  the missing shards and the final dataset is byte-identical to an uninterrupted run.
* ``niwt finetune`` killed after the first ``<out>.resume`` appears: the rerun says "resuming from"
  and ends with exactly the checkpoint (weights, history, test accuracy) of an unbroken run.
* Same seed and params give the same metrics on CPU (prepare + finetune in two directories).

The killed runs are real subprocesses (the console script); the reruns and reference runs go
through ``niwt.cli.main`` in-process, which is the same code path without the start-up cost.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from niwt.cli import main  # noqa: E402
from tiny_project import REPO, TINY, merge  # noqa: E402

NIWT = str(Path(sys.executable).parent / "niwt")
# More, smaller shards than the tiny runs' (3 of 40), so that a kill lands between shards.
SMALL_SHARDS = {"NIWT_SHARD_SIZE": "5", "NIWT_BATCH_SIZE": "5"}


def write_params(path: Path, overrides: dict | None = None) -> Path:
    params = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), overrides or {})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@dataclasses.dataclass(frozen=True)
class Project:
    root: Path
    params: Path
    data: Path
    model: Path
    metrics: Path


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIWT_TRACKING", "off")
    monkeypatch.setenv("NIWT_PROGRESS", "0")
    for key, value in SMALL_SHARDS.items():
        monkeypatch.setenv(key, value)


def prepare_and_finetune(root: Path, params: Path) -> Project:
    p = Project(root, params, root / "data/prepared", root / "models/finetuned.pt", root / "metrics")
    assert main(["prepare", "--out", str(p.data), "--params", str(params),
                 "--stats", str(p.metrics / "prepare.json")]) == 0
    assert main(["finetune", "--data", str(p.data), "--out", str(p.model), "--params", str(params),
                 "--history", str(root / "plots/finetune_history.csv"),
                 "--stats", str(p.metrics / "finetune.json")]) == 0
    return p


@pytest.fixture(scope="module")
def _one_thread_module():
    """Pin torch to one thread for this module (other test modules may leave it at 1 or 2)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory, _one_thread_module: None) -> Project:
    root = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIWT_TRACKING", "off")
        mp.setenv("NIWT_PROGRESS", "0")
        return prepare_and_finetune(root, write_params(root / "params.yaml"))


def spawn(argv: list[str], cwd: Path) -> subprocess.Popen:
    # one intra-op thread on both sides: the in-process reference runs use one too (see _one_thread),
    # and float sums in another order differ in the last bits
    env = {**os.environ, **SMALL_SHARDS, "NIWT_TRACKING": "off", "NIWT_PROGRESS": "0", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([NIWT, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0, extra_delay: float = 0.0) -> None:
    """SIGKILL ``proc`` once ``ready()`` holds (plus ``extra_delay``); fail if it ends first or times out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before it could be killed:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no kill point within {timeout}s")
        time.sleep(0.005)
    time.sleep(extra_delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    output = proc.stdout.read()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, f"ended by itself first (rc {proc.returncode}):\n{output}"


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(f.relative_to(directory)): f.read_bytes() for f in sorted(directory.rglob("*")) if f.is_file()}


# ------------------------------------------------------------------------------------- extract


def test_extract_killed_then_resumed_is_byte_identical(proj: Project, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    reference = tmp_path / "reference"
    assert main(["extract", "--data", str(proj.data), "--model", str(proj.model), "--out", str(reference),
                 "--params", str(proj.params)]) == 0
    n_shards = len(list(reference.glob("part-*.parquet")))
    assert n_shards == 18  # 90 train+val images in shards of 5

    out = tmp_path / "importances"
    partial = tmp_path / "importances.partial"
    argv = ["extract", "--data", str(proj.data), "--model", str(proj.model), "--out", str(out),
            "--params", str(proj.params), "--stats", str(tmp_path / "killed.json")]
    seed = random.randrange(2**32)
    delay = random.Random(seed).uniform(0.0, 0.02)  # 18 tiny shards finish in ~0.1 s: kill early
    proc = spawn(argv, tmp_path)
    kill_when(proc, lambda: any(partial.glob("part-*.parquet")), extra_delay=delay)

    done = sorted(partial.glob("part-*.parquet"))
    assert 1 <= len(done) < n_shards, f"{len(done)} shards at the kill (delay {delay:.3f}s, seed {seed})"
    assert not out.exists() and not (tmp_path / "killed.json").exists()  # nothing final after a kill
    # A kill inside a shard write leaves the writer's temp dir; simulate one so that the cleanup
    # is always exercised (it must never end up in the final dataset).
    (partial / ".part-00017.parquet.abc123.tmp").mkdir(exist_ok=True)
    (partial / ".part-00017.parquet.abc123.tmp" / "part-00017.parquet").write_bytes(b"half a shard")

    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "resumed.json")]) == 0
    metrics = yaml.safe_load((tmp_path / "resumed.json").read_text())
    assert metrics["shards_reused"] == len(done) > 0, f"delay {delay:.3f}s, seed {seed}"
    assert metrics["shards_computed"] == n_shards - len(done)
    assert not partial.exists()
    assert tree_bytes(out) == tree_bytes(reference)


# ------------------------------------------------------------------------------------ finetune


def test_finetune_killed_then_resumed_matches_unbroken_run(proj: Project, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "finetuned.pt"
    resume = tmp_path / "finetuned.pt.resume"
    argv = ["finetune", "--data", str(proj.data), "--out", str(out), "--params", str(proj.params),
            "--history", str(tmp_path / "history.csv"), "--stats", str(tmp_path / "finetune.json")]
    proc = spawn(argv, tmp_path)
    kill_when(proc, resume.is_file)
    assert resume.is_file() and not out.exists() and not (tmp_path / "history.csv").exists()

    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {resume} (phase 0, epoch 1)" in printed
    assert "full epoch 1/2" not in printed  # epoch 1 is not trained again
    assert not resume.exists()

    ref_metrics = yaml.safe_load((proj.metrics / "finetune.json").read_text())
    metrics = yaml.safe_load((tmp_path / "finetune.json").read_text())
    assert metrics == ref_metrics  # val/test accuracy, epochs trained: exactly equal
    assert (tmp_path / "history.csv").read_text() == (proj.root / "plots/finetune_history.csv").read_text()
    got, ref = torch.load(out, weights_only=True), torch.load(proj.model, weights_only=True)
    assert got.keys() == ref.keys()
    for key, value in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"weight {key} differs from the unbroken run"


def test_finetune_validation_killed_then_resumed_matches_unbroken_run(proj: Project, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """The validation backbone trains through the same loop as finetune, resume included."""
    params = write_params(tmp_path / "params.yaml", {"validate": {"finetune_epochs": 2}})  # a kill lands mid-run

    def argv(out: Path) -> list[str]:
        return ["finetune_validation", "--data", str(proj.data), "--out", str(out), "--params", str(params),
                "--stats", str(out.with_suffix(".json"))]

    assert main(argv(tmp_path / "unbroken.pt")) == 0
    out, resume = tmp_path / "backbone.pt", tmp_path / "backbone.pt.resume"
    proc = spawn(argv(out), tmp_path)
    kill_when(proc, resume.is_file)
    assert resume.is_file() and not out.exists()
    capsys.readouterr()
    assert main(argv(out)) == 0
    assert f"resuming from {resume} (phase 0, epoch 1)" in capsys.readouterr().out
    assert not resume.exists()
    assert out.with_suffix(".json").read_text() == (tmp_path / "unbroken.json").read_text()
    got, ref = torch.load(out, weights_only=True), torch.load(tmp_path / "unbroken.pt", weights_only=True)
    for key, value in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"weight {key} differs from the unbroken run"


def test_unreadable_resume_file_is_ignored(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A resume file that cannot be loaded safely (here: pickled code) is reported and ignored; the
    run trains from the start and gives the unbroken run's checkpoint."""
    out = tmp_path / "finetuned.pt"
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"resume_key": "x", "payload": Exploit()}, tmp_path / "finetuned.pt.resume")
    capsys.readouterr()
    assert main(["finetune", "--data", str(proj.data), "--out", str(out), "--params", str(proj.params),
                 "--history", str(tmp_path / "history.csv"), "--stats", str(tmp_path / "finetune.json")]) == 0
    printed = capsys.readouterr().out
    assert "ignoring" in printed and "finetuned.pt.resume" in printed and "pickled Python objects" in printed
    assert not marker.exists()
    assert (tmp_path / "finetune.json").read_text() == (proj.metrics / "finetune.json").read_text()


# --------------------------------------------------------------------------------- determinism


def test_same_seed_same_metrics(proj: Project, tmp_path: Path) -> None:
    """prepare + finetune again in another directory: identical metrics and training history."""
    again = prepare_and_finetune(tmp_path, write_params(tmp_path / "params.yaml"))
    for name in ("prepare.json", "finetune.json"):
        assert (again.metrics / name).read_text() == (proj.metrics / name).read_text(), name
    assert (tmp_path / "plots/finetune_history.csv").read_text() == \
        (proj.root / "plots/finetune_history.csv").read_text()
