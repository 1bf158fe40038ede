"""``evaluate``: generalized zero-shot accuracy of every injected model, side by side.

Per method: S (per-class mean top-1 on test_seen over the joint label space), U (same on
test_unseen), H = 2SU/(S+U), ZSL T1 (argmax over unseen classes only), seen-only accuracy, the
area under the seen-unseen curve of calibrated stacking (AUSUC, calibration-free), and S/U/H
calibrated with the gamma ``validate`` chose on its class-disjoint validation problem (``cal_*``; for
a method whose calibrated reading ``validate`` chose under a setting of its own, NIWT, on the rows its
checkpoint carries for that reading), carried to this network through the seen margins, measured
there on the validation problem's seen images and here on the val split's
(:func:`~niwt.evaluation.gzsl.transfer_gamma`; ``gamma`` as applied, ``gamma_validation`` as chosen);
beside them, for comparison, the older biased choice: the gamma picked on val images with the
mapping's held-out seen classes as pseudo-unseen, which the backbone was trained on
(``heldout_*``). Penultimate features of the test images are computed
once; each method is a linear layer on top of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from niwt.data.cache import open_cache
from niwt.data.images import check_images_exist, make_loader
from niwt.data.tables import read_tables
from niwt.evaluation import outputs, tables
from niwt.evaluation.gzsl import (
    calibrated,
    calibrated_scores,
    calibration_gamma,
    load_methods,
    method_metrics,
    score_methods,
    transfer_gamma,
)
from niwt.evaluation.metrics import per_class_accuracy
from niwt.evaluation.plots import draw_confusion, draw_seen_unseen_curves, draw_unseen_bars
from niwt.evaluation.report import calibration_markdown, comparison_markdown, settings_markdown
from niwt.evaluation.tables import (
    write_curves_csv,
    write_per_class_csv,
    write_per_class_dir,
    write_per_class_parquet,
)
from niwt.injection.registry import method_checkpoints
from niwt.io.atomic import atomic_files, atomic_path, write_json
from niwt.io.choices import Choices, read_choices
from niwt.models.checkpoint import CheckpointMeta
from niwt.models.networks import ModelError
from niwt.models.training import predict, resolve_device
from niwt.params import Params, Runtime
from niwt.stages import StageResult


def run(p: Params, rt: Runtime, data: Path, injected: Path, validation: Path, plots: Path,
        headline: Path, cache: Path | None = None) -> StageResult:
    """GZSL numbers of every method: all of them in the stage's stats (``--stats``), the headline
    (:func:`niwt.evaluation.tables.headline`) as one DVC metrics file per method in ``headline``."""
    device = resolve_device(rt.device)
    classes, splits = read_tables(data)
    test, val = splits.select("test_seen", "test_unseen"), splits.select("val")
    used = splits.select("test_seen", "test_unseen", "val")
    check_images_exist(used.path, used.image_id, data / "splits.parquet")
    checkpoints = method_checkpoints(injected)
    loaded = load_methods(checkpoints, classes.names)
    choices = read_choices(validation)
    choices.require([c.stem for c in checkpoints])
    for path in checkpoints:  # before any feature: the calibrated readings' rows are the ones validate chose
        _check_reading(choices, path, loaded[path.stem][1])
    base, meta = loaded[checkpoints[0].stem]
    base = base.to(device)
    size, bs = meta.image_size, rt.inference_batch("features")
    images = open_cache(cache, data / "splits.parquet", size)

    def features(table, desc: str) -> tuple[np.ndarray, np.ndarray]:
        loader = make_loader(table.path, table.class_id, size, train=False, batch_size=bs, cache=images)
        return predict(base, loader, device, features=True, progress=rt.progress, desc=desc)

    feats, y = features(test, "test features")
    val_feats, val_y = features(val, "val features")
    scores, val_scores = score_methods(loaded, feats), score_methods(loaded, val_feats)
    metrics: dict[str, dict[str, float]] = {}
    curves, per_class = {}, {}
    paths = {c.stem: c for c in checkpoints}
    for method, s in scores.items():
        metrics[method], curves[method] = method_metrics(s, y, classes.n_seen)
        reading, meta_m, where = choices.calibrated(method), loaded[method][1], str(paths[method])
        own = calibrated_scores(meta_m, feats, s, where)  # the calibrated reading's rows (NIWT's own setting)
        own_val = calibrated_scores(meta_m, val_feats, val_scores[method], where)
        gamma = transfer_gamma(reading.gamma, reading.margin, reading.spread, own_val, classes.n_seen)
        metrics[method].update(calibrated(own, y, classes.n_seen, gamma))
        metrics[method].update(gamma_validation=reading.gamma)
        calibration = _calibration(meta_m, where)
        if calibration is not None:  # the older, biased choice, for comparison, on the calibrated reading's rows
            old = calibrated(own, y, classes.n_seen, calibration_gamma(calibration, val_feats, val_y))
            metrics[method].update({f"heldout_{k.removeprefix('cal_')}": v for k, v in old.items()})
        per_class[method] = per_class_accuracy(y, s.argmax(1), np.arange(len(classes.names)))
    names, n_seen = classes.names, classes.n_seen
    shown = outputs.confusion_method(list(scores))
    # All plot files or none: they are staged and moved into ``plots`` only once every one is written.
    with atomic_files(plots) as staged:
        written = [write_per_class_csv(staged / outputs.PER_CLASS_CSV, per_class, names, n_seen),
                   *write_curves_csv(staged / outputs.CURVES_DIR, curves),
                   *write_per_class_dir(staged / outputs.PER_CLASS_DIR, per_class, names, n_seen),
                   draw_seen_unseen_curves(staged / outputs.SEEN_UNSEEN_PLOT, metrics, curves),
                   draw_unseen_bars(staged / outputs.UNSEEN_BARS_PLOT, per_class, names, n_seen),
                   write_per_class_parquet(staged / outputs.PER_CLASS_PARQUET, per_class, names, n_seen),
                   draw_confusion(staged / outputs.confusion_plot(shown), scores[shown], y, names, n_seen, shown)]
        table = staged / outputs.COMPARISON_TABLE
        table.write_text("GZSL comparison (%); cal_* use calibrated stacking with the gamma validate chose on "
                         "classes its validation backbone never saw, carried to this network through the seen "
                         "margins (docs/protocol.md), on the rows of the setting chosen for that reading (last "
                         "table).\n\n" + comparison_markdown(metrics)
                         + "\nCalibration rules on the test split (%): the class-disjoint gamma of validate (as "
                         "applied here; gamma_validation in stats/evaluate.json as chosen), and the older gamma "
                         "chosen on seen classes the finetuned network was trained on.\n\n"
                         + calibration_markdown(metrics)
                         + "\nThe setting each reading comes from (validate's choices; a method chosen by "
                           "uncalibrated H gets a calibrated reading of its own, chosen by calibrated H on the same "
                           "forward map).\n\n"
                         + settings_markdown({m: (choices.hyper[m], choices.calibrated(m).hyper
                                                  if choices.separate(m) else None) for m in metrics}))
        written.append(table)
        relative = [w.relative_to(staged) for w in written]
    with atomic_path(headline) as staged:  # the declared DVC metrics: one small file per method
        staged.mkdir()
        for method, m in metrics.items():
            write_json(staged / f"{method}.json", tables.headline(m))
    runs = {method: tables.headline(m) for method, m in metrics.items()}
    return StageResult(metrics, [Path(plots) / r for r in relative], runs=runs)


def _calibration(meta: CheckpointMeta, path: str) -> dict | None:
    """The held-out-seen calibration problem's rows of the calibrated reading: its own setting's
    where the checkpoint carries them, else the method's as shipped."""
    if meta.calibration is None or meta.calibrated_rows is None:
        return meta.calibration
    weight, bias = (meta.calibrated_rows.get(k) for k in ("calibration_weight", "calibration_bias"))
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise ModelError(f"{path}: its calibrated reading lacks the rows of its held-out calibration problem; "
                         "rerun inject")
    return {**meta.calibration, "weight": weight, "bias": bias}


def _check_reading(choices: Choices, path: Path, meta: CheckpointMeta) -> None:
    """A checkpoint carries its calibrated reading's own rows exactly when ``validate`` chose that
    reading under another setting, and under that setting; else it was injected from other choices."""
    method = path.stem
    want = choices.calibrated(method).hyper if choices.separate(method) else None
    rows = meta.calibrated_rows
    have = None if rows is None else {k: float(v) for k, v in (rows.get("setting") or {}).items()}
    if want != have:
        built = f"the setting {have}" if have else "its setting as shipped"
        chose = f"the setting {want}" if want else "its setting as shipped (no calibrated choice of its own)"
        raise ModelError(f"{path}: its calibrated reading was built under {built}, but {choices.path} chose "
                         f"{chose} for it; rerun inject")
