"""Helpers shared by the benchmark scripts (not part of the ``niwt`` package).

Every script prints one ``RATIO <name> = <value> (target <op> <bound>: met|missed)`` line per
headline number (the smoke test greps for them), a markdown table of all metrics at the end, and
optionally writes everything as JSON (``--json``). Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / "models" / "finetuned.pt"
PREPARED = REPO / "data" / "prepared"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, finishes in seconds (smoke test)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write all measurements here")
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation noise from torch.func
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""), flush=True)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of one call of ``fn`` (CUDA-synchronised) and its result."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """Best (minimum) wall time of each function over ``repeats`` rounds, run round-robin.

    Round-robin spreads drift (thermal, other load) over all variants alike; the minimum is the
    estimator least disturbed by other processes on a shared machine (load only ever adds time).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device)[0])
    return {name: min(ts) for name, ts in times.items()}


class Report:
    """Collects (metric, target, measured) rows; prints RATIO lines and the final table."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, str]] = []
        self.values: dict[str, Any] = {}
        self.load_start = os.getloadavg()[0]

    def info(self, name: str, value: Any, fmt: str = "{:.4g}", unit: str = "") -> None:
        self.values[name] = value
        text = fmt.format(value) if isinstance(value, (int, float)) else str(value)
        self.rows.append((name, "", f"{text}{unit}"))
        print(f"  {name}: {text}{unit}", flush=True)

    def ratio(self, name: str, value: float, op: str | None = None, bound: float | None = None,
              fmt: str = "{:.3g}", suffix: str = "", note: str = "") -> None:
        """A headline number; ``op`` is ``<=`` or ``>=`` against ``bound`` (informational only).

        ``name`` is the stable key (JSON, smoke test); ``note`` is shown after it in parentheses.
        """
        self.values[name] = value
        text = fmt.format(value) + suffix
        if op is None:
            target, verdict = "", ""
        else:
            met = value <= bound if op == "<=" else value >= bound
            target = f"{op} {bound:g}{suffix}"
            verdict = f" (target {target}: {'met' if met else 'missed'})"
        label = f"{name} ({note})" if note else name
        self.rows.append((label, target, text))
        print(f"RATIO {label} = {text}{verdict}", flush=True)

    def finish(self, path: Path | None, extra: dict[str, Any] | None = None) -> None:
        load = (self.load_start, os.getloadavg()[0])
        self.info("load average (1 min) at start / end", f"{load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} CPUs")
        if max(load) > (os.cpu_count() or 1):
            print("# WARNING: the machine was busy with other work; wall-clock timings are noisy", flush=True)
        print(f"\n### {self.title}\n")
        print("| metric | target | measured |")
        print("|---|---|---|")
        for name, target, measured in self.rows:
            print(f"| {name} | {target or '-'} | {measured} |")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"title": self.title, **self.values, **(extra or {})}, indent=2,
                                       default=str))


def load_model(device: torch.device, use_checkpoint: bool = True):
    """The finetuned checkpoint when present (and wanted), else a random-init small_cnn (40 classes).

    Returns:
        (model in eval mode on ``device``, layer name, image size, description)
    """
    from niwt.config.load import load_params
    from niwt.models.checkpoint import load_checkpoint
    from niwt.models.networks import importance_layer, small_cnn

    if use_checkpoint and CHECKPOINT.is_file():
        model, meta = load_checkpoint(CHECKPOINT, device)
        # the finetuned checkpoint carries no layer: the params' (auto: the architecture's default)
        layer = importance_layer(model, meta.arch, load_params(REPO / "params.yaml").extract.layer)
        return model, layer, meta.image_size, f"{CHECKPOINT.relative_to(REPO)} ({meta.arch})"
    torch.manual_seed(0)
    model = small_cnn(40, width=32, hidden=256, image_size=64).to(device).eval()
    return model, "body.block4", 64, "random-init small_cnn(40, width 32, hidden 256, 64 px)"


def load_images(n: int, image_size: int, seed: int, real: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` seen training images (normalised, as the extract stage feeds them) when
    ``data/prepared`` exists, else standard-normal tensors; labels in ``[0, 40)``."""
    gen = torch.Generator().manual_seed(seed)
    if real and (PREPARED / "splits.parquet").is_file():
        from niwt.data.images import make_loader
        from niwt.data.tables import read_splits

        cwd = os.getcwd()
        os.chdir(REPO)  # stored image paths are relative to the repository root
        try:
            train = read_splits(PREPARED / "splits.parquet").select("train")
            pick = torch.randperm(len(train), generator=gen)[:n].sort().values.numpy()
            loader = make_loader([train.path[i] for i in pick], train.class_id[pick], image_size, train=False,
                                 batch_size=256)
            batches = [(x, y) for x, y, _ in loader]
        finally:
            os.chdir(cwd)
        images = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches])
        if len(images) == n:
            return images, labels, f"{n} seen training images from data/prepared"
    images = torch.randn(n, 3, image_size, image_size, generator=gen)
    labels = torch.randint(0, 40, (n,), generator=gen)
    return images, labels, f"{n} random N(0, 1) tensors"
