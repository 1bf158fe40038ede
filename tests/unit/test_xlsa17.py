"""The xlsa17 reader on the real att_splits.mat / sent_splits.mat files (tests/data/xlsa17)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from niwt.data.raw import DatasetError
from niwt.data.xlsa17 import (
    image_key,
    load_att_splits,
    load_res101_image_list,
    load_sent_splits,
    map_image_paths,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "xlsa17"
N_IMAGES = {"CUB": 11788, "AWA2": 37322, "SUN": 14340}
SIZES = {"CUB": (7057, 1764, 2967), "AWA2": (23527, 5882, 7913), "SUN": (10320, 2580, 1440)}
SHAPES = {"CUB": (200, 312), "AWA2": (50, 85), "SUN": (717, 102)}
# Xian et al.'s proposed-split unseen classes of AWA2.
AWA2_UNSEEN = {"sheep", "dolphin", "bat", "seal", "blue+whale", "rat", "horse", "walrus", "giraffe", "bobcat"}


def _copy(ds: str, tmp_path: Path) -> Path:
    """A writable copy of one dataset folder, so class lists can be added next to att_splits.mat."""
    folder = tmp_path / ds
    shutil.copytree(DATA / ds, folder)
    return folder / "att_splits.mat"


def _write_lists(folder: Path, seen: list[str], unseen: list[str]) -> None:
    (folder / "trainvalclasses.txt").write_text("\n".join(seen) + "\n")
    (folder / "testclasses.txt").write_text("\r\n".join(unseen) + "\r\n")  # CRLF and blanks tolerated


@pytest.mark.parametrize("ds", ["CUB", "AWA2", "SUN"])
def test_index_sets_partition_all_images(ds: str) -> None:
    splits = load_att_splits(DATA / ds / "att_splits.mat", n_images=N_IMAGES[ds])
    sets = [splits.trainval_loc, splits.test_seen_loc, splits.test_unseen_loc]
    assert tuple(s.size for s in sets) == SIZES[ds]
    assert all(s.dtype == np.int64 for s in sets)
    union = np.concatenate(sets)
    assert np.array_equal(np.sort(union), np.arange(N_IMAGES[ds]))  # disjoint and covering 0..N-1
    assert splits.n_images == N_IMAGES[ds]


@pytest.mark.parametrize("ds", ["CUB", "AWA2", "SUN"])
def test_attributes_in_class_order_and_normalised(ds: str) -> None:
    splits = load_att_splits(DATA / ds / "att_splits.mat")
    assert splits.att.shape == SHAPES[ds] and splits.att.dtype == np.float32
    assert splits.original_att is not None and splits.original_att.shape == SHAPES[ds]
    assert len(splits.class_names) == SHAPES[ds][0] == len(set(splits.class_names))
    np.testing.assert_allclose(np.linalg.norm(splits.att, axis=1), 1.0, atol=1e-5)
    # att is original_att with each class row L2-normalised: rows line up with class_names.
    orig = splits.original_att.astype(np.float64)
    np.testing.assert_allclose(splits.att, orig / np.linalg.norm(orig, axis=1, keepdims=True), atol=1e-5)
    assert splits.seen is None and splits.unseen is None  # no res101 labels, no class lists


def test_class_order_cub_is_seen_first() -> None:
    splits = load_att_splits(DATA / "CUB" / "att_splits.mat")
    names = splits.class_names
    assert names[0] == "002.Laysan_Albatross" and names[150] == "001.Black_footed_Albatross"
    assert names[:150] == sorted(names[:150]) and names[150:] == sorted(names[150:])
    assert splits.original_att.min() >= 0 and splits.original_att.max() <= 100
    assert splits.train_loc is None and splits.val_loc is None  # this CUB copy lacks them


def test_class_order_awa2_and_sun() -> None:
    awa2 = load_att_splits(DATA / "AWA2" / "att_splits.mat")
    assert awa2.class_names[:3] == ["antelope", "grizzly+bear", "killer+whale"]
    assert awa2.original_att.min() == -1 and awa2.original_att.max() == 100
    assert awa2.train_loc is not None and awa2.train_loc.size == 20218 and awa2.val_loc.size == 9191
    # train/val come from the older split: together they are trainval + test_seen (not trainval).
    np.testing.assert_array_equal(np.sort(np.concatenate([awa2.train_loc, awa2.val_loc])),
                                  np.sort(np.concatenate([awa2.trainval_loc, awa2.test_seen_loc])))
    sun = load_att_splits(DATA / "SUN" / "att_splits.mat")
    assert sun.class_names[0] == "abbey" and sun.class_names == sorted(sun.class_names)
    assert "apartment_building_outdoor" in sun.class_names


def test_seen_unseen_from_class_lists(tmp_path: Path) -> None:
    path = _copy("AWA2", tmp_path)
    names = load_att_splits(path).class_names
    _write_lists(path.parent, [n for n in names if n not in AWA2_UNSEEN], sorted(AWA2_UNSEEN))
    splits = load_att_splits(path)
    assert len(splits.seen) == 40 and len(splits.unseen) == 10
    assert splits.unseen == [n for n in names if n in AWA2_UNSEEN]  # in allclasses order

    path = _copy("CUB", tmp_path)
    names = load_att_splits(path).class_names
    _write_lists(path.parent, names[:150], names[150:])
    splits = load_att_splits(path)
    assert (len(splits.seen), len(splits.unseen)) == (150, 50)
    assert "001.Black_footed_Albatross" in splits.unseen


def test_seen_unseen_from_labels_sun() -> None:
    # SUN has exactly 20 images per class and res101.mat lists them class by class in
    # allclasses order, so these are its labels; the derived split must be the 645/72 protocol.
    labels = np.arange(N_IMAGES["SUN"]) // 20
    splits = load_att_splits(DATA / "SUN" / "att_splits.mat", labels=labels)
    assert (len(splits.seen), len(splits.unseen)) == (645, 72)
    assert not set(splits.seen) & set(splits.unseen)
    assert splits.n_images == N_IMAGES["SUN"]


def test_labels_that_mix_seen_and_unseen_are_rejected() -> None:
    labels = np.zeros(N_IMAGES["SUN"], dtype=np.int64)  # every image in class 0
    with pytest.raises(DatasetError, match="both in test_unseen"):
        load_att_splits(DATA / "SUN" / "att_splits.mat", labels=labels)


def test_lists_disagreeing_with_labels_are_rejected(tmp_path: Path) -> None:
    path = _copy("SUN", tmp_path)
    names = load_att_splits(path).class_names
    _write_lists(path.parent, names[1:], names[:1])
    with pytest.raises(DatasetError, match="disagrees"):
        load_att_splits(path, labels=np.arange(N_IMAGES["SUN"]) // 20)


def test_wrong_image_count_is_rejected() -> None:
    with pytest.raises(DatasetError, match="att_splits.mat"):
        load_att_splits(DATA / "CUB" / "att_splits.mat", n_images=11787)


def test_sent_splits() -> None:
    sent = load_sent_splits(DATA / "CUB" / "sent_splits.mat", n_images=N_IMAGES["CUB"])
    assert sent.att.shape == (200, 1024) and sent.original_att is None
    assert sent.class_names == load_att_splits(DATA / "CUB" / "att_splits.mat").class_names
    assert sent.train_loc is not None and sent.train_loc.size + sent.val_loc.size == 7057 + 1764


def _save(path: Path, **mat: object) -> Path:
    scipy.io.savemat(str(path), mat)
    return path


def _cell(names: list[str]) -> np.ndarray:
    return np.array(names, dtype=object).reshape(-1, 1)


def test_malformed_files_name_the_file(tmp_path: Path) -> None:
    good = {"allclasses_names": _cell(["a", "b"]), "att": np.ones((3, 2)), "original_att": np.ones((3, 2)),
            "trainval_loc": np.array([[1], [2]]), "test_seen_loc": np.array([[3]]),
            "test_unseen_loc": np.array([[4]])}
    assert load_att_splits(_save(tmp_path / "ok.mat", **good)).n_images is None
    bad_cols = _save(tmp_path / "cols.mat", **{**good, "att": np.ones((3, 5))})
    with pytest.raises(DatasetError, match=r"cols\.mat.*'att' has shape \(3, 5\)"):
        load_att_splits(bad_cols)
    overlap = _save(tmp_path / "overlap.mat", **{**good, "test_seen_loc": np.array([[2]])})
    with pytest.raises(DatasetError, match=r"overlap\.mat.*disjoint"):
        load_att_splits(overlap)
    zero = _save(tmp_path / "zero.mat", **{**good, "test_unseen_loc": np.array([[0]])})
    with pytest.raises(DatasetError, match="start at 1"):
        load_att_splits(zero)
    no_key = _save(tmp_path / "nokey.mat", **{k: v for k, v in good.items() if k != "test_seen_loc"})
    with pytest.raises(DatasetError, match=r"nokey\.mat: no variable 'test_seen_loc'"):
        load_att_splits(no_key)
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match=r"junk\.mat"):
        load_att_splits(tmp_path / "junk.mat")
    with pytest.raises(DatasetError, match="file not found"):
        load_att_splits(tmp_path / "absent.mat")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash guard needs os.fork")
def test_file_that_crashes_scipy_is_a_clear_error(tmp_path: Path) -> None:
    """scipy 1.17's MAT reader dies with SIGSEGV on this one-byte corruption (found by the fuzz
    test); parsed in a forked child, it must be an error naming the file, and this process lives."""
    good = {"allclasses_names": _cell(["a", "b", "c", "d"]), "att": np.eye(3, 4), "original_att": np.eye(3, 4) * 9,
            "trainval_loc": np.array([[1], [2], [3]]), "test_seen_loc": np.array([[4]]),
            "test_unseen_loc": np.array([[5], [6]])}
    data = bytearray(_save(tmp_path / "good.mat", **good).read_bytes())
    data[297] = 94
    (tmp_path / "bad.mat").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"bad\.mat: not a readable MATLAB \.mat file"):
        load_att_splits(tmp_path / "bad.mat")
    assert load_att_splits(tmp_path / "good.mat").n_images is None  # and reading goes on


def test_res101_image_list_and_path_mapping(tmp_path: Path) -> None:
    files = ["/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/antelope/antelope_10001.jpg",
             "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/bat/bat_10002.jpg"]
    path = _save(tmp_path / "res101.mat", image_files=_cell(files),
                 labels=np.array([[1], [3]], dtype=np.uint8), features=np.zeros((4, 2)))
    got, labels = load_res101_image_list(path)
    assert got == files and labels.tolist() == [0, 2] and labels.dtype == np.int64
    root = tmp_path / "Animals_with_Attributes2"
    assert map_image_paths(files, root, "JPEGImages/") == [root / "JPEGImages/antelope/antelope_10001.jpg",
                                                           root / "JPEGImages/bat/bat_10002.jpg"]
    cub = "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/001.Black_footed_Albatross/x_1.jpg"
    assert image_key(cub, "images") == "001.Black_footed_Albatross/x_1.jpg"
    sun = "/BS/Deep_Fragments/work/MSc/data/SUN/images/a/apartment_building/outdoor/sun_x.jpg"
    assert image_key(sun, "images/") == "a/apartment_building/outdoor/sun_x.jpg"
    with pytest.raises(DatasetError, match="no 'JPEGImages' directory"):
        image_key(cub, "JPEGImages")
