"""Image loading: a torch Dataset over the split table, transforms, and an integrity check."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from torchvision import transforms as T
from tqdm.auto import tqdm

from niwt.data.features import feature_store, input_files, is_feature_table
from niwt.data.raw import DatasetError
from niwt.distributed.ddp import SINGLE, RankSlices, World, worker_init


class ImageSource(Protocol):
    """Where a loader's images come from instead of their files (the decoded-image cache,
    :class:`niwt.data.cache.ImageCache`)."""

    def dataset(self, paths: Sequence[str], labels: np.ndarray, transform: T.Compose, image_size: int,
                train: bool) -> Dataset: ...

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_transform(image_size: int, train: bool) -> T.Compose:
    """torchvision-reference style transforms.

    Small images (the synthetic default) are trained at native size with pad-and-crop and
    flips; 224-px ImageNet backbones use RandomResizedCrop for training and resize-256 +
    centre-crop-224 for evaluation, as torchvision's references and NIWT's ResNet path.
    """
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if image_size < 128:
        aug = [T.Resize((image_size, image_size))]
        if train:
            aug += [T.RandomCrop(image_size, padding=image_size // 16, padding_mode="reflect"),
                    T.RandomHorizontalFlip()]
        return T.Compose(aug + norm)
    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + norm)
    return T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size)] + norm)


# Image.MAX_IMAGE_PIXELS (~89 Mpx) guards against decompression bombs: PIL warns above it and raises
# above twice it. Both are a bad image here (never a traceback, never gigabytes decoded): a real
# benchmark image is far smaller.
_BOMB_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def _bomb_reason(err: BaseException) -> str:
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb: {err}"
    return str(err)


@contextlib.contextmanager
def _bombs_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


class ImageTable(Dataset):
    """(image tensor, label, index) for each row of a split table."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, transform: T.Compose) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform(read_rgb(self.paths[i])), self.labels[i], i


def read_rgb(path: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode one image as RGB; ``draft``: let JPEG decode at a reduced size no smaller than this
    (libjpeg's DCT scaling, PIL's ``draft``; other formats ignore it). An unreadable image is a
    :class:`DatasetError` naming the file."""
    return read_rgb_sized(path, draft)[0]


def read_rgb_sized(path: str, draft: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`read_rgb` and the file's own ``(width, height)``, which a ``draft`` decode reduces: the
    decoded-image cache places crops relative to the image as stored in the file."""
    with _readable(path), Image.open(path) as img:
        size = img.size
        if draft is not None:
            img.draft("RGB", draft)
        return img.convert("RGB"), size


def read_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image from its header alone (nothing decoded)."""
    with _readable(path), Image.open(path) as img:
        return img.size


class UnreadableImage(DatasetError):
    """An image of the split table that no longer decodes; ``path`` and ``reason`` let a reader of
    other images (an ``inject.pool`` folder, which prepare never saw) say it in its own words."""

    def __init__(self, message: str, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path, self.reason = path, reason


@contextlib.contextmanager
def _readable(path: str):
    """An unreadable image (or a decompression bomb) as one :class:`UnreadableImage` naming the file."""
    try:
        with _bombs_are_errors():
            yield
    except _BOMB_ERRORS as err:
        raise UnreadableImage(f"{path}: cannot read image ({_bomb_reason(err)}); it changed after "
                              "prepare, which decodes every image: restore it, or rerun prepare "
                              "(data.bad_images: skip drops unreadable images)", path, _bomb_reason(err)) from err


def make_loader(paths: Sequence[str], labels: np.ndarray, image_size: int, *, train: bool,
                batch_size: int, num_workers: int = 0, seed: int = 0, pin_memory: bool | None = None,
                cache: ImageSource | None = None, world: World = SINGLE) -> DataLoader:
    """A deterministic DataLoader (seeded shuffling; no shuffling for evaluation).

    With ``cache`` (:func:`niwt.data.cache.open_cache`) the images come from the decoded-image cache
    instead of their files, with the same transforms (the same tensors below 128 px); feature rows
    (:mod:`niwt.data.features`) come from their memory map, untransformed. Pinned memory
    when CUDA is there (``pin_memory`` None), and with worker processes, persistent workers that
    each prefetch 4 batches.

    ``world`` (data-parallel training, :mod:`niwt.distributed.ddp`): a training loader yields this
    rank's slice of the global batches the single-process loader yields (``batch_size`` is the global
    batch); an evaluation loader reads every ``world.size``-th image from ``world.rank`` on.
    """
    if world.distributed and not train:
        paths, labels = list(paths)[world.rank::world.size], np.asarray(labels)[world.rank::world.size]
    gen = torch.Generator().manual_seed(seed)
    transform = make_transform(image_size, train)
    num_workers = num_workers if can_fork_workers() else 0
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra = {"persistent_workers": True, "prefetch_factor": 4} if num_workers > 0 else {}
    if cache is None and is_feature_table(paths):  # precomputed features (data.name: xlsa17)
        cache = feature_store(paths)
    if cache is None:
        dataset, collate = ImageTable(paths, labels, transform), None
    else:
        dataset, collate = cache.dataset(paths, labels, transform, image_size, train), batched
    if world.distributed and train:  # the single-process batches, drawn from the same generator, sliced
        slices = RankSlices(BatchSampler(RandomSampler(dataset, generator=gen), batch_size, False), world)
        return DataLoader(dataset, batch_sampler=slices, generator=gen, num_workers=num_workers,
                          pin_memory=pin_memory, collate_fn=collate, worker_init_fn=worker_init(world), **extra)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=gen, num_workers=num_workers,
                      pin_memory=pin_memory, collate_fn=collate, **extra)


def can_fork_workers() -> bool:
    """False inside a daemonic process (a Dask worker, a multiprocessing pool's worker), which may not
    start children: loader workers and the cache's build processes then run in-process instead of
    failing ("daemonic processes are not allowed to have children")."""
    return not multiprocessing.current_process().daemon


def batched(batch):
    """The collate function of datasets whose ``__getitems__`` returns a whole batch already."""
    return batch


def find_bad_images(paths: Sequence[str], progress: bool = True) -> list[tuple[str, str]]:
    """Fully decode every image; return ``(path, reason)`` for missing, corrupt or truncated ones.

    A full decode (not ``Image.verify``) is needed: a truncated JPEG passes header checks and
    fails only mid-training, hours in.
    """
    bad = []
    for path in tqdm(paths, desc="check images", unit="img", disable=not progress, mininterval=1.0):
        try:
            with _bombs_are_errors(), Image.open(path) as img:
                img.load()
        except FileNotFoundError:
            bad.append((path, "missing file"))
        except _BOMB_ERRORS as err:
            bad.append((path, f"corrupt ({_bomb_reason(err)})"))
    return bad


def check_images_exist(paths: Sequence[str], image_ids: Sequence[int], source: str | Path) -> None:
    """Fail before any work when files named in a split table are gone (moved, deleted, unmounted).

    Only existence is checked here (cheap); ``prepare`` fully decodes every image once.
    """
    files = input_files(paths)  # a feature row (data.name: xlsa17) needs its features file
    missing = [i for i, p in enumerate(files) if not os.path.isfile(p)]
    if missing:
        examples = "; ".join(f"image_id {int(image_ids[i])}: {paths[i]}" for i in missing[:5])
        raise DatasetError(f"{source}: {len(missing)} of {len(paths)} image files named there are missing, "
                           f"e.g. {examples} (moved or deleted since prepare? restore them or rerun prepare)")
