"""Atomic writes, importance shards and the class/split tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from niwt.data.raw import DatasetError
from niwt.data.tables import (
    SPLITS_SCHEMA,
    ClassTable,
    read_classes,
    read_splits,
    write_classes,
    write_splits,
)
from niwt.io.atomic import atomic_files, atomic_path, write_json
from niwt.io.parquet import (
    ImportanceFileError,
    importance_schema,
    read_importances,
    shard_name,
    write_manifest,
    write_shard,
)

# ---------------------------------------------------------------- atomic writes


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent != target.parent and tmp.name == "out.txt"
        tmp.write_text("first")
        assert not target.exists()  # nothing visible before the block succeeds
    assert target.read_text() == "first"
    with atomic_path(target) as tmp:
        tmp.write_text("second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_path_keeps_old_file_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind
    missing = tmp_path / "never.txt"
    with pytest.raises(ValueError), atomic_path(missing) as tmp:
        tmp.write_text("x")
        raise ValueError
    assert not missing.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_directories(tmp_path: Path) -> None:
    target = tmp_path / "shards"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from niwt.io.atomic import atomic_files, atomic_path
out = Path(sys.argv[1])
with atomic_path(out / "model.pt") as tmp, atomic_files(out / "plots") as staged:
    tmp.write_bytes(b"half")
    (staged / "a.png").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")
def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the next write of the same target removes what the dead process
    left (inside a DVC output directory it would otherwise become part of the output), and never
    touches the temporaries of a live writer."""
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    live = [p for p in tmp_path.iterdir() if p.name.startswith(".model.pt.")]
    staged = [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".staged.")]
    assert len(live) == 1 and len(staged) == 1
    # a live writer's temporaries survive another writer's start
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"other")
    assert live[0].exists()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)  # reaped: its pid no longer exists
    child.stdout.close()
    assert live[0].exists()  # SIGKILL ran no cleanup
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"full")
    with atomic_files(tmp_path / "plots") as out:
        (out / "a.png").write_bytes(b"full")
    assert not live[0].exists() and not staged[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "plots"]
    assert (tmp_path / "model.pt").read_bytes() == b"full"
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["a.png"]
    # another host's temporary on a shared filesystem: its pid means nothing here, so it stays
    foreign = tmp_path / f".model.pt.otherhost-{child.pid}.abcdefgh.tmp"
    foreign.mkdir()
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"again")
    assert foreign.is_dir()


def test_write_json_sorted_and_atomic(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "m.json").read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}


# ---------------------------------------------------------------- importance shards

META = {"layer": "body.block4", "pooling": "sum", "target": "ground_truth", "channels": 3}


def _write_dataset(directory: Path, rows: int = 5, split_at: int = 3) -> np.ndarray:
    schema = importance_schema(3, META)
    values = (np.arange(rows * 3, dtype=np.float64).reshape(rows, 3) / 7).astype(np.float64)
    ids = np.arange(100, 100 + rows)
    cls = np.array([0, 1, 2, 0, 1][:rows])
    splits = ["train", "train", "val", "train", "val"][:rows]
    write_shard(directory / shard_name(0), schema, ids[:split_at], cls[:split_at], splits[:split_at],
                cls[:split_at], values[:split_at])
    write_shard(directory / shard_name(1), schema, ids[split_at:], cls[split_at:], splits[split_at:],
                cls[split_at:] + 1, values[split_at:], row_group_size=1)
    write_manifest(directory, 2, rows, {k: str(v) for k, v in META.items()})
    return values


def test_importance_schema() -> None:
    schema = importance_schema(3, META)
    assert schema.names == ["image_id", "class_id", "split", "target_id", "importance"]
    assert schema.field("importance").type == pa.list_(pa.float32(), 3)
    assert schema.field("image_id").type == pa.int64() and schema.field("class_id").type == pa.int32()
    assert schema.metadata[b"layer"] == b"body.block4" and schema.metadata[b"channels"] == b"3"
    assert shard_name(7) == "part-00007.parquet"


def test_importance_round_trip(tmp_path: Path) -> None:
    values = _write_dataset(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_manifest.json", "part-00000.parquet",
                                                         "part-00001.parquet"]
    on_disk = pq.read_schema(tmp_path / "part-00001.parquet")
    assert on_disk.field("importance").type == pa.list_(pa.float32(), 3)
    assert on_disk.metadata[b"pooling"] == b"sum"
    assert pq.ParquetFile(tmp_path / "part-00001.parquet").metadata.num_row_groups == 2
    imp = read_importances(tmp_path)
    assert imp.values.dtype == np.float32 and imp.values.shape == (5, 3)
    np.testing.assert_array_equal(imp.values, values.astype(np.float32))
    np.testing.assert_array_equal(imp.image_id, np.arange(100, 105))
    np.testing.assert_array_equal(imp.class_id, [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(imp.target_id, [0, 1, 2, 1, 2])
    assert imp.split.tolist() == ["train", "train", "val", "train", "val"]
    assert imp.meta == {"layer": "body.block4", "pooling": "sum", "target": "ground_truth", "channels": "3"}
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["n_shards"] == 2 and manifest["n_rows"] == 5 and manifest["layer"] == "body.block4"


def test_importance_manifest_required(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "_manifest.json").unlink()
    with pytest.raises(ImportanceFileError, match="no _manifest.json"):
        read_importances(tmp_path)
    with pytest.raises(ImportanceFileError, match="no _manifest.json"):
        read_importances(tmp_path / "does-not-exist")


def test_importance_missing_shard(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "part-00001.parquet").unlink()
    with pytest.raises(ImportanceFileError, match=r"shards missing: \['part-00001.parquet'\]"):
        read_importances(tmp_path)


def test_importance_schema_mismatch_and_wrong_width(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    other = importance_schema(4, META)
    write_shard(tmp_path / shard_name(1), other, np.array([1]), np.array([0]), ["train"], np.array([0]),
                np.ones((1, 4)))
    with pytest.raises(ImportanceFileError, match="part-00001.parquet: schema differs from part-00000"):
        read_importances(tmp_path)
    with pytest.raises(ImportanceFileError, match="importance has 2 channels, schema 3"):
        write_shard(tmp_path / "x.parquet", importance_schema(3, META), np.array([1]), np.array([0]),
                    ["train"], np.array([0]), np.ones((1, 2)))
    assert not (tmp_path / "x.parquet").exists()


# ---------------------------------------------------------------- classes / splits


def _classes(domain: np.ndarray | None = None) -> ClassTable:
    dom = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]], dtype=np.float32) if domain is None else domain
    return ClassTable(names=["cat", "dog", "zebra"], n_seen=2, domain=dom, domain_kind="attributes",
                      attribute_names=["furry", "striped"], descriptions=["a cat", "a dog", "a zebra"])


def test_classes_round_trip(tmp_path: Path) -> None:
    table = _classes()
    write_classes(tmp_path / "classes.parquet", table)
    got = read_classes(tmp_path / "classes.parquet")
    assert got.names == table.names and got.n_seen == 2 and got.n_unseen == 1
    np.testing.assert_array_equal(got.domain, table.domain)
    assert got.domain.dtype == np.float32
    assert got.domain_kind == "attributes" and got.attribute_names == ["furry", "striped"]
    assert got.descriptions == table.descriptions
    np.testing.assert_array_equal(got.seen_mask, [True, True, False])
    raw = pq.read_table(tmp_path / "classes.parquet")
    assert raw["class_id"].to_pylist() == [0, 1, 2] and "domain" not in raw.column_names
    raw = pq.read_table(tmp_path / "domain.parquet")  # the vectors beside it: what data.domain changes
    assert raw["class_id"].to_pylist() == [0, 1, 2]
    assert raw.schema.field("domain").type == pa.list_(pa.float32(), 2)
    assert read_classes(tmp_path / "classes.parquet", domain=False).domain.shape == (3, 0)


def test_classes_nan_domain(tmp_path: Path) -> None:
    dom = np.array([[1.0, 0.0], [np.nan, 0.5], [0.0, np.inf]], dtype=np.float32)
    path = tmp_path / "classes.parquet"
    write_classes(path, _classes(dom))
    with pytest.raises(DatasetError, match=r"domain\.parquet: NaN/inf in domain vectors of classes \[1, 2\]"):
        read_classes(path)


def test_classes_seen_first(tmp_path: Path) -> None:
    path = tmp_path / "classes.parquet"
    write_classes(path, _classes())
    table = pq.read_table(path)
    flipped = table.set_column(2, "seen", pa.array([False, True, True]))
    pq.write_table(flipped, path)
    with pytest.raises(DatasetError, match="seen classes must come first"):
        read_classes(path)


def test_splits_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "splits.parquet"
    split = np.array(["train", "val", "test_seen", "test_unseen", "train"])
    write_splits(path, np.arange(5), [f"img{i}.jpg" for i in range(5)], np.array([0, 1, 0, 2, 1]), split)
    assert pq.read_schema(path).equals(SPLITS_SCHEMA, check_metadata=False)
    got = read_splits(path)
    assert len(got) == 5 and got.image_id.dtype == np.int64 and got.class_id.dtype == np.int64
    np.testing.assert_array_equal(got.class_id, [0, 1, 0, 2, 1])
    assert got.split.tolist() == split.tolist()
    train = got.select("train", "val")
    assert train.path == ["img0.jpg", "img1.jpg", "img4.jpg"]
    np.testing.assert_array_equal(train.image_id, [0, 1, 4])


def test_splits_unknown_split_name(tmp_path: Path) -> None:
    path = tmp_path / "splits.parquet"
    write_splits(path, np.arange(2), ["a", "b"], np.array([0, 0]), np.array(["train", "training"]))
    with pytest.raises(DatasetError, match=r"unknown split names \['training'\]; valid: \['train', 'val'"):
        read_splits(path)


def test_missing_and_unreadable_tables(tmp_path: Path) -> None:
    for reader, name in ((read_classes, "classes.parquet"), (read_splits, "splits.parquet")):
        path = tmp_path / name
        with pytest.raises(DatasetError, match=rf"{path}: not found; run the prepare stage"):
            reader(path)
        path.write_text("not parquet")
        with pytest.raises(DatasetError, match=rf"{path}: not a readable Parquet file"):
            reader(path)
    pq.write_table(pa.table({"image_id": [1]}), tmp_path / "thin.parquet")
    with pytest.raises(DatasetError, match=r"thin\.parquet: missing columns \['path', 'class_id', 'split'\]"):
        read_splits(tmp_path / "thin.parquet")


# ----------------------------------------------------------- image paths relative to their root


def _project_with_splits(root: Path, table_dir: Path, image_root: tuple[str, str]) -> list[str]:
    from niwt.data.tables import write_splits

    (root / "dvc.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    table_dir.mkdir(parents=True, exist_ok=True)
    rel = ["cub/CUB_200_2011/images/a/1.jpg", "cub/CUB_200_2011/images/b/2.jpg"]
    write_splits(table_dir / "splits.parquet", np.arange(2), rel, np.zeros(2, dtype=np.int64),
                 np.array(["train", "val"]), image_root=image_root)
    return rel


def test_split_paths_resolve_against_the_project_not_the_working_directory(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from niwt.data.tables import read_splits

    project = tmp_path / "proj"
    rel = _project_with_splits(project, project / "data" / "prepared", ("project", "data/raw"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    paths = read_splits(project / "data" / "prepared" / "splits.parquet").path
    assert paths == [str(project / "data" / "raw" / r) for r in rel]


def test_split_paths_in_a_dvc_experiment_copy_resolve_to_the_workspace(tmp_path: Path) -> None:
    """`dvc exp run --temp/--queue` work in <root>/.dvc/tmp/exps/<tmp>/, which lacks the git-ignored
    data/raw: the table there must name the workspace's images."""
    from niwt.data.tables import read_splits

    project = tmp_path / "proj"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12" / "data" / "prepared"
    rel = _project_with_splits(project, copy, ("project", "data/raw"))
    assert read_splits(copy / "splits.parquet").path == [str(project / "data" / "raw" / r) for r in rel]


def test_generated_images_resolve_against_the_prepared_directory(tmp_path: Path) -> None:
    from niwt.data.tables import read_splits

    table_dir = tmp_path / "proj" / "data" / "prepared"
    rel = _project_with_splits(tmp_path / "proj", table_dir, ("prepared", "raw"))
    assert read_splits(table_dir / "splits.parquet").path == [str(table_dir / "raw" / r) for r in rel]


def test_relative_paths_keep_outside_files_absolute(tmp_path: Path) -> None:
    from niwt.data.tables import relative_paths

    root = tmp_path / "raw"
    assert relative_paths([str(root / "a" / "b.jpg"), "/elsewhere/c.jpg"], root) == ["a/b.jpg", "/elsewhere/c.jpg"]
