"""Real data laid out as the README says (git-ignored ``data/raw``, a relative ``data.root``) under
``dvc exp run --temp``, from another working directory, and edits to the raw files rerunning ``prepare``.

``splits.parquet`` holds image paths relative to their root, not to the working directory, so the
experiment's copy under ``.dvc/tmp/exps/`` (which lacks ``data/raw``) still finds every image in
``inject``; and the raw-data fingerprint makes an edit to a raw file rerun ``dvc repro prepare``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from test_real_formats import make_cub  # noqa: E402

from niwt.data.tables import read_classes, read_splits  # noqa: E402
from tiny_project import dvc, env, make_project, run  # noqa: E402

pytestmark = pytest.mark.slow

CUB_SMALL = {
    "data": {"name": "cub", "root": "data/raw", "domain": "attributes"},
    "model": {"arch": "smallcnn", "width": 8, "hidden": 32, "image_size": 32},
    "finetune": {"epochs": 1, "batch_size": 16},
    "extract": {"layer": "body.block4"},
    "mapping": {"epochs": 2, "n_val_classes": 1, "candidate_epochs": [2]},
    "validate": {"fraction": 0.1, "min_classes": 1},
    "inject": {"methods": ["niwt", "regression"], "max_iters": 5, "pool_size": 8},
    "explain": {"images_per_class": 2},
}


def _ran(stdout: str) -> list[str]:
    stages = ["fingerprint", "prepare", "cache", "finetune", "finetune_validation", "validate", "extract",
              "fit_mapping", "inject", "evaluate", "explain"]
    return [s for s in stages if f"Running stage '{s}'" in stdout]


def test_real_data_under_dvc_experiments_other_directories_and_raw_edits(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", CUB_SMALL)
    make_cub(project / "data" / "raw")  # git-ignored, like a user's real data
    assert run(["git", "check-ignore", "-q", "data/raw/cub"], project, check=False).returncode == 0
    first = dvc(["repro"], project).stdout
    assert _ran(first)[:2] == ["fingerprint", "prepare"]
    # stored relative to data.root: the same bytes wherever the project is
    import pyarrow.parquet as pq

    stored = pq.read_table(project / "data/prepared/splits.parquet")["path"].to_pylist()
    assert all(not p.startswith("/") and p.startswith("cub/CUB_200_2011/images/") for p in stored), stored[:3]
    assert all(Path(p).is_file() for p in read_splits(project / "data/prepared/splits.parquet").path)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "pipeline"], project)
    before = json.loads((project / "stats/evaluate.json").read_text())

    # 1. a DVC experiment in a temp copy (no data/raw there): inject and evaluate rerun and succeed
    exp = dvc(["exp", "run", "--temp", "-n", "lam", "-S", "inject.lambda=0.01"], project)
    assert "inject" in _ran(exp.stdout) and "prepare" not in _ran(exp.stdout), exp.stdout
    shown = json.loads(dvc(["exp", "show", "--json"], project).stdout)
    assert "lam" in json.dumps(shown)

    # 1b. niwt typed in another directory, with the project's params: same images, no stray mlflow.db
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    e = env(project)
    e.pop("MLFLOW_TRACKING_URI")  # the default: <project root>/mlflow.db
    proc = subprocess.run(["niwt", "evaluate", "--params", str(project / "params.yaml"),
                           "--data", str(project / "data/prepared"), "--injected", str(project / "models/injected"),
                           "--validation", str(project / "models/validation.json"),
                           "--plots", str(elsewhere / "plots"), "--headline", str(elsewhere / "gzsl"),
                           "--stats", str(elsewhere / "evaluate.json")],
                          cwd=elsewhere, env=e, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((elsewhere / "evaluate.json").read_text()) == before
    assert not (elsewhere / "mlflow.db").exists() and (project / "mlflow.db").is_file()

    # 2. an edit to the raw attribute matrix reruns prepare (never "up to date", even for `repro prepare`)
    matrix = project / "data/raw/cub/CUB_200_2011/attributes/class_attribute_labels_continuous.txt"
    old = read_classes(project / "data/prepared/classes.parquet").domain.copy()
    values = np.loadtxt(matrix, ndmin=2)
    values[0, 0] += 7.0
    np.savetxt(matrix, values, fmt="%.12f")
    again = dvc(["repro", "prepare"], project).stdout
    assert _ran(again) == ["fingerprint", "prepare"], again
    assert not np.array_equal(read_classes(project / "data/prepared/classes.parquet").domain, old)
    # and an untouched tree reruns nothing but the fingerprint
    assert _ran(dvc(["repro", "prepare"], project).stdout) == ["fingerprint"]
