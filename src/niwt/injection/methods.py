"""The adapters that build each injection method's classifier rows (the registry of methods is
:mod:`niwt.injection.registry`; each entry names its builder here).

Every builder answers the same question: given a partition of the classes into ``seen`` (rows
known) and ``unseen`` (rows to build from domain vectors), return the new rows. The stage asks it
twice per method: for the real unseen classes, and for the partition in which the mapping's
held-out seen classes play the unseen role (the older, biased calibration, kept for comparison).
``validate`` asks it once per candidate setting on its class-disjoint validation problem. Each
method's hyperparameters (``Context.hyper``) are the ones ``validate`` chose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from niwt.data.images import ImageSource, make_loader
from niwt.data.tables import ClassTable, SplitTable
from niwt.errors import InputError
from niwt.injection.niwt import inject, resolve_solver
from niwt.injection.registry import METHODS
from niwt.mapping.linear import map_candidates, normalize_domain, predict_importance
from niwt.mapping.store import StoredMap
from niwt.models.networks import NiwtNet, split_at
from niwt.models.training import predict
from niwt.params import InjectParams, MappingParams


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


@dataclass
class Context:
    """What every method may use: the finetuned network, classes, images, the mapping, each
    method's hyperparameters (``hyper``: method -> {name: value}, as ``validate`` chose them), and
    caches shared between partitions and settings (pool activations, the head Jacobian, features)."""

    model: NiwtNet
    cfg: InjectParams
    seed: int
    classes: ClassTable
    splits: SplitTable
    mapping: StoredMap
    image_size: int
    device: torch.device
    images: ImageSource | None = None  # the decoded-image cache; None: decode the image files
    hyper: dict[str, dict[str, float]] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)
    batch_size: int = 128  # images per forward pass (an execution setting: speed only)

    def setting(self, method: str, name: str) -> float:
        """The chosen value of one hyperparameter of ``method`` (``validate``'s choice)."""
        try:
            return float(self.hyper[method][name])
        except KeyError as err:
            raise KeyError(f"no {name!r} chosen for {method!r}: the validation choices lack it") from err

    def seen_rows(self, seen: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        fc = self.model.classifier
        return fc.weight.detach().cpu()[seen], fc.bias.detach().cpu()[seen]

    def domain(self, idx: np.ndarray) -> np.ndarray:
        dom = normalize_domain(torch.as_tensor(self.classes.domain)).numpy().astype(np.float64)
        return dom[idx]

    def cached(self, key: str, compute: Callable[[], object]) -> object:
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


POOL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def pool_folder_images(pool: str) -> list[str]:
    """The images of an ``inject.pool`` folder (recursive, sorted); one clear error if there are none.

    Checked by ``validate`` and ``inject`` before any work."""
    folder = Path(pool)
    if not folder.is_dir():
        raise InputError(f"inject.pool: {pool!r} is neither 'train', 'noise' nor a folder of images "
                         f"({'not a folder' if folder.exists() else 'no such folder'})")
    found = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in POOL_SUFFIXES and p.is_file())
    if not found:
        raise InputError(f"{folder}: inject.pool names this folder but it holds no images ({', '.join(POOL_SUFFIXES)})")
    return found


def pool_activations(trunk: torch.nn.Module, cfg: InjectParams, seed: int, splits: SplitTable, image_size: int,
                     device: torch.device, images: ImageSource | None = None, batch_size: int = 128) -> torch.Tensor:
    """Layer activations of the image pool, computed once (the trunk is never rerun).

    ``train``: ``inject.pool_size`` seen training images (seeded); ``noise``: Gaussian images,
    the original's image-free fallback; a folder: ``pool_size`` of its images (seeded), like the
    original's random natural images (any unlabelled images; never the unseen test images).
    """
    n = cfg.pool_size
    gen = torch.Generator().manual_seed(seed)
    if cfg.pool == "noise":
        batches = torch.randn(n, 3, image_size, image_size, generator=gen).split(batch_size)
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
        return torch.cat([trunk(b.to(device)).float().cpu() for b in batches])


def niwt_rows(ctx: Context, part: Partition) -> Rows:
    """NIWT rows for ``part.unseen`` from the importances the mapping predicts for them."""
    layer, pooling = ctx.mapping.provenance.layer, ctx.mapping.provenance.pooling

    def pool() -> tuple[torch.Tensor, torch.nn.Module, tuple]:
        trunk, head = split_at(ctx.model, layer)
        acts = pool_activations(trunk.to(ctx.device), ctx.cfg, ctx.seed, ctx.splits, ctx.image_size, ctx.device,
                                ctx.images, ctx.batch_size)
        head = head.cpu().eval()
        return acts, head, resolve_solver(head, acts, pooling, ctx.cfg.solver)  # one Jacobian for both runs

    acts, head, (solver, jac) = ctx.cached("niwt_pool", pool)
    m = ctx.mapping
    weight, bias = (m.heldout_weight, m.heldout_bias) if part.heldout else (m.weight, m.bias)
    alpha_hat = predict_importance(weight, bias, ctx.classes.domain[part.unseen])
    result = inject(head, acts, alpha_hat, ctx.seen_rows(part.seen)[0], ctx.cfg, solver, jac,
                    pooling=pooling, seed=ctx.seed, lr=ctx.setting("niwt", "lr"),
                    lambda_=ctx.setting("niwt", "lambda"))
    stats = {"iterations": result.iterations, "final_loss": result.final_loss, "pool_size": int(acts.shape[0]),
             "solver": result.solver}
    return Rows(result.weight, torch.zeros(len(part.unseen)), None, stats)


def _seen_targets(ctx: Context, seen: np.ndarray) -> np.ndarray:
    """Seen [weight | bias] rows, the regression targets of the row-predicting peers."""
    w, b = ctx.seen_rows(seen)
    return torch.cat([w, b[:, None]], 1).double().numpy()


def _split_rows(rows: np.ndarray) -> Rows:
    rows = torch.as_tensor(rows, dtype=torch.float32)
    return Rows(rows[:, :-1], rows[:, -1])


def regression_rescaled_rows(ctx: Context, part: Partition) -> Rows:
    """Ridge regression with the predicted rows rescaled to the mean seen row norm."""
    return regression_rows(ctx, part, rescale=True)


def regression_rows(ctx: Context, part: Partition, rescale: bool = False) -> Rows:
    """Ridge from seen domain vectors to seen [weight | bias] rows (optionally rescaled)."""
    from niwt.peers.regression import fit_ridge, predict_rows, rescale_rows

    targets = _seen_targets(ctx, part.seen)
    alpha = ctx.setting("regression_rescaled" if rescale else "regression", "alpha")
    coef, intercept = fit_ridge(ctx.domain(part.seen), targets, alpha=alpha)
    rows = predict_rows(ctx.domain(part.unseen), coef, intercept)
    return _split_rows(rescale_rows(rows, targets) if rescale else rows)


def icis_rows(ctx: Context, part: Partition) -> Rows:
    """ICIS encoder-decoders trained on seen rows, applied to unseen domain vectors."""
    from niwt.peers.icis import IcisConfig, fit_icis, predict_unseen_rows

    dom = ctx.domain(np.concatenate([part.seen, part.unseen]))
    model = fit_icis(dom, _seen_targets(ctx, part.seen), len(part.seen), IcisConfig(seed=ctx.seed))
    return _split_rows(predict_unseen_rows(model, ctx.domain(part.unseen)))


def eszsl_rows(ctx: Context, part: Partition) -> Rows:
    """ESZSL on penultimate features; rows ``V s_c`` for the unseen AND (replacing) the seen classes,
    with the two ridge strengths ``validate`` chose."""
    from niwt.peers.eszsl import fit_eszsl

    seen, unseen = part.seen, part.unseen
    feats, labels = ctx.train_features()
    keep = np.isin(labels, seen)
    local = np.full(ctx.classes.n_seen + ctx.classes.n_unseen, -1)
    local[seen] = np.arange(len(seen))
    alpha, gamma = ctx.setting("eszsl", "alpha"), ctx.setting("eszsl", "gamma")
    v = fit_eszsl(feats[keep].astype(np.float64), local[labels[keep]], ctx.domain(seen), alpha=alpha, gamma=gamma)
    to_rows = lambda idx: torch.as_tensor(ctx.domain(idx) @ v.T, dtype=torch.float32)  # noqa: E731
    return Rows(to_rows(unseen), torch.zeros(len(unseen)), (to_rows(seen), torch.zeros(len(seen))),
                {"alpha": alpha, "gamma": gamma})


def build_classifier(ctx: Context, method: str, part: Partition) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(len(seen)+len(unseen), D) weight and bias: seen rows (kept, or replaced), then the new rows."""
    spec = METHODS[method]
    rows = globals()[spec.builder](ctx, part)  # a function of this module, named by the registry
    w_s, b_s = rows.seen if spec.replaces_seen else ctx.seen_rows(part.seen)
    return torch.cat([w_s, rows.weight.float()]), torch.cat([b_s, rows.bias.float()]), dict(rows.stats)


def candidates(method: str, cfg: InjectParams, mapping: MappingParams) -> list[dict[str, float]]:
    """Every setting ``validate`` tries for ``method``, in grid order (a tie goes to the first).

    NIWT: the forward map's (lr, weight decay) x its epochs x Adam's lr x lambda; ridge: alpha;
    ESZSL: alpha x gamma, each 10^e for e in ``inject.eszsl_exponents``; ICIS: its fixed
    configuration (one setting).
    """
    if method == "niwt":
        return [{"mapping_lr": h.lr, "mapping_weight_decay": h.weight_decay, "mapping_epochs": e, "lr": lr,
                 "lambda": lam}
                for h in map_candidates(mapping) for e in mapping.candidate_epochs
                for lr in cfg.lr for lam in cfg.lambda_]
    if method in ("regression", "regression_rescaled"):
        return [{"alpha": a} for a in cfg.ridge_alpha]
    if method == "eszsl":
        return [{"alpha": 10.0**i, "gamma": 10.0**j} for i in cfg.eszsl_exponents for j in cfg.eszsl_exponents]
    return [{}]
