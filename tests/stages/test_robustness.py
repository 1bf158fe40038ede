"""Issue 7: bad inputs fail fast and clearly, and nothing computed before is lost.

Every case runs a stage through ``niwt.cli.main`` exactly as ``dvc.yaml`` types it (tracking off)
and asserts exit status 2, a stderr message naming the file (and line, row or class) and the
problem, that the stage left no output and no temp file behind, and that the outputs of earlier
stages (one tiny project, prepared and trained once for this module) are byte-for-byte untouched.

Where the input comes from ``prepare`` (images, attribute files, class lists) the synthetic
generator is wrapped so that the freshly generated AWA2-format tree is damaged before it is read:
``prepare`` regenerates its data on every run, so damaging an earlier run's copy would test nothing.
Where the input is a prepared table (``classes.parquet``, ``splits.parquet``), the module's tables
are copied and edited, and the later stages are run on the copy.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from niwt.cli import main  # noqa: E402
from niwt.data.tables import (  # noqa: E402
    ClassTable,
    SplitTable,
    read_classes,
    read_splits,
    write_classes,
    write_splits,
)
from niwt.io.parquet import read_importances  # noqa: E402
from niwt.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from niwt.models.networks import ModelError, build_model  # noqa: E402
from tiny_project import REPO, TINY, TINY_RUNTIME, merge  # noqa: E402

# Only the two fast peers: injection itself is not under test here.
FAST = {"inject": {"methods": ["regression", "regression_rescaled"]}}


def write_params(path: Path, overrides: dict | None = None) -> Path:
    params = merge(merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), FAST), overrides or {})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@dataclasses.dataclass(frozen=True)
class Project:
    root: Path
    params: Path
    data: Path
    model: Path
    importances: Path
    mapping: Path
    injected: Path
    validation: Path


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """prepare -> finetune -> validate -> extract -> fit_mapping -> inject once, on the tiny config."""
    root = tmp_path_factory.mktemp("robust")
    p = Project(root, write_params(root / "params.yaml"), root / "data/prepared", root / "models/finetuned.pt",
                root / "data/importances", root / "models/mapping.pt", root / "models/injected",
                root / "models/validation.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIWT_TRACKING", "off")
        mp.setenv("NIWT_PROGRESS", "0")
        for argv in (["prepare", "--out", p.data],
                     ["finetune", "--data", p.data, "--out", p.model, "--history", root / "plots/ft.csv"],
                     ["finetune_validation", "--data", p.data, "--out", root / "models/validation_backbone.pt"],
                     ["validate", "--data", p.data, "--backbone", root / "models/validation_backbone.pt",
                      "--out", p.validation],
                     ["extract", "--data", p.data, "--model", p.model, "--out", p.importances],
                     ["fit_mapping", "--data", p.data, "--importances", p.importances, "--validation", p.validation,
                      "--out", p.mapping, "--inverse-out", root / "models/inverse_map.pt",
                      "--history", root / "plots/map.csv"],
                     ["inject", "--data", p.data, "--model", p.model, "--mapping", p.mapping,
                      "--validation", p.validation, "--out", p.injected]):
            assert main([str(a) for a in argv] + ["--params", str(p.params)]) == 0, argv[0]
    return p


def snapshot(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def temp_leftovers(root: Path) -> list[str]:
    """Temporaries of ``atomic_path`` / ``atomic_files`` (``.<name>.<random>.tmp``) anywhere under root."""
    return [str(f) for f in root.rglob(".*.tmp")]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIWT_TRACKING", "off")
    monkeypatch.setenv("NIWT_PROGRESS", "0")
    for key, value in TINY_RUNTIME.items():  # several importance shards, small batches
        monkeypatch.setenv(key, value)


@pytest.fixture
def untouched(proj: Project):
    """Asserts, after the test, that the module's project (earlier stages' outputs) is unchanged."""
    before = snapshot(proj.root)
    yield
    assert snapshot(proj.root) == before, "a failing stage changed the outputs of earlier stages"
    assert temp_leftovers(proj.root) == []


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def stage_argv(stage: str, proj: Project, out: Path, params: Path, data: Path | None = None,
               model: Path | None = None, mapping: Path | None = None, injected: Path | None = None) -> list:
    """The dvc.yaml command of ``stage``, inputs from the module project (or overrides), outputs in ``out``."""
    data = data or proj.data
    model = model or proj.model
    args = {
        "finetune": ["--data", data, "--out", out / "finetuned.pt", "--history", out / "finetune.csv"],
        "extract": ["--data", data, "--model", model, "--out", out / "importances"],
        "fit_mapping": ["--data", data, "--importances", proj.importances, "--validation", proj.validation,
                        "--out", out / "mapping.pt", "--inverse-out", out / "inverse_map.pt",
                        "--history", out / "mapping.csv"],
        "inject": ["--data", data, "--model", model, "--mapping", mapping or proj.mapping,
                   "--validation", proj.validation, "--out", out / "injected"],
        "evaluate": ["--data", data, "--injected", injected or proj.injected, "--validation", proj.validation,
                     "--plots", out / "plots", "--headline", out / "gzsl"],
    }[stage]
    return [stage, *args, "--params", params, "--stats", out / "metrics.json"]


def assert_failed_cleanly(rc: int, err: str, pattern: str, out: Path) -> None:
    assert rc == 2, err
    assert re.search(pattern, err, re.S), f"stderr does not match {pattern!r}:\n{err}"
    assert "Traceback" not in err
    left = sorted(str(f.relative_to(out)) for f in out.rglob("*")) if out.exists() else []
    assert left == [], f"partial outputs left behind: {left}"


# ------------------------------------------------------------------ prepare: damaged raw data


def _classes(raw: Path, listing: str) -> list[str]:
    return [line.strip() for line in (raw / listing).read_text().splitlines() if line.strip()]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def damage_truncated_image(raw: Path) -> str:
    seen = _classes(raw, "trainvalclasses.txt")[0]
    victim = sorted((raw / "JPEGImages" / seen).glob("*.jpg"))[4]
    _truncate(victim)
    return (r"1 unreadable images \(set data\.bad_images: skip to drop them\):\n"
            rf"  \S*prepared/raw/JPEGImages/{re.escape(seen)}/{re.escape(victim.name)}: corrupt")


def damage_attribute_rows(raw: Path) -> str:
    matrix = raw / "predicate-matrix-continuous.txt"
    lines = matrix.read_text().splitlines()
    matrix.write_text("\n".join(lines + lines[:1]) + "\n")
    return rf"predicate-matrix-continuous\.txt: {len(lines) + 1} rows but classes\.txt lists {len(lines)} classes"


def damage_nan_attribute(raw: Path) -> str:
    matrix = raw / "predicate-matrix-continuous.txt"
    lines = matrix.read_text().splitlines()
    lines[2] = " ".join(["nan", *lines[2].split()[1:]])
    matrix.write_text("\n".join(lines) + "\n")
    return r"predicate-matrix-continuous\.txt:3: NaN or infinite value 'nan'"


def damage_overlap(raw: Path) -> str:
    seen = _classes(raw, "trainvalclasses.txt")[1]
    with (raw / "testclasses.txt").open("a") as fh:
        fh.write(seen + "\n")
    return rf"testclasses\.txt: classes also in trainvalclasses\.txt \(seen and unseen overlap\): \['{seen}'\]"


def damage_empty_class(raw: Path) -> str:
    unseen = _classes(raw, "testclasses.txt")[0]
    for jpg in (raw / "JPEGImages" / unseen).glob("*.jpg"):
        jpg.unlink()
    return rf"JPEGImages/{re.escape(unseen)}: class '{unseen}' has no \.jpg images"


def damage_whole_class_unreadable(raw: Path) -> str:
    """With ``bad_images: skip`` a class whose every image is corrupt would silently vanish."""
    seen = _classes(raw, "trainvalclasses.txt")[2]
    for jpg in (raw / "JPEGImages" / seen).glob("*.jpg"):
        _truncate(jpg)
    return rf"synthetic: classes without a readable image: \['{seen}'\]"


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (1.6 Gpx: a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def damage_bomb(raw: Path) -> str:
    seen = _classes(raw, "trainvalclasses.txt")[0]
    victim = sorted((raw / "JPEGImages" / seen).glob("*.jpg"))[3]
    victim.write_bytes(bomb_png())
    return (r"1 unreadable images \(set data\.bad_images: skip to drop them\):\n"
            rf"  \S*/{re.escape(victim.name)}: corrupt \(decompression bomb: Image size \(1600000000 pixels\)")


def damage_zero_attribute_row(raw: Path) -> str:
    matrix = raw / "predicate-matrix-continuous.txt"
    lines = matrix.read_text().splitlines()
    lines[4] = " ".join("0.0" for _ in lines[4].split())
    matrix.write_text("\n".join(lines) + "\n")
    name = (raw / "classes.txt").read_text().splitlines()[4].split()[-1]  # "<id>\t<name>", same row order
    return rf"synthetic: all-zero attributes vectors for classes \['{re.escape(name)}'\]: nothing describes them"


PREPARE_CASES = {
    "truncated image": (damage_truncated_image, "fail"),
    "attribute rows do not match the class list": (damage_attribute_rows, "fail"),
    "NaN in attribute matrix": (damage_nan_attribute, "fail"),
    "unseen classes overlap seen ones": (damage_overlap, "fail"),
    "class without images": (damage_empty_class, "fail"),
    "every image of a class unreadable, skip": (damage_whole_class_unreadable, "skip"),
    "decompression bomb": (damage_bomb, "fail"),  # issue 15: before, a traceback
    "all-zero attribute row": (damage_zero_attribute_row, "fail"),  # issue 15: before, accepted in silence
}


def _wrap_generator(monkeypatch: pytest.MonkeyPatch, damage: Callable[[Path], str]) -> dict[str, str]:
    import niwt.data.synthetic as synthetic

    real, found = synthetic.generate_synthetic, {}

    def generate_then_damage(root, params, seed, progress=True):
        real(root, params, seed, progress)
        found["pattern"] = damage(Path(root))

    monkeypatch.setattr(synthetic, "generate_synthetic", generate_then_damage)
    return found


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_rejects_damaged_raw_data(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    damage, policy = PREPARE_CASES[case]
    found = _wrap_generator(monkeypatch, damage)
    params = write_params(tmp_path / "params.yaml", {"data": {"bad_images": policy}})
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "classes.parquet").write_text("the previous, good output")  # must survive the failure
    rc, err = cli(capsys, "prepare", "--out", out, "--params", params, "--stats", tmp_path / "m.json")
    assert rc == 2, err
    assert re.search(found["pattern"], err), f"stderr does not match {found['pattern']!r}:\n{err}"
    assert [f.name for f in out.iterdir()] == ["classes.parquet"]
    assert (out / "classes.parquet").read_text() == "the previous, good output"
    assert temp_leftovers(tmp_path) == [] and not (tmp_path / "m.json").exists()


def test_prepare_skip_drops_and_counts_bad_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    _wrap_generator(monkeypatch, damage_truncated_image)
    params = write_params(tmp_path / "params.yaml", {"data": {"bad_images": "skip"}})
    rc, err = cli(capsys, "prepare", "--out", tmp_path / "prepared", "--params", params,
                  "--stats", tmp_path / "m.json")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_bad_images"] == 1
    splits = read_splits(tmp_path / "prepared/splits.parquet")
    assert len(splits) == 12 * 12 - 1
    assert all(Path(p).is_file() for p in splits.path)


def test_prepare_skip_drops_a_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Issue 15: before, a bomb was a traceback even with ``bad_images: skip``."""
    _wrap_generator(monkeypatch, damage_bomb)
    params = write_params(tmp_path / "params.yaml", {"data": {"bad_images": "skip"}})
    rc, err = cli(capsys, "prepare", "--out", tmp_path / "prepared", "--params", params,
                  "--stats", tmp_path / "m.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["n_bad_images"] == 1


# ------------------------------------------------------------- later stages: damaged tables


def copy_tables(proj: Project, data: Path) -> Path:
    """The module's two tables in ``data``; the split table names the module's images by absolute path
    (its own paths are relative to the prepared directory, which holds the generated images)."""
    data.mkdir()
    shutil.copy(proj.data / "classes.parquet", data / "classes.parquet")
    s = read_splits(proj.data / "splits.parquet")
    write_splits(data / "splits.parquet", s.image_id, s.path, s.class_id, s.split)
    return data


def _edit_classes(fn: Callable[[ClassTable], ClassTable]) -> Callable[[Path, Path], None]:
    def apply(data: Path, tmp: Path) -> None:
        write_classes(data / "classes.parquet", fn(read_classes(data / "classes.parquet")))
    return apply


def _edit_splits(fn: Callable[[SplitTable, Path], SplitTable]) -> Callable[[Path, Path], None]:
    def apply(data: Path, tmp: Path) -> None:
        s = fn(read_splits(data / "splits.parquet"), tmp)
        write_splits(data / "splits.parquet", s.image_id, s.path, s.class_id, s.split)
    return apply


def _nan_domain(c: ClassTable) -> ClassTable:
    domain = c.domain.copy()
    domain[c.n_seen + 1, 3] = np.nan
    return dataclasses.replace(c, domain=domain)


def _missing_images(s: SplitTable, tmp: Path) -> SplitTable:
    paths = list(s.path)
    for split in ("train", "val", "test_unseen"):  # one in a split each stage reads
        paths[int(np.flatnonzero(s.split == split)[0])] = str(tmp / f"gone_{split}.jpg")
    return dataclasses.replace(s, path=paths)


def _unseen_in_train(s: SplitTable, tmp: Path) -> SplitTable:
    ids = s.class_id.copy()
    ids[np.flatnonzero(s.split == "train")[0]] = 10  # an unseen class (9 seen)
    return dataclasses.replace(s, class_id=ids)


def _unknown_class(s: SplitTable, tmp: Path) -> SplitTable:
    ids = s.class_id.copy()
    ids[5] = 99
    return dataclasses.replace(s, class_id=ids)


def _no_train_images(s: SplitTable, tmp: Path) -> SplitTable:
    keep = ~((s.class_id == 4) & (s.split == "train"))
    return SplitTable(s.image_id[keep], [p for p, k in zip(s.path, keep, strict=True) if k], s.class_id[keep],
                      s.split[keep])


def _names(proj: Project) -> list[str]:
    return read_classes(proj.data / "classes.parquet").names


# name -> (edit, stderr pattern given the class names, stages that must refuse it)
ALL = ("finetune", "extract", "fit_mapping", "inject", "evaluate")
WITH_SPLITS = ("finetune", "extract", "inject", "evaluate")
TABLE_CASES = {
    "NaN in domain vectors": (
        _edit_classes(_nan_domain),
        lambda n: rf"classes\.parquet: NaN/inf in domain vectors of classes \[10\] \(\['{n[10]}'\]\)", ALL),
    "class both seen and unseen": (
        _edit_classes(lambda c: dataclasses.replace(c, names=c.names[:-1] + [c.names[0]])),
        lambda n: rf"classes\.parquet: class names must be unique; \['{n[0]}'\] appear more than once", ALL),
    "attribute names do not match the domain vectors": (
        _edit_classes(lambda c: dataclasses.replace(c, attribute_names=c.attribute_names[:-1])),
        lambda n: r"classes\.parquet: 15 attribute names for 16-dimensional domain vectors", ALL),
    "files named in the split are missing": (
        _edit_splits(_missing_images),
        lambda n: r"splits\.parquet: [12] of \d+ image files named there are missing, e\.g\. image_id \d+: "
                  r"\S+/gone_(train|val|test_unseen)\.jpg", ("finetune", "extract", "evaluate")),
    "unseen class image in the train split": (
        _edit_splits(_unseen_in_train),
        lambda n: rf"splits\.parquet: image_id \d+ \(\S+\.jpg\) of unseen class '{n[10]}' is in split 'train'",
        WITH_SPLITS),
    "class id not in the class list": (
        _edit_splits(_unknown_class),
        lambda n: r"splits\.parquet: image_id \d+ \(\S+\.jpg\) has class_id 99, but the class table has 12 classes",
        WITH_SPLITS),
    "seen class without train images": (
        _edit_splits(_no_train_images),
        lambda n: rf"splits\.parquet: seen classes without train images: \['{n[4]}'\]", WITH_SPLITS),
}
TABLE_PARAMS = [(case, stage) for case, (_, _, stages) in TABLE_CASES.items() for stage in stages]


@pytest.mark.parametrize(("case", "stage"), TABLE_PARAMS, ids=[f"{s}-{c}" for c, s in TABLE_PARAMS])
def test_stage_rejects_bad_tables(case: str, stage: str, proj: Project, tmp_path: Path,
                                  capsys: pytest.CaptureFixture, untouched: None) -> None:
    edit, pattern, _ = TABLE_CASES[case]
    data = copy_tables(proj, tmp_path / "prepared")
    edit(data, tmp_path)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv(stage, proj, out, proj.params, data=data))
    assert_failed_cleanly(rc, err, pattern(_names(proj)), out)


def test_inject_checks_images_only_for_methods_that_read_them(proj: Project, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture, untouched: None) -> None:
    """The registry says which methods read images (NIWT's pool, ESZSL's features): with one of
    them, missing images fail before any work; the image-free peers run without them."""
    data = copy_tables(proj, tmp_path / "prepared")
    _edit_splits(_missing_images)(data, tmp_path)
    out = tmp_path / "out"
    niwt = write_params(tmp_path / "niwt.yaml", {"inject": {"methods": ["niwt"]}})
    rc, err = cli(capsys, *stage_argv("inject", proj, out, niwt, data=data))
    assert_failed_cleanly(rc, err, r"splits\.parquet: [12] of \d+ image files named there are missing", out)
    rc, err = cli(capsys, *stage_argv("inject", proj, out, proj.params, data=data))  # ridge only
    assert rc == 0, err


def test_truncated_image_in_split_fails_training_naming_it(proj: Project, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture, untouched: None) -> None:
    """An image damaged after prepare (which decodes every image) fails finetune with its path;
    no checkpoint is written. Existence is checked up front; decoding happens when it is read."""
    data = tmp_path / "prepared"
    data.mkdir()
    shutil.copy(proj.data / "classes.parquet", data / "classes.parquet")
    s = read_splits(proj.data / "splits.parquet")
    i = int(np.flatnonzero(s.split == "train")[0])
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(Path(s.path[i]).read_bytes()[:200])
    write_splits(data / "splits.parquet", s.image_id, s.path[:i] + [str(bad)] + s.path[i + 1:], s.class_id, s.split)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, proj.params, data=data))
    assert rc == 2 and re.search(rf"{re.escape(str(bad))}: cannot read image \(.*truncated.*\); it changed after "
                                 r"prepare", err, re.I), err
    assert not (out / "finetuned.pt").exists() and not (out / "finetune.csv").exists()
    assert temp_leftovers(tmp_path) == []


# ----------------------------------------------------------------- params and model choices


def test_unknown_layer_lists_valid_layers(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          untouched: None) -> None:
    params = write_params(tmp_path / "params.yaml", {"extract": {"layer": "body.block9"}})
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("extract", proj, out, params))
    assert_failed_cleanly(rc, err, r"unknown importance layer 'body\.block9'; valid layers: body\.block1\.conv, "
                                   r".*body\.block4, body\.pool4", out)


PARAM_CASES = {
    "unknown section": ({"finetuen": {"epochs": 2}}, r"params\.yaml: unknown key 'finetuen'; valid keys: \['base'"),
    "unknown key": ({"finetune": {"epoch": 2}},
                    r"params\.yaml\.finetune: unknown key 'epoch'; valid keys: \[.*'epochs'"),
    "nested unknown key": ({"data": {"synthetic": {"n_clases": 5}}},
                           r"params\.yaml\.data\.synthetic: unknown key 'n_clases'"),
    "string for an integer": ({"finetune": {"epochs": "two"}},
                              r"params\.yaml\.finetune\.epochs: expected an integer, got str 'two'"),
    "float for an integer": ({"inject": {"pool_size": 40.5}},
                             r"params\.yaml\.inject\.pool_size: expected an integer, got float 40\.5"),
    "bool for an integer": ({"finetune": {"batch_size": True}},
                            r"params\.yaml\.finetune\.batch_size: expected an integer, got bool True"),
    "string for a bool": ({"finetune": {"amp": "yes"}}, r"params\.yaml\.finetune\.amp: expected true/false"),
    "not one of the choices": ({"finetune": {"mode": "head"}},
                               r"params\.yaml\.finetune\.mode: 'head' is not one of \['fixed', 'full', 'none'\]"),
    "execution setting in params": ({"base": {"device": "cpu"}},
                                    r"params\.yaml\.base: unknown key 'device'; valid keys: \['seed'\]"),
    "section not a mapping": ({"model": 3}, r"params\.yaml\.model: expected a mapping, got int 3"),
    "scalar for a list": ({"inject": {"methods": "niwt"}}, r"params\.yaml\.inject\.methods: expected a list"),
    "unknown inject method": ({"inject": {"methods": ["niwt", "nwit"]}},
                              r"params\.yaml: inject\.methods: unknown \['nwit'\]"),
    "non-positive batch size": ({"finetune": {"batch_size": 0}},
                                r"params\.yaml: finetune\.batch_size must be positive"),
    # issue 15: bounds a real run never needs (before: accepted, then a crash, or petabytes, or forever)
    "negative seed": ({"base": {"seed": -1}}, r"params\.yaml: base\.seed must be between 0 and 2\^32-1 = 4294967295"),
    "seed above 2^32-1": ({"base": {"seed": 2**32}}, r"params\.yaml: base\.seed must be between 0 and 2\^32-1"),
    "image size in the millions": ({"model": {"image_size": 16_000_000}},
                                   r"params\.yaml: model\.image_size must be between 16 and 2048 \(a real run never "
                                   r"needs more\), got 16000000"),
    "image size 16e6 (YAML reads a string)": ({"model": {"image_size": "16e6"}},
                                              r"params\.yaml\.model\.image_size: expected an integer, got str '16e6'"),
    "epochs 1e30": ({"finetune": {"epochs": 10**30}},
                    r"params\.yaml: finetune\.epochs must be between 0 and 10000 \(a real run never needs more\)"),
    "epochs 1.0e30 (a float)": ({"finetune": {"epochs": 1.0e30}},
                                r"params\.yaml\.finetune\.epochs: expected an integer, got float 1e\+30"),
    "negative head epochs": ({"finetune": {"head_epochs": -3}}, r"params\.yaml: finetune\.head_epochs must be >= 0"),
    "num_workers in params (now NIWT_WORKERS)": ({"finetune": {"num_workers": -1}},
                                                 r"params\.yaml\.finetune: unknown key 'num_workers'"),
}


@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_bad_params_name_file_and_key(case: str, proj: Project, tmp_path: Path,
                                      capsys: pytest.CaptureFixture, untouched: None) -> None:
    override, pattern = PARAM_CASES[case]
    params = write_params(tmp_path / "params.yaml", override)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert_failed_cleanly(rc, err, re.escape(str(tmp_path)) + "/" + pattern, out)


def test_params_not_yaml_or_missing(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("finetune: {epochs: [\n")
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert_failed_cleanly(rc, err, r"params\.yaml: not valid YAML", out)
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, tmp_path / "absent.yaml"))
    assert_failed_cleanly(rc, err, r"absent\.yaml: params file not found", out)


def test_duplicate_params_key_is_an_error(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = write_params(tmp_path / "params.yaml")
    # the second value would make the run fail fast if the duplicate were silently accepted
    params.write_text(params.read_text().replace("  epochs: 2\n", "  epochs: 2\n  epochs: 0\n", 1))
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert_failed_cleanly(rc, err, r"params\.yaml.*duplicate.*epochs", out)


def test_too_many_held_out_classes_is_a_params_error(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     untouched: None) -> None:
    params = write_params(tmp_path / "params.yaml", {"mapping": {"n_val_classes": 9}})
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("fit_mapping", proj, out, params))
    assert_failed_cleanly(rc, err, r"mapping\.n_val_classes must be between 1 and 8 \(the dataset has 9 seen "
                                   r"classes\), got 9", out)


# ------------------------------------------------------------------ checkpoints of the wrong kind


def _checkpoint_with(proj: Project, path: Path, names: list[str]) -> Path:
    """A real smallcnn checkpoint (tiny sizes) whose classifier has ``len(names)`` outputs."""
    _, meta = load_checkpoint(proj.model)
    model = build_model("smallcnn", len(names), width=meta.width, hidden=meta.hidden,
                        image_size=meta.image_size)
    save_checkpoint(path, model, meta.replace(class_names=tuple(names), n_seen=len(names)))
    return path


def _wrong(kind: str, proj: Project, tmp: Path) -> tuple[Path, str]:
    names = _names(proj)
    seen = names[:9]
    if kind == "other classes":
        ckpt = _checkpoint_with(proj, tmp / "other.pt", ["zebra"] + seen[1:])
        return ckpt, r"other\.pt: checkpoint classes do not match the dataset \(9 outputs; first mismatch: " \
                     r"checkpoint 'zebra'\)"
    if kind == "fewer classes":
        ckpt = _checkpoint_with(proj, tmp / "fewer.pt", seen[:8])
        return ckpt, r"fewer\.pt: checkpoint has 8 output classes but the dataset has 9 seen classes"
    if kind == "more classes":
        ckpt = _checkpoint_with(proj, tmp / "more.pt", names[:10])
        return ckpt, r"more\.pt: checkpoint has 10 output classes but the dataset has 9 seen classes"
    raise AssertionError(kind)


WRONG_KINDS = ["other classes", "fewer classes", "more classes"]


@pytest.mark.parametrize("stage", ["extract", "inject"])
@pytest.mark.parametrize("kind", WRONG_KINDS)
def test_wrong_checkpoint_for_the_dataset(stage: str, kind: str, proj: Project, tmp_path: Path,
                                          capsys: pytest.CaptureFixture, untouched: None) -> None:
    ckpt, pattern = _wrong(kind, proj, tmp_path)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv(stage, proj, out, proj.params, model=ckpt))
    assert_failed_cleanly(rc, err, pattern, out)


@pytest.mark.parametrize("kind", ["finetuned (seen classes only)", "other classes"])
def test_wrong_checkpoint_at_evaluate(kind: str, proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      untouched: None) -> None:
    injected = tmp_path / "injected"
    injected.mkdir()
    shutil.copy(proj.injected / "regression.pt", injected / "regression.pt")
    if kind == "other classes":
        _checkpoint_with(proj, injected / "niwt.pt", _names(proj)[:-1] + ["zebra"])
        pattern = r"niwt\.pt: checkpoint classes do not match the dataset \(12 outputs; first mismatch: " \
                  r"checkpoint 'zebra'\)"
    else:
        shutil.copy(proj.model, injected / "niwt.pt")
        pattern = r"niwt\.pt: checkpoint has 9 output classes but the dataset has 12 classes \(seen \+ unseen\)"
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("evaluate", proj, out, proj.params, injected=injected))
    assert_failed_cleanly(rc, err, pattern, out)


def _mapping_other_domain(m: dict) -> dict:
    return {**m, "weight": m["weight"][:, :-1], "heldout_weight": m["heldout_weight"][:, :-1]}


MAPPING_CASES = {
    "fit on other domain vectors": (
        _mapping_other_domain,
        r"mapping\.pt: mapping takes 15-dimensional domain vectors, \S+classes\.parquet has 16-dimensional ones "
        r"\(attributes\); rerun fit_mapping"),
    "held-out classes of another dataset": (
        lambda m: {**m, "val_classes": torch.tensor([0, 11])},
        r"mapping\.pt: held-out classes \[0, 11\] are not seen classes of this dataset"),
    "not a mapping": (
        lambda m: {"weight": m["weight"]},
        r"mapping\.pt: not a mapping written by fit_mapping \(missing \['bias', 'best_epoch'"),
}


@pytest.mark.parametrize("case", list(MAPPING_CASES))
def test_inject_rejects_a_mapping_that_does_not_fit(case: str, proj: Project, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture, untouched: None) -> None:
    edit, pattern = MAPPING_CASES[case]
    mapping = tmp_path / "mapping.pt"
    torch.save(edit(torch.load(proj.mapping, weights_only=True)), mapping)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("inject", proj, out, proj.params, mapping=mapping))
    assert_failed_cleanly(rc, err, pattern, out)


# ----------------------------------------------------------------------------- untrusted files


class _Exploit:
    """Unpickling this runs a shell command, unless the loader refuses arbitrary globals."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_every_torch_load_is_weights_only() -> None:
    """Static check over src/: each ``torch.load(...)`` call passes ``weights_only=True`` literally."""
    calls = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", ok))
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("pickle", "dill", "cloudpickle"):
                calls.append((f"{path.relative_to(REPO)}:{node.lineno} ({node.value.id}.{node.attr})", False))
    assert calls, "no torch.load found: the check is looking in the wrong place"
    assert [where for where, ok in calls if not ok] == []


def test_pickled_object_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"arch": "smallcnn", "payload": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match=r"evil\.pt: not a readable checkpoint: it holds pickled Python objects"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["extract --model", "inject --model", "inject --mapping", "evaluate --injected"])
def test_stages_refuse_pickled_objects(where: str, proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       untouched: None) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "injected" / "niwt.pt"
    evil.parent.mkdir()
    torch.save({"weight": torch.zeros(2, 2), "payload": _Exploit(marker)}, evil)
    stage, flag = where.split()
    out = tmp_path / "out"
    kwargs = {"--model": {"model": evil}, "--mapping": {"mapping": evil},
              "--injected": {"injected": evil.parent}}[flag]
    rc, err = cli(capsys, *stage_argv(stage, proj, out, proj.params, **kwargs))
    what = "mapping" if flag == "--mapping" else "checkpoint"
    assert_failed_cleanly(rc, err, rf"niwt\.pt: not a readable {what}: it holds pickled Python objects, which are "
                                   r"never loaded \(weights_only=True\): .*GLOBAL posix\.system", out)
    assert "weights_only=False" not in err  # torch's advice to load it unsafely is not passed on
    assert not marker.exists()


def test_truncated_checkpoint_is_a_model_error(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               untouched: None) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(proj.model.read_bytes()[:5000])
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("extract", proj, out, proj.params, model=cut))
    assert_failed_cleanly(rc, err, r"cut\.pt: not a readable checkpoint \(\w+Error: .*\); truncated, or not written "
                                   r"by torch\.save\?", out)


# ------------------------------------------------------- interruptions: atomic stage outputs


def _old_outputs(paths: list[Path]) -> dict[Path, bytes]:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"previous complete output of " + p.name.encode())
    return {p: p.read_bytes() for p in paths}


def _fail_on_call(n: int, real: Callable, exc: BaseException) -> Callable:
    """``real`` that raises ``exc`` on its n-th call (1-based) instead of returning."""
    count = {"calls": 0}

    def wrapper(*args, **kwargs):
        count["calls"] += 1
        if count["calls"] == n:
            raise exc
        return real(*args, **kwargs)

    return wrapper


def _half_written_save(real: Callable) -> Callable:
    """``torch.save`` that dies half-way through writing the file (a full disk, a kill)."""
    def save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")
    return save


def _interrupt_prepare(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.prepare as m
    mp.setattr(m, "write_splits", _fail_on_call(1, m.write_splits, KeyboardInterrupt()))


def _interrupt_finetune(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.finetune as m
    mp.setattr(m, "_write_history", _fail_on_call(1, m._write_history, KeyboardInterrupt()))


def _interrupt_extract(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.extract as m
    mp.setattr(m, "write_manifest", _fail_on_call(1, m.write_manifest, KeyboardInterrupt()))


def _interrupt_fit_mapping(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(torch, "save", _half_written_save(torch.save))


def _interrupt_inject(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.inject as m
    mp.setattr(m, "save_checkpoint", _fail_on_call(2, m.save_checkpoint, KeyboardInterrupt()))


def _interrupt_evaluate(mp: pytest.MonkeyPatch) -> None:
    import niwt.stages.evaluate as m
    mp.setattr(m, "draw_seen_unseen_curves", _fail_on_call(1, m.draw_seen_unseen_curves, KeyboardInterrupt()))


# stage -> (interruption, the stage's outputs relative to ``out``)
INTERRUPTIONS = {
    "prepare": (_interrupt_prepare, ["prepared/classes.parquet"]),
    "finetune": (_interrupt_finetune, ["finetuned.pt", "finetune.csv"]),
    "extract": (_interrupt_extract, ["importances/_manifest.json"]),
    "fit_mapping": (_interrupt_fit_mapping, ["mapping.pt", "mapping.csv"]),
    "inject": (_interrupt_inject, ["injected/regression.pt"]),
    "evaluate": (_interrupt_evaluate, ["plots/per_class_accuracy.csv", "plots/curves/regression.csv",
                                       "plots/seen_unseen_curve.png", "plots/comparison.md", "gzsl/regression.json"]),
}


@pytest.mark.parametrize("stage", list(INTERRUPTIONS))
def test_interrupted_stage_replaces_nothing(stage: str, proj: Project, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, untouched: None) -> None:
    """A stage that dies after part of its work leaves its previous outputs (and metrics) as they
    were, and no temp file; only extraction keeps its finished shards, on purpose, for resuming."""
    interrupt, outputs = INTERRUPTIONS[stage]
    out = tmp_path / "out"
    old = _old_outputs([out / o for o in outputs] + [out / "metrics.json"])
    interrupt(monkeypatch)
    argv = ["prepare", "--out", out / "prepared", "--params", proj.params, "--stats", out / "metrics.json"] \
        if stage == "prepare" else stage_argv(stage, proj, out, proj.params)
    if stage == "fit_mapping":  # a full disk: the one-line error (issue 15), nothing replaced
        assert main([str(a) for a in argv]) == 2
    else:
        with pytest.raises(KeyboardInterrupt):
            main([str(a) for a in argv])
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in old} == old
    assert temp_leftovers(out) == []
    expected = {str(p.relative_to(out)) for p in old}
    if stage == "extract":
        shards = sorted(f.name for f in (out / "importances.partial").glob("part-*.parquet"))
        assert shards == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        expected |= {f"importances.partial/{s}" for s in shards} | {"importances.partial/_fingerprint"}
    if stage == "finetune":  # the per-epoch training state survives too: a rerun resumes from it
        expected |= {"finetuned.pt.resume"}
    assert {str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()} == expected


def test_extract_cache_never_serves_a_stale_model(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  untouched: None) -> None:
    """Two extractions in one process (Prefect, a Dask worker) from a checkpoint rewritten at the
    same path must use the new weights."""
    ckpt = tmp_path / "finetuned.pt"
    shutil.copy(proj.model, ckpt)
    first = tmp_path / "a"
    assert main([str(a) for a in stage_argv("extract", proj, first, proj.params, model=ckpt)]) == 0
    model, meta = load_checkpoint(ckpt)
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)
    save_checkpoint(ckpt, model, meta)
    second = tmp_path / "b"
    assert main([str(a) for a in stage_argv("extract", proj, second, proj.params, model=ckpt)]) == 0
    a = read_importances(first / "importances").values
    b = read_importances(second / "importances").values
    # the importance is linear in the classifier row, so negated weights give negated importances
    np.testing.assert_array_equal(b, -a)
    assert np.abs(a).max() > 0


# ============================================================ issue 15: robustness II
# Tracking never costs results; a full disk is one line; bounds on sizes, counts and epochs;
# decompression bombs; damaged CUB files; a dead `dvc` parent stops its stage.


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_within_seconds_naming_it(proj: Project, tmp_path: Path) -> None:
    """Before: MLflow retried a refused port for 269 s, then printed a traceback. Now the stage checks
    the server before any work and exits 2 with one line naming the URI."""
    import subprocess
    import time

    uri = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NIWT_TRACKING": "on", "NIWT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    out = tmp_path / "out"
    argv = [str(a) for a in stage_argv("evaluate", proj, out, proj.params)]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "niwt.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert elapsed < 45, f"took {elapsed:.0f} s"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"niwt evaluate: error: MLflow tracking server {uri} is "
                                                   "unreachable"), proc.stderr
    assert "NIWT_TRACKING=off" in lines[0] and not out.exists()


def test_tracking_failure_after_the_work_keeps_results_and_sync_uploads_them(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Before: a failure in MLflow logging after the outputs were written exited 1 (DVC records
    nothing). Now: exit 0, outputs and metrics JSON kept, a warning, and `niwt sync` uploads later."""
    import mlflow
    from mlflow import MlflowClient

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("NIWT_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    params = tmp_path / "params.yaml"
    shutil.copy(proj.params, params)  # the project (pending uploads) is where the params file is

    def down(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("tracking server went away")

    monkeypatch.setattr(mlflow, "log_metrics", down)
    out = tmp_path / "out"
    rc, err = cli(capsys, *stage_argv("evaluate", proj, out, params))
    assert rc == 0, err
    assert "niwt evaluate: warning: MLflow logging" in err and "niwt sync" in err and "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "plots" / "comparison.md").is_file()
    pending = list((tmp_path / ".niwt" / "pending-tracking").glob("*/pending.json"))
    assert len(pending) == 1
    run_id = json.loads(pending[0].read_text())["run_id"]
    monkeypatch.undo()
    monkeypatch.setenv("NIWT_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    rc, err = cli(capsys, "sync", "--params", params)
    assert rc == 0, err
    run = MlflowClient(tracking_uri=db).get_run(run_id)
    assert run.info.status == "FINISHED"
    from niwt.cli import _numeric

    assert run.data.metrics == pytest.approx(_numeric(metrics, "evaluate")) and run.data.metrics
    assert list((tmp_path / ".niwt" / "pending-tracking").glob("*/pending.json")) == []


def _finetune_argv(proj: Project, out: Path) -> list[str]:
    return [str(a) for a in stage_argv("finetune", proj, out, proj.params)]


def test_finetune_keeps_its_resume_state_until_the_metrics_are_written(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Before: the resume file was deleted before the metrics were written, so a failure there cost
    the whole training. Now a failure after training keeps it, and the rerun trains no epoch."""
    import niwt.io.atomic as atomic

    out = tmp_path / "out"
    resume = out / "finetuned.pt.resume"

    def no_space(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_json", no_space)
    capsys.readouterr()
    rc = main(_finetune_argv(proj, out))
    printed = capsys.readouterr()
    assert rc == 2 and re.search(r"niwt finetune: error: \S*metrics\.json: no space left on device \(.* free",
                                 printed.err), printed.err
    assert resume.is_file(), "the training state was thrown away"
    monkeypatch.undo()
    monkeypatch.setenv("NIWT_TRACKING", "off")
    rc = main(_finetune_argv(proj, out))
    printed = capsys.readouterr().out
    assert rc == 0 and "resuming from" in printed and "epoch 1/2" not in printed and "epoch 2/2" not in printed
    assert not resume.exists() and (out / "metrics.json").is_file()


def _to_dev_full(real: Callable, when: Callable[[str], bool]) -> Callable:
    """``torch.save`` that writes to /dev/full (a real ENOSPC, as torch reports it) when ``when(name)``."""
    def save(obj, f, *args, **kwargs):
        if when(Path(f).name):
            return real(obj, "/dev/full", *args, **kwargs)
        return real(obj, f, *args, **kwargs)
    return save


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_failing_resume_save_is_a_warning_and_training_completes(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch, "save", _to_dev_full(torch.save, lambda name: ".resume" in name))
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(_finetune_argv(proj, out))
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "[finetune] warning: could not save the resume state after epoch 1" in printed.out
    assert "epoch 2/2" in printed.out and (out / "finetuned.pt").is_file()
    assert temp_leftovers(out) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_full_saving_the_checkpoint_names_the_file_and_the_free_space(
        proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Before: torch's '[enforce fail at inline_container.cc] unexpected pos' traceback."""
    monkeypatch.setattr(torch, "save", _to_dev_full(torch.save, lambda name: name == "finetuned.pt"))
    out = tmp_path / "out"
    rc, err = cli(capsys, *_finetune_argv(proj, out))
    assert rc == 2, err
    assert re.fullmatch(r"niwt finetune: error: \S*/out/finetuned\.pt: the write failed \(.*\), most likely a "
                        r"full disk \([\d.]+ \w+ free on its filesystem\); free space there and rerun .*\n", err), err
    assert not (out / "finetuned.pt").exists() and temp_leftovers(out) == []


@pytest.mark.parametrize("how", ["NIWT_WORKERS=-1", "--workers -1"])
def test_negative_loader_workers_is_one_line(how: str, proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, untouched: None) -> None:
    out = tmp_path / "out"
    argv = stage_argv("finetune", proj, out, proj.params)
    if how.startswith("NIWT_"):
        monkeypatch.setenv("NIWT_WORKERS", "-1")
    else:
        argv += ["--workers", "-1"]
    rc, err = cli(capsys, *argv)
    assert_failed_cleanly(rc, err, r"^niwt finetune: error: execution setting NIWT_WORKERS \(or --workers\) must be "
                                   r"between 0 and 512, got -1\n$", out)


def _cub_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A miniature CUB tree (test_real_formats.make_cub) and params that prepare it."""
    from test_real_formats import make_cub, small_params
    from test_real_formats import write_params as write_real_params

    root = tmp_path / "raw"
    make_cub(root)
    return root / "cub", write_real_params(tmp_path / "params.yaml",
                                           small_params("cub", root, "smallcnn", "body.block4"))


def _non_utf8(path: Path, line: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].rstrip(b"\n") + b"_caf\xe9\n"  # Latin-1 e-acute
    path.write_bytes(b"".join(lines))


CUB_CASES = {
    "non-UTF-8 byte in classes.txt": (lambda cub: _non_utf8(cub / "CUB_200_2011" / "classes.txt", 3),
                                      r"CUB_200_2011/classes\.txt:3: not valid UTF-8 text \(invalid continuation byte, "
                                      r"byte b'\\xe9' at offset \d+\)"),
    "non-UTF-8 byte in attributes.txt": (lambda cub: _non_utf8(cub / "attributes.txt", 2),
                                         r"cub/attributes\.txt:2: not valid UTF-8 text"),
    "duplicate image id in images.txt": (
        lambda cub: (cub / "CUB_200_2011" / "images.txt").write_text(
            (cub / "CUB_200_2011" / "images.txt").read_text().replace("\n5 ", "\n4 ", 1)),
        r"CUB_200_2011/images\.txt:5: id 4 appears again \(first on line 4\); every id must be listed once"),
}


@pytest.mark.parametrize("case", list(CUB_CASES))
def test_prepare_rejects_damaged_cub_files(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 15: before, a traceback (UnicodeDecodeError) or the later image silently won."""
    damage, pattern = CUB_CASES[case]
    cub, params = _cub_tree(tmp_path)
    damage(cub)
    out = tmp_path / "prepared"
    rc, err = cli(capsys, "prepare", "--out", out, "--params", params)
    assert_failed_cleanly(rc, err, r"^niwt prepare: error: \S*" + pattern, out)
    assert len(err.strip().splitlines()) == 1


FAKE_DVC = """
import os, subprocess, sys
env = dict(os.environ, DVC_STAGE="finetune")
child = subprocess.Popen(["/bin/sh", "-c", sys.argv[1]], env=env)
print(child.pid, flush=True)
child.wait()
"""


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stage_stops_when_its_dvc_process_is_killed(proj: Project, tmp_path: Path) -> None:
    """Issue 15: before, killing only the `dvc` process left `niwt` running; it later overwrote the
    outputs DVC had restored. Now the stage notices within seconds and exits without writing."""
    import shlex
    import signal
    import subprocess
    import time

    params = write_params(tmp_path / "params.yaml", {"finetune": {"epochs": 500}})
    out = tmp_path / "out"
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "niwt.cli",
                                                  *stage_argv("finetune", proj, out, params)])
    env = {**os.environ, "NIWT_TRACKING": "off", "NIWT_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    fake_dvc = subprocess.Popen([sys.executable, "-c", FAKE_DVC, cmd], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    shell = int(fake_dvc.stdout.readline())
    stage_pids: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not (out / "finetuned.pt.resume").is_file():  # training is under way
            assert time.monotonic() < deadline and fake_dvc.poll() is None, fake_dvc.stderr.read()
            time.sleep(0.2)
        stage_pids = {shell} | _children(shell)
        fake_dvc.send_signal(signal.SIGKILL)
        fake_dvc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in stage_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in stage_pids), "niwt kept running after its dvc process died"
        assert not (out / "finetuned.pt").exists() and temp_leftovers(out) == []
    finally:
        for pid in stage_pids | _children(shell) | {shell}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if fake_dvc.poll() is None:
            fake_dvc.kill()


def test_yaml_alias_bomb_in_params_is_refused_at_once(proj: Project, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     untouched: None) -> None:
    """Issue 15: an alias bomb took niwt 5 s to reject (and DVC gigabytes); aliases are now refused
    when the first one is read."""
    import time

    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        bomb.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text() + "bomb:\n" + "".join(f"  {line}\n" for line in bomb))
    out = tmp_path / "out"
    start = time.monotonic()
    rc, err = cli(capsys, *stage_argv("finetune", proj, out, params))
    assert time.monotonic() - start < 5
    line = len((REPO / "params.yaml").read_text().splitlines()) + 3
    assert_failed_cleanly(rc, err, rf"^niwt finetune: error: \S*params\.yaml:{line}: YAML alias \*a is not allowed "
                                   r"in a params file \(DVC expands every alias", out)
