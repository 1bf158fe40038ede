"""``niwt seeds``: the pipeline over several ``base.seed`` values, and the mean ± std tables of it.

Each seed is one DVC experiment (``dvc exp run --temp -n <name>-<seed> -S base.seed=<seed>``, plus
the ``--set`` overrides): it runs in a copy under ``.dvc/tmp/exps/``, so the workspace, its params
and outputs stay as they are. The copy starts from the commit's ``dvc.lock``: a stage whose code,
data and params are the committed ones (every stage of the committed seed, without overrides) is
not rerun, its outputs come from DVC's cache; every other stage runs (DVC's run cache does not
apply: each stage has an uncached stats output). ``--force`` reruns every stage. The results are
read back from the experiment commits (``dvc exp show --json`` for the headline metrics,
``dvc.api.read`` for the other files) into one CSV row per (seed, method), and a markdown file of
mean ± std per method. ``--collect-only`` rebuilds the markdown from the CSV alone, so the
published tables can be regenerated without running anything.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from niwt.errors import InputError
from niwt.injection.registry import ordered

HEADLINE_DIR = "metrics/gzsl"  # one headline JSON per method (evaluate's DVC metrics)
CHOICES = "models/validation.json"  # validate's choices, per method
EVALUATE = "stats/evaluate.json"  # every number of evaluate, per method
EXPLAIN = "stats/explain.json"  # explain's measurements of the explained method
# evaluate's numbers that the results tables show beside the headline (calibrated S and U, and H
# with the older held-out-seen gamma); the headline file keeps only what DVC compares.
EVALUATE_EXTRA = ("cal_S", "cal_U", "heldout_H")
# Column order of the GZSL table; a headline key not listed here follows, in the CSV's order.
GZSL_ORDER = ("S", "U", "H", "cal_S", "cal_U", "cal_H", "heldout_H", "AUSUC", "ZSL_T1", "seen_acc")
PROVENANCE = ("experiment", "rev", "overrides", "stages_run", "machine", "cpus", "torch")
CHOICE, EXPLAINED = "choice.", "explain."
DEFAULT_CSV = Path("docs/results/seeds.csv")
DEFAULT_MD = Path("docs/results/seeds.md")


class SeedsError(InputError):
    """A problem running or collecting the seed experiments, reported in one line."""


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                    help="base.seed values, one DVC experiment each (default: 0 1 2)")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a params override for every seed, passed to `dvc exp run -S` (repeatable)")
    sp.add_argument("--name", default="seeds",
                    help="experiments are named NAME-<seed>; one of that name on this commit is replaced "
                         "(default: %(default)s)")
    sp.add_argument("--force", action="store_true",
                    help="rerun every stage (`dvc exp run -f`), so every number is computed on this machine")
    sp.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="one row per (seed, method) (default: %(default)s)")
    sp.add_argument("--md", type=Path, default=DEFAULT_MD, help="mean ± std tables (default: %(default)s)")
    sp.add_argument("--collect-only", action="store_true",
                    help="run nothing: rebuild --md from the rows already in --csv")


def command(args: argparse.Namespace) -> int:
    """``niwt seeds``; returns the exit status (2: bad input or a failed experiment)."""
    try:
        if not args.collect_only:
            overrides = check_overrides(args.overrides)
            rows = run_seeds(Path.cwd(), sorted(set(args.seeds)), overrides, args.name, args.force)
            write_text(args.csv, rows_to_csv(rows))
            print(f"niwt seeds: {len(rows)} rows -> {args.csv}", flush=True)
        write_text(args.md, seed_tables(read_rows(args.csv)))
    except InputError as err:
        print(f"niwt seeds: error: {err}", file=sys.stderr)
        return 2
    print(f"niwt seeds: tables -> {args.md}", flush=True)
    return 0


def check_overrides(pairs: list[str]) -> list[str]:
    """The ``--set`` values as ``-S`` arguments; the seed is ``--seeds``' alone, so that the rows'
    seed column is the seed the experiment ran with."""
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        if not sep or not key.strip():
            raise SeedsError(f"--set {pair!r}: expected KEY=VALUE, e.g. inject.lambda=0.001")
        if key.strip().split(":")[-1] == "base.seed":
            raise SeedsError(f"--set {pair!r}: the seed comes from --seeds")
    return list(pairs)


def run_seeds(cwd: Path, seeds: list[int], overrides: list[str], name: str, force: bool) -> list[dict[str, Any]]:
    """Run one experiment per seed, then read every result back; rows in seed, then method order."""
    root = Path(_git(cwd, "rev-parse", "--show-toplevel"))
    baseline = _git(root, "rev-parse", "HEAD")
    earlier = experiments(_exp_show(root), baseline)
    ran: dict[int, list[str]] = {}
    for seed in seeds:
        exp = f"{name}-{seed}"
        if exp in earlier:
            print(f"niwt seeds: replacing experiment {exp} of an earlier run on this commit", flush=True)
            _dvc(root, "exp", "remove", exp)
        ran[seed] = run_experiment(root, exp, seed, overrides, force)
    found = experiments(_exp_show(root), baseline)
    host = machine()
    rows = []
    for seed in seeds:
        exp = f"{name}-{seed}"
        if exp not in found:
            raise SeedsError(f"experiment {exp} ran but `dvc exp show` does not list it under commit {baseline[:7]}")
        rev, headline = found[exp]
        provenance = {"experiment": exp, "rev": rev[:7], "overrides": shlex.join(overrides),
                      "stages_run": " ".join(ran[seed]), **host}
        rows += seed_rows(seed, headline, read_at(root, EVALUATE, rev), read_at(root, CHOICES, rev),
                          read_at(root, EXPLAIN, rev), provenance)
    return rows


def run_experiment(root: Path, exp: str, seed: int, overrides: list[str], force: bool) -> list[str]:
    """``dvc exp run --temp`` for one seed, its output passed through; returns the stages that ran
    here (not restored by DVC), the raw-data fingerprint aside (it runs every time)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", exp, "-S", f"base.seed={seed}"]
    cmd += [a for o in overrides for a in ("-S", o)] + (["-f"] if force else [])
    print(f"niwt seeds: seed {seed}: {' '.join(cmd[2:])}", flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        code = proc.wait()
    if code != 0:
        raise SeedsError(f"seed {seed}: `dvc exp run` failed (exit {code}); its output is above")
    return stages_run("".join(lines))


def stages_run(output: str) -> list[str]:
    """The stages ``dvc repro`` output says it ran, in order, without ``fingerprint``."""
    names = [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
    return [n for n in dict.fromkeys(names) if n != "fingerprint"]


def experiments(show: list[dict], baseline: str) -> dict[str, tuple[str, dict[str, dict]]]:
    """From ``dvc exp show --json``: each experiment of commit ``baseline`` by name, as (commit,
    {method: headline metrics})."""
    found = {}
    for entry in show:
        if entry.get("rev") != baseline:
            continue
        for exp in entry.get("experiments") or []:
            rev = (exp.get("revs") or [{}])[0]
            if not exp.get("name") or not rev.get("rev"):
                continue
            metrics = (rev.get("data") or {}).get("metrics") or {}
            headline = {Path(path).stem: doc["data"] for path, doc in metrics.items()
                        if Path(path).parent.as_posix() == HEADLINE_DIR and isinstance(doc.get("data"), dict)}
            found[exp["name"]] = (rev["rev"], headline)
    return found


def seed_rows(seed: int, headline: dict[str, dict], evaluate: dict | None, choices: dict | None,
              explain: dict | None, provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method of one seed: its headline metrics, the evaluate numbers the tables show,
    what validate chose for it (``choice.<name>``) and, on the explained method's row only,
    explain's measurements (``explain.<key>``)."""
    if not headline:
        raise SeedsError(f"experiment {provenance.get('experiment')}: no headline metrics under {HEADLINE_DIR}/")
    methods = ordered(list(headline))
    chosen = (choices or {}).get("choices") or {}
    rows = []
    for method in methods:
        row: dict[str, Any] = {"seed": seed, "method": method, **headline[method]}
        row.update({k: (evaluate or {}).get(method, {})[k] for k in EVALUATE_EXTRA
                    if k in (evaluate or {}).get(method, {})})
        row.update({CHOICE + k: v for k, v in sorted(chosen.get(method, {}).items())})
        if explain and method == methods[0]:  # explain explains NIWT, else the first method (registry order)
            row.update({EXPLAINED + k: v for k, v in sorted(explain.items())})
        rows.append({**row, **provenance})
    return rows


def read_at(root: Path, path: str, rev: str) -> dict | None:
    """A JSON file as the experiment commit ``rev`` has it (git or DVC cache); None when absent."""
    import dvc.api
    from dvc.exceptions import PathMissingError

    try:
        return json.loads(dvc.api.read(path, repo=str(root), rev=rev))
    except (FileNotFoundError, PathMissingError):
        return None


def machine() -> dict[str, Any]:
    """Where the numbers were computed: they differ in the last bits between CPU models."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "none"
    return {"machine": platform.node(), "cpus": os.cpu_count(), "torch": torch}


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV: every column any row has (results first, provenance last)."""
    seen = list(dict.fromkeys(k for r in rows for k in r if k not in PROVENANCE))
    columns = sorted(seen, key=lambda k: (_group(k), seen.index(k))) + list(PROVENANCE)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _group(column: str) -> tuple[int, int]:
    """CSV column order: seed and method, the GZSL metrics (table order), choices, explanations."""
    if column in ("seed", "method"):
        return 0, ("seed", "method").index(column)
    if column.startswith(CHOICE):
        return 2, 0
    if column.startswith(EXPLAINED):
        return 3, 0
    return 1, GZSL_ORDER.index(column) if column in GZSL_ORDER else len(GZSL_ORDER)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a seeds CSV; one clear error when it is missing or not one."""
    if not Path(path).is_file():
        raise SeedsError(f"{path}: not found; run `niwt seeds` first (without --collect-only)")
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    if not rows or not {"seed", "method"} <= set(rows[0]):
        raise SeedsError(f"{path}: not a `niwt seeds` CSV (no rows with 'seed' and 'method' columns)")
    return rows


def write_text(path: Path, text: str) -> None:
    from niwt.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _mean_std(values: list[float], scale: float, digits: int) -> str:
    """``mean ± sample std`` (n - 1); the mean alone for one value, ``–`` for none."""
    if not values:
        return "–"
    mean = f"{scale * statistics.fmean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {scale * statistics.stdev(values):.{digits}f}"


def _numbers(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column) not in (None, "")]


def _header(rows: list[dict[str, str]], seeds: list[int]) -> list[str]:
    """The title, what produced the rows and where, and how to rebuild the file."""
    overrides = sorted({r.get("overrides", "") for r in rows} - {""})
    machines = sorted({f"{r.get('machine', '?')} ({r.get('cpus', '?')} CPUs, torch {r.get('torch', '?')})"
                       for r in rows})
    ran = {int(r["seed"]): len(r.get("stages_run", "").split()) for r in rows}
    flags = "".join(f" --set {shlex.quote(o)}" for o in shlex.split(" ".join(overrides)))
    plural = "s" if len(seeds) > 1 else ""
    return ["# Results over seeds", "",
            f"Seed{plural} {', '.join(map(str, seeds))} (`base.seed`); overrides: {', '.join(overrides) or 'none'}; "
            f"machine: {'; '.join(machines)}.",
            f"Stages run by `niwt seeds` per seed (the others DVC restored from its cache, computed where they "
            f"were first run): {'; '.join(f'seed {s}: {ran[s]}' for s in seeds)}.",
            f"Made by `niwt seeds --seeds {' '.join(map(str, seeds))}{flags}`; rebuilt from the CSV by "
            "`niwt seeds --collect-only`. Mean ± sample standard deviation (n − 1) over seeds.", ""]


def _gzsl_table(rows: list[dict[str, str]], methods: list[str], metrics: list[str]) -> list[str]:
    lines = ["## GZSL, per method (%)", "",
             "Per-class mean top-1; `cal_*`: calibrated stacking with `validate`'s class-disjoint γ; `heldout_H`: "
             "calibrated with the older held-out-seen γ; `seen_acc`: the finetuned network on test_seen.", "",
             "| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        lines.append(f"| {method} | " + " | ".join(_mean_std(_numbers(mine, m), 100, 1) for m in metrics) + " |")
    return lines


def _choices_table(rows: list[dict[str, str]], methods: list[str], seeds: list[int]) -> list[str]:
    lines = ["", "## What `validate` chose, per seed", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for method in methods:
        cells = []
        for seed in seeds:
            row = next((r for r in rows if r["method"] == method and int(r["seed"]) == seed), {})
            chosen = sorted((k[len(CHOICE):], float(v)) for k, v in row.items() if k.startswith(CHOICE) and v != "")
            cells.append(", ".join(f"{k} {v:.3g}" for k, v in chosen) or "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _is_count(key: str) -> bool:
    """A sample size (``n_images``, ``text/k``), not a measurement."""
    leaf = key.rsplit("/", 1)[-1]
    return leaf.startswith("n_") or leaf == "k"


def _explain_table(rows: list[dict[str, str]]) -> list[str]:
    """explain's measurements (counts such as ``n_images`` and ``text/k`` stay in the CSV)."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith(EXPLAINED)
            and not _is_count(k[len(EXPLAINED):])]
    explained = sorted({r["method"] for r in rows if any(r.get(k) not in (None, "") for k in keys)})
    if not keys or not explained:
        return []
    lines = ["", f"## Explanations (`{EXPLAIN}`, method {', '.join(explained)})", "",
             "| metric | mean ± std |", "|---|---|"]
    return lines + [f"| {k[len(EXPLAINED):]} | {_mean_std(_numbers(rows, k), 1, 3)} |" for k in keys]


def seed_tables(rows: list[dict[str, str]]) -> str:
    """The markdown of the seeds CSV's rows: header, GZSL mean ± std per method and metric (%),
    validate's choices per seed, explain's measurements; a pure function of the rows."""
    seeds = sorted({int(r["seed"]) for r in rows})
    methods = ordered(list(dict.fromkeys(r["method"] for r in rows)))
    skip = {"seed", "method", *PROVENANCE}
    present = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k not in skip and not k.startswith((CHOICE, EXPLAINED)) and _numbers(rows, k)]
    metrics = [k for k in GZSL_ORDER if k in present] + [k for k in present if k not in GZSL_ORDER]
    lines = (_header(rows, seeds) + _gzsl_table(rows, methods, metrics) + _choices_table(rows, methods, seeds)
             + _explain_table(rows))
    return "\n".join(lines) + "\n"


def _env() -> dict[str, str]:
    """The environment of the dvc subprocesses: this interpreter's scripts (``niwt``) on PATH."""
    env = os.environ.copy()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SeedsError(f"{cwd}: `git {' '.join(args)}` failed: {proc.stderr.strip()} "
                         "(niwt seeds runs DVC experiments: it needs a git repository with a commit)")
    return proc.stdout.strip()


def _dvc(root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=_env(), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SeedsError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _exp_show(root: Path) -> list[dict]:
    return json.loads(_dvc(root, "exp", "show", "--json"))
