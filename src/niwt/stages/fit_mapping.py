"""``fit_mapping``: learn the linear map from class domain vectors to neuron importances.

Seen classes are split once (seeded) into fitting classes and ``mapping.n_val_classes`` held-out
classes; the epoch count is chosen on the held-out ones (rank correlation by default, as the
paper), and the map is then refit on all seen classes for that many epochs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from niwt.data.tables import read_classes
from niwt.io.atomic import atomic_path
from niwt.io.parquet import ImportanceFileError, read_importances
from niwt.mapping.linear import MappingConfig, fit_mapping
from niwt.models.checkpoint import safe_load
from niwt.models.networks import ModelError
from niwt.params import Params, ParamsError
from niwt.stages import StageResult


def held_out_classes(n_seen: int, n_val: int, seed: int) -> np.ndarray:
    """The seen classes kept out of fitting for model selection (seeded, sorted)."""
    if not 0 < n_val < n_seen:
        raise ParamsError(f"mapping.n_val_classes must be between 1 and {n_seen - 1} (the dataset has {n_seen} "
                          f"seen classes), got {n_val}")
    return np.sort(np.random.default_rng(seed).choice(n_seen, size=n_val, replace=False))


def run(p: Params, data: Path, importances: Path, out: Path, history_path: Path) -> StageResult:
    classes = read_classes(data / "classes.parquet")
    imp = read_importances(importances)
    labels = imp.target_id.astype(np.int64)  # the class whose logit was differentiated
    if labels.max() >= classes.n_seen:
        raise ImportanceFileError(f"{importances}: class ids up to {labels.max()} but only "
                                  f"{classes.n_seen} seen classes in {data / 'classes.parquet'}")
    val = held_out_classes(classes.n_seen, p.mapping.n_val_classes, p.base.seed)
    m = p.mapping
    cfg = MappingConfig(epochs=m.epochs, lr=m.lr, batch_size=m.batch_size, weight_decay=m.weight_decay,
                        seed=p.base.seed)
    result = fit_mapping(classes.domain, labels, imp.values, val, cfg, selection=m.selection)
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    state = {"weight": result.weight, "bias": result.bias, "best_epoch": result.best_epoch,
             "heldout_weight": result.heldout_weight, "heldout_bias": result.heldout_bias,
             "domain_kind": classes.domain_kind, "layer": imp.meta.get("layer", ""),
             "pooling": imp.meta.get("pooling", ""), "val_classes": torch.as_tensor(val)}
    # Both outputs or neither: the history is staged and moved into place after the map is written.
    with atomic_path(history_path) as staged_history:
        with staged_history.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", "val_loss", "val_rank_corr"])
            writer.writeheader()
            writer.writerows(result.history)
        with atomic_path(out) as tmp:
            torch.save(state, tmp)
    metrics = {"best_epoch": result.best_epoch, "val_rank_corr": best["val_rank_corr"],
               "val_loss": best["val_loss"], "n_pairs": int(len(labels))}
    return StageResult(metrics, [history_path])


def load_mapping(path: Path) -> dict:
    """Read a mapping written by :func:`run` (tensors and primitives only)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: mapping not found; run `dvc repro fit_mapping`")
    state = safe_load(path, "mapping")
    missing = [k for k in MAPPING_KEYS if k not in state] if isinstance(state, dict) else list(MAPPING_KEYS)
    if missing:
        raise ModelError(f"{path}: not a mapping written by fit_mapping (missing {missing})")
    return state


MAPPING_KEYS = ("weight", "bias", "heldout_weight", "heldout_bias", "layer", "val_classes")
