"""What ``evaluate`` writes, by name: the one place where its writer (``stages/evaluate.py``) and its
readers (``stages/explain.py``, which embeds the plots and per-class accuracies in its report)
agree on file names, so that renaming a plot cannot silently drop it from the report.

Names are relative to evaluate's plot directory (``plots/evaluate`` in ``dvc.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path

from niwt.errors import InputError

PER_CLASS_CSV = "per_class_accuracy.csv"  # one row per (method, class): the report's per-class table
PER_CLASS_PARQUET = "per_class_accuracy.parquet"
PER_CLASS_COLUMNS = ("method", "class", "kind", "accuracy")  # the CSV's header
PER_CLASS_DIR = "per_class"  # <method>.csv each: one DVC bar-plot panel per method
CURVES_DIR = "curves"  # <method>.csv each: one DVC seen-unseen series per method
SEEN_UNSEEN_PLOT = "seen_unseen_curve.png"
UNSEEN_BARS_PLOT = "unseen_per_class.png"
COMPARISON_TABLE = "comparison.md"


def confusion_method(methods: list[str]) -> str:
    """The one method whose confusion matrix evaluate draws: NIWT when it was injected (the
    method the project is about), else the first in the order given (registry order)."""
    if not methods:
        raise ValueError("no methods: evaluate draws a confusion matrix of one of them")
    return "niwt" if "niwt" in methods else methods[0]


def confusion_plot(method: str) -> str:
    """File name of ``method``'s confusion plot: the method is in the name, so a reader can tell
    which method the picture shows without opening it."""
    return f"confusion_{method}.png"


def plot_files(methods: list[str]) -> tuple[str, str, str]:
    """evaluate's PNGs for these methods, in the order the report shows them."""
    return SEEN_UNSEEN_PLOT, UNSEEN_BARS_PLOT, confusion_plot(confusion_method(methods))


def read_stats(path: Path) -> dict[str, dict[str, float]]:
    """evaluate's numbers (its ``--stats`` file, ``stats/evaluate.json``): ``{method: {metric: value}}``;
    anything else is one :class:`InputError` naming the file."""
    try:
        doc = json.loads(Path(path).read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); rerun `dvc repro evaluate`") from err
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise InputError(f"{path}: not evaluate's numbers (an object of one object per method); "
                         "rerun `dvc repro evaluate`")
    return doc
