"""``fit_mapping``: learn the linear map from class domain vectors to neuron importances, and back.

The forward map is trained on all seen classes for the number of epochs ``validate`` chose on its
class-disjoint validation problem. Seen classes are also split once (seeded) into fitting classes
and ``mapping.n_val_classes`` held-out classes: the held-out trace (rank correlation, as the
paper's rule) is recorded with what that rule would have picked, and the map fit without them
gives the older, biased calibration that ``evaluate`` reports for comparison. The inverse map (importance -> domain
vector, for explanations) is fit the same way on the same pairs. Both files record the importance
layer and pooling (read from the importances) and the held-out classes, for the stages after.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from niwt.data.tables import held_out_classes, held_out_count, read_classes
from niwt.evaluation.plots import draw_history
from niwt.io.atomic import atomic_path
from niwt.io.choices import read_choices
from niwt.io.parquet import ImportanceFileError, read_importances
from niwt.mapping.linear import MapHyper, MappingResult, fit_inverse_map, fit_mapping
from niwt.mapping.store import Provenance, save_map
from niwt.params import Params, Runtime
from niwt.stages import StageResult

HISTORY_FIELDS = ["epoch", "val_loss", "val_rank_corr"]


def run(p: Params, rt: Runtime, data: Path, importances: Path, validation: Path, out: Path, inverse_out: Path,
        history: Path) -> StageResult:
    classes = read_classes(data / "classes.parquet")
    choices = read_choices(validation)
    epochs = choices.mapping_epochs  # None when NIWT was not validated: the held-out rule
    # validate's (lr, weight decay), for both maps (None: the first candidates of mapping.lr/weight_decay)
    hyper = MapHyper(*choices.mapping_hyper) if choices.mapping_hyper else None
    imp = read_importances(importances)
    labels = imp.target_id.astype(np.int64)  # the class whose logit was differentiated
    if labels.max() >= classes.n_seen:
        raise ImportanceFileError(f"{importances}: class ids up to {labels.max()} but only "
                                  f"{classes.n_seen} seen classes in {data / 'classes.parquet'}")
    n_val = held_out_count(classes.n_seen, p.mapping.n_val_classes)
    if n_val != p.mapping.n_val_classes:
        print(f"[fit_mapping] note: mapping.n_val_classes: {p.mapping.n_val_classes} is more than the "
              f"{classes.n_seen} seen classes allow (two stay to fit the map); holding out {n_val}", flush=True)
    val = held_out_classes(classes.n_seen, n_val, p.base.seed)
    true = imp.class_id.astype(np.int64)  # held out by true class, whatever logit an importance is of
    result = fit_mapping(classes.domain, labels, imp.values, val, p.mapping, seed=p.base.seed, true_labels=true,
                         epochs=epochs, hyper=hyper)
    inverse = fit_inverse_map(classes.domain, labels, imp.values, val, p.mapping, seed=p.base.seed,
                              true_labels=true, hyper=hyper)
    provenance = Provenance(imp.meta.get("layer", ""), imp.meta.get("pooling", ""), classes.domain_kind, val)
    attribute_names = classes.attribute_names or [f"dim_{i}" for i in range(classes.domain.shape[1])]
    # All outputs or none: the history is staged and moved into place after both maps are written.
    png = Path(history).with_suffix(".png")
    with atomic_path(history) as staged_history, atomic_path(png) as staged_png:
        _write_history(staged_history, result.history)
        draw_history(staged_png, result.history, {"held-out cosine distance": ["val_loss"],
                                           "held-out rank correlation": ["val_rank_corr"]},
                     f"fit_mapping: model selection on {len(val)} held-out seen classes")
        save_map(out, result, provenance)
        save_map(inverse_out, inverse, provenance, attribute_names, heldout=False)
    steps = {f"{prefix}{k}": [(int(h["epoch"]), float(h[k])) for h in r.history]
             for prefix, r in (("", result), ("inverse/", inverse)) for k in ("val_loss", "val_rank_corr")}
    return StageResult({**_selection("", result), **_selection("inverse/", inverse), "n_pairs": int(len(labels)),
                        "heldout_rule_epoch": result.heldout_epoch},
                       [Path(history), png], steps=steps)


def _selection(prefix: str, result: MappingResult) -> dict[str, float | int]:
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    return {f"{prefix}best_epoch": result.best_epoch, f"{prefix}val_rank_corr": best["val_rank_corr"],
            f"{prefix}val_loss": best["val_loss"]}


def _write_history(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
