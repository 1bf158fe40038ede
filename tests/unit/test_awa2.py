"""The AWA2 loader: the good path, one test per malformed input, and a fuzz test.

Why table-driven: each bad input must fail with a DatasetError that names the file and the
problem, since that message is all a user gets before a long run would have crashed later.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from niwt.data.awa2 import load_awa2
from niwt.data.raw import DatasetError

CLASSES = ["antelope", "grizzly+bear", "killer+whale", "beaver"]
PREDICATES = ["black", "white", "stripes"]
CONTINUOUS = [[-1.0, 12.5, 0.0], [39.25, 1.0, 100.0], [83.4, 64.0, 2.5], [0.0, 0.0, 7.75]]
BINARY = [[0, 0, 0], [1, 0, 1], [1, 1, 0], [0, 0, 0]]
SEEN = ["antelope", "grizzly+bear", "beaver"]
UNSEEN = ["killer+whale"]


def _lines(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def make_awa2(root: Path, images: int = 3) -> Path:
    """Write a tiny valid AWA2 tree (empty files stand in for JPEGs: the loader never decodes)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(_lines([f"{i}\t{c}" for i, c in enumerate(CLASSES, 1)]))
    (root / "predicates.txt").write_text(_lines([f"{i}\t{p}" for i, p in enumerate(PREDICATES, 1)]))
    (root / "predicate-matrix-continuous.txt").write_text(
        _lines(["  ".join(f"{v:.2f}" for v in row) for row in CONTINUOUS]))
    (root / "predicate-matrix-binary.txt").write_text(_lines([" ".join(map(str, r)) for r in BINARY]))
    (root / "trainvalclasses.txt").write_text(_lines(SEEN))
    (root / "testclasses.txt").write_text(_lines(UNSEEN))
    for c in CLASSES:
        directory = root / "JPEGImages" / c
        directory.mkdir(parents=True, exist_ok=True)
        for n in [9, 10, 10001][:images]:
            (directory / f"{c}_{n}.jpg").write_bytes(b"")
    return root


def test_good_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_awa2(Path("awa"))
    ds = load_awa2(Path("awa"))
    assert ds.name == "awa2"
    assert ds.class_names == CLASSES
    assert ds.unseen == UNSEEN
    assert ds.attribute_names == PREDICATES
    assert ds.attributes.dtype == np.float32 and ds.attributes_binary.dtype == np.float32
    assert ds.attributes[0, 0] == 0.0  # -1 (unknown) read as 0
    np.testing.assert_allclose(ds.attributes[1:], np.array(CONTINUOUS[1:], dtype=np.float32))
    np.testing.assert_array_equal(ds.attributes_binary, BINARY)
    assert len(ds.image_paths) == 12
    # Relative root -> relative paths; numeric order within a class (_9 before _10).
    assert ds.image_paths[:3] == [f"awa/JPEGImages/antelope/antelope_{n}.jpg" for n in (9, 10, 10001)]
    np.testing.assert_array_equal(ds.image_labels, np.repeat(np.arange(4), 3))
    assert ds.descriptions is None and ds.image_splits is None


def test_tolerant_formatting(tmp_path: Path) -> None:
    """Spaces instead of tabs, CRLF, blank lines and a UTF-8 BOM are all real-world noise."""
    root = make_awa2(tmp_path / "awa")
    text = "\ufeff" + "\r\n".join(f"{i}   {c}" for i, c in enumerate(CLASSES, 1)) + "\r\n\r\n"
    (root / "classes.txt").write_text(text)
    (root / "testclasses.txt").write_text("\nkiller+whale\n\n")
    assert load_awa2(root, name="x").class_names == CLASSES


def test_descriptions(tmp_path: Path) -> None:
    root = make_awa2(tmp_path / "awa")
    lines = [f"{c}\tA sentence about {c}." for c in reversed(CLASSES)]
    (root / "descriptions.txt").write_text(_lines(lines))
    assert load_awa2(root).descriptions == [f"A sentence about {c}." for c in CLASSES]


def test_image_order_non_numeric_names_last(tmp_path: Path) -> None:
    root = make_awa2(tmp_path / "awa")
    (root / "JPEGImages" / "beaver" / "aaa.jpg").write_bytes(b"")
    (root / "JPEGImages" / "beaver" / "notes.txt").write_text("not an image")
    names = [Path(p).name for p in load_awa2(root).image_paths if "/beaver/" in p]
    assert names == ["beaver_9.jpg", "beaver_10.jpg", "beaver_10001.jpg", "aaa.jpg"]


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_text(text)


def _delete(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def _replace_line(name: str, index: int, line: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        lines = (root / name).read_text().splitlines()
        lines[index] = line
        (root / name).write_text(_lines(lines))
    return mutate


def _empty_dir(cls: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        for f in (root / "JPEGImages" / cls).iterdir():
            f.unlink()
    return mutate


def _remove_dir(cls: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        _empty_dir(cls)(root)
        (root / "JPEGImages" / cls).rmdir()
    return mutate


def _rename_class(old: str, new: str) -> Callable[[Path], None]:
    """Rename a class in every text file but not on disk, so the loader reaches the image stage."""
    def mutate(root: Path) -> None:
        for name in ("classes.txt", "trainvalclasses.txt", "testclasses.txt"):
            (root / name).write_text((root / name).read_text().replace(old, new))
    return mutate


CONT, BIN = "predicate-matrix-continuous.txt", "predicate-matrix-binary.txt"
BAD_INPUTS: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("missing classes", _delete("classes.txt"), ["classes.txt", "not found"]),
    ("missing predicates", _delete("predicates.txt"), ["predicates.txt", "not found"]),
    ("missing continuous", _delete(CONT), [CONT, "not found"]),
    ("missing binary", _delete(BIN), [BIN, "not found"]),
    ("missing trainval", _delete("trainvalclasses.txt"), ["trainvalclasses.txt", "not found", "seen"]),
    ("missing test", _delete("testclasses.txt"), ["testclasses.txt", "not found", "unseen", "xlsa17"]),
    ("empty classes", _write("classes.txt", "\n\n"), ["classes.txt", "empty"]),
    ("not utf-8", lambda r: (r / "classes.txt").write_bytes(b"1\t\xff\xfe\n"),
     ["classes.txt", "not valid UTF-8"]),
    ("three fields", _replace_line("classes.txt", 1, "2 grizzly bear"),
     ["classes.txt:2", "expected '<id> <name>'"]),
    ("non-integer id", _replace_line("classes.txt", 2, "x killer+whale"),
     ["classes.txt:3", "not an integer"]),
    ("duplicate class", _replace_line("classes.txt", 2, "3\tantelope"),
     ["classes.txt:3", "duplicate name", "antelope"]),
    ("duplicate id", _replace_line("classes.txt", 2, "2\tkiller+whale"), ["classes.txt:3", "duplicate id"]),
    ("path in name", _replace_line("classes.txt", 0, "1\t../antelope"),
     ["classes.txt:1", "not a valid name"]),
    ("duplicate predicate", _replace_line("predicates.txt", 2, "3\tblack"),
     ["predicates.txt:3", "duplicate name"]),
    ("too few rows", _write(CONT, "1 2 3\n4 5 6\n7 8 9\n"), [CONT, "3 rows", "4 classes"]),
    ("too many rows", _write(BIN, "0 0 0\n" * 5), [BIN, "5 rows", "4 classes"]),
    ("wrong columns", _replace_line(CONT, 1, "1.0 2.0"), [f"{CONT}:2", "2 values", "expected 3"]),
    ("non-numeric", _replace_line(CONT, 2, "1.0 abc 3.0"), [f"{CONT}:3", "not a number", "'abc'"]),
    ("nan", _replace_line(CONT, 3, "1.0 nan 3.0"), [f"{CONT}:4", "NaN or infinite"]),
    ("inf", _replace_line(CONT, 0, "-inf 1 2"), [f"{CONT}:1", "NaN or infinite"]),
    ("float32 overflow", _replace_line(CONT, 0, "1e300 1 2"), [f"{CONT}:1", "NaN or infinite"]),
    ("binary not 0/1", _replace_line(BIN, 1, "1 0.5 1"), [f"{BIN}:2", "column 2", "not 0 or 1"]),
    ("unknown trainval class", _write("trainvalclasses.txt", "antelope\nzebra\n"),
     ["trainvalclasses.txt:2", "'zebra'", "not in classes.txt"]),
    ("unknown test class", _write("testclasses.txt", "dolphin\n"),
     ["testclasses.txt:1", "'dolphin'", "not in classes.txt"]),
    ("listed twice", _write("testclasses.txt", "killer+whale\nkiller+whale\n"),
     ["testclasses.txt:2", "listed twice"]),
    ("overlap", _write("testclasses.txt", "killer+whale\nbeaver\n"),
     ["testclasses.txt", "overlap", "beaver"]),
    ("in neither list", _write("trainvalclasses.txt", "antelope\nbeaver\n"),
     ["neither", "grizzly+bear"]),
    ("missing class dir", _remove_dir("beaver"), ["JPEGImages/beaver", "'beaver'", "not found"]),
    ("name too long for a path", _rename_class("beaver", "b" * 300), ["cannot list images", "bbbb"]),
    ("empty class dir", _empty_dir("grizzly+bear"), ["JPEGImages/grizzly+bear", "no .jpg images"]),
    ("description unknown class", _write("descriptions.txt", "zebra\tA horse.\n"),
     ["descriptions.txt:1", "'zebra'"]),
    ("description missing class", _write("descriptions.txt", "antelope\tA deer.\n"),
     ["descriptions.txt", "no description", "beaver"]),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(tmp_path: Path, mutate: Callable[[Path], None], expected: list[str]) -> None:
    root = make_awa2(tmp_path / "awa")
    mutate(root)
    with pytest.raises(DatasetError) as info:
        load_awa2(root)
    for fragment in expected:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


# ------------------------------------------------------------------------------------------ fuzz

_NAMES = st.sampled_from(CLASSES + ["x", "..", ".", "a/b", "a\x00b", "", " ", "+", "é" * 300])
_CLASS_LINE = st.one_of(
    st.text(max_size=30),
    st.builds(lambda i, n, sep: f"{i}{sep}{n}", st.integers(-3, 9), _NAMES, st.sampled_from(["\t", " ", ""])),
)
_TOKEN = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-2, 200).map(str),
    st.text(max_size=6),
    st.sampled_from(["-1", "nan", "1e999", "0x10", "1_0", "--1", "1e-400", "\u0661"]),
)
_ROW = st.lists(_TOKEN, max_size=5).map(" ".join)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_awa2(tmp_path_factory.mktemp("fuzz") / "awa")


def _load_or_dataset_error(root: Path, name: str, data: bytes) -> None:
    """Write ``data`` to one file, load, restore: only success or DatasetError is acceptable."""
    path = root / name
    original = path.read_bytes()
    try:
        path.write_bytes(data)
        load_awa2(root)
    except DatasetError:
        pass
    finally:
        path.write_bytes(original)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_CLASS_LINE, max_size=6))
def test_fuzz_classes(fuzz_root: Path, lines: list[str]) -> None:
    _load_or_dataset_error(fuzz_root, "classes.txt", "\n".join(lines).encode("utf-8", "surrogatepass"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, max_size=6), name=st.sampled_from([CONT, BIN]))
def test_fuzz_matrix(fuzz_root: Path, rows: list[str], name: str) -> None:
    _load_or_dataset_error(fuzz_root, name, "\n".join(rows).encode("utf-8", "surrogatepass"))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_fuzz_raw_bytes(fuzz_root: Path, data: bytes) -> None:
    _load_or_dataset_error(fuzz_root, "classes.txt", data)
