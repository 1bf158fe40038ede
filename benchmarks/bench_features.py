"""The whole pipeline on xlsa17-shaped ResNet-101 features (``data.name: xlsa17``), per stage, at real shapes.

Generates ``<DATASET>/res101.mat`` at the archive's real shapes (CUB: 11,788 x 2048, AWA2: 37,322 x 2048)
from the real ``att_splits.mat`` files (``tests/xlsa17_data.py``: labels consistent with every index set,
features with class structure drawn from the attributes), runs the README's xlsa17 recipe (``RECIPE``,
the same ``-S`` overrides as its ``dvc exp run`` command) with ``dvc repro`` in a temporary copy of the
project, one stage at a time, and prints a markdown report: seconds per stage and in all, against the
targets (CUB within 5 minutes on 2 CPUs, AWA2 within 10), and each method's ZSL T1 / u / s / H (and
calibrated H). The features are generated, so the accuracies say that the pipeline learns what the
attributes carry, nothing about the real archive; the timings are what a user with it would see.

Usage: ``python benchmarks/bench_features.py [--dataset CUB AWA2] [--keep DIR] [--out FILE] [--set K=V ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))
from bench_protocol import dotted, make_project, merge, sh  # noqa: E402

from niwt.config.recipes import XLSA17 as RECIPE  # noqa: E402  (the README's dvc exp run command)
from xlsa17_data import default_splits, write_res101  # noqa: E402

TARGET_SECONDS = {"CUB": 300, "AWA2": 600}
STAGES = ["fingerprint", "prepare", "cache", "finetune", "finetune_validation", "validate", "extract", "fit_mapping",
          "inject", "evaluate", "explain"]


def recipe_params(dataset: str, root: Path, extra: list[str]) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    over = dotted([f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in RECIPE.items()])
    params = merge(merge(params, over), {"data": {"dataset": dataset, "root": str(root)}})
    return merge(params, dotted(extra))


def run_dataset(dataset: str, base: Path, args: argparse.Namespace) -> dict:
    """Generate, run every stage, and read the metrics of one dataset."""
    raw = base / "raw"
    start = time.perf_counter()
    if not (raw / dataset / "res101.mat").is_file():
        write_res101(raw, dataset, default_splits(dataset), dim=args.dim, seed=args.seed, noise=args.noise)
    generated = time.perf_counter() - start
    project = base / "project"
    env = make_project(project, recipe_params(dataset, raw, args.set))
    env = {**env, "NIWT_WORKERS": "0"}
    seconds = {}
    for stage in STAGES:
        start = time.perf_counter()
        sh([sys.executable, "-m", "dvc", "repro", "--single-item", stage], project, env)
        seconds[stage] = time.perf_counter() - start
        print(f"[{dataset}] {stage}: {seconds[stage]:.1f} s", flush=True)
    metrics = {m.stem: json.loads(m.read_text()) for m in sorted((project / "metrics" / "gzsl").glob("*.json"))}
    prepare = json.loads((project / "stats" / "prepare.json").read_text())
    return {"seconds": seconds, "generated": generated, "metrics": metrics, "prepare": prepare}


def report(results: dict[str, dict], args: argparse.Namespace) -> str:
    lines = [f"# bench_features: the pipeline on xlsa17-shaped features ({args.dim}-d, noise {args.noise}, "
             f"seed {args.seed})", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads default; "
             f"recipe: {json.dumps(RECIPE)}" + (f", plus {args.set}" if args.set else ""), ""]
    names = list(results)
    lines += ["| stage | " + " | ".join(f"{d} (s)" for d in names) + " |", "|---" * (len(names) + 1) + "|"]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{results[d]['seconds'][stage]:.1f}" for d in names) + " |")
    totals = {d: sum(results[d]["seconds"].values()) for d in names}
    lines.append("| **total** | " + " | ".join(f"**{totals[d]:.0f}**" for d in names) + " |")
    lines.append("| target | " + " | ".join(
        f"{TARGET_SECONDS.get(d, 0)} ({'PASS' if totals[d] <= TARGET_SECONDS.get(d, 0) else 'FAIL'})"
        for d in names) + " |")
    for d in names:
        p = results[d]["prepare"]
        lines += ["", f"## {d}: {p['n_seen']} seen + {p['n_unseen']} unseen classes; train {p['n_train']}, "
                      f"val {p['n_val']}, test_seen {p['n_test_seen']}, test_unseen {p['n_test_unseen']} "
                      f"(features generated in {results[d]['generated']:.1f} s, not counted)", "",
                  "| method | ZSL T1 | u | s | H | cal_H | AUSUC |", "|---|---|---|---|---|---|---|"]
        for method, m in results[d]["metrics"].items():
            lines.append(f"| {method} | {100 * m['ZSL_T1']:.1f} | {100 * m['U']:.1f} | {100 * m['S']:.1f} | "
                         f"{100 * m['H']:.1f} | {100 * m['cal_H']:.1f} | {100 * m['AUSUC']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", nargs="+", default=["CUB", "AWA2"])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--noise", type=float, default=3.0, help="generated features' noise (3: CUB ZSL ~0.7 by "
                                                             "attribute regression, not trivially separable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep the projects in KEEP/<DATASET> (rerun: only what changed)")
    ap.add_argument("--out", type=Path, help="also write the report here")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE param override")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        for dataset in args.dataset:
            base = (args.keep or Path(tmp)) / dataset
            results[dataset] = run_dataset(dataset, base, args)
    text = report(results, args)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
