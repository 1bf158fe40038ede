"""``evaluate``: generalized zero-shot accuracy of every injected model, side by side.

Per method: S (per-class mean top-1 on test_seen over the joint label space), U (same on
test_unseen), H = 2SU/(S+U), ZSL T1 (argmax over unseen classes only), seen-only accuracy, and
the area under the seen-unseen curve of calibrated stacking (AUSUC, calibration-free). Penultimate
features of the test images are computed once; each method is a linear layer on top of them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from niwt.data.images import check_images_exist, make_loader
from niwt.data.tables import read_tables
from niwt.io.atomic import atomic_files, atomic_path
from niwt.metrics import (
    ausuc,
    gzsl_metrics,
    mean_per_class_accuracy,
    per_class_accuracy,
    seen_unseen_curve,
    select_gamma,
    zsl_top1,
)
from niwt.models.checkpoint import check_classes, load_checkpoint
from niwt.params import Params
from niwt.report import comparison_markdown
from niwt.stages import StageResult
from niwt.training import predict, resolve_device

METHOD_ORDER = ("niwt", "icis", "regression", "regression_rescaled", "eszsl")


def method_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, NIWT first, then peers in a fixed order."""
    found = {p.stem: p for p in Path(directory).glob("*.pt")}
    if not found:
        raise FileNotFoundError(f"{directory}: no injected checkpoints; run `dvc repro inject`")
    return [found[m] for m in METHOD_ORDER if m in found] + sorted(v for k, v in found.items() if k not in METHOD_ORDER)


def load_methods(checkpoints: list[Path], class_names: list[str]) -> dict[str, tuple]:
    """Load every checkpoint once and check its classes, before any feature is computed."""
    loaded = {}
    for path in checkpoints:
        model, meta = load_checkpoint(path)
        check_classes(meta, class_names, path, exact=True, what="classes (seen + unseen)")
        loaded[path.stem] = (model, meta)
    return loaded


def score_methods(checkpoints: list[Path], feats: np.ndarray, class_names: list[str],
                  loaded: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Joint-space scores (N, S+U) of each method on precomputed penultimate features."""
    loaded = loaded or load_methods(checkpoints, class_names)
    x = torch.as_tensor(feats)
    with torch.no_grad():
        return {name: model.classifier(x).numpy() for name, (model, _) in loaded.items()}


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


def run(p: Params, data: Path, injected: Path, plots: Path, progress: bool = True) -> StageResult:
    device = resolve_device(p.base.device)
    classes, splits = read_tables(data)
    test, val = splits.select("test_seen", "test_unseen"), splits.select("val")
    used = splits.select("test_seen", "test_unseen", "val")
    check_images_exist(used.path, used.image_id, data / "splits.parquet")
    checkpoints = method_checkpoints(injected)
    loaded = load_methods(checkpoints, classes.names)
    base, meta = loaded[checkpoints[0].stem]
    base = base.to(device)
    size, bs = meta["image_size"], p.evaluate.batch_size
    feats, y = predict(base, make_loader(test.path, test.class_id, size, train=False, batch_size=bs), device,
                       features=True, progress=progress, desc="test features")
    val_feats, val_y = predict(base, make_loader(val.path, val.class_id, size, train=False, batch_size=bs),
                               device, features=True, progress=progress, desc="val features")
    scores = score_methods(checkpoints, feats, classes.names, {k: (m.cpu(), mt) for k, (m, mt) in loaded.items()})
    metrics: dict[str, dict[str, float]] = {}
    curves, per_class = {}, {}
    seen_mask = np.arange(len(classes.names)) < classes.n_seen
    for method, s in scores.items():
        metrics[method], curves[method] = method_metrics(s, y, classes.n_seen)
        calibration = loaded[method][1].get("calibration")
        if calibration is not None:
            gamma = calibration_gamma(calibration, val_feats, val_y)
            cal = gzsl_metrics(s, y, seen_mask, y >= classes.n_seen, gamma=gamma)
            metrics[method].update({"gamma": gamma, "cal_S": cal["S"], "cal_U": cal["U"], "cal_H": cal["H"]})
        per_class[method] = per_class_accuracy(y, s.argmax(1), np.arange(len(classes.names)))
    # All plot files or none: they are staged and moved into ``plots`` only once every one is written.
    with atomic_files(plots) as staged:
        written = [_write_per_class(staged / "per_class_accuracy.csv", per_class, classes.names, classes.n_seen),
                   _write_curves(staged / "seen_unseen_curve.csv", curves)]
        written += _draw(staged, metrics, curves, per_class, classes.names, classes.n_seen)
        written.append(_write_per_class_parquet(staged / "per_class_accuracy.parquet", per_class, classes.names,
                                                classes.n_seen))
        written.append(_draw_confusion(staged / "confusion_niwt.png", scores.get("niwt", next(iter(scores.values()))),
                                       y, classes.names, classes.n_seen))
        table = staged / "comparison.md"
        table.write_text("GZSL comparison (%); cal_* use calibrated stacking with gamma chosen on val.\n\n"
                         + comparison_markdown(metrics))
        written.append(table)
    return StageResult(metrics, [Path(plots) / w.name for w in written])


def _write_per_class(path: Path, per_class: dict, names: list[str], n_seen: int) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "class", "kind", "accuracy"])
        for method, accs in per_class.items():
            for c, acc in sorted(accs.items()):
                w.writerow([method, names[c], "seen" if c < n_seen else "unseen", f"{acc:.6f}"])
    return path


def _write_per_class_parquet(path: Path, per_class: dict, names: list[str], n_seen: int) -> Path:
    """The per-class table as Parquet (method, class, seen, accuracy), for Polars/pandas users."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(m, names[c], c < n_seen, float(a)) for m, accs in per_class.items() for c, a in sorted(accs.items())]
    table = pa.table({"method": [r[0] for r in rows], "class": [r[1] for r in rows],
                      "seen": [r[2] for r in rows], "accuracy": pa.array([r[3] for r in rows], pa.float64())})
    pq.write_table(table, path)
    return path


def _draw_confusion(path: Path, scores: np.ndarray, y: np.ndarray, names: list[str], n_seen: int) -> Path:
    """Where unseen-test images go (rows: true unseen class; columns: unseen classes + 'any seen')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from niwt.metrics import confusion_matrix

    n = len(names)
    conf = confusion_matrix(y, scores.argmax(1), n)[n_seen:]  # (U, C)
    table = np.concatenate([conf[:, n_seen:], conf[:, :n_seen].sum(1, keepdims=True)], 1).astype(float)
    table /= np.maximum(table.sum(1, keepdims=True), 1)
    labels = [names[c] for c in range(n_seen, n)]
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * len(labels) + 2), max(4, 0.5 * len(labels) + 1.5)))
    ax.imshow(table, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels) + 1), labels + ["(any seen)"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i, j in zip(*np.nonzero(table >= 0.05), strict=True):
        ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="white" if table[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true unseen class", title="GZSL confusion of unseen-test images (niwt)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def _write_curves(path: Path, curves: dict) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "gamma", "U", "S"])
        for method, (gammas, s_arr, u_arr) in curves.items():
            step = max(1, len(gammas) // 400)  # keep the plot file small; endpoints kept
            idx = sorted(set(range(0, len(gammas), step)) | {len(gammas) - 1})
            for i in idx:
                w.writerow([method, f"{gammas[i]:.6g}", f"{u_arr[i]:.6f}", f"{s_arr[i]:.6f}"])
    return path


def _draw(plots: Path, metrics: dict, curves: dict, per_class: dict, names: list[str], n_seen: int) -> list[Path]:
    """PNG plots (DVC's HTML plots need a CDN; PNGs open anywhere, and go to MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for method, (_, s_arr, u_arr) in curves.items():
        ax.plot(u_arr, s_arr, label=f"{method} (AUSUC {metrics[method]['ausuc']:.3f})")
        ax.scatter([metrics[method]["U"]], [metrics[method]["S"]], s=18)
    ax.set(xlabel="unseen accuracy U", ylabel="seen accuracy S", title="Seen-unseen curve (calibrated stacking)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    curve_png = plots / "seen_unseen_curve.png"
    with atomic_path(curve_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    unseen = list(range(n_seen, len(names)))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(unseen)), 4))
    width = 0.8 / max(1, len(per_class))
    for i, (method, accs) in enumerate(per_class.items()):
        ax.bar(np.arange(len(unseen)) + i * width, [accs.get(c, 0.0) for c in unseen], width, label=method)
    ax.set_xticks(np.arange(len(unseen)) + 0.4 - width / 2, [names[c] for c in unseen], rotation=60,
                  ha="right", fontsize=7)
    ax.set(ylabel="GZSL accuracy", title="Per-class accuracy on unseen classes", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    bars_png = plots / "unseen_per_class.png"
    with atomic_path(bars_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return [curve_png, bars_png]
