"""Two-process (gloo) fine-tuning end to end: through ``dvc repro`` with ``NIWT_NPROC=2``, a rank
killed mid-run, and the resumed run.

What must hold: the number of processes is an execution setting (DVC reruns nothing when it
changes); the 2-process numbers are within the documented tolerance of the 1-process ones
(docs/scaling.md); rank 0 alone writes and tracks; a killed rank stops every process of the stage
(no orphan) with one line naming it; the rerun resumes and ends with the unbroken run's network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import dvc, env, make_project, run  # noqa: E402

pytestmark = pytest.mark.slow

# The documented tolerance (docs/scaling.md) for tiny data: 2 processes draw the same global batches,
# but augmentation and dropout streams and per-slice batch norm differ.
LOSS_RTOL = 0.1


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _rank_pid(launcher: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_two_process_finetuning_through_dvc_kill_and_resume(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", {"finetune": {"epochs": 6}})
    one = dvc(["repro", "finetune"], project).stdout
    assert "Running stage 'finetune'" in one
    single = json.loads((project / "stats" / "finetune.json").read_text())
    single_history = (project / "plots" / "finetune_history.csv").read_text().splitlines()[1:]
    two_env = {**env(project), "NIWT_NPROC": "2"}
    # an execution setting: switching it makes DVC rerun nothing
    again = dvc(["repro", "finetune"], project, env_=two_env).stdout
    assert "Running stage 'fingerprint'" in again and "Running stage 'finetune'" not in again, again
    out = dvc(["repro", "-f", "-s", "finetune"], project, env_=two_env).stdout
    assert "niwt finetune: done (2 processes)" in out and out.count("niwt finetune: done") == 1, out
    double = json.loads((project / "stats" / "finetune.json").read_text())
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["epochs_trained"] == single["epochs_trained"] == 6
    double_history = (project / "plots" / "finetune_history.csv").read_text().splitlines()[1:]
    for a, b in zip(single_history, double_history, strict=True):
        loss_a, loss_b = float(a.split(",")[2]), float(b.split(",")[2])
        assert abs(loss_a - loss_b) <= LOSS_RTOL * loss_a, (single_history, double_history)
    unbroken = torch.load(project / "models" / "finetuned.pt", weights_only=True)

    # rank 1 killed mid-run: every process of the stage stops, the launcher names the rank
    cmd = [str(Path(sys.executable).parent / "niwt"), "finetune", "--data", "data/prepared", "--cache",
           "data/cache", "--out", "killed.pt", "--history", "killed.csv", "--nproc", "2"]
    proc = subprocess.Popen(cmd, cwd=project, env=env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    resume = project / "killed.pt.resume"
    deadline = time.monotonic() + 120
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    ranks = [_rank_pid(proc.pid, r) for r in (0, 1)]
    assert None not in ranks and proc.poll() is None, proc.communicate()
    os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "niwt finetune: error: rank 1 of 2 failed (killed by SIGKILL); every rank was stopped" in err, err
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 30
    while _alive(ranks[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(ranks[0]), "rank 0 outlived the stage"
    assert resume.exists() and not (project / "killed.pt").exists()

    # the rerun resumes from the saved epoch and ends with the unbroken run's network
    rerun = run(cmd, project).stdout
    assert "resuming from" in rerun, rerun
    resumed = torch.load(project / "killed.pt", weights_only=True)
    for key, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)
    assert not resume.exists()

    # a user's own torchrun runs the stage the same way (the world from torchrun's environment)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "niwt.cli", "finetune_validation", "--data", "data/prepared", "--cache", "data/cache", "--out",
                "backbone.pt", "--stats", "backbone.json"]
    out = run(torchrun, project).stdout
    assert out.count("niwt finetune_validation: done (2 processes)") == 1, out
    assert json.loads((project / "backbone.json").read_text())["world_size"] == 2
