"""The README's 'Your own data and classifier' worked example, run verbatim through `dvc exp run`.

The README's bash block (classes.csv, attributes.csv, the class-names file, `niwt layers`, `dvc exp run
-S ...`, `dvc metrics show`, `niwt predict`) is read from README.md and run as it is, in a tiny project
(the test's params.yaml is the tiny one; the README's `-S` overrides are applied by DVC as written):
three seen classes, the user's own ResNet-18 trained by the test before (plain torchvision, a plain
state_dict, rows in the user's order), 224-px input. NIWT teaches that classifier `fox` and `owl` with
``finetune.mode: none``; the exported plain state_dict must load into plain torchvision and predict
exactly as ``niwt predict``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_project import REPO, env, make_project, run  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = 224  # the README's model.image_size
PETS = {"cat": (200, 120, 60), "dog": (120, 80, 40), "horse": (90, 60, 30), "fox": (220, 80, 20),
        "owl": (150, 150, 150)}
SEEN = ["cat", "dog", "horse"]


def readme_example() -> str:
    """The bash block under the README's **Worked example**, exactly as a reader copies it."""
    text = (REPO / "README.md").read_text()
    after = text[text.index("**Worked example**"):]
    block = re.search(r"```bash\n(.*?)```", after, flags=re.S)
    assert block is not None, "README.md: no bash block after **Worked example**"
    return block.group(1)


def _pets(root: Path, per_class: int = 10) -> None:
    """images/{cat,dog,horse,fox,owl}/001.jpg ...: small JPEGs, one colour per class plus noise."""
    rng = np.random.default_rng(0)
    for name, colour in PETS.items():
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in range(1, per_class + 1):
            pixels = np.asarray(colour, np.float64) + rng.normal(0, 20, (40, 48, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)


def _train_user_classifier(root: Path, out: Path, names: list[str]) -> None:
    """What the user did before niwt: a few SGD steps of torchvision's ResNet-18 on the seen classes,
    saved as a plain state_dict (rows in ``names`` order)."""
    from niwt.data.images import make_transform

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(names))
    tf = make_transform(SIZE, train=False)

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
    torch.save(model.state_dict(), out)  # the README's own line writes the class names


def test_readme_worked_example_runs_verbatim(tmp_path: Path) -> None:
    # the project's own (tiny) settings; the README's -S overrides are applied by DVC as written. A small
    # injection pool and grid: the dense head Jacobian at 224 px (layer4.0: 512x7x7) is the costly part here
    overrides = {"inject": {"methods": ["niwt", "regression"], "pool_size": 8, "max_iters": 10, "lr": [0.01]},
                 "explain": {"images_per_class": 1}}
    project = make_project(tmp_path / "proj", overrides)
    _pets(project / "data" / "raw" / "pets")
    _train_user_classifier(project / "data" / "raw" / "pets", project / "models" / "my_resnet18.pth", SEEN)
    user = torch.load(project / "models" / "my_resnet18.pth", weights_only=True)

    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_example()], cwd=project, env=env(project),
                          capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    out = proc.stdout
    assert "body.layer4.0" in out  # niwt layers lists the layer the README picks
    assert re.search(r"metrics/gzsl/niwt\.json\s+\S+\s+\S+\s+\S+", out), out  # dvc metrics show
    ranked = re.findall(r"^\s+\d+\. (\S+)", out.split("fox/001.jpg")[-1], flags=re.M)
    assert sorted(ranked) == sorted(PETS), out  # niwt predict ranks all 5 classes

    metrics = json.loads((project / "stats" / "evaluate.json").read_text())
    assert {"S", "U", "H"} <= set(metrics["niwt"])
    finetune = json.loads((project / "stats" / "finetune.json").read_text())
    assert finetune["epochs_trained"] == 0  # mode none: the user's classifier as it is

    # the seen rows are the user's own rows, untouched; the body too
    injected = torch.load(project / "models" / "injected" / "niwt.pth", weights_only=True)
    names = (project / "models" / "injected" / "niwt.classes.txt").read_text().split()
    assert names[:3] == SEEN and sorted(names) == sorted(PETS)
    assert torch.equal(injected["fc.weight"][:3], user["fc.weight"])
    assert torch.equal(injected["layer4.0.conv1.weight"], user["layer4.0.conv1.weight"])

    # plain PyTorch, as the README shows it: same top-1 as `niwt predict`
    images = [project / "data" / "raw" / "pets" / "images" / c / f"00{i}.jpg" for c in ("fox", "owl") for i in (1, 2)]
    model = torchvision.models.resnet18(num_classes=len(names))
    model.load_state_dict(injected)
    model.eval()
    T = torchvision.transforms  # noqa: N806  docs/own_data.md's preprocessing at 224 px, as written there
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                                (0.229, 0.224, 0.225))])
    with torch.no_grad():
        plain = [names[model(tf(Image.open(p).convert("RGB"))[None]).argmax().item()] for p in images]
    printed = run([sys.executable, "-m", "niwt.cli", "predict", *map(str, images), "--top-k", "1"], project).stdout
    assert re.findall(r"^\s+1\. (\S+)", printed, flags=re.M) == plain, printed
