"""evaluate's output names (niwt.evaluation.outputs): one module, used by the stage that writes the
files and the stage that reads them, and the readers of its per-class table and numbers."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from niwt.errors import InputError
from niwt.evaluation import outputs
from niwt.evaluation.tables import read_per_class_csv, write_per_class_csv

STAGES = Path(__file__).resolve().parents[2] / "src" / "niwt" / "stages"
NAMES = (outputs.PER_CLASS_CSV, outputs.PER_CLASS_PARQUET, outputs.PER_CLASS_DIR, outputs.CURVES_DIR,
         outputs.SEEN_UNSEEN_PLOT, outputs.UNSEEN_BARS_PLOT, outputs.COMPARISON_TABLE)


def literals(tree: ast.AST) -> set[str]:
    """String constants of a module (f-string parts included), docstrings left out."""
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


@pytest.mark.parametrize("stage", ["evaluate.py", "explain.py"])
def test_evaluate_and_explain_name_evaluates_files_only_through_outputs(stage: str) -> None:
    """The writer and the reader both take the names from the module, neither spells one out: a
    renamed plot is renamed for both."""
    tree = ast.parse((STAGES / stage).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "niwt.evaluation"
                for a in n.names}
    assert "outputs" in imported
    spelled = {s for s in literals(tree) if s in NAMES or "confusion_" in s
               or any(n in s for n in NAMES if "." in n)}  # a file name, maybe inside a path or an f-string
    assert not spelled, f"{stage} spells out evaluate's file names {spelled}: take them from niwt.evaluation.outputs"


def test_confusion_plot_names_the_method_it_shows() -> None:
    assert outputs.confusion_method(["niwt", "icis"]) == outputs.confusion_method(["icis", "niwt"]) == "niwt"
    assert outputs.confusion_method(["regression", "eszsl"]) == "regression"
    assert outputs.confusion_plot("niwt") == "confusion_niwt.png"
    assert outputs.plot_files(["eszsl"]) == ("seen_unseen_curve.png", "unseen_per_class.png", "confusion_eszsl.png")
    with pytest.raises(ValueError):
        outputs.confusion_method([])


def test_per_class_table_round_trip(tmp_path: Path) -> None:
    path = tmp_path / outputs.PER_CLASS_CSV
    write_per_class_csv(path, {"niwt": {0: 0.5, 2: 0.25}, "icis": {0: 1.0}}, ["cat", "dog", "eel"], 2)
    assert read_per_class_csv(path) == (["niwt", "icis"], {"cat": {"niwt": 0.5, "icis": 1.0}, "eel": {"niwt": 0.25}})


def test_per_class_table_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / outputs.PER_CLASS_CSV
    path.write_text("method,class\nniwt,cat\n")
    with pytest.raises(InputError, match=rf"{path}: no column \['kind', 'accuracy'\]"):
        read_per_class_csv(path)
    path.write_text("method,class,kind,accuracy\nniwt,cat,seen,high\n")
    with pytest.raises(InputError, match=rf"{path}: line 2: accuracy 'high' is not a number"):
        read_per_class_csv(path)


def test_read_stats(tmp_path: Path) -> None:
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps({"niwt": {"H": 0.5}}))
    assert outputs.read_stats(path) == {"niwt": {"H": 0.5}}
    for bad in ("{", json.dumps({"niwt": 0.5}), "[]"):
        path.write_text(bad)
        with pytest.raises(InputError, match=str(path)):
            outputs.read_stats(path)
