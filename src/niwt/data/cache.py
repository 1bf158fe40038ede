"""The decoded-image cache: every image of the split table decoded once, stored as uint8 arrays.

Decoding a JPEG costs milliseconds (about 12 ms for a 1024x768 photo on one core); every stage
after ``prepare`` reads the same images again (each fine-tune epoch, extraction, evaluation, the
injection pool, explanations). The cache decodes each image once, at the size the model needs:

* ``image_size < 128`` (the synthetic default): exactly ``Resize((s, s))`` of the decoded image,
  what the loader's transforms do first. The transforms then see the same pixels, so every tensor,
  and every number of the pipeline, is the same as reading the files.
* ``image_size >= 128``: the whole image, aspect kept, its shorter side resized to
  ``int(s * 256 / 224)`` (the evaluation resize, 256 at 224 px), its longer side capped at
  ``MAX_ASPECT`` (2) times that (a wider image is stored smaller, whole: torchvision's
  ``Resize(max_size=...)``); JPEGs decode at a reduced size first (PIL ``draft``, never below the
  target). The index keeps each image's size in its file. Training draws ``RandomResizedCrop``'s
  box with the file's width and height (the same random draws as reading the file), maps it into
  the stored pixels and resizes it to ``s``: the crop region, as a fraction of the image, is
  distributed as from the file, only the resampling differs. Evaluation (resize + centre crop)
  cuts the same region as from the file, as an array slice (uncapped images: the stored image is
  the evaluation resize). Pixels differ from the file path by the reduced-size decoding and, for
  training, by resampling from the stored size, so a cached run at 224 px is close to, not
  bit-identical with, one without.

Layout of the cache directory: ``shard-NNNNN.npy`` files in the row order of ``splits.parquet``,
memory-mapped when read (random access, nothing decoded): below 128 px fixed-shape
``(n, s, s, 3)`` uint8 arrays; from 128 px flat uint8 arrays holding the images one after the
other (no padding), with ``shard-NNNNN.sizes.npy`` giving each image's offset, stored height and
width, and height and width in its file. ``index.json``: format version, layout, image size,
shard list, the SHA-256 of the split table it was built from and of every shard file (checked when
a stage opens the cache: a shard changed in place is an error even outside DVC; a file whose size,
modification time and inode match its last check is not hashed again, see
``<out>.verified.json``). A disabled cache is a directory
holding only an ``index.json`` with ``"enabled": false``; readers then decode the files as before.

The build is parallel over shards (a process pool), resumable (each finished shard is written
atomically into ``<out>.partial/`` and skipped by a rerun made for the same table and size), and
atomic overall (the complete directory replaces ``<out>`` in one rename).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
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
from torchvision.transforms import functional as F
from tqdm.auto import tqdm

from niwt.data.images import can_fork_workers, read_rgb, read_rgb_sized, read_size
from niwt.data.tables import read_splits
from niwt.errors import InputError
from niwt.io.atomic import atomic_path, free_space, write_json

VERSION = 3  # 3: the SHA-256 of every shard file in the index
INDEX = "index.json"
SHARD_IMAGES = 1024  # images per shard: the unit of parallelism and of resumption
SMALL = 128  # below this size the loader resizes to (s, s) and the cache stores exactly that
MAX_ASPECT = 2  # from SMALL: the stored long side is at most this many times the short side
SIZES = ("offset", "height", "width", "file_height", "file_width")  # columns of shard-NNNNN.sizes.npy


class CacheError(InputError):
    """A cache directory that does not fit its inputs (another split table, another image size,
    a missing or damaged file): the message names the file and says to rerun the cache stage."""


def stored_size(image_size: int) -> int:
    """Side of the stored square images below ``SMALL``; from it, the stored short side."""
    return image_size if image_size < SMALL else int(image_size * 256 / 224)


def resized_dims(width: int, height: int, short_side: int, max_long: int | None = None) -> tuple[int, int]:
    """``(width, height)`` after torchvision's ``Resize(short_side, max_size=max_long)``: the same
    integer rounding, so evaluation crops from the cache land on the file path's pixel grid."""
    short, long = min(width, height), max(width, height)
    new_short, new_long = short_side, int(short_side * long / short)
    if max_long is not None and new_long > max_long:
        new_short, new_long = int(max_long * new_short / new_long), max_long
    return (new_short, new_long) if width <= height else (new_long, new_short)


def stored_dims(width: int, height: int, image_size: int) -> tuple[int, int]:
    """``(width, height)`` of the stored image (from ``SMALL``) for an image of ``width x height`` in its file."""
    side = stored_size(image_size)
    return resized_dims(width, height, side, MAX_ASPECT * side)


def decode(path: str, image_size: int) -> np.ndarray:
    """One image as the cache stores it: ``(H, W, 3)`` uint8 (see the module docstring)."""
    side = stored_size(image_size)
    if image_size < SMALL:  # exactly the loader's first transform: same pixels as reading the file
        return np.asarray(T.Resize((side, side))(read_rgb(path)))
    image, (width, height) = read_rgb_sized(path, draft=(side, side))
    return np.asarray(image.resize(stored_dims(width, height, image_size), Image.BILINEAR))


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
    if job.image_size < SMALL:
        side = stored_size(job.image_size)
        with atomic_path(target) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(job.paths), side, side, 3))
            _reserve(tmp, target)
            for i, path in enumerate(job.paths):
                arr[i] = decode(path, job.image_size)
            arr.flush()
            del arr
        return target.name
    sizes = shard_sizes(job.paths, job.image_size)
    with atomic_path(sizes_file(target)) as tmp, open(tmp, "wb") as f:
        np.save(f, sizes)  # before the pixels: a shard whose pixels exist always has its sizes
    with atomic_path(target) as tmp:
        total = int(sizes[-1, 0] + sizes[-1, 1] * sizes[-1, 2] * 3) if len(sizes) else 0
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total,))
        _reserve(tmp, target)
        for (offset, h, w, _, _), path in zip(sizes, job.paths, strict=True):
            pixels = decode(path, job.image_size)
            if pixels.shape != (h, w, 3):
                raise CacheError(f"{path}: decoded to {pixels.shape}, its header says {(h, w, 3)}; it changed "
                                 "while the cache was built: rerun the cache stage")
            arr[offset:offset + h * w * 3] = pixels.reshape(-1)
        arr.flush()
        del arr
    return target.name


def _reserve(path: Path, target: Path) -> None:
    """Allocate every block of a new memory-mapped shard before writing pixels into it. The map is a
    sparse file: on a full disk, storing into it is a SIGBUS that kills the process without a word
    (rc 135; a ``BrokenProcessPool`` traceback with build processes). Allocated first, a full disk is
    ENOSPC here, naming the shard."""
    size = Path(path).stat().st_size
    if size == 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS):  # no preallocation there: write as before
            return
        raise OSError(err.errno, os.strerror(err.errno), str(target)) from None
    finally:
        os.close(fd)


def shard_sizes(paths: Sequence[str], image_size: int) -> np.ndarray:
    """``(n, 5)`` int64, the ``SIZES`` columns of a shard's images, from their headers alone."""
    rows, offset = [], 0
    for path in paths:
        file_w, file_h = read_size(path)
        w, h = stored_dims(file_w, file_h, image_size)
        rows.append((offset, h, w, file_h, file_w))
        offset += h * w * 3
    return np.array(rows, dtype=np.int64).reshape(-1, len(SIZES))


def sizes_file(shard: Path) -> Path:
    return shard.with_name(shard.name.removesuffix(".npy") + ".sizes.npy")


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
        try:
            with concurrent.futures.ProcessPoolExecutor(min(processes, len(todo)), mp_context=ctx) as pool:
                for future in concurrent.futures.as_completed([pool.submit(build_shard, j) for j in todo]):
                    name = future.result()  # a failed shard fails the build, with the worker's error
                    bar.update()
                    if on_shard is not None:
                        on_shard(name)
        except concurrent.futures.process.BrokenProcessPool:
            folder = todo[0].directory
            raise CacheError(f"{folder}: a cache build process died without a word (killed, or out of memory or "
                             f"disk: {free_space(folder)} there); the finished shards are kept: free memory or "
                             "space and rerun the cache stage") from None


def _stamp(path: Path) -> object:
    """What a ``.partial`` build was started for, or None when unknown (missing or unreadable stamp)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_cache(splits_file: Path, out: Path, image_size: int, *, workers: int = 0, progress: bool = True,
                shard_images: int = SHARD_IMAGES, on_shard: Callable[[str], None] | None = None,
                raw: str = "") -> dict:
    """Build the cache of every image of ``splits_file`` into ``out``; returns its numbers.

    Args:
        workers: build processes (0: all cores; 1: in this process).
        on_shard: called with each shard's name once written (progress, tests).
        raw: digest of the raw files' fingerprint: the shards of a killed build are reused only for the
            same files (an image rewritten at the same path changes it, not the split table).
    """
    start = time.perf_counter()
    splits_file, out = Path(splits_file), Path(out)
    paths = read_splits(splits_file).path
    side = stored_size(image_size)
    digest = splits_digest(splits_file)
    partial = out.parent / (out.name + ".partial")
    stamp = partial / "_building.json"
    identity = {"version": VERSION, "image_size": image_size, "shard_images": shard_images, "splits_sha256": digest}
    if partial.exists() and _stamp(stamp) != {**identity, "raw_sha256": raw}:
        shutil.rmtree(partial)  # made for another table, size or raw files: nothing to reuse
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob(".*.tmp"):  # a shard write cut off by a kill
        shutil.rmtree(stale, ignore_errors=True)
    # atomic: a kill never leaves half a stamp. The index below leaves the raw digest out: the shards'
    # pixels are the output, so touching the files without changing them reruns nothing after the cache
    write_json(stamp, {**identity, "raw_sha256": raw})
    jobs = [ShardJob(k, tuple(paths[s:s + shard_images]), image_size, str(partial))
            for k, s in enumerate(range(0, len(paths), shard_images))]
    todo = [j for j in jobs if not (partial / shard_file(j.index)).is_file()]
    _run_jobs(todo, _pool_size(workers), progress, on_shard)
    if image_size < SMALL:
        layout = {"layout": "square", "shape": [len(paths), side, side, 3]}
    else:
        layout = {"layout": "whole", "short_side": side, "max_long_side": MAX_ASPECT * side}
    files = sorted(f.name for f in partial.glob("shard-*.npy"))
    digests = {name: _sha256(partial / name) for name in files}
    index = {**identity, "enabled": True, "n": len(paths), **layout, "dtype": "uint8",
             "shards": [shard_file(j.index) for j in jobs], "sha256": digests}
    write_json(partial / INDEX, index)
    stamp.unlink()
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    _remember(out, _record(out, digests))  # just hashed: opened in place (no dvc checkout), it is not hashed again
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"enabled": True, "n_images": len(paths), "image_side": side, "size_bytes": size,
            "build_seconds": seconds, "images_per_s": len(paths) / seconds if seconds > 0 else 0.0,
            "shards": len(jobs), "shards_built": len(todo), "shards_reused": len(jobs) - len(todo)}


def write_disabled(splits_file: Path, out: Path, raw: str = "") -> dict:
    """The output of a disabled cache: a directory with an index that says so. It records ``raw`` (the
    raw files' fingerprint digest): the stages then decode the files themselves, so a rewritten image
    must change what they depend on."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_json(tmp / INDEX, {"version": VERSION, "enabled": False, "splits_sha256": splits_digest(splits_file),
                                 "raw_sha256": raw})
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
    try:
        index = json.loads(index_file.read_text())
    except FileNotFoundError as err:
        raise CacheError(f"{index_file}: missing: not a decoded-image cache{RERUN}") from err
    except (OSError, ValueError) as err:
        raise CacheError(f"{index_file}: unreadable ({err}){RERUN}") from err
    if not isinstance(index, dict) or index.get("version") != VERSION:
        raise CacheError(f"{index_file}: not a cache index of format version {VERSION}{RERUN}")
    if index.get("splits_sha256") != splits_digest(splits_file):
        raise CacheError(f"{index_file}: built from another split table than {splits_file} (its SHA-256 "
                         f"differs){RERUN}")
    if not index.get("enabled"):
        return None
    if index.get("image_size") != image_size:
        raise CacheError(f"{index_file}: built for image_size {index.get('image_size')}, the model takes "
                         f"{image_size}{RERUN}")
    paths = read_splits(splits_file).path
    side = stored_size(image_size)
    if image_size < SMALL:
        fits = index.get("layout") == "square" and index.get("shape") == [len(paths), side, side, 3]
        expected = f"{len(paths)} images of {side}x{side}"
    else:
        fits = (index.get("layout") == "whole" and index.get("short_side") == side
                and index.get("max_long_side") == MAX_ASPECT * side)
        expected = f"whole images of short side {side}"
    if index.get("n") != len(paths) or not fits:
        raise CacheError(f"{index_file}: layout {index.get('layout')} of {index.get('n')} images does not fit "
                         f"{expected}{RERUN}")
    shard_images, names = index.get("shard_images"), index.get("shards")
    if not isinstance(shard_images, int) or shard_images < 1 or not isinstance(names, list):
        raise CacheError(f"{index_file}: no valid 'shard_images' / 'shards' entries{RERUN}")
    shards = [directory / str(name) for name in names]
    if len(shards) != -(-len(paths) // shard_images):
        raise CacheError(f"{index_file}: {len(shards)} shards for {len(paths)} images{RERUN}")
    digests = index.get("sha256")
    expected_files = {s.name for s in shards} | ({sizes_file(s).name for s in shards} if image_size >= SMALL else set())
    if not isinstance(digests, dict) or set(digests) != expected_files:
        raise CacheError(f"{index_file}: no SHA-256 for every shard file{RERUN}")
    for k, shard in enumerate(shards):
        rows = min(shard_images, len(paths) - k * shard_images)
        if image_size < SMALL:
            _check_shard(shard, (rows, side, side, 3))
        else:
            _check_shard(shard, (_check_sizes(sizes_file(shard), rows),))
    _verify(directory, digests)
    return ImageCache(tuple(str(s) for s in shards), shard_images, image_size, {p: i for i, p in enumerate(paths)})


RERUN = "; rerun the cache stage (dvc repro cache, or niwt cache)"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _verified_file(directory: Path) -> Path:
    """Beside the cache (not in it: the directory is a DVC output): what was hashed, and when."""
    directory = Path(directory).absolute()
    return directory.with_name(directory.name + ".verified.json")


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _remember(directory: Path, record: dict[str, list]) -> None:
    """Keep ``{file: [size, mtime_ns, inode, sha256]}``; best effort: a read-only or full place (OSError,
    DiskFullError) just hashes again next time, never fails the stage."""
    with contextlib.suppress(Exception):
        write_json(_verified_file(directory), record)


def _record(directory: Path, digests: dict[str, str]) -> dict[str, list]:
    return {name: [*_stat_key(Path(directory) / name), digest] for name, digest in digests.items()}


def _verify(directory: Path, digests: dict[str, str]) -> None:
    """Every shard file holds what was built (its SHA-256 in the index): a shard edited in place is an
    error for a stage called directly too, not only under DVC. Files whose size, modification time and
    inode are those of their last check are not hashed again (the first open after a ``dvc checkout``
    hashes once: about a second per GB)."""
    try:
        known = json.loads(_verified_file(directory).read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    record, hashed = {}, False
    for name, digest in digests.items():
        path = Path(directory) / name
        record[name] = [*_stat_key(path), digest]  # taken before hashing: a change during it is seen next time
        if known.get(name) == record[name]:
            continue
        if _sha256(path) != digest:
            raise CacheError(f"{path}: its content is not what the cache stage wrote (SHA-256 differs from "
                             f"{Path(directory) / INDEX}): it was changed after the build{RERUN}")
        hashed = True
    if hashed:
        _remember(directory, record)


def _check_shard(shard: Path, shape: tuple[int, ...]) -> None:
    try:
        arr = np.load(shard, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise CacheError(f"{shard}: missing or damaged ({err}){RERUN}") from err
    if arr.shape != shape or arr.dtype != np.uint8:
        raise CacheError(f"{shard}: holds {arr.shape} {arr.dtype}, expected {shape} uint8{RERUN}")


def _check_sizes(path: Path, rows: int) -> int:
    """Check a shard's sizes table (``rows`` images, offsets packed one after the other); returns
    the number of bytes its pixel file must hold."""
    try:
        sizes = np.load(path)
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: missing or damaged ({err}){RERUN}") from err
    if sizes.shape != (rows, len(SIZES)) or sizes.dtype != np.int64:
        raise CacheError(f"{path}: holds {sizes.shape} {sizes.dtype}, expected ({rows}, {len(SIZES)}) int64{RERUN}")
    counts = sizes[:, 1] * sizes[:, 2] * 3
    if (sizes[:, 1:] < 1).any() or not np.array_equal(sizes[:, 0], np.cumsum(counts) - counts):
        raise CacheError(f"{path}: sizes or offsets out of order{RERUN}")
    return int(counts.sum())


class ImageCache:
    """Random access to the cached images (memory-mapped shards, opened lazily in each process)."""

    def __init__(self, shards: tuple[str, ...], shard_images: int, image_size: int, row_of: dict[str, int]) -> None:
        self.shards, self.shard_images, self.image_size, self.row_of = shards, shard_images, image_size, row_of
        self.whole = image_size >= SMALL  # whole images of varying size (the "whole" layout)
        self._arrays: list[np.ndarray] | None = None
        self._sizes: list[np.ndarray] | None = None

    def __getstate__(self) -> dict:  # loader workers reopen the memory maps; never pickle the pixels
        return {**self.__dict__, "_arrays": None, "_sizes": None}

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        missing = [p for p in paths if p not in self.row_of]
        if missing:
            raise CacheError(f"{len(missing)} images are not in the decoded-image cache ({self.shards[0]} ...), "
                             f"e.g. {missing[0]}; rerun the cache stage")
        return np.array([self.row_of[p] for p in paths], dtype=np.int64)

    def _open(self) -> None:
        self._arrays = [np.load(s, mmap_mode="r") for s in self.shards]
        if self.whole:
            self._sizes = [np.load(sizes_file(Path(s))) for s in self.shards]

    def image(self, row: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 view of the cached image in row ``row`` of the split table."""
        if self._arrays is None:
            self._open()
        shard, k = divmod(int(row), self.shard_images)
        if not self.whole:
            return self._arrays[shard][k]
        offset, h, w = (int(v) for v in self._sizes[shard][k, :3])
        return self._arrays[shard][offset:offset + h * w * 3].reshape(h, w, 3)

    def file_size(self, row: int) -> tuple[int, int]:
        """``(width, height)`` of the image in row ``row`` in its file ("whole" layout only)."""
        if self._arrays is None:
            self._open()
        shard, k = divmod(int(row), self.shard_images)
        _, _, _, height, width = self._sizes[shard][k]
        return int(width), int(height)

    def dataset(self, paths: Sequence[str], labels: np.ndarray, transform: T.Compose, image_size: int,
                train: bool) -> CachedImages:
        if image_size != self.image_size:
            raise CacheError(f"{self.shards[0]}: cache built for image_size {self.image_size}, asked for "
                             f"{image_size}; rerun the cache stage")
        return CachedImages(self, self.rows(paths), labels, transform, image_size, train)


def _dims(width: int, height: int) -> torch.Tensor:
    """A stand-in image of ``width x height`` for ``RandomResizedCrop.get_params`` (which reads only
    the size); one element, broadcast: nothing allocated."""
    return torch.empty(1, 1, 1).expand(1, height, width)


class CachedImages(Dataset):
    """``ImageTable`` on the cache: the same (image tensor, label, index) items, fetched a batch at a
    time (``__getitems__``; the loader's collate function passes the batch through).

    The loader's own PIL transforms before ``ToTensor`` run per image, with the same random draws in
    the same order as reading the files. Below ``SMALL``: on the cached pixels as they are (training:
    random crop and flip; evaluation: a resize that is the identity on a cached image and the centre
    crop, done as array slicing). From ``SMALL`` (whole images): ``RandomResizedCrop``'s box is drawn
    for the image's size in its file, scaled onto the stored pixels and resized to ``s`` (then the
    flip); evaluation's centre crop of the resized image is cut from the stored pixels (a slice when
    the stored image is that resize). Then ``ToTensor`` and ``Normalize`` run on the whole uint8
    batch at once, with the same elementwise float operations, so the tensors are identical to the
    file path's for the same pixels.
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
        self.crop: T.RandomResizedCrop | None = None
        if cache.whole and train:
            if not isinstance(steps[0], T.RandomResizedCrop):
                raise ValueError(f"expected training transforms to start with RandomResizedCrop, got {steps}")
            self.crop, self.geometric = steps[0], T.Compose(steps[1:cut])
        elif cache.whole:
            if not (cut == 2 and isinstance(steps[0], T.Resize) and isinstance(steps[1], T.CenterCrop)):
                raise ValueError(f"expected evaluation transforms Resize, CenterCrop, got {steps}")
            if steps[0].size != stored_size(image_size) and steps[0].size != [stored_size(image_size)]:
                raise ValueError(f"expected Resize({stored_size(image_size)}), got {steps[0]}")
        mean = torch.as_tensor(steps[cut + 1].mean, dtype=torch.float32).view(-1, 1)
        std = torch.as_tensor(steps[cut + 1].std, dtype=torch.float32).view(-1, 1)
        # ToTensor then Normalize of one uint8 value v in channel c is ((v / 255) - mean_c) / std_c, in
        # float32, one rounding per operation: the same for every pixel, so a (3, 256) table computed
        # with the very same operations gives bit-identical tensors in one pass over the batch.
        self.table = torch.arange(256, dtype=torch.float32).div(255).expand(len(mean), 256).sub(mean).div(std).numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        images, labels, _ = self.__getitems__([i])
        return images[0], labels[0], i

    def crop_box(self, i: int) -> tuple[float, float, float, float]:
        """Training: draw item ``i``'s ``RandomResizedCrop`` box, ``(left, top, right, bottom)`` in
        pixels of the image in its file (the random draws of ``RandomResizedCrop`` on the file)."""
        width, height = self.cache.file_size(self.rows[i])
        top, left, h, w = self.crop.get_params(_dims(width, height), self.crop.scale, self.crop.ratio)
        return left, top, left + w, top + h

    def _pixels(self, i: int) -> np.ndarray:
        """``(s, s, 3)`` uint8 of item ``i`` after the transforms before ``ToTensor``."""
        raw = self.cache.image(self.rows[i])  # a memory-mapped view: a slice reads only what it cuts
        s = self.image_size
        if self.train and not self.cache.whole:
            return np.asarray(self.geometric(Image.fromarray(raw)))
        if not self.cache.whole:
            top = int(round((raw.shape[0] - s) / 2.0))  # torchvision's CenterCrop (the resize is the identity)
            return raw[top:top + s, top:top + s]
        width, height = self.cache.file_size(self.rows[i])
        sx, sy = raw.shape[1] / width, raw.shape[0] / height  # file pixels -> stored pixels
        if self.train:
            left, top, right, bottom = self.crop_box(i)
            size = tuple(reversed(self.crop.size))
            mode = F.pil_modes_mapping[self.crop.interpolation]
            image = Image.fromarray(raw).resize(size, mode, box=(left * sx, top * sy, right * sx, bottom * sy))
            return np.asarray(self.geometric(image))
        rw, rh = resized_dims(width, height, stored_size(s))  # evaluation's Resize, then its CenterCrop
        top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))
        if raw.shape[:2] == (rh, rw):
            return raw[top:top + s, left:left + s]
        sx, sy = raw.shape[1] / rw, raw.shape[0] / rh  # a capped image: stored smaller than the resize
        box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
        return np.asarray(Image.fromarray(raw).resize((s, s), Image.BILINEAR, box=box))

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        s = self.image_size
        images = np.empty((len(indices), 3, s, s), dtype=np.float32)
        for j, i in enumerate(indices):  # per image: no (B, s, s, 3) staging copy of the batch
            pixels = self._pixels(i)
            for c in range(3):  # ToTensor (HWC -> CHW, / 255) and Normalize, as one table lookup
                np.take(self.table[c], pixels[..., c], out=images[j, c], mode="clip")
        return torch.from_numpy(images), self.labels[idx], idx
