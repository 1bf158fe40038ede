"""A ViT and a Swin through `dvc repro`, every stage, with ``extract.layer`` left at ``auto``.

Tiny data (32-pixel images: a ViT-B/16 sees 2x2 patches), random initialisation, one epoch: what is
checked is that every stage runs on a transformer, that ``auto`` picked the family's layer, that
injection used the dense head Jacobian (a transformer's head has no gated form), and that the report
has its Grad-CAM panels on the patch grid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import dvc, make_project  # noqa: E402

pytestmark = pytest.mark.slow

LAYERS = {"vit_b_16": "body.encoder.layers.encoder_layer_10", "swin_t": "body.features.5"}


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_transformer_pipeline_end_to_end(tmp_path: Path, arch: str) -> None:
    overrides = {"model": {"arch": arch, "image_size": 32}, "finetune": {"epochs": 1},
                 "validate": {"finetune_epochs": 1}, "mapping": {"epochs": 2, "candidate_epochs": [1, 2]},
                 "inject": {"methods": ["niwt", "regression"], "max_iters": 10, "pool_size": 4, "lr": [0.01]},
                 "explain": {"images_per_class": 1}}
    project = make_project(tmp_path / "p", overrides)
    assert "layer: auto" in (project / "params.yaml").read_text()
    dvc(["repro"], project)

    manifest = json.loads((project / "data" / "importances" / "_manifest.json").read_text())
    assert manifest["layer"] == LAYERS[arch]
    inject = json.loads((project / "stats" / "inject.json").read_text())
    assert inject["niwt/solver"] == "jacobian (dense)"
    for method in ("niwt", "regression"):
        headline = json.loads((project / "metrics" / "gzsl" / f"{method}.json").read_text())
        assert 0 <= headline["H"] <= 1 and 0 <= headline["U"] <= 1
    panels = project / "reports" / "explain" / "panels"
    assert (panels / "unseen_overview.png").stat().st_size > 0
    assert "Grad-CAM" in (project / "reports" / "explain" / "report.md").read_text()
