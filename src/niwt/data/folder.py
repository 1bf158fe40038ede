"""Your own dataset (``data.name: folder``), as simple as torchvision's ``ImageFolder``.

Layout of ``data.root``::

    images/<class>/<file>     JPEG, PNG or WebP; any size and mode (converted to RGB when read)
    classes.csv               class,split[,description]   split: seen | unseen
    attributes.csv            class,<attribute 1>,<attribute 2>,...   (data.domain: attributes)
    splits.csv                optional: path,split   path relative to data.root (images/<class>/<file>),
                              split: train | val | test_seen | test_unseen

Without ``splits.csv`` every seen class's images are split train / val / test_seen per class from
``base.seed`` (``data.val_fraction``, ``data.test_seen_fraction``) and unseen images are test_unseen.
``data.domain: text`` embeds each class's description (or its name when there is none).

Every problem raises :class:`~niwt.data.raw.DatasetError` naming the file, the row (1-based, the
header is row 1) and the problem, before any training.
"""

from __future__ import annotations

import csv
import io
import math
import os
import unicodedata
from pathlib import Path, PurePosixPath

import numpy as np

from niwt.data.raw import SPLITS, DatasetError, RawDataset

IMAGES = "images"
CLASSES = "classes.csv"
ATTRIBUTES = "attributes.csv"
SPLITS_CSV = "splits.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_FLOAT32_MAX = float(np.finfo(np.float32).max)

Rows = list[tuple[int, list[str]]]


def _read_csv(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = (),
              free: bool = False) -> tuple[list[str], Rows]:
    """Header and (row number, fields) of a comma-separated UTF-8 file without BOM.

    Args:
        required: columns that must come first, in this order.
        optional: further columns that may follow.
        free: any further columns are allowed (attributes.csv).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (a folder dataset needs {CLASSES} and {IMAGES}/<class>/; "
                           "see the README, 'Your own data and classifier')")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf") or raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(f"{path}: starts with a byte-order mark (BOM); save it as plain UTF-8 without BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = [(i, [f.strip() for f in fields]) for i, fields in enumerate(reader, start=1)]
    except csv.Error as err:
        raise DatasetError(f"{path}:{reader.line_num}: not valid CSV ({err})") from err
    rows = [(i, f) for i, f in rows if any(f)]
    if not rows:
        raise DatasetError(f"{path}: file is empty; expected a header {','.join(required)}")
    _, header = rows[0]
    if len(header) == 1:
        for sep in (";", "\t", "|"):
            if sep in header[0]:
                raise DatasetError(f"{path}:1: the columns are separated by {sep!r}; niwt reads comma-separated "
                                   f"files (header {','.join(required)})")
    if tuple(header[:len(required)]) != required:
        raise DatasetError(f"{path}:1: header must start with {','.join(required)}, got {','.join(header)}")
    extra = header[len(required):]
    if not free:
        unknown = [c for c in extra if c not in optional]
        if unknown:
            raise DatasetError(f"{path}:1: unknown columns {unknown}; allowed: {', '.join(required + optional)}")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DatasetError(f"{path}:1: duplicate columns {dup}")
    body = rows[1:]
    for lineno, fields in body:
        if len(fields) != len(header):
            raise DatasetError(f"{path}:{lineno}: {len(fields)} fields, the header has {len(header)} "
                               f"({','.join(header)})")
    return header, body


def _check_name(name: str, path: Path, lineno: int) -> None:
    if not name:
        raise DatasetError(f"{path}:{lineno}: empty class name")
    if name in (".", "..") or any(ch in name for ch in "/\\\x00"):
        raise DatasetError(f"{path}:{lineno}: {name!r} is not a valid class name (no '/', '\\', NUL, '.', '..')")


def read_classes_csv(path: Path) -> tuple[list[str], list[str], list[str] | None]:
    """(class names in file order, unseen names, descriptions or None)."""
    header, rows = _read_csv(path, ("class", "split"), ("description",))
    names: dict[str, int] = {}
    unseen, descriptions = [], []
    for lineno, fields in rows:
        name, split = _nfc(fields[0]), fields[1]
        _check_name(name, path, lineno)
        if name in names:
            raise DatasetError(f"{path}:{lineno}: duplicate class {name!r} (first on row {names[name]})")
        if split not in ("seen", "unseen"):
            raise DatasetError(f"{path}:{lineno}: split {split!r} of class {name!r} is not seen or unseen")
        names[name] = lineno
        if split == "unseen":
            unseen.append(name)
        descriptions.append(fields[2] if len(fields) > 2 else "")
    if not names:
        raise DatasetError(f"{path}: no classes (one row per class after the header class,split)")
    n_seen = len(names) - len(unseen)
    if not unseen:
        raise DatasetError(f"{path}: no unseen class: mark the classes to teach from their descriptions "
                           "with split 'unseen'")
    if n_seen < 2:
        raise DatasetError(f"{path}: {n_seen} seen class; at least two are needed to train the classifier")
    has_text = "description" in header and any(descriptions)
    if has_text:
        empty = [n for n, d in zip(names, descriptions, strict=True) if not d]
        if empty:
            raise DatasetError(f"{path}: column description is empty for classes {empty[:10]} "
                               "(give every class a description, or none)")
    return list(names), unseen, descriptions if has_text else None


def read_attributes_csv(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """(attribute names, (n_classes, n_attributes) float32 rows in ``classes`` order)."""
    header, rows = _read_csv(path, ("class",), free=True)
    names = header[1:]
    if not names:
        raise DatasetError(f"{path}:1: no attribute columns after 'class'")
    if any(not n for n in names):
        raise DatasetError(f"{path}:1: an attribute column has an empty name")
    known = set(classes)
    found: dict[str, tuple[int, list[float]]] = {}
    for lineno, fields in rows:
        name = _nfc(fields[0])
        if name not in known:
            raise DatasetError(f"{path}:{lineno}: class {name!r} is not in {CLASSES}")
        if name in found:
            raise DatasetError(f"{path}:{lineno}: second row for class {name!r} (first on row {found[name][0]})")
        values = []
        for col, token in zip(names, fields[1:], strict=True):
            try:
                value = float(token)
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: attribute {col!r} of class {name!r} is not a number: "
                                   f"{token!r}") from None
            if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
                raise DatasetError(f"{path}:{lineno}: attribute {col!r} of class {name!r} is NaN or infinite "
                                   f"({token!r})")
            values.append(value)
        if len(values) > 1 and len(set(values)) == 1:
            raise DatasetError(f"{path}:{lineno}: every attribute of class {name!r} has the same value "
                               f"{values[0]:g}: the row describes nothing (its direction is all a zero-shot method "
                               "sees)")
        if not any(values):
            raise DatasetError(f"{path}:{lineno}: all attributes of class {name!r} are zero: the row describes "
                               "nothing")
        found[name] = (lineno, values)
    missing = [c for c in classes if c not in found]
    if missing:
        raise DatasetError(f"{path}: no attribute row for classes {missing[:10]}"
                           f"{' and more' if len(missing) > 10 else ''} (one row per class of {CLASSES})")
    return names, np.asarray([found[c][1] for c in classes], dtype=np.float32)


def _nfc(name: str) -> str:
    """A class name in Unicode NFC: macOS writes folder names decomposed (NFD), a CSV is usually composed;
    the two look identical and must match."""
    return unicodedata.normalize("NFC", name)


def _list_images(images: Path, classes: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """(image paths, labels, files skipped for their suffix) of ``images/<class>/``."""
    if not images.is_dir():
        raise DatasetError(f"{images}: image folder not found (expected {IMAGES}/<class>/<file> under data.root)")
    known = set(classes)
    on_disk: dict[str, str] = {}  # a class's folder, whatever its Unicode form
    for entry in sorted(e.name for e in os.scandir(images) if e.is_dir()):
        if _nfc(entry) in on_disk:
            raise DatasetError(f"{images}: folders {on_disk[_nfc(entry)]!r} and {entry!r} are the same name in "
                               "different Unicode forms; merge them")
        on_disk[_nfc(entry)] = entry
    strays = sorted(n for n in on_disk if n not in known)
    if strays:
        raise DatasetError(f"{images}: image folders not in {CLASSES}: {strays[:10]} (add them to {CLASSES} "
                           "or move them out)")
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    for index, name in enumerate(classes):
        folder = images / on_disk.get(name, name)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no image folder for class {name!r} of {CLASSES}")
        entries = [e.name for e in os.scandir(folder) if e.is_file()]
        files = sorted(f for f in entries if f.lower().endswith(IMAGE_SUFFIXES))
        skipped.extend(str(folder / f) for f in sorted(entries)  # hidden files (.DS_Store) are no images: not noted
                       if not f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
        if not files:
            raise DatasetError(f"{folder}: class {name!r} has no image ({', '.join(IMAGE_SUFFIXES)})")
        paths.extend(str(folder / f) for f in files)
        labels.extend([index] * len(files))
    return paths, np.asarray(labels, dtype=np.int64), skipped


def read_splits_csv(path: Path, root: Path, paths: list[str], labels: np.ndarray, classes: list[str],
                    unseen: list[str]) -> list[str]:
    """The fixed split of every image, in ``paths`` order."""
    _, rows = _read_csv(path, ("path", "split"))
    index = {_nfc(os.path.relpath(p, root).replace(os.sep, "/")): i for i, p in enumerate(paths)}
    unseen_set = set(unseen)
    split: list[str | None] = [None] * len(paths)
    first: dict[int, int] = {}
    for lineno, (rel, value) in rows:
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or pure.parts[0] != IMAGES:
            raise DatasetError(f"{path}:{lineno}: path {rel!r} is not inside {IMAGES}/ (paths are relative to "
                               f"data.root, e.g. {IMAGES}/<class>/<file>)")
        if value not in SPLITS:
            raise DatasetError(f"{path}:{lineno}: split {value!r} is not one of {', '.join(SPLITS)}")
        i = index.get(_nfc(str(pure)))
        if i is None:
            raise DatasetError(f"{path}:{lineno}: {rel!r} is not an image of the dataset (no such file in "
                               f"{IMAGES}/<class>/ with a {'/'.join(IMAGE_SUFFIXES)} suffix)")
        if i in first:
            raise DatasetError(f"{path}:{lineno}: {rel!r} listed twice (first on row {first[i]})")
        name = classes[labels[i]]
        if (name in unseen_set) != (value == "test_unseen"):
            kind = "unseen" if name in unseen_set else "seen"
            raise DatasetError(f"{path}:{lineno}: {rel!r} of {kind} class {name!r} is in split {value!r}; seen "
                               "classes belong in train/val/test_seen, unseen classes only in test_unseen")
        first[i] = lineno
        split[i] = value
    unlisted = [i for i, s in enumerate(split) if s is None]
    if unlisted:
        example = os.path.relpath(paths[unlisted[0]], root)
        raise DatasetError(f"{path}: {len(unlisted)} images are not listed, e.g. {example!r} (list every image "
                           f"of {IMAGES}/, or delete {SPLITS_CSV} to draw the split from base.seed)")
    return [str(s) for s in split]


def load_folder(root: Path, need_attributes: bool = True) -> RawDataset:
    """Read and validate a folder dataset under ``root`` (``data.root``).

    Args:
        need_attributes: ``attributes.csv`` is required (``data.domain: attributes``); otherwise it is
            read only when present.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data.root not found (a folder dataset: {IMAGES}/<class>/<file>, {CLASSES}, "
                           f"{ATTRIBUTES})")
    classes, unseen, descriptions = read_classes_csv(root / CLASSES)
    attributes_path = root / ATTRIBUTES
    if attributes_path.is_file() or need_attributes:
        attribute_names, attributes = read_attributes_csv(attributes_path, classes)
    else:
        attribute_names, attributes = [], np.zeros((len(classes), 0), dtype=np.float32)
    paths, labels, skipped = _list_images(root / IMAGES, classes)
    notes = (f"{root / IMAGES}: {len(skipped)} files skipped, not {'/'.join(IMAGE_SUFFIXES)} "
             f"(e.g. {', '.join(Path(f).name for f in skipped[:3])}); convert them to include them",) if skipped else ()
    splits_path = root / SPLITS_CSV
    image_splits = (read_splits_csv(splits_path, root, paths, labels, classes, unseen)
                    if splits_path.is_file() else None)
    return RawDataset(name="folder", class_names=classes, unseen=unseen, attribute_names=attribute_names,
                      attributes=attributes, image_paths=paths, image_labels=labels, image_splits=image_splits,
                      descriptions=descriptions, notes=notes)
