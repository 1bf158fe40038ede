"""``scripts/plot_sweep.py`` on `dvc exp show --csv` output: today's column names, the older ones,
and one error line when nothing can be plotted."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "plot_sweep.py"
KEYS = ("AUSUC", "H", "S", "U", "ZSL_T1", "cal_H", "seen_acc")  # one headline file's keys, as DVC sorts them


def _today_csv(path: Path, rows: list[tuple[str, str, str, dict[str, str]]]) -> None:
    """A `dvc exp show --csv` table as DVC 3.67 writes it for this project: the key H is in every
    method's file, so each metric column is named `<file>:<key>`; params by their dotted path.
    ``rows``: (Experiment, rev, inject.lambda, {key: niwt's value}); icis's columns are filled too."""
    header = ["Experiment", "rev", "typ", "Created", "parent", "State", "Executor"]
    header += [f"metrics/gzsl/{m}.json:{k}" for m in ("icis", "niwt") for k in KEYS]
    header += ["base.seed", "inject.methods", "inject.lr", "inject.lambda", "data/prepared"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for name, rev, lam, niwt in rows:
            typ = "baseline" if not name else "branch_commit"
            metrics = ["0.5"] * len(KEYS) + [niwt.get(k, "") for k in KEYS]
            writer.writerow([name, rev, typ, "2026-12-05T13:24:01", "", "Success" if name else "", "",
                             *metrics, "0", "['niwt', 'icis']", "[0.001, 0.01]", lam, "d920d757.dir"])


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def _m(s: str, u: str, h: str, cal_h: str) -> dict[str, str]:
    return {"S": s, "U": u, "H": h, "cal_H": cal_h}


def test_today_layout_plots_and_prints_each_value(tmp_path: Path) -> None:
    exps, out = tmp_path / "exps.csv", tmp_path / "sweep.png"
    _today_csv(exps, [
        ("", "workspace", "[0.0001, 0.001, 0.01]", _m("0.9", "0.8", "0.85", "0.84")),  # no name: not a sweep row
        ("lam-1e-2", "a2c6aa9", "0.01", _m("0.909", "0.519", "0.661", "0.707")),
        ("lam-1e-3", "d6dc459", "[0.001]", _m("0.851", "0.827", "0.839", "0.84")),
        ("lam-0", "5d6c386", "0.0", _m("0.841", "0.83", "0.836", "0.836")),
        ("lam-1e-4", "0be8054", "0.0001", _m("!", "!", "!", "!")),  # failed: skipped
        ("seeds-1", "efeeb85", "0.001", _m("0.1", "0.1", "0.1", "0.1")),  # another prefix
    ])
    proc = _run(str(exps), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["| 0 | 84.1 | 83.0 | 83.6 | 83.6 |", "| 0.001 | 85.1 | 82.7 | 83.9 | 84.0 |",
                                        "| 0.01 | 90.9 | 51.9 | 66.1 | 70.7 |"]
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_no_row_with_the_metric_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    exps = tmp_path / "exps.csv"
    _today_csv(exps, [("", "workspace", "0.001", _m("0.9", "0.8", "0.85", "0.84")),
                      ("lam-1e-3", "d6dc459", "0.001", _m("", "", "", ""))])  # queued: no metrics yet
    proc = _run(str(exps), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("plot_sweep: error: ")
    assert "metrics/gzsl/niwt.json:H" in proc.stderr and not (tmp_path / "x.png").exists()
    # a method without a headline file: names both spellings it looked for
    proc = _run(str(exps), "--method", "eszsl", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 1 and "metrics/gzsl/eszsl.json:S" in proc.stderr and "eszsl.S" in proc.stderr


def test_older_layout_still_plots(tmp_path: Path) -> None:
    """A sweep of the older layout (one metrics file for every method: columns `niwt.H`), kept as test data."""
    proc = _run(str(REPO / "tests" / "data" / "lambda_sweep_old_layout.csv"), "--out", str(tmp_path / "old.png"))
    assert proc.returncode == 0, proc.stderr
    assert "| 0.001 | 85.1 | 82.7 | 83.9 | 84.0 |" in proc.stdout.splitlines()
    assert len(proc.stdout.splitlines()) == 6


def test_the_committed_sweep_is_todays_layout_and_plots(tmp_path: Path) -> None:
    """docs/lambda_sweep_exps.csv (the sweep behind docs/lambda_sweep.png) plots with the README's recipe."""
    proc = _run(str(REPO / "docs" / "lambda_sweep_exps.csv"), "--out", str(tmp_path / "today.png"))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 6 and (tmp_path / "today.png").stat().st_size > 0
    assert "metrics/gzsl/niwt.json:H" in (REPO / "docs" / "lambda_sweep_exps.csv").read_text().splitlines()[0]
