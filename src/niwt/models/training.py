"""Seen-class training loop in the shape of torchvision's classification reference."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from niwt.distributed.ddp import SINGLE, World, gather_arrays, global_mean, reduce_sums
from niwt.evaluation.metrics import mean_per_class_accuracy


class _Plain:
    """What a progress bar offers, without one (for machines without tqdm: the GPU check)."""

    def __init__(self, iterable) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **_: object) -> None:
        pass


def _bar(iterable, progress: bool, desc: str):
    """A tqdm bar (disabled when not ``progress``), or a plain wrapper where tqdm is not installed.

    The disabled tqdm bar is kept rather than plain iteration on purpose: the pipeline's numbers
    were seen to change in the last bits (then amplified by training) when the loop's objects,
    and so the allocator's addresses, differed; the committed baseline was made with it.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(iterable)
    return tqdm(iterable, desc=desc, unit="batch", leave=False, disable=not progress)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from niwt.errors import ParamsError

        raise ParamsError("NIWT_DEVICE is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU bf16 is slower on most laptops)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, epoch: int, *, amp: bool = False,
                    channels_last: bool = False, scheduler=None, progress: bool = True,
                    frozen: nn.Module | None = None, world: World = SINGLE) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and (sample) accuracy.

    ``frozen``: a part of ``model`` that stays in eval mode (a backbone trained only through its head:
    its batch-norm running statistics and dropout must not move either). ``world``: data-parallel
    training (``model`` in DDP, ``loader`` yielding this rank's slices): each rank's loss is scaled so
    the averaged gradient is the global batch's mean, and the returned numbers cover every rank.
    """
    model.train()
    if frozen is not None:
        frozen.eval()
    total, correct, loss_sum, step = 0, 0, 0.0, 0
    bar = _bar(loader, progress, desc=f"epoch {epoch}")
    for images, labels, _ in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last and images.ndim == 4:  # feature vectors have no memory format
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if world.distributed:
            sizes = getattr(getattr(loader, "batch_sampler", None), "sizes", None)  # RankSlices: the real sizes
            global_mean(loss, len(labels), sizes[step] if sizes else len(labels) * world.size, world).backward()
            step += 1
        else:
            loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        loss_sum += loss.item() * len(labels)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    if world.distributed:
        loss_sum, correct, total = reduce_sums([loss_sum, correct, total], device, world)
    return {"loss": loss_sum / total, "acc": correct / total}


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
            features: bool = False, progress: bool = False, desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Logits (or penultimate features) and labels for every sample of ``loader``, in order."""
    model.eval()
    outs, labels = [], []
    for images, y, _ in _bar(loader, progress, desc=desc):
        with autocast(device, amp):
            out = model.features(images.to(device)) if features else model(images.to(device))
        outs.append(out.float().cpu())
        labels.append(y)
    return torch.cat(outs).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
             world: World = SINGLE) -> dict[str, float]:
    """Per-class mean top-1 (the ZSL literature's accuracy) and plain top-1 over ``loader``
    (``world``: over every rank's share, each rank's ``loader`` holding its own)."""
    if len(loader.dataset) == 0:  # a rank's share of fewer images than ranks
        pred, labels = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    else:
        logits, labels = predict(model, loader, device, amp=amp)
        pred = logits.argmax(1)
    pred, labels = gather_arrays((pred, labels), world)
    return {"acc": mean_per_class_accuracy(labels, pred), "top1": float((pred == labels).mean())}
