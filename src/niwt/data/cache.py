"""The decoded-image cache: every image of the split table decoded once, stored as uint8 arrays.

Decoding a JPEG costs milliseconds (about 12 ms for a 1024x768 photo on one core); every stage
after ``prepare`` reads the same images again (each fine-tune epoch, extraction, evaluation, the
injection pool, explanations). The cache decodes each image once, at the size the model needs:

* ``image_size < 128`` (the synthetic default): exactly ``Resize((s, s))`` of the decoded image,
  what the loader's transforms do first. The transforms then see the same pixels, so every tensor,
  and every number of the pipeline, is the same as reading the files.
* ``image_size >= 128``: the shorter side resized to ``int(s * 256 / 224)`` (the evaluation
  resize), then the centre square of that side; JPEGs decode at a reduced size first (PIL
  ``draft``, never below the target). Evaluation (resize + centre crop) sees the same region as
  from the file; training's ``RandomResizedCrop`` draws its crops from the centre square, and the
  pixels differ from the file path by the reduced-size decoding (a small fraction of a grey level
  on average), so a cached run at 224 px is close to, not bit-identical with, one without.

Layout of the cache directory: ``shard-NNNNN.npy`` files, fixed-shape ``(n, H, W, 3)`` uint8
arrays (memory-mapped when read: random access, nothing decoded), in the row order of
``splits.parquet``, and ``index.json`` (format version, image size, stored shape, shard list,
the SHA-256 of the split table it was built from). A disabled cache is a directory holding only
an ``index.json`` with ``"enabled": false``; readers then decode the files as before.

The build is parallel over shards (a process pool), resumable (each finished shard is written
atomically into ``<out>.partial/`` and skipped by a rerun made for the same table and size), and
atomic overall (the complete directory replaces ``<out>`` in one rename).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from niwt.data.images import can_fork_workers, read_rgb
from niwt.data.tables import read_splits
from niwt.errors import InputError
from niwt.io.atomic import atomic_path, write_json

VERSION = 1
INDEX = "index.json"
SHARD_IMAGES = 1024  # images per shard: the unit of parallelism and of resumption
SMALL = 128  # below this size the loader resizes to (s, s) and the cache stores exactly that


class CacheError(InputError):
    """A cache directory that does not fit its inputs (another split table, another image size,
    a missing or damaged file): the message names the file and says to rerun the cache stage."""


def stored_size(image_size: int) -> int:
    """Side of the stored square images for a model input of ``image_size`` pixels."""
    return image_size if image_size < SMALL else int(image_size * 256 / 224)


def decode(path: str, image_size: int) -> np.ndarray:
    """One image as the cache stores it: ``(H, W, 3)`` uint8 (see the module docstring)."""
    side = stored_size(image_size)
    if image_size < SMALL:  # exactly the loader's first transform: same pixels as reading the file
        return np.asarray(T.Resize((side, side))(read_rgb(path)))
    image = read_rgb(path, draft=(side, side))
    return np.asarray(T.CenterCrop(side)(T.Resize(side)(image)))


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.npy"


def splits_digest(splits_file: Path) -> str:
    return hashlib.sha256(Path(splits_file).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ShardJob:
    index: int
    paths: tuple[str, ...]
    image_size: int
    directory: str


def build_shard(job: ShardJob) -> str:
    """Decode one shard's images into ``<directory>/shard-NNNNN.npy``, written atomically; returns
    its name. Idempotent: an existing shard is kept."""
    target = Path(job.directory) / shard_file(job.index)
    if target.is_file():
        return target.name
    side = stored_size(job.image_size)
    with atomic_path(target) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(job.paths), side, side, 3))
        for i, path in enumerate(job.paths):
            arr[i] = decode(path, job.image_size)
        arr.flush()
        del arr
    return target.name


def _pool_size(workers: int) -> int:
    """Processes for the build: ``workers`` (the NIWT_WORKERS execution setting), 0 = all cores; one
    (in-process) inside a daemonic process, which may not start children."""
    if not can_fork_workers():
        return 1
    if workers > 0:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run_jobs(todo: list[ShardJob], processes: int, progress: bool,
              on_shard: Callable[[str], None] | None) -> None:
    with tqdm(total=len(todo), desc="cache shards", unit="shard", disable=not progress) as bar:
        if processes <= 1 or len(todo) <= 1:
            for job in todo:
                name = build_shard(job)
                bar.update()
                if on_shard is not None:
                    on_shard(name)
            return
        # fork: the workers only decode with PIL and numpy; no interpreter start-up per worker
        ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        with concurrent.futures.ProcessPoolExecutor(min(processes, len(todo)), mp_context=ctx) as pool:
            for future in concurrent.futures.as_completed([pool.submit(build_shard, j) for j in todo]):
                name = future.result()  # a failed shard fails the build, with the worker's error
                bar.update()
                if on_shard is not None:
                    on_shard(name)


def _stamp(path: Path) -> object:
    """What a ``.partial`` build was started for, or None when unknown (missing or unreadable stamp)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_cache(splits_file: Path, out: Path, image_size: int, *, workers: int = 0, progress: bool = True,
                shard_images: int = SHARD_IMAGES, on_shard: Callable[[str], None] | None = None) -> dict:
    """Build the cache of every image of ``splits_file`` into ``out``; returns its numbers.

    Args:
        workers: build processes (0: all cores; 1: in this process).
        on_shard: called with each shard's name once written (progress, tests).
    """
    start = time.perf_counter()
    splits_file, out = Path(splits_file), Path(out)
    paths = read_splits(splits_file).path
    side = stored_size(image_size)
    digest = splits_digest(splits_file)
    partial = out.parent / (out.name + ".partial")
    stamp = partial / "_building.json"
    identity = {"version": VERSION, "image_size": image_size, "shard_images": shard_images, "splits_sha256": digest}
    if partial.exists() and _stamp(stamp) != identity:
        shutil.rmtree(partial)  # made for another table or size: nothing to reuse
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob(".*.tmp"):  # a shard write cut off by a kill
        shutil.rmtree(stale, ignore_errors=True)
    write_json(stamp, identity)  # atomic: a kill never leaves half a stamp
    jobs = [ShardJob(k, tuple(paths[s:s + shard_images]), image_size, str(partial))
            for k, s in enumerate(range(0, len(paths), shard_images))]
    todo = [j for j in jobs if not (partial / shard_file(j.index)).is_file()]
    _run_jobs(todo, _pool_size(workers), progress, on_shard)
    index = {**identity, "enabled": True, "n": len(paths), "shape": [len(paths), side, side, 3],
             "dtype": "uint8", "shards": [shard_file(j.index) for j in jobs]}
    write_json(partial / INDEX, index)
    stamp.unlink()
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"enabled": True, "n_images": len(paths), "image_side": side, "size_bytes": size,
            "build_seconds": seconds, "images_per_s": len(paths) / seconds if seconds > 0 else 0.0,
            "shards": len(jobs), "shards_built": len(todo), "shards_reused": len(jobs) - len(todo)}


def write_disabled(splits_file: Path, out: Path) -> dict:
    """The output of a disabled cache: a directory with an index that says so."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_json(tmp / INDEX, {"version": VERSION, "enabled": False, "splits_sha256": splits_digest(splits_file)})
    return {"enabled": False, "n_images": 0, "size_bytes": 0, "build_seconds": 0.0, "images_per_s": 0.0,
            "shards": 0, "shards_built": 0, "shards_reused": 0}


def open_cache(directory: Path | None, splits_file: Path, image_size: int) -> ImageCache | None:
    """The cache in ``directory`` checked against ``splits_file`` and the model's ``image_size``;
    None when there is none to use (no directory given, or a disabled cache).

    Every mismatch is one :class:`CacheError` naming the file, raised before any work.
    """
    if directory is None:
        return None
    directory = Path(directory)
    index_file = directory / INDEX
    rerun = "; rerun the cache stage (dvc repro cache, or niwt cache)"
    try:
        index = json.loads(index_file.read_text())
    except FileNotFoundError as err:
        raise CacheError(f"{index_file}: missing: not a decoded-image cache{rerun}") from err
    except (OSError, ValueError) as err:
        raise CacheError(f"{index_file}: unreadable ({err}){rerun}") from err
    if not isinstance(index, dict) or index.get("version") != VERSION:
        raise CacheError(f"{index_file}: not a cache index of format version {VERSION}{rerun}")
    if index.get("splits_sha256") != splits_digest(splits_file):
        raise CacheError(f"{index_file}: built from another split table than {splits_file} (its SHA-256 "
                         f"differs){rerun}")
    if not index.get("enabled"):
        return None
    if index.get("image_size") != image_size:
        raise CacheError(f"{index_file}: built for image_size {index.get('image_size')}, the model takes "
                         f"{image_size}{rerun}")
    paths = read_splits(splits_file).path
    side = stored_size(image_size)
    if index.get("n") != len(paths) or index.get("shape") != [len(paths), side, side, 3]:
        raise CacheError(f"{index_file}: shape {index.get('shape')} does not fit {len(paths)} images of "
                         f"{side}x{side}{rerun}")
    shard_images, names = index.get("shard_images"), index.get("shards")
    if not isinstance(shard_images, int) or shard_images < 1 or not isinstance(names, list):
        raise CacheError(f"{index_file}: no valid 'shard_images' / 'shards' entries{rerun}")
    shards = [directory / str(name) for name in names]
    if len(shards) != -(-len(paths) // shard_images):
        raise CacheError(f"{index_file}: {len(shards)} shards for {len(paths)} images{rerun}")
    for k, shard in enumerate(shards):
        rows = min(shard_images, len(paths) - k * shard_images)
        try:
            arr = np.load(shard, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(f"{shard}: missing or damaged ({err}){rerun}") from err
        if arr.shape != (rows, side, side, 3) or arr.dtype != np.uint8:
            raise CacheError(f"{shard}: holds {arr.shape} {arr.dtype}, expected ({rows}, {side}, {side}, 3) "
                             f"uint8{rerun}")
    return ImageCache(tuple(str(s) for s in shards), shard_images, image_size, {p: i for i, p in enumerate(paths)})


class ImageCache:
    """Random access to the cached images (memory-mapped shards, opened lazily in each process)."""

    def __init__(self, shards: tuple[str, ...], shard_images: int, image_size: int, row_of: dict[str, int]) -> None:
        self.shards, self.shard_images, self.image_size, self.row_of = shards, shard_images, image_size, row_of
        self._arrays: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:  # loader workers reopen the memory maps; never pickle the pixels
        return {**self.__dict__, "_arrays": None}

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        missing = [p for p in paths if p not in self.row_of]
        if missing:
            raise CacheError(f"{len(missing)} images are not in the decoded-image cache ({self.shards[0]} ...), "
                             f"e.g. {missing[0]}; rerun the cache stage")
        return np.array([self.row_of[p] for p in paths], dtype=np.int64)

    def image(self, row: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 view of the cached image in row ``row`` of the split table."""
        if self._arrays is None:
            self._arrays = [np.load(s, mmap_mode="r") for s in self.shards]
        shard, offset = divmod(int(row), self.shard_images)
        return self._arrays[shard][offset]

    def dataset(self, paths: Sequence[str], labels: np.ndarray, transform: T.Compose, image_size: int,
                train: bool) -> CachedImages:
        if image_size != self.image_size:
            raise CacheError(f"{self.shards[0]}: cache built for image_size {self.image_size}, asked for "
                             f"{image_size}; rerun the cache stage")
        return CachedImages(self, self.rows(paths), labels, transform, image_size, train)


class CachedImages(Dataset):
    """``ImageTable`` on the cache: the same (image tensor, label, index) items, fetched a batch at a
    time (``__getitems__``; the loader's collate function passes the batch through).

    The loader's own PIL transforms before ``ToTensor`` (training: random crop and flip, with the
    same random draws in the same order as reading the files; evaluation: a resize that is the
    identity on a cached image, and the centre crop, done as array slicing) run per image; then
    ``ToTensor`` and ``Normalize`` run on the whole uint8 batch at once, with the same elementwise
    float operations, so the tensors are identical to the file path's.
    """

    def __init__(self, cache: ImageCache, rows: np.ndarray, labels: np.ndarray, transform: T.Compose,
                 image_size: int, train: bool) -> None:
        self.cache, self.rows, self.transform, self.image_size, self.train = cache, rows, transform, image_size, train
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        steps = list(transform.transforms)
        cut = next(i for i, t in enumerate(steps) if isinstance(t, T.ToTensor))
        if not (len(steps) == cut + 2 and isinstance(steps[cut + 1], T.Normalize)):
            raise ValueError(f"expected the transforms to end with ToTensor, Normalize, got {steps}")
        self.geometric = T.Compose(steps[:cut])
        mean = torch.as_tensor(steps[cut + 1].mean, dtype=torch.float32).view(-1, 1)
        std = torch.as_tensor(steps[cut + 1].std, dtype=torch.float32).view(-1, 1)
        # ToTensor then Normalize of one uint8 value v in channel c is ((v / 255) - mean_c) / std_c, in
        # float32, one rounding per operation: the same for every pixel, so a (3, 256) table computed
        # with the very same operations gives bit-identical tensors in one pass over the batch.
        self.table = torch.arange(256, dtype=torch.float32).div(255).expand(len(mean), 256).sub(mean).div(std).numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform(Image.fromarray(self.cache.image(self.rows[i]))), self.labels[i], i

    def _pixels(self, i: int) -> np.ndarray:
        """``(s, s, 3)`` uint8 of item ``i`` after the transforms before ``ToTensor``."""
        if self.train:
            return np.asarray(self.geometric(Image.fromarray(self.cache.image(self.rows[i]))))
        raw = self.cache.image(self.rows[i])  # a memory-mapped view: only the crop below is read
        side, s = raw.shape[0], self.image_size
        top = int(round((side - s) / 2.0))  # torchvision's CenterCrop (the resize is the identity here)
        return raw[top:top + s, top:top + s]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        s = self.image_size
        images = np.empty((len(indices), 3, s, s), dtype=np.float32)
        for j, i in enumerate(indices):  # per image: no (B, s, s, 3) staging copy of the batch
            pixels = self._pixels(i)
            for c in range(3):  # ToTensor (HWC -> CHW, / 255) and Normalize, as one table lookup
                np.take(self.table[c], pixels[..., c], out=images[j, c], mode="clip")
        return torch.from_numpy(images), self.labels[idx], idx
