"""The README's 'Your own data and classifier' example, end to end through `dvc repro`.

A user has images in folders, a classes.csv / attributes.csv, and a ResNet-18 they trained
themselves (plain torchvision, a plain state_dict, rows in their own order). NIWT teaches that
classifier the unseen classes with ``finetune.mode: none``; the exported plain state_dict must
load into plain torchvision and predict exactly as ``niwt predict``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from folder_data import CLASSES, make_folder  # noqa: E402
from tiny_project import dvc, make_project, run  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 32


def _train_user_classifier(root: Path, out: Path, names: list[str]) -> None:
    """What the user did before niwt: a few SGD steps of torchvision's ResNet-18 on the seen classes,
    saved as a plain state_dict with its class list (rows in the user's order, not the CSV's)."""
    from niwt.data.images import make_transform

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(names))
    tf = make_transform(SIZE, train=False)
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(names):
        for path in sorted((root / "images" / name).iterdir()):
            with Image.open(path) as img:
                xs.append(tf(img.convert("RGB")))
            ys.append(label)
    x, y = torch.stack(xs), torch.tensor(ys)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    out.with_suffix(".txt").write_text("\n".join(names) + "\n")


def test_own_folder_dataset_and_own_resnet18(tmp_path: Path) -> None:
    seen = [n for n, v in CLASSES.items() if v[0] == "seen"]
    overrides = {
        "data": {"name": "folder", "root": "data/raw/shapes", "val_fraction": 0.15, "test_seen_fraction": 0.25},
        "model": {"arch": "resnet18", "weights": "models/my_resnet18.pth", "class_names": "models/my_resnet18.txt",
                  "image_size": SIZE},
        "finetune": {"mode": "none"},
        "extract": {"layer": "body.layer4.0"},
        "inject": {"methods": ["niwt", "regression"]},
        "explain": {"images_per_class": 1},
    }
    project = make_project(tmp_path / "proj", overrides)
    make_folder(project / "data" / "raw" / "shapes", per_class=6, size=SIZE)
    _train_user_classifier(project / "data" / "raw" / "shapes", project / "models" / "my_resnet18.pth",
                           list(reversed(seen)))
    dvc(["repro"], project)

    metrics = json.loads((project / "stats" / "evaluate.json").read_text())
    assert {"S", "U", "H"} <= set(metrics["niwt"])
    table = (project / "plots" / "evaluate" / "comparison.md").read_text()
    assert "NIWT" in table and "| H" in table.replace(" H |", "| H |")
    finetune = json.loads((project / "stats" / "finetune.json").read_text())
    assert finetune["epochs_trained"] == 0  # mode none: the user's classifier as it is

    # the seen rows are the user's own rows (reordered to the dataset's seen order), untouched
    user = torch.load(project / "models" / "my_resnet18.pth", weights_only=True)
    injected = torch.load(project / "models" / "injected" / "niwt.pth", weights_only=True)
    names = (project / "models" / "injected" / "niwt.classes.txt").read_text().split()
    assert names[:len(seen)] == seen and len(names) == len(CLASSES)
    order = [list(reversed(seen)).index(c) for c in seen]
    assert torch.equal(injected["fc.weight"][:len(seen)], user["fc.weight"][order])
    assert torch.equal(injected["layer4.0.conv1.weight"], user["layer4.0.conv1.weight"])

    # plain PyTorch, as the README shows it: same top-1 as `niwt predict`
    images = sorted((project / "data" / "raw" / "shapes" / "images" / "cyan_fish").iterdir())[:3]
    images += sorted((project / "data" / "raw" / "shapes" / "images" / "red_fox").iterdir())[:2]
    model = torchvision.models.resnet18(num_classes=len(names))
    model.load_state_dict(torch.load(project / "models" / "injected" / "niwt.pth", weights_only=True))
    model.eval()
    from PIL import Image

    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize((SIZE, SIZE)), torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    with torch.no_grad():
        plain = [names[model(tf(Image.open(p).convert("RGB"))[None]).argmax().item()] for p in images]
    out = run([sys.executable, "-m", "niwt.cli", "predict", *map(str, images), "--top-k", "1"], project).stdout
    predicted = re.findall(r"^\s+1\. (\S+)", out, flags=re.M)
    assert predicted == plain, out
