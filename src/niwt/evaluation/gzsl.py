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
    calibrated-stacking gamma that maximises H there (``cal_*``, ``gamma``), with the mean and
    standard deviation of the seen classes' images' margins (``seen_margin``, ``seen_margin_sd``:
    :func:`seen_margins`), in which gamma is carried to another network (:func:`transfer_gamma`)."""
    m, _ = method_metrics(scores, y, n_seen)
    gamma = select_gamma(scores, y, np.arange(scores.shape[1]) < n_seen, y >= n_seen)
    margins = seen_margins(scores[y < n_seen], n_seen)
    return {**{k: m[k] for k in ("S", "U", "H", "ausuc")}, **calibrated(scores, y, n_seen, gamma),
            "seen_margin": _mean(margins), "seen_margin_sd": _sd(margins)}


def seen_margins(scores: np.ndarray, n_seen: int) -> np.ndarray:
    """Per row of ``scores`` (images of seen classes), the best seen score minus the best unseen
    score: by how much a network's seen rows lead on seen images, the lead that calibrated
    stacking's gamma takes back (it predicts a seen class exactly where this margin exceeds gamma)."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores[:, :n_seen].max(axis=1) - scores[:, n_seen:].max(axis=1) if len(scores) else np.zeros(0)


def mean_seen_margin(scores: np.ndarray, n_seen: int) -> float:
    """The mean of :func:`seen_margins` (NaN without a row)."""
    return _mean(seen_margins(scores, n_seen))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _sd(values: np.ndarray) -> float:
    return float(values.std()) if len(values) else float("nan")


def transfer_gamma(gamma: float, margin: float, spread: float, scores: np.ndarray, n_seen: int) -> float:
    """The validation problem's ``gamma`` carried to another network, through the seen margins
    (:func:`seen_margins`): their mean ``margin`` and standard deviation ``spread`` on the
    validation problem, and the same of ``scores`` (held-out images of seen classes scored by the
    other network).

    * A mean margin that is a scale (positive on both networks, and at least its spread on the
      validation problem): gamma in its units, ``gamma * margin_here / margin``.
    * Else (the margins straddle zero, or the unseen rows lead), where both networks' margins have a
      spread: gamma's place among the margins, in standard deviations from their mean,
      ``mean_here + (gamma - margin) * spread_here / spread``.
    * Else (no spread for the z-score, e.g. a single image; a statistic that is not finite; no image):
      ``gamma`` as it is.

    Either ratio is held within :data:`MAX_MARGIN_RATIO`. Why: gamma is an offset in the validation
    backbone's logits; the final network has other logit scales and more seen classes, so the same
    offset is another operating point there. At CUB's size the test problem's best gamma was 1.25 to
    3.5 times the validation one for every ridge alpha, and the final network's mean seen margin was
    larger by about that factor. But a mean margin near zero measures where the margins straddle
    zero, not their scale: NIWT's calibrated setting on the default had mean 0.48 (spread 3.8) on the
    validation problem and 0.86 on the final network, and the ratio cost it 4.8 points of calibrated
    H that the z-score keeps (docs/protocol.md compares the rules).
    """
    margins = seen_margins(scores, n_seen)
    here, here_spread = _mean(margins), _sd(margins)
    values = (margin, spread, here, here_spread)
    if not all(np.isfinite(v) for v in values):
        return float(gamma)
    if margin > 0 and here > 0 and margin >= spread:
        return float(gamma) * _held(here / float(margin))
    if spread > 0 and here_spread > 0:
        return float(here + (float(gamma) - float(margin)) * _held(here_spread / float(spread)))
    return float(gamma)


def _held(ratio: float) -> float:
    return min(max(ratio, 1.0 / MAX_MARGIN_RATIO), MAX_MARGIN_RATIO)


# The most that transfer_gamma scales gamma by, up or down.
MAX_MARGIN_RATIO = 10.0
