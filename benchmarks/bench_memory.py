"""Peak memory and time of the ``extract`` stage as the dataset grows (streaming check).

Builds two synthetic datasets that differ only in ``images_per_class`` (the default config and
``--scale`` times larger; ``--quick``: a tiny config and 2x), prepares each (in-process, not
timed as part of the comparison), writes a random-init small_cnn checkpoint with the dataset's
seen class names, then runs ``python -m niwt.cli extract`` in a subprocess per dataset and reads
that child's own peak RSS and CPU time from ``os.wait4`` (``ru_maxrss``). A third subprocess that
only imports the extract stage and loads the checkpoint gives the fixed baseline (interpreter,
torch, model), so the data-dependent part can be read off.

Expected: time grows ~linearly with the number of images (per-image CPU time ratio ~1; CPU time
rather than wall time because on a shared machine wall time also counts waiting for a core),
peak RSS stays near-flat (shards of ``extract.shard_size`` images are computed and written one at
a time; nothing holds all importances).

Usage: ``python benchmarks/bench_memory.py [--quick] [--scale 10] [--workdir DIR]``
(``--workdir`` keeps the generated data and reuses it on the next run.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

# prepare.run(progress=False) does not reach the synthetic generator's tqdm bar; tqdm reads this
# variable when it is first imported, so set it before anything imports it.
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Report, base_parser  # noqa: E402

QUICK_SYNTHETIC = {"n_classes": 12, "n_unseen": 3, "images_per_class": 16, "image_size": 32}


def write_params(path: Path, synthetic: dict[str, Any]) -> dict[str, Any]:
    """The repository's params.yaml with the synthetic block overridden (the device is NIWT_DEVICE)."""
    src = REPO / "params.yaml"
    raw = (yaml.safe_load(src.read_text()) or {}) if src.is_file() else {}
    data = raw.setdefault("data", {})
    data["name"] = "synthetic"
    data["synthetic"] = {**data.get("synthetic", {}), **synthetic}
    model = raw.setdefault("model", {})
    model.update(arch="smallcnn", weights="none")
    raw.setdefault("extract", {})["layer"] = "body.block4"
    if "image_size" in synthetic:
        model["image_size"] = synthetic["image_size"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


def prepare_dataset(params_path: Path, out: Path, seed_checkpoint: int) -> tuple[Path, float, int]:
    """Prepare (unless already there) and write a matching random-init checkpoint.

    Returns:
        (checkpoint path, prepare seconds (0 when reused), number of train+val images)
    """
    import torch

    from niwt.config.load import load_params
    from niwt.config.runtime import load_runtime
    from niwt.data.tables import read_classes, read_splits
    from niwt.models.checkpoint import CheckpointMeta, save_checkpoint
    from niwt.models.networks import small_cnn
    from niwt.stages import prepare

    p = load_params(params_path)
    start = time.perf_counter()
    seconds = 0.0
    if not (out / "splits.parquet").is_file():
        prepare.run(p, load_runtime({"NIWT_PROGRESS": "0"}), out)
        seconds = time.perf_counter() - start
    classes = read_classes(out / "classes.parquet")
    n_images = len(read_splits(out / "splits.parquet").select("train", "val").image_id)
    ckpt = out.parent / f"{out.name}-random.pt"
    if not ckpt.is_file():
        torch.manual_seed(seed_checkpoint)
        m = p.model
        model = small_cnn(classes.n_seen, width=m.width, hidden=m.hidden, image_size=m.image_size)
        save_checkpoint(ckpt, model, CheckpointMeta("smallcnn", tuple(classes.names[: classes.n_seen]),
                                                    classes.n_seen, m.image_size, m.width, m.hidden))
    return ckpt, seconds, n_images


def run_child(cmd: list[str], cwd: Path, threads: int = 0) -> dict[str, float]:
    """Run ``cmd``; return its own peak RSS (MiB), wall and CPU seconds (from ``os.wait4``)."""
    env = {**os.environ, "NIWT_TRACKING": "off", "NIWT_PROGRESS": "0", "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op pool in the child
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
    return {"rss_mib": usage.ru_maxrss / 1024, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, help="images_per_class multiplier of the large dataset "
                                                  "(default 10; --quick 2)")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) generated data here")
    parser.add_argument("--no-baseline", action="store_true", help="skip the import-only baseline process")
    args = parser.parse_args()
    scale = args.scale or (2 if args.quick else 10)
    baseline = not (args.no_baseline or args.quick)
    print(f"# {os.cpu_count()} CPUs; extract runs in subprocesses (python -m niwt.cli extract), "
          f"device {args.device}", flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="niwt-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = REPO / "params.yaml"
        default = (yaml.safe_load(src.read_text()) or {}).get("data", {}).get("synthetic", {}) if src.is_file() else {}
        small = dict(QUICK_SYNTHETIC) if args.quick else {**default}
        small.setdefault("images_per_class", 100)
        large = {**small, "images_per_class": small["images_per_class"] * scale}
        tag = "quick" if args.quick else "full"
        report = Report(f"bench_memory ({tag}, images_per_class {small['images_per_class']} vs "
                        f"{large['images_per_class']}, {args.device})")
        results: dict[str, dict[str, float]] = {}
        ckpts = {}
        for name, synthetic in (("small", small), ("large", large)):
            params = work / f"params-{tag}-{name}.yaml"
            write_params(params, synthetic)
            data = work / f"data-{tag}-{name}"
            ckpt, prep_s, n_images = prepare_dataset(params, data, args.seed)
            ckpts[name] = ckpt
            print(f"  {name}: {n_images} train+val images to extract (prepare {prep_s:.1f} s"
                  f"{', reused' if prep_s == 0 else ''})", flush=True)
            out = work / f"importances-{tag}-{name}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "niwt.cli", "extract", "--data", str(data), "--model", str(ckpt),
                   "--out", str(out), "--params", str(params), "--quiet", "--metrics", str(work / f"{name}.json"),
                   "--device", str(args.device)]
            r = run_child(cmd, work, args.threads)
            rows = json.loads((out / "_manifest.json").read_text())["n_rows"]
            if rows != n_images:
                raise SystemExit(f"extract wrote {rows} rows for {n_images} images")
            results[name] = {**r, "images": n_images}
            shutil.rmtree(out, ignore_errors=True)
        if baseline:
            code = ("import sys, niwt.cli, niwt.stages.extract; from niwt.models.checkpoint import load_checkpoint; "
                    "load_checkpoint(sys.argv[1])")
            results["baseline"] = {**run_child([sys.executable, "-c", code, str(ckpts["small"])], work, args.threads),
                                   "images": 0}

        for name, r in results.items():
            report.info(f"{name}: images", r["images"], "{:d}")
            report.info(f"{name}: peak RSS, MiB", r["rss_mib"], "{:.0f}")
            report.info(f"{name}: wall s", r["wall_s"], "{:.1f}")
            report.info(f"{name}: CPU s", r["cpu_s"], "{:.1f}")
        s, big = results["small"], results["large"]
        fixed = results.get("baseline", {"rss_mib": 0.0, "wall_s": 0.0})
        report.ratio("images_large_vs_small", big["images"] / s["images"], suffix="x")
        report.ratio("peak_rss_large_vs_small", big["rss_mib"] / s["rss_mib"], "<=", 1.2, suffix="x")
        if baseline:
            report.info("small: peak RSS above import-only baseline, MiB", s["rss_mib"] - fixed["rss_mib"], "{:.0f}")
            report.info("large: peak RSS above import-only baseline, MiB", big["rss_mib"] - fixed["rss_mib"],
                        "{:.0f}")
        report.ratio("time_large_vs_small", big["wall_s"] / s["wall_s"], suffix="x")
        # per-image cost with the fixed start-up (the import-only process) removed when measured. CPU
        # time is the headline: on a shared machine wall time also counts waiting for a core.
        fixed_cpu = results.get("baseline", {}).get("cpu_s", 0.0)
        note = "start-up removed" if baseline else "start-up included"
        cpu = [(r["cpu_s"] - fixed_cpu) / r["images"] for r in (s, big)]
        wall = [(r["wall_s"] - fixed["wall_s"]) / r["images"] for r in (s, big)]
        report.info(f"small: CPU ms per image ({note})", 1e3 * cpu[0], "{:.2f}")
        report.info(f"large: CPU ms per image ({note})", 1e3 * cpu[1], "{:.2f}")
        report.ratio("wall_time_per_image_large_vs_small", wall[1] / wall[0], suffix="x", note=note)
        report.ratio("cpu_time_per_image_large_vs_small", cpu[1] / cpu[0], "<=", 1.2, suffix="x", note=note)
        report.finish(args.json, {"results": results, "scale": scale})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
