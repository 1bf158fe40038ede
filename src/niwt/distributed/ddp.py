"""Data-parallel fine-tuning: one process per device under ``torch.distributed.run`` (torchrun).

What a rank does differently from a single process, and nothing more:

- **Its share of every global batch** (:class:`RankSlices`): the global batches are drawn exactly as
  the single-process loader draws them (the same seeded ``RandomSampler``, the same generator), and
  rank ``r`` of ``w`` takes the r-th contiguous slice of each. With :func:`global_mean` scaling the
  loss, DDP's gradient average is then the gradient of the mean loss over the whole global batch:
  the same optimisation as one process with that batch (to float rounding), unlike
  ``DistributedSampler``, whose per-rank shuffles give other batches than the single-process run.
- **Random streams**: augmentations and dropout draw from a per-rank stream (seed + rank), so
  the ranks do not apply the same random crops to their different images.
- **BatchNorm is not synchronised** (no ``SyncBatchNorm``): each rank normalises with the
  statistics of its own slice, as torchvision's reference does without ``--sync-bn``; slices of
  32+ images estimate them well, and synchronising costs an all-reduce per BN layer per step. The
  running statistics follow rank 0 (DDP's ``broadcast_buffers``) and are broadcast again after every
  epoch (:func:`sync_buffers`), so every rank evaluates and saves the same network.
- **Evaluation** is sharded (rank ``r`` predicts images ``r::w``) and the predictions gathered.
- **Rank 0 alone writes** (checkpoints, history, resume state, stats, MLflow).

The process group comes from torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The one process that writes files and talks to MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched_world(environ: dict[str, str] | None = None) -> World:
    """The world torchrun started this process in (its ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``), else
    :data:`SINGLE`."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return SINGLE
    return World(int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"]))


def rank_device(device: torch.device, world: World) -> torch.device:
    """This rank's device: its own GPU (``cuda:LOCAL_RANK``) on CUDA, else ``device``."""
    if device.type != "cuda" or not world.distributed:
        return device
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


# How long a rank waits for the others at a collective before failing (a dead peer must not hang it).
TIMEOUT = datetime.timedelta(minutes=30)


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration (nothing to do for one process)."""
    import torch.distributed as dist

    if not world.distributed or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


class RankSlices(Sampler[list[int]]):
    """This rank's contiguous slice of each global batch of ``batches``; a last global batch with
    fewer images than ranks is left out (a rank with no image would stall the gradient all-reduce)."""

    def __init__(self, batches: BatchSampler, world: World) -> None:
        self.batches, self.world = batches, world
        self.sizes: list[int] = []  # global size of each batch yielded in the current pass

    def __iter__(self) -> Iterator[list[int]]:
        self.sizes = []
        w, r = self.world.size, self.world.rank
        for batch in self.batches:
            if len(batch) < w:
                continue
            self.sizes.append(len(batch))
            yield batch[r * len(batch) // w:(r + 1) * len(batch) // w]

    def __len__(self) -> int:
        n, b = len(self.batches.sampler), self.batches.batch_size  # type: ignore[arg-type]
        full, last = divmod(n, b)
        return full + (1 if last >= self.world.size else 0)


def global_mean(loss: torch.Tensor, local: int, global_size: int, world: World) -> torch.Tensor:
    """Rescale a rank's mean loss over its ``local`` images so that DDP's average over ranks is the
    mean over the ``global_size`` images of the global batch (slices may differ by one image)."""
    return loss * (local * world.size / global_size)


def reduce_sums(values: list[float], device: torch.device, world: World) -> list[float]:
    """Sum numbers over the ranks (the epoch's loss and accuracy counts)."""
    if not world.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so all hold one network."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, 0)


def gather_arrays(arrays: tuple[np.ndarray, ...], world: World) -> tuple[np.ndarray, ...]:
    """Every rank's arrays, concatenated in rank order (small: predictions and labels)."""
    if not world.distributed:
        return arrays
    import torch.distributed as dist

    parts: list = [None] * world.size
    dist.all_gather_object(parts, arrays)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(arrays)))


def gather_objects(obj: object, world: World) -> list:
    """Every rank's ``obj`` in rank order (random states for the resume file)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    parts: list = [None] * world.size
    dist.all_gather_object(parts, obj)
    return parts


def wrap(model: torch.nn.Module, device: torch.device, world: World) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (built after the phase froze what it freezes: DDP
    all-reduces only what requires a gradient at construction)."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def seed_rank(seed: int, world: World) -> None:
    """A per-rank random stream for augmentations and dropout (rank 0 keeps the single-process one)."""
    if world.rank:
        torch.manual_seed(seed + 1_000_003 * world.rank)


def worker_init(world: World):
    """A DataLoader ``worker_init_fn`` giving each rank's loader workers their own random streams
    (their seeds come from the loader's generator, which every rank shares); None for one process."""
    import functools

    return functools.partial(_reseed_worker, world.rank) if world.rank else None


def _reseed_worker(rank: int, worker_id: int) -> None:
    import random

    seed = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rank_log(stage: str, world: World):
    """A stage's progress printer: rank 0 speaks for every rank (the others print nothing)."""
    def log(message: str) -> None:
        if world.main:
            print(f"[{stage}] {message}", flush=True)
    return log
