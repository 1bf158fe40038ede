"""Scoring injected classifiers on precomputed features: GZSL numbers, curves and calibration.

Every injected checkpoint shares the finetuned body, so the penultimate features of the test and
val images are computed once and each method is just its linear classifier on top of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from niwt.evaluation.metrics import (
    ausuc,
    gzsl_metrics,
    mean_per_class_accuracy,
    seen_unseen_curve,
    select_gamma,
    zsl_top1,
)
from niwt.models.checkpoint import CheckpointMeta, check_classes, load_checkpoint
from niwt.models.networks import ModelError


def load_methods(checkpoints: list[Path], class_names: list[str]) -> dict[str, tuple]:
    """Load every checkpoint once and check its classes, before any feature is computed."""
    loaded = {}
    for path in checkpoints:
        model, meta = load_checkpoint(path)
        check_classes(meta, class_names, path, exact=True, what="classes (seen + unseen)")
        loaded[path.stem] = (model, meta)
    return loaded


def score_methods(loaded: dict[str, tuple], feats: np.ndarray) -> dict[str, np.ndarray]:
    """Joint-space scores (N, S+U) of each loaded method on precomputed penultimate features."""
    x = torch.as_tensor(feats)
    with torch.no_grad():
        return {name: model.cpu().classifier(x).numpy() for name, (model, _) in loaded.items()}


def calibrated_scores(meta: CheckpointMeta, feats: np.ndarray, shipped: np.ndarray, path: str) -> np.ndarray:
    """Joint-space scores of a method's calibrated reading: its own classifier where the checkpoint
    carries one (``calibrated_rows``: ``validate`` chose that reading under another setting), else
    the method as shipped (``shipped``, its scores on ``feats``)."""
    rows = meta.calibrated_rows
    if rows is None:
        return shipped
    weight, bias = rows.get("weight"), rows.get("bias")
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor) \
            or tuple(weight.shape) != (shipped.shape[1], feats.shape[1]) or tuple(bias.shape) != (shipped.shape[1],):
        raise ModelError(f"{path}: its calibrated reading's rows do not fit its classifier "
                         f"({shipped.shape[1]} classes x {feats.shape[1]} features); rerun inject")
    with torch.no_grad():
        return torch.nn.functional.linear(torch.as_tensor(feats), weight.float(), bias.float()).numpy()


def calibration_gamma(calibration: dict, val_feats: np.ndarray, val_y: np.ndarray) -> float:
    """Calibrated-stacking gamma chosen on the seen *val* images, never on test.

    The checkpoint's calibration classifier is the same method run with held-out seen classes
    playing the unseen role; gamma maximises H of that validation GZSL problem.
    """
    order = np.concatenate([calibration["seen"].numpy(), calibration["unseen"].numpy()])
    local = np.full(int(order.max()) + 1, -1)
    local[order] = np.arange(len(order))
    keep = val_y <= order.max()
    y = local[val_y[keep]]
    keep_known = y >= 0
    y = y[keep_known]
    x = torch.as_tensor(val_feats[keep][keep_known])
    scores = (x @ calibration["weight"].T + calibration["bias"]).numpy()
    n_cal_seen = len(calibration["seen"])
    return float(select_gamma(scores, y, np.arange(len(order)) < n_cal_seen, y >= n_cal_seen))


def method_metrics(scores: np.ndarray, y: np.ndarray, n_seen: int) -> tuple[dict[str, float], tuple]:
    """All reported numbers for one method, plus its seen-unseen curve."""
    n_classes = scores.shape[1]
    seen_mask = np.arange(n_classes) < n_seen
    is_unseen = y >= n_seen
    g = gzsl_metrics(scores, y, seen_mask, is_unseen)
    gammas, s_arr, u_arr = seen_unseen_curve(scores, y, seen_mask, is_unseen)
    seen_only = mean_per_class_accuracy(y[~is_unseen], scores[~is_unseen][:, :n_seen].argmax(1))
    out = {"S": g["S"], "U": g["U"], "H": g["H"], "zsl_top1": zsl_top1(scores, y, np.flatnonzero(~seen_mask)),
           "seen_acc": seen_only, "ausuc": ausuc(s_arr, u_arr)}
    return out, (gammas, s_arr, u_arr)


def calibrated(scores: np.ndarray, y: np.ndarray, n_seen: int, gamma: float) -> dict[str, float]:
    """S, U, H with calibrated stacking at ``gamma``."""
    seen_mask = np.arange(scores.shape[1]) < n_seen
    cal = gzsl_metrics(scores, y, seen_mask, y >= n_seen, gamma=gamma)
    return {"gamma": gamma, "cal_S": cal["S"], "cal_U": cal["U"], "cal_H": cal["H"]}


def validation_numbers(scores: np.ndarray, y: np.ndarray, n_seen: int) -> dict[str, float]:
    """One candidate setting scored on a validation problem: S, U, H, AUSUC, and S, U, H with the
    calibrated-stacking gamma that maximises H there (``cal_*``, ``gamma``), with the mean margin of
    the seen classes' images (``seen_margin``, :func:`mean_seen_margin`), the unit gamma is carried in."""
    m, _ = method_metrics(scores, y, n_seen)
    gamma = select_gamma(scores, y, np.arange(scores.shape[1]) < n_seen, y >= n_seen)
    return {**{k: m[k] for k in ("S", "U", "H", "ausuc")}, **calibrated(scores, y, n_seen, gamma),
            "seen_margin": mean_seen_margin(scores[y < n_seen], n_seen)}


def mean_seen_margin(scores: np.ndarray, n_seen: int) -> float:
    """The mean over ``scores``' rows (images of seen classes) of the best seen score minus the best
    unseen score: by how much a network's seen rows lead on seen images, the lead that calibrated
    stacking's gamma takes back (it predicts a seen class exactly where this margin exceeds gamma)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return float("nan")
    return float((scores[:, :n_seen].max(axis=1) - scores[:, n_seen:].max(axis=1)).mean())


def transfer_gamma(gamma: float, margin: float, scores: np.ndarray, n_seen: int) -> float:
    """The validation problem's ``gamma`` carried to another network: in units of the mean seen
    margin, ``gamma * margin_here / margin`` (``margin``: :func:`mean_seen_margin` on the validation
    problem; ``scores``: held-out images of seen classes scored by the other network).

    Why: gamma is an offset in the validation backbone's logits; the final network has other logit
    scales and more seen classes, so the same offset is another operating point there. At CUB's size
    the test problem's best gamma was 1.25 to 3.5 times the validation one for every ridge alpha, and
    the final network's mean seen margin was larger by about that factor. Where either margin is not
    positive (the unseen rows lead on seen images: no scale to carry), ``gamma`` is returned as it is;
    the ratio is held within :data:`MAX_MARGIN_RATIO` either way, because a mean margin near zero
    measures a sign change of the lead, not its scale (between the two networks of CUB's size the
    ratio ran from 0.4 to 1.9).
    """
    here = mean_seen_margin(scores, n_seen)
    if not (np.isfinite(margin) and np.isfinite(here) and margin > 0 and here > 0):
        return float(gamma)
    ratio = min(max(here / float(margin), 1.0 / MAX_MARGIN_RATIO), MAX_MARGIN_RATIO)
    return float(gamma) * ratio


# The most that transfer_gamma scales gamma by, up or down.
MAX_MARGIN_RATIO = 10.0
