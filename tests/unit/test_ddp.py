"""Data-parallel training (:mod:`niwt.distributed.ddp`): exact on a tiny hand-made model.

A network without dropout or batch norm, fed feature vectors (no augmentation): then two gloo
processes, each with its slice of every global batch, must train the very network one process
trains with the whole batch (to float rounding), because the global batches are the same ones and
the loss scaling makes DDP's averaged gradient the global batch's mean.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from niwt.data.images import make_loader
from niwt.distributed.ddp import SINGLE, RankSlices, World, global_mean, launched_world, process_group
from niwt.models.finetuning import Resume, train_phases
from niwt.models.networks import NiwtNet
from niwt.params import FinetuneParams

N, DIM, CLASSES = 45, 6, 3  # 45 images, batch 8: a last global batch of 5, sliced 2 + 3


class Vectors(torch.utils.data.Dataset):
    """(vector, label, index) batches, as the decoded-image cache serves them."""

    def __init__(self, x: torch.Tensor, y: np.ndarray) -> None:
        self.x, self.y = x, torch.as_tensor(y)

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, idx: list[int]):
        return self.x[idx], self.y[idx], torch.as_tensor(idx)


class VectorSource:
    """An ImageSource whose 'images' are fixed vectors (no transform, no randomness)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def dataset(self, paths: Sequence[str], labels, transform, image_size: int, train: bool):
        return Vectors(self.x[[int(p) for p in paths]], labels)


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, DIM, generator=gen)
    y = torch.randint(0, CLASSES, (N,), generator=gen).numpy()
    return x, y


def _model() -> NiwtNet:
    torch.manual_seed(1)
    return NiwtNet(nn.Sequential(nn.Linear(DIM, 16), nn.ReLU()), nn.Linear(16, CLASSES), in_features=DIM)


class Killed(Exception):
    """Stands for a kill after an epoch's log line, before its state is saved."""


def _train(world: World, resume: Path | None = None, stop_at: str = "") -> tuple[dict, list[dict]]:
    x, y = _data()
    source, paths = VectorSource(x), [str(i) for i in range(N)]
    train = make_loader(paths, y, 8, train=True, batch_size=8, seed=3, cache=source, world=world)
    val = make_loader(paths, y, 8, train=False, batch_size=8, cache=source, world=world)
    f = FinetuneParams(mode="full", head_epochs=1, epochs=3, batch_size=8, lr=0.05, lr_full=0.05)
    model = _model()

    def log(message: str) -> None:
        if stop_at and message.startswith(stop_at):
            raise Killed(message)

    _, history = train_phases(model, f, train, val, torch.device("cpu"), world=world, log=log,
                              resume=Resume(resume, "k") if resume else None)
    return {k: v.clone() for k, v in model.state_dict().items()}, history


def _rank(rank: int, port: int, out: str, resume: str | None, stop_at: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    world = launched_world()
    with process_group(world, torch.device("cpu")):
        try:
            state, history = _train(world, Path(resume) if resume else None, stop_at)
        except Killed:
            return
    torch.save({"state": state, "history": history}, f"{out}.{rank}")


def _two_ranks(tmp_path: Path, resume: Path | None = None, stop_at: str = "") -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    tmp_path.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(port, out, str(resume) if resume else None, stop_at), nprocs=2,
                       start_method="spawn", join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2) if Path(f"{out}.{r}").exists()]


def test_rank_slices_cover_the_single_process_batches_in_order() -> None:
    gen = torch.Generator().manual_seed(5)
    single = list(torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(11), generator=gen), 4, False))
    ranks = []
    for r in range(3):
        gen = torch.Generator().manual_seed(5)
        ranks.append(list(RankSlices(torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(range(11), generator=gen), 4, False), World(r, r, 3))))
    # batches of 4, 4, 3: each split into 3 contiguous slices; concatenated they are the batch
    assert [sum((ranks[r][i] for r in range(3)), []) for i in range(3)] == single
    assert [len(ranks[r][0]) for r in range(3)] == [1, 1, 2]
    assert len(RankSlices(torch.utils.data.BatchSampler(range(11), 4, False), World(0, 0, 3))) == 3
    # a last global batch with fewer images than ranks is left out (a rank with none would stall)
    assert len(RankSlices(torch.utils.data.BatchSampler(range(9), 4, False), World(0, 0, 3))) == 2
    assert len(list(RankSlices(torch.utils.data.BatchSampler(range(9), 4, False), World(2, 2, 3)))) == 2


def test_global_mean_weights_unequal_slices_by_their_size() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    world = World(0, 0, 2)
    # rank 0 holds 2 images, rank 1 holds 3: DDP averages the two scaled means
    a = global_mean(losses[:2].mean(), 2, 5, world)
    b = global_mean(losses[2:].mean(), 3, 5, World(1, 1, 2))
    assert torch.isclose((a + b) / 2, losses.mean())


def test_eval_loader_shares_images_among_ranks() -> None:
    x, y = _data()
    paths = [str(i) for i in range(N)]
    seen = [torch.cat([i for _, _, i in make_loader(paths, y, 8, train=False, batch_size=8, cache=VectorSource(x),
                                                     world=World(r, r, 2))]) for r in range(2)]
    # each rank's loader indexes its own share; together they read every image once
    assert len(seen[0]) + len(seen[1]) == N and len(seen[0]) == (N + 1) // 2


def _evaluate_two(world: World) -> dict[str, float]:
    from niwt.models.training import evaluate

    x, y = _data()
    loader = make_loader(["0", "1"], y[:2], 8, train=False, batch_size=8, cache=VectorSource(x), world=world)
    return evaluate(_model(), loader, torch.device("cpu"), world=world)


def _rank_eval(rank: int, port: int, out: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "3"})
    world = launched_world()
    with process_group(world, torch.device("cpu")):
        torch.save(_evaluate_two(world), f"{out}.{rank}")


@pytest.mark.slow
def test_evaluation_over_more_ranks_than_images_is_the_single_process_one(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_eval, args=(port, str(tmp_path / "acc")), nprocs=3, start_method="spawn", join=True)
    single = _evaluate_two(SINGLE)
    # rank 2 of 3 has neither of the 2 images: it still joins the gather, and every rank gets the full numbers
    assert [torch.load(tmp_path / f"acc.{r}", weights_only=False) for r in range(3)] == [single] * 3


@pytest.mark.slow
def test_two_processes_train_the_single_process_network_and_resume_to_it(tmp_path: Path) -> None:
    single, history = _train(SINGLE)
    unbroken = _two_ranks(tmp_path / "a")
    for rank in unbroken:  # every rank holds the same network, the one a single process trains
        for k, v in single.items():
            torch.testing.assert_close(rank["state"][k], v, rtol=1e-5, atol=1e-6)
        assert [h["phase"] for h in rank["history"]] == [h["phase"] for h in history]
        np.testing.assert_allclose([h["train_loss"] for h in rank["history"]], [h["train_loss"] for h in history],
                                   rtol=1e-5)
        assert [h["train_acc"] for h in rank["history"]] == [h["train_acc"] for h in history]
        assert [h["val_acc"] for h in rank["history"]] == [h["val_acc"] for h in history]
    # killed after an epoch's log line, before its state was saved; the rerun resumes to the same network
    resume = tmp_path / "b" / "run.resume"
    assert _two_ranks(tmp_path / "b", resume, stop_at="full epoch 2/3") == []  # killed before saving epoch 2
    state = torch.load(resume, weights_only=False)
    assert (state["phase_idx"], state["epoch"], len(state["rng_ranks"])) == (1, 1, 2)
    resumed = _two_ranks(tmp_path / "b", resume)
    for a, b in zip(unbroken, resumed, strict=True):
        assert a["history"] == b["history"]
        for k, v in a["state"].items():
            torch.testing.assert_close(b["state"][k], v, rtol=0, atol=0)
