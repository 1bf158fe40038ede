"""``inject``: add one classifier row per unseen class, by NIWT and by each peer method.

Writes ``<out>/<method>.pt`` for every method of ``inject.methods``: the finetuned network with
an (S+U)-way classifier; and the same network as plain PyTorch, ``<out>/<method>.pth`` (the state
dict in torchvision's layout) with ``<out>/<method>.classes.txt`` (one class per output row).
NIWT, ICIS and regression keep the seen rows bit-identical and only append rows; ESZSL is a
compatibility model, so its checkpoint carries rows ``V s_c`` for every class (seen included) on
the same penultimate features. A method whose calibrated reading ``validate`` chose under a setting
of its own (NIWT) also carries that reading's classifier in its checkpoint (``calibrated_rows``);
the network itself is the method as shipped. The importance layer and pooling come from the mapping (which
read them from the importances), and go into each checkpoint.

With ``NIWT_RUNNER=dask`` each method (both partitions) is one task on a Dask worker
(:func:`_build_on_dask`); this process still writes every checkpoint.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from niwt.data.cache import open_cache
from niwt.data.features import is_feature_table
from niwt.data.images import check_images_exist
from niwt.data.tables import DOMAIN_FILE, read_tables
from niwt.distributed.dask import absolute, absolute_pool, dask_client, map_jobs, run_cache
from niwt.injection.context import Context, Partition
from niwt.injection.methods import build_classifier, check_pool, needs_images, setting_names
from niwt.io.atomic import atomic_path
from niwt.io.choices import read_choices
from niwt.mapping.store import load_map
from niwt.models.checkpoint import check_classes, export_plain, load_checkpoint, save_checkpoint
from niwt.models.networks import ModelError, NiwtNet
from niwt.models.training import resolve_device
from niwt.params import Params, Runtime
from niwt.stages import StageResult


def run(p: Params, rt: Runtime, data: Path, model: Path, mapping: Path, validation: Path, out: Path,
        cache: Path | None = None) -> StageResult:
    """Write one injected checkpoint per method, with the hyperparameters ``validate`` chose.

    Each checkpoint also carries the older, biased calibration classifier, for comparison only:
    the same method run on a partition in which the mapping's held-out seen classes play the
    unseen role (but the finetuned network saw their images). ``evaluate`` reports the gamma it
    picks beside the class-disjoint one of ``validate``.
    """
    device = resolve_device(rt.device)
    classes, splits = read_tables(data)
    if needs_images(p.inject.methods):
        train = splits.select("train")
        check_images_exist(train.path, train.image_id, data / "splits.parquet")
    check_pool(p.inject.methods, p.inject, features=is_feature_table(splits.path))
    checkpoint, mapping_path = Path(model), Path(mapping)
    model, meta = load_checkpoint(checkpoint, device)
    check_classes(meta, classes.names[: classes.n_seen], checkpoint, exact=True, what="seen classes")
    choices = read_choices(validation)
    choices.require(p.inject.methods, {m: setting_names(m, p.inject) for m in p.inject.methods})
    stored = load_map(mapping_path)
    _check_mapping(stored, mapping_path, classes, data)
    images = open_cache(absolute(cache), data / "splits.parquet", meta.image_size)  # read by Dask workers too
    ctx = Context(model, p.inject, p.base.seed, classes, splits, stored, meta.image_size, device, images,
                  hyper=choices.hyper, batch_size=rt.inference_batch("features"))
    seen, unseen = np.arange(classes.n_seen), np.arange(classes.n_seen, len(classes.names))
    held = stored.provenance.val_classes
    main, heldout = Partition(seen, unseen), Partition(np.setdiff1d(seen, held), held, heldout=True)

    # the calibrated reading's own setting, where validate chose one apart from the rows as shipped
    separate = {m: choices.calibrated(m).hyper for m in p.inject.methods if choices.separate(m)}
    if rt.runner == "dask":
        built = _build_on_dask(ctx, p.inject.methods, main, heldout, separate, rt)
    else:
        built = (_build(ctx, method, main, heldout, separate.get(method)) for method in p.inject.methods)
    metrics: dict[str, float | int | str] = {}
    with atomic_path(Path(out)) as tmp:
        tmp.mkdir()
        for method, (weight, bias, stats, cal_w, cal_b, own) in zip(p.inject.methods, built, strict=True):
            metrics.update({f"{method}/{k}": v for k, v in {**choices.hyper[method], **stats}.items()})
            rows = None if own is None else {"weight": own[0], "bias": own[1], "setting": separate[method],
                                             "calibration_weight": own[2], "calibration_bias": own[3]}
            if rows is not None:
                metrics.update({f"{method}/calibrated_{k}": v for k, v in separate[method].items()})
            new = NiwtNet(model.body, torch.nn.Linear(weight.shape[1], weight.shape[0])).cpu()
            with torch.no_grad():
                new.classifier.weight.copy_(weight)
                new.classifier.bias.copy_(bias)
            calibration = {"seen": torch.as_tensor(heldout.seen), "unseen": torch.as_tensor(held),
                           "weight": cal_w, "bias": cal_b}
            record = meta.replace(class_names=tuple(classes.names), method=method, layer=stored.provenance.layer,
                                  pooling=stored.provenance.pooling, calibration=calibration, calibrated_rows=rows)
            save_checkpoint(tmp / f"{method}.pt", new, record)
            # usable without niwt: torchvision's get_model(arch, num_classes=N).load_state_dict(...)
            export_plain(tmp / f"{method}.pth", new, meta.arch, classes.names)
    return StageResult(metrics)


_Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # the calibrated reading's, both partitions
_Built = tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor, torch.Tensor, _Rows | None]


def _build(ctx: Context, method: str, main: Partition, heldout: Partition,
           calibrated: dict[str, float] | None = None) -> _Built:
    """One method's (weight, bias, stats) on the real partition, then its (weight, bias) on the
    held-out one (the biased calibration), and, given the calibrated reading's own setting
    (``calibrated``), the same two under it; sharing the caches of ``ctx``."""
    start = time.perf_counter()
    weight, bias, stats = build_classifier(ctx, method, main)
    stats["seconds"] = time.perf_counter() - start
    cal_w, cal_b, _ = build_classifier(ctx, method, heldout)
    own = None
    if calibrated is not None:
        other = replace(ctx, hyper={**ctx.hyper, method: calibrated})
        own = (*build_classifier(other, method, main)[:2], *build_classifier(other, method, heldout)[:2])
    return weight, bias, stats, cal_w, cal_b, own


@dataclass(frozen=True)
class _MethodJob:
    """One method, both partitions: a Dask task (``token``: the run, keying the worker's caches)."""

    method: str
    token: str
    calibrated: dict[str, float] | None = None  # the calibrated reading's own setting, if any


def _method_rows(job: _MethodJob, ctx: Context, main: Partition, heldout: Partition) -> _Built:
    """:func:`_build` on a Dask worker: the pool activations, head Jacobian and features are
    computed once per worker process and run (:func:`~niwt.distributed.dask.run_cache`); CPU tensors back."""
    weight, bias, stats, cal_w, cal_b, own = _build(replace(ctx, _cache=run_cache(job.token)), job.method, main,
                                                    heldout, job.calibrated)
    own = None if own is None else tuple(t.cpu() for t in own)
    return weight.cpu(), bias.cpu(), stats, cal_w.cpu(), cal_b.cpu(), own


def _build_on_dask(ctx: Context, names: tuple[str, ...] | list[str], main: Partition, heldout: Partition,
                   separate: dict[str, dict[str, float]], rt: Runtime) -> list[_Built]:
    """Every method's rows built on Dask workers (``rt.runner: dask``), one task per method, the
    context (network, tables, map) sent to each worker once; in the order of ``names``.

    A method is the smallest job: NIWT optimises all unseen classes in one batched problem (one
    seeded pair shuffle, minibatches that mix classes, one stopping rule on the joint loss), so a
    share of its classes would not give the same rows."""
    token = uuid.uuid4().hex
    with dask_client(rt.dask_address, rt.dask_workers) as client:
        return map_jobs(client, _method_rows, [_MethodJob(m, token, separate.get(m)) for m in names],
                        (replace(ctx, cfg=absolute_pool(ctx.cfg)), main, heldout), rt.progress, "inject methods")


def _check_mapping(mapping, path: Path, classes, data: Path) -> None:
    """The mapping must fit this dataset's domain vectors and seen classes."""
    dim = classes.domain.shape[1]
    for name, w in (("weight", mapping.weight), ("heldout_weight", mapping.heldout_weight)):
        if w is None or w.ndim != 2 or w.shape[1] != dim:
            got = f"{w.shape[1]}-dimensional" if w is not None and w.ndim == 2 else f"{name} of another shape"
            raise ModelError(f"{path}: mapping takes {got} domain vectors, {data / DOMAIN_FILE} has "
                             f"{dim}-dimensional ones ({classes.domain_kind}); rerun fit_mapping")
    held = mapping.provenance.val_classes
    if len(held) and (int(held.min()) < 0 or int(held.max()) >= classes.n_seen):
        raise ModelError(f"{path}: held-out classes {held.tolist()} are not seen classes of this "
                         "dataset; rerun fit_mapping")
