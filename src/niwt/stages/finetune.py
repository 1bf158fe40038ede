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
from torch import nn

from niwt.data.cache import open_cache
from niwt.data.images import check_images_exist, make_loader
from niwt.data.tables import read_tables
from niwt.errors import InputError
from niwt.evaluation.plots import draw_history
from niwt.io.atomic import atomic_path
from niwt.models.checkpoint import safe_load, save_checkpoint
from niwt.models.finetuning import initial_model, make_optimizer, phases
from niwt.models.networks import ModelError
from niwt.models.training import evaluate, resolve_device, seed_everything, train_one_epoch
from niwt.params import Params, Runtime, section_dict
from niwt.stages import StageResult


def _fingerprint(p: Params, data: Path) -> str:
    """Identity of a training run: resume only a state made by the same params and data."""
    blob = json.dumps([p.base.seed, section_dict(p.model), section_dict(p.finetune)], sort_keys=True)
    digest = hashlib.sha256(blob.encode())
    digest.update((data / "splits.parquet").read_bytes())
    return digest.hexdigest()


def run(p: Params, rt: Runtime, data: Path, out: Path, history: Path, cache: Path | None = None) -> StageResult:
    history_path = Path(history)  # the per-epoch list below is `history`
    seed_everything(p.base.seed)
    device = resolve_device(rt.device)
    classes, splits = read_tables(data)
    used = splits.select("train", "val", "test_seen")
    check_images_exist(used.path, used.image_id, data / "splits.parquet")  # not after hours of training
    model = initial_model(p.model, classes.names[: classes.n_seen])
    model.to(device)
    if p.finetune.channels_last:
        model.to(memory_format=torch.channels_last)
    train, val, test = splits.select("train"), splits.select("val"), splits.select("test_seen")
    size, bs, nw = p.model.image_size, p.finetune.batch_size, rt.workers
    pin = device.type == "cuda"
    images = open_cache(cache, data / "splits.parquet", size)
    train_loader = make_loader(train.path, train.class_id, size, train=True, batch_size=bs, num_workers=nw,
                               seed=p.base.seed, pin_memory=pin, cache=images)
    val_loader = make_loader(val.path, val.class_id, size, train=False, batch_size=bs, num_workers=nw,
                             pin_memory=pin, cache=images)
    criterion = nn.CrossEntropyLoss(label_smoothing=p.finetune.label_smoothing)

    resume_path = out.parent / (out.name + ".resume")
    fingerprint = _fingerprint(p, data)
    state = _load_resume(resume_path, fingerprint) if p.finetune.mode != "none" else None
    history: list[dict] = state["history"] if state else []
    best_acc, best_state = (state["best_acc"], state["best_state"]) if state else (-1.0, None)
    for phase_idx, (phase, epochs, lr) in enumerate(phases(p.finetune)):
        opt, sched = make_optimizer(model, phase, lr, p.finetune, epochs * len(train_loader))
        start = 1
        if state and state["phase_idx"] == phase_idx:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            _set_rng(state["rng"], train_loader.generator)  # same shuffles and augmentations as unbroken
            start = state["epoch"] + 1
        elif state and state["phase_idx"] > phase_idx:
            continue
        for epoch in range(start, epochs + 1):
            stats = train_one_epoch(model, criterion, opt, train_loader, device, epoch, amp=p.finetune.amp,
                                    channels_last=p.finetune.channels_last, scheduler=sched, progress=rt.progress,
                                    frozen=model.body if phase == "head" else None)
            val_acc = evaluate(model, val_loader, device, amp=p.finetune.amp)["acc"]
            history.append({"epoch": len(history) + 1, "phase": phase, "train_loss": stats["loss"],
                            "train_acc": stats["acc"], "val_acc": val_acc})
            print(f"[finetune] {phase} epoch {epoch}/{epochs}: loss {stats['loss']:.4f} "
                  f"train acc {stats['acc']:.3f} val acc {val_acc:.3f}", flush=True)
            if val_acc > best_acc:
                best_acc = val_acc
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            _save_resume(resume_path, fingerprint, phase_idx, epoch, model, opt, sched, history, best_acc, best_state,
                         _get_rng(train_loader.generator))

    if p.finetune.mode == "none":  # the given classifier exactly as it is: its own head is the seen head
        best_acc = evaluate(model, val_loader, device, amp=p.finetune.amp)["acc"]
    else:
        model.load_state_dict(best_state)
    test_loader = make_loader(test.path, test.class_id, size, train=False, batch_size=bs, num_workers=nw,
                              pin_memory=pin, cache=images)
    test_metrics = evaluate(model, test_loader, device, amp=p.finetune.amp)
    metrics = {"val_acc": best_acc, "test_seen_acc": test_metrics["acc"], "test_seen_top1": test_metrics["top1"],
               "epochs_trained": len(history)}
    meta = {"arch": p.model.arch, "class_names": classes.names[: classes.n_seen], "n_seen": classes.n_seen,
            "image_size": size, "width": p.model.width, "hidden": p.model.hidden,
            "metrics": metrics}
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
    return StageResult(metrics, [history_path, png], steps=steps, cleanup=[resume_path])


def _load_resume(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = safe_load(path, "resume file")
    except ModelError as err:
        print(f"[finetune] ignoring {path}, training from the start: {err}", flush=True)
        return None
    if not isinstance(state, dict) or "rng" not in state:
        print(f"[finetune] ignoring {path}: not a resume file of this version", flush=True)
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"[finetune] ignoring {path}: made with other params or data", flush=True)
        return None
    print(f"[finetune] resuming from {path} (phase {state['phase_idx']}, epoch {state['epoch']})", flush=True)
    return state


def _save_resume(path: Path, fingerprint: str, phase_idx: int, epoch: int, model: nn.Module, opt, sched,
                 history: list[dict], best_acc: float, best_state: dict, rng: dict) -> None:
    state = {"fingerprint": fingerprint, "phase_idx": phase_idx, "epoch": epoch, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history,
             "best_acc": best_acc, "best_state": best_state, "rng": rng}
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (InputError, OSError, RuntimeError) as err:
        # The resume state is optional: failing to save it (disk full) must never end training.
        print(f"[finetune] warning: could not save the resume state after epoch {epoch} to {path} "
              f"({(str(err).splitlines() or [''])[0]}); training continues, but a kill now restarts from the "
              "last saved epoch", flush=True)


def _get_rng(loader_generator: torch.Generator) -> dict:
    """Random state a resumed run needs to continue exactly: the global torch RNG (augmentations,
    dropout), the loader's shuffling generator and, on CUDA, the device generators."""
    rng = {"torch": torch.get_rng_state(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng(rng: dict, loader_generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    loader_generator.set_state(rng["loader"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "phase", "train_loss", "train_acc", "val_acc"])
        writer.writeheader()
        writer.writerows(history)
