"""Linear map from a class's domain vector (attributes, text embedding) to neuron importances.

Trained as in NIWT's ``mod2alpha``: each pair is (domain vector of image i's class, importance of
image i), the loss is the mean cosine distance, and model selection uses seen classes held out
from training, scored by the rank correlation between each held-out class's predicted importance
and its observed mean (unit-normalised) importance. The paper early-stops on that correlation.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.nn import functional as F

from niwt.params import MappingParams


@dataclass(frozen=True)
class MapHyper:
    """One candidate of the map's optimiser (``mapping.lr`` x ``mapping.weight_decay``): the map's
    held-out rank correlation peaks early and at a rate that depends on the data's scale, so both
    are chosen by ``validate`` rather than fixed."""

    lr: float
    weight_decay: float


def map_candidates(cfg: MappingParams) -> list[MapHyper]:
    """Every (lr, weight decay) pair of the params' candidate lists, in list order."""
    return [MapHyper(float(lr), float(wd)) for lr, wd in itertools.product(cfg.lr, cfg.weight_decay)]


@dataclass
class MappingResult:
    """A fitted linear cosine map and its selection trace."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor  # (out,)
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    heldout_epoch: int = 0  # what the held-out-seen rule alone would have chosen
    # the map at the selected epoch, fit WITHOUT the held-out classes: used to calibrate GZSL
    # on those classes without any leak of their importances
    heldout_weight: torch.Tensor | None = None
    heldout_bias: torch.Tensor | None = None


def predict_importance(weight: torch.Tensor, bias: torch.Tensor, domain: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Apply a fitted map: (n, a) raw domain vectors -> (n, C) importances."""
    d = torch.as_tensor(np.asarray(domain), dtype=torch.float32)
    return normalize_domain(d) @ weight.T + bias


def normalize_domain(domain: torch.Tensor) -> torch.Tensor:
    """L2-normalise each class vector (as xlsa17's ``att``), so AWA2's 0..100 scale and a unit
    sentence embedding train with the same learning rate."""
    return F.normalize(domain.float(), dim=-1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` over rows; (N, C), (N, C) -> scalar."""
    return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-12)).mean()


def class_mean_importance(alphas: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-class mean of unit-normalised importances; the cosine target a class is pulled to.

    Returns:
        (len(classes), C)
    """
    unit = F.normalize(alphas, dim=1)
    return torch.stack([unit[labels == c].mean(0) for c in classes.tolist()])


def rank_correlation(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over rows of the Spearman correlation between predicted and observed importances."""
    rhos = [spearmanr(p.numpy(), t.numpy()).statistic for p, t in zip(pred, target, strict=True)]
    return float(np.nanmean(rhos))


def _train(domain: torch.Tensor, labels: torch.Tensor, alphas: torch.Tensor, cfg: MappingParams, seed: int,
           epochs: int, on_epoch=None, hyper: MapHyper | None = None) -> nn.Linear:
    """Adam on minibatches of pairs ``(domain[labels[i]], alphas[i])`` with the cosine loss, at
    ``hyper`` (default: the first candidate of the params' lists)."""
    hyper = hyper or map_candidates(cfg)[0]
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(domain.shape[1], alphas.shape[1])
    with torch.no_grad():  # NIWT draws from N(0, 1); a small std keeps early cosines informative
        linear.weight.normal_(0, 0.01, generator=gen)
        linear.bias.zero_()
    opt = torch.optim.Adam(linear.parameters(), lr=hyper.lr, weight_decay=hyper.weight_decay)
    n = len(labels)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            loss = cosine_distance(linear(domain[labels[idx]]), alphas[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch, linear)
    return linear


def select_epoch(history: list[dict[str, float]], selection: str) -> int:
    """The epoch to keep: highest ``val_rank_corr`` (NaN counts as worst) or lowest ``val_loss``;
    the earliest epoch wins a tie."""
    if selection == "rank_corr":
        best = max(history, key=lambda h: (np.nan_to_num(h["val_rank_corr"], nan=-np.inf), -h["epoch"]))
    else:
        best = min(history, key=lambda h: (h["val_loss"], h["epoch"]))
    return int(best["epoch"])


def fit_selected(inputs: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, is_val: torch.Tensor,
                 cfg: MappingParams, seed: int, val_rank_corr: Callable[[nn.Linear], float],
                 is_train: torch.Tensor | None = None, epochs: int | None = None,
                 hyper: MapHyper | None = None,
                 refit: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None) -> MappingResult:
    """Fit a linear map on pairs ``(inputs[index[i]], targets[i])`` with the cosine loss, choose the
    number of epochs on the held-out pairs (``is_val``), then refit on all pairs for that many.
    ``is_train`` (default: not ``is_val``) are the pairs the selection run learns from.
    ``epochs``: the number of epochs chosen elsewhere (``validate``, on classes the backbone never
    saw), which overrides the held-out rule; the held-out trace is still recorded.
    ``refit``: epochs -> (weight, bias) of the map on all pairs (default: train it here).

    The one fitter behind both directions (domain -> importance in :func:`fit_mapping`,
    importance -> domain in :func:`fit_inverse_map`); they differ only in their pairs and in how
    a held-out class's rank correlation is measured (``val_rank_corr``).
    """
    history, snapshots = _selection_run(inputs, index, targets, is_val, cfg, seed, val_rank_corr, is_train,
                                        max(cfg.epochs, epochs or 0), hyper)
    heldout_epoch = select_epoch(history, cfg.selection)
    epoch = heldout_epoch if epochs is None else epochs
    if refit is None:
        final = _train(inputs, index, targets, cfg, seed, epoch, hyper=hyper)
        weight, bias = final.weight.detach().clone(), final.bias.detach().clone()
    else:
        weight, bias = refit(epoch)
    return MappingResult(weight, bias, epoch, history, heldout_epoch, *snapshots[epoch])


def fit_snapshots(domain: np.ndarray, labels: np.ndarray, alphas: np.ndarray, cfg: MappingParams, *, seed: int,
                  epochs: tuple[int, ...],
                  hyper: MapHyper | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The map domain -> importance on all pairs, as (weight, bias) after each of ``epochs``: one
    training run, the same trajectory as a run of that many epochs. The forward map's one fitter:
    :func:`fit_mapping` (the ``fit_mapping`` stage) refits through it for the epochs it selected,
    and ``validate`` calls it for every candidate epoch count at once."""
    dom = normalize_domain(torch.as_tensor(domain))
    lab = torch.as_tensor(labels, dtype=torch.long)
    alp = torch.tensor(np.asarray(alphas), dtype=torch.float32)
    wanted, snapshots = set(epochs), {}

    def keep(epoch: int, linear: nn.Linear) -> None:
        if epoch in wanted:
            snapshots[epoch] = (linear.weight.detach().clone(), linear.bias.detach().clone())

    _train(dom, lab, alp, cfg, seed, max(epochs), on_epoch=keep, hyper=hyper)
    return snapshots


def _held_out(labels: torch.Tensor, true_labels: np.ndarray | None,
              val_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation pairs, selection-training pairs). Held out by the image's *true* class; and no
    pair whose importance belongs to a held-out class's logit (a predicted target) trains the
    selection run either, or the held-out classes would leak into it."""
    true = labels if true_labels is None else torch.as_tensor(np.asarray(true_labels), dtype=torch.long)
    is_val = torch.isin(true, val_c)
    return is_val, ~(is_val | torch.isin(labels, val_c))


def _selection_run(inputs: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, is_val: torch.Tensor,
                   cfg: MappingParams, seed: int, val_rank_corr: Callable[[nn.Linear], float],
                   is_train: torch.Tensor | None, epochs: int, hyper: MapHyper | None
                   ) -> tuple[list[dict[str, float]], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Train on the selection pairs and score the held-out ones after every epoch: the trace
    (epoch, val_loss, val_rank_corr) and the map at each epoch."""
    is_train = ~is_val if is_train is None else is_train
    if not is_val.any() or not is_train.any():
        raise ValueError("held-out classes must leave images on both sides of the split")
    history: list[dict[str, float]] = []
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def score(epoch: int, linear: nn.Linear) -> None:
        with torch.no_grad():
            val_loss = cosine_distance(linear(inputs[index[is_val]]), targets[is_val]).item()
            rank_corr = val_rank_corr(linear)
        history.append({"epoch": epoch, "val_loss": val_loss, "val_rank_corr": rank_corr})
        snapshots[epoch] = (linear.weight.detach().clone(), linear.bias.detach().clone())

    _train(inputs, index[is_train], targets[is_train], cfg, seed, epochs, on_epoch=score, hyper=hyper)
    return history, snapshots


def _forward_pairs(domain: np.ndarray, labels: np.ndarray, alphas: np.ndarray, val_classes: np.ndarray,
                   true_labels: np.ndarray | None):
    """The forward map's pairs and its held-out split: (domain, labels, importances, held-out mask,
    selection-training mask, the held-out rank correlation of a map)."""
    dom = normalize_domain(torch.as_tensor(domain))
    lab = torch.as_tensor(labels, dtype=torch.long)
    alp = torch.tensor(np.asarray(alphas), dtype=torch.float32)
    val_c = torch.as_tensor(val_classes, dtype=torch.long)
    is_val, is_train = _held_out(lab, true_labels, val_c)
    target = class_mean_importance(alp[is_val], lab[is_val], val_c)
    return dom, lab, alp, is_val, is_train, lambda linear: rank_correlation(linear(dom[val_c]), target)


def heldout_trace(domain: np.ndarray, labels: np.ndarray, alphas: np.ndarray, val_classes: np.ndarray,
                  cfg: MappingParams, *, seed: int, hyper: MapHyper, epochs: int,
                  true_labels: np.ndarray | None = None) -> list[dict[str, float]]:
    """The paper's held-out-seen trace of one candidate: the map fit without ``val_classes``, and
    per epoch the cosine loss and rank correlation on them (what ``validate`` records for every
    (lr, weight decay) candidate, so where each one peaks can be read)."""
    dom, lab, alp, is_val, is_train, rank_corr = _forward_pairs(domain, labels, alphas, val_classes, true_labels)
    history, _ = _selection_run(dom, lab, alp, is_val, cfg, seed, rank_corr, is_train, epochs, hyper)
    return history


def fit_mapping(domain: np.ndarray, labels: np.ndarray, alphas: np.ndarray, val_classes: np.ndarray,
                cfg: MappingParams, *, seed: int, true_labels: np.ndarray | None = None,
                epochs: int | None = None, hyper: MapHyper | None = None) -> MappingResult:
    """Fit domain -> importance, pick the epoch on held-out seen classes (or take ``epochs``), refit on all.

    Args:
        domain: (n_classes, a) class domain vectors, indexed by ``labels``.
        labels: (N,) the class whose logit gave each importance (the true class, or the predicted
            one with ``extract.target: predicted``).
        alphas: (N, C) importance of each training image.
        val_classes: seen classes held out for model selection (non-empty).
        cfg: the ``mapping`` params (epochs, lr, batch size, weight decay, selection rule).
        seed: ``base.seed``.
        true_labels: (N,) each image's true class, which decides the held-out split (default: ``labels``).
        epochs: the epoch count ``validate`` chose (None: the held-out rule's).
        hyper: the learning rate and weight decay ``validate`` chose (None: the first candidates).

    Returns:
        The map refit on all classes for the selected number of epochs, the trace, and the map
        at that epoch fit without the held-out classes.
    """
    dom, lab, alp, is_val, is_train, rank_corr = _forward_pairs(domain, labels, alphas, val_classes, true_labels)

    def refit(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return fit_snapshots(domain, labels, alphas, cfg, seed=seed, epochs=(epoch,), hyper=hyper)[epoch]

    return fit_selected(dom, lab, alp, is_val, cfg, seed, rank_corr, is_train, epochs, hyper, refit)


def fit_inverse_map(domain: np.ndarray, labels: np.ndarray, alphas: np.ndarray, val_classes: np.ndarray,
                    cfg: MappingParams, *, seed: int, true_labels: np.ndarray | None = None,
                    hyper: MapHyper | None = None) -> MappingResult:
    """The inverse map importance -> domain vector, for explanations (NIWT §5).

    Each pair is (importance of image i, L2-normalised domain vector of its class). Importances are
    L2-normalised per image on the way in (their scale varies by orders of magnitude between
    images, and sum- and mean-pooled importances then give the same map), exactly as domain
    vectors are on the way into the forward map, so :func:`predict_importance` applies it as is.
    ``val_rank_corr`` is the Spearman correlation, over attributes, between each held-out class's
    mean predicted domain vector and its true one.
    """
    dom = normalize_domain(torch.tensor(np.asarray(domain), dtype=torch.float32))
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    unit = F.normalize(torch.tensor(np.asarray(alphas), dtype=torch.float32), dim=1)
    val_c = torch.as_tensor(np.asarray(val_classes), dtype=torch.long)
    is_val, is_train = _held_out(lab, true_labels, val_c)

    def val_rank_corr(linear: nn.Linear) -> float:
        pred = linear(unit[is_val])
        mean_pred = torch.stack([pred[lab[is_val] == c].mean(0) for c in val_c.tolist()])
        return rank_correlation(mean_pred, dom[val_c])

    with single_thread():  # every image is its own input row: an identity index
        return fit_selected(unit, torch.arange(len(lab)), dom[lab], is_val, cfg, seed, val_rank_corr, is_train,
                            hyper=hyper)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op torch thread: (64, K) minibatches are too small to share, and on a loaded
    2-CPU machine the thread pool's spinning made the inverse fit 10x slower (60 s instead of 6 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
