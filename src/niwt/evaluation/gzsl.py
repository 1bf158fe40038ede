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
from niwt.models.checkpoint import check_classes, load_checkpoint


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
    calibrated-stacking gamma that maximises H there (``cal_*``, ``gamma``)."""
    m, _ = method_metrics(scores, y, n_seen)
    gamma = select_gamma(scores, y, np.arange(scores.shape[1]) < n_seen, y >= n_seen)
    return {**{k: m[k] for k in ("S", "U", "H", "ausuc")}, **calibrated(scores, y, n_seen, gamma)}
