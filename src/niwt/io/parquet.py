"""The importance dataset: a directory of Parquet shards with one declared schema.

One row per image: ``image_id``, ``class_id``, ``split``, ``target_id`` (the class whose logit
was differentiated) and ``importance`` as a fixed-size ``list<float32>``; the layer, pooling,
target kind and channel count are file metadata. Shards are written atomically
(``part-00000.parquet``...), so a rerun after an interruption can trust every shard it finds and
compute only the missing ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from niwt.errors import InputError
from niwt.io.atomic import atomic_path


class ImportanceFileError(InputError):
    """An importance dataset that is missing, incomplete or does not match its declared schema."""


def importance_schema(channels: int, meta: dict[str, str]) -> pa.Schema:
    """Schema of an importance shard; ``meta`` (layer, pooling, target, ...) goes into metadata."""
    fields = [
        ("image_id", pa.int64()),
        ("class_id", pa.int32()),
        ("split", pa.string()),
        ("target_id", pa.int32()),
        ("importance", pa.list_(pa.float32(), channels)),
    ]
    return pa.schema(fields, metadata={k.encode(): str(v).encode() for k, v in meta.items()})


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_shard(path: Path, schema: pa.Schema, image_id: np.ndarray, class_id: np.ndarray, split: list[str],
                target_id: np.ndarray, importance: np.ndarray, row_group_size: int = 256) -> None:
    """Atomically write one shard (row groups of ``row_group_size`` images)."""
    channels = schema.field("importance").type.list_size
    if importance.shape[1] != channels:
        raise ImportanceFileError(f"{path}: importance has {importance.shape[1]} channels, schema {channels}")
    flat = pa.array(np.ascontiguousarray(importance, dtype=np.float32).ravel())
    table = pa.table([
        pa.array(image_id, pa.int64()), pa.array(class_id, pa.int32()), pa.array(split, pa.string()),
        pa.array(target_id, pa.int32()), pa.FixedSizeListArray.from_arrays(flat, channels),
    ], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


def write_manifest(directory: Path, n_shards: int, n_rows: int, meta: dict[str, str]) -> None:
    """Mark the dataset complete; readers refuse a directory without it."""
    with atomic_path(directory / "_manifest.json") as tmp:
        tmp.write_text(json.dumps({"n_shards": n_shards, "n_rows": n_rows, **meta}, indent=2, sort_keys=True))


@dataclass(frozen=True)
class Importances:
    image_id: np.ndarray  # (N,)
    class_id: np.ndarray  # (N,)
    split: np.ndarray  # (N,)
    target_id: np.ndarray  # (N,)
    values: np.ndarray  # (N, C) float32
    meta: dict[str, str]


def read_importances(directory: Path) -> Importances:
    """Read all shards of a complete importance dataset, validating the schema."""
    directory = Path(directory)
    manifest = directory / "_manifest.json"
    if not manifest.is_file():
        raise ImportanceFileError(f"{directory}: no _manifest.json; the extract stage did not finish "
                                  "(rerun `dvc repro extract`, it resumes from the shards present)")
    info = json.loads(manifest.read_text())
    parts = [directory / shard_name(i) for i in range(info["n_shards"])]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ImportanceFileError(f"{directory}: shards missing: {missing[:5]}")
    tables = [pq.read_table(p) for p in parts]
    schema = tables[0].schema
    for part, table in zip(parts, tables, strict=True):
        if not table.schema.equals(schema, check_metadata=False) or "importance" not in table.column_names:
            raise ImportanceFileError(f"{part}: schema differs from {parts[0].name}")
    table = pa.concat_tables(tables)
    channels = schema.field("importance").type.list_size
    values = table["importance"].combine_chunks().flatten().to_numpy().reshape(-1, channels)
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    return Importances(table["image_id"].to_numpy(), table["class_id"].to_numpy(),
                       np.asarray(table["split"].to_pylist(), dtype=str), table["target_id"].to_numpy(),
                       values, meta)
