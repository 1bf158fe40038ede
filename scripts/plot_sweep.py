"""Plot a DVC experiment sweep: one method's S, U, H and calibrated H against one param.

    dvc exp show --csv > exps.csv
    python scripts/plot_sweep.py exps.csv --param inject.lambda --out plots/lambda_sweep.png

`dvc exp show --csv` names a metric column by its file when several metric files share the key:
`metrics/gzsl/niwt.json:H` (one headline file per method, today's layout); older sweeps named it
`niwt.H` (one file holding every method). Both are read. A param set to a one-element list
(`-S 'inject.lambda=[0.001]'`) counts as that value; rows whose param is a longer list (the
validated candidates) or whose metrics are missing (`!`, empty: failed, queued) are skipped.
"""

from __future__ import annotations

import argparse
import math
import sys

import polars as pl

KEYS = ("S", "U", "H", "cal_H")


class SweepError(ValueError):
    """Nothing to plot: the CSV lacks the metric, the param or any usable row."""


def metric_column(columns: list[str], method: str, key: str) -> str | None:
    """The column of ``method``'s ``key``: ``<dir>/<method>.json:<key>`` (today) or ``<method>.<key>``."""
    for column in columns:
        path, sep, name = column.rpartition(":")
        if sep and name == key and path.rsplit("/", 1)[-1] == f"{method}.json":
            return column
    return f"{method}.{key}" if f"{method}.{key}" in columns else None


def param_value(text: str | None) -> float | None:
    """A param cell as one number: ``0.001`` or ``[0.001]``; None for empty cells and longer lists."""
    text = (text or "").strip()
    if text.startswith("[") and text.endswith("]"):
        items = [t for t in text[1:-1].split(",") if t.strip()]
        if len(items) != 1:
            return None
        text = items[0].strip()
    try:
        return float(text)
    except ValueError:
        return None


def sweep_rows(df: pl.DataFrame, param: str, method: str, prefix: str) -> list[tuple[float, dict[str, float]]]:
    """(param value, {S, U, H, cal_H}) of every experiment named ``prefix...`` that has them, sorted."""
    columns = {k: metric_column(df.columns, method, k) for k in KEYS}
    missing = [k for k, c in columns.items() if c is None]
    if missing:
        raise SweepError(f"no column for {method}'s {', '.join(missing)} (looked for "
                         f"'metrics/gzsl/{method}.json:{missing[0]}' and '{method}.{missing[0]}')")
    if param not in df.columns:
        raise SweepError(f"no param column {param!r}")
    named = df.filter(pl.col("Experiment").fill_null("").str.starts_with(prefix))
    rows = []
    for r in named.iter_rows(named=True):
        x = param_value(r[param])
        cells = [r[c] for c in columns.values()]
        if x is None or any(c in (None, "", "!", "-") for c in cells):
            continue
        rows.append((x, {k: float(r[c]) for k, c in columns.items()}))
    if not rows:
        raise SweepError(f"no experiment named {prefix!r}... has {method}'s H ({columns['H']}) and a single "
                         f"{param} value ({named.height} of {df.height} rows matched the name)")
    return sorted(rows, key=lambda row: row[0])


def draw(rows: list[tuple[float, dict[str, float]]], param: str, method: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = [v for v, _ in rows if v > 0]
    floor = min(positive) / 10 if positive else 1e-6
    xs = [x if x > 0 else floor for x, _ in rows]  # 0 drawn one decade left of the smallest value
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k in KEYS:
        ax.plot(xs, [100 * m[k] for _, m in rows], marker="o", label=k)
    ax.set_xscale("log")
    ax.set_xticks(xs, ["0" if x == 0 else f"1e{int(round(math.log10(x)))}" if math.log10(x).is_integer()
                       else f"{x:g}" for x, _ in rows])
    ax.set(xlabel=param, ylabel="accuracy (%)", title=f"{method}: regulariser sweep", ylim=(0, 100))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="output of `dvc exp show --csv`")
    parser.add_argument("--param", default="inject.lambda")
    parser.add_argument("--method", default="niwt")
    parser.add_argument("--prefix", default="lam-", help="only experiments whose name starts with this")
    parser.add_argument("--out", default="plots/lambda_sweep.png")
    args = parser.parse_args()
    try:
        rows = sweep_rows(pl.read_csv(args.csv, infer_schema_length=0), args.param, args.method, args.prefix)
    except (SweepError, FileNotFoundError) as err:
        print(f"plot_sweep: error: {args.csv}: {err}", file=sys.stderr)
        return 1
    draw(rows, args.param, args.method, args.out)
    for x, m in rows:
        print(f"| {x:g} | " + " | ".join(f"{100 * m[k]:.1f}" for k in KEYS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
