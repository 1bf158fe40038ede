"""The folder dataset (data.name: folder): the layout, and one clear error per bad input."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from niwt.data.folder import load_folder
from niwt.data.raw import DatasetError
from niwt.data.tables import assign_splits, joint_order

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from folder_data import CLASSES, make_folder  # noqa: E402


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "shapes", per_class=6, size=16)


def test_reads_the_layout(root: Path) -> None:
    raw = load_folder(root)
    assert raw.class_names == list(CLASSES)
    assert raw.unseen == ["cyan_fish", "purple_moth"]
    assert raw.attribute_names == ["red", "green", "blue", "speckled"]
    assert raw.attributes.shape == (6, 4) and raw.attributes[0, 0] == pytest.approx(220 / 255, abs=1e-3)
    assert raw.descriptions[1] == "a green animal with speckles"
    assert len(raw.image_paths) == 36 and {Path(p).suffix for p in raw.image_paths} == {".jpg", ".png", ".webp"}
    # every mode (greyscale, RGBA, CMYK) is read as RGB
    from niwt.data.images import ImageTable, make_transform

    table = ImageTable(raw.image_paths, raw.image_labels, make_transform(16, train=False))
    assert {tuple(table[i][0].shape) for i in range(6)} == {(3, 16, 16)}
    cls, split = assign_splits(raw, joint_order(raw), 0.2, 0.2, seed=0)
    assert set(split[cls >= 4]) == {"test_unseen"} and {"train", "val", "test_seen"} <= set(split[cls < 4])


def test_splits_csv_fixes_the_split(root: Path) -> None:
    raw = load_folder(root)
    rows = ["path,split"]
    for path, label in zip(raw.image_paths, raw.image_labels, strict=True):
        rel = Path(path).relative_to(root).as_posix()
        name = raw.class_names[label]
        idx = int(Path(path).stem)
        fixed = ["train", "train", "train", "val", "test_seen", "train"][idx]
        rows.append(f"{rel},{'test_unseen' if name in raw.unseen else fixed}")
    (root / "splits.csv").write_text("\n".join(rows) + "\n")
    raw = load_folder(root)
    cls, split = assign_splits(raw, joint_order(raw), 0.5, 0.4, seed=0)
    assert list(split) == raw.image_splits


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


BAD = {
    "class without folder": (lambda r: shutil.rmtree(r / "images" / "blue_jay"),
                             r"images/blue_jay: no image folder for class 'blue_jay'"),
    "class without image": (lambda r: [p.unlink() for p in (r / "images" / "blue_jay").iterdir()],
                            r"images/blue_jay: class 'blue_jay' has no image"),
    "folder not in classes.csv": (lambda r: (r / "images" / "zebra").mkdir(),
                                  r"images: image folders not in classes.csv: \['zebra'\]"),
    "duplicate class": (lambda r: _edit(r / "classes.csv", "blue_jay,seen", "red_fox,seen"),
                        r"classes.csv:4: duplicate class 'red_fox' \(first on row 2\)"),
    "split value": (lambda r: _edit(r / "classes.csv", "blue_jay,seen", "blue_jay,train"),
                    r"classes.csv:4: split 'train' of class 'blue_jay' is not seen or unseen"),
    "no unseen": (lambda r: (_edit(r / "classes.csv", "cyan_fish,unseen", "cyan_fish,seen"),
                             _edit(r / "classes.csv", "purple_moth,unseen", "purple_moth,seen")),
                  r"classes.csv: no unseen class"),
    "one seen": (lambda r: [_edit(r / "classes.csv", f"{c},seen", f"{c},unseen")
                            for c in ("green_frog", "blue_jay", "yellow_duck")],
                 r"classes.csv: 1 seen class; at least two"),
    "attribute row missing": (lambda r: _edit(r / "attributes.csv", "blue_jay,", "#,"),
                              r"attributes.csv:4: class '#' is not in classes.csv"),
    "attribute row absent": (lambda r: (r / "attributes.csv").write_text(
        "\n".join(line for line in (r / "attributes.csv").read_text().splitlines() if "blue_jay" not in line)),
        r"attributes.csv: no attribute row for classes \['blue_jay'\]"),
    "attribute row extra": (lambda r: (r / "attributes.csv").write_text(
        (r / "attributes.csv").read_text() + "red_fox,1,0,0,0\n"),
        r"attributes.csv:8: second row for class 'red_fox' \(first on row 2\)"),
    "non-numeric": (lambda r: _edit(r / "attributes.csv", "0.863,0.157", "0.863,high"),
                    r"attributes.csv:2: attribute 'green' of class 'red_fox' is not a number: 'high'"),
    "NaN": (lambda r: _edit(r / "attributes.csv", "0.863,0.157", "0.863,nan"),
            r"attributes.csv:2: attribute 'green' of class 'red_fox' is NaN or infinite"),
    "constant row": (lambda r: _edit(r / "attributes.csv", "red_fox,0.863,0.157,0.118,0", "red_fox,1,1,1,1"),
                     r"attributes.csv:2: every attribute of class 'red_fox' has the same value 1"),
    "semicolons": (lambda r: (r / "classes.csv").write_text(
        (r / "classes.csv").read_text().replace(",", ";")),
        r"classes.csv:1: the columns are separated by ';'; niwt reads comma-separated"),
    "BOM": (lambda r: (r / "attributes.csv").write_bytes(b"\xef\xbb\xbf" + (r / "attributes.csv").read_bytes()),
            r"attributes.csv: starts with a byte-order mark \(BOM\)"),
    "ragged row": (lambda r: _edit(r / "classes.csv", "blue_jay,seen,a blue bird", "blue_jay,seen,a blue, bird"),
                   r"classes.csv:4: 4 fields, the header has 3"),
    "splits.csv outside images/": (lambda r: (r / "splits.csv").write_text("path,split\n../secret.jpg,train\n"),
                                   r"splits.csv:2: path '../secret.jpg' is not inside images/"),
    "splits.csv bad split": (lambda r: (r / "splits.csv").write_text("path,split\nimages/red_fox/000.jpg,trainval\n"),
                             r"splits.csv:2: split 'trainval' is not one of train, val, test_seen, test_unseen"),
    "splits.csv leaks unseen": (lambda r: (r / "splits.csv").write_text("path,split\nimages/cyan_fish/000.jpg,train\n"),
                                r"splits.csv:2: 'images/cyan_fish/000.jpg' of unseen class 'cyan_fish' is in "
                                r"split 'train'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_error(root: Path, case: str) -> None:
    damage, message = BAD[case]
    damage(root)
    with pytest.raises(DatasetError, match=message):
        load_folder(root)


def test_unreadable_images_fail_prepare_before_training(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    from niwt.cli import main

    for p in (root / "images" / "blue_jay").iterdir():
        p.write_bytes(b"not an image")
    params = {"data": {"name": "folder", "root": str(root), "bad_images": "skip"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = main(["prepare", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "prepared"),
                 "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if "niwt prepare" in line]
    assert code == 2 and len(err) == 1
    assert err[0].startswith("niwt prepare: error: folder: classes without a readable image: ['blue_jay']"), err


def test_image_with_alpha_palette_and_grey(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", per_class=2, size=8, modes=False)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").convert("P").save(root / "images" / "red_fox" / "p.png")
    raw = load_folder(root)
    assert any(p.endswith("p.png") for p in raw.image_paths)


def test_decomposed_folder_names_match_and_skipped_files_are_counted(root: Path) -> None:
    """macOS writes folder names in Unicode NFD; classes.csv has them composed (NFC): they look identical and
    must match. Files of other formats (.gif, .tif) are skipped with a count, never silently."""
    import unicodedata

    composed = "café_bird"  # é as one code point
    text = (root / "classes.csv").read_text(encoding="utf-8").replace("blue_jay", composed)
    (root / "classes.csv").write_text(text, encoding="utf-8")
    attrs = (root / "attributes.csv").read_text(encoding="utf-8").replace("blue_jay", composed)
    (root / "attributes.csv").write_text(attrs, encoding="utf-8")
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    (root / "images" / "blue_jay").rename(root / "images" / decomposed)
    Image.new("RGB", (16, 16)).save(root / "images" / "red_fox" / "extra.gif")
    Image.new("RGB", (16, 16)).save(root / "images" / "red_fox" / "scan.tif")
    (root / "images" / "red_fox" / ".DS_Store").write_bytes(b"\0")
    raw = load_folder(root)
    assert composed in raw.class_names
    label = raw.class_names.index(composed)
    assert sum(int(v == label) for v in raw.image_labels) == 6
    assert all(Path(p).exists() for p in raw.image_paths)
    assert raw.notes == (f"{root / 'images'}: 2 files skipped, not .jpg/.jpeg/.png/.webp (e.g. extra.gif, "
                         "scan.tif); convert them to include them",)
