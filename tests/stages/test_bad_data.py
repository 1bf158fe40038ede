"""Damaged data fails its stage fast and clearly, and nothing computed before is lost.

Raw data at ``prepare`` (AWA2-format images, attribute files and class lists; CUB's text files) and
prepared tables at the later stages (``classes.parquet``, ``splits.parquet``): each case runs the stage
through ``niwt.cli.main`` exactly as ``dvc.yaml`` types it and asserts exit status 2, a stderr message
naming the file (and line, row or class) and the problem, no output and no temp file left behind, and,
where the stage reads the tiny project, that its outputs are byte-for-byte untouched.

Where the input comes from ``prepare`` the synthetic generator is wrapped so that the freshly
generated AWA2-format tree is damaged before it is read: ``prepare`` regenerates its data on every
run, so damaging an earlier run's copy would test nothing. Where the input is a prepared table, the
tiny project's tables are copied and edited, and the later stages are run on the copy.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _project import Project, assert_failed_cleanly, class_names, cli, stage_argv, temp_leftovers, write_params

from niwt.data.tables import ClassTable, SplitTable, read_classes, read_splits, write_classes, write_splits

pytestmark = pytest.mark.usefixtures("_quiet")


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
    "decompression bomb": (damage_bomb, "fail"),
    "all-zero attribute row": (damage_zero_attribute_row, "fail"),  # a class nothing describes
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
    """With ``bad_images: skip`` a decompression bomb is dropped and counted like any unreadable image."""
    _wrap_generator(monkeypatch, damage_bomb)
    params = write_params(tmp_path / "params.yaml", {"data": {"bad_images": "skip"}})
    rc, err = cli(capsys, "prepare", "--out", tmp_path / "prepared", "--params", params,
                  "--stats", tmp_path / "m.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["n_bad_images"] == 1


# --------------------------------------------------------------- prepare: damaged CUB files


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
    """A non-UTF-8 byte is one line naming the file and line, never a UnicodeDecodeError traceback; a
    duplicate image id is an error, never a later line silently replacing the first."""
    damage, pattern = CUB_CASES[case]
    cub, params = _cub_tree(tmp_path)
    damage(cub)
    out = tmp_path / "prepared"
    rc, err = cli(capsys, "prepare", "--out", out, "--params", params)
    assert_failed_cleanly(rc, err, r"^niwt prepare: error: \S*" + pattern, out)
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------- later stages: damaged tables


def copy_tables(proj: Project, data: Path) -> Path:
    """The tiny project's two tables in ``data``; the split table names the project's images by absolute path
    (its own paths are relative to the prepared directory, which holds the generated images)."""
    data.mkdir()
    shutil.copy(proj.data / "classes.parquet", data / "classes.parquet")
    shutil.copy(proj.data / "domain.parquet", data / "domain.parquet")
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


# name -> (edit, stderr pattern given the class names, stages that must refuse it)
ALL = ("finetune", "extract", "fit_mapping", "inject", "evaluate")
DOMAIN = ALL[2:]  # the stages that read the domain vectors (finetune, extract neither read nor depend on them)
WITH_SPLITS = ("finetune", "extract", "inject", "evaluate")
TABLE_CASES = {
    "NaN in domain vectors": (
        _edit_classes(_nan_domain),
        lambda n: rf"domain\.parquet: NaN/inf in domain vectors of classes \[10\] \(\['{n[10]}'\]\)", DOMAIN),
    "class both seen and unseen": (
        _edit_classes(lambda c: dataclasses.replace(c, names=c.names[:-1] + [c.names[0]])),
        lambda n: rf"classes\.parquet: class names must be unique; \['{n[0]}'\] appear more than once", ALL),
    "attribute names do not match the domain vectors": (
        _edit_classes(lambda c: dataclasses.replace(c, attribute_names=c.attribute_names[:-1])),
        lambda n: r"domain\.parquet: 15 attribute names for 16-dimensional domain vectors", DOMAIN),
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
    assert_failed_cleanly(rc, err, pattern(class_names(proj)), out)


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
    shutil.copy(proj.data / "domain.parquet", data / "domain.parquet")
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
