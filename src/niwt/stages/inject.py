"""``inject``: add one classifier row per unseen class, by NIWT and by each peer method.

Writes ``<out>/<method>.pt`` for every method of ``inject.methods``: the finetuned network with
an (S+U)-way classifier. NIWT, ICIS and regression keep the seen rows bit-identical and only
append rows; ESZSL is a compatibility model, so its checkpoint carries rows ``V s_c`` for every
class (seen included) on the same penultimate features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from niwt.data.images import check_images_exist, make_loader
from niwt.data.tables import ClassTable, SplitTable, read_tables
from niwt.injection.niwt import InjectConfig, inject, resolve_solver
from niwt.io.atomic import atomic_path
from niwt.mapping.linear import normalize_domain, predict_importance
from niwt.models.checkpoint import check_classes, load_checkpoint, save_checkpoint
from niwt.models.networks import ModelError, NiwtNet, split_at
from niwt.params import Params
from niwt.stages import StageResult
from niwt.stages.fit_mapping import held_out_classes, load_mapping
from niwt.training import predict, resolve_device


def pool_activations(trunk: torch.nn.Module, p: Params, splits: SplitTable, image_size: int,
                     device: torch.device) -> torch.Tensor:
    """Layer activations of the image pool, computed once (the trunk is never rerun).

    ``train``: ``inject.pool_size`` seen training images (seeded); ``noise``: Gaussian images,
    the original's image-free fallback.
    """
    n = p.inject.pool_size
    gen = torch.Generator().manual_seed(p.base.seed)
    if p.inject.pool == "noise":
        batches = torch.randn(n, 3, image_size, image_size, generator=gen).split(p.evaluate.batch_size)
    else:
        train = splits.select("train")
        pick = torch.randperm(len(train), generator=gen)[:n].sort().values.numpy()
        loader = make_loader([train.path[i] for i in pick], train.class_id[pick], image_size, train=False,
                             batch_size=p.evaluate.batch_size)
        batches = (images for images, _, _ in loader)
    trunk.eval()
    with torch.inference_mode():
        return torch.cat([trunk(b.to(device)).float().cpu() for b in batches])


@dataclass
class Context:
    """What every method may use: the finetuned network, classes, pool activations, mapping."""

    model: NiwtNet
    p: Params
    classes: ClassTable
    splits: SplitTable
    mapping: dict
    image_size: int
    device: torch.device
    cache: dict = field(default_factory=dict)

    def seen_rows(self, seen: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        fc = self.model.classifier
        return fc.weight.detach().cpu()[seen], fc.bias.detach().cpu()[seen]

    def domain(self, idx: np.ndarray) -> np.ndarray:
        dom = normalize_domain(torch.as_tensor(self.classes.domain)).numpy().astype(np.float64)
        return dom[idx]

    def train_features(self) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features of the seen training images (computed once, for ESZSL)."""
        if "train_features" not in self.cache:
            train = self.splits.select("train")
            loader = make_loader(train.path, train.class_id, self.image_size, train=False,
                                 batch_size=self.p.evaluate.batch_size)
            self.cache["train_features"] = predict(self.model.to(self.device), loader, self.device, features=True)
        return self.cache["train_features"]


def niwt_rows(ctx: Context, seen: np.ndarray, unseen: np.ndarray, heldout: bool) -> tuple[torch.Tensor, ...]:
    """NIWT rows for ``unseen`` from the importances predicted by the mapping."""
    p = ctx.p
    if "acts" not in ctx.cache:
        trunk, head = split_at(ctx.model, p.model.layer)
        ctx.cache["acts"] = pool_activations(trunk.to(ctx.device), p, ctx.splits, ctx.image_size, ctx.device)
        ctx.cache["head"] = head.cpu().eval()
    acts, head = ctx.cache["acts"], ctx.cache["head"]
    key = ("heldout_weight", "heldout_bias") if heldout else ("weight", "bias")
    alpha_hat = predict_importance(ctx.mapping[key[0]], ctx.mapping[key[1]], ctx.classes.domain[unseen])
    i = p.inject
    cfg = InjectConfig(lr=i.lr, lambda_=i.lambda_, batch_size=i.batch_size, max_iters=i.max_iters,
                       patience=i.patience, min_improvement=i.min_improvement, init=i.init,
                       pooling=p.extract.pooling, seed=p.base.seed)
    if "solver" not in ctx.cache:  # one Jacobian for the pool, shared by both NIWT runs
        ctx.cache["solver"] = resolve_solver(head, acts, cfg.pooling, i.solver)
    solver, jac = ctx.cache["solver"]
    result = inject(head, acts, alpha_hat, ctx.seen_rows(seen)[0], cfg, solver, jac)
    stats = {"iterations": result.iterations, "final_loss": result.final_loss, "pool_size": int(acts.shape[0]),
             "solver": result.solver}
    return result.weight, torch.zeros(len(unseen)), None, stats


def regression_rows(ctx: Context, seen: np.ndarray, unseen: np.ndarray, rescale: bool) -> tuple[torch.Tensor, ...]:
    """Ridge from seen domain vectors to seen [weight | bias] rows (optionally rescaled)."""
    from niwt.peers.regression import fit_ridge, predict_rows, rescale_rows

    w, b = ctx.seen_rows(seen)
    targets = torch.cat([w, b[:, None]], 1).double().numpy()
    coef, intercept = fit_ridge(ctx.domain(seen), targets, alpha=1.0)
    rows = predict_rows(ctx.domain(unseen), coef, intercept)
    if rescale:
        rows = rescale_rows(rows, targets)
    rows = torch.as_tensor(rows, dtype=torch.float32)
    return rows[:, :-1], rows[:, -1], None, {}


def icis_rows(ctx: Context, seen: np.ndarray, unseen: np.ndarray) -> tuple[torch.Tensor, ...]:
    """ICIS encoder-decoders trained on seen rows, applied to unseen domain vectors."""
    from niwt.peers.icis import IcisConfig, fit_icis, predict_unseen_rows

    w, b = ctx.seen_rows(seen)
    targets = torch.cat([w, b[:, None]], 1).double().numpy()
    dom = ctx.domain(np.concatenate([seen, unseen]))
    model = fit_icis(dom, targets, len(seen), IcisConfig(seed=ctx.p.base.seed))
    rows = torch.as_tensor(predict_unseen_rows(model, ctx.domain(unseen)), dtype=torch.float32)
    return rows[:, :-1], rows[:, -1], None, {}


def eszsl_rows(ctx: Context, seen: np.ndarray, unseen: np.ndarray) -> tuple[torch.Tensor, ...]:
    """ESZSL on penultimate features; returns rows ``V s_c`` for unseen AND (replacing) seen classes.

    Its two ridge strengths are chosen once, on held-out seen classes (ZSL accuracy), and reused
    for the calibration partition.
    """
    from niwt.peers.eszsl import fit_eszsl, grid_search_eszsl

    feats, labels = ctx.train_features()
    keep = np.isin(labels, seen)
    x, y = feats[keep].astype(np.float64), labels[keep]
    local = np.full(ctx.classes.n_seen + ctx.classes.n_unseen, -1)
    local[seen] = np.arange(len(seen))
    stats = {}
    if "eszsl_choice" not in ctx.cache:
        val = held_out_classes(len(seen), ctx.p.mapping.n_val_classes, ctx.p.base.seed)
        fit = np.setdiff1d(np.arange(len(seen)), val)
        ly = local[y]
        tr, va = np.isin(ly, fit), np.isin(ly, val)
        remap = np.full(len(seen), -1)
        remap[fit], remap[val] = np.arange(len(fit)), np.arange(len(val))
        dom = ctx.domain(seen)
        ctx.cache["eszsl_choice"] = grid_search_eszsl(x[tr], remap[ly[tr]], dom[fit], x[va], remap[ly[va]], dom[val])
        choice = ctx.cache["eszsl_choice"]
        stats = {"alpha": choice.alpha, "gamma": choice.gamma, "val_acc": choice.val_acc}
    choice = ctx.cache["eszsl_choice"]
    v = fit_eszsl(x, local[y], ctx.domain(seen), alpha=choice.alpha, gamma=choice.gamma)
    to_rows = lambda idx: torch.as_tensor(ctx.domain(idx) @ v.T, dtype=torch.float32)  # noqa: E731
    return to_rows(unseen), torch.zeros(len(unseen)), (to_rows(seen), torch.zeros(len(seen))), stats


METHODS = {
    "niwt": lambda ctx, s, u, h: niwt_rows(ctx, s, u, h),
    "regression": lambda ctx, s, u, h: regression_rows(ctx, s, u, rescale=False),
    "regression_rescaled": lambda ctx, s, u, h: regression_rows(ctx, s, u, rescale=True),
    "icis": lambda ctx, s, u, h: icis_rows(ctx, s, u),
    "eszsl": lambda ctx, s, u, h: eszsl_rows(ctx, s, u),
}


def build_classifier(ctx: Context, method: str, seen: np.ndarray, unseen: np.ndarray,
                     heldout: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(len(seen)+len(unseen), D) weight and bias: seen rows (kept, or replaced by ESZSL), then new rows."""
    w_u, b_u, replaced, stats = METHODS[method](ctx, seen, unseen, heldout)
    w_s, b_s = replaced if replaced is not None else ctx.seen_rows(seen)
    return torch.cat([w_s, w_u.float()]), torch.cat([b_s, b_u.float()]), stats


def run(p: Params, data: Path, checkpoint: Path, mapping_path: Path, out: Path) -> StageResult:
    """Write one injected checkpoint per method, each with its calibration classifier.

    The calibration classifier is the same method run on a validation partition: the mapping's
    held-out seen classes play the unseen role (their finetuned rows are set aside and rebuilt by
    the method from their domain vectors). ``evaluate`` picks the calibrated-stacking gamma on
    the seen val images with it, so no test image ever informs gamma.
    """
    device = resolve_device(p.base.device)
    classes, splits = read_tables(data)
    train = splits.select("train")
    check_images_exist(train.path, train.image_id, data / "splits.parquet")
    model, meta = load_checkpoint(checkpoint, device)
    check_classes(meta, classes.names[: classes.n_seen], checkpoint, exact=True, what="seen classes")
    mapping = load_mapping(mapping_path)
    if mapping["layer"] and mapping["layer"] != p.model.layer:
        raise ModelError(f"{mapping_path}: mapping was fit on layer {mapping['layer']!r}, model.layer is "
                         f"{p.model.layer!r}; rerun extract and fit_mapping")
    dim = classes.domain.shape[1]
    for key in ("weight", "heldout_weight"):
        w = mapping[key]
        if w.ndim != 2 or w.shape[1] != dim:
            got = f"{w.shape[1]}-dimensional" if w.ndim == 2 else f"shape-{tuple(w.shape)}"
            raise ModelError(f"{mapping_path}: mapping takes {got} domain vectors, {data / 'classes.parquet'} has "
                             f"{dim}-dimensional ones ({classes.domain_kind}); rerun fit_mapping")
    held = mapping["val_classes"]
    if held.numel() and (int(held.min()) < 0 or int(held.max()) >= classes.n_seen):
        raise ModelError(f"{mapping_path}: held-out classes {held.tolist()} are not seen classes of this "
                         "dataset; rerun fit_mapping")
    ctx = Context(model, p, classes, splits, mapping, meta["image_size"], device)
    seen, unseen = np.arange(classes.n_seen), np.arange(classes.n_seen, len(classes.names))
    held = mapping["val_classes"].numpy()
    cal_seen = np.setdiff1d(seen, held)
    metrics: dict[str, float | int | str] = {}
    with atomic_path(Path(out)) as tmp:
        tmp.mkdir()
        for method in p.inject.methods:
            start = time.perf_counter()
            weight, bias, stats = build_classifier(ctx, method, seen, unseen, heldout=False)
            stats["seconds"] = time.perf_counter() - start
            cal_w, cal_b, _ = build_classifier(ctx, method, cal_seen, held, heldout=True)
            metrics.update({f"{method}/{k}": v for k, v in stats.items()})
            new = NiwtNet(model.body, torch.nn.Linear(weight.shape[1], weight.shape[0])).cpu()
            with torch.no_grad():
                new.classifier.weight.copy_(weight)
                new.classifier.bias.copy_(bias)
            calibration = {"seen": torch.as_tensor(cal_seen), "unseen": torch.as_tensor(held),
                           "weight": cal_w, "bias": cal_b}
            save_checkpoint(tmp / f"{method}.pt", new, {**meta, "class_names": classes.names, "method": method,
                                                       "calibration": calibration})
    return StageResult(metrics)
