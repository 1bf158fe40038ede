"""Plot a DVC experiment sweep: NIWT's S, U, H (and calibrated H) against one param.

    dvc exp show --csv > exps.csv
    python scripts/plot_sweep.py exps.csv --param inject.lambda --out plots/lambda_sweep.png
"""

from __future__ import annotations

import argparse
import math

import polars as pl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="output of `dvc exp show --csv`")
    parser.add_argument("--param", default="inject.lambda")
    parser.add_argument("--method", default="niwt")
    parser.add_argument("--prefix", default="lam-", help="only experiments whose name starts with this")
    parser.add_argument("--out", default="plots/lambda_sweep.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pl.read_csv(args.csv, infer_schema_length=0).filter(pl.col("Experiment").str.starts_with(args.prefix))
    keys = ["S", "U", "H", "cal_H"]
    rows = sorted((float(r[args.param]), {k: float(r[f"{args.method}.{k}"]) for k in keys})
                  for r in df.iter_rows(named=True) if r.get(f"{args.method}.H") not in (None, "", "!"))
    xs = [x if x > 0 else min(v for v, _ in rows if v > 0) / 10 for x, _ in rows]  # 0 drawn one decade left
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k in keys:
        ax.plot(xs, [100 * m[k] for _, m in rows], marker="o", label=k)
    ax.set_xscale("log")
    ax.set_xticks(xs, ["0" if x == 0 else f"1e{int(round(math.log10(x)))}" if math.log10(x).is_integer()
                       else f"{x:g}" for x, _ in rows])
    ax.set(xlabel=args.param, ylabel="accuracy (%)", title=f"{args.method}: regulariser sweep", ylim=(0, 100))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    for x, m in rows:
        print(f"| {x:g} | " + " | ".join(f"{100 * m[k]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
