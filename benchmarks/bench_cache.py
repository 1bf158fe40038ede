"""The decoded-image cache against decoding the original JPEGs, at 224 px on AWA2-sized photos.

Generates ``--images`` AWA2-like JPEGs (1000x750, quality 90: smooth gradients, shapes and
texture; about 70 KiB each at quality 90), writes a split table for them,
builds the cache (``niwt.data.cache.build_cache``, all cores) and measures, side by side:

1. **read throughput**: images/s of the evaluation loader (``make_loader(train=False)``, batch 64,
   what extract / evaluate / the injection pool / explain run) from the cache vs from the JPEGs
   (a full decode and resize per image, as without the cache); target >= 20x. Best of
   ``--repeats`` interleaved rounds. The training loader (RandomResizedCrop + flip) is reported too.
2. **fine-tune epoch**: one epoch of ``train_one_epoch`` at 224 px on a small CPU network
   (``small_cnn`` width 8, hidden 64), from the cache and from the JPEGs; the loader's share of
   the epoch = time spent iterating the loader alone (same seed, same batches) / the epoch's time.
   Target: below 10% from the cache.

Usage: ``python benchmarks/bench_cache.py [--quick] [--images 256] [--workdir DIR]``
(``--workdir`` keeps the generated JPEGs and reuses them.)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser, interleaved, setup  # noqa: E402

SIZE = 224


def make_jpegs(directory: Path, n: int, seed: int) -> list[str]:
    """``n`` 1000x750 photo-like JPEGs (reused when already there)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:750, 0:1000].astype(np.float32)
    for i in range(n):
        path = directory / f"img_{i:05d}.jpg"
        paths.append(str(path))
        if path.is_file():
            continue
        base = rng.uniform(40, 200, 3)
        slope = rng.uniform(-0.12, 0.12, (2, 3))
        img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        img += rng.normal(0, 12, (750, 1000, 1)) * rng.uniform(0.3, 1.0, 3)  # texture
        image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y, r = rng.integers(0, 1000), rng.integers(0, 750), rng.integers(30, 200)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(path, quality=90)
    return paths


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs to generate (quick: 24)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the read benchmark")
    parser.add_argument("--workers", type=int, default=0, help="cache build processes (0: all cores)")
    parser.add_argument("--workdir", type=Path, help="keep the generated JPEGs here and reuse them")
    args = parser.parse_args()
    device = setup(args)
    import torch
    from torch import nn

    from niwt.data.cache import build_cache, open_cache
    from niwt.data.images import make_loader
    from niwt.data.tables import write_splits
    from niwt.models.networks import small_cnn
    from niwt.models.training import train_one_epoch

    n = 24 if args.quick else args.images
    repeats = 1 if args.quick else args.repeats
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cache."))
    report = Report(f"decoded-image cache vs JPEG decoding ({n} images of 1000x750, {SIZE} px)")
    try:
        start = time.perf_counter()
        paths = make_jpegs(work / "jpegs", n, args.seed)
        print(f"# {n} JPEGs ready in {time.perf_counter() - start:.1f} s in {work}", flush=True)
        labels = np.arange(n) % 10
        splits_file = work / "splits.parquet"
        write_splits(splits_file, np.arange(n), paths, labels, np.array(["train"] * n))
        shutil.rmtree(work / "cache", ignore_errors=True)
        stats = build_cache(splits_file, work / "cache", SIZE, workers=args.workers, progress=False, shard_images=64)
        cache = open_cache(work / "cache", splits_file, SIZE)
        report.info("jpeg_mean_kib", float(np.mean([os.path.getsize(p) for p in paths])) / 1024, unit=" KiB")
        report.info("cache_build_images_per_s", stats["images_per_s"], "{:.1f}",
                    f" ({stats['shards']} shards, {args.workers or len(os.sched_getaffinity(0))} processes)")
        report.info("cache_bytes_per_image", stats["size_bytes"] / n / 1024, "{:.0f}", " KiB")

        def read(source, train: bool):
            def run() -> int:
                count = 0
                for images, _, _ in make_loader(paths, labels, SIZE, train=train, batch_size=64, cache=source):
                    count += len(images)
                return count
            return run

        times = interleaved({"jpeg": read(None, False), "cache": read(cache, False)}, device, repeats)
        report.info("read_jpeg_images_per_s", n / times["jpeg"], "{:.1f}")
        report.info("read_cache_images_per_s", n / times["cache"], "{:.1f}")
        report.ratio("read_speedup_cache_vs_jpeg", times["jpeg"] / times["cache"], ">=", 20, suffix="x",
                     note="evaluation loader, images/s")
        train_times = interleaved({"jpeg": read(None, True), "cache": read(cache, True)}, device, repeats)
        report.info("train_read_speedup_cache_vs_jpeg", train_times["jpeg"] / train_times["cache"], "{:.1f}", "x")

        def epoch(source) -> tuple[float, float]:
            torch.manual_seed(args.seed)
            model = small_cnn(10, width=8, hidden=64, image_size=SIZE).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            loader = make_loader(paths, labels, SIZE, train=True, batch_size=32, seed=args.seed, cache=source)
            torch.manual_seed(args.seed)
            t_loader = time.perf_counter()
            for _ in loader:
                pass
            t_loader = time.perf_counter() - t_loader
            torch.manual_seed(args.seed)
            t_epoch = time.perf_counter()
            train_one_epoch(model, nn.CrossEntropyLoss(), opt, loader, device, 1, progress=False)
            return t_loader, time.perf_counter() - t_epoch

        load_jpeg, epoch_jpeg = epoch(None)
        load_cache, epoch_cache = epoch(cache)
        report.info("epoch_seconds_jpeg", epoch_jpeg, "{:.2f}", " s")
        report.info("epoch_seconds_cache", epoch_cache, "{:.2f}", " s")
        report.info("loader_share_jpeg", load_jpeg / epoch_jpeg, "{:.1%}")
        report.ratio("loader_share_cache", load_cache / epoch_cache, "<=", 0.1, fmt="{:.3f}",
                     note="share of a 224-px fine-tune epoch spent in the loader")
        report.info("epoch_speedup_cache_vs_jpeg", epoch_jpeg / epoch_cache, "{:.2f}", "x")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report.finish(args.json, {"images": n, "image_size": SIZE})


if __name__ == "__main__":
    main()
