"""Importance extraction: cost relative to a plain training step, batching speed-up, exactness.

Measured side by side on the same images, model in eval mode and in the same memory format
(channels-last unless ``--no-channels-last``) for every variant:

* ``extract``: :func:`niwt.importance.capture.batch_importance` over batches on a model prepared
  by :func:`~niwt.importance.capture.prepare_for_extraction`, exactly what the extract stage runs
  per batch: one forward, one backward from the selected logits to the layer only.
* ``fwd+bwd``: a plain forward + cross-entropy backward to *all* parameters (a training step
  without the optimiser) over the same batches. Target: extract / fwd+bwd <= 1.15.
* ``forward``: inference-mode forward only, for context (the floor); also one image at a time,
  which shows how much batching can gain on this machine at all.
* ``per-image``: the same function called on one image at a time.
  All four run round-robin for ``--repeats`` rounds; the best time of each is kept. Target: >= 10x slower than
  batched; batched and per-image importances agree to <= 1e-5 (max abs difference).

Usage: ``python benchmarks/bench_extract.py [--quick] [--device cpu|cuda] [--images N]``
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser, interleaved, load_images, load_model, setup  # noqa: E402

from niwt.importance.capture import (  # noqa: E402
    LayerCapture,
    batch_importance,
    prepare_for_extraction,
    to_model_format,
)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="number of images (default 512; --quick 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, help="timing rounds, best kept (default 5; --quick 1)")
    parser.add_argument("--random-init", action="store_true", help="ignore models/finetuned.pt")
    parser.add_argument("--random-images", action="store_true", help="ignore data/prepared")
    parser.add_argument("--pooling", choices=("sum", "mean"), default="sum")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="NCHW memory format for every variant (params: extract.channels_last: false)")
    args = parser.parse_args()
    n = args.images or (64 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 5)
    device = setup(args)

    trained, layer, size, model_desc = load_model(device, not args.random_init)
    model = prepare_for_extraction(copy.deepcopy(trained), args.channels_last)  # what the stage runs
    trained = trained.to(memory_format=torch.channels_last) if args.channels_last else trained
    images, labels, data_desc = load_images(n, size, args.seed, real=not args.random_images)
    images, labels = to_model_format(images.to(device), args.channels_last), labels.to(device)
    batches = list(zip(images.split(args.batch_size), labels.split(args.batch_size), strict=True))
    print(f"# model: {model_desc}; layer {layer}; data: {data_desc}; batch {args.batch_size}; "
          f"{'channels-last' if args.channels_last else 'NCHW'}", flush=True)

    def extract_batched() -> torch.Tensor:
        with LayerCapture(model, layer) as cap:
            return torch.cat([batch_importance(model, cap, x, y, args.pooling)[0] for x, y in batches])

    def fwd_bwd() -> None:
        for x, y in batches:
            trained.zero_grad(set_to_none=True)
            F.cross_entropy(trained(x), y).backward()
        trained.zero_grad(set_to_none=True)

    def forward_only() -> None:
        with torch.inference_mode():
            for x, _ in batches:
                model(x)

    def forward_per_image() -> None:
        with torch.inference_mode():
            for i in range(n):
                model(images[i:i + 1])

    def extract_per_image() -> torch.Tensor:
        with LayerCapture(model, layer) as cap:
            return torch.cat([batch_importance(model, cap, images[i:i + 1], labels[i:i + 1], args.pooling)[0]
                              for i in range(n)])

    report = Report(f"bench_extract ({'quick' if args.quick else 'full'}, {n} images, {device})")
    # warm-up: allocator, oneDNN / cuDNN kernel selection
    extract_batched(), fwd_bwd(), forward_only()
    best = interleaved({"extract": extract_batched, "fwd_bwd": fwd_bwd, "forward": forward_only,
                        "per_image": extract_per_image, "forward_per_image": forward_per_image}, device, repeats)
    t_loop = best["per_image"]
    batched, per_image = extract_batched(), extract_per_image()

    report.info("forward only (inference), s", best["forward"])
    report.info("plain forward+backward (CE to all params), s", best["fwd_bwd"])
    report.info("extraction batched, s", best["extract"])
    report.info("extraction batched, images/s", n / best["extract"], "{:.0f}")
    report.info("extraction per-image loop, s", t_loop)
    report.info("extraction per-image loop, images/s", n / t_loop, "{:.0f}")
    report.ratio("extract_vs_fwd_bwd", best["extract"] / best["fwd_bwd"], "<=", 1.15)
    report.ratio("extract_vs_forward", best["extract"] / best["forward"])
    report.ratio("batched_speedup", t_loop / best["extract"], ">=", 10, suffix="x")
    report.ratio("forward_batched_speedup", best["forward_per_image"] / best["forward"], suffix="x",
                 note="context: what batching gains on the forward pass alone on this machine")
    report.ratio("batched_speedup_ceiling", t_loop / best["forward"], suffix="x",
                 note="per-image extraction / batched inference forward: the most any batched extraction, "
                      "which needs at least a forward pass, could gain")
    diff = (batched - per_image).abs().max().item()
    scale = batched.abs().max().item()
    report.ratio("max_abs_diff_batched_vs_per_image", diff, "<=", 1e-5, fmt="{:.2e}")
    report.info("max abs importance (scale of the diff)", scale, "{:.3g}")
    report.finish(args.json, {"images": n, "batch_size": args.batch_size, "model": model_desc, "data": data_desc,
                              "channels_last": args.channels_last})


if __name__ == "__main__":
    main()
