"""Fuzz tests of the loaders of untrusted inputs, beyond the AWA2 ones in test_awa2.py.

Property: whatever the bytes, a loader either returns a value that satisfies its documented
invariants or raises its one declared error (DatasetError, ParamsError) with the file named, never
an IndexError, TypeError, KeyError... that the CLI would print as a traceback.

* xlsa17 ``att_splits.mat`` / ``res101.mat``: random variables of random MATLAB types and shapes,
  and damaged bytes of a valid file.
* ``classes.parquet`` / ``splits.parquet``: random columns of random Arrow types (nulls included),
  damaged bytes, and split tables whose rows disagree with the class list.
* ``params.yaml``: random nested mappings of YAML scalars, and random text.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from niwt.config.load import load_params, parse_params
from niwt.data.raw import DatasetError
from niwt.data.tables import SPLITS_SCHEMA, SplitTable, check_splits, read_classes, read_splits
from niwt.data.xlsa17 import load_att_splits, load_res101_image_list
from niwt.errors import ParamsError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------- xlsa17

_NAMES = st.lists(st.sampled_from(["a", "b", "c", "d", " a ", ""]), min_size=0, max_size=5)


def _cell(names: list[str]) -> np.ndarray:
    return np.array(names, dtype=object).reshape(-1, 1)


def _mixed_cell() -> np.ndarray:
    cell = np.empty((2, 1), dtype=object)
    cell[0, 0], cell[1, 0] = np.array(["x"]), np.array([[1.0, 2.0]])
    return cell


_MAT_VALUE = st.one_of(
    _NAMES.map(_cell),
    st.lists(st.integers(-2, 9), max_size=8).map(lambda v: np.array(v, dtype=np.int64).reshape(-1, 1)),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8).map(
        lambda v: np.array(v, dtype=np.float64).reshape(-1, 1)),
    st.tuples(st.integers(0, 4), st.integers(0, 5), st.sampled_from([0.5, 1.0, np.nan, -3.0])).map(
        lambda t: np.full(t[:2], t[2])),
    st.text(max_size=5),
    st.just(np.zeros((0, 0))),
    st.just(_mixed_cell()),  # a cell array holding a number where a string belongs
)
_KEYS = ["allclasses_names", "att", "original_att", "trainval_loc", "test_seen_loc", "test_unseen_loc",
         "train_loc", "val_loc"]


def _good_att() -> dict[str, np.ndarray]:
    return {"allclasses_names": _cell(["a", "b", "c", "d"]), "att": np.eye(3, 4), "original_att": np.eye(3, 4) * 9,
            "trainval_loc": np.array([[1], [2], [3]]), "test_seen_loc": np.array([[4]]),
            "test_unseen_loc": np.array([[5], [6]])}


def _check_splits_result(s) -> None:
    """Invariants of a successfully read att_splits.mat."""
    n = len(s.class_names)
    assert n == len(set(s.class_names)) and "" not in s.class_names
    assert s.att.shape[0] == n and np.isfinite(s.att).all()
    locs = np.concatenate(list(s.locs.values()))
    assert locs.dtype == np.int64 and (locs >= 0).all() and len(np.unique(locs)) == len(locs)
    if s.n_images is not None:
        assert (locs < s.n_images).all()
    if s.seen is not None:
        assert set(s.seen).isdisjoint(s.unseen) and set(s.seen) | set(s.unseen) == set(s.class_names)


@FUZZ
@given(replace=st.dictionaries(st.sampled_from(_KEYS), _MAT_VALUE, max_size=4),
       drop=st.sets(st.sampled_from(_KEYS), max_size=2),
       labels=st.one_of(st.none(), st.lists(st.integers(-1, 5), min_size=0, max_size=8)))
def test_fuzz_att_splits_variables(work: Path, replace: dict, drop: set, labels: list[int] | None) -> None:
    mat = {k: v for k, v in {**_good_att(), **replace}.items() if k not in drop}
    path = work / "att_splits.mat"
    scipy.io.savemat(str(path), mat)
    try:
        result = load_att_splits(path, labels=None if labels is None else np.array(labels))
    except DatasetError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(path) in str(err)
        return
    _check_splits_result(result)


@FUZZ
@given(cut=st.integers(0, 10_000))
def test_fuzz_att_splits_truncated(work: Path, cut: int) -> None:
    """A download cut short: every prefix of a valid file loads or raises DatasetError."""
    good = work / "good.mat"
    scipy.io.savemat(str(good), _good_att())
    data = good.read_bytes()
    path = work / "truncated.mat"
    path.write_bytes(data[: cut % (len(data) + 1)])
    try:
        _check_splits_result(load_att_splits(path))
    except DatasetError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(path) in str(err)


_FLIP_SCRIPT = """
import random, sys
from pathlib import Path
import numpy as np, scipy.io
from niwt.data.raw import DatasetError
from niwt.data.xlsa17 import load_att_splits
work = Path(sys.argv[1])
cell = lambda names: np.array(names, dtype=object).reshape(-1, 1)
scipy.io.savemat(str(work / "good.mat"), {"allclasses_names": cell(["a", "b", "c", "d"]), "att": np.eye(3, 4),
    "original_att": np.eye(3, 4) * 9, "trainval_loc": np.array([[1], [2], [3]]),
    "test_seen_loc": np.array([[4]]), "test_unseen_loc": np.array([[5], [6]])})
good = (work / "good.mat").read_bytes()
rng = random.Random(0)
for _ in range(300):
    data = bytearray(good)
    pos, value = rng.randrange(len(data)), rng.randrange(256)
    data[pos] = value
    (work / "flipped.mat").write_bytes(bytes(data))
    print(pos, value, flush=True)
    try:
        load_att_splits(work / "flipped.mat")
    except DatasetError:
        pass
"""


def test_corrupted_att_splits_never_crash_the_interpreter(tmp_path: Path) -> None:
    """300 seeded single-byte corruptions, in a child process so that a crash fails only this test."""
    proc = subprocess.run([sys.executable, "-c", _FLIP_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    last = proc.stdout.strip().splitlines()[-1:] or ["-"]
    assert proc.returncode == 0, (f"loader died with {proc.returncode} (signal {-proc.returncode}) on "
                                  f"(byte, value) = {last[0]}:\n{proc.stderr[-2000:]}")


@FUZZ
@given(files=st.one_of(_MAT_VALUE, _NAMES.map(_cell)), labels=_MAT_VALUE)
def test_fuzz_res101_image_list(work: Path, files, labels) -> None:
    path = work / "res101.mat"
    scipy.io.savemat(str(path), {"image_files": files, "labels": labels})
    try:
        got, lab = load_res101_image_list(path)
    except DatasetError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(path) in str(err)
        return
    assert len(got) == len(lab) and lab.dtype == np.int64 and (lab >= 0).all()


# ---------------------------------------------------------------------------- Parquet tables


def _column(kind: str, n: int, rng: np.random.Generator) -> pa.Array:
    nulls = rng.random(n) < 0.2 if kind.endswith("?") else None
    kind = kind.rstrip("?")
    if kind == "int":
        values = pa.array(rng.integers(-3, 14, n), pa.int64(), mask=nulls)
    elif kind == "float":
        values = pa.array(rng.choice([0.0, 1.5, np.nan, np.inf], n), pa.float64(), mask=nulls)
    elif kind == "str":
        values = pa.array(rng.choice(["train", "val", "test_seen", "test_unseen", "x", ""], n), pa.string(),
                          mask=nulls)
    elif kind == "bool":
        values = pa.array(rng.random(n) < 0.6, pa.bool_(), mask=nulls)
    elif kind == "list":
        values = pa.array([list(rng.random(int(rng.integers(0, 3)))) for _ in range(n)], pa.list_(pa.float64()))
    elif kind == "fixed":
        values = pa.FixedSizeListArray.from_arrays(pa.array(rng.choice([0.5, 1.0, np.nan], 2 * n)), 2)
    else:
        raise AssertionError(kind)
    return values


_KINDS = st.sampled_from(["int", "float", "str", "bool", "list", "fixed", "int?", "str?", "bool?"])


def _table(columns: dict[str, str], n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({name: _column(kind, n, rng) for name, kind in columns.items()})


_SPLIT_TYPES = {"image_id": "int", "path": "str", "class_id": "int", "split": "str"}
_CLASS_TYPES = {"class_id": "int", "name": "str", "seen": "bool", "domain": "fixed", "description": "str"}
_DOMAIN_COLUMNS = ("class_id", "domain")  # domain.parquet holds these (class_id in both files)


@FUZZ
@given(retype=st.dictionaries(st.sampled_from(list(_SPLIT_TYPES)), _KINDS, max_size=1),
       drop=st.sets(st.sampled_from(list(_SPLIT_TYPES)), max_size=1), n=st.integers(0, 12),
       seed=st.integers(0, 2**16))
def test_fuzz_read_splits(work: Path, retype: dict, drop: set, n: int, seed: int) -> None:
    path = work / "splits.parquet"
    types = {**_SPLIT_TYPES, **retype}
    pq.write_table(_table({k: v for k, v in types.items() if k not in drop}, n, seed), path)
    try:
        s = read_splits(path)
    except DatasetError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(path) in str(err)
        return
    assert s.image_id.dtype == np.int64 and s.class_id.dtype == np.int64
    assert len(s.path) == len(s.image_id) == len(s.class_id) == len(s.split) == n
    assert all(isinstance(p, str) for p in s.path) and set(s.split) <= {"train", "val", "test_seen", "test_unseen"}


@FUZZ
@given(retype=st.dictionaries(st.sampled_from(list(_CLASS_TYPES)), _KINDS, max_size=1),
       drop=st.sets(st.sampled_from(list(_CLASS_TYPES)), max_size=1), n=st.integers(0, 8),
       seed=st.integers(0, 2**16), attribute_names=st.sampled_from([b"[]", b'["a", "b"]', b'["a"]', b"{", b"3"]))
def test_fuzz_read_classes(work: Path, retype: dict, drop: set, n: int, seed: int, attribute_names: bytes) -> None:
    path, domain = work / "classes.parquet", work / "domain.parquet"
    types = {**_CLASS_TYPES, **retype}
    table = _table({k: v for k, v in types.items() if k not in drop}, n, seed)
    pq.write_table(table.select([c for c in table.column_names if c != "domain"]), path)
    vectors = table.select([c for c in table.column_names if c in _DOMAIN_COLUMNS])
    if "class_id" in vectors.column_names and retype.get("class_id", "int") == "int":  # the ids of the class table
        vectors = vectors.set_column(vectors.column_names.index("class_id"), "class_id", pa.array(range(n), pa.int32()))
    pq.write_table(vectors.replace_schema_metadata({b"attribute_names": attribute_names}), domain)
    try:
        c = read_classes(path)
    except DatasetError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(path) in str(err) or str(domain) in str(err)
        return
    assert 0 < c.n_seen <= len(c.names) == c.domain.shape[0]
    assert len(set(c.names)) == len(c.names) and all(isinstance(x, str) for x in c.names)
    assert c.domain.dtype == np.float32 and np.isfinite(c.domain).all()
    assert c.seen_mask[: c.n_seen].all() and not c.seen_mask[c.n_seen:].any()
    assert all(isinstance(a, str) for a in c.attribute_names)


@FUZZ
@given(cut=st.integers(0, 4000), flip=st.tuples(st.integers(0, 4000), st.integers(0, 255)))
def test_fuzz_parquet_bytes(work: Path, cut: int, flip: tuple[int, int]) -> None:
    good = work / "good_splits.parquet"
    pq.write_table(pa.table({"image_id": [1, 2], "path": ["a.jpg", "b.jpg"], "class_id": pa.array([0, 1], pa.int32()),
                             "split": ["train", "test_unseen"]}, schema=SPLITS_SCHEMA), good)
    data = bytearray(good.read_bytes())
    data[flip[0] % len(data)] = flip[1]
    path = work / "damaged_splits.parquet"
    path.write_bytes(bytes(data[: cut % (len(data) + 1)]))
    try:
        read_splits(path)
    except DatasetError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(path) in str(err)


_SPLIT_NAMES = st.sampled_from(["train", "val", "test_seen", "test_unseen"])


@FUZZ
@given(rows=st.lists(st.tuples(st.integers(-1, 7), _SPLIT_NAMES, st.integers(0, 20)), max_size=20),
       n_classes=st.integers(2, 6), data=st.data())
def test_fuzz_check_splits(rows: list, n_classes: int, data) -> None:
    n_seen = data.draw(st.integers(1, n_classes - 1))
    names = [f"c{i}" for i in range(n_classes)]
    s = SplitTable(np.array([r[2] for r in rows], dtype=np.int64), [f"{r[2]}.jpg" for r in rows],
                   np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=str))
    try:
        check_splits(s, names, n_seen, "splits.parquet")
    except DatasetError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(err).startswith("splits.parquet: ")
        return
    # accepted: every class in range and on the right side, train/test coverage, val present
    assert ((s.class_id >= 0) & (s.class_id < n_classes)).all()
    assert ((s.class_id >= n_seen) == (s.split == "test_unseen")).all()
    assert set(range(n_seen)) <= set(s.class_id[s.split == "train"].tolist())
    assert set(range(n_seen, n_classes)) <= set(s.class_id[s.split == "test_unseen"].tolist())
    assert (s.split == "val").any() and len(np.unique(s.image_id)) == len(s.image_id)


# ---------------------------------------------------------------------------------- params

_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                    st.text(max_size=6), st.sampled_from(["1e-5", "nan", "inf", "cpu", "fixed", "niwt"]))
_KEY = st.sampled_from(["base", "data", "model", "finetune", "extract", "mapping", "inject", "evaluate",
                        "tracking", "seed", "device", "epochs", "batch_size", "lr", "lambda", "methods",
                        "synthetic", "n_classes", "n_unseen", "layer", "bogus", "shard_size"])
_YAML = st.recursive(_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(_KEY, inner, max_size=4)), max_leaves=12)


def _realistic(draw_base: dict, patch: dict) -> dict:
    """The repo's params.yaml with random sections/keys replaced: mostly-valid documents."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in draw_base.items()}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


_BASE = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())


@FUZZ
@given(doc=st.one_of(_YAML, st.dictionaries(_KEY, _YAML, max_size=4).map(lambda p: _realistic(_BASE, p))))
def test_fuzz_parse_params(doc) -> None:
    try:
        p = parse_params(doc, "params.yaml")
    except ParamsError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(err).startswith("params.yaml")
        return
    # accepted: typed as declared
    assert isinstance(p.base.seed, int) and isinstance(p.finetune.epochs, int) and p.finetune.epochs > 0
    assert isinstance(p.inject.methods, tuple) and p.inject.lr and all(isinstance(v, float) for v in p.inject.lr)


@FUZZ
@given(text=st.text(max_size=80))
def test_fuzz_params_text(work: Path, text: str) -> None:
    path = work / "params.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_params(path)
    except ParamsError as err:
        event("rejected: " + str(err).split(": ", 1)[-1][:40])
        assert str(path) in str(err)


def test_params_nan_is_not_a_learning_rate(work: Path) -> None:
    """Numeric strings are accepted for floats (YAML reads 1e-5 as a string); 'nan' must not be."""
    path = work / "nan.yaml"
    path.write_text("finetune:\n  lr: nan\n")
    with pytest.raises(ParamsError, match="finite"):
        load_params(path)


def test_params_not_utf8_is_a_params_error(work: Path) -> None:
    path = work / "latin1.yaml"
    path.write_bytes("finetune:\n  lr: 0.1  # \xe9\n".encode("latin-1"))
    with pytest.raises(ParamsError, match="latin1.yaml"):
        load_params(path)


def test_fuzz_strategies_reach_both_outcomes(work: Path) -> None:
    """Guard against a fuzz test that only ever sees errors: the good inputs above do load."""
    path = work / "ok.mat"
    scipy.io.savemat(str(path), _good_att())
    _check_splits_result(load_att_splits(path))
    assert parse_params(_BASE, "params.yaml").finetune.epochs == _BASE["finetune"]["epochs"]
