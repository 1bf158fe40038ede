"""The evaluation tables on disk: per-class accuracies (CSV for DVC plots, Parquet for
Polars/pandas) and the seen-unseen curves (CSV)."""

from __future__ import annotations

import csv
from pathlib import Path

from niwt.errors import InputError
from niwt.evaluation.outputs import PER_CLASS_COLUMNS
from niwt.io.atomic import atomic_path


def write_per_class_csv(path: Path, per_class: dict, names: list[str], n_seen: int) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PER_CLASS_COLUMNS)
        for method, accs in per_class.items():
            for c, acc in sorted(accs.items()):
                w.writerow([method, names[c], "seen" if c < n_seen else "unseen", f"{acc:.6f}"])
    return path


def read_per_class_csv(path: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(methods, ``{class: {method: accuracy}}``) from :func:`write_per_class_csv`'s file, methods in
    the order they first appear (evaluate writes them in registry order), for the reports that show
    the accuracies per class."""
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in PER_CLASS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: no column {missing} (header {reader.fieldnames}); rerun `dvc repro evaluate`")
        acc: dict[str, dict[str, float]] = {}
        methods: list[str] = []
        for row in reader:
            if row["method"] not in methods:
                methods.append(row["method"])
            try:
                acc.setdefault(row["class"], {})[row["method"]] = float(row["accuracy"])
            except ValueError as err:
                raise InputError(f"{path}: line {reader.line_num}: accuracy {row['accuracy']!r} is not a number; "
                                 "rerun `dvc repro evaluate`") from err
    return methods, acc


def write_per_class_parquet(path: Path, per_class: dict, names: list[str], n_seen: int) -> Path:
    """The per-class table as Parquet (method, class, seen, accuracy), for Polars/pandas users."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(m, names[c], c < n_seen, float(a)) for m, accs in per_class.items() for c, a in sorted(accs.items())]
    table = pa.table({"method": [r[0] for r in rows], "class": [r[1] for r in rows],
                      "seen": [r[2] for r in rows], "accuracy": pa.array([r[3] for r in rows], pa.float64())})
    pq.write_table(table, path)
    return path


def write_curves_csv(directory: Path, curves: dict) -> list[Path]:
    """One ``<method>.csv`` (gamma, U, S) per method: one series per file, as DVC plots draw them."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for method, (gammas, s_arr, u_arr) in curves.items():
        step = max(1, len(gammas) // 400)  # keep the plot file small; endpoints kept
        idx = sorted(set(range(0, len(gammas), step)) | {len(gammas) - 1})
        with atomic_path(directory / f"{method}.csv") as tmp, tmp.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["gamma", "U", "S"])
            w.writerows([f"{gammas[i]:.6g}", f"{u_arr[i]:.6f}", f"{s_arr[i]:.6f}"] for i in idx)
        written.append(directory / f"{method}.csv")
    return written


def write_per_class_dir(directory: Path, per_class: dict, names: list[str], n_seen: int) -> list[Path]:
    """One ``<method>.csv`` (class, kind, accuracy) per method, unseen classes first: a DVC bar plot
    with one panel per method."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for method, accs in per_class.items():
        order = [*range(n_seen, len(names)), *range(n_seen)]
        with atomic_path(directory / f"{method}.csv") as tmp, tmp.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["class", "kind", "accuracy"])
            w.writerows([names[c], "seen" if c < n_seen else "unseen", f"{accs.get(c, 0.0):.6f}"] for c in order)
        written.append(directory / f"{method}.csv")
    return written


HEADLINE = {"S": "S", "U": "U", "H": "H", "cal_H": "cal_H", "AUSUC": "ausuc", "ZSL_T1": "zsl_top1",
            "seen_acc": "seen_acc"}


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The numbers a method is compared by (DVC metrics, MLflow per-method runs), rounded to 4 digits:
    S, U, H (GZSL), cal_H (calibrated stacking), AUSUC, ZSL_T1 (unseen-only top-1) and seen_acc."""
    return {name: round(float(metrics[key]), 4) for name, key in HEADLINE.items() if key in metrics}
