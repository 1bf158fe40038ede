"""The decoded-image cache: same pixels and tensors as decoding the files, resumable, checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from niwt.config.load import load_params
from niwt.config.runtime import load_runtime
from niwt.data.cache import CacheError, build_cache, decode, open_cache, stored_size
from niwt.data.images import IMAGENET_MEAN, IMAGENET_STD, make_loader, make_transform, read_rgb
from niwt.data.tables import read_splits, write_splits
from niwt.errors import InputError
from niwt.stages import cache as cache_stage
from niwt.stages import prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import TINY, merge  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("single_thread")
SIZE = TINY["model"]["image_size"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, object]:
    """The tiny synthetic default (32 px, 144 images), prepared."""
    root = tmp_path_factory.mktemp("cache_project")
    raw = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load_params(root / "params.yaml")
    prepare.run(p, load_runtime({"NIWT_DEVICE": "cpu", "NIWT_PROGRESS": "0"}), root / "data")
    return root, p


def _arrays(directory: Path) -> np.ndarray:
    index = json.loads((directory / "index.json").read_text())
    return np.concatenate([np.load(directory / s) for s in index["shards"]])


def test_cache_holds_exactly_the_decoded_images_in_table_order(prepared, tmp_path: Path) -> None:
    root, _ = prepared
    splits_file = root / "data" / "splits.parquet"
    stats = build_cache(splits_file, tmp_path / "cache", SIZE, workers=2, progress=False, shard_images=50)
    assert stats["shards"] == 3 and stats["shards_built"] == 3 and stats["shards_reused"] == 0
    assert stats["size_bytes"] > 144 * SIZE * SIZE * 3
    cached = _arrays(tmp_path / "cache")
    paths = read_splits(splits_file).path
    assert cached.shape == (len(paths), SIZE, SIZE, 3) and cached.dtype == np.uint8
    for i, path in enumerate(paths):  # what the loader's first transform, Resize((s, s)), sees
        with Image.open(path) as img:
            direct = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
        assert np.array_equal(cached[i], direct), path
        assert np.array_equal(cached[i], decode(path, SIZE))


@pytest.mark.parametrize("train", [False, True])
def test_loader_from_cache_gives_identical_tensors(prepared, tmp_path: Path, train: bool) -> None:
    root, _ = prepared
    splits_file = root / "data" / "splits.parquet"
    build_cache(splits_file, tmp_path / "cache", SIZE, workers=1, progress=False, shard_images=64)
    cache = open_cache(tmp_path / "cache", splits_file, SIZE)
    table = read_splits(splits_file).select("train")

    def batches(source):
        torch.manual_seed(3)  # the augmentations' random draws
        loader = make_loader(table.path, table.class_id, SIZE, train=train, batch_size=16, seed=5, cache=source)
        return list(loader)

    files, cached = batches(None), batches(cache)
    assert len(files) == len(cached) > 1
    for (x0, y0, i0), (x1, y1, i1) in zip(files, cached, strict=True):
        assert x0.dtype == x1.dtype and x0.shape == x1.shape
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)


def test_killed_build_resumes_with_only_the_missing_shards(prepared, tmp_path: Path) -> None:
    root, _ = prepared
    splits_file = root / "data" / "splits.parquet"
    out = tmp_path / "cache"
    written: list[str] = []

    def killed_after_two(name: str) -> None:
        written.append(name)
        if len(written) == 2:
            raise KeyboardInterrupt  # a kill between shards

    with pytest.raises(KeyboardInterrupt):
        build_cache(splits_file, out, SIZE, workers=1, progress=False, shard_images=30, on_shard=killed_after_two)
    assert not out.exists()  # nothing partial where readers look
    partial = tmp_path / "cache.partial"
    assert sorted(p.name for p in partial.glob("shard-*.npy")) == written == ["shard-00000.npy", "shard-00001.npy"]
    (partial / ".shard-00002.npy.host-999999.abcdefgh.tmp").mkdir()  # a shard write cut off mid-way
    rebuilt: list[str] = []
    stats = build_cache(splits_file, out, SIZE, workers=1, progress=False, shard_images=30, on_shard=rebuilt.append)
    assert rebuilt == ["shard-00002.npy", "shard-00003.npy", "shard-00004.npy"]
    assert (stats["shards"], stats["shards_built"], stats["shards_reused"]) == (5, 3, 2)
    assert not partial.exists() and sorted(p.name for p in out.iterdir()) == ["index.json", *written, *rebuilt]
    unbroken = build_cache(splits_file, tmp_path / "unbroken", SIZE, workers=1, progress=False, shard_images=30)
    assert unbroken["shards_built"] == 5
    assert np.array_equal(_arrays(out), _arrays(tmp_path / "unbroken"))
    assert json.loads((out / "index.json").read_text()) == json.loads((tmp_path / "unbroken/index.json").read_text())


def test_a_cache_that_does_not_fit_is_one_clear_error(prepared, tmp_path: Path) -> None:
    root, _ = prepared
    splits_file = root / "data" / "splits.parquet"
    out = tmp_path / "cache"
    build_cache(splits_file, out, SIZE, workers=1, progress=False, shard_images=64)
    assert open_cache(None, splits_file, SIZE) is None
    with pytest.raises(CacheError, match=r"index\.json: built for image_size 32, the model takes 64"):
        open_cache(out, splits_file, 64)
    # the split table changed after the cache was built (prepare rerun with other params)
    table = read_splits(splits_file)
    changed = tmp_path / "prepared" / "splits.parquet"
    write_splits(changed, table.image_id[:-1], table.path[:-1], table.class_id[:-1], table.split[:-1])
    with pytest.raises(InputError, match=rf"{out / 'index.json'}: built from another split table than "
                                         rf"{changed}.*rerun the cache stage"):
        open_cache(out, changed, SIZE)
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "version": 1}))  # a cache of an older format
    with pytest.raises(CacheError, match=r"index\.json: not a cache index of format version 3; rerun the cache "
                                         r"stage \(dvc repro cache"):
        open_cache(out, splits_file, SIZE)
    (out / "index.json").write_text(json.dumps(index))
    shard = out / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:1000])  # damaged
    with pytest.raises(CacheError, match=rf"{shard}: "):
        open_cache(out, splits_file, SIZE)
    (out / "index.json").write_text("{not json")
    with pytest.raises(CacheError, match=r"index\.json: unreadable"):
        open_cache(out, splits_file, SIZE)
    with pytest.raises(CacheError, match=r"index\.json: missing"):
        open_cache(tmp_path / "nowhere", splits_file, SIZE)


def test_stage_disabled_writes_a_marker_and_readers_decode_files(prepared, tmp_path: Path) -> None:
    root, p = prepared
    data = root / "data"
    rt = load_runtime({"NIWT_PROGRESS": "0", "NIWT_WORKERS": "1"})
    off = merge(yaml.safe_load((root / "params.yaml").read_text()), {"cache": {"enabled": False}})
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(off))
    result = cache_stage.run(load_params(tmp_path / "off.yaml"), rt, data, tmp_path / "off")
    assert result.metrics["enabled"] is False and result.metrics["size_bytes"] == 0
    assert [f.name for f in (tmp_path / "off").iterdir()] == ["index.json"]
    assert open_cache(tmp_path / "off", data / "splits.parquet", SIZE) is None
    on = cache_stage.run(p, rt, data, tmp_path / "on").metrics
    assert on["enabled"] and on["n_images"] == 144 and on["images_per_s"] > 0 and on["shards_built"] == 1
    assert open_cache(tmp_path / "on", data / "splits.parquet", SIZE) is not None


def _jpeg(path: Path, width: int, height: int, noise: int = 0, seed: int = 0) -> str:
    """A photo-sized JPEG whose colours say where a pixel is: red grows left to right, green top to
    bottom, blue a smooth wave (plus ``noise`` grey levels of pixel noise)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([230 * xx / width, 230 * yy / height, 120 + 80 * np.sin(xx / 37.0) * np.cos(yy / 23.0)], -1)
    rgb += np.random.default_rng(seed).integers(0, noise + 1, rgb.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=95)
    return str(path)


def _cache_of(tmp_path: Path, paths: list[str], size: int):
    splits_file = tmp_path / "splits.parquet"
    n = len(paths)
    write_splits(splits_file, np.arange(n), paths, np.zeros(n, dtype=np.int64), np.array(["test_seen"] * n))
    build_cache(splits_file, tmp_path / "cache", size, workers=1, progress=False)
    return open_cache(tmp_path / "cache", splits_file, size)


def test_large_images_are_stored_whole_from_a_reduced_decode(tmp_path: Path) -> None:
    sizes = [(400, 300), (300, 400), (260, 260), (500, 200)]  # the last wider than MAX_ASPECT: stored smaller
    paths = [_jpeg(tmp_path / "images" / f"{i}.jpg", w, h, noise=60, seed=i) for i, (w, h) in enumerate(sizes)]
    cache = _cache_of(tmp_path, paths, 128)
    side = stored_size(128)
    assert side == 146
    stored = [(194, 146), (146, 194), (146, 146), (2 * side, 116)]  # (width, height): aspect kept, long side capped
    for row, (path, (w, h), file_size) in enumerate(zip(paths, stored, sizes, strict=True)):
        assert cache.image(row).shape == (h, w, 3) and cache.file_size(row) == file_size
        assert np.array_equal(cache.image(row), decode(path, 128))
    (x_file, *_), = list(make_loader(paths, np.zeros(4), 128, train=False, batch_size=4))
    (x_cache, *_), = list(make_loader(paths, np.zeros(4), 128, train=False, batch_size=4, cache=cache))
    assert x_cache.shape == x_file.shape == (4, 3, 128, 128)
    # the same region; pixels differ only by the reduced-size JPEG decoding (and the capped image's
    # smaller storage): on these pixel-noise images (a worst case for it) 2.6 grey levels on average
    assert (x_cache - x_file).abs().mean() * 0.226 < 4 / 255
    (x_train, *_), = list(make_loader(paths, np.zeros(4), 128, train=True, batch_size=4, cache=cache))
    assert x_train.shape == (4, 3, 128, 128)
    assert torch.equal(cache.dataset(paths, np.zeros(4), make_transform(128, False), 128, False)[2][0], x_cache[2])


PHOTOS = [(500, 375), (1024, 576)]  # a CUB-like photo; a 16:9 one (decoded at half size first)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[list[str], object]:
    """The two photo sizes as JPEGs, and their cache at 224 px."""
    root = tmp_path_factory.mktemp("photos")
    paths = [_jpeg(root / f"{w}x{h}.jpg", w, h) for w, h in PHOTOS]
    return paths, _cache_of(root, paths, 224)


def test_training_crops_from_the_cache_are_the_files_crops(photos, monkeypatch) -> None:
    """Same seeds: every RandomResizedCrop box, as a fraction of the image, is the one drawn from the
    file, and the crop shows the same part of the image (up to resampling)."""
    paths, cache = photos
    drawn: list[tuple[float, ...]] = []
    get_params = T.RandomResizedCrop.get_params

    def recorded(img, scale, ratio):
        _, height, width = TF.get_dimensions(img)
        top, left, h, w = get_params(img, scale, ratio)
        drawn.append((left / width, top / height, w / width, h / height))
        return top, left, h, w

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(recorded))
    many = paths * 24

    def crops(source) -> tuple[torch.Tensor, list[tuple[float, ...]]]:
        drawn.clear()
        torch.manual_seed(11)
        loader = make_loader(many, np.zeros(len(many)), 224, train=True, batch_size=16, seed=4, cache=source)
        return torch.cat([x for x, _, _ in loader]), list(drawn)

    (x_file, boxes_file), (x_cache, boxes_cache) = crops(None), crops(cache)
    assert len(boxes_file) == len(many) and boxes_cache == boxes_file
    # the same region, resampled from the stored size: measured max 0.053, mean 0.005 (normalised units);
    # a crop of another region of these gradients differs by far more than 0.15
    diff = (x_cache - x_file).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.15


def _extent(x: torch.Tensor, width: int, height: int) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` in file pixels of the region a crop shows, read from its colours
    (red and green grow with x and y, see :func:`_jpeg`; flips swap left and right)."""
    red = (x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).mean(0) * 255 / 230 * width
    green = (x[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1]).mean(1) * 255 / 230 * height
    (left, right), (top, bottom) = sorted((float(red[0]), float(red[-1]))), (float(green[0]), float(green[-1]))
    return left, top, right, bottom


@pytest.mark.parametrize("photo", range(len(PHOTOS)))
def test_training_crops_reach_the_edges_and_scale_as_from_the_file(photos, photo: int) -> None:
    """2000 crops, the region each shows read from its pixels: the share reaching the outer 10% of the
    width, and the share smaller than the model's input in file pixels (upsampled from the file),
    match the file's within 1 point (2000 draws; the draws are the same, only pixel noise at the
    thresholds differs)."""
    paths, cache = photos
    width, height = PHOTOS[photo]
    transform = make_transform(224, True)
    data = cache.dataset(paths[photo:photo + 1], np.zeros(1), transform, 224, True)
    image = read_rgb(paths[photo])

    def shares(crop) -> tuple[float, float]:
        torch.manual_seed(5)
        boxes = np.array([_extent(crop(), width, height) for _ in range(2000)])
        edge = (boxes[:, 0] < 0.1 * width) | (boxes[:, 2] > 0.9 * width)
        small = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * 224 / 223 < 224
        return float(edge.mean()), float(small.mean())

    (edge_file, small_file), (edge_cache, small_cache) = shares(lambda: transform(image)), shares(lambda: data[0][0])
    assert edge_file > 0.3  # a crop of the file often reaches its outer part
    assert abs(edge_cache - edge_file) <= 0.01 and abs(small_cache - small_file) <= 0.01


@pytest.mark.parametrize("photo", range(len(PHOTOS)))
def test_evaluation_from_the_cache_cuts_the_files_region(photos, photo: int) -> None:
    paths, cache = photos
    (x_file, *_), = list(make_loader(paths[photo:photo + 1], np.zeros(1), 224, train=False, batch_size=1))
    (x_cache, *_), = list(make_loader(paths[photo:photo + 1], np.zeros(1), 224, train=False, batch_size=1,
                                      cache=cache))
    # the reduced-size decoding only: measured max 0 for 500x375 (decoded at full size), 0.035 for
    # 1024x576 (decoded at half size) (normalised units)
    assert (x_cache - x_file).abs().max() < 0.1


DAEMON_SCRIPT = """
import multiprocessing, sys
from pathlib import Path

def work(splits_file, cache_dir, queue):
    from niwt.data.cache import build_cache
    from niwt.data.images import IMAGENET_MEAN, IMAGENET_STD, make_loader, make_transform, read_rgb
    from niwt.data.tables import read_splits
    splits = read_splits(Path(splits_file))
    batch = next(iter(make_loader(splits.path[:4], splits.class_id[:4], 32, train=False, batch_size=4,
                                  num_workers=2)))
    stats = build_cache(Path(splits_file), Path(cache_dir), 32, workers=2, progress=False, shard_images=8)
    queue.put((tuple(batch[0].shape), stats["shards"]))

ctx = multiprocessing.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=work, args=(sys.argv[1], sys.argv[2], queue), daemon=True)
proc.start()
print(queue.get(timeout=240))
proc.join(60)
sys.exit(proc.exitcode)
"""


def test_daemonic_processes_load_in_process(prepared, tmp_path: Path) -> None:
    """The Dask-daemon caveat: a daemonic process (a Dask worker) may not start children, so loader
    workers and the cache's build processes run in-process there instead of failing."""
    import subprocess

    root, _ = prepared
    proc = subprocess.run([sys.executable, "-c", DAEMON_SCRIPT, str(root / "data" / "splits.parquet"),
                           str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("((4, 3, 32, 32), ")


def test_raw_files_decide_partial_reuse_and_the_disabled_marker(prepared, tmp_path: Path) -> None:
    """Images rewritten at the same paths (same split table) after a killed build: no shard of the old
    pixels is reused. A disabled cache records the raw fingerprint, so the stages that decode the files
    themselves rerun when they change; an enabled one does not (its pixels are its content)."""
    root, p = prepared
    splits_file = root / "data" / "splits.parquet"
    written: list[str] = []

    def killed_after_one(name: str) -> None:
        written.append(name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(splits_file, tmp_path / "cache", SIZE, workers=1, progress=False, shard_images=30,
                    on_shard=killed_after_one, raw="old")
    rebuilt: list[str] = []
    stats = build_cache(splits_file, tmp_path / "cache", SIZE, workers=1, progress=False, shard_images=30,
                        on_shard=rebuilt.append, raw="new")
    assert stats["shards_reused"] == 0 and len(rebuilt) == stats["shards"] == 5
    assert "raw_sha256" not in json.loads((tmp_path / "cache" / "index.json").read_text())

    rt = load_runtime({"NIWT_PROGRESS": "0", "NIWT_WORKERS": "1"})
    off = merge(yaml.safe_load((root / "params.yaml").read_text()), {"cache": {"enabled": False}})
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(off))
    fingerprint = tmp_path / "raw_fingerprint.json"
    indexes = []
    for content in ('{"a": 1}', '{"a": 2}'):
        fingerprint.write_text(content)
        cache_stage.run(load_params(tmp_path / "off.yaml"), rt, root / "data", tmp_path / "off", raw=fingerprint)
        indexes.append((tmp_path / "off" / "index.json").read_bytes())
    assert indexes[0] != indexes[1]


def _killed(job) -> str:
    """A build process killed without a word (the OOM killer; a SIGBUS from a sparse map on a full disk)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return ""


@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_during_the_build_is_enospc_naming_the_shard(prepared, tmp_path: Path, workers: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard's blocks are allocated before any pixel is stored: a full disk is ENOSPC naming the
    shard (one line from the CLI), never a SIGBUS (rc 135, no message) or a BrokenProcessPool."""
    import errno
    import os

    root, _ = prepared
    allocated: list[int] = []

    def full(fd: int, offset: int, size: int) -> None:
        allocated.append(size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)  # the forked build processes inherit it
    with pytest.raises(InputError, match=r"^\S*/cache\.partial/shard-0000\d\.npy: no space left on device "
                                         r"\([\d.]+ \w+ free on its filesystem\); free space there and rerun"):
        build_cache(root / "data" / "splits.parquet", tmp_path / "cache", SIZE, workers=workers, progress=False,
                    shard_images=64)
    assert workers > 1 or allocated == [128 + 64 * stored_size(SIZE) ** 2 * 3]  # .npy header + pixels
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "cache.partial").glob("shard-*"))


def test_a_build_process_that_dies_is_one_clear_error(prepared, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import niwt.data.cache as cache_module

    root, _ = prepared
    monkeypatch.setattr(cache_module, "build_shard", _killed)
    with pytest.raises(CacheError, match=r"cache\.partial: a cache build process died without a word \(killed, or "
                                         r"out of memory or disk: .* free there\); the finished shards are kept"):
        build_cache(root / "data" / "splits.parquet", tmp_path / "cache", SIZE, workers=2, progress=False,
                    shard_images=64)


def test_a_shard_edited_in_place_is_refused_and_unchanged_shards_are_hashed_once(
        prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard changed after the build (same size, so its shape checks pass) is an error when a stage
    opens the cache directly, outside DVC; an untouched cache is not hashed again on every open."""
    import os

    import niwt.data.cache as cache_module

    root, _ = prepared
    splits_file = root / "data" / "splits.parquet"
    out = tmp_path / "cache"
    build_cache(splits_file, out, SIZE, workers=1, progress=False, shard_images=64)
    hashed: list[str] = []
    real = cache_module._sha256
    monkeypatch.setattr(cache_module, "_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    open_cache(out, splits_file, SIZE)
    assert hashed == []  # the build recorded what it hashed
    shard = out / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-10:] = bytes(255 - b for b in data[-10:])  # ten pixels, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=rf"{shard}: its content is not what the cache stage wrote \(SHA-256 "
                                         r"differs from .*index\.json\): it was changed after the build; rerun"):
        open_cache(out, splits_file, SIZE)
    shard.write_bytes(real_bytes := bytes(255 - b if i >= len(data) - 10 else b for i, b in enumerate(data)))
    assert len(real_bytes) == len(data)
    os.utime(shard, ns=(1, 1))  # restored content, other mtime (as after a `dvc checkout`): hashed once, then not
    hashed.clear()
    open_cache(out, splits_file, SIZE)
    open_cache(out, splits_file, SIZE)
    assert hashed == ["shard-00001.npy"]
