"""Precomputed image features as rows of a split table (``data.name: xlsa17``).

``prepare`` writes the features once, as an (N, D) float32 ``features.npy`` beside the split table
(:func:`niwt.data.xlsa17.load_features` reads Xian et al.'s ``res101.mat``). Each row of
``splits.parquet`` names its feature row as ``features.npy#<row>`` instead of an image file; every
loader (:func:`niwt.data.images.make_loader`) reads those rows from a read-only memory map, so no stage
copies the whole matrix (AWA2: 37,322 x 2048, 306 MB); the network on top is ``model.arch: mlp``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from niwt.data.raw import DatasetError

FEATURES_FILE = "features.npy"
# A feature row: a file named features.npy, '#', the row. Image files are never called *.npy#<digits>.
_ROW = re.compile(r"(?P<file>.*(?:^|[/\\])" + re.escape(FEATURES_FILE) + r")#(?P<row>[0-9]+)")
# How splits.parquet stores a row: the file's bare name, beside the table (never a path elsewhere).
_STORED = re.compile(re.escape(FEATURES_FILE) + r"#(?P<row>[0-9]+)")
_SHOW = 5


def row_path(row: int) -> str:
    """How ``splits.parquet`` names feature row ``row`` (relative to the prepared directory)."""
    return f"{FEATURES_FILE}#{int(row)}"


def parse_row(path: str) -> tuple[str, int] | None:
    """``(features file, row)`` of a feature-row path, or None for an image path."""
    match = _ROW.fullmatch(str(path))
    return (match["file"], int(match["row"])) if match else None


def resolve_stored_rows(paths: list[str], table: Path) -> list[str] | None:
    """The feature rows of a split table as read from disk, resolved against the table's own directory;
    None when the table names images. A row must be stored exactly as ``features.npy#<row>``: anything
    else that names the feature file (another directory, ``..``) is refused, so a table can never
    make a loader read a file outside its prepared directory."""
    if not paths or parse_row(paths[0]) is None:
        return None
    base = str(Path(table).absolute().parent / FEATURES_FILE)
    out = []
    for i, p in enumerate(paths):
        match = _STORED.fullmatch(p)
        if match is None:
            raise DatasetError(f"{table}: row {i} path {p!r} is not a feature row {FEATURES_FILE}#<row> beside the "
                               "table (tables of feature rows name nothing else); rerun prepare")
        out.append(f"{base}#{match['row']}")
    return out


def is_feature_table(paths: Sequence[str]) -> bool:
    """Whether a split table's paths name feature rows rather than image files (one kind per table:
    a mix is an error)."""
    if not len(paths) or parse_row(paths[0]) is None:
        return False
    mixed = next((p for p in paths if parse_row(p) is None), None)
    if mixed is not None:
        raise DatasetError(f"{mixed}: an image path in a table of feature rows ({FEATURES_FILE}#<row>)")
    return True


def input_files(paths: Sequence[str]) -> list[str]:
    """The files a table's paths read: the image files, or each row's feature file."""
    return [row[0] if (row := parse_row(p)) else p for p in paths]


def features_digest(prepared: Path) -> str:
    """sha256 of ``features.npy`` in the prepared directory (empty when the data are images): what a
    training run's resume key must include, since the split table only names rows."""
    path = Path(prepared) / FEATURES_FILE
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_features(path: Path, features: np.ndarray) -> None:
    """Save the (N, D) float32 matrix as ``.npy`` (memory-mappable, no pickle)."""
    np.save(path, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)


# ---------------------------------------------------------------------------------------- loading


@dataclass
class FeatureStore:
    """The feature rows of one ``features.npy``, opened read-only as a memory map (per process: loader
    workers reopen it, the array is never pickled)."""

    file: str
    _array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"file": self.file, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                arr = np.load(self.file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DatasetError(f"{self.file}: missing or damaged feature matrix ({err}); rerun prepare") from err
            if arr.ndim != 2 or arr.dtype != np.float32:
                raise DatasetError(f"{self.file}: expected an (N, D) float32 matrix, found {arr.shape} {arr.dtype}; "
                                   "rerun prepare")
            self._array = arr
        return self._array

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        """The row of each feature-row path (all from this store's file)."""
        out = np.empty(len(paths), dtype=np.int64)
        n = self.array.shape[0]
        for i, p in enumerate(paths):
            parsed = parse_row(p)
            if parsed is None or parsed[0] != self.file:
                raise DatasetError(f"{p}: not a row of {self.file}")
            if parsed[1] >= n:
                raise DatasetError(f"{p}: row {parsed[1]} beyond the {n} rows of {self.file}; rerun prepare")
            out[i] = parsed[1]
        return out

    def dataset(self, paths: Sequence[str], labels: np.ndarray, transform: object = None, image_size: int = 0,
                train: bool = False) -> FeatureRows:
        """The :class:`niwt.data.images.ImageSource` interface; features take no image transform."""
        return FeatureRows(self, self.rows(paths), labels)


def feature_store(paths: Sequence[str]) -> FeatureStore | None:
    """The store behind a split table's paths, or None when they name image files."""
    if not is_feature_table(paths):
        return None
    files = {f for f, _ in map(parse_row_strict, paths)}
    if len(files) != 1:
        raise DatasetError(f"feature rows from {len(files)} files ({sorted(files)[:_SHOW]}); one table reads one "
                           f"{FEATURES_FILE}")
    return FeatureStore(files.pop())


def feature_width(paths: Sequence[str]) -> int | None:
    """The width of the feature vectors a split table names, or None when it names images."""
    store = feature_store(paths)
    return None if store is None else store.dim


def parse_row_strict(path: str) -> tuple[str, int]:
    parsed = parse_row(path)
    if parsed is None:
        raise DatasetError(f"{path}: an image path in a table of feature rows ({FEATURES_FILE}#<row>)")
    return parsed


class FeatureRows(Dataset):
    """(feature vector, label, index) per table row, fetched a batch at a time (``__getitems__``)."""

    def __init__(self, store: FeatureStore, rows: np.ndarray, labels: np.ndarray) -> None:
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y, _ = self.__getitems__([i])
        return x[0], y[0], i

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = torch.from_numpy(np.array(self.store.array[self.rows[np.asarray(indices, dtype=np.int64)]]))
        return x, self.labels[idx], idx
