"""Independent jobs on a Dask cluster (``NIWT_RUNNER=dask``): extraction shards, validation settings,
injection methods.

Where jobs run is an execution setting, never a param, so it must not change a number: every task
runs with the parent's torch thread count (a Dask worker starts with ``OMP_NUM_THREADS=1``, and a
matmul summed by another number of threads differs in the last bits), and results come back in
job order, whatever order the workers finish in. Workers must see the same filesystem as the
parent (checkpoints, images, the decoded-image cache), as on a shared-disk cluster; a worker's
working directory is its own, so what a job names by path is absolute (:func:`absolute`,
:func:`absolute_pool`).

``distributed`` is imported only when a cluster is asked for: a local run never needs it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from tqdm.auto import tqdm

from niwt.io.project import resolve_root
from niwt.params import InjectParams

if TYPE_CHECKING:
    from distributed import Client

R = TypeVar("R")

_RUN_CACHES: collections.OrderedDict[str, dict] = collections.OrderedDict()


@contextlib.contextmanager
def dask_client(address: str = "", workers: int = 2) -> Iterator[Client]:
    """A Dask client of the scheduler at ``address``, or of a LocalCluster of ``workers``
    processes running one task at a time (closed on exit; a task's torch threads: :func:`map_jobs`)."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        target = address or stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1,
                                                             processes=True, dashboard_address=None))
        yield stack.enter_context(Client(target))


@contextlib.contextmanager
def dask_executor(address: str = "", workers: int = 2) -> Iterator[concurrent.futures.Executor]:
    """A ``concurrent.futures`` executor on Dask (see :func:`dask_client`), for runners written
    against any executor (extraction's)."""
    with dask_client(address, workers) as client:
        yield client.get_executor()


def map_jobs(client: Client, fn: Callable[..., R], jobs: Sequence[Any], shared: Sequence[Any] = (),
             progress: bool = False, desc: str = "jobs") -> list[R]:
    """``fn(job, *shared)`` for every job on the workers of ``client``; the results in job order.

    ``shared`` (a network, the tables, a map: what every job reads) goes to each worker once
    (scattered, broadcast), not once per job. ``fn`` and the jobs must pickle (a module-level
    function, dataclasses). Each task runs with this process's torch thread count, so its sums
    are those of a local run. A failed job raises the worker's exception, as its own type, and
    the other jobs are cancelled.
    """
    from distributed import as_completed

    threads = torch.get_num_threads()
    refs = client.scatter(list(shared), broadcast=True, hash=False) if shared else []
    name = getattr(fn, "__name__", "job").lstrip("_")
    futures = [client.submit(_call, fn, threads, job, *refs, key=f"{name}-{uuid.uuid4().hex}") for job in jobs]
    try:
        with tqdm(total=len(futures), desc=desc, unit="job", disable=not progress) as bar:
            for future in as_completed(futures):
                future.result()  # the first failure, as soon as it happens
                bar.update()
        return [future.result() for future in futures]
    finally:
        client.cancel([*futures, *refs])


def _call(fn: Callable[..., R], threads: int, job: Any, *shared: Any) -> R:
    """Run one job on a worker with the parent's torch thread count (the same reduction order)."""
    torch.set_num_threads(threads)
    return fn(job, *shared)


def run_cache(token: str, keep: int = 2) -> dict:
    """This process's cache for the run ``token`` (a fresh id per stage run): what the jobs of a
    run that land on one worker share (pool activations, a head Jacobian, features), filled by the
    first job that needs an entry, as a local run fills its one cache. Only the last ``keep`` runs'
    caches stay, so a long-lived worker does not hold every past run."""
    if token in _RUN_CACHES:
        _RUN_CACHES.move_to_end(token)
    else:
        _RUN_CACHES[token] = {}
        while len(_RUN_CACHES) > keep:
            _RUN_CACHES.popitem(last=False)
    return _RUN_CACHES[token]


def absolute(path: Path | None) -> Path | None:
    """``path`` as a worker in another working directory must be given it: absolute (None stays None)."""
    return None if path is None else Path(path).absolute()


def absolute_pool(cfg: InjectParams) -> InjectParams:
    """``cfg`` with an ``inject.pool`` folder as its absolute path: a relative one is resolved under
    the project holding the working directory, which on a worker is another one. The folder's
    images, and so every number, are the same."""
    if cfg.pool in ("train", "noise"):
        return cfg
    return dataclasses.replace(cfg, pool=str(resolve_root(cfg.pool, Path.cwd())))
