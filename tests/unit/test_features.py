"""Precomputed features as a dataset (``data.name: xlsa17``): the proposed split read exactly from
generated ``res101.mat`` files at the real shapes, the feature rows every loader reads, and one clear
error naming the file for every kind of bad archive, before any training."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from niwt.data.features import (
    FEATURES_FILE,
    FeatureStore,
    feature_store,
    input_files,
    is_feature_table,
    parse_row,
    row_path,
    write_features,
)
from niwt.data.images import check_images_exist, make_loader
from niwt.data.raw import DatasetError
from niwt.data.tables import assign_splits, joint_order
from niwt.data.xlsa17 import load_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xlsa17_data import write_res101  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "xlsa17"
# Xian et al.'s proposed split (shared/data/README.md): trainval / test_seen / test_unseen, seen + unseen
SIZES = {"CUB": (7057, 1764, 2967, 150, 50), "AWA2": (23527, 5882, 7913, 40, 10)}


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> Path:
    return write_res101(tmp_path_factory.mktemp("xlsa"), "CUB", DATA / "CUB", dim=8)


@pytest.mark.parametrize("dataset", ["CUB", "AWA2"])
def test_the_proposed_split_is_kept_exactly(tmp_path, dataset, cub):
    folder = cub if dataset == "CUB" else write_res101(tmp_path, dataset, DATA / dataset, dim=4)
    raw, features = load_features(folder, dataset)
    mat = scipy.io.loadmat(folder / "res101.mat")
    att = scipy.io.loadmat(folder / "att_splits.mat")
    trainval, test_seen, test_unseen, n_seen, n_unseen = SIZES[dataset]
    splits = np.asarray(raw.image_splits)
    assert [(splits == s).sum() for s in ("trainval", "test_seen", "test_unseen")] == [trainval, test_seen, test_unseen]
    for key, name in (("trainval_loc", "trainval"), ("test_seen_loc", "test_seen"), ("test_unseen_loc", "test_unseen")):
        assert (splits[att[key].ravel() - 1] == name).all()  # 1-based locs, exactly
    assert raw.class_names == [str(np.ravel(c)[0]).strip() for c in att["allclasses_names"].ravel()]
    assert len(raw.unseen) == n_unseen and len(raw.class_names) - len(raw.unseen) == n_seen
    np.testing.assert_array_equal(raw.image_labels, mat["labels"].ravel().astype(np.int64) - 1)  # 1-based labels
    np.testing.assert_array_equal(features, mat["features"].T)  # (N, D) rows in the file's image order
    np.testing.assert_array_equal(raw.attributes, att["att"].T.astype(np.float32))  # the published class embedding
    assert raw.image_paths[:2] == [row_path(0), row_path(1)] and features.dtype == np.float32
    # the protocol's validation classes: CUB's from sent_splits.mat (Xian et al.'s 100 + 50), AWA2's val_loc
    assert len(raw.validation) == {"CUB": 50, "AWA2": 13}[dataset]
    assert not set(raw.validation) & set(raw.unseen)
    if dataset == "CUB":
        assert raw.sentences.shape == (200, 1024)
    # prepare's split: val drawn from trainval only; test sets untouched
    cls, split = assign_splits(raw, joint_order(raw), 0.1, 0.2, seed=0)
    assert (split == "test_unseen").sum() == test_unseen and (split == "test_seen").sum() == test_seen
    assert ((split == "train") | (split == "val")).sum() == trainval


def test_feature_rows_are_named_parsed_and_read_from_one_memory_map(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    write_features(tmp_path / FEATURES_FILE, x)
    paths = [f"{tmp_path}/{row_path(j)}" for j in (3, 0, 4)]
    assert parse_row(paths[0]) == (f"{tmp_path}/{FEATURES_FILE}", 3)
    for image in ("a/b.jpg", f"{tmp_path}/other.npy#3", "features.npy#x", "/d/myfeatures.npy#1"):
        assert parse_row(image) is None
    assert is_feature_table(paths) and not is_feature_table(["a/b.jpg"]) and not is_feature_table([])
    assert input_files(paths + ["a/b.jpg"]) == [f"{tmp_path}/{FEATURES_FILE}"] * 3 + ["a/b.jpg"]
    store = feature_store(paths)
    assert store.dim == 4
    assert pickle.loads(pickle.dumps(store))._array is None  # loader workers reopen the map, never copy it
    loader = make_loader(paths, np.array([7, 8, 9]), 32, train=False, batch_size=2)
    xs, ys, idx = zip(*loader, strict=True)
    np.testing.assert_array_equal(torch.cat(xs).numpy(), x[[3, 0, 4]])
    assert torch.cat(ys).tolist() == [7, 8, 9] and torch.cat(idx).tolist() == [0, 1, 2]
    with pytest.raises(DatasetError, match="beyond the 5 rows"):
        FeatureStore(f"{tmp_path}/{FEATURES_FILE}").rows([f"{tmp_path}/{row_path(5)}"])
    check_images_exist(paths, np.arange(3), "splits.parquet")  # the features file is there
    (tmp_path / FEATURES_FILE).unlink()
    with pytest.raises(DatasetError, match="3 of 3 image files named there are missing"):
        check_images_exist(paths, np.arange(3), "splits.parquet")


# ------------------------------------------------------------------------------------------ bad input


def _rewrite(folder: Path, **changes) -> None:
    mat = scipy.io.loadmat(folder / "res101.mat")
    mat = {k: v for k, v in mat.items() if not k.startswith("__")}
    for key, value in changes.items():
        if value is None:
            del mat[key]
        else:
            mat[key] = value(mat[key]) if callable(value) else value
    scipy.io.savemat(folder / "res101.mat", mat)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _nan(features: np.ndarray) -> np.ndarray:
    out = features.copy()
    out[2, 40] = np.nan
    return out


def _labels_up(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[7] = 201
    return out


BAD = {
    "no_features": ({"features": None}, r"res101\.mat: no variable 'features'"),
    "no_labels": ({"labels": None}, r"res101\.mat: no variable 'labels'"),
    "features_n": ({"features": lambda f: f[:, :-3]}, r"res101\.mat: 'features' has shape \(8, 11785\) but there "
                                                     r"are 11788 images"),
    "labels_range": ({"labels": _labels_up}, r"res101\.mat: 'labels' has class 201, outside 1\.\.200"),
    "zero_width": ({"features": lambda f: f[:0]}, r"res101\.mat: 'features' has shape \(0, 11788\)"),
    "labels_zero": ({"labels": lambda y: y - 1}, r"res101\.mat: 'labels' must be 1-based"),
    "nan": ({"features": _nan}, r"res101\.mat: 'features' has NaN or infinite values in 1 images \(e\.g\. image 41"),
    "files_n": ({"image_files": lambda f: f[:-1]}, r"res101\.mat: 11787 image_files but 11788 labels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_res101_is_one_error_naming_the_file(tmp_path, cub, case):
    folder = _copy(cub, tmp_path / "CUB")
    changes, message = BAD[case]
    _rewrite(folder, **changes)
    with pytest.raises(DatasetError, match=message) as err:
        load_features(folder, "CUB")
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_missing_files_say_where_to_get_the_archive(tmp_path, cub):
    folder = _copy(cub, tmp_path / "CUB")
    (folder / "res101.mat").unlink()
    with pytest.raises(DatasetError, match=r"res101\.mat: not found: .*xlsa17\.zip") as err:
        load_features(folder, "CUB")
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match=r"data\.dataset 'CUB/\.\./x': not an xlsa17 dataset; valid: AWA2, CUB"):
        load_features(folder, "CUB/../x")


def _v73_header() -> bytes:
    """The 128-byte header MATLAB writes in front of a v7.3 (HDF5) file: text, subsystem offset, version 0x0200."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM"


def test_a_v73_hdf5_file_is_refused_with_the_fix(tmp_path, cub):
    folder = _copy(cub, tmp_path / "CUB")
    (folder / "res101.mat").write_bytes(_v73_header() + b"\x89HDF\r\n\x1a\n" + b"\0" * 512)
    with pytest.raises(DatasetError, match=r"res101\.mat: MATLAB v7\.3 \(HDF5\) files are not supported; save it "
                                           r"with -v7"):
        load_features(folder, "CUB")


def test_corrupted_files_fail_cleanly(tmp_path, cub):
    """Truncations and flipped bytes anywhere in res101.mat: a DatasetError naming the file, or (for a byte in
    a value the reader cannot check) a dataset read in full, never another exception or a crash."""
    original = (cub / "res101.mat").read_bytes()
    rng = np.random.default_rng(0)
    folder = _copy(cub, tmp_path / "CUB")
    for trial in range(12):
        data = bytearray(original)
        if trial % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for pos in rng.integers(0, min(len(data), 4096), size=8):  # headers and tags live in the first bytes
                data[pos] = int(rng.integers(0, 256))
        (folder / "res101.mat").write_bytes(bytes(data))
        try:
            raw, features = load_features(folder, "CUB")
        except DatasetError as err:
            assert str(folder / "res101.mat") in str(err) or str(folder) in str(err)
        else:
            assert features.shape[0] == len(raw.image_paths)


def test_a_table_can_name_no_feature_file_but_its_own(tmp_path):
    """Feature rows resolve beside splits.parquet whatever the table says: another directory, ``..``, an
    absolute path or a redirected image root are refused, and a table never mixes rows with images."""
    from niwt.data.tables import read_splits, write_splits

    write_features(tmp_path / FEATURES_FILE, np.ones((3, 2), dtype=np.float32))
    ok = tmp_path / "ok.parquet"
    write_splits(ok, np.arange(2), [row_path(0), row_path(2)], np.zeros(2), np.array(["train"] * 2),
                 image_root=("prepared", "/elsewhere"))
    assert read_splits(ok).path == [f"{tmp_path}/{FEATURES_FILE}#0", f"{tmp_path}/{FEATURES_FILE}#2"]
    for bad in ("../other/features.npy#1", "/etc/features.npy#0", "sub/features.npy#0", "features.npy#１"):
        table = tmp_path / "bad.parquet"
        write_splits(table, np.arange(2), [row_path(0), bad], np.zeros(2), np.array(["train"] * 2))
        with pytest.raises(DatasetError, match="is not a feature row features.npy#<row> beside the table"):
            read_splits(table)
    with pytest.raises(DatasetError, match="an image path in a table of feature rows"):
        is_feature_table([f"{tmp_path}/{row_path(0)}", "a/b.jpg"])
