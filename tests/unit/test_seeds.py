"""``niwt seeds`` without running DVC: the tables from rows, the rows from the experiment files,
reading ``dvc exp show --json``, the CSV round trip and ``--collect-only``."""

from __future__ import annotations

from pathlib import Path

import pytest

from niwt.cli import main
from niwt.commands.seeds import (
    SeedsError,
    check_overrides,
    experiments,
    read_rows,
    rows_to_csv,
    seed_rows,
    seed_tables,
    stages_run,
)

PROV = {"overrides": "inject.lambda=0.001", "machine": "box", "cpus": "2", "torch": "2.5.1"}


def _row(seed: str, method: str, stages: str, **values: str) -> dict[str, str]:
    return {"seed": seed, "method": method, **values, "experiment": f"seeds-{seed}", "rev": "abc1234",
            "stages_run": stages, **PROV}


# Two seeds, two methods (given in CSV order eszsl first: the table puts NIWT first, registry order);
# eszsl lacks cal_S on seed 0 (the mean of one value has no ±); only NIWT's rows carry explain's numbers.
ROWS = [
    _row("0", "eszsl", "finetune validate", S="0.9", H="0.85", cal_S="", **{"choice.gamma": "100000.0"}),
    _row("0", "niwt", "finetune validate", S="0.8", H="0.7", cal_S="0.75",
         **{"choice.lambda": "0.0001", "choice.calibration_gamma": "0.9239", "choice.calibration_margin": "4.9",
            "cal_choice.lambda": "0.01", "cal_choice.calibration_gamma": "0.5",
            "explain.text/paper/precision_at_k": "0.84", "explain.text/n_images": "1000"}),
    _row("1", "eszsl", "", S="0.92", H="0.87", cal_S="0.8", **{"choice.gamma": "10000.0"}),
    _row("1", "niwt", "", S="0.9", H="0.8", cal_S="0.85",
         **{"choice.lambda": "0.01", "choice.calibration_gamma": "-0.5",
            "cal_choice.lambda": "0.01", "cal_choice.calibration_gamma": "-0.5",  # the same setting: not repeated
            "explain.text/paper/precision_at_k": "0.86", "explain.text/n_images": "1000"}),
]

EXPECTED = """\
# Results over seeds

Seeds 0, 1 (`base.seed`); overrides: inject.lambda=0.001; machine: box (2 CPUs, torch 2.5.1).
Stages run by `niwt seeds` per seed (the others DVC restored from its cache, computed where they were first run): \
seed 0: 2; seed 1: 0.
Made by `niwt seeds --seeds 0 1 --set inject.lambda=0.001`; rebuilt from the CSV by `niwt seeds --collect-only`. \
Mean ± sample standard deviation (n − 1) over seeds.

## GZSL, per method (%)

Per-class mean top-1; `cal_*`: calibrated stacking with `validate`'s class-disjoint γ (carried to the final \
network through the seen margins), on the rows of the setting chosen for that reading (NIWT's own calibrated \
setting, below); `heldout_H`: calibrated with the older held-out-seen γ; `seen_acc`: the finetuned network on \
test_seen.

| method | S | H | cal_S |
|---|---|---|---|
| niwt | 85.0 ± 7.1 | 75.0 ± 7.1 | 80.0 ± 7.1 |
| eszsl | 91.0 ± 1.4 | 86.0 ± 1.4 | 80.0 |

## What `validate` chose, per seed

The setting of the rows as shipped (S, U, H, AUSUC); where a method's calibrated reading (`cal_*`) has a setting \
of its own (chosen by calibrated H, for a method tuned by uncalibrated H: NIWT), it follows `calibrated:`. The \
seen margins each γ is carried by are in the CSV.

| method | seed 0 | seed 1 |
|---|---|---|
| niwt | calibration_gamma 0.924, lambda 0.0001; calibrated: calibration_gamma 0.5, lambda 0.01 | \
calibration_gamma -0.5, lambda 0.01 |
| eszsl | gamma 1e+05 | gamma 1e+04 |

## Explanations (`stats/explain.json`, method niwt)

| metric | mean ± std |
|---|---|
| text/paper/precision_at_k | 0.850 ± 0.014 |
"""


def test_seed_tables_exact() -> None:
    assert seed_tables(ROWS) == EXPECTED


def test_collect_only_rebuilds_the_markdown_from_the_csv(tmp_path: Path) -> None:
    csv_path, md = tmp_path / "seeds.csv", tmp_path / "out" / "seeds.md"
    csv_path.write_text(rows_to_csv(ROWS))
    assert main(["seeds", "--collect-only", "--csv", str(csv_path), "--md", str(md)]) == 0
    assert md.read_text() == EXPECTED


def test_csv_columns_results_first_provenance_last_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    path.write_text(rows_to_csv(ROWS))
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["seed", "method", "S", "H", "cal_S", "choice.gamma", "choice.lambda", "choice.calibration_gamma",
                      "choice.calibration_margin", "cal_choice.lambda", "cal_choice.calibration_gamma",
                      "explain.text/paper/precision_at_k", "explain.text/n_images",
                      "experiment", "rev", "overrides", "stages_run", "machine", "cpus", "torch"]
    back = read_rows(path)
    assert [{k: v for k, v in r.items() if v != ""} for r in back] == [{k: v for k, v in r.items() if v != ""}
                                                                       for r in ROWS]


def test_collect_only_without_a_csv_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "none.csv"
    assert main(["seeds", "--collect-only", "--csv", str(missing), "--md", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err and "niwt seeds" in err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["seeds", "--collect-only", "--csv", str(tmp_path / "bad.csv"), "--md", str(tmp_path / "x.md")]) == 2
    assert "not a `niwt seeds` CSV" in capsys.readouterr().err


def test_seed_rows_from_the_experiment_files() -> None:
    headline = {"eszsl": {"H": 0.86, "S": 0.9}, "niwt": {"H": 0.83, "S": 0.84}}
    evaluate = {"niwt": {"cal_S": 0.79, "cal_U": 0.84, "heldout_H": 0.83, "gamma": 0.92},
                "eszsl": {"cal_S": 0.83, "cal_U": 0.92, "heldout_H": 0.88}}
    choices = {"version": 1, "choices": {"niwt": {"lr": 0.001, "calibration_gamma": 0.92},
                                         "eszsl": {"gamma": 1e5, "calibration_gamma": 0.07}},
               "calibrated_choices": {"niwt": {"lr": 0.01, "calibration_gamma": 0.3}}}
    explain = {"text/paper/precision_at_k": 0.86, "text/k": 5}
    rows = seed_rows(2, headline, evaluate, choices, explain, {"experiment": "seeds-2"})
    assert [r["method"] for r in rows] == ["niwt", "eszsl"]
    assert rows[0] == {"seed": 2, "method": "niwt", "H": 0.83, "S": 0.84, "cal_S": 0.79, "cal_U": 0.84,
                       "heldout_H": 0.83, "choice.calibration_gamma": 0.92, "choice.lr": 0.001,
                       "cal_choice.calibration_gamma": 0.3, "cal_choice.lr": 0.01,
                       "explain.text/k": 5, "explain.text/paper/precision_at_k": 0.86, "experiment": "seeds-2"}
    assert not any(k.startswith("explain.") for k in rows[1])  # explain explains NIWT's model only
    assert rows[1]["choice.gamma"] == 1e5 and not any(k.startswith("cal_choice.") for k in rows[1])
    # no evaluate stats, no choices, no explain: the headline alone
    bare = seed_rows(0, {"icis": {"H": 0.1}}, None, None, None, {})
    assert bare == [{"seed": 0, "method": "icis", "H": 0.1}]
    with pytest.raises(SeedsError, match="no headline metrics"):
        seed_rows(0, {}, None, None, None, {"experiment": "seeds-0"})


def test_experiments_from_dvc_exp_show_json() -> None:
    """The layout of ``dvc exp show --json`` (DVC 3.67): baselines, each with its experiments."""
    def metrics(h: float) -> dict:
        return {"metrics/gzsl/niwt.json": {"data": {"H": h}}, "metrics/gzsl/icis.json": {"data": {"H": 0.0}},
                "other/x.json": {"data": {"H": 9.0}}}

    show = [
        {"rev": "workspace", "name": None, "data": {"metrics": metrics(0.5)}, "error": None, "experiments": None},
        {"rev": "b" * 40, "name": "main", "data": {"metrics": {}}, "error": None, "experiments": [
            {"revs": [{"rev": "e" * 40, "name": "seeds-1", "data": {"metrics": metrics(0.7)}, "experiments": None}],
             "executor": None, "name": "seeds-1"}]},
        {"rev": "c" * 40, "name": None, "data": {}, "error": None, "experiments": [
            {"revs": [{"rev": "f" * 40, "name": "seeds-1", "data": {"metrics": metrics(0.1)}}], "name": "seeds-1"}]},
    ]
    found = experiments(show, "b" * 40)
    assert found == {"seeds-1": ("e" * 40, {"niwt": {"H": 0.7}, "icis": {"H": 0.0}})}
    assert experiments(show, "d" * 40) == {}


def test_stages_run_from_dvc_output() -> None:
    output = ("Running stage 'fingerprint':\n> niwt fingerprint\nStage 'prepare' didn't change, skipping\n"
              "Stage 'finetune' is cached - skipping run, checking out outputs\n"
              "Running stage 'validate':\n> niwt validate\nRunning stage 'evaluate':\n")
    assert stages_run(output) == ["validate", "evaluate"]
    assert stages_run("Running stage 'fingerprint':\n") == []


def test_overrides_are_key_value_and_never_the_seed() -> None:
    assert check_overrides(["inject.lambda=0.001", "inject.lr=[0.01]"]) == ["inject.lambda=0.001", "inject.lr=[0.01]"]
    for bad in ("inject.lambda", "=3", "base.seed=1", "params.yaml:base.seed=1"):
        with pytest.raises(SeedsError):
            check_overrides([bad])


def test_readme_summary_is_rewritten_between_its_markers_only(tmp_path: Path, capsys) -> None:
    """``--readme``: the table between the markers is the CSV's mean ± std; the rest of the file
    stays byte for byte; a file without the markers is one line and exit 2, and is left as it was."""
    from niwt.commands.seeds import README_BEGIN, README_END

    csv_path, md, readme = tmp_path / "seeds.csv", tmp_path / "seeds.md", tmp_path / "README.md"
    csv_path.write_text(rows_to_csv(ROWS))
    readme.write_text(f"# Title\n\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    assert main(["seeds", "--collect-only", "--csv", str(csv_path), "--md", str(md), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# Title\n\nbefore\n{README_BEGIN}\nMean ± sample std over seeds 0, 1, per-class")
    assert text.endswith(f"{README_END}\nafter\n") and "old table" not in text
    assert ("| method | S | H |\n|---|---|---|\n| niwt | 85.0 ± 7.1 | 75.0 ± 7.1 |\n"
            "| eszsl | 91.0 ± 1.4 | 86.0 ± 1.4 |\n") in text
    again = readme.read_text()
    assert main(["seeds", "--collect-only", "--csv", str(csv_path), "--md", str(md), "--readme", str(readme)]) == 0
    assert readme.read_text() == again  # idempotent
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    capsys.readouterr()
    assert main(["seeds", "--collect-only", "--csv", str(csv_path), "--md", str(md), "--readme", str(plain)]) == 2
    err = capsys.readouterr().err
    assert f"{plain}: needs one line" in err and err.count("\n") == 1 and plain.read_text() == "no markers\n"


def test_the_published_tables_are_the_committed_csvs() -> None:
    """README's summary and docs/results/seeds.md are exactly what ``niwt seeds --collect-only
    --readme README.md`` makes of the committed docs/results/seeds.csv (no hand-edited number)."""
    from niwt.commands.seeds import DEFAULT_CSV, DEFAULT_MD, summary_table, with_summary

    repo = Path(__file__).resolve().parents[2]
    rows = read_rows(repo / DEFAULT_CSV)
    assert {r["seed"] for r in rows} == {"0", "1", "2"}
    assert (repo / DEFAULT_MD).read_text() == seed_tables(rows)
    readme = repo / "README.md"
    assert with_summary(readme, summary_table(rows)) == readme.read_text()
