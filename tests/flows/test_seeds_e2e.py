"""`niwt seeds` end to end on a tiny generated dataset: two seeds as DVC experiments in temp copies,
the rows read back from the experiment commits, the tables, and a rerun that replaces an experiment."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from niwt.pipeline import STAGE_NAMES as STAGES  # noqa: E402
from tiny_project import dvc, make_project, run  # noqa: E402

pytestmark = pytest.mark.slow

METHODS = ["niwt", "regression", "eszsl"]  # three methods keep it short; explain still explains NIWT
FASTER = {"finetune": {"epochs": 1}, "mapping": {"epochs": 2, "candidate_epochs": [2]},
          "inject": {"methods": METHODS, "max_iters": 10, "lr": [0.01], "ridge_alpha": [1.0],
                     "eszsl_exponents": [0, 1]}}
OVERRIDE = "explain.top_attributes=3"  # changes only the last stage: the committed seed reruns explain alone


def _seeds(project: Path, *args: str):
    return run([sys.executable, "-m", "niwt.cli", "seeds", *args], project)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_seeds_runs_each_seed_as_an_experiment_and_tabulates(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", FASTER)
    dvc(["repro"], project)  # seed 0 committed with its dvc.lock and metrics, as in the repository
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "seed 0"], project)
    committed = {m: json.loads((project / f"metrics/gzsl/{m}.json").read_text()) for m in METHODS}
    params_before = (project / "params.yaml").read_text()

    out = _seeds(project, "--seeds", "1", "0", "--set", OVERRIDE).stdout
    rows = _rows(project / "docs/results/seeds.csv")
    assert [(r["seed"], r["method"]) for r in rows] == [(s, m) for s in ("0", "1") for m in METHODS]
    for r in rows:
        assert {"S", "U", "H", "cal_H", "AUSUC", "ZSL_T1", "seen_acc", "cal_S", "cal_U", "heldout_H"} <= set(r)
        assert 0 <= float(r["H"]) <= 1 and r["choice.calibration_gamma"] != ""
        assert r["overrides"] == OVERRIDE and r["experiment"] == f"seeds-{r['seed']}"
    # seed 0: the commit's outputs, explain rerun for the override; seed 1: every stage ran here
    assert {r["stages_run"] for r in rows if r["seed"] == "0"} == {"explain"}
    assert all(set(r["stages_run"].split()) == set(STAGES) - {"fingerprint"} for r in rows if r["seed"] == "1")
    for r in rows:
        if r["seed"] == "0":
            assert {k: float(r[k]) for k in committed[r["method"]]} == committed[r["method"]]
    niwt = [r for r in rows if r["method"] == "niwt"]
    assert all(r["choice.lr"] == "0.01" and r["explain.text/paper/precision_at_k"] != "" for r in niwt)
    assert all(r["explain.text/paper/precision_at_k"] == "" for r in rows if r["method"] != "niwt")
    # each row is its experiment's: the seed and override it ran with, its headline numbers
    show = json.loads(dvc(["exp", "show", "--json"], project).stdout)
    exps = {e["name"]: e["revs"][0] for b in show for e in (b.get("experiments") or [])}
    for r in rows:
        exp = exps[r["experiment"]]
        assert exp["rev"].startswith(r["rev"])
        params = exp["data"]["params"]["params.yaml"]["data"]
        assert params["base"]["seed"] == int(r["seed"]) and params["explain"]["top_attributes"] == 3
        assert exp["data"]["metrics"][f"metrics/gzsl/{r['method']}.json"]["data"]["H"] == float(r["H"])
    # the README's `dvc exp show` recipes give the columns they promise (DVC matches --keep from the
    # start of the full column name, metrics/gzsl/<method>.json:<metric> where names repeat), and its table
    # fits 160 columns (DVC's pager would cut it)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    recipes = [line for line in readme.splitlines() if line.startswith("dvc exp show --drop")]
    expected = [["Experiment", "metrics/gzsl/niwt.json:H", "metrics/gzsl/niwt.json:cal_H", "inject.lambda"],
                ["Experiment", *(f"metrics/gzsl/niwt.json:{k}" for k in ("S", "U", "H")), "inject.lambda"]]
    assert len(recipes) == len(expected)
    for recipe, columns in zip(recipes, expected, strict=True):
        argv = shlex.split(recipe.split("  #")[0])[1:]
        header = next(csv.reader(dvc([*argv, "--csv"], project).stdout.splitlines()))
        assert sorted(header) == sorted(columns), (recipe, header)
        table = dvc(argv, project).stdout  # not a terminal: DVC draws the whole table, whatever COLUMNS says
        assert max(len(line) for line in table.splitlines()) <= 160 and "inject.lambda" in table, table
    # the workspace is as it was: the experiments ran in temp copies
    assert (project / "params.yaml").read_text() == params_before
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], project).stdout == ""
    md = (project / "docs/results/seeds.md").read_text()
    assert f"Seeds 0, 1 (`base.seed`); overrides: {OVERRIDE}" in md and "replacing" not in out
    assert f"`niwt seeds --seeds 0 1 --set {OVERRIDE}`" in md and f"seed 0: 1; seed 1: {len(STAGES) - 1}." in md
    table = [line for line in md.splitlines() if line.startswith("| niwt | ")]
    assert len(table) == 2 and table[0].count(" ± ") == 10  # GZSL: ten metrics, each mean ± std
    assert "| text/paper/precision_at_k | " in md
    # --collect-only rebuilds the same markdown from the CSV alone
    (project / "docs/results/seeds.md").unlink()
    _seeds(project, "--collect-only")
    assert (project / "docs/results/seeds.md").read_text() == md
    # a rerun of a seed on the same commit replaces its experiment
    again = _seeds(project, "--seeds", "0", "--set", OVERRIDE, "--csv", "again.csv", "--md", "again.md")
    assert "replacing experiment seeds-0" in again.stdout
    rerun = _rows(project / "again.csv")
    assert [(r["method"], r["H"], r["stages_run"]) for r in rerun] == [(r["method"], r["H"], "explain")
                                                                       for r in rows if r["seed"] == "0"]
    assert "Seed 0 (`base.seed`)" in (project / "again.md").read_text()
