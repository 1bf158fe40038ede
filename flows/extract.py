"""Importance-extraction shards as Prefect tasks on a Dask cluster (``extract.runner: dask``).

``niwt extract`` plans the shards and calls :func:`dask_runner`'s result with them; each
missing shard becomes a task on a ``DaskTaskRunner``: a ``LocalCluster`` with
``extract.dask_workers`` workers when ``extract.dask_address`` is empty, otherwise the existing
scheduler at that address (``tcp://host:8786``). Workers must see the same filesystem (the
checkpoint, the images and the ``.partial`` directory), as on a shared-disk cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from niwt.io.parquet import shard_name
from niwt.stages.extract import ShardJob, compute_shard


@task(cache_policy=NO_CACHE, task_run_name="shard-{job.index}", retries=1)
def extract_shard(job: ShardJob) -> str:
    """Compute one shard on a worker (idempotent: an existing shard is kept)."""
    return compute_shard(job)


def dask_runner(address: str = "", workers: int = 2) -> Callable[[list[ShardJob]], int]:
    """A shard runner for ``niwt.stages.extract.run`` that fans out over Dask."""
    from prefect_dask import DaskTaskRunner

    if address:
        runner = DaskTaskRunner(address=address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                                "processes": True, "dashboard_address": None})

    @flow(name="niwt-extract-shards", task_runner=runner)
    def extract_shards(jobs: list[ShardJob]) -> list[str]:
        futures = [extract_shard.submit(job) for job in jobs]
        return [f.result() for f in futures]

    def run(jobs: list[ShardJob]) -> int:
        todo = [j for j in jobs if not (Path(j.partial_dir) / shard_name(j.index)).is_file()]
        if todo:
            extract_shards(todo)
        return len(todo)

    return run
