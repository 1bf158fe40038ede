"""Explanations measured against ground truth (the synthetic default knows what each image shows).

Textual explanations are rankings of the attributes; each is scored against the image's *true*
attributes (one value per attribute group, :mod:`niwt.data.truth`):

* :func:`precision_at_k`: share of the top ``k`` attributes the image really has. With ``k`` = the
  number of groups a perfect explanation scores 1;
* :func:`exclusive`: whether the top ``k`` lists two values of one group (``outline_none`` and
  ``outline_black``): a contradiction, whatever the image.

Rankings compared in one run (:func:`rankings`): the paper's inverse map (attributes by predicted
value), the grouped inverse map (:func:`grouped_order`: the best value of each group, groups ordered
by how clearly their value wins), the predicted class's own domain vector (what a class-prior
explanation says, blind to the image) and a seeded random ranking.

Grad-CAM is scored against the object mask: :func:`mass_inside` (share of the heat map's mass on
the object) and :func:`pointing_hit` (the pointing game: is the map's maximum on the object).
"""

from __future__ import annotations

import numpy as np


def attribute_groups(attribute_names: list[str]) -> np.ndarray:
    """(a,) group index of each attribute: the name up to ``::`` (CUB), else up to the first ``_``."""
    keys = [n.split("::", 1)[0] if "::" in n else n.split("_", 1)[0] for n in attribute_names]
    first: dict[str, int] = {}
    return np.array([first.setdefault(k, len(first)) for k in keys], dtype=np.int64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of the ``k`` largest scores per row, best first (ties: lower index first)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")[:, :k]


def grouped_order(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N, a) rankings where the values of a group compete: each group's best value first.

    Scores are standardised within each group (minus the group's mean, over its standard deviation;
    a group of equal scores gets 0), so a group whose values all score high cannot fill the top of
    the ranking. Ranked first: every group's winner, groups ordered by the winner's standardised
    score; then the rest, by standardised score. Without groups (every attribute its own group, as
    AWA2's names) this is the plain ranking by score.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(np.unique(groups)) == len(groups):  # no attribute shares a group: nothing competes
        return top_k(s, s.shape[1])
    z = np.zeros_like(s)
    for g in np.unique(groups):
        cols = groups == g
        block = s[:, cols]
        std = block.std(1, keepdims=True)
        z[:, cols] = np.where(std > 0, (block - block.mean(1, keepdims=True)) / np.where(std > 0, std, 1), 0.0)
    winner = np.zeros_like(s, dtype=bool)
    for g in np.unique(groups):
        cols = np.flatnonzero(groups == g)
        winner[np.arange(len(s)), cols[np.argmax(s[:, cols], axis=1)]] = True
    # winners first (key 0), then the rest (key 1); within each, larger standardised score first
    return np.lexsort((np.arange(s.shape[1])[None].repeat(len(s), 0), -z, ~winner), axis=1)


def precision_at_k(order: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """(N,) share of the first ``k`` ranked attributes that the image truly has.

    Args:
        order: (N, >=k) attribute indices, best first.
        truth: (N, a) boolean true attributes.
    """
    top = np.asarray(order)[:, :k]
    return np.take_along_axis(np.asarray(truth, dtype=bool), top, axis=1).sum(1) / k


def exclusive(order: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """(N,) True where the first ``k`` ranked attributes hold two values of one group."""
    g = np.sort(np.asarray(groups)[np.asarray(order)[:, :k]], axis=1)
    return (g[:, 1:] == g[:, :-1]).any(1)


def random_order(n: int, a: int, seed: int) -> np.ndarray:
    """(n, a) seeded random rankings (the chance baseline)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, a)), axis=1)


def rankings(inverse_scores: np.ndarray, class_domain: np.ndarray, predicted: np.ndarray, groups: np.ndarray,
             seed: int) -> dict[str, np.ndarray]:
    """The four explanations of each image as (N, a) rankings.

    Args:
        inverse_scores: (N, a) inverse map applied to each image's importance of its predicted class.
        class_domain: (C, a) class domain vectors.
        predicted: (N,) predicted class ids.
        groups: (a,) group of each attribute (:func:`attribute_groups`).
        seed: for the random ranking.

    Returns:
        ``paper`` (inverse map, by value), ``improved`` (grouped inverse map), ``class_prior``
        (the predicted class's own domain vector) and ``random``.
    """
    n, a = inverse_scores.shape
    prior = np.asarray(class_domain, dtype=np.float64)[np.asarray(predicted)]
    return {"paper": top_k(inverse_scores, a), "improved": grouped_order(inverse_scores, groups),
            "class_prior": top_k(prior, a), "random": random_order(n, a, seed)}


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) share of each heat map's mass inside the object mask (0 for an all-zero map).

    Args:
        cam: (N, H, W) non-negative heat maps.
        mask: (N, H, W) boolean object masks.
    """
    c = np.asarray(cam, dtype=np.float64).reshape(len(cam), -1)
    m = np.asarray(mask, dtype=bool).reshape(len(mask), -1)
    total = c.sum(1)
    return np.where(total > 0, (c * m).sum(1) / np.where(total > 0, total, 1.0), 0.0)


def pointing_hit(cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) True where the heat map's maximum (first in row-major order) lies on the object.

    An all-zero map has no maximum to point with and counts as a miss.
    """
    c = np.asarray(cam, dtype=np.float64).reshape(len(cam), -1)
    m = np.asarray(mask, dtype=bool).reshape(len(mask), -1)
    peak = np.argmax(c, axis=1)
    return m[np.arange(len(c)), peak] & (c.max(1) > 0)
