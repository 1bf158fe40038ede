"""Past one process, side by side in one run: 2-process DDP fine-tuning vs 1 process, and ``validate``
on a 2-worker Dask LocalCluster vs local.

Copies the project into a temporary git + DVC project (as ``bench_pipeline.py``), prepares the data
and the decoded-image cache once, then for each seed runs ``niwt finetune`` with ``--nproc 1`` and
``--nproc 2`` (the same global batch: each of the 2 ranks takes half of every batch) and reports

* the wall-time ratio (2 processes / 1; on a 2-core machine each rank gets one thread where the single
  process had two, so expect no speed-up there: the number that matters comes from GPUs, see
  ``gpu_check.sh --nproc``);
* how far the 2-process numbers are from the 1-process ones: final validation and test-seen
  accuracy (percentage points) and the per-epoch training loss (relative), the largest over seeds,
  next to the spread of the 1-process numbers over seeds (the noise they must be compared with);
* ``validate`` wall time on Dask (a 2-worker LocalCluster; each task runs with the parent's torch
  threads, for bit-identical results) vs local, and whether the choices agree.

``--quick`` runs the tests' tiny configuration (seconds); the default runs the embedded default
(about 12 minutes on 2 CPUs with 3 seeds). Run it on an idle machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser, setup  # noqa: E402
from bench_pipeline import TINY, merge, project  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def niwt(root: Path, env: dict[str, str], *args: str) -> float:
    """Run one ``niwt`` command in ``root``; its wall seconds (a failure stops the benchmark)."""
    import subprocess

    start = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "niwt"), *args], cwd=root, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"niwt {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def finetune(root: Path, env: dict[str, str], nproc: int, tag: str) -> tuple[float, dict, list[float]]:
    """(seconds, stats, per-epoch training loss) of one ``niwt finetune`` with ``nproc`` processes."""
    seconds = niwt(root, env, "finetune", "--data", "data/prepared", "--cache", "data/cache", "--out", f"{tag}.pt",
                   "--history", f"{tag}.csv", "--stats", f"{tag}.json", "--nproc", str(nproc))
    lines = (root / f"{tag}.csv").read_text().splitlines()[1:]
    return seconds, json.loads((root / f"{tag}.json").read_text()), [float(x.split(",")[2]) for x in lines]


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=0, help="seeds to compare over (default: 3; 1 with --quick)")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    setup(args)  # names the machine
    report = Report(f"2-process DDP and Dask validate vs one process ({'tiny' if args.quick else 'embedded default'}"
                    f", {seeds} seed{'s' if seeds > 1 else ''})")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge(base, TINY) if args.quick else base
    with tempfile.TemporaryDirectory(prefix="niwt-bench-scaling-") as tmp:
        root = Path(tmp)
        env = project(root, params)
        env["NIWT_DEVICE"] = args.device
        niwt(root, env, "prepare", "--out", "data/prepared")
        niwt(root, env, "cache", "--data", "data/prepared", "--out", "data/cache")
        times: dict[int, list[float]] = {1: [], 2: []}
        acc: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
        loss_gap = 0.0
        for seed in range(seeds):
            (root / "params.yaml").write_text(yaml.safe_dump(merge(params, {"base": {"seed": seed}}), sort_keys=False))
            losses = {}
            for nproc in (1, 2):  # side by side, the same seed and data
                seconds, stats, losses[nproc] = finetune(root, env, nproc, f"s{seed}p{nproc}")
                times[nproc].append(seconds)
                acc[nproc].append((stats["val_acc"], stats["test_seen_acc"]))
                print(f"  seed {seed}, {nproc} process(es): {seconds:.1f} s, val acc {stats['val_acc']:.4f}, "
                      f"test seen acc {stats['test_seen_acc']:.4f}", flush=True)
            print(f"  seed {seed} training loss per epoch, 1 / 2 processes: "
                  + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(losses[1], losses[2], strict=True)), flush=True)
            loss_gap = max(loss_gap, max(abs(a - b) / a for a, b in zip(losses[1], losses[2], strict=True)))
        report.ratio("ddp_time_2proc_vs_1proc", sum(times[2]) / sum(times[1]), suffix="x",
                     note="whole finetune stage, 1 thread per rank vs 2 threads")
        gaps = [max(abs(a[i] - b[i]) for a, b in zip(acc[1], acc[2], strict=True)) * 100 for i in (0, 1)]
        report.ratio("ddp_val_acc_gap_pp", gaps[0], fmt="{:.2f}", note="largest |2-proc - 1-proc| over seeds")
        report.ratio("ddp_test_seen_acc_gap_pp", gaps[1], fmt="{:.2f}")
        report.ratio("ddp_train_loss_rel_gap", loss_gap, fmt="{:.3f}", note="largest over epochs and seeds")
        if seeds > 1:
            for i, name in ((0, "val"), (1, "test_seen")):
                report.info(f"1-process {name} acc spread over seeds (std, pp)",
                            statistics.stdev(a[i] for a in acc[1]) * 100, fmt="{:.2f}")

        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        niwt(root, env, "finetune_validation", "--data", "data/prepared", "--cache", "data/cache",
             "--out", "backbone.pt")
        common = ("validate", "--data", "data/prepared", "--cache", "data/cache", "--backbone", "backbone.pt")
        local = niwt(root, env, *common, "--out", "local.json")
        dask = niwt(root, env, *common, "--out", "dask.json", "--runner", "dask", "--dask-workers", "2")
        report.ratio("validate_time_dask_vs_local", dask / local, suffix="x",
                     note="2 workers, each task with the parent's threads; cluster start included")
        same = (json.loads((root / "local.json").read_text())["choices"]
                == json.loads((root / "dask.json").read_text())["choices"])
        report.info("validate choices identical (Dask vs local)", str(same))
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
