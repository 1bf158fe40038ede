"""Your own data and classifier through the stages (``niwt.cli.main``): the errors a user meets first,
each one line before any training, and the degenerate importance layer refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from niwt.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from folder_data import CLASSES, make_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
SEEN = [n for n, v in CLASSES.items() if v[0] == "seen"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("NIWT_PROGRESS", "0")
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "shapes", per_class=6, size=16, modes=False)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=len(SEEN)).state_dict(), tmp_path / "mine.pth")
    (tmp_path / "mine.txt").write_text("\n".join(SEEN) + "\n")
    return tmp_path


def _params(project: Path, **sections: dict) -> Path:
    p = {"data": {"name": "folder", "root": str(project / "shapes"), "val_fraction": 0.2, "test_seen_fraction": 0.2},
         "model": {"arch": "resnet18", "weights": "mine.pth", "class_names": "mine.txt", "image_size": 32},
         "finetune": {"mode": "none", "batch_size": 8}, "extract": {"layer": "body.layer4.0"}}
    for key, value in sections.items():
        p[key] = {**p.get(key, {}), **value}
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("niwt ")]
    return code, "\n".join(err)


def test_own_classifier_class_names_must_match(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = str(_params(project))
    assert _run(capsys, "prepare", "--params", params, "--out", "prepared")[0] == 0
    (project / "mine.txt").write_text("red_fox\ngreen_frog\nblue_jay\nwolf\n")
    code, err = _run(capsys, "finetune", "--params", params, "--data", "prepared", "--out", "ft.pt",
                     "--history", "h.csv")
    assert code == 2 and err.count("\n") == 0
    assert "mine.txt: the classifier's classes do not match the dataset's seen classes: 1 seen classes have no " \
           "row (['yellow_duck']), 1 rows name no seen class (['wolf'])" in err
    assert not (project / "ft.pt").exists()


def test_degenerate_layer_refused_unless_forced(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = _params(project)
    assert _run(capsys, "prepare", "--params", str(params), "--out", "prepared")[0] == 0
    code, err = _run(capsys, "finetune", "--params", str(params), "--data", "prepared", "--out", "ft.pt",
                     "--history", "h.csv")
    assert code == 0, err
    params = str(_params(project, extract={"layer": "body.layer4"}))
    code, err = _run(capsys, "extract", "--params", params, "--data", "prepared", "--model", "ft.pt",
                     "--out", "imp")
    assert code == 2, err
    assert err.startswith("niwt extract: error: importance layer 'body.layer4' is degenerate for NIWT: only pooling "
                          "and linear layers stand between it and the logits; every image's importance equals its "
                          "class's classifier row")
    assert not (project / "imp").exists()
    params = str(_params(project, extract={"layer": "body.layer4", "allow_degenerate": True}))
    assert _run(capsys, "extract", "--params", params, "--data", "prepared", "--model", "ft.pt", "--out", "imp")[0] == 0
    params = str(_params(project))
    assert _run(capsys, "extract", "--params", params, "--data", "prepared", "--model", "ft.pt", "--out", "imp")[0] == 0


def test_niwt_layers_lists_shapes_and_degenerate_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "--arch", "resnet18", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("body.")}
    assert "512x2x2" in rows["body.layer4.0"] and " ok " in rows["body.layer4.0"]
    assert "layer4.1.relu (ReLU)" in rows["body.layer4.0"]
    assert "degenerate" in rows["body.layer4"] and "degenerate" in rows["body.layer4.1"]
    assert main(["layers", "--arch", "nonet"]) == 2
    assert "niwt layers: error: unknown model.arch 'nonet'" in capsys.readouterr().err


def test_awa2_without_xlsa17_names_only_its_split_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    native = tmp_path / "raw" / "awa2" / "Animals_with_Attributes2"
    (native / "JPEGImages").mkdir(parents=True)
    for name in ("classes.txt", "predicates.txt", "predicate-matrix-continuous.txt", "predicate-matrix-binary.txt"):
        (native / name).write_text("")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"name": "awa2", "root": str(tmp_path / "raw")}}))
    code, err = _run(capsys, "prepare", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "p"))
    assert code == 2
    assert str(tmp_path / "raw" / "xlsa17" / "data" / "AWA2" / "att_splits.mat") in err
    assert "CUB" not in err and "SUN" not in err
    assert "data.name: folder" in err


def test_predict_on_the_exported_plain_state_dict(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from niwt.models.checkpoint import export_plain, load_checkpoint

    params = str(_params(project))
    assert _run(capsys, "prepare", "--params", params, "--out", "prepared")[0] == 0
    assert _run(capsys, "finetune", "--params", params, "--data", "prepared", "--out", "ft.pt",
                "--history", "h.csv")[0] == 0
    model, meta = load_checkpoint(project / "ft.pt")
    export_plain(project / "ft.pth", model, "resnet18", meta.class_names)
    images = [str(p) for p in sorted((project / "shapes" / "images" / "blue_jay").iterdir())[:3]]
    assert main(["predict", *images, "--model", "ft.pt", "--data", "prepared", "--top-k", "2"]) == 0
    from_checkpoint = capsys.readouterr().out
    assert main(["predict", *images, "--model", "ft.pth", "--arch", "resnet18", "--image-size", "32",
                 "--data", "prepared", "--top-k", "2"]) == 0
    assert capsys.readouterr().out == from_checkpoint
