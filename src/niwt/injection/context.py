"""What an injection method is given and what it answers: :class:`Context`, :class:`Partition`, :class:`Rows`.

Every method (one module of :mod:`niwt.injection.methods`) answers the same question: given a
partition of the classes into ``seen`` (rows known) and ``unseen`` (rows to build from domain
vectors), return the new rows. ``inject`` asks it twice per method: for the real unseen classes,
and for the partition in which the mapping's held-out seen classes play the unseen role (the
older, biased calibration, kept for comparison). ``validate`` asks it once per candidate setting on
its class-disjoint validation problem. The image pool that NIWT reads is here too, so a method
that wants it reuses it (and its cache) instead of rebuilding it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from niwt.data.images import ImageSource, UnreadableImage, make_loader
from niwt.data.tables import ClassTable, SplitTable
from niwt.errors import InputError
from niwt.mapping.linear import normalize_domain
from niwt.mapping.store import StoredMap
from niwt.models.networks import NiwtNet
from niwt.models.training import predict
from niwt.params import InjectParams


@dataclass(frozen=True)
class Partition:
    """Which classes keep their rows and which get new ones; ``heldout``: the validation partition."""

    seen: np.ndarray
    unseen: np.ndarray
    heldout: bool = False


@dataclass(frozen=True)
class Rows:
    """A method's answer: new rows for ``unseen``, and for ``seen`` when the method replaces them."""

    weight: torch.Tensor  # (U, D)
    bias: torch.Tensor  # (U,)
    seen: tuple[torch.Tensor, torch.Tensor] | None = None
    stats: dict[str, float | int | str] = field(default_factory=dict)

    @classmethod
    def from_array(cls, rows: np.ndarray) -> Rows:
        """Rows from a (U, D+1) array of ``[weight | bias]`` (what the row-regressing peers predict)."""
        rows = torch.as_tensor(rows, dtype=torch.float32)
        return cls(rows[:, :-1], rows[:, -1])


@dataclass
class Context:
    """What every method may use: the finetuned network, classes, images, the mapping, each
    method's hyperparameters (``hyper``: method -> {name: value}, as ``validate`` chose them), and
    caches shared between partitions, settings and methods (pool activations, the head Jacobian,
    features). ``method``: the method being built, whose hyperparameters :meth:`setting` reads
    (set by :func:`niwt.injection.methods.build_classifier`)."""

    model: NiwtNet
    cfg: InjectParams
    seed: int
    classes: ClassTable
    splits: SplitTable
    mapping: StoredMap | None
    image_size: int
    device: torch.device
    images: ImageSource | None = None  # the decoded-image cache; None: decode the image files
    hyper: dict[str, dict[str, float]] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)
    batch_size: int = 128  # images per forward pass (an execution setting: speed only)
    method: str = ""

    def for_method(self, method: str) -> Context:
        """This context as ``method`` sees it (the same caches)."""
        return dataclasses.replace(self, method=method)

    def setting(self, name: str) -> float:
        """The chosen value of one hyperparameter of the method being built (``validate``'s choice)."""
        try:
            return float(self.hyper[self.method][name])
        except KeyError as err:
            raise KeyError(f"no {name!r} chosen for {self.method!r}: the validation choices lack it") from err

    def seen_rows(self, seen: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The finetuned classifier's (weight, bias) rows of ``seen``."""
        fc = self.model.classifier
        return fc.weight.detach().cpu()[seen], fc.bias.detach().cpu()[seen]

    def seen_targets(self, seen: np.ndarray) -> np.ndarray:
        """Seen [weight | bias] rows as float64, the regression targets of the row-predicting peers."""
        w, b = self.seen_rows(seen)
        return torch.cat([w, b[:, None]], 1).double().numpy()

    def domain(self, idx: np.ndarray) -> np.ndarray:
        """L2-normalised domain vectors of the classes ``idx`` (float64)."""
        dom = normalize_domain(torch.as_tensor(self.classes.domain)).numpy().astype(np.float64)
        return dom[idx]

    def cached(self, key: str, compute: Callable[[], object]) -> object:
        """``compute()`` once per key, shared by every partition, setting and method of this run."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def train_features(self) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features of the seen training images (computed once, for ESZSL)."""
        def compute() -> tuple[np.ndarray, np.ndarray]:
            train = self.splits.select("train")
            loader = make_loader(train.path, train.class_id, self.image_size, train=False,
                                 batch_size=self.batch_size, cache=self.images)
            return predict(self.model.to(self.device), loader, self.device, features=True)
        return self.cached("train_features", compute)

    def seen_training(self, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The training features of the classes ``seen`` (N, D) and their labels as positions in
        ``seen`` (N,): what a compatibility model (DEVISE, ALE, SJE, SAE) trains on."""
        feats, labels = self.train_features()
        keep = np.isin(labels, seen)
        local = np.full(self.classes.n_seen + self.classes.n_unseen, -1)
        local[seen] = np.arange(len(seen))
        return feats[keep], local[labels[keep]]


POOL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def pool_folder_images(pool: str) -> list[str]:
    """The images of an ``inject.pool`` folder (recursive, sorted); one clear error if there are none.

    Checked by ``validate`` and ``inject`` before any work."""
    from niwt.io.project import resolve_root

    folder = resolve_root(pool, Path.cwd())  # as the fingerprint stage digests it: under the project root
    if not folder.is_dir():
        raise InputError(f"inject.pool: {pool!r} is neither 'train', 'noise' nor a folder of images "
                         f"({'not a folder' if folder.exists() else 'no such folder'})")
    found = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in POOL_SUFFIXES and p.is_file())
    if not found:
        raise InputError(f"{folder}: inject.pool names this folder but it holds no images ({', '.join(POOL_SUFFIXES)})")
    return found


def pool_activations(trunk: torch.nn.Module, cfg: InjectParams, seed: int, splits: SplitTable, image_size: int,
                     device: torch.device, images: ImageSource | None = None, batch_size: int = 128,
                     in_features: int | None = None) -> torch.Tensor:
    """Layer activations of the image pool, computed once (the trunk is never rerun).

    ``train``: ``inject.pool_size`` seen training images (seeded); ``noise``: Gaussian images,
    the original's image-free fallback; a folder: ``pool_size`` of its images (seeded), like the
    original's random natural images (any unlabelled images; never the unseen test images).
    ``in_features``: the network reads feature vectors of this width (xlsa17), not images: noise is
    Gaussian vectors, and a folder of images has nothing to feed it.
    """
    n = cfg.pool_size
    gen = torch.Generator().manual_seed(seed)
    if in_features and cfg.pool not in ("train", "noise"):
        raise InputError(f"inject.pool: {cfg.pool!r} is a folder of images, but the network reads precomputed "
                         "features (data.name: xlsa17); use train or noise")
    if cfg.pool == "noise":
        shape = (n, in_features) if in_features else (n, 3, image_size, image_size)
        batches = torch.randn(*shape, generator=gen).split(batch_size)
    else:
        if cfg.pool == "train":
            train = splits.select("train")
            paths, labels = train.path, train.class_id
        else:  # not images of the split table: never in the cache
            paths, images = pool_folder_images(cfg.pool), None
            labels = np.zeros(len(paths), dtype=np.int64)
        pick = torch.randperm(len(paths), generator=gen)[:n].sort().values.numpy()
        loader = make_loader([paths[i] for i in pick], labels[pick], image_size, train=False,
                             batch_size=batch_size, cache=images)
        batches = (images for images, _, _ in loader)
    trunk.eval()
    with torch.inference_mode():
        try:
            return torch.cat([trunk(b.to(device)).float().cpu() for b in batches])
        except UnreadableImage as err:
            if cfg.pool in ("train", "noise"):
                raise
            # prepare never decodes a pool folder: "it changed after prepare" would send the user the wrong way
            raise InputError(f"{err.path}: cannot read image ({err.reason}); inject.pool: {cfg.pool!r} may hold "
                             "only images: remove or convert this file") from None
