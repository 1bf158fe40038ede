"""tests/xlsa17_data.py: generated res101.mat files that agree with the real att_splits.mat files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from niwt.data.xlsa17 import IMAGE_MARKERS, image_key, load_att_splits, load_res101_image_list, load_sent_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xlsa17_data import AWA_UNSEEN, main, make_features, plan_labels, write_res101  # noqa: E402

XLSA = Path(__file__).resolve().parents[1] / "data" / "xlsa17"
DIM = 32
# tests/data/README.md and shared/data/README.md: images per split, seen + unseen and validation classes
EXPECTED = {
    "CUB": {"trainval": 7057, "test_seen": 1764, "test_unseen": 2967, "seen": 150, "unseen": 50, "validation": 50},
    "AWA2": {"trainval": 23527, "test_seen": 5882, "test_unseen": 7913, "seen": 40, "unseen": 10, "validation": 13},
    "SUN": {"trainval": 10320, "test_seen": 2580, "test_unseen": 1440, "seen": 645, "unseen": 72, "validation": 65},
}
DATASETS = list(EXPECTED)


@pytest.fixture(scope="module", params=DATASETS)
def generated(request, tmp_path_factory):
    """(dataset, folder, plan) with res101.mat written at DIM dimensions."""
    ds = request.param
    folder = write_res101(tmp_path_factory.mktemp("xlsa17"), ds, XLSA / ds, dim=DIM, seed=0)
    return ds, folder, plan_labels(XLSA / ds, seed=0)


def test_reader_accepts_the_labels_and_the_split_sizes_are_real(generated) -> None:
    ds, folder, (labels, unseen, _) = generated
    want = EXPECTED[ds]
    splits = load_att_splits(folder / "att_splits.mat", labels=labels)
    assert (len(splits.seen), len(splits.unseen)) == (want["seen"], want["unseen"])
    assert splits.unseen == unseen
    assert {k: len(v) for k, v in splits.locs.items()} == {k: want[k] for k in splits.locs}
    assert labels.dtype == np.int64 and labels.size == sum(want[k] for k in splits.locs)
    names = splits.class_names
    unseen_idx = {names.index(c) for c in unseen}
    assert set(labels[splits.test_unseen_loc].tolist()) == unseen_idx
    seen_part = np.concatenate([splits.trainval_loc, splits.test_seen_loc])
    assert set(labels[seen_part].tolist()) == set(range(len(names))) - unseen_idx
    per_class = {k: np.bincount(labels[v], minlength=len(names)) for k, v in splits.locs.items()}
    seen_idx = sorted(set(range(len(names))) - unseen_idx)
    assert per_class["trainval"][seen_idx].min() >= 2 and per_class["test_seen"][seen_idx].min() >= 1
    assert per_class["test_unseen"][sorted(unseen_idx)].min() >= 1
    # each class is one run of consecutive images, as in the real class-sorted image lists
    for c in range(len(names)):
        where = np.flatnonzero(labels == c)
        assert where[-1] - where[0] + 1 == where.size


def test_unseen_classes_are_the_protocol_ones() -> None:
    cub_names = load_att_splits(XLSA / "CUB" / "att_splits.mat").class_names
    assert plan_labels(XLSA / "CUB")[1] == cub_names[-50:]
    assert set(plan_labels(XLSA / "AWA2")[1]) == set(AWA_UNSEEN)
    sun_a, sun_b = plan_labels(XLSA / "SUN", seed=0), plan_labels(XLSA / "SUN", seed=1)
    assert len(sun_a[1]) == len(sun_b[1]) == 72 and sun_a[1] != sun_b[1]  # seeded choice
    again = plan_labels(XLSA / "SUN", seed=0)
    assert np.array_equal(again[0], sun_a[0]) and again[1:] == sun_a[1:]


def test_sun_classes_have_its_20_images_each() -> None:
    labels, _, _ = plan_labels(XLSA / "SUN")
    assert set(np.bincount(labels).tolist()) == {20}


def test_val_loc_holds_exactly_the_validation_classes(generated) -> None:
    ds, folder, (labels, unseen, validation) = generated
    splits = load_att_splits(folder / "att_splits.mat", labels=labels)
    if splits.val_loc is None:  # CUB: Xian et al.'s train/val split is in sent_splits.mat
        splits = load_sent_splits(folder / "sent_splits.mat")
    assert splits.val_loc is not None and splits.train_loc is not None
    names = splits.class_names
    assert len(validation) == EXPECTED[ds]["validation"]
    assert not set(validation) & set(unseen)
    assert {names[i] for i in labels[splits.val_loc]} == set(validation)
    assert {names[i] for i in labels[splits.train_loc]} == set(names) - set(unseen) - set(validation)


def test_res101_reads_back(generated) -> None:
    import scipy.io

    ds, folder, (labels, _, _) = generated
    files, read = load_res101_image_list(folder / "res101.mat")
    assert np.array_equal(read, labels)
    assert len(set(files)) == len(files) == labels.size
    names = load_att_splits(folder / "att_splits.mat").class_names
    marker = IMAGE_MARKERS[ds.lower()]
    keys = [image_key(f, marker) for f in files[:: max(1, len(files) // 500)]]
    assert all(f.startswith("/") for f in files)
    assert all(k.split("/")[0] == names[c] for k, c in zip(keys, labels[:: max(1, len(files) // 500)], strict=True))
    mat = scipy.io.loadmat(str(folder / "res101.mat"))
    features, raw = mat["features"], mat["labels"]
    assert features.shape == (DIM, labels.size) and features.dtype == np.float32
    assert raw.shape == (labels.size, 1) and raw.dtype == np.float64 and raw.min() == 1
    assert np.isfinite(features).all() and features.min() >= 0
    assert 0.45 < features.mean() < 0.55


def _zero_shot_accuracy(features: np.ndarray, labels: np.ndarray, splits) -> tuple[float, float]:
    """Ridge from attributes to seen class means (trainval images), nearest predicted unseen mean on the
    test_unseen images; returns (accuracy, chance)."""
    names = splits.class_names
    seen = [names.index(c) for c in splits.seen]
    unseen = np.asarray([names.index(c) for c in splits.unseen])
    tv = splits.trainval_loc
    means = np.stack([features[tv[labels[tv] == c]].mean(0) for c in seen]).astype(np.float64)
    att = splits.att.astype(np.float64)
    a = att[seen]
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ means)
    predicted = att[unseen] @ w
    x = features[splits.test_unseen_loc].astype(np.float64)
    dist = -2 * x @ predicted.T + (predicted ** 2).sum(1)
    return float(np.mean(unseen[dist.argmin(1)] == labels[splits.test_unseen_loc])), 1 / unseen.size


def test_unseen_classes_are_learnable_from_attributes(generated) -> None:
    import scipy.io

    ds, folder, (labels, _, _) = generated
    features = scipy.io.loadmat(str(folder / "res101.mat"), variable_names=["features"])["features"].T
    acc, chance = _zero_shot_accuracy(features, labels, load_att_splits(folder / "att_splits.mat", labels=labels))
    assert acc > 0.3 and acc > 4 * chance, (ds, acc, chance)  # measured: CUB 0.44, AWA2 0.69, SUN 0.41


def test_more_noise_is_harder_and_the_seed_matters() -> None:
    labels, _, _ = plan_labels(XLSA / "AWA2")
    splits = load_att_splits(XLSA / "AWA2" / "att_splits.mat", labels=labels)
    easy = _zero_shot_accuracy(make_features(splits.att, labels, 16, noise=0.5), labels, splits)[0]
    hard = _zero_shot_accuracy(make_features(splits.att, labels, 16, noise=4.0), labels, splits)[0]
    assert easy > hard
    a, b = make_features(splits.att, labels[:100], 8, seed=0), make_features(splits.att, labels[:100], 8, seed=1)
    assert np.array_equal(a, make_features(splits.att, labels[:100], 8, seed=0)) and not np.array_equal(a, b)


def test_cli_writes_the_folder(tmp_path: Path) -> None:
    folder = main([str(tmp_path), "--dataset", "CUB", "--dim", "4", "--splits", str(XLSA / "CUB")])
    assert folder == tmp_path / "CUB"
    assert sorted(p.name for p in folder.iterdir()) == ["att_splits.mat", "res101.mat", "sent_splits.mat"]
    assert (folder / "att_splits.mat").read_bytes() == (XLSA / "CUB" / "att_splits.mat").read_bytes()
    _, labels = load_res101_image_list(folder / "res101.mat")
    assert len(load_att_splits(folder / "att_splits.mat", labels=labels).unseen) == 50


def test_float64_features(tmp_path: Path) -> None:
    import scipy.io

    folder = write_res101(tmp_path, "SUN", XLSA / "SUN", dim=3, dtype=np.float64)
    assert scipy.io.loadmat(str(folder / "res101.mat"))["features"].dtype == np.float64
