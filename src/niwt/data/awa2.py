"""Loader of the Animals-with-Attributes-2 native on-disk format.

The embedded synthetic benchmark writes this same format, so the default pipeline exercises the
exact code path a real AWA2 download takes. Every malformed input raises :class:`DatasetError`
naming the file (and line, where there is one): a dataset error found here costs seconds, the same
error found after fine-tuning costs hours.

Layout of ``root`` (``Animals_with_Attributes2/``)::

    classes.txt                      <1-based id> <class name>   (AWA2 separates with a tab)
    predicates.txt                   <id> <attribute name>
    predicate-matrix-continuous.txt  one row per class, floats 0..100, -1 = unknown (read as 0)
    predicate-matrix-binary.txt      one row per class, 0/1
    trainvalclasses.txt              seen classes, one name per line (AWA2 ships it in xlsa17)
    testclasses.txt                  unseen classes, one name per line (idem)
    JPEGImages/<class>/<class>_<n>.jpg
    descriptions.txt                 optional: <class name><TAB><one-sentence description>
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from niwt.data.raw import DatasetError, RawDataset

CLASSES = "classes.txt"
PREDICATES = "predicates.txt"
CONTINUOUS = "predicate-matrix-continuous.txt"
BINARY = "predicate-matrix-binary.txt"
TRAINVAL = "trainvalclasses.txt"
TEST = "testclasses.txt"
TRAIN = "trainclasses.txt"
IMAGES = "JPEGImages"
DESCRIPTIONS = "descriptions.txt"

_IMAGE_SUFFIXES = (".jpg", ".jpeg")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_HINTS = {
    TRAINVAL: "the seen (trainval) classes; AWA2 ships it in xlsa17/data/AWA2/, copy it into the root",
    TEST: "the unseen (test) classes; AWA2 ships it in xlsa17/data/AWA2/, copy it into the root",
}

Lines = list[tuple[int, str]]


def load_awa2(root: Path, name: str = "awa2") -> RawDataset:
    """Read an AWA2-format benchmark from ``root`` and validate it.

    Args:
        root: the ``Animals_with_Attributes2`` directory (relative or absolute; image paths keep
            the same form).
        name: the dataset name recorded in the result (``awa2``, or ``synthetic`` for the default).

    Raises:
        DatasetError: a missing or malformed file; the message names the file, line and problem.
    """
    root = Path(root)
    classes = _read_id_names(root / CLASSES)
    attribute_names = _read_id_names(root / PREDICATES)
    shape = (len(classes), len(attribute_names))
    continuous, _ = _read_matrix(root / CONTINUOUS, shape)
    continuous[continuous == -1.0] = 0.0  # AWA2 marks "unknown" with -1
    binary, binary_lines = _read_matrix(root / BINARY, shape)
    _check_binary(binary, binary_lines, root / BINARY)
    # xlsa17 and the synthetic default name the seen list trainvalclasses.txt; the AwA2-data.zip
    # archive itself ships the older standard split as trainclasses.txt.
    trainval = root / TRAINVAL if (root / TRAINVAL).exists() or not (root / TRAIN).exists() else root / TRAIN
    seen = _read_name_list(trainval, classes)
    unseen = _read_name_list(root / TEST, classes)
    _check_split(root, classes, seen, unseen)
    paths, labels = _collect_images(root / IMAGES, classes)
    descriptions_path = root / DESCRIPTIONS
    descriptions = _read_descriptions(descriptions_path, classes) if descriptions_path.exists() else None
    unseen_set = set(unseen)
    return RawDataset(
        name=name, class_names=classes, unseen=[c for c in classes if c in unseen_set],
        attribute_names=attribute_names, attributes=continuous, attributes_binary=binary,
        image_paths=paths, image_labels=labels, descriptions=descriptions)


def _read_lines(path: Path) -> Lines:
    """Non-blank lines of a UTF-8 text file with their 1-based line numbers.

    Numbers count blank lines too, so an error message points at the line an editor shows.
    """
    if not path.is_file():
        hint = _HINTS.get(path.name, f"an AWA2 root must contain {path.name}")
        raise DatasetError(f"{path}: file not found ({hint})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read: {err.strerror}") from err
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: file is empty")
    return lines


def _check_name(name: str, path: Path, lineno: int) -> None:
    """Reject names that cannot be a class directory, so a typo cannot escape ``JPEGImages``."""
    if name in (".", "..") or any(ch in name for ch in "/\\\x00"):
        raise DatasetError(f"{path}:{lineno}: {name!r} is not a valid name (no '/', '\\', NUL, '.', '..')")


def _read_id_names(path: Path) -> list[str]:
    """Parse ``<id> <name>`` lines (``classes.txt``, ``predicates.txt``) into names in file order."""
    names: dict[str, int] = {}
    ids: dict[int, int] = {}
    for lineno, line in _read_lines(path):
        fields = line.split()
        if len(fields) != 2:
            raise DatasetError(f"{path}:{lineno}: expected '<id> <name>' (names have no spaces; "
                               f"AWA2 writes '+'), got {line!r}")
        try:
            ident = int(fields[0])
        except ValueError as err:
            raise DatasetError(f"{path}:{lineno}: id {fields[0]!r} is not an integer") from err
        name = fields[1]
        _check_name(name, path, lineno)
        if name in names:
            raise DatasetError(f"{path}:{lineno}: duplicate name {name!r} (first on line {names[name]})")
        if ident in ids:
            raise DatasetError(f"{path}:{lineno}: duplicate id {ident} (first on line {ids[ident]})")
        names[name], ids[ident] = lineno, lineno
    return list(names)


def _parse_row(tokens: list[str], path: Path, lineno: int) -> list[float]:
    """Parse one matrix row, rejecting text, NaN, inf and values that overflow float32."""
    row = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError as err:
            raise DatasetError(f"{path}:{lineno}: not a number: {token!r}") from err
        if not np.isfinite(value) or abs(value) > _FLOAT32_MAX:
            raise DatasetError(f"{path}:{lineno}: NaN or infinite value {token!r}")
        row.append(value)
    return row


def _read_matrix(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """Read a whitespace-separated class-by-attribute matrix; return it and each row's line number."""
    lines = _read_lines(path)
    n_rows, n_cols = shape
    if len(lines) != n_rows:
        raise DatasetError(f"{path}: {len(lines)} rows but {CLASSES} lists {n_rows} classes "
                           "(one row per class expected)")
    rows = []
    for lineno, line in lines:
        tokens = line.split()
        if len(tokens) != n_cols:
            raise DatasetError(f"{path}:{lineno}: {len(tokens)} values, expected {n_cols} "
                               f"(one per attribute in {PREDICATES})")
        rows.append(_parse_row(tokens, path, lineno))
    return np.asarray(rows, dtype=np.float32), [lineno for lineno, _ in lines]


def _check_binary(matrix: np.ndarray, linenos: list[int], path: Path) -> None:
    """The binary matrix must hold only 0 and 1: anything else is a continuous matrix by mistake."""
    bad = ~np.isin(matrix, (0.0, 1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DatasetError(f"{path}:{linenos[row]}: value {matrix[row, col]:g} in column {col + 1} "
                           "is not 0 or 1")


def _read_name_list(path: Path, classes: list[str]) -> list[str]:
    """Read one class name per line, each of which must appear in ``classes.txt`` once."""
    known = set(classes)
    names: dict[str, int] = {}
    for lineno, name in _read_lines(path):
        if name not in known:
            raise DatasetError(f"{path}:{lineno}: class {name!r} is not in {CLASSES}")
        if name in names:
            raise DatasetError(f"{path}:{lineno}: class {name!r} listed twice (first on line {names[name]})")
        names[name] = lineno
    return list(names)


def _check_split(root: Path, classes: list[str], seen: list[str], unseen: list[str]) -> None:
    """Seen and unseen must partition the classes: an overlap would leak test classes into training."""
    overlap = sorted(set(seen) & set(unseen))
    if overlap:
        raise DatasetError(f"{root / TEST}: classes also in {TRAINVAL} (seen and unseen overlap): {overlap}")
    listed = set(seen) | set(unseen)
    neither = [c for c in classes if c not in listed]
    if neither:
        raise DatasetError(f"{root}: classes in neither {TRAINVAL} nor {TEST}: {neither}")


def _image_sort_key(class_name: str) -> Callable[[str], tuple[int, int, str]]:
    """Order ``<class>_<n>.jpg`` by the integer n (``_9`` before ``_10``), other names after, by name."""
    pattern = re.compile(re.escape(class_name) + r"_(\d+)\.jpe?g", re.IGNORECASE)

    def key(file_name: str) -> tuple[int, int, str]:
        match = pattern.fullmatch(file_name)
        return (0, int(match.group(1)), file_name) if match else (1, 0, file_name)

    return key


def _list_images(directory: Path, class_name: str) -> list[str]:
    """Sorted image paths of one class; a missing or empty directory is an error naming the class."""
    try:
        if not directory.is_dir():
            raise DatasetError(f"{directory}: image directory of class {class_name!r} not found")
        with os.scandir(directory) as entries:
            files = [e.name for e in entries if e.name.lower().endswith(_IMAGE_SUFFIXES) and e.is_file()]
    except OSError as err:
        raise DatasetError(f"{directory}: cannot list images of class {class_name!r}: {err}") from err
    if not files:
        raise DatasetError(f"{directory}: class {class_name!r} has no .jpg images")
    return [str(directory / f) for f in sorted(files, key=_image_sort_key(class_name))]


def _collect_images(images_dir: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Every image of every class, class by class, with its label index."""
    paths: list[str] = []
    labels: list[int] = []
    for index, class_name in enumerate(classes):
        found = _list_images(images_dir / class_name, class_name)
        paths.extend(found)
        labels.extend([index] * len(found))
    return paths, np.asarray(labels, dtype=np.int64)


def _read_descriptions(path: Path, classes: list[str]) -> list[str]:
    """Read ``<class><TAB><sentence>`` lines into one sentence per class, in class order."""
    known = set(classes)
    found: dict[str, str] = {}
    for lineno, line in _read_lines(path):
        name, sep, text = line.partition("\t")
        if not sep:  # tolerate a space instead of the tab
            name, text = (line.split(maxsplit=1) + [""])[:2]
        name, text = name.strip(), text.strip()
        if name not in known:
            raise DatasetError(f"{path}:{lineno}: class {name!r} is not in {CLASSES}")
        if name in found:
            raise DatasetError(f"{path}:{lineno}: second description of class {name!r}")
        if not text:
            raise DatasetError(f"{path}:{lineno}: empty description of class {name!r}")
        found[name] = text
    missing = [c for c in classes if c not in found]
    if missing:
        raise DatasetError(f"{path}: no description for classes {missing}")
    return [found[c] for c in classes]
