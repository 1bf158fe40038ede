"""``inject``: add one classifier row per unseen class, by NIWT and by each peer method.

Writes ``<out>/<method>.pt`` for every method of ``inject.methods``: the finetuned network with
an (S+U)-way classifier. NIWT, ICIS and regression keep the seen rows bit-identical and only
append rows; ESZSL is a compatibility model, so its checkpoint carries rows ``V s_c`` for every
class (seen included) on the same penultimate features.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from niwt.data.images import make_loader
from niwt.data.tables import ClassTable, SplitTable, read_classes, read_splits
from niwt.injection.niwt import InjectConfig, channel_jacobian, inject
from niwt.io.atomic import atomic_path
from niwt.mapping.linear import normalize_domain, predict_importance
from niwt.models.checkpoint import check_classes, load_checkpoint, save_checkpoint
from niwt.models.networks import NiwtNet, split_at
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


def _niwt_rows(model: NiwtNet, p: Params, classes: ClassTable, splits: SplitTable, mapping: dict,
               image_size: int, device: torch.device) -> tuple[torch.Tensor, dict]:
    trunk, head = split_at(model, p.model.layer)
    acts = pool_activations(trunk, p, splits, image_size, device)
    alpha_hat = predict_importance(mapping["weight"], mapping["bias"], classes.domain[classes.n_seen:])
    i = p.inject
    cfg = InjectConfig(lr=i.lr, lambda_=i.lambda_, batch_size=i.batch_size, max_iters=i.max_iters,
                       patience=i.patience, min_improvement=i.min_improvement, init=i.init,
                       pooling=p.extract.pooling, seed=p.base.seed)
    head = head.cpu().eval()
    start = time.perf_counter()
    jac = channel_jacobian(head, acts, cfg.pooling) if i.solver == "jacobian" else None
    result = inject(head, acts, alpha_hat, model.classifier.weight.detach().cpu(), cfg, i.solver, jac)
    stats = {"iterations": result.iterations, "final_loss": result.final_loss,
             "seconds": time.perf_counter() - start, "pool_size": int(acts.shape[0])}
    return result.weight, stats


def _domain(classes: ClassTable) -> np.ndarray:
    return normalize_domain(torch.as_tensor(classes.domain)).numpy().astype(np.float64)


def _regression_rows(model: NiwtNet, classes: ClassTable, rescale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from niwt.peers.regression import fit_ridge, predict_rows, rescale_rows

    dom = _domain(classes)
    fc = model.classifier
    w_seen = torch.cat([fc.weight, fc.bias[:, None]], 1).detach().double().numpy()
    b, bias = fit_ridge(dom[: classes.n_seen], w_seen, alpha=1.0)
    rows = predict_rows(dom[classes.n_seen:], b, bias)
    if rescale:
        rows = rescale_rows(rows, w_seen)
    rows = torch.as_tensor(rows, dtype=torch.float32)
    return rows[:, :-1], rows[:, -1]


def _icis_rows(model: NiwtNet, classes: ClassTable, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from niwt.peers.icis import IcisConfig, fit_icis, predict_unseen_rows

    fc = model.classifier
    w_seen = torch.cat([fc.weight, fc.bias[:, None]], 1).detach().double().numpy()
    dom = _domain(classes)
    icis = fit_icis(dom, w_seen, classes.n_seen, IcisConfig(seed=seed))
    rows = torch.as_tensor(predict_unseen_rows(icis, dom[classes.n_seen:]), dtype=torch.float32)
    return rows[:, :-1], rows[:, -1]


def _eszsl_rows(model: NiwtNet, p: Params, classes: ClassTable, splits: SplitTable, image_size: int,
                device: torch.device) -> tuple[torch.Tensor, dict]:
    """ESZSL on the penultimate features of the seen training images; rows ``V s_c`` for all classes."""
    from niwt.peers.eszsl import fit_eszsl, grid_search_eszsl

    train = splits.select("train")
    loader = make_loader(train.path, train.class_id, image_size, train=False, batch_size=p.evaluate.batch_size)
    feats, labels = predict(model, loader, device, features=True)
    x = feats.astype(np.float64)
    dom = _domain(classes)
    val = held_out_classes(classes.n_seen, p.mapping.n_val_classes, p.base.seed)
    fit = np.setdiff1d(np.arange(classes.n_seen), val)
    local = {c: i for i, c in enumerate(fit)} | {c: i for i, c in enumerate(val)}
    tr, va = np.isin(labels, fit), np.isin(labels, val)
    to_local = np.vectorize(local.get)
    choice = grid_search_eszsl(x[tr], to_local(labels[tr]), dom[fit], x[va], to_local(labels[va]), dom[val])
    v = fit_eszsl(x, labels, dom[: classes.n_seen], alpha=choice.alpha, gamma=choice.gamma)
    rows = torch.as_tensor(dom @ v.T, dtype=torch.float32)  # (C, D): score_c(x) = x . (V s_c)
    return rows, {"alpha": choice.alpha, "gamma": choice.gamma, "val_acc": choice.val_acc}


def run(p: Params, data: Path, checkpoint: Path, mapping_path: Path, out: Path) -> StageResult:
    device = resolve_device(p.base.device)
    classes = read_classes(data / "classes.parquet")
    splits = read_splits(data / "splits.parquet")
    model, meta = load_checkpoint(checkpoint, device)
    check_classes(meta, classes.names, checkpoint)
    mapping = load_mapping(mapping_path)
    if mapping["layer"] and mapping["layer"] != p.model.layer:
        raise ValueError(f"{mapping_path}: mapping was fit on layer {mapping['layer']!r}, model.layer is "
                         f"{p.model.layer!r}; rerun extract and fit_mapping")
    size = meta["image_size"]
    metrics: dict[str, float | int | str] = {}
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for method in p.inject.methods:
            start = time.perf_counter()
            if method == "niwt":
                w_u, stats = _niwt_rows(model, p, classes, splits, mapping, size, device)
                new = model.cpu().extended(w_u, torch.zeros(len(w_u)))
            elif method in ("regression", "regression_rescaled"):
                w_u, b_u = _regression_rows(model.cpu(), classes, rescale=method.endswith("rescaled"))
                new, stats = model.cpu().extended(w_u, b_u), {}
            elif method == "icis":
                w_u, b_u = _icis_rows(model.cpu(), classes, p.base.seed)
                new, stats = model.cpu().extended(w_u, b_u), {}
            else:  # eszsl
                rows, stats = _eszsl_rows(model.to(device), p, classes, splits, size, device)
                new = model.cpu().extended(rows[classes.n_seen:], torch.zeros(classes.n_unseen))
                with torch.no_grad():
                    new.classifier.weight[: classes.n_seen] = rows[: classes.n_seen]
                    new.classifier.bias.zero_()
            stats["seconds"] = time.perf_counter() - start
            metrics.update({f"{method}/{k}": v for k, v in stats.items()})
            save_checkpoint(tmp / f"{method}.pt", new, {**meta, "class_names": classes.names, "method": method})
    return StageResult(metrics)
