"""Xian et al.'s features end to end: the README's xlsa17 recipe through ``dvc repro`` on a CUB-shaped
``res101.mat`` generated from the real split file (11,788 images, 32-d features), every method beside
NIWT, the proposed split exactly, the protocol's own validation classes, and an explanation report that
says why it has no Grad-CAM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from niwt.config.recipes import XLSA17, dvc_command  # noqa: E402
from niwt.data.tables import read_classes, read_splits  # noqa: E402
from tiny_project import REPO, dvc, make_project, merge  # noqa: E402
from xlsa17_data import write_res101  # noqa: E402

pytestmark = pytest.mark.slow

DATA = REPO / "tests" / "data" / "xlsa17"


def _recipe() -> dict:
    out: dict = {}
    for key, value in XLSA17.items():
        section, leaf = key.split(".")
        out = merge(out, {section: {leaf: value}})
    return out


SMALL = {
    "model": {"hidden": 64},
    "finetune": {"epochs": 10},
    "inject": {"methods": ["niwt", "regression", "eszsl", "devise", "sae"], "max_iters": 30, "pool_size": 64,
               "devise_lr": [0.1], "bilinear_epochs": [2], "sae_exponents": [0, 1], "eszsl_exponents": [-1, 0, 1]},
    "explain": {"images_per_class": 2},
}


def test_the_readme_recipe_runs_end_to_end_on_cub_shaped_features(tmp_path: Path) -> None:
    raw = tmp_path / "xlsa17" / "data"
    write_res101(raw, "CUB", DATA / "CUB", dim=32, noise=1.0)
    params = merge(merge(_recipe(), {"data": {"dataset": "CUB", "root": str(raw)}}), SMALL)
    project = make_project(tmp_path / "proj", params)
    dvc(["repro"], project)

    prepared = json.loads((project / "stats/prepare.json").read_text())
    assert (prepared["n_seen"], prepared["n_unseen"]) == (150, 50)
    assert prepared["n_train"] + prepared["n_val"] == 7057  # trainval_loc
    assert (prepared["n_test_seen"], prepared["n_test_unseen"]) == (1764, 2967)
    classes = read_classes(project / "data/prepared/classes.parquet")
    assert classes.domain.shape == (200, 312) and len(classes.validation) == 50  # Xian et al.'s 100 + 50
    splits = read_splits(project / "data/prepared/splits.parquet")
    assert all(p.endswith(f"features.npy#{i}") for p, i in zip(splits.path[:5], splits.image_id[:5], strict=True))
    assert (project / "data/prepared/features.npy").stat().st_size == 11788 * 32 * 4 + 128

    validation = json.loads((project / "models/validation.json").read_text())
    assert validation["source"] == "dataset" and len(validation["classes"]) == 50
    assert validation["problem"]["n_fit_classes"] == 100
    for method in SMALL["inject"]["methods"]:
        m = json.loads((project / f"metrics/gzsl/{method}.json").read_text())
        assert m["ZSL_T1"] > 0.1, (method, m)  # chance is 0.02: the methods learn from the attributes
    report = (project / "reports/explain/report.md").read_text()
    assert "Grad-CAM is not defined" in report and not (project / "reports/explain/panels").exists()
    assert "Why: textual explanations" in report


@pytest.mark.parametrize("page", ["README.md", "docs/xlsa17.md"])
def test_the_docs_print_the_recipe(page: str) -> None:
    text = (REPO / page).read_text()
    assert dvc_command("CUB", "/path/to/xlsa17/data") in text.replace("\\\n  ", "")
