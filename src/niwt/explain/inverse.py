"""The inverse of NIWT's map: neuron importances -> class domain vectors (attributes).

Fit with the machinery of :mod:`niwt.mapping.linear` the other way round: each pair is
(importance of image i, domain vector of image i's class), the loss is the mean cosine distance
between the predicted and the (L2-normalised) class domain vector, the number of epochs is chosen
on held-out seen classes, and the map is refit on all seen classes. Importances are L2-normalised
per image on the way in (their scale varies by orders of magnitude between images, and sum- and
mean-pooled importances then give the same map), exactly as domain vectors are on the way into the
forward map, so :func:`niwt.mapping.linear.predict_importance` applies a fitted inverse map as is.

Uses (NIWT §5, "explaining NIWT"):

* a prediction's *textual explanation*: the attributes that the observed importance of the
  predicted class on that image maps to (:func:`top_attributes`);
* *neuron names*: column ``k`` of the map is what a one-hot importance on neuron ``k`` adds to
  each attribute, so its largest entries name the neuron (:func:`neuron_names`). The bias is left
  out: it is shared by every neuron and would give them all the same names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from niwt.mapping.linear import (
    MappingConfig,
    _train,
    cosine_distance,
    normalize_domain,
    predict_importance,
    rank_correlation,
)


@dataclass
class InverseMap:
    """A fitted importance -> domain map and its selection trace."""

    weight: torch.Tensor  # (a, K)
    bias: torch.Tensor  # (a,)
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)

    def predict(self, alphas: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, K) importances (any scale) -> (n, a) predicted domain vectors (unit-norm scale)."""
        return predict_domain(self.weight, self.bias, alphas)

    def state(self) -> dict:
        return {"weight": self.weight, "bias": self.bias, "best_epoch": self.best_epoch}


def predict_domain(weight: torch.Tensor, bias: torch.Tensor, alphas: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Apply a fitted inverse map (importances are L2-normalised first, as domain vectors forward)."""
    return predict_importance(weight, bias, alphas)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op torch thread: (64, K) minibatches are too small to share, and on a loaded
    2-CPU machine the thread pool's spinning made the fit 10x slower (60 s instead of 6 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_inverse_map(
    domain: np.ndarray,
    labels: np.ndarray,
    alphas: np.ndarray,
    val_classes: np.ndarray,
    cfg: MappingConfig,
    selection: str = "rank_corr",
) -> InverseMap:
    """Fit importance -> domain with the cosine loss; pick the epoch on held-out seen classes.

    Args:
        domain: (n_classes, a) class domain vectors, indexed by ``labels``.
        labels: (N,) class of each image (the class whose logit gave the importance).
        alphas: (N, K) importance of each image.
        val_classes: seen classes held out for model selection (non-empty).
        cfg: optimisation settings (those of ``fit_mapping``).
        selection: ``rank_corr`` (Spearman correlation, over attributes, between each held-out
            class's mean predicted domain vector and its true one; higher is better) or
            ``val_loss`` (held-out cosine distance; lower is better).

    Returns:
        The map refit on all classes for the selected number of epochs, and the trace.
    """
    dom = normalize_domain(torch.tensor(np.asarray(domain), dtype=torch.float32))
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    unit = F.normalize(torch.tensor(np.asarray(alphas), dtype=torch.float32), dim=1)
    val_c = torch.as_tensor(np.asarray(val_classes), dtype=torch.long)
    is_val = torch.isin(lab, val_c)
    if not is_val.any() or is_val.all():
        raise ValueError("held-out classes must leave images on both sides of the split")
    target = dom[lab]  # (N, a): each image's class vector is the regression target
    history: list[dict[str, float]] = []

    def score(epoch: int, linear: torch.nn.Linear) -> None:
        with torch.no_grad():
            pred = linear(unit[is_val])
            val_loss = cosine_distance(pred, target[is_val]).item()
            mean_pred = torch.stack([pred[lab[is_val] == c].mean(0) for c in val_c.tolist()])
        history.append({"epoch": epoch, "val_loss": val_loss,
                        "val_rank_corr": rank_correlation(mean_pred, dom[val_c])})

    # ``_train`` indexes its inputs by ``labels``; an identity index makes every image its own row.
    keep = torch.nonzero(~is_val).flatten()
    with single_thread():
        _train(unit[keep], torch.arange(len(keep)), target[keep], cfg, cfg.epochs, on_epoch=score)
    if selection == "rank_corr":
        best = max(history, key=lambda h: (np.nan_to_num(h["val_rank_corr"], nan=-np.inf), -h["epoch"]))
    else:
        best = min(history, key=lambda h: (h["val_loss"], h["epoch"]))
    epoch = int(best["epoch"])
    with single_thread():
        final = _train(unit, torch.arange(len(lab)), target, cfg, epoch)
    return InverseMap(final.weight.detach().clone(), final.bias.detach().clone(), epoch, history)


@dataclass(frozen=True)
class Attribution:
    """The textual explanation of one importance vector."""

    names: list[str]  # top attributes, best first
    scores: list[float]  # their predicted values (unit-norm domain scale)
    cosine: float | None  # cosine to the explained class's own domain vector, when given


def top_attributes(weight: torch.Tensor, bias: torch.Tensor, alpha: np.ndarray | torch.Tensor,
                   attribute_names: list[str], k: int = 5,
                   class_domain: np.ndarray | None = None) -> Attribution:
    """The ``k`` attributes an observed importance vector maps to (largest predicted values).

    Args:
        alpha: (K,) importance of the explained class on one image.
        class_domain: (a,) domain vector of the explained class, to report their agreement.
    """
    pred = predict_domain(weight, bias, torch.tensor(np.asarray(alpha), dtype=torch.float32)[None])[0]
    order = torch.argsort(pred, descending=True)[:k].tolist()
    cosine = None
    if class_domain is not None:
        ref = normalize_domain(torch.tensor(np.asarray(class_domain), dtype=torch.float32)[None])[0]
        cosine = float(F.cosine_similarity(pred, ref, dim=0))
    return Attribution([attribute_names[i] for i in order], [float(pred[i]) for i in order], cosine)


def neuron_names(weight: torch.Tensor, attribute_names: list[str], top: int = 3) -> list[dict]:
    """For each neuron (column of the inverse map) its ``top`` attributes and its most negative one.

    Returns:
        One dict per neuron: ``neuron``, ``name`` ("a / b / c"), ``attribute_i`` and ``weight_i``
        for i = 1..top, ``negative_attribute`` and ``negative_weight``, and ``norm`` (the column's
        L2 norm: how strongly the neuron speaks to attributes at all).
    """
    w = weight.detach().cpu().double().numpy()  # (a, K)
    if w.shape[0] != len(attribute_names):
        raise ValueError(f"map has {w.shape[0]} outputs but {len(attribute_names)} attribute names")
    top = min(top, w.shape[0])
    rows = []
    for k in range(w.shape[1]):
        col = w[:, k]
        order = np.argsort(-col, kind="stable")[:top]
        row: dict = {"neuron": k, "name": " / ".join(attribute_names[i] for i in order)}
        for rank, i in enumerate(order, start=1):
            row[f"attribute_{rank}"] = attribute_names[i]
            row[f"weight_{rank}"] = float(col[i])
        neg = int(np.argmin(col))
        row.update(negative_attribute=attribute_names[neg], negative_weight=float(col[neg]),
                   norm=float(np.linalg.norm(col)))
        rows.append(row)
    return rows
