"""The class-disjoint validation protocol at a real benchmark's size: a CUB-shaped dataset, end to end.

Generates a CUB-shaped image dataset from the real xlsa17 CUB split files (``cub_shaped.py``: 200
classes, 312 attributes, 150 seen + 50 unseen, 7,057 / 1,764 / 2,967 trainval / test_seen /
test_unseen images, about 59 per class; 32-px images drawn from each class's attributes), runs the
pipeline on it in a temporary copy of the project (``data.name: folder``, ``model.arch: smallcnn``)
up to ``evaluate`` (``dvc repro evaluate``), and reads, per method:

* validation H of the chosen setting (``models/validation.json``, ``stats/validate.json``);
* test H, calibrated H (gamma chosen by ``validate``) and AUSUC (``metrics/gzsl/<method>.json``);
* the test ORACLE, for diagnosis only (never used to choose): every setting of ``validate``'s grid
  (at most ``--niwt-max`` of NIWT's), and NIWT's chosen (lr, lambda) on every forward-map candidate
  (the map is chosen on its held-out trace, so those are not in the grid), built as ``inject`` builds
  it, on the same finetuned network, and scored on the test split; its calibrated H with the gamma
  chosen on the test set itself (the maximum of H over the exact seen-unseen curve), maximised over
  the settings.

Targets, each PASS or FAIL per method:

1. the calibrated reading is never more than a point under the reading as shipped: ``cal_H >= H -
   0.01`` (for NIWT, whose calibrated reading has a setting of its own, the two readings' settings);
2. the chosen setting (and validate's gamma) is within 3 points of the test oracle:
   ``cal_H >= oracle_cal_H - 0.03`` (for a method whose calibrated reading ``validate`` chose
   under a setting of its own, NIWT, that setting's);
3. NIWT's test H is within 10 points of its validation H: ``|H_test - H_val| <= 0.10``.

The oracle rebuilds the chosen settings too (as shipped, and the calibrated reading's), and checks
that it reproduces the pipeline's own test H and calibrated H (so the oracle and the pipeline score
the same thing). Prints a markdown report (``--out`` also writes it to a file). ``--keep DIR``
keeps the project in DIR; run again with the same DIR and ``dvc repro`` only reruns what changed
(the generated images are kept). ``--set KEY=VALUE`` overrides any other param (e.g. a shorter grid
for a quick look). At full size with the default grid it took 6.4 minutes from scratch on 2 idle
CPUs (most of it the two fine-tunings), 4 to 5 on top of a kept project.
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
    """The repository's params.yaml with the folder dataset, a 32-px smallcnn, ``--epochs`` and ``--set``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge(params, {
        "base": {"seed": args.seed},
        "data": {"name": "folder", "root": DATA_ROOT, "domain": "attributes"},
        "model": {"arch": "smallcnn", "weights": "none", "width": args.width, "hidden": args.hidden,
                  "image_size": 32},
        "finetune": {"epochs": args.epochs},
    })
    return merge(params, dotted(args.set))


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


def niwt_subsample(rows: list[dict], chosen: list[dict], most: int) -> list[dict]:
    """At most ``most`` of NIWT's grid rows, evenly spaced in grid order, plus the chosen settings
    (as shipped, and its calibrated reading's)."""
    if most <= 0 or len(rows) <= most:
        return rows
    keep = set(np.unique(np.round(np.linspace(0, len(rows) - 1, most)).astype(int)).tolist())
    return [r for i, r in enumerate(rows) if i in keep or r["setting"] in chosen]


def setting_of(choice: dict) -> dict:
    """A choice's hyperparameters, without its calibration gamma and margin."""
    return {k: v for k, v in choice.items() if not k.startswith("calibration_")}


def map_rows(rows: list[dict], choice: dict, mapping) -> list[dict]:
    """NIWT's chosen (lr, lambda) on every other forward-map candidate (``mapping.lr`` x
    ``mapping.weight_decay`` x ``candidate_epochs``), with the chosen calibration gamma: the oracle
    of the map choice, which ``validate`` makes on the map's held-out trace (no validation H here)."""
    from niwt.mapping.linear import map_candidates

    own = {k: v for k, v in choice.items() if not k.startswith("mapping_") and not k.startswith("calibration_")}
    tried = [r["setting"] for r in rows]
    extra = [{"mapping_lr": h.lr, "mapping_weight_decay": h.weight_decay, "mapping_epochs": e, **own}
             for h in map_candidates(mapping) for e in mapping.candidate_epochs]
    return [{"setting": s, "calibration_gamma": choice["calibration_gamma"],
             "calibration_margin": choice["calibration_margin"],
             "calibration_margin_sd": choice["calibration_margin_sd"], "H": float("nan")}
            for s in extra if s not in tried]


def oracle(root: Path, choices: dict, own: dict, grid: list[dict],
           niwt_max: int) -> tuple[dict[str, list[dict]], float | None]:
    """Every setting of ``grid`` (at most ``niwt_max`` of NIWT's, the chosen ones always) built as
    ``inject`` builds it on the finetuned network and scored on the test split: test H, AUSUC, the
    calibrated H with the operating point validate chose for that setting, transferred as ``evaluate``
    transfers it (``cal_H``: what the pipeline would report had it chosen it) and with the test set's
    own best gamma (``oracle_cal_H``). ``own``: validate's ``calibrated_choices`` (a method's
    calibrated reading under a setting of its own), whose rows are flagged ``cal_chosen``.

    NIWT's forward maps: ``models/mapping.pt`` for the chosen (lr, weight decay, epochs); the others
    are snapshots of one run per (lr, weight decay) on every seen importance, as ``validate`` takes
    them (``fit_snapshots``). Returns the rows per method and the largest difference between the
    snapshot of the chosen map and ``models/mapping.pt`` (0: the same map; None: not snapshotted).
    """
    import torch

    from niwt.config.load import load_params
    from niwt.config.runtime import load_runtime
    from niwt.data.cache import open_cache
    from niwt.data.images import make_loader
    from niwt.data.tables import read_tables
    from niwt.evaluation.gzsl import calibrated, method_metrics, transfer_gamma
    from niwt.evaluation.metrics import seen_unseen_curve
    from niwt.injection.methods import Context, Partition, build_classifier
    from niwt.io.parquet import read_importances
    from niwt.mapping.linear import MapHyper, fit_snapshots
    from niwt.mapping.store import StoredMap, load_map
    from niwt.models.checkpoint import load_checkpoint
    from niwt.models.training import predict

    cwd = os.getcwd()
    os.chdir(root)  # stored image paths are relative to the project
    try:
        p = load_params(root / "params.yaml")
        batch = load_runtime().inference_batch("features")
        data, cpu = root / "data" / "prepared", torch.device("cpu")
        classes, splits = read_tables(data)
        model, meta = load_checkpoint(root / "models" / "finetuned.pt", cpu)
        size = int(meta["image_size"] if isinstance(meta, dict) else meta.image_size)
        images = open_cache(root / "data" / "cache", data / "splits.parquet", size) \
            if (root / "data" / "cache").is_dir() else None
        test, val = splits.select("test_seen", "test_unseen"), splits.select("val")
        feats, y = predict(model, make_loader(test.path, test.class_id, size, train=False, batch_size=batch,
                                              cache=images), cpu, features=True)
        val_feats, _ = predict(model, make_loader(val.path, val.class_id, size, train=False, batch_size=batch,
                                                  cache=images), cpu, features=True)
        n_seen = classes.n_seen
        part = Partition(np.arange(n_seen), np.arange(n_seen, len(classes.names)))
        shipped = load_map(root / "models" / "mapping.pt")
        niwt = choices.get("niwt", {})
        shipped_key = (niwt.get("mapping_lr"), niwt.get("mapping_weight_decay"), niwt.get("mapping_epochs"))
        snapshots: dict[tuple, dict] = {}

        def forward_map(setting: dict) -> StoredMap:
            key = (setting.get("mapping_lr"), setting.get("mapping_weight_decay"), setting.get("mapping_epochs"))
            if key[2] is None or key == shipped_key:
                return shipped
            hyper = MapHyper(float(key[0]), float(key[1]))
            if hyper not in snapshots:
                imp = read_importances(root / "data" / "importances")
                snapshots[hyper] = fit_snapshots(classes.domain, imp.target_id.astype(np.int64), imp.values,
                                                 p.mapping, seed=p.base.seed,
                                                 epochs=tuple(p.mapping.candidate_epochs), hyper=hyper)
            weight, bias = snapshots[hyper][int(key[2])]
            return StoredMap(weight, bias, int(key[2]), shipped.provenance)

        shared: dict = {}
        out: dict[str, list[dict]] = {}
        for method in [m for m in METHODS if m in choices]:
            rows = [r for r in grid if r["method"] == method]
            chosen = setting_of(choices[method])
            cal_chosen = setting_of(own.get(method, choices[method]))
            if method == "niwt":
                rows = niwt_subsample(rows, [chosen, cal_chosen], niwt_max) + map_rows(rows, choices[method], p.mapping)
            out[method] = []
            for row in rows:
                setting = row["setting"]
                ctx = Context(model, p.inject, p.base.seed, classes, splits, forward_map(setting), size, cpu, images,
                              hyper={method: setting}, _cache=shared, batch_size=batch)
                w, b, _ = build_classifier(ctx, method, part)
                with torch.no_grad():
                    scores = torch.nn.functional.linear(torch.as_tensor(feats), w, b).numpy()
                    val_scores = torch.nn.functional.linear(torch.as_tensor(val_feats), w, b).numpy()
                m, _ = method_metrics(scores, y, n_seen)
                _, s_arr, u_arr = seen_unseen_curve(scores, y, np.arange(scores.shape[1]) < n_seen, y >= n_seen)
                gamma = transfer_gamma(float(row["calibration_gamma"]), float(row["calibration_margin"]),
                                       float(row["calibration_margin_sd"]), val_scores,
                                       n_seen)  # as evaluate does
                cal = calibrated(scores, y, n_seen, gamma)
                out[method].append({"setting": setting, "chosen": setting == chosen,
                                    "cal_chosen": setting == cal_chosen, "val_H": row["H"],
                                    "H": m["H"], "ausuc": m["ausuc"], "cal_H": cal["cal_H"],
                                    "oracle_cal_H": curve_max_h(s_arr, u_arr)})
            print(f"  oracle {method}: {len(out[method])} settings", flush=True)
        drift = None
        if shipped_key[2] is not None:
            hyper = MapHyper(float(shipped_key[0]), float(shipped_key[1]))
            if hyper in snapshots:
                weight, bias = snapshots[hyper][int(shipped_key[2])]
                drift = max(float((weight - shipped.weight).abs().max()), float((bias - shipped.bias).abs().max()))
        return out, drift
    finally:
        os.chdir(cwd)


def fmt_setting(setting: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in setting.items()) or "fixed"


def report(args: argparse.Namespace, root: Path, sizes: dict, val_classes: list[str], seconds: dict[str, float],
           found: dict[str, list[dict]], drift: float | None, load: tuple[float, float]) -> tuple[str, int]:
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
              f"criterion {validation.get('criterion', '?')}, class-disjoint {validation.get('class_disjoint')}; "
              f"{vstats.get('n_settings', '?')} settings scored in {_num(vstats, 'seconds_grid', '.0f')} s "
              f"(the chain rebuilt in {_num(vstats, 'seconds_chain', '.0f')} s)",
              f"- params: the repository's params.yaml with {_overrides_text(args)}",
              ""]
    lines += ["| method | chosen by | val H | test H | test cal_H | test AUSUC | oracle cal_H | chosen setting "
              "(cal. gamma) | calibrated reading's setting (cal. gamma) | oracle setting | oracle settings tried "
              "(in validate's grid) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    fails, checks, agree = 0, [], []
    own = validation.get("calibrated_choices") or {}
    for method in [m for m in METHODS if m in validation["choices"]]:
        headline = read_json(root / "metrics" / "gzsl" / f"{method}.json")
        choice = validation["choices"][method]
        setting, cal_choice = setting_of(choice), own.get(method)
        val_h = vstats.get(f"{method}/val_H")
        if val_h is None:
            val_h = next(r["H"] for r in validation["grid"] if r["method"] == method and r["setting"] == setting)
        rows = found[method]
        best = max(rows, key=lambda r: r["oracle_cal_H"])
        mine = next((r for r in rows if r["chosen"]), None)
        mine_cal = next((r for r in rows if r["cal_chosen"]), None)
        shipped = evaluate.get(method, headline)  # unrounded where stats/evaluate.json has them
        if mine is not None and mine_cal is not None:
            agree.append(max(abs(mine["H"] - shipped["H"]), abs(mine_cal["cal_H"] - shipped["cal_H"])))
        n_grid = sum(1 for r in validation["grid"] if r["method"] == method)
        chosen_by = validation.get("chosen_by", {}).get(method, {})
        by = chosen_by.get("criterion", validation.get("criterion", "?"))
        if cal_choice is not None:
            by += f"; calibrated by {chosen_by.get('calibrated', {}).get('criterion', '?')}"
        cal_text = "the same" if cal_choice is None or setting_of(cal_choice) == setting else \
            f"{fmt_setting(setting_of(cal_choice))} ({cal_choice['calibration_gamma']:.3g})"
        lines.append(f"| {method} | {by} | {val_h:.3f} | {headline['H']:.3f} | {headline['cal_H']:.3f} | "
                     f"{headline['AUSUC']:.3f} | {best['oracle_cal_H']:.3f} | {fmt_setting(setting)} "
                     f"({choice['calibration_gamma']:.3g}) | {cal_text} | {fmt_setting(best['setting'])} | "
                     f"{len(rows)} ({n_grid}) |")
        targets = [("cal_H >= H - 0.01", headline["cal_H"] >= headline["H"] - 0.01,
                    f"cal_H {headline['cal_H']:.3f}, H {headline['H']:.3f}"),
                   ("cal_H >= oracle cal_H - 0.03", headline["cal_H"] >= best["oracle_cal_H"] - 0.03,
                    f"cal_H {headline['cal_H']:.3f}, oracle {best['oracle_cal_H']:.3f}"
                    + (f"; the calibrated reading's setting with the test gamma {mine_cal['oracle_cal_H']:.3f}"
                       if mine_cal else ""))]
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
    if drift is not None:
        lines += [f"NIWT's forward maps: the oracle's snapshot of the chosen map (the others are such snapshots, as "
                  f"validate takes them) differs from models/mapping.pt by up to {drift:.1e}.", ""]
    lines += ["Targets:", "", *[f"- {c}" for c in checks], "",
              f"{len(checks) - fails} of {len(checks)} targets met."]
    return "\n".join(lines) + "\n", fails


def _num(d: dict, key: str, spec: str = ".3f") -> str:
    v = d.get(key)
    return format(v, spec) if isinstance(v, (int, float)) else "?"


def _overrides_text(args: argparse.Namespace) -> str:
    base = (f"data.name folder, model smallcnn (width {args.width}, hidden {args.hidden}, 32 px), "
            f"finetune.epochs {args.epochs}, base.seed {args.seed}")
    return base + "".join(f", {item}" for item in args.set)


def dotted(items: list[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. mapping.candidate_epochs=[10,40]")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="project directory to use and keep (reused when present)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of CUB's image counts (1: the real sizes)")
    parser.add_argument("--epochs", type=int, default=10, help="finetune.epochs (the validation backbone's too)")
    parser.add_argument("--width", type=int, default=32, help="model.width")
    parser.add_argument("--hidden", type=int, default=256, help="model.hidden")
    parser.add_argument("--seed", type=int, default=0, help="base.seed and the dataset's seed")
    parser.add_argument("--niwt-max", type=int, default=42,
                        help="oracle: at most this many NIWT settings, evenly spaced in grid order, and the chosen "
                             "ones (as shipped, and the calibrated reading's; 0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another params override (YAML value), e.g. inject.max_iters=1000; repeatable")
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
        found, drift = oracle(root, validation["choices"], validation.get("calibrated_choices") or {},
                              validation["grid"], args.niwt_max)
        t_oracle = time.perf_counter() - t0
        seconds = {"generate": t_gen, "repro": t_repro, "oracle": t_oracle, "total": time.perf_counter() - start}
        text, fails = report(args, root, sizes, val_classes, seconds, found, drift, (load0, os.getloadavg()[0]))
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
