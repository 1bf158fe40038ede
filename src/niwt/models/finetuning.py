"""Fine-tuning a classifier on a set of seen classes: the start network, the phases, the optimiser.

Shared by ``finetune`` (the final network, on every seen class) and ``validate`` (the validation
backbone, on the seen classes minus the validation classes), so both train the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from niwt.models.checkpoint import load_state_dict_file, read_class_names
from niwt.models.networks import ModelError, NiwtNet, build_model
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


def initial_model(m: ModelParams, seen: list[str], allow_extra: bool = False) -> NiwtNet:
    """The network to start from: ``model.arch`` with ``model.weights`` (none, imagenet, or the user's
    state_dict, whose classifier rows ``model.class_names`` names; they are put in the order of
    ``seen``, which changes no prediction). ``allow_extra``: the weights file may have rows of
    classes outside ``seen`` (the validation backbone keeps only its rows of ``seen``)."""
    common = {"width": m.width, "hidden": m.hidden, "image_size": m.image_size}
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


def train_best(model: NiwtNet, f: FinetuneParams, train_loader, val_loader, device: torch.device, *,
               epochs: int | None = None, progress: bool = False,
               log: Callable[[str], None] = print) -> tuple[float, list[dict]]:
    """Train through the phases and keep the weights of the best epoch by val accuracy (loaded into
    ``model``); returns (best val accuracy, per-epoch history). No resume: the validation backbone's
    run; ``finetune`` runs the same phases with its resume state."""
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=f.label_smoothing)
    history: list[dict] = []
    best_acc, best_state = -1.0, None
    for phase, n, lr in phases(f, epochs):
        opt, sched = make_optimizer(model, phase, lr, f, n * len(train_loader))
        for epoch in range(1, n + 1):
            stats = train_one_epoch(model, criterion, opt, train_loader, device, epoch, amp=f.amp,
                                    channels_last=f.channels_last, scheduler=sched, progress=progress,
                                    frozen=model.body if phase == "head" else None)
            val_acc = evaluate(model, val_loader, device, amp=f.amp)["acc"]
            history.append({"epoch": len(history) + 1, "phase": phase, "train_loss": stats["loss"],
                            "train_acc": stats["acc"], "val_acc": val_acc})
            log(f"{phase} epoch {epoch}/{n}: loss {stats['loss']:.4f} val acc {val_acc:.3f}")
            if val_acc > best_acc:
                best_acc = val_acc
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if best_state is None:  # mode none: the given classifier as it is
        return evaluate(model, val_loader, device, amp=f.amp)["acc"], history
    model.load_state_dict(best_state)
    return best_acc, history
