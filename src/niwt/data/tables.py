"""The two tables every stage after ``prepare`` reads: classes and image splits (Parquet).

Joint label space: seen classes take ids ``0..S-1`` and unseen classes ``S..S+U-1``, so the
finetuned S-way classifier and the injected (S+U)-way classifier share indices and the unseen
logits are simply appended rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from niwt.data.features import resolve_stored_rows
from niwt.data.raw import SPLITS, DatasetError, RawDataset
from niwt.errors import ParamsError
from niwt.io.atomic import atomic_path
from niwt.io.project import project_root

SPLITS_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("path", pa.string()),
    ("class_id", pa.int32()),
    ("split", pa.string()),
])


@dataclass(frozen=True)
class ClassTable:
    """Classes in joint order: ``names[:n_seen]`` seen, the rest unseen."""

    names: list[str]
    n_seen: int
    domain: np.ndarray  # (C, a) float32 domain vectors of the chosen kind
    domain_kind: str
    attribute_names: list[str]  # names of the domain dimensions when they are attributes
    descriptions: list[str]
    # seen classes the dataset itself sets aside for validation (xlsa17 val_loc), or None
    validation: np.ndarray | None = None

    @property
    def n_unseen(self) -> int:
        return len(self.names) - self.n_seen

    @property
    def seen_mask(self) -> np.ndarray:
        return np.arange(len(self.names)) < self.n_seen


@dataclass(frozen=True)
class SplitTable:
    image_id: np.ndarray  # (N,) int64
    path: list[str]
    class_id: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) str

    def select(self, *splits: str) -> SplitTable:
        keep = np.isin(self.split, splits)
        return SplitTable(self.image_id[keep], [p for p, k in zip(self.path, keep, strict=True) if k],
                          self.class_id[keep], self.split[keep])

    def __len__(self) -> int:
        return len(self.image_id)


def subproblem(classes: ClassTable, splits: SplitTable, seen: np.ndarray,
               unseen: np.ndarray) -> tuple[ClassTable, SplitTable]:
    """A smaller zero-shot problem inside the seen classes: ``seen`` keep their role, ``unseen``
    (seen classes of the real problem) play the unseen one; ids are remapped to ``seen`` first.

    Kept: the train and val images of ``seen``, and the train and val images of ``unseen``, which
    become that problem's ``test_unseen``. No test image of the real problem (``test_seen``,
    ``test_unseen``) is in it, so choices made on it never see a test label.
    """
    order = np.concatenate([np.asarray(seen), np.asarray(unseen)]).astype(np.int64)
    remap = np.full(len(classes.names), -1)
    remap[order] = np.arange(len(order))
    table = ClassTable([classes.names[i] for i in order], len(seen), classes.domain[order], classes.domain_kind,
                       classes.attribute_names,
                       [classes.descriptions[i] for i in order] if classes.descriptions else [])
    keep = np.isin(splits.class_id, order) & np.isin(splits.split, ("train", "val"))
    cls = remap[splits.class_id[keep]]
    role = np.where(cls >= len(seen), "test_unseen", splits.split[keep]).astype(splits.split.dtype)
    return table, SplitTable(splits.image_id[keep], [p for p, k in zip(splits.path, keep, strict=True) if k], cls,
                             role)


def held_out_classes(n_seen: int, n_val: int, seed: int, key: str = "mapping.n_val_classes") -> np.ndarray:
    """The seen classes kept out of fitting for model selection (seeded, sorted).

    Drawn by ``fit_mapping`` (stored in the map; every later use reads them from there) and by
    ``validate`` (its validation classes; the same draw for the same count and seed).
    """
    if not 0 < n_val < n_seen:
        raise ParamsError(f"{key} must be between 1 and {n_seen - 1} (the dataset has {n_seen} "
                          f"seen classes), got {n_val}")
    return np.sort(np.random.default_rng(seed).choice(n_seen, size=n_val, replace=False))


def held_out_count(n_seen: int, requested: int) -> int:
    """``mapping.n_val_classes`` as far as the dataset allows: all seen classes but two (two stay to fit the
    map), and at least one (with two seen classes, one stays to fit). A small dataset (the README's three
    seen classes) runs instead of failing after the stages before it."""
    return max(1, min(requested, n_seen - 2))


def validation_count(n_seen: int, fraction: float, floor: int) -> int:
    """How many seen classes the class-disjoint validation protocol sets aside.

    ``fraction`` of the seen classes (Xian et al.'s splits hold out about a third: CUB 50 of 150,
    AWA2 13 of 40), at least ``floor`` of them where the seen classes allow, and always leaving two
    to fit (a classifier needs two classes). A validation problem much smaller than the test problem
    picks settings that do not transfer: at CUB scale, 5 validation classes against 50 unseen chose
    calibrations that lowered test H for 4 of 5 methods.
    """
    if n_seen < 3:
        raise ParamsError(f"the class-disjoint validation protocol needs at least 3 seen classes (2 to fit, 1 to "
                          f"validate); the dataset has {n_seen}")
    return int(min(max(round(fraction * n_seen), min(floor, n_seen - 2), 1), n_seen - 2))


def joint_order(raw: RawDataset) -> list[int]:
    """Indices into ``raw.class_names``: seen classes first, then unseen, each in raw order."""
    unseen = set(raw.unseen)
    seen_idx = [i for i, n in enumerate(raw.class_names) if n not in unseen]
    return seen_idx + [i for i, n in enumerate(raw.class_names) if n in unseen]


def assign_splits(raw: RawDataset, order: list[int], val_fraction: float, test_seen_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image joint class id and split name, drawn per class with a seeded RNG.

    With a fixed protocol (``raw.image_splits``: xlsa17 trainval/test_seen/test_unseen) only the
    trainval images are divided into train and val (a complete train/val/test_seen split, from a
    folder dataset's ``splits.csv``, is kept as given); otherwise each seen class is split
    train/val/test_seen by the fractions and every unseen image is test_unseen.
    """
    rng = np.random.default_rng(seed)
    joint_of = np.empty(len(raw.class_names), dtype=np.int64)
    joint_of[order] = np.arange(len(order))
    n_seen = len(raw.class_names) - len(raw.unseen)
    cls = joint_of[np.asarray(raw.image_labels, dtype=np.int64)]
    split = np.empty(len(cls), dtype=object)
    for c in range(len(order)):
        idx = np.flatnonzero(cls == c)
        if len(idx) == 0:
            raise DatasetError(f"{raw.name}: class {raw.class_names[order[c]]!r} has no images")
        if c >= n_seen:
            split[idx] = "test_unseen"
            continue
        if raw.image_splits is not None:
            fixed = np.array([raw.image_splits[i] for i in idx])
            if not (fixed == "trainval").any():  # a complete split (a folder dataset's splits.csv): as given
                split[idx] = fixed
                continue
            split[idx[fixed == "test_seen"]] = "test_seen"
            idx = idx[fixed == "trainval"]
            n_val = int(round(val_fraction / (1 - test_seen_fraction) * len(idx)))
            n_test = 0
        else:
            n_val = int(round(val_fraction * len(idx)))
            n_test = int(round(test_seen_fraction * len(idx)))
        idx = rng.permutation(idx)
        split[idx[:n_test]] = "test_seen"
        split[idx[n_test:n_test + n_val]] = "val"
        split[idx[n_test + n_val:]] = "train"
    return cls, split.astype(str)


DOMAIN_FILE = "domain.parquet"  # beside classes.parquet: class_id, domain; domain kind and attribute names


def domain_file(classes_file: Path) -> Path:
    """The domain table of a class table (the same directory)."""
    return Path(classes_file).with_name(DOMAIN_FILE)


def write_classes(path: Path, table: ClassTable) -> None:
    """Write the class table atomically: names, seen flags, descriptions (and the dataset's validation
    classes) in ``path``; the domain vectors, their kind and attribute names in :func:`domain_file`.

    Two files, so that a stage that never reads the domain (cache, the fine-tuning stages) depends on
    ``classes.parquet`` alone: switching ``data.domain`` reruns only what reads the vectors."""
    n = len(table.names)
    dim = table.domain.shape[1]
    arrays = {
        "class_id": pa.array(np.arange(n, dtype=np.int32)),
        "name": pa.array(table.names, pa.string()),
        "seen": pa.array(table.seen_mask),
        "description": pa.array(table.descriptions, pa.string()),
    }
    if table.validation is not None:  # only where the dataset names its own validation classes
        arrays["validation"] = pa.array(np.isin(np.arange(n), table.validation))
    domain = {"class_id": pa.array(np.arange(n, dtype=np.int32)),
              "domain": pa.FixedSizeListArray.from_arrays(pa.array(table.domain.astype(np.float32).ravel()), dim)}
    meta = {b"domain_kind": table.domain_kind.encode(),
            b"attribute_names": json.dumps(table.attribute_names).encode()}
    with atomic_path(domain_file(path)) as tmp:
        pq.write_table(pa.table(domain).replace_schema_metadata(meta), tmp)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(arrays), tmp)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_vector(t: pa.DataType) -> bool:
    return ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
            and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)))


_CLASS_COLUMNS = {"class_id": (pa.types.is_integer, "integer"), "name": (_is_string, "string"),
                  "seen": (pa.types.is_boolean, "bool"), "description": (_is_string, "string")}
_DOMAIN_COLUMNS = {"class_id": (pa.types.is_integer, "integer"), "domain": (_is_vector, "list of numbers")}
_SPLIT_COLUMNS = {"image_id": (pa.types.is_integer, "integer"), "path": (_is_string, "string"),
                  "class_id": (pa.types.is_integer, "integer"), "split": (_is_string, "string")}


def read_classes(path: Path, domain: bool = True) -> ClassTable:
    """Read and validate ``classes.parquet`` and its :func:`domain_file`.

    ``domain=False``: leave the domain file unread (an empty ``(C, 0)`` domain): the stages that never
    use the vectors (the fine-tuning stages) neither read nor depend on it."""
    table = _read(path, _CLASS_COLUMNS)
    if table.num_rows == 0:
        raise DatasetError(f"{path}: no classes")
    seen = table["seen"].to_numpy(zero_copy_only=False)
    n_seen = int(seen.sum())
    if not seen[:n_seen].all():
        raise DatasetError(f"{path}: seen classes must come first in the class table")
    if n_seen == 0:
        raise DatasetError(f"{path}: no seen classes (column 'seen' is all false)")
    names = table["name"].to_pylist()
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    dups = [n for n, k in counts.items() if k > 1]
    if dups:
        raise DatasetError(f"{path}: class names must be unique; {dups[:5]} appear more than once "
                           "(a class both seen and unseen?)")
    validation = None
    if "validation" in table.column_names:
        if not pa.types.is_boolean(table["validation"].type) or table["validation"].null_count:
            raise DatasetError(f"{path}: column 'validation' must be bool without nulls (true: a seen class the "
                               "dataset sets aside for validation)")
        flags = table["validation"].to_numpy(zero_copy_only=False)
        if (flags & ~seen).any():
            raise DatasetError(f"{path}: column 'validation' marks unseen classes "
                               f"{[names[i] for i in np.flatnonzero(flags & ~seen)[:5]]}; only seen classes can be")
        validation = np.flatnonzero(flags)
    vectors, kind, attribute_names = (_read_domain(domain_file(path), names) if domain
                                      else (np.zeros((len(names), 0), np.float32), "unread", []))
    return ClassTable(
        validation=validation,
        names=names, n_seen=n_seen, domain=vectors, domain_kind=kind, attribute_names=attribute_names,
        descriptions=table["description"].to_pylist(),
    )


def _read_domain(path: Path, names: list[str]) -> tuple[np.ndarray, str, list[str]]:
    """(domain vectors in class order, their kind, attribute names) from ``domain.parquet``, checked
    against the class table's ``names``."""
    table = _read(path, _DOMAIN_COLUMNS)
    ids = table["class_id"].to_numpy(zero_copy_only=False)
    if table.num_rows != len(names) or not np.array_equal(ids, np.arange(len(names))):
        raise DatasetError(f"{path}: {table.num_rows} rows with class ids {ids.tolist()[:5]}..., the class table "
                           f"beside it has {len(names)} classes (ids 0..{len(names) - 1} in order): rerun prepare")
    domain_col = table["domain"].combine_chunks()
    lengths = set(pa.compute.list_value_length(domain_col).to_pylist())
    if len(lengths) != 1 or domain_col.flatten().null_count:
        raise DatasetError(f"{path}: column 'domain' must hold one equally long vector of numbers per class "
                           f"(lengths {sorted(lengths)[:5]}, {domain_col.flatten().null_count} nulls)")
    domain = np.array(domain_col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
        table.num_rows, lengths.pop())
    if not np.isfinite(domain).all():
        bad = np.flatnonzero(~np.isfinite(domain).all(1))
        raise DatasetError(f"{path}: NaN/inf in domain vectors of classes {bad.tolist()[:10]} "
                           f"({[names[i] for i in bad[:10]]})")
    meta = table.schema.metadata or {}
    try:
        attribute_names = json.loads(meta.get(b"attribute_names", b"[]"))
    except ValueError as err:
        raise DatasetError(f"{path}: metadata 'attribute_names' is not valid JSON ({err})") from err
    if not isinstance(attribute_names, list) or not all(isinstance(a, str) for a in attribute_names):
        raise DatasetError(f"{path}: metadata 'attribute_names' must be a JSON list of strings")
    if attribute_names and len(attribute_names) != domain.shape[1]:
        raise DatasetError(f"{path}: {len(attribute_names)} attribute names for {domain.shape[1]}-dimensional "
                           "domain vectors (one name per dimension expected)")
    return domain, meta.get(b"domain_kind", b"unknown").decode(), attribute_names


# Where the relative image paths of ``splits.parquet`` start (schema metadata ``image_root``, JSON):
# ``{"relative_to": "prepared", "root": "raw"}``: the directory holding splits.parquet (images that
# ``prepare`` generated into its own output), or ``{"relative_to": "project", "root": <data.root>}``:
# the project root (:func:`niwt.io.project.project_root`), never the working directory. Tables
# without it (older ones) hold paths as they were written.
IMAGE_ROOT_KEY = b"image_root"
IMAGE_ROOT_BASES = ("prepared", "project")


def relative_paths(paths: list[str], root: Path) -> list[str]:
    """``paths`` relative to ``root`` (POSIX separators); a path outside ``root`` stays absolute."""
    prefix = str(root).rstrip(os.sep) + os.sep
    return [Path(p[len(prefix):]).as_posix() if p.startswith(prefix) else str(Path(p).absolute())
            for p in paths]


def write_splits(path: Path, image_id: np.ndarray, paths: list[str], class_id: np.ndarray,
                 split: np.ndarray, image_root: tuple[str, str] | None = None) -> None:
    """Write the split table atomically.

    Args:
        image_root: ``(relative_to, root)`` the relative ``paths`` start from (see
            :data:`IMAGE_ROOT_KEY`); None: ``paths`` are used as they are.
    """
    data = pa.table({"image_id": pa.array(image_id, pa.int64()), "path": pa.array(paths, pa.string()),
                     "class_id": pa.array(class_id, pa.int32()), "split": pa.array(split, pa.string())},
                    schema=SPLITS_SCHEMA)
    if image_root is not None:
        relative_to, root = image_root
        if relative_to not in IMAGE_ROOT_BASES:
            raise ValueError(f"image_root relative_to must be one of {IMAGE_ROOT_BASES}")
        meta = json.dumps({"relative_to": relative_to, "root": str(root)}).encode()
        data = data.replace_schema_metadata({IMAGE_ROOT_KEY: meta})
    with atomic_path(path) as tmp:
        pq.write_table(data, tmp)


def image_base(path: Path, meta: dict | None) -> Path | None:
    """The absolute directory the relative image paths of the table at ``path`` start from."""
    if meta is None:
        return None
    relative_to, root = meta.get("relative_to"), meta.get("root")
    if relative_to not in IMAGE_ROOT_BASES or not isinstance(root, str):
        raise DatasetError(f"{path}: metadata 'image_root' must name relative_to ({' or '.join(IMAGE_ROOT_BASES)}) "
                           f"and root, got {meta!r}")
    root_path = Path(os.path.expanduser(root))
    if root_path.is_absolute():
        return root_path
    table_dir = Path(path).absolute().parent
    if relative_to == "prepared":
        return table_dir / root_path
    return project_root(table_dir, default=Path.cwd()) / root_path


def read_splits(path: Path) -> SplitTable:
    """Read and validate ``splits.parquet``; relative image paths come back absolute, resolved
    against the table's image root (never the working directory)."""
    table = _read(path, _SPLIT_COLUMNS)
    split = np.asarray(table["split"].to_pylist(), dtype=str)
    unknown = sorted(set(split.tolist()) - set(SPLITS))
    if unknown:
        raise DatasetError(f"{path}: unknown split names {unknown}; valid: {list(SPLITS)}")
    raw_meta = (table.schema.metadata or {}).get(IMAGE_ROOT_KEY)
    try:
        meta = None if raw_meta is None else json.loads(raw_meta)
    except ValueError as err:
        raise DatasetError(f"{path}: metadata 'image_root' is not valid JSON ({err})") from err
    if meta is not None and not isinstance(meta, dict):
        raise DatasetError(f"{path}: metadata 'image_root' must be a JSON object, got {meta!r}")
    base = image_base(path, meta)
    paths = table["path"].to_pylist()
    rows = resolve_stored_rows(paths, path)  # precomputed features: always beside the table
    if rows is not None:
        paths = rows
    elif base is not None:
        paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in paths]
    return SplitTable(table["image_id"].to_numpy().astype(np.int64), paths,
                      table["class_id"].to_numpy().astype(np.int64), split)


def check_splits(splits: SplitTable, names: list[str], n_seen: int, source: str | Path) -> None:
    """Cross-check a split table against the class list; the message names ``source`` and a row.

    Every class id must exist; seen classes belong in train/val/test_seen and unseen classes only in
    test_unseen (anything else leaks test classes into training); every seen class needs train
    images, every unseen class test images, and there must be val images for model selection.
    """
    n = len(names)
    ids = splits.class_id

    def row(i: int) -> str:
        return f"image_id {int(splits.image_id[i])} ({splits.path[i]})"

    bad = np.flatnonzero((ids < 0) | (ids >= n))
    if bad.size:
        raise DatasetError(f"{source}: {row(bad[0])} has class_id {int(ids[bad[0]])}, but the class table has "
                           f"{n} classes (ids 0..{n - 1}); {bad.size} rows affected")
    uniq, first = np.unique(splits.image_id, return_index=True)
    if uniq.size != len(ids):
        dup = np.setdiff1d(np.arange(len(ids)), first)[0]
        raise DatasetError(f"{source}: image_id {int(splits.image_id[dup])} appears more than once")
    unseen_row = ids >= n_seen
    wrong = np.flatnonzero(unseen_row != (splits.split == "test_unseen"))
    if wrong.size:
        i = wrong[0]
        kind = "unseen" if unseen_row[i] else "seen"
        where = str(splits.split[i])
        raise DatasetError(f"{source}: {row(i)} of {kind} class {names[ids[i]]!r} is in split {where!r}; "
                           "seen classes belong in train/val/test_seen, unseen classes only in test_unseen "
                           f"({wrong.size} rows affected)")
    train = np.bincount(ids[splits.split == "train"], minlength=n)
    empty = [names[c] for c in range(n_seen) if train[c] == 0]
    if empty:
        raise DatasetError(f"{source}: seen classes without train images: {empty[:5]}"
                           f"{' and more' if len(empty) > 5 else ''}")
    test = np.bincount(ids[splits.split == "test_unseen"], minlength=n)
    empty = [names[c] for c in range(n_seen, n) if test[c] == 0]
    if empty:
        raise DatasetError(f"{source}: unseen classes without test_unseen images: {empty[:5]}"
                           f"{' and more' if len(empty) > 5 else ''}")
    if not (splits.split == "val").any():
        raise DatasetError(f"{source}: no val images (finetune selects its epoch on them); "
                           "raise data.val_fraction")


def read_tables(data: Path, domain: bool = True) -> tuple[ClassTable, SplitTable]:
    """Read ``classes.parquet`` and ``splits.parquet`` from a prepared directory and cross-check them
    (``domain``: as in :func:`read_classes`)."""
    classes = read_classes(Path(data) / "classes.parquet", domain)
    splits = read_splits(Path(data) / "splits.parquet")
    check_splits(splits, classes.names, classes.n_seen, Path(data) / "splits.parquet")
    return classes, splits


def _read(path: Path, columns: dict) -> pa.Table:
    """Read a Parquet table and check that ``columns`` (name -> (type test, description)) are there,
    of the right type and without nulls."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: not found; run the prepare stage first (dvc repro prepare)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(f"{path}: not a readable Parquet file ({err})") from err
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}")
    for name, (is_type, description) in columns.items():
        column = table[name]
        if not is_type(column.type):
            raise DatasetError(f"{path}: column {name!r} has type {column.type}, expected {description}")
        if column.null_count:
            first = column.combine_chunks().is_null().to_numpy(zero_copy_only=False).argmax()
            raise DatasetError(f"{path}: column {name!r} has {column.null_count} empty (null) values, "
                               f"first in row {first}")
    return table
