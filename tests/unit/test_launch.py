"""The N-process launcher's decisions (:mod:`niwt.distributed.launch`) and the Prefect flow's guard on
the commands it runs beside each other (``tasks.dvc_stage.stage_command``)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from niwt.distributed import launch
from niwt.errors import ParamsError

REPO = Path(__file__).resolve().parents[2]


def test_the_failure_that_stopped_the_run_is_named_not_its_consequences() -> None:
    failures = {0: SimpleNamespace(exitcode=-int(signal.SIGTERM), timestamp=5),  # stopped by the launcher
                1: SimpleNamespace(exitcode=-int(signal.SIGKILL), timestamp=7),  # the cause, though later
                2: SimpleNamespace(exitcode=launch.PEER_LOST, timestamp=4)}  # lost its peer first
    rank, failure = launch.root_cause(failures)
    assert rank == 1 and launch.describe(failure.exitcode) == "killed by SIGKILL"
    assert launch.describe(2) == "exit status 2"
    # among causes, the earliest, then the lowest rank
    both = {3: SimpleNamespace(exitcode=2, timestamp=9), 1: SimpleNamespace(exitcode=1, timestamp=9)}
    assert launch.root_cause(both)[0] == 1


def test_only_a_lost_connection_counts_as_a_lost_peer() -> None:
    assert launch.peer_lost(RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"))
    assert not launch.peer_lost(RuntimeError("[gloo] size mismatch in allreduce"))  # a bug: keep its traceback
    assert not launch.peer_lost(ValueError("anything"))


def test_a_global_batch_smaller_than_the_processes_is_refused() -> None:
    launch.check_batch(2, 2)
    with pytest.raises(ParamsError, match=r"finetune.batch_size \(1\) is the global batch.*NIWT_NPROC=2"):
        launch.check_batch(1, 2)


def test_more_processes_than_gpus_is_refused_before_any_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    launch.check_devices(SimpleNamespace(device="auto", nproc=2))
    launch.check_devices(SimpleNamespace(device="cpu", nproc=8))  # gloo on the CPU: any number
    with pytest.raises(ParamsError, match="NIWT_NPROC .* is 3, but this machine has 2 GPU"):
        launch.check_devices(SimpleNamespace(device="cuda", nproc=3))


def test_cpu_threads_are_shared_among_ranks() -> None:
    import os

    assert launch.threads_per_rank(1) == (os.cpu_count() or 1)
    assert launch.threads_per_rank(10_000) == 1


@pytest.mark.parametrize("cmd", [
    "niwt finetune --data data/prepared; rm -rf ~",  # shell syntax
    "niwt finetune --data $HOME/x",  # interpolation
    "niwt finetune --data ~/x",  # a token the shell would expand
    "python -c 'import os' finetune",  # another program
    "niwt finetune_validation --data d",  # another stage's command
])
def test_the_flow_runs_only_plain_niwt_commands_of_the_stage(tmp_path: Path, cmd: str) -> None:
    from tasks.dvc_stage import stage_command

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"finetune": {"cmd": cmd}}}))
    with pytest.raises(ValueError, match="not a plain `niwt finetune"):
        stage_command("finetune", str(tmp_path))


def test_the_projects_own_commands_pass_the_guard(tmp_path: Path) -> None:
    from tasks.dvc_stage import stage_command

    for stage in ("finetune", "finetune_validation"):
        argv = stage_command(stage, str(REPO))
        assert Path(argv[0]).name == "niwt" and argv[1] == stage and "--data" in argv
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"finetune": {"cmd": "niwt finetune --out m.pt",
                                                                              "wdir": "sub"}}}))
    with pytest.raises(ValueError):  # run elsewhere than the flow would run it
        stage_command("finetune", str(tmp_path))
