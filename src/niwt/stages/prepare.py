"""``prepare``: get the benchmark on disk and write the class and GZSL split tables.

Outputs (in ``out``): ``classes.parquet``, ``domain.parquet``, ``splits.parquet``, ``content.json`` and, for
the synthetic default, the generated dataset itself under ``raw/`` (AWA2 layout) and
``image_attributes.parquet`` (per image: its true attribute values and object geometry,
:mod:`niwt.data.truth`). The directory is written atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from niwt.data.images import find_bad_images
from niwt.data.raw import DatasetError, RawDataset
from niwt.data.tables import (
    DOMAIN_FILE,
    ClassTable,
    SplitTable,
    assign_splits,
    check_splits,
    joint_order,
    relative_paths,
    write_classes,
    write_splits,
)
from niwt.io.atomic import atomic_path, write_json
from niwt.io.project import resolve_root
from niwt.params import Params, Runtime
from niwt.stages import StageResult


def image_root(p: Params, out: Path) -> tuple[Path, tuple[str, str]]:
    """Where the images live (absolute) and how ``splits.parquet`` names that place: inside the
    prepared directory for the generated default, else ``data.root`` under the project root."""
    if p.data.name == "synthetic":
        return Path(out).absolute() / "raw", ("prepared", "raw")
    if p.data.name == "xlsa17":  # feature rows of features.npy, written beside the table
        return Path(out).absolute(), ("prepared", ".")
    return resolve_root(p.data.root, out), ("project", p.data.root)


def load_raw(p: Params, workdir: Path, final: Path, progress: bool = True) -> RawDataset:
    """Read (or generate, or download) the dataset named by ``data.name``.

    Args:
        workdir: where a generated dataset is written now (a temp dir).
        final: where ``workdir`` will live once complete; stored image paths point there. A
            relative ``data.root`` is resolved against the project holding ``final``.
    """
    name = p.data.name
    if name == "synthetic":
        from niwt.data.awa2 import load_awa2
        from niwt.data.synthetic import generate_synthetic

        generate_synthetic(workdir / "raw", p.data.synthetic, seed=p.base.seed, progress=progress)
        raw = load_awa2(workdir / "raw", name="synthetic")
        prefix = str(workdir / "raw")
        return _rebase(raw, prefix, str(final / "raw"))
    if name == "xlsa17":
        return _load_features(p, final, workdir, progress)
    if name == "folder":
        from niwt.data.folder import load_folder

        attrs = p.data.domain in ("attributes", "attributes_binary")
        return load_folder(image_root(p, final)[0], need_attributes=attrs)
    from niwt.data.download import DATASETS, DOWNLOADS, dataset_dir, ensure_dataset
    from niwt.data.xlsa17 import ATT_SPLITS

    root = image_root(p, final)[0]
    ds = {"awa2": "AWA2", "cub": "CUB", "sun": "SUN"}.get(name, name)
    xlsa = dataset_dir("xlsa17", root) / ds
    # Only this dataset's xlsa17 folder is needed: a hand-placed xlsa17/data/<DS>/ suffices (the
    # other datasets' split files are not demanded). Everything missing is reported in one message.
    problems = []
    try:
        ensure_dataset(name, root, allow_download=p.data.download, progress=progress)
    except DatasetError as err:
        problems.append(str(err))
    if not (xlsa / ATT_SPLITS).is_file():
        (remote,) = DATASETS["xlsa17"]
        if p.data.download or (root / DOWNLOADS / remote.filename).is_file():
            try:
                ensure_dataset("xlsa17", root, allow_download=p.data.download, progress=progress)
            except DatasetError as err:
                problems.append(str(err))
        else:
            problems.append(
                f"{xlsa / ATT_SPLITS}: missing: {name}'s split file from xlsa17 (its classes, seen/unseen split "
                f"and image sets, Xian et al.); put {ds}/att_splits.mat there (from {remote.url}, or the whole "
                f"archive at {root / DOWNLOADS / remote.filename}), or set data.download: true. For your own, "
                "non-benchmark images use data.name: folder (README: 'Your own data and classifier').")
    if problems:
        raise DatasetError("\n".join(problems))
    native = dataset_dir(name, root)
    if name == "awa2":
        from niwt.data.awa2 import load_awa2
        from niwt.data.xlsa17 import apply_xlsa17

        return apply_xlsa17(load_awa2(native), xlsa)
    if name == "cub":
        from niwt.data.cub import load_cub

        return load_cub(native, xlsa)
    if name == "sun":
        from niwt.data.sun import load_sun

        return load_sun(native, xlsa)
    raise DatasetError(f"unknown data.name {name!r}")


def _load_features(p: Params, final: Path, workdir: Path, progress: bool) -> RawDataset:
    """xlsa17's precomputed features: the dataset, and ``features.npy`` written into ``workdir``."""
    from niwt.data.download import ensure_dataset
    from niwt.data.features import FEATURES_FILE, write_features
    from niwt.data.xlsa17 import RES101, check_dataset_name, features_dir, load_features

    check_dataset_name(p.data.dataset)
    root = resolve_root(p.data.root, final)
    folder = features_dir(root, p.data.dataset)
    if not (folder / RES101).is_file() and p.data.download:
        ensure_dataset("xlsa17", root, allow_download=True, progress=progress)
        folder = features_dir(root, p.data.dataset)
    raw, features = load_features(folder, p.data.dataset)
    write_features(workdir / FEATURES_FILE, features)
    return raw


def _rebase(raw: RawDataset, old: str, new: str) -> RawDataset:
    from dataclasses import replace

    return replace(raw, image_paths=[new + p[len(old):] if p.startswith(old) else p for p in raw.image_paths])


def domain_vectors(raw: RawDataset, kind: str, order: list[int]) -> tuple[np.ndarray, list[str]]:
    """Class domain vectors of the requested kind, rows in joint order, and their names."""
    if kind == "attributes":
        return raw.attributes[order], list(raw.attribute_names)
    if kind == "attributes_binary":
        if raw.attributes_binary is None:
            raise DatasetError(f"{raw.name}: no binary attributes; use data.domain: attributes")
        return raw.attributes_binary[order], list(raw.attribute_names)
    if kind == "sentences":
        if raw.sentences is None:
            raise DatasetError(f"{raw.name}: no class sentence embeddings (CUB sent_splits.mat); "
                               "use data.domain: text or attributes")
        return raw.sentences[order], [f"sent_{i}" for i in range(raw.sentences.shape[1])]
    if kind == "text":
        from niwt.data.text import embed_texts

        texts = raw.descriptions or [n.replace("_", " ").replace("+", " ") for n in raw.class_names]
        emb = embed_texts([texts[i] for i in order])
        return emb, [f"text_{i}" for i in range(emb.shape[1])]
    raise DatasetError(f"unknown data.domain {kind!r}")


# What the training stages read from this directory besides the tables, by content: the generated images
# (synthetic ``raw/``) or the feature rows (xlsa17 ``features.npy``); empty where the images live under
# ``data.root`` (``data/raw_fingerprint.json`` covers those). cache, finetune and finetune_validation depend
# on it and on splits.parquet / classes.parquet, not on the directory: a change of ``data.domain`` (only
# domain.parquet changes) reruns none of them.
CONTENT_FILE = "content.json"
TABLES = ("classes.parquet", DOMAIN_FILE, "splits.parquet", CONTENT_FILE)


def content_digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` except the tables, by relative path."""
    digests = {}
    for path in sorted(Path(directory).rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel not in TABLES:
            with open(path, "rb") as f:
                digests[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def run(p: Params, rt: Runtime, out: Path) -> StageResult:
    """Write ``out/classes.parquet`` and ``out/splits.parquet`` (and ``out/raw`` when generated)."""
    out = Path(out).absolute()
    root, root_meta = image_root(p, out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        raw = load_raw(p, tmp, out, rt.progress)
        for note in raw.notes:
            print(f"[prepare] note: {note}", flush=True)
        order = joint_order(raw)
        domain, dim_names = domain_vectors(raw, p.data.domain, order)
        if not np.isfinite(domain).all():
            bad = [raw.class_names[order[i]] for i in np.flatnonzero(~np.isfinite(domain).all(1))]
            raise DatasetError(f"{raw.name}: NaN/inf in {p.data.domain} vectors of classes {bad[:10]}")
        zero = [raw.class_names[order[i]] for i in np.flatnonzero(~domain.any(1))]
        if zero:
            raise DatasetError(f"{raw.name}: all-zero {p.data.domain} vectors for classes {zero[:10]}"
                               f"{' and more' if len(zero) > 10 else ''}: nothing describes them, so no map can "
                               "predict their importances (and explanations would name arbitrary attributes); "
                               "fix their rows in the dataset's attribute matrix or remove the classes")
        cls, split = assign_splits(raw, order, p.data.val_fraction, p.data.test_seen_fraction, p.base.seed)
        paths = list(raw.image_paths)
        if p.data.name == "xlsa17":  # feature rows: checked finite when read, nothing to decode
            keep = np.ones(len(paths), dtype=bool)
        else:
            keep = _drop_bad_images(paths, p.data.bad_images, tmp, out, rt.progress)
        _check_readable_classes(raw, keep)
        names = [raw.class_names[i] for i in order]
        descriptions = [raw.descriptions[i] if raw.descriptions else "" for i in order]
        validation = np.array([names.index(v) for v in raw.validation]) if raw.validation else None
        write_classes(tmp / "classes.parquet", ClassTable(names, len(names) - len(raw.unseen), domain,
                                                          p.data.domain, dim_names, descriptions, validation))
        ids = np.arange(len(paths), dtype=np.int64)[keep]
        n_bad = int((~keep).sum())
        dropped = f" after dropping {n_bad} unreadable images (data.bad_images: skip)" if n_bad else ""
        check_splits(SplitTable(ids, [paths[i] for i in ids], cls[keep], split[keep]), names,
                     len(names) - len(raw.unseen), f"{raw.name}{dropped}")
        # Stored relative to the image root, so the table means the same files from any working
        # directory and in DVC's experiment copies (data/raw is not copied there).
        rel = [paths[i] for i in ids] if p.data.name == "xlsa17" else relative_paths([paths[i] for i in ids], root)
        write_splits(tmp / "splits.parquet", ids, rel, cls[keep], split[keep], image_root=root_meta)
        if p.data.name == "synthetic":  # what each image really shows, for explain's ground-truth checks
            from niwt.data.synthetic import IMAGE_ATTRIBUTES
            from niwt.data.truth import IMAGE_TRUTH, write_image_truth

            write_image_truth(tmp / IMAGE_TRUTH, ids, rel, tmp / "raw" / IMAGE_ATTRIBUTES)
        write_json(tmp / CONTENT_FILE, content_digest(tmp))
    counts = {f"n_{s}": int((split[keep] == s).sum()) for s in ("train", "val", "test_seen", "test_unseen")}
    metrics = {"n_classes": len(names), "n_seen": len(names) - len(raw.unseen), "n_unseen": len(raw.unseen),
               "n_bad_images": int((~keep).sum()), "domain_dim": int(domain.shape[1]), **counts}
    return StageResult(metrics)


def _check_readable_classes(raw: RawDataset, keep: np.ndarray) -> None:
    """Every class keeps at least one readable image (after ``data.bad_images: skip``)."""
    labels = np.asarray(raw.image_labels)
    counts = np.bincount(labels[keep], minlength=len(raw.class_names))
    empty = [i for i in range(len(raw.class_names)) if counts[i] == 0]
    if empty:
        first = raw.image_paths[int(np.flatnonzero(labels == empty[0])[0])] if (labels == empty[0]).any() else ""
        where = f" (e.g. {Path(first).parent})" if first else ""
        raise DatasetError(f"{raw.name}: classes without a readable image: "
                           f"{[raw.class_names[i] for i in empty[:10]]}{where}")


def _drop_bad_images(paths: list[str], policy: str, tmp: Path, out: Path, progress: bool) -> np.ndarray:
    """Check every image decodes; fail with the list (default) or drop them (``skip``)."""
    local = [str(tmp) + p[len(str(out)):] if p.startswith(str(out)) else p for p in paths]
    bad = dict(find_bad_images(local, progress=progress))
    if bad and policy == "fail":
        listing = "\n".join(f"  {final}: {bad[path]}" for final, path in zip(paths, local, strict=True)
                            if path in bad)
        raise DatasetError(f"{len(bad)} unreadable images (set data.bad_images: skip to drop them):\n"
                           + "\n".join(listing.splitlines()[:20]))
    return np.array([p not in bad for p in local], dtype=bool)
