"""The raw-data fingerprint changes with any edit that matters, and only then."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from niwt.data.fingerprint import fingerprint


def _tree(root: Path) -> Path:
    images = root / "cub" / "CUB_200_2011" / "images" / "001.A"
    images.mkdir(parents=True)
    for k in range(3):
        (images / f"{k}.jpg").write_bytes(b"jpeg" * (k + 1))
    (root / "cub" / "CUB_200_2011" / "classes.txt").write_text("1 001.A\n")
    xlsa = root / "xlsa17" / "data" / "CUB"
    xlsa.mkdir(parents=True)
    (xlsa / "att_splits.mat").write_bytes(b"mat")
    return images


def test_fingerprint_changes_with_edits_and_only_with_them(tmp_path: Path) -> None:
    images = _tree(tmp_path)
    first = fingerprint("cub", tmp_path)
    assert first["folders"]["cub"]["files"] == 4 and first["folders"]["xlsa17"]["files"] == 1
    assert fingerprint("cub", tmp_path) == first  # untouched: byte-identical, nothing reruns
    (tmp_path / "unrelated.txt").write_text("not part of the dataset")
    (tmp_path / "awa2").mkdir()
    assert fingerprint("cub", tmp_path) == first
    def same_size_new_mtime() -> None:
        st = (images / "0.jpg").stat()
        (images / "0.jpg").write_bytes(b"JPEG")
        os.utime(images / "0.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse clocks too

    edits = [
        same_size_new_mtime,
        lambda: (images / "1.jpg").write_bytes(b"longer content"),
        lambda: (images / "2.jpg").unlink(),
        lambda: (images / "9.jpg").write_bytes(b"new"),
        lambda: (tmp_path / "xlsa17" / "data" / "CUB" / "att_splits.mat").write_bytes(b"other"),
    ]
    seen = [first]
    for edit in edits:
        edit()
        now = fingerprint("cub", tmp_path)
        assert now not in seen
        seen.append(now)


def test_same_size_and_mtime_is_the_documented_blind_spot(tmp_path: Path) -> None:
    images = _tree(tmp_path)
    before = fingerprint("cub", tmp_path)
    st = (images / "0.jpg").stat()
    (images / "0.jpg").write_bytes(b"JPEG")
    os.utime(images / "0.jpg", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint("cub", tmp_path) == before  # README: `dvc repro -f prepare` for this case


def test_missing_dataset_and_generated_default(tmp_path: Path) -> None:
    assert fingerprint("cub", tmp_path)["folders"]["cub"] == {"missing": True}
    assert fingerprint("synthetic", None) == fingerprint("synthetic", tmp_path)


def test_link_loops_and_system_folders_are_one_line_errors(tmp_path: Path) -> None:
    """A folder link back into the tree, or to /proc, would walk forever (or the whole machine): refused,
    naming the link."""
    import pytest

    from niwt.errors import InputError

    images = _tree(tmp_path)
    (images / "loop").symlink_to(images.parent, target_is_directory=True)
    with pytest.raises(InputError, match=r"loop\b.*a loop, or the same images twice; remove the link"):
        fingerprint("cub", tmp_path)
    (images / "loop").unlink()
    (images / "proc").symlink_to("/proc", target_is_directory=True)
    with pytest.raises(InputError, match=r"proc: links to /proc, a system folder, not data"):
        fingerprint("cub", tmp_path)
    (images / "proc").unlink()
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "x.jpg").write_bytes(b"x")
    (images / "more").symlink_to(other, target_is_directory=True)  # a link to data elsewhere is followed
    assert fingerprint("cub", tmp_path)["folders"]["cub"]["files"] == 5


def test_named_files_change_with_their_content_alone(tmp_path: Path) -> None:
    """A classifier retrained and saved over the old file (same path, same size, even the same mtime)
    changes the digest; keywords are recorded as themselves; a pool folder is a tree digest."""
    from niwt.data.fingerprint import named_files

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # the project root that relative paths are under
    weights = tmp_path / "models" / "my.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"A" * 100)
    keywords = {"model.weights": ("none", "imagenet")}
    named = {"model.weights": "models/my.pth", "model.class_names": ""}
    first = named_files(named, keywords, tmp_path / "data")
    assert first["model.weights"]["bytes"] == 100 and first["model.class_names"] == {"value": ""}
    st = weights.stat()
    weights.write_bytes(b"B" * 100)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert named_files(named, keywords, tmp_path / "data") != first
    assert named_files({"model.weights": "imagenet"}, keywords, tmp_path) == {"model.weights": {"value": "imagenet"}}
    assert named_files({"model.weights": "models/gone.pth"}, keywords, tmp_path)["model.weights"]["missing"]
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.jpg").write_bytes(b"a")
    assert named_files({"inject.pool": "pool"}, {}, tmp_path)["inject.pool"]["files"] == 1


def test_a_layer_that_cannot_work_is_refused_by_fingerprint_before_any_training(tmp_path: Path, capsys) -> None:
    """extract.layer body.layer4 on ResNet-101 (avgpool and fc above it: a linear path) is refused by the
    first stage of every `dvc repro`, in seconds, before finetune; a typo lists the valid layers; nothing
    is written. The checks that need trained weights stay in extract."""
    from niwt.cli import main
    from niwt.importance.degenerate import DegenerateLayerError, check_structure
    from niwt.models.networks import ModelError

    with pytest.raises(DegenerateLayerError, match="'body.layer4' is degenerate"):
        check_structure("resnet101", "body.layer4", 224)
    assert check_structure("resnet101", "body.layer4", 224, allow=True).nonlinearity is None
    assert check_structure("resnet101", "auto", 224).layer == "body.layer4.0"
    with pytest.raises(ModelError, match="unknown importance layer 'body.block9'.*body.block4"):
        check_structure("smallcnn", "body.block9", 64)
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  arch: resnet101\n  image_size: 224\nextract:\n  layer: body.layer4\n")
    out = tmp_path / "fp.json"
    assert main(["fingerprint", "--params", str(params), "--out", str(out)]) == 2
    assert "niwt fingerprint: error: importance layer 'body.layer4' is degenerate" in capsys.readouterr().err
    assert not out.exists()
