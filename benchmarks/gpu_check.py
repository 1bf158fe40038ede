"""One-shot GPU check: the project's hot loops at real size, each next to a plain PyTorch reference.

Needs only PyTorch, torchvision and this repository's ``src/`` on ``PYTHONPATH`` (no Prefect,
MLflow, DVC, PyYAML or the datasets: images are random tensors). Prints one ``RESULT`` line per
number and a markdown table for the README's performance table:

* finetune images/s, ResNet-101 and VGG16 at 224 px, bf16 autocast + channels-last: the project's
  training step (``niwt.models.training.train_one_epoch`` on ``niwt.models.networks``) vs a plain
  torchvision-reference step on the torchvision model; their ratio should be ~1;
* extraction images/s (``niwt.importance.capture``: frozen trunk, one backward to the layer) vs a
  plain forward + full backward of the same network;
* injection iterations/s for both head kinds: VGG16 ``body.relu5_3`` (gated Jacobian) and ResNet-101
  ``body.layer4.0`` (dense Jacobian when it fits, else double backprop);
* the decoded-image cache's read rate: not built yet (issue 16), reported as such.

    bash benchmarks/gpu_check.sh --quick          # < 8 minutes on one GPU
    bash benchmarks/gpu_check.sh --device cpu --tiny   # seconds: the CI smoke test
    bash benchmarks/gpu_check.sh --quick --nproc 0     # DDP scaling: 1 GPU vs every GPU of the machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from niwt.importance.capture import LayerCapture, batch_importance, prepare_for_extraction, to_model_format
from niwt.injection.niwt import inject, resolve_solver
from niwt.models.networks import build_model, split_at
from niwt.models.training import train_one_epoch
from niwt.params import InjectParams

ARCHS = {"vgg16": "body.relu5_3", "resnet101": "body.layer4.0"}
N_CLASSES = 40


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn: Callable[[], None], items: int, device: torch.device, repeats: int) -> float:
    """Items per second of ``fn`` (after one warm-up call), best of ``repeats``."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return items / best


def batches(n: int, batch: int, size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor, None]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=gen).to(device),
             torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device), None) for _ in range(n)]


def plain_step_fn(arch: str, data: list, device: torch.device, amp: bool) -> Callable[[], None]:
    """torchvision's reference training step (references/classification/train.py), no niwt code."""
    import torchvision

    model = getattr(torchvision.models, arch)(num_classes=N_CLASSES).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def run() -> None:
        for images, labels, _ in data:
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                loss = loss_fn(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def niwt_step_fn(arch: str, data: list, device: torch.device, amp: bool) -> Callable[[], None]:
    """The project's finetune epoch: niwt's network layout and ``train_one_epoch``."""
    model = build_model(arch, N_CLASSES).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> None:
        train_one_epoch(model, loss_fn, opt, data, device, 1, amp=amp, channels_last=True, progress=False)
    return run


def _ddp_rank(rank: int, nproc: int, port: int, arch: str, n: int, batch: int, size: int, device_type: str,
              repeats: int, out: str) -> None:
    """One rank of the scaling check: the project's DDP training step (``niwt.distributed.ddp``) on its
    own device, ``batch`` images per rank per step; rank 0 writes the global images/s to ``out``."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc)})
    from niwt.distributed.ddp import launched_world, process_group, rank_device, wrap

    world = launched_world()
    device = rank_device(torch.device(device_type), world)
    with process_group(world, device):
        data = batches(n, batch, size, device)
        model = build_model(arch, N_CLASSES).to(device, memory_format=torch.channels_last)
        net = wrap(model, device, world)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def run() -> None:
            train_one_epoch(net, nn.CrossEntropyLoss(), opt, data, device, 1, amp=True, channels_last=True,
                            progress=False, world=world)
        images_per_s = rate(run, n * batch * nproc, device, repeats)
    if rank == 0:
        Path(out).write_text(str(images_per_s))


def ddp_rate(arch: str, nproc: int, n: int, batch: int, size: int, device: torch.device, repeats: int) -> float:
    """Global training images/s of ``nproc`` DDP processes (one per GPU; gloo on CPU)."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rate")
        mp.start_processes(_ddp_rank, args=(nproc, port, arch, n, batch, size, device.type, repeats, out),
                           nprocs=nproc, start_method="spawn", join=True)
        return float(Path(out).read_text())


def extraction_fns(arch: str, data: list, device: torch.device) -> tuple[Callable[[], None], Callable[[], None]]:
    model = prepare_for_extraction(build_model(arch, N_CLASSES).to(device), channels_last=True)
    plain = build_model(arch, N_CLASSES).to(device, memory_format=torch.channels_last).eval()

    def extract() -> None:
        with LayerCapture(model, ARCHS[arch]) as cap:
            for images, labels, _ in data:
                batch_importance(model, cap, to_model_format(images, True), labels, "sum")

    def forward_backward() -> None:
        for images, labels, _ in data:
            plain.zero_grad(set_to_none=True)
            plain(images.contiguous(memory_format=torch.channels_last)).gather(1, labels[:, None]).sum().backward()
    return extract, forward_backward


def injection_rate(arch: str, size: int, pool: int, iters: int, device: torch.device) -> tuple[float, str]:
    """NIWT iterations/s on ``pool`` cached activations (after the Jacobian precompute)."""
    model = build_model(arch, N_CLASSES).eval()
    trunk, head = split_at(model, ARCHS[arch])
    trunk, head = trunk.to(device), head.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        acts = torch.cat([trunk(torch.randn(8, 3, size, size, generator=gen).to(device)).float().cpu()
                          for _ in range(max(1, pool // 8))])
    cfg = InjectParams(max_iters=iters, patience=10**9)
    solver, jac = resolve_solver(head, acts, "sum", cfg.solver)
    alpha_hat = torch.randn(10, acts.shape[1], generator=gen)
    w_seen = model.classifier.weight.detach()
    start = time.perf_counter()
    result = inject(head, acts, alpha_hat, w_seen, cfg, solver, jac, pooling="sum", seed=0, lr=1e-3, lambda_=1e-3)
    return result.iterations / (time.perf_counter() - start), result.solver


def cache_read_rate(size: int, n: int, batch: int, device: torch.device) -> float | str:
    """Images/s of the evaluation loader reading the decoded-image cache (``niwt.data.cache``) and
    moving each batch to ``device``; ``n`` random photo-sized PNGs are written and cached first. The
    cache's split table is Parquet: without pyarrow the check is skipped, never failed."""
    import tempfile

    try:
        from niwt.data.cache import build_cache, open_cache
        from niwt.data.images import make_loader
        from niwt.data.tables import write_splits
    except ImportError as err:
        return f"skipped ({err.name} not installed)"
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="gpu_check_cache.") as tmp:
        work, rng = Path(tmp), np.random.default_rng(0)
        paths = []
        for i in range(n):
            paths.append(str(work / f"img_{i:05d}.png"))
            pixels = rng.integers(0, 255, (size + size // 4, size + size // 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(paths[-1])
        labels = np.arange(n) % 10
        write_splits(work / "splits.parquet", np.arange(n), paths, labels, np.array(["test_seen"] * n))
        build_cache(work / "splits.parquet", work / "cache", size, workers=0, progress=False)
        cache = open_cache(work / "cache", work / "splits.parquet", size)

        def read() -> None:
            loader = make_loader(paths, labels, size, train=False, batch_size=batch, cache=cache,
                                 pin_memory=device.type == "cuda")
            for images, _, _ in loader:
                images.to(device, non_blocking=True)

        return rate(read, n, device, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer batches and iterations (< 8 minutes on a GPU)")
    parser.add_argument("--tiny", action="store_true", help="32-px images, 2 batches of 2: a CPU smoke test")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--nproc", type=int, default=None,
                        help="only the DDP scaling check: training images/s at 1 and at NPROC processes (one per GPU; "
                             "0 = every GPU of the machine); ResNet-101, batch per process as for one GPU")
    parser.add_argument("--arch", default="resnet101", help="--nproc's network (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    torch.backends.cudnn.benchmark = True
    size, batch, n, repeats, iters, pool = ((32, 2, 1, 1, 3, 8) if args.tiny else
                                            (224, 64, 4, 2, 200, 256) if args.quick else
                                            (224, 64, 10, 3, 1000, 1024))
    name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"# gpu_check on {name} ({device}); torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"images {size} px, batch {batch}, {n} batches; bf16 autocast on CUDA", flush=True)
    results: dict[str, float | str] = {}

    def report(key: str, value: float | str, unit: str = "") -> None:
        results[key] = value
        shown = f"{value:.1f}" if isinstance(value, float) else value
        print(f"RESULT {key} = {shown} {unit}".rstrip(), flush=True)

    if args.nproc is not None:
        return scaling(args, device, name, size, batch, n, repeats)
    data = batches(n, batch, size, device)
    for arch in ARCHS:
        niwt_ips = rate(niwt_step_fn(arch, data, device, amp=True), n * batch, device, repeats)
        plain_ips = rate(plain_step_fn(arch, data, device, amp=True), n * batch, device, repeats)
        report(f"finetune_{arch}_images_per_s", niwt_ips, "images/s")
        report(f"finetune_{arch}_plain_images_per_s", plain_ips, "images/s")
        report(f"finetune_{arch}_ratio", niwt_ips / plain_ips, "(niwt / plain torchvision step; ~1 expected)")
        extract, forward_backward = extraction_fns(arch, data, device)
        ext = rate(extract, n * batch, device, repeats)
        fwb = rate(forward_backward, n * batch, device, repeats)
        report(f"extract_{arch}_images_per_s", ext, "images/s")
        report(f"extract_{arch}_vs_forward_backward", ext / fwb, "(extraction / plain forward+backward rate)")
        its, solver = injection_rate(arch, size, pool, iters, device)
        report(f"inject_{arch}_iterations_per_s", its, f"iterations/s ({solver}, pool {pool})")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # The checks above need only torch/torchvision; the cache check (last) also reads Parquet and
    # params (pyarrow, PyYAML) and is skipped where they are missing.
    loaded = sorted(m for m in ("prefect", "mlflow", "dvc", "yaml", "scipy", "pandas") if m in sys.modules)
    cached = cache_read_rate(size, 16 if args.tiny else 512, batch, device)
    report("cache_read_images_per_s", cached, "images/s (decoded-image cache -> device, evaluation loader)"
           if isinstance(cached, float) else "")
    print(f"# modules beyond torch/torchvision loaded: {loaded or 'none'}")
    print("\n| check | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:.1f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if args.json:
        args.json.write_text(json.dumps({"device": name, **results}, indent=2))
    return 0


def scaling(args: argparse.Namespace, device: torch.device, name: str, size: int, batch: int, n: int,
            repeats: int) -> int:
    """``--nproc``: DDP training throughput at 1 process and at all of them, and the efficiency."""
    nproc = args.nproc or (torch.cuda.device_count() if device.type == "cuda" else 2)
    results = {}
    arch = args.arch
    for k in sorted({1, nproc}):
        results[f"ddp_{arch}_images_per_s_{k}proc"] = ddp_rate(arch, k, n, batch, size, device, repeats)
        print(f"RESULT ddp_{arch}_images_per_s_{k}proc = {results[f'ddp_{arch}_images_per_s_{k}proc']:.1f} "
              f"images/s ({k} x {device.type}, batch {batch} per process)", flush=True)
    if nproc > 1:
        eff = results[f"ddp_{arch}_images_per_s_{nproc}proc"] / (nproc * results[f"ddp_{arch}_images_per_s_1proc"])
        results["ddp_scaling_efficiency"] = eff
        print(f"RESULT ddp_scaling_efficiency = {eff:.2f} ({nproc} processes vs {nproc} x one)", flush=True)
    print("\n| check | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "nproc": nproc, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
