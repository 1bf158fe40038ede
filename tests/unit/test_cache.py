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

from niwt.config.load import load_params
from niwt.config.runtime import load_runtime
from niwt.data.cache import CacheError, build_cache, decode, open_cache, stored_size
from niwt.data.images import make_loader
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


def test_large_images_are_stored_as_the_evaluation_square_from_a_reduced_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(400, 300), (300, 400), (260, 260), (500, 200)]):
        path = tmp_path / "images" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        grad = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        Image.fromarray((grad * 0.7 + rng.integers(0, 60, (h, w, 3))).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    splits_file = tmp_path / "splits.parquet"
    write_splits(splits_file, np.arange(4), paths, np.zeros(4, dtype=np.int64), np.array(["test_seen"] * 4))
    build_cache(splits_file, tmp_path / "cache", 128, workers=1, progress=False)
    side = stored_size(128)
    assert side == 146 and _arrays(tmp_path / "cache").shape == (4, side, side, 3)
    cache = open_cache(tmp_path / "cache", splits_file, 128)
    (x_file, *_), = list(make_loader(paths, np.zeros(4), 128, train=False, batch_size=4))
    (x_cache, *_), = list(make_loader(paths, np.zeros(4), 128, train=False, batch_size=4, cache=cache))
    assert x_cache.shape == x_file.shape == (4, 3, 128, 128)
    # the same region; pixels differ only by the reduced-size JPEG decoding: 2.6 grey levels on average
    # on these pixel-noise images (a worst case for it)
    assert (x_cache - x_file).abs().mean() * 0.226 < 4 / 255
    (x_train, *_), = list(make_loader(paths, np.zeros(4), 128, train=True, batch_size=4, cache=cache))
    assert x_train.shape == (4, 3, 128, 128)


DAEMON_SCRIPT = """
import multiprocessing, sys
from pathlib import Path

def work(splits_file, cache_dir, queue):
    from niwt.data.cache import build_cache
    from niwt.data.images import make_loader
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
