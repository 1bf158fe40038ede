"""The evaluation tables on disk: per-class accuracies (CSV for DVC plots, Parquet for
Polars/pandas) and the seen-unseen curves (CSV)."""

from __future__ import annotations

import csv
from pathlib import Path

from niwt.io.atomic import atomic_path


def write_per_class_csv(path: Path, per_class: dict, names: list[str], n_seen: int) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "class", "kind", "accuracy"])
        for method, accs in per_class.items():
            for c, acc in sorted(accs.items()):
                w.writerow([method, names[c], "seen" if c < n_seen else "unseen", f"{acc:.6f}"])
    return path


def write_per_class_parquet(path: Path, per_class: dict, names: list[str], n_seen: int) -> Path:
    """The per-class table as Parquet (method, class, seen, accuracy), for Polars/pandas users."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(m, names[c], c < n_seen, float(a)) for m, accs in per_class.items() for c, a in sorted(accs.items())]
    table = pa.table({"method": [r[0] for r in rows], "class": [r[1] for r in rows],
                      "seen": [r[2] for r in rows], "accuracy": pa.array([r[3] for r in rows], pa.float64())})
    pq.write_table(table, path)
    return path


def write_curves_csv(path: Path, curves: dict) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "gamma", "U", "S"])
        for method, (gammas, s_arr, u_arr) in curves.items():
            step = max(1, len(gammas) // 400)  # keep the plot file small; endpoints kept
            idx = sorted(set(range(0, len(gammas), step)) | {len(gammas) - 1})
            for i in idx:
                w.writerow([method, f"{gammas[i]:.6g}", f"{u_arr[i]:.6f}", f"{s_arr[i]:.6f}"])
    return path
