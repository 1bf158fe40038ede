"""Nothing stale by construction (issue 25, 1): every file a stage reads is, by content, a DVC dependency.

Under `dvc repro`, with a folder dataset and the user's own classifier (``model.weights``):

* the pixels of three images rewritten at the same paths (the split table stays byte-identical) rerun
  ``cache``, whose shards then hold the new pixels, and so everything that reads them;
* a retrained classifier saved over ``model.weights`` reruns ``finetune``;
* an untouched project reruns nothing;
* another ``data.domain`` (only the class vectors change) reruns ``prepare`` but neither ``cache`` nor
  ``finetune``, which never read the vectors (issue 25, 9).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from folder_data import CLASSES, make_folder  # noqa: E402
from tiny_project import dvc, make_project  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 32


def _save_classifier(path: Path, names: list[str], seed: int) -> None:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(num_classes=len(names)).state_dict(), path)
    path.with_suffix(".txt").write_text("\n".join(names) + "\n")


def _ran(stdout: str, stage: str) -> bool:
    if f"Running stage '{stage}'" in stdout:
        return True
    assert f"Stage '{stage}' didn't change, skipping" in stdout, stdout[-3000:]
    return False


def test_rewritten_pixels_and_a_retrained_classifier_rerun_their_readers(tmp_path: Path) -> None:
    seen = [n for n, v in CLASSES.items() if v[0] == "seen"]
    overrides = {
        "data": {"name": "folder", "root": "data/raw/shapes", "val_fraction": 0.15, "test_seen_fraction": 0.25},
        "model": {"arch": "resnet18", "weights": "models/mine.pth", "class_names": "models/mine.txt",
                  "image_size": SIZE},
        "finetune": {"mode": "none"},
    }
    project = make_project(tmp_path / "proj", overrides)
    make_folder(project / "data" / "raw" / "shapes", per_class=6, size=SIZE, modes=False)
    _save_classifier(project / "models" / "mine.pth", seen, seed=0)
    dvc(["repro", "finetune"], project)
    shard = sorted((project / "data" / "cache").glob("shard-*.npy"))[0]
    before = shard.read_bytes()
    again = dvc(["repro", "finetune"], project).stdout
    assert not _ran(again, "cache") and not _ran(again, "finetune")  # untouched: nothing reruns

    rng = np.random.default_rng(1)
    for path in sorted((project / "data" / "raw" / "shapes" / "images" / seen[0]).glob("*.jpg"))[:3]:
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)
    out = dvc(["repro", "finetune"], project).stdout
    assert _ran(out, "cache") and _ran(out, "finetune")
    assert shard.read_bytes() != before  # the new pixels, not the old ones

    _save_classifier(project / "models" / "mine.pth", seen, seed=1)  # retrained, saved over the old file
    out = dvc(["repro", "finetune"], project).stdout
    assert _ran(out, "finetune") and not _ran(out, "cache")

    domain = (project / "data" / "prepared" / "domain.parquet").read_bytes()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["domain"] = "text"  # the class descriptions, embedded: other vectors, same images and classes
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(["repro", "finetune"], project).stdout
    assert _ran(out, "prepare") and not _ran(out, "cache") and not _ran(out, "finetune")
    assert (project / "data" / "prepared" / "domain.parquet").read_bytes() != domain
