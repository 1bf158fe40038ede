"""``finetune_validation``: the validation backbone of the class-disjoint protocol (Xian et al.).

Some seen classes are set aside as validation classes (xlsa17's ``val_loc`` classes where the data
has them with ``validate.classes: auto``, else ``validate.fraction`` of them, at least
``validate.min_classes``, drawn by ``base.seed``), and a
network is fine-tuned exactly as ``finetune`` trains (same ``model`` and ``finetune`` params;
``validate.finetune_epochs`` may shorten it) on the other seen classes only, so it has never seen a
validation class. ``validate`` rebuilds the chain on it. A separate stage so that a sweep of
``inject`` or ``mapping`` values reruns only ``validate``, never this training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from niwt.data.cache import open_cache
from niwt.data.features import feature_width, features_digest
from niwt.data.images import check_images_exist, make_loader
from niwt.data.tables import ClassTable, held_out_classes, read_tables, subproblem, validation_count
from niwt.distributed.ddp import World, launched_world, process_group, rank_device, rank_log, seed_rank
from niwt.errors import InputError
from niwt.models.checkpoint import CheckpointMeta, read_class_names, save_checkpoint
from niwt.models.finetuning import Resume, initial_model, located, train_phases
from niwt.models.training import resolve_device, seed_everything
from niwt.params import Params, Runtime, section_dict
from niwt.stages import StageResult


def validation_classes(classes: ClassTable, p: Params) -> tuple[np.ndarray, str]:
    """(sorted seen-class ids, where they come from): the dataset's own validation classes
    (xlsa17 ``val_loc``; CUB's from ``sent_splits.mat``) with ``validate.classes: auto`` where it has
    them, else a seeded draw of ``validation_count`` classes (the same draw as ``fit_mapping``'s
    held-out classes for the same count and seed)."""
    own = np.flatnonzero(np.isin(np.arange(classes.n_seen), classes.validation)) \
        if classes.validation is not None else np.array([], dtype=np.int64)
    if p.validate.classes == "auto" and 0 < len(own) < classes.n_seen:
        if classes.n_seen - len(own) < 2:  # a 1-class "classifier" trains to 100 % and validates nothing
            raise InputError(f"the dataset's own validation classes ({len(own)} of its {classes.n_seen} seen "
                             f"classes) leave {classes.n_seen - len(own)} class to train the validation backbone "
                             "on, and a classifier needs 2: set validate.classes: seeded (validate.fraction of "
                             "the seen classes, always leaving 2)")
        return own, "dataset"
    count = validation_count(classes.n_seen, p.validate.fraction, p.validate.min_classes)
    return held_out_classes(classes.n_seen, count, p.base.seed, "validate.fraction"), "seeded"


def run(p: Params, rt: Runtime, data: Path, out: Path, cache: Path | None = None) -> StageResult:
    """Train on the fitting classes, then (rank 0 of a data-parallel run alone) write the backbone."""
    world = launched_world()
    device = rank_device(resolve_device(rt.device), world)
    with process_group(world, device):
        return _run(p, rt, data, out, cache, world, device)


def _run(p: Params, rt: Runtime, data: Path, out: Path, cache: Path | None, world: World,
         device: torch.device) -> StageResult:
    log = rank_log("finetune_validation", world)
    classes, splits = read_tables(data, domain=False)  # the domain vectors: not read, not a dep
    used = splits.select("train", "val")
    check_images_exist(used.path, used.image_id, data / "splits.parquet")
    held, source = validation_classes(classes, p)
    fit = np.setdiff1d(np.arange(classes.n_seen), held)
    sub, sub_splits = subproblem(classes, splits, fit, held)
    log(f"{len(held)} validation classes ({source}): {[classes.names[i] for i in held]}")
    seed_everything(p.base.seed)
    width = feature_width(splits.path)  # precomputed features: the mlp's input width
    model = initial_model(located(p.model, out), sub.names[: sub.n_seen], allow_extra=True, in_features=width)
    model.to(device)
    if p.finetune.channels_last:
        model.to(memory_format=torch.channels_last)
    seed_rank(p.base.seed, world)
    train, val = sub_splits.select("train"), sub_splits.select("val")
    size, bs, pin = p.model.image_size, p.finetune.batch_size, device.type == "cuda"
    images = open_cache(cache, data / "splits.parquet", size)
    train_loader = make_loader(train.path, train.class_id, size, train=True, batch_size=bs, num_workers=rt.workers,
                               seed=p.base.seed, pin_memory=pin, cache=images, world=world)
    val_loader = make_loader(val.path, val.class_id, size, train=False, batch_size=bs, num_workers=rt.workers,
                             pin_memory=pin, cache=images, world=world)
    epochs = p.validate.finetune_epochs or p.finetune.epochs
    resume = Resume(out.parent / (out.name + ".resume"), _run_key(p, data, held, epochs, world))
    val_acc, history = train_phases(model, p.finetune, train_loader, val_loader, device, epochs=epochs, resume=resume,
                                    progress=rt.progress and world.main, log=log, world=world)
    if not world.main:
        return StageResult({})
    # A network that saw the validation classes makes the protocol as biased as the old one: say so
    # in the file. That is the case for finetune.mode: none (the user's classifier as trained), and
    # for any user weights file whose classifier has rows of validation classes (its body was
    # trained on their images, whatever rows are dropped).
    held_names = [classes.names[i] for i in held]
    user_rows = (read_class_names(located(p.model, out).class_names)
                 if p.model.weights not in ("none", "imagenet") else [])
    disjoint = p.finetune.mode != "none" and not set(held_names) & set(user_rows)
    if not disjoint:
        log("warning: this backbone has seen the validation classes (finetune.mode: none, "
              "or model.weights trained on them): validate's choices will be biased like the held-out-seen "
              "rule; validation.json records class_disjoint: false")
    metrics = {"val_acc": val_acc, "epochs_trained": len(history), "n_classes": len(held),
               "n_fit_classes": len(fit), "class_disjoint": int(disjoint), "world_size": world.size}
    meta = CheckpointMeta(p.model.arch, tuple(sub.names[: sub.n_seen]), sub.n_seen, size, p.model.width,
                          p.model.hidden, metrics, validation_classes=tuple(held_names), validation_source=source,
                          class_disjoint=disjoint, in_features=width)
    save_checkpoint(out, model.cpu(), meta)
    return StageResult(metrics, steps={"val_acc": [(int(h["epoch"]), float(h["val_acc"])) for h in history]},
                       cleanup=[resume.path])


def _run_key(p: Params, data: Path, held: np.ndarray, epochs: int, world: World) -> str:
    """Identity of the training run: resume only a state made by the same params, data, validation
    classes, epochs and number of processes."""
    blob = json.dumps([p.base.seed, section_dict(p.model), section_dict(p.finetune), held.tolist(), epochs]
                      + ([world.size] if world.distributed else []), sort_keys=True)
    digest = hashlib.sha256(blob.encode())
    digest.update((data / "splits.parquet").read_bytes())
    digest.update(features_digest(data).encode())  # feature rows: the table alone does not say which features
    return digest.hexdigest()
