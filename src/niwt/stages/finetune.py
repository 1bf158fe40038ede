"""``finetune``: train the classifier on seen classes only.

Modes (``finetune.mode``): ``fixed`` trains only the new seen head on a frozen backbone; ``full``
trains the head alone for ``head_epochs`` and then the whole network at ``lr_full`` (the paper's
"finetuned" base network); ``none`` keeps the classifier given by ``model.weights`` exactly as it is
(its rows put in seen-class order) and only measures it. The best epoch by validation accuracy is
kept. After every epoch the training state is saved next to the output (``<out>.resume``), so a
killed run continues where it stopped; the file is removed once the checkpoint and the stage's
metrics are written.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import torch

from niwt.data.cache import open_cache
from niwt.data.features import feature_width, features_digest
from niwt.data.images import check_images_exist, make_loader
from niwt.data.tables import read_tables
from niwt.distributed.ddp import World, launched_world, process_group, rank_device, rank_log, seed_rank
from niwt.evaluation.plots import draw_history
from niwt.io.atomic import atomic_path
from niwt.models.checkpoint import CheckpointMeta, save_checkpoint
from niwt.models.finetuning import Resume, initial_model, located, train_phases
from niwt.models.training import evaluate, resolve_device, seed_everything
from niwt.params import Params, Runtime, section_dict
from niwt.stages import StageResult


def _run_key(p: Params, data: Path, world: World) -> str:
    """Identity of a training run: resume only a state made by the same params and data (and number
    of processes: the state holds one random state per rank)."""
    blob = json.dumps([p.base.seed, section_dict(p.model), section_dict(p.finetune)]
                      + ([world.size] if world.distributed else []), sort_keys=True)
    digest = hashlib.sha256(blob.encode())
    digest.update((data / "splits.parquet").read_bytes())
    digest.update(features_digest(data).encode())  # feature rows: the table alone does not say which features
    return digest.hexdigest()


def run(p: Params, rt: Runtime, data: Path, out: Path, history: Path, cache: Path | None = None) -> StageResult:
    """Train, then (rank 0 of a data-parallel run alone) write the checkpoint and the history."""
    world = launched_world()
    device = rank_device(resolve_device(rt.device), world)
    with process_group(world, device):
        return _run(p, rt, data, out, history, cache, world, device)


def _run(p: Params, rt: Runtime, data: Path, out: Path, history: Path, cache: Path | None, world: World,
         device: torch.device) -> StageResult:
    history_path = Path(history)  # the per-epoch list below is `history`
    seed_everything(p.base.seed)
    classes, splits = read_tables(data, domain=False)  # the domain vectors: not read, not a dep
    used = splits.select("train", "val", "test_seen")
    check_images_exist(used.path, used.image_id, data / "splits.parquet")  # not after hours of training
    width = feature_width(splits.path)  # precomputed features: the mlp's input width
    model = initial_model(located(p.model, out), classes.names[: classes.n_seen], in_features=width)
    model.to(device)
    if p.finetune.channels_last:
        model.to(memory_format=torch.channels_last)
    seed_rank(p.base.seed, world)
    train, val, test = splits.select("train"), splits.select("val"), splits.select("test_seen")
    size, bs, nw = p.model.image_size, p.finetune.batch_size, rt.workers
    pin = device.type == "cuda"
    images = open_cache(cache, data / "splits.parquet", size)
    train_loader = make_loader(train.path, train.class_id, size, train=True, batch_size=bs, num_workers=nw,
                               seed=p.base.seed, pin_memory=pin, cache=images, world=world)
    val_loader = make_loader(val.path, val.class_id, size, train=False, batch_size=bs, num_workers=nw,
                             pin_memory=pin, cache=images, world=world)
    resume = Resume(out.parent / (out.name + ".resume"), _run_key(p, data, world))
    best_acc, history = train_phases(model, p.finetune, train_loader, val_loader, device, resume=resume,
                                     progress=rt.progress and world.main, log=rank_log("finetune", world),
                                     world=world)
    if not world.main:
        return StageResult({})
    test_loader = make_loader(test.path, test.class_id, size, train=False, batch_size=bs, num_workers=nw,
                              pin_memory=pin, cache=images)
    test_metrics = evaluate(model, test_loader, device, amp=p.finetune.amp)
    metrics = {"val_acc": best_acc, "test_seen_acc": test_metrics["acc"], "test_seen_top1": test_metrics["top1"],
               "epochs_trained": len(history), "world_size": world.size}
    meta = CheckpointMeta(p.model.arch, tuple(classes.names[: classes.n_seen]), classes.n_seen, size,
                          p.model.width, p.model.hidden, metrics, in_features=width)
    # Both outputs or neither: the history is staged first and moved into place only after the
    # checkpoint was written (a failure in either leaves the previous pair untouched).
    png = history_path.with_suffix(".png")
    with atomic_path(history_path) as staged_history, atomic_path(png) as staged_png:
        _write_history(staged_history, history)
        draw_history(staged_png, history, {"loss": ["train_loss"], "accuracy": ["train_acc", "val_acc"]},
                     "finetune: training curves")
        save_checkpoint(out, model.cpu(), meta)
    # The resume file goes only after the CLI has written the stats (StageResult.cleanup): if
    # anything after this point fails, a rerun resumes at the last epoch instead of retraining.
    steps = {k: [(int(h["epoch"]), float(h[k])) for h in history] for k in ("train_loss", "train_acc", "val_acc")}
    return StageResult(metrics, [history_path, png], steps=steps, cleanup=[resume.path])


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "phase", "train_loss", "train_acc", "val_acc"])
        writer.writeheader()
        writer.writerows(history)
