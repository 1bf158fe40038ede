"""The inverse of NIWT's map: neuron importances -> class domain vectors (attributes).

The map is fit by ``fit_mapping`` with the forward map's machinery the other way round
(:func:`niwt.mapping.linear.fit_inverse_map`) and saved as ``models/inverse_map.pt``; this module
applies it.

Uses (NIWT §5, "explaining NIWT"):

* a prediction's *textual explanation*: the attributes that the observed importance of the
  predicted class on that image maps to (:func:`top_attributes`; the best value of each
  attribute group, where the paper's reading takes the largest values whatever their group);
* *neuron names*: column ``k`` of the map is what a one-hot importance on neuron ``k`` adds to
  each attribute, so its largest entries name the neuron (:func:`neuron_names`). The bias is left
  out: it is shared by every neuron and would give them all the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from niwt.explain.measure import attribute_groups, grouped_order
from niwt.mapping.linear import normalize_domain, predict_importance


def predict_domain(weight: torch.Tensor, bias: torch.Tensor, alphas: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Apply a fitted inverse map (importances are L2-normalised first, as domain vectors forward)."""
    return predict_importance(weight, bias, alphas)


@dataclass(frozen=True)
class Attribution:
    """The textual explanation of one importance vector."""

    names: list[str]  # top attributes, best first
    scores: list[float]  # their predicted values (unit-norm domain scale)
    cosine: float | None  # cosine to the explained class's own domain vector, when given


def top_attributes(weight: torch.Tensor, bias: torch.Tensor, alpha: np.ndarray | torch.Tensor,
                   attribute_names: list[str], k: int = 5,
                   class_domain: np.ndarray | None = None, grouped: bool = True) -> Attribution:
    """The ``k`` attributes an observed importance vector maps to.

    ``grouped`` (default): the values of an attribute group compete, one per group
    (:func:`niwt.explain.measure.grouped_order`), so an explanation never lists ``outline_none``
    with ``outline_black``; measured on the default it is at least as precise as the paper's plain
    ranking by predicted value (``grouped=False``), see the explain stage's ``text/*`` metrics.

    Args:
        alpha: (K,) importance of the explained class on one image.
        class_domain: (a,) domain vector of the explained class, to report their agreement.
    """
    pred = predict_domain(weight, bias, torch.tensor(np.asarray(alpha), dtype=torch.float32)[None])[0]
    if grouped:
        order = grouped_order(pred[None].numpy(), attribute_groups(attribute_names))[0][:k].tolist()
    else:
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
