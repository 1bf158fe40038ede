"""``NIWT_NPROC=N`` / ``--nproc N``: a fine-tuning stage as N processes on this node.

The ``niwt`` process that DVC (or a person, or Prefect) started becomes the elastic agent of
``torch.distributed.run`` (torch's launcher API, what ``torchrun --standalone`` runs): it starts N
copies of the same ``niwt`` command with ``RANK``/``WORLD_SIZE`` set, and when one fails or is
killed it stops the others and reports the first failure in one line. A user's own ``torchrun
--nnodes ... --nproc-per-node ... -m niwt.cli finetune ...`` skips this module (the world comes from
torchrun's environment) and trains the same way.

No process outlives the stage: a failed rank stops the others (``max_restarts`` 0), a Ctrl-C or a
SIGTERM to this process stops every rank, and a rank whose launcher dies (``kill -9``) stops itself
(:func:`niwt.cli._stop_with_parent`).
"""

from __future__ import annotations

import os
import signal
import sys
import uuid

# Execution only: these stages run data-parallel; every other stage ignores NIWT_NPROC.
DISTRIBUTED_STAGES = ("finetune", "finetune_validation")
# Exit status of a rank that stopped because another rank is gone (EX_TEMPFAIL).
PEER_LOST = 75
# Seconds a stopped rank gets to exit after SIGTERM before it is killed.
SHUTDOWN_S = 10


class LaunchFailed(Exception):
    """A rank failed; ``exitcode`` is the failed rank's status (the stage's own 2 for bad input)."""

    def __init__(self, message: str, exitcode: int) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def threads_per_rank(nproc: int) -> int:
    """torch threads of each rank: the CPUs shared out (torchrun's default is 1, too few for CPU training)."""
    return max(1, (os.cpu_count() or 1) // nproc)


def check_devices(rt) -> None:
    """On CUDA each rank takes one GPU: asking for more ranks than GPUs is one clear error, before any
    process starts (NCCL would fail later, once per rank)."""
    import torch

    from niwt.errors import ParamsError

    cuda = rt.device == "cuda" or (rt.device == "auto" and torch.cuda.is_available())
    if cuda and rt.nproc > torch.cuda.device_count():
        raise ParamsError(f"NIWT_NPROC (or --nproc) is {rt.nproc}, but this machine has {torch.cuda.device_count()} "
                          "GPU(s): one process per GPU; for more, use several nodes (torchrun --nnodes)")


def check_batch(batch_size: int, nproc: int) -> None:
    """Every rank needs at least one image of every global batch (``finetune.batch_size`` is the global
    batch): one clear error before any process starts."""
    from niwt.errors import ParamsError

    if batch_size < nproc:
        raise ParamsError(f"finetune.batch_size ({batch_size}) is the global batch, shared by NIWT_NPROC={nproc} "
                          "processes: it must be at least the number of processes")


class Terminated(KeyboardInterrupt):
    """SIGTERM in a rank (the launcher stopping it): unwinds like Ctrl-C, so temporaries are removed and
    the MLflow run is marked FAILED."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this process (a rank)."""
    def handler(signum, frame) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def run_ranks(argv: list[str], nproc: int) -> None:
    """Run ``niwt <argv>`` as ``nproc`` ranks of one process group on this node and wait for them all;
    raise :class:`LaunchFailed` when one fails (the others are stopped first)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, shutdown_timeout=SHUTDOWN_S)
    try:
        elastic_launch(config, sys.executable)("-m", "niwt.cli", *argv)
    except ChildFailedError as err:
        rank, failure = root_cause(err.failures)
        raise LaunchFailed(f"rank {rank} of {nproc} failed ({describe(failure.exitcode)}); every rank was stopped",
                           failure.exitcode if failure.exitcode > 0 else 1) from None
    except SignalException as err:  # Ctrl-C: rank 0 has said "interrupted" already
        said = "" if err.sigval == signal.SIGINT else f"stopped by {err.sigval.name}; every rank was stopped"
        raise LaunchFailed(said, 128 + int(err.sigval)) from None


def root_cause(failures: dict) -> tuple[int, object]:
    """The failure that stopped the run: not a rank that lost its peer (:data:`PEER_LOST`) or that the
    launcher stopped (SIGTERM), if there is one; then the earliest; then the lowest rank."""
    def key(item) -> tuple:
        rank, failure = item
        secondary = failure.exitcode in (PEER_LOST, -int(signal.SIGTERM))
        return secondary, failure.timestamp, rank
    return min(failures.items(), key=key)


def peer_lost(err: BaseException) -> bool:
    """Whether a rank's error is a collective that failed because another rank is gone (gloo's
    connection reset, NCCL's or the store's errors): the consequence, not the cause."""
    import torch.distributed as dist

    text = str(err)
    return isinstance(err, (dist.DistNetworkError, dist.DistStoreError)) or any(
        s in text for s in ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                            "Socket Timeout", "NCCL communicator was aborted"))


def describe(exitcode: int) -> str:
    """A rank's exit status in words (a negative one is the signal that ended it)."""
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"
