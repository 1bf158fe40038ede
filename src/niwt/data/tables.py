"""The two tables every stage after ``prepare`` reads: classes and image splits (Parquet).

Joint label space: seen classes take ids ``0..S-1`` and unseen classes ``S..S+U-1``, so the
finetuned S-way classifier and the injected (S+U)-way classifier share indices and the unseen
logits are simply appended rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from niwt.data.raw import SPLITS, DatasetError, RawDataset
from niwt.io.atomic import atomic_path

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


def joint_order(raw: RawDataset) -> list[int]:
    """Indices into ``raw.class_names``: seen classes first, then unseen, each in raw order."""
    unseen = set(raw.unseen)
    seen_idx = [i for i, n in enumerate(raw.class_names) if n not in unseen]
    return seen_idx + [i for i, n in enumerate(raw.class_names) if n in unseen]


def assign_splits(raw: RawDataset, order: list[int], val_fraction: float, test_seen_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image joint class id and split name, drawn per class with a seeded RNG.

    With a fixed protocol (``raw.image_splits``: xlsa17 trainval/test_seen/test_unseen) only the
    trainval images are divided into train and val; otherwise each seen class is split
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


def write_classes(path: Path, table: ClassTable) -> None:
    """Write the class table atomically, with the domain kind and attribute names as metadata."""
    n = len(table.names)
    dim = table.domain.shape[1]
    arrays = {
        "class_id": pa.array(np.arange(n, dtype=np.int32)),
        "name": pa.array(table.names, pa.string()),
        "seen": pa.array(table.seen_mask),
        "domain": pa.FixedSizeListArray.from_arrays(
            pa.array(table.domain.astype(np.float32).ravel()), dim),
        "description": pa.array(table.descriptions, pa.string()),
    }
    meta = {b"domain_kind": table.domain_kind.encode(),
            b"attribute_names": json.dumps(table.attribute_names).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(arrays).replace_schema_metadata(meta), tmp)


def read_classes(path: Path) -> ClassTable:
    """Read and validate ``classes.parquet``."""
    table = _read(path, ["class_id", "name", "seen", "domain", "description"])
    seen = table["seen"].to_numpy(zero_copy_only=False)
    n_seen = int(seen.sum())
    if not seen[:n_seen].all():
        raise DatasetError(f"{path}: seen classes must come first in the class table")
    domain = np.stack(table["domain"].to_numpy(zero_copy_only=False)).astype(np.float32)
    if not np.isfinite(domain).all():
        bad = np.flatnonzero(~np.isfinite(domain).all(1))
        raise DatasetError(f"{path}: NaN/inf in domain vectors of classes {bad.tolist()[:10]}")
    meta = table.schema.metadata or {}
    return ClassTable(
        names=table["name"].to_pylist(), n_seen=n_seen, domain=domain,
        domain_kind=meta.get(b"domain_kind", b"unknown").decode(),
        attribute_names=json.loads(meta.get(b"attribute_names", b"[]")),
        descriptions=table["description"].to_pylist(),
    )


def write_splits(path: Path, image_id: np.ndarray, paths: list[str], class_id: np.ndarray,
                 split: np.ndarray) -> None:
    data = pa.table({"image_id": pa.array(image_id, pa.int64()), "path": pa.array(paths, pa.string()),
                     "class_id": pa.array(class_id, pa.int32()), "split": pa.array(split, pa.string())},
                    schema=SPLITS_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(data, tmp)


def read_splits(path: Path) -> SplitTable:
    """Read and validate ``splits.parquet``."""
    table = _read(path, SPLITS_SCHEMA.names)
    split = np.asarray(table["split"].to_pylist(), dtype=str)
    unknown = sorted(set(split.tolist()) - set(SPLITS))
    if unknown:
        raise DatasetError(f"{path}: unknown split names {unknown}; valid: {list(SPLITS)}")
    return SplitTable(table["image_id"].to_numpy().astype(np.int64), table["path"].to_pylist(),
                      table["class_id"].to_numpy().astype(np.int64), split)


def _read(path: Path, columns: list[str]) -> pa.Table:
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
    return table
