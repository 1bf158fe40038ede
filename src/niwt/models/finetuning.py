"""Fine-tuning a classifier on a set of seen classes: the start network, the phases, the optimiser.

Shared by ``finetune`` (the final network, on every seen class) and ``finetune_validation`` (the
validation backbone, on the seen classes minus the validation classes): one loop,
:func:`train_phases`, with its resume state, so both train the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from niwt.distributed.ddp import SINGLE, World, gather_objects, sync_buffers, wrap
from niwt.errors import InputError
from niwt.io.atomic import atomic_path
from niwt.models.checkpoint import load_state_dict_file, read_class_names, safe_load
from niwt.models.networks import WEIGHTS_CHOICES, ModelError, NiwtNet, build_model
from niwt.models.training import evaluate, train_one_epoch
from niwt.params import FinetuneParams, ModelParams


def phases(f: FinetuneParams, epochs: int | None = None) -> list[tuple[str, int, float]]:
    """(phase, epochs, lr) in order: head-only first, then the whole network (none for ``none``).
    ``epochs`` overrides ``f.epochs`` (the validation backbone's shorter run)."""
    n = f.epochs if epochs is None else epochs
    if f.mode == "none":
        return []
    if f.mode == "fixed":
        return [("head", n, f.lr)]
    return [(name, k, lr) for name, k, lr in (("head", f.head_epochs, f.lr), ("full", n, f.lr_full)) if k > 0]


def located(m: ModelParams, anchor: Path) -> ModelParams:
    """``model.weights`` and ``model.class_names`` as absolute paths: a relative one is under the project
    root of ``anchor`` (a stage output), as ``data.root`` is, so ``dvc exp run --temp/--queue`` (whose copy
    lacks the user's untracked weights file) and ``niwt`` typed in another directory read the same file."""
    from dataclasses import replace

    from niwt.io.project import resolve_root

    weights = m.weights if m.weights in WEIGHTS_CHOICES else str(resolve_root(m.weights, anchor))
    names = str(resolve_root(m.class_names, anchor)) if m.class_names else ""
    return replace(m, weights=weights, class_names=names)


def initial_model(m: ModelParams, seen: list[str], allow_extra: bool = False,
                  in_features: int | None = None) -> NiwtNet:
    """The network to start from: ``model.arch`` with ``model.weights`` (none, imagenet, or the user's
    state_dict, whose classifier rows ``model.class_names`` names; they are put in the order of
    ``seen``, which changes no prediction). ``allow_extra``: the weights file may have rows of
    classes outside ``seen`` (the validation backbone keeps only its rows of ``seen``).
    ``in_features``: the width of the data's feature vectors (precomputed features), else None."""
    if in_features is not None and m.arch != "mlp":
        raise ModelError(f"the data are precomputed feature vectors ({in_features}-d, data.name: xlsa17): "
                         f"model.arch {m.arch!r} reads images; set model.arch: mlp")
    common = {"width": m.width, "hidden": m.hidden, "image_size": m.image_size, "in_features": in_features}
    if m.weights in ("none", "imagenet"):
        return build_model(m.arch, len(seen), weights=m.weights, **common)
    names = read_class_names(m.class_names)
    missing, extra = [c for c in seen if c not in names], [c for c in names if c not in set(seen)]
    if missing or (extra and not allow_extra):
        raise ModelError(f"{m.class_names}: the classifier's classes do not match the dataset's seen classes: "
                         f"{len(missing)} seen classes have no row ({missing[:10]}), {len(extra)} rows name no "
                         f"seen class ({extra[:10]})")
    model = build_model(m.arch, len(names), state_dict=load_state_dict_file(m.weights), source=m.weights, **common)
    order = torch.as_tensor([names.index(c) for c in seen])
    with torch.no_grad():
        weight, bias = model.classifier.weight[order].clone(), model.classifier.bias[order].clone()
        if extra:  # a smaller head: only the rows of ``seen``
            model.classifier = torch.nn.Linear(weight.shape[1], len(seen))
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
    return model


def make_optimizer(model: NiwtNet, phase: str, lr: float, f: FinetuneParams, steps: int):
    """AdamW with a one-cycle schedule; the body is frozen (``requires_grad``) in the head phase."""
    params = model.classifier.parameters() if phase == "head" else model.parameters()
    for prm in model.body.parameters():
        prm.requires_grad_(phase == "full")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=f.weight_decay)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.2)


@dataclass(frozen=True)
class Resume:
    """Where a training run keeps its state after every epoch, and the identity (``key``: a digest of
    the params and data) a saved state must carry to be continued."""

    path: Path
    key: str


def train_phases(model: NiwtNet, f: FinetuneParams, train_loader, val_loader, device: torch.device, *,
                 epochs: int | None = None, resume: Resume | None = None, progress: bool = False,
                 log: Callable[[str], None] = print, world: World = SINGLE) -> tuple[float, list[dict]]:
    """The one training loop of both fine-tuning stages: the phases of :func:`phases` (head only,
    then the whole network), the weights of the best epoch by val accuracy loaded into ``model``;
    returns (best val accuracy, per-epoch history).

    With ``resume`` the state (weights, optimiser, schedule, history, best epoch, random state) is
    saved after every epoch and a matching saved state is continued, with the same shuffles and
    augmentations as an unbroken run. ``finetune.mode: none`` trains nothing: the given classifier
    as it is, measured on val.

    ``world``: one of several data-parallel processes (:mod:`niwt.distributed.ddp`): the loaders are
    this rank's (slices of the global batches, a share of val), the model is wrapped in DDP per phase
    (after the phase froze what it freezes), buffers are synchronised before every evaluation, and
    only rank 0 saves the resume state, which holds every rank's random state.
    """
    check_finite_weights(model)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=f.label_smoothing)
    state = load_resume(resume, log) if resume is not None and f.mode != "none" else None
    agree_on_resume(state, world)
    history: list[dict] = state["history"] if state else []
    best_acc, best_state = (state["best_acc"], state["best_state"]) if state else (-1.0, None)
    for phase_idx, (phase, n, lr) in enumerate(phases(f, epochs)):
        opt, sched = make_optimizer(model, phase, lr, f, n * len(train_loader))
        start = 1
        if state and state["phase_idx"] == phase_idx:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            rng = state["rng_ranks"][world.rank] if world.distributed else state["rng"]
            set_rng(rng, train_loader.generator)  # same shuffles and augmentations as unbroken
            start = state["epoch"] + 1
        elif state and state["phase_idx"] > phase_idx:
            continue
        net = wrap(model, device, world)
        for epoch in range(start, n + 1):
            stats = train_one_epoch(net, criterion, opt, train_loader, device, epoch, amp=f.amp,
                                    channels_last=f.channels_last, scheduler=sched, progress=progress,
                                    frozen=model.body if phase == "head" else None, world=world)
            if not math.isfinite(stats["loss"]):  # stop here: a NaN network would flow into every later stage
                raise TrainingDiverged(f"finetune: the training loss is {stats['loss']} at {phase} epoch {epoch} "
                                       f"(learning rate {lr:g}): the weights diverged; lower finetune."
                                       f"{'lr' if phase == 'head' else 'lr_full'}; nothing was written")
            sync_buffers(model, world)
            val_acc = evaluate(model, val_loader, device, amp=f.amp, world=world)["acc"]
            history.append({"epoch": len(history) + 1, "phase": phase, "train_loss": stats["loss"],
                            "train_acc": stats["acc"], "val_acc": val_acc})
            log(f"{phase} epoch {epoch}/{n}: loss {stats['loss']:.4f} train acc {stats['acc']:.3f} "
                f"val acc {val_acc:.3f}")
            if val_acc > best_acc:
                best_acc = val_acc
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if resume is not None:
                rngs = gather_objects(get_rng(train_loader.generator), world)
                if world.main:
                    save_resume(resume, {"phase_idx": phase_idx, "epoch": epoch, "model": model.state_dict(),
                                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                         "history": history, "best_acc": best_acc, "best_state": best_state,
                                         "rng": rngs[0], "rng_ranks": rngs}, log)
    if f.mode == "none":  # the given classifier exactly as it is: its own head is the seen head
        return evaluate(model, val_loader, device, amp=f.amp, world=world)["acc"], history
    model.load_state_dict(best_state)
    return best_acc, history


def agree_on_resume(state: dict | None, world: World) -> None:
    """Every rank must continue from the same saved epoch (or all start over): a rank that read
    another file, or none (a node-local output directory), would train other phases in lockstep
    collectives. One clear error on every rank instead."""
    if not world.distributed:
        return
    where = gather_objects(None if state is None else (state["phase_idx"], state["epoch"]), world)
    if len(set(where)) > 1:
        raise InputError(f"the ranks read different resume states {where} (phase, epoch per rank): the output "
                         "directory must be the same shared directory for every rank")


class TrainingDiverged(InputError):
    """The training loss became NaN or infinite: the stage stops before writing a broken network."""


def check_finite_weights(model: NiwtNet) -> None:
    """The start network (``model.weights``, or a fresh init) must hold only finite numbers: a NaN in a
    classifier row would give NaN scores to every later stage while each of them exits 0."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"model.weights: NaN or infinite values in {bad[:5]}{' and more' if len(bad) > 5 else ''}; "
                         "the network cannot be used")


def load_resume(resume: Resume, log: Callable[[str], None]) -> dict | None:
    """The saved state of this run, or None (absent, unreadable, of another version, or made with
    other params or data: training starts from the beginning, saying why)."""
    if not resume.path.is_file():
        return None
    try:
        state = safe_load(resume.path, "resume file")
    except ModelError as err:
        log(f"ignoring {resume.path}, training from the start: {err}")
        return None
    if not isinstance(state, dict) or "rng" not in state:
        log(f"ignoring {resume.path}: not a resume file of this version")
        return None
    if state.get("resume_key") != resume.key:
        log(f"ignoring {resume.path}: made with other params or data")
        return None
    log(f"resuming from {resume.path} (phase {state['phase_idx']}, epoch {state['epoch']})")
    return state


def save_resume(resume: Resume, state: dict, log: Callable[[str], None]) -> None:
    """Save the state atomically; a failure (disk full) is a warning: the resume state is optional
    and must never end training."""
    try:
        with atomic_path(resume.path) as tmp:
            torch.save({"resume_key": resume.key, **state}, tmp)
    except (InputError, OSError, RuntimeError) as err:
        log(f"warning: could not save the resume state after epoch {state['epoch']} to {resume.path} "
            f"({(str(err).splitlines() or [''])[0]}); training continues, but a kill now restarts from the "
            "last saved epoch")


def get_rng(loader_generator: torch.Generator) -> dict:
    """Random state a resumed run needs to continue exactly: the global torch RNG (augmentations,
    dropout), the loader's shuffling generator and, on CUDA, the device generators."""
    rng = {"torch": torch.get_rng_state(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng(rng: dict, loader_generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    loader_generator.set_state(rng["loader"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
