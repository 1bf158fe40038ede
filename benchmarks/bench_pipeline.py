"""The whole pipeline's wall time per stage, without and with the decoded-image cache, side by side.

Copies the project (``dvc.yaml``, ``params.yaml``, ``src/``) into a temporary git + DVC project and
runs every stage once with ``cache.enabled: false`` (each stage decodes the image files, as before
the cache existed) and once with ``cache.enabled: true``, in the same process tree, one stage at a
time (``dvc repro --single-item -f <stage>``, so DVC's own overhead is the same in both arms).
Prints each stage's seconds in both arms and their ratio. Targets: no stage slower with the cache
(ratio <= 1.05, the noise of one run on a quiet machine), and the whole pipeline faster.

``--quick`` runs the tiny configuration of the tests (seconds per stage); the default runs the
embedded default (about 2 x 9 minutes on 2 CPUs). Run it on an idle machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = {  # the tests' tiny configuration (tests/tiny_project.py), for --quick
    "data": {"synthetic": {"n_classes": 12, "n_unseen": 3, "images_per_class": 12, "image_size": 32}},
    "model": {"width": 8, "hidden": 32, "image_size": 32},
    "finetune": {"epochs": 2, "batch_size": 32},
    "mapping": {"epochs": 4, "n_val_classes": 2, "candidate_epochs": [2, 4]},
    "inject": {"max_iters": 20, "pool_size": 24, "lr": [0.01], "lambda": [0.001], "ridge_alpha": [1.0],
               "eszsl_exponents": [0, 1]},
    "validate": {"fraction": 0.25, "min_classes": 2, "finetune_epochs": 1},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def project(root: Path, params: dict) -> dict[str, str]:
    """A throw-away copy of the project; returns the environment its commands run with."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "NIWT_PROGRESS": "0", "NIWT_TRACKING": "off", "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return env


def run_stages(root: Path, env: dict[str, str], stages: list[str]) -> dict[str, float]:
    seconds = {}
    for stage in stages:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", "-f", stage], cwd=root,
                              env=env, capture_output=True, text=True)
        seconds[stage] = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"dvc repro {stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        print(f"  {stage}: {seconds[stage]:.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", help="only these stages, each after the ones it needs (default: all)")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if args.quick:
        params = merge(params, TINY)
    params["base"]["seed"] = args.seed
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    if args.stages:  # in pipeline order; the caller names the upstream stages they need
        unknown = sorted(set(args.stages) - set(stages))
        if unknown:
            raise SystemExit(f"--stages: unknown {unknown}; valid: {stages}")
        stages = [s for s in stages if s in args.stages]
    report = Report(f"bench_pipeline ({'quick' if args.quick else 'default'}, per stage, 2 arms)")
    with tempfile.TemporaryDirectory(prefix="niwt-bench-pipeline-") as tmp:
        root = Path(tmp)
        arms = {}
        for arm, enabled in (("files", False), ("cache", True)):
            print(f"# arm {arm} (cache.enabled: {str(enabled).lower()})", flush=True)
            if arm == "files":
                env = project(root, merge(params, {"cache": {"enabled": False}}))
            else:
                (root / "params.yaml").write_text(yaml.safe_dump(merge(params, {"cache": {"enabled": True}}),
                                                                 sort_keys=False))
            arms[arm] = run_stages(root, env, stages)
    reads = [s for s in stages if s not in ("fingerprint", "prepare", "cache", "fit_mapping")]
    slower = []
    for stage in stages:
        before, after = arms["files"][stage], arms["cache"][stage]
        report.info(f"{stage}: s without / with cache", f"{before:.1f} / {after:.1f}")
        if stage in reads and after > 1.05 * before:
            slower.append(stage)
    total_before, total_after = sum(arms["files"].values()), sum(arms["cache"].values())
    report.ratio("pipeline_time_cache_vs_files", total_after / total_before, "<=", 1.0,
                 note=f"{total_after:.0f} s vs {total_before:.0f} s, the cache stage included")
    report.ratio("stages_slower_with_cache", float(len(slower)), "<=", 0.0, fmt="{:.0f}",
                 note=", ".join(slower) or "none")
    report.finish(args.json, {"seconds": arms})


if __name__ == "__main__":
    main()
