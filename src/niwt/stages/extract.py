"""``extract``: neuron importances of every seen training image, as a sharded Parquet dataset.

The image list (train + val, ordered by image id) is cut into fixed shards. Each shard is
computed independently (one forward + one backward per batch) and written atomically into
``<out>.partial/``; a rerun after an interruption skips the shards already there, as long as the
extraction key (checkpoint bytes + params) matches. When all shards exist the directory is renamed
onto ``<out>`` in one step, so DVC never sees a partial output.

Shards are plain function calls (:func:`compute_shard`), so they can run in-process or on any
``concurrent.futures`` executor (``NIWT_RUNNER=dask``: a Dask cluster, see
:func:`niwt.distributed.dask.dask_executor`). Where shards run is an execution setting, not a
param: it never changes a number beyond the last float bits, so it never makes DVC rerun the stage.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from niwt.data.cache import open_cache
from niwt.data.images import check_images_exist
from niwt.data.tables import read_tables
from niwt.distributed.dask import dask_executor
from niwt.importance.capture import LayerCapture, prepare_for_extraction
from niwt.importance.degenerate import check_layer, explain
from niwt.importance.extraction import ExtractSpec, importances_for
from niwt.io.parquet import importance_schema, shard_name, write_manifest, write_shard
from niwt.models.checkpoint import check_classes, load_checkpoint
from niwt.models.networks import importance_layer
from niwt.models.training import resolve_device
from niwt.params import Params, Runtime
from niwt.stages import StageResult


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to compute one shard (picklable, for Dask)."""

    index: int
    image_id: tuple[int, ...]
    path: tuple[str, ...]
    class_id: tuple[int, ...]
    split: tuple[str, ...]
    checkpoint: str
    partial_dir: str
    spec: ExtractSpec
    device: str
    meta: tuple[tuple[str, str], ...]
    cache: str = ""  # the decoded-image cache ("": decode the image files) and the split table it was built from
    splits_file: str = ""


@functools.lru_cache(maxsize=2)
def _cached_model(checkpoint: str, device: str, channels_last: bool, identity: tuple):
    """One model per worker process, prepared for extraction; ``identity`` (the job's file
    metadata, which holds a digest of the checkpoint bytes) keys the cache, so a retrained
    checkpoint at the same path is never served from a stale entry."""
    model, meta = load_checkpoint(checkpoint, resolve_device(device))
    return prepare_for_extraction(model, channels_last), meta


@functools.lru_cache(maxsize=2)
def _opened_cache(cache: str, splits_file: str, image_size: int, stamp: int):
    """The decoded-image cache, opened (and checked) once per worker process; ``stamp`` (the
    index's modification time) keys a rebuilt cache at the same path apart."""
    return open_cache(Path(cache), Path(splits_file), image_size)


def _cached_images(cache: str, splits_file: str, image_size: int):
    if not cache:
        return None
    return _opened_cache(cache, splits_file, image_size, (Path(cache) / "index.json").stat().st_mtime_ns)


def compute_shard(job: ShardJob, progress: Callable[[int], None] | None = None) -> str:
    """Compute and atomically write one shard; returns its file name. Idempotent."""
    target = Path(job.partial_dir) / shard_name(job.index)
    if target.is_file():
        return target.name
    model, meta = _cached_model(job.checkpoint, job.device, job.spec.channels_last, job.meta)
    cached = _cached_images(job.cache, job.splits_file, meta.image_size)
    values, targets = importances_for(model, job.path, np.array(job.class_id), meta.image_size, job.spec, cached,
                                      progress)
    schema = importance_schema(values.shape[1], dict(job.meta))
    write_shard(target, schema, np.array(job.image_id), np.array(job.class_id), list(job.split),
                targets, values)
    return target.name


def extraction_key(checkpoint: Path, p: Params, rt: Runtime) -> str:
    """Shards are only reused when made from the same checkpoint bytes, the params that shape the
    numbers and the settings that shape the shards or their last bits (batch, shard size, memory
    format); where they run (``runner``, Dask settings) does not count."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes())
    e = p.extract
    shaping = [e.pooling, e.target, rt.inference_batch("importances"), rt.shard_size, e.layer, rt.channels_last]
    digest.update(json.dumps(shaping).encode())
    return digest.hexdigest()


def plan(p: Params, rt: Runtime, data: Path, checkpoint: Path, out: Path,
         cache: Path | None = None) -> tuple[list[ShardJob], Path]:
    """Validate inputs and cut the work into shards; prepares ``<out>.partial``."""
    classes, splits = read_tables(data, domain=False)  # the domain vectors: not read, not a dep
    splits = splits.select("train", "val")
    check_images_exist(splits.path, splits.image_id, data / "splits.parquet")
    model, meta = load_checkpoint(checkpoint)
    check_classes(meta, classes.names[: classes.n_seen], checkpoint, exact=True, what="seen classes")
    images = open_cache(cache, data / "splits.parquet", meta.image_size)  # a mismatch fails before any work
    layer = importance_layer(model, meta.arch, p.extract.layer)  # auto: the architecture's layer
    LayerCapture(model, layer)  # unknown layer: fail before any work, listing valid ones
    verdict = check_layer(model, layer, meta.image_size, p.extract.pooling, p.extract.allow_degenerate)
    if verdict.degenerate:
        print(f"[extract] warning (extract.allow_degenerate: true): {explain(verdict)}", flush=True)
    partial = out.parent / (out.name + ".partial")
    key = extraction_key(checkpoint, p, rt)
    stamp = partial / "_extraction_key"
    if partial.exists() and (not stamp.is_file() or stamp.read_text() != key):
        shutil.rmtree(partial)  # made from another model or params: nothing to reuse
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob(".*.tmp"):  # a shard write cut off by a kill: never part of the output
        shutil.rmtree(stale, ignore_errors=True)
    stamp.write_text(key)
    order = np.argsort(splits.image_id, kind="stable")
    file_meta = (("layer", layer), ("pooling", p.extract.pooling), ("target", p.extract.target),
                 ("arch", meta.arch), ("extraction_key", key[:16]))
    spec = ExtractSpec.from_params(p.extract, rt, layer)
    jobs = []
    for index, start in enumerate(range(0, len(order), rt.shard_size)):
        sel = order[start:start + rt.shard_size]
        jobs.append(ShardJob(index, tuple(int(i) for i in splits.image_id[sel]),
                             tuple(splits.path[i] for i in sel), tuple(int(c) for c in splits.class_id[sel]),
                             tuple(str(s) for s in splits.split[sel]), str(Path(checkpoint).absolute()),
                             str(partial.absolute()), spec, rt.device, file_meta,  # absolute: a worker's cwd is its own
                             str(Path(cache).absolute()) if images is not None else "",
                             str((data / "splits.parquet").absolute())))
    return jobs, partial


def finish(jobs: list[ShardJob], partial: Path, out: Path) -> dict[str, int]:
    """Write the manifest and move the completed dataset onto ``out`` atomically."""
    missing = [shard_name(j.index) for j in jobs if not (partial / shard_name(j.index)).is_file()]
    if missing:
        raise RuntimeError(f"{partial}: shards still missing after extraction: {missing[:5]}")
    n_rows = sum(len(j.image_id) for j in jobs)
    meta = dict(jobs[0].meta) if jobs else {}
    write_manifest(partial, len(jobs), n_rows, meta)
    (partial / "_extraction_key").unlink(missing_ok=True)  # after the manifest: a failure before keeps the shards
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return {"n_images": n_rows, "n_shards": len(jobs)}


def _todo(jobs: list[ShardJob]) -> list[ShardJob]:
    return [j for j in jobs if not (Path(j.partial_dir) / shard_name(j.index)).is_file()]


def run_local(jobs: list[ShardJob], progress: bool = True) -> int:
    """Run missing shards in this process; returns how many were computed."""
    todo = _todo(jobs)
    done_before = sum(len(j.image_id) for j in jobs) - sum(len(j.image_id) for j in todo)
    total = sum(len(j.image_id) for j in jobs)
    with tqdm(total=total, initial=done_before, desc="extract", unit="img", disable=not progress,
              mininterval=1.0) as bar:
        for job in todo:
            compute_shard(job, progress=bar.update)
    return len(todo)


def executor_runner(executor: concurrent.futures.Executor, progress: bool = True) -> Callable[[list[ShardJob]], int]:
    """A shard runner that submits every missing shard to ``executor`` (a Dask client's, a process pool)."""
    def run(jobs: list[ShardJob]) -> int:
        todo = _todo(jobs)
        futures = [executor.submit(compute_shard, job) for job in todo]
        with tqdm(total=len(todo), desc="extract shards", unit="shard", disable=not progress) as bar:
            for future in concurrent.futures.as_completed(futures):
                future.result()  # a failed shard fails the stage, with the worker's error
                bar.update()
        return len(todo)
    return run


def run(p: Params, rt: Runtime, data: Path, model: Path, out: Path,
        runner: Callable[[list[ShardJob]], int] | None = None, cache: Path | None = None) -> StageResult:
    """Plan, compute missing shards (with ``runner``; default: ``rt.runner``), and finish."""
    torch.manual_seed(p.base.seed)
    jobs, partial = plan(p, rt, data, Path(model), Path(out), cache)
    if runner is not None:
        computed = runner(jobs)
    elif rt.runner == "dask":
        with dask_executor(rt.dask_address, rt.dask_workers) as executor:
            computed = executor_runner(executor, rt.progress)(jobs)
    else:
        computed = run_local(jobs, rt.progress)
    stats = finish(jobs, partial, Path(out))
    return StageResult({**stats, "shards_computed": computed, "shards_reused": len(jobs) - computed})
