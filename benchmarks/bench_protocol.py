"""The class-disjoint validation protocol at a real benchmark's size: a CUB-shaped dataset, end to end.

Generates a CUB-shaped image dataset from the real xlsa17 CUB split files (``cub_shaped.py``: 200
classes, 312 attributes, 150 seen + 50 unseen, 7,057 / 1,764 / 2,967 trainval / test_seen /
test_unseen images, about 59 per class; 32-px images drawn from each class's attributes), runs the
pipeline on it in a temporary copy of the project (``data.name: folder``, ``model.arch: smallcnn``)
up to ``evaluate`` (``dvc repro evaluate``), and reads, per method:

* validation H of the chosen setting (``models/validation.json``, ``stats/validate.json``);
* test H, calibrated H (gamma chosen by ``validate``) and AUSUC (``metrics/gzsl/<method>.json``);
* the test ORACLE, for diagnosis only (never used to choose): every setting of ``validate``'s grid
  (NIWT's subsampled by ``--niwt-stride``) built as ``inject`` builds it, on the same finetuned
  network, and scored on the test split; its calibrated H with the gamma chosen on the test set
  itself (the maximum of H over the exact seen-unseen curve), maximised over the settings.

Targets, each PASS or FAIL per method:

1. calibration never lowers test H by more than a point: ``cal_H >= H - 0.01``;
2. the chosen setting (and validate's gamma) is within 3 points of the test oracle:
   ``cal_H >= oracle_cal_H - 0.03``;
3. NIWT's test H is within 10 points of its validation H: ``|H_test - H_val| <= 0.10``.

The oracle rebuilds the chosen setting too, and checks that it reproduces the pipeline's own test H
and calibrated H (so the oracle and the pipeline score the same thing). Prints a markdown report
(``--out`` also writes it to a file). ``--keep DIR`` keeps the project in DIR; run again with the same
DIR and ``dvc repro`` only reruns what changed (the generated images are kept). Takes about half an
hour on 2 CPUs at full size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "src")]
import cub_shaped  # noqa: E402

METHODS = ["niwt", "icis", "regression", "regression_rescaled", "eszsl"]
DATA_ROOT = "data/raw"  # inside the project (git-ignored), where the dataset is generated


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def bench_params(args: argparse.Namespace) -> dict:
    """The repository's params.yaml with the folder dataset, a 32-px smallcnn and ``--epochs``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return merge(params, {
        "base": {"seed": args.seed},
        "data": {"name": "folder", "root": DATA_ROOT, "domain": "attributes"},
        "model": {"arch": "smallcnn", "weights": "none", "width": args.width, "hidden": args.hidden,
                  "image_size": 32},
        "finetune": {"epochs": args.epochs},
    })


def project_env(root: Path) -> dict[str, str]:
    """The stages run the project copy's code (PYTHONPATH), without MLflow or progress bars."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(root / "src"), "NIWT_PROGRESS": "0", "NIWT_TRACKING": "off",
            "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


def sh(cmd: list[str], root: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def make_project(root: Path, params: dict) -> dict[str, str]:
    """A git + DVC copy of the project (dvc.yaml, src/, params) in ``root``; reused when present."""
    root.mkdir(parents=True, exist_ok=True)
    env = project_env(root)
    fresh = not (root / ".dvc").is_dir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    if (root / "src").exists():
        shutil.rmtree(root / "src")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    text = yaml.safe_dump(params, sort_keys=False)
    if not (root / "params.yaml").is_file() or (root / "params.yaml").read_text() != text:
        (root / "params.yaml").write_text(text)
    if fresh:
        sh(["git", "init", "-q"], root, env)
        sh([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    return env


def generate(root: Path, params: dict, scale: float) -> tuple[dict[str, int], list[str], float]:
    """The CUB-shaped dataset under ``root/DATA_ROOT`` (kept when already there): its split sizes,
    the classes given ``val_loc``'s counts (the pipeline's own seeded draw) and the seconds taken."""
    start = time.perf_counter()
    v, seed = params.get("validate", {}), int(params["base"]["seed"])
    names = cub_shaped.plan(scale=0.0).class_names
    val = (cub_shaped.seeded_validation_classes(names[:150], float(v["fraction"]), int(v.get("min_classes", 1)), seed)
           if "fraction" in v else None)  # params without validate.fraction: the seen classes share counts evenly
    p = cub_shaped.plan(scale=scale, seed=seed, val_classes=val)
    out = root / DATA_ROOT
    if not (out / "splits.csv").is_file():
        cub_shaped.write_folder(out, p, seed=seed)
    return p.sizes(), p.validation, time.perf_counter() - start


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def curve_max_h(s: np.ndarray, u: np.ndarray) -> float:
    """max over the curve's operating points of H = 2SU / (S + U): calibrated H with the test gamma."""
    h = np.where(s + u > 0, 2 * s * u / np.maximum(s + u, 1e-300), 0.0)
    return float(h.max())


def oracle(root: Path, env: dict[str, str], grid: list[dict], choices: dict, niwt_stride: int) -> dict[str, list[dict]]:
    """Every setting of ``grid`` (NIWT's every ``niwt_stride``-th, the chosen one always) built as
    ``inject`` builds it on the finetuned network and scored on the test split: test H, AUSUC, the
    calibrated H with the gamma validate chose for that setting (``cal_H``: what the pipeline would
    report had it chosen it) and with the test set's own best gamma (``oracle_cal_H``)."""
    import torch

    from niwt.config.load import load_params
    from niwt.data.cache import open_cache
    from niwt.data.images import make_loader
    from niwt.data.tables import read_tables
    from niwt.evaluation.gzsl import calibrated, method_metrics
    from niwt.evaluation.metrics import seen_unseen_curve
    from niwt.injection.methods import Context, Partition, build_classifier
    from niwt.mapping.store import load_map
    from niwt.models.checkpoint import load_checkpoint

    cwd = os.getcwd()
    os.chdir(root)  # stored image paths are relative to the project
    try:
        p = load_params(root / "params.yaml")
        data = root / "data" / "prepared"
        classes, splits = read_tables(data)
        model, meta = load_checkpoint(root / "models" / "finetuned.pt", torch.device("cpu"))
        size = int(meta["image_size"])
        images = open_cache(root / "data" / "cache", data / "splits.parquet", size) \
            if (root / "data" / "cache").is_dir() else None
        test = splits.select("test_seen", "test_unseen")
        from niwt.models.training import predict

        feats, y = predict(model, make_loader(test.path, test.class_id, size, train=False,
                                              batch_size=p.evaluate.batch_size, cache=images),
                           torch.device("cpu"), features=True)
        n_seen = classes.n_seen
        part = Partition(np.arange(n_seen), np.arange(n_seen, len(classes.names)))
        maps = {None: load_map(root / "models" / "mapping.pt")}  # fit for the chosen NIWT setting's epochs
        shipped_epochs = choices.get("niwt", {}).get("mapping_epochs")
        shared: dict = {}
        out: dict[str, list[dict]] = {}
        for method in [m for m in METHODS if m in choices]:
            rows = [r for r in grid if r["method"] == method]
            chosen = {k: v for k, v in choices[method].items() if k != "calibration_gamma"}
            if method == "niwt" and niwt_stride > 1:
                rows = [r for i, r in enumerate(rows) if i % niwt_stride == 0 or r["setting"] == chosen]
            out[method] = []
            for row in rows:
                setting = row["setting"]
                epochs = setting.get("mapping_epochs")  # NIWT's: the forward map's epochs
                key = None if epochs is None or epochs == shipped_epochs else int(epochs)
                if key not in maps:
                    maps[key] = _refit_mapping(root, env, key, load_map)
                stored = maps[key]
                ctx = Context(model, p.inject, p.base.seed, classes, splits, stored, size, torch.device("cpu"),
                              images, hyper={method: setting}, _cache=shared)
                w, b, _ = build_classifier(ctx, method, part)
                with torch.no_grad():
                    scores = torch.nn.functional.linear(torch.as_tensor(feats), w, b).numpy()
                m, _ = method_metrics(scores, y, n_seen)
                _, s_arr, u_arr = seen_unseen_curve(scores, y, np.arange(scores.shape[1]) < n_seen, y >= n_seen)
                cal = calibrated(scores, y, n_seen, float(row["calibration_gamma"]))
                out[method].append({"setting": setting, "chosen": setting == chosen, "val_H": row["H"],
                                    "H": m["H"], "ausuc": m["ausuc"], "cal_H": cal["cal_H"],
                                    "oracle_cal_H": curve_max_h(s_arr, u_arr)})
            print(f"  oracle {method}: {len(out[method])} settings", flush=True)
        return out
    finally:
        os.chdir(cwd)


def _refit_mapping(root: Path, env: dict[str, str], epochs: int, load_map) -> object:
    """The forward map trained for ``epochs`` (``niwt fit_mapping`` on a validation.json naming them)."""
    side = root / "oracle"
    side.mkdir(exist_ok=True)
    doc = read_json(root / "models" / "validation.json")
    doc["mapping_epochs"] = epochs
    doc["choices"]["niwt"]["mapping_epochs"] = epochs
    (side / f"validation_{epochs}.json").write_text(json.dumps(doc))
    sh(["niwt", "fit_mapping", "--data", "data/prepared", "--importances", "data/importances",
        "--validation", f"oracle/validation_{epochs}.json", "--out", f"oracle/mapping_{epochs}.pt",
        "--inverse-out", f"oracle/inverse_{epochs}.pt", "--history", f"oracle/history_{epochs}.csv"], root, env)
    return load_map(side / f"mapping_{epochs}.pt")


def fmt_setting(setting: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in setting.items()) or "fixed"


def report(args: argparse.Namespace, root: Path, sizes: dict, val_classes: list[str], seconds: dict[str, float],
           found: dict[str, list[dict]], load: tuple[float, float]) -> tuple[str, int]:
    """The markdown report and the number of FAILed targets."""
    validation = read_json(root / "models" / "validation.json")
    vstats = read_json(root / "stats" / "validate.json") if (root / "stats" / "validate.json").is_file() else {}
    vstats = vstats.get("metrics", vstats)
    finetune = read_json(root / "stats" / "finetune.json")
    finetune = finetune.get("metrics", finetune)
    evaluate = read_json(root / "stats" / "evaluate.json") if (root / "stats" / "evaluate.json").is_file() else {}
    lines = [f"### bench_protocol: CUB-shaped folder dataset, class-disjoint validation ({args.scale:g} scale)", ""]
    lines += [f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load "
              f"average (1 min) {load[0]:.1f} at start, {load[1]:.1f} at end",
              f"- wall time: {seconds['total'] / 60:.1f} min (generate {seconds['generate']:.0f} s, dvc repro "
              f"evaluate {seconds['repro']:.0f} s, oracle {seconds['oracle']:.0f} s)",
              f"- data: {sizes['total']} images, {sizes['trainval']} trainval ({sizes['train']} train + {sizes['val']} "
              f"val) / {sizes['test_seen']} test_seen / {sizes['test_unseen']} test_unseen; 150 seen + 50 unseen "
              f"classes; {len(val_classes)} classes given val_loc's image counts",
              f"- model: smallcnn width {args.width}, hidden {args.hidden}, 32 px, {args.epochs} epochs; finetune "
              f"val accuracy {_num(finetune, 'val_acc')}, test_seen accuracy {_num(finetune, 'test_seen_acc')}",
              f"- validation: {len(validation.get('classes', []))} classes ({validation.get('source', '?')}), "
              f"criterion {validation.get('criterion', '?')}, class-disjoint {validation.get('class_disjoint')}",
              ""]
    lines += ["| method | val H | test H | test cal_H | test AUSUC | oracle cal_H | chosen setting (cal. gamma) "
              "| oracle setting | settings tried |", "|---|---|---|---|---|---|---|---|---|"]
    fails, checks, agree = 0, [], []
    for method in [m for m in METHODS if m in validation["choices"]]:
        headline = read_json(root / "metrics" / "gzsl" / f"{method}.json")
        choice = validation["choices"][method]
        setting = {k: v for k, v in choice.items() if k != "calibration_gamma"}
        val_h = vstats.get(f"{method}/val_H")
        if val_h is None:
            val_h = next(r["H"] for r in validation["grid"] if r["method"] == method and r["setting"] == setting)
        rows = found[method]
        best = max(rows, key=lambda r: r["oracle_cal_H"])
        mine = next((r for r in rows if r["chosen"]), None)
        shipped = evaluate.get(method, headline)  # unrounded where stats/evaluate.json has them
        if mine is not None:
            agree.append(max(abs(mine["H"] - shipped["H"]), abs(mine["cal_H"] - shipped["cal_H"])))
        n_grid = sum(1 for r in validation["grid"] if r["method"] == method)
        lines.append(f"| {method} | {val_h:.3f} | {headline['H']:.3f} | {headline['cal_H']:.3f} | "
                     f"{headline['AUSUC']:.3f} | {best['oracle_cal_H']:.3f} | {fmt_setting(setting)} "
                     f"({choice['calibration_gamma']:.3g}) | {fmt_setting(best['setting'])} | "
                     f"{len(rows)} of {n_grid} |")
        targets = [("cal_H >= H - 0.01", headline["cal_H"] >= headline["H"] - 0.01,
                    f"cal_H {headline['cal_H']:.3f}, H {headline['H']:.3f}"),
                   ("cal_H >= oracle cal_H - 0.03", headline["cal_H"] >= best["oracle_cal_H"] - 0.03,
                    f"cal_H {headline['cal_H']:.3f}, oracle {best['oracle_cal_H']:.3f}"
                    + (f"; chosen setting with the test gamma {mine['oracle_cal_H']:.3f}" if mine else ""))]
        if method == "niwt":
            targets.append(("|test H - val H| <= 0.10", abs(headline["H"] - val_h) <= 0.10,
                            f"test H {headline['H']:.3f}, val H {val_h:.3f}"))
        for name, ok, detail in targets:
            fails += not ok
            checks.append(f"{'PASS' if ok else 'FAIL'} {method}: {name} ({detail})")
    lines += ["", "Oracle: each setting rebuilt as inject builds it on the finetuned network and scored on the test "
              "split, calibrated with the gamma maximising H on the test set itself (the maximum of H over the exact "
              "seen-unseen curve); the best setting. Diagnosis only: never used to choose.", ""]
    if agree:
        same = "the same numbers" if max(agree) < 1e-6 else "DIFFERENT: the oracle scores something else"
        lines.append(f"Oracle vs pipeline on the chosen settings: max |delta| of test H / cal_H = {max(agree):.1e} "
                     f"({same}).")
        lines.append("")
    lines += ["Targets:", "", *[f"- {c}" for c in checks], "",
              f"{len(checks) - fails} of {len(checks)} targets met."]
    return "\n".join(lines) + "\n", fails


def _num(d: dict, key: str) -> str:
    v = d.get(key)
    return f"{v:.3f}" if isinstance(v, (int, float)) else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="project directory to use and keep (reused when present)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of CUB's image counts (1: the real sizes)")
    parser.add_argument("--epochs", type=int, default=10, help="finetune.epochs (the validation backbone's too)")
    parser.add_argument("--width", type=int, default=32, help="model.width")
    parser.add_argument("--hidden", type=int, default=256, help="model.hidden")
    parser.add_argument("--seed", type=int, default=0, help="base.seed and the dataset's seed")
    parser.add_argument("--niwt-stride", type=int, default=1, help="oracle: every n-th NIWT setting (and the chosen)")
    args = parser.parse_args()
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load {load0:.1f}", flush=True)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="niwt-bench-protocol-")
    root = Path(args.keep or tmp.name).absolute()
    try:
        params = bench_params(args)
        env = make_project(root, params)
        sizes, val_classes, t_gen = generate(root, params, args.scale)
        print(f"# project {root}; data {sizes} ({t_gen:.1f} s)", flush=True)
        t0 = time.perf_counter()
        print(sh([sys.executable, "-m", "dvc", "repro", "evaluate"], root, env)[-3000:], flush=True)
        t_repro = time.perf_counter() - t0
        validation = read_json(root / "models" / "validation.json")
        t0 = time.perf_counter()
        found = oracle(root, env, validation["grid"], validation["choices"], args.niwt_stride)
        t_oracle = time.perf_counter() - t0
        seconds = {"generate": t_gen, "repro": t_repro, "oracle": t_oracle, "total": time.perf_counter() - start}
        text, fails = report(args, root, sizes, val_classes, seconds, found, (load0, os.getloadavg()[0]))
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
