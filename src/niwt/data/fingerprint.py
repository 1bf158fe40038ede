"""A cheap fingerprint of the raw dataset on disk: every file's path, size and modification time.

DVC cannot depend on ``data.root`` directly: it is git-ignored (absent from the copies that
``dvc exp run --temp/--queue`` make), missing for the generated default, and hashing 37k images
(AWA2, 13 GB) by content on every ``dvc status`` is slow. So the ``fingerprint`` stage (always
run, a few hundred milliseconds at AWA2 size) writes this digest to a small file that ``prepare``
depends on: any added, removed, resized or rewritten raw file changes it and reruns ``prepare``;
an unchanged tree leaves it byte-identical and nothing reruns.

Not seen: a file rewritten with the same size *and* the same modification time (``cp -p``,
``rsync -t`` of other content); ``dvc repro -f prepare`` covers that.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from niwt.data.download import dataset_dir
from niwt.errors import InputError

XLSA17_FOLDERS = {"awa2": "AWA2", "cub": "CUB", "sun": "SUN"}


def raw_dirs(name: str, root: Path, dataset: str = "CUB") -> dict[str, Path]:
    """The folders ``prepare`` reads for dataset ``name`` under ``root`` (``data.root``), by label
    (``dataset``: ``data.dataset``, which xlsa17 features)."""
    if name == "folder":  # data.root is the dataset itself (images/, classes.csv, attributes.csv, ...)
        return {"folder": Path(root)}
    if name == "xlsa17":  # precomputed features: <root>/<DATASET>/res101.mat, att_splits.mat
        from niwt.data.xlsa17 import features_dir

        return {f"xlsa17/{dataset}": features_dir(root, dataset)}
    dirs = {name: dataset_dir(name, root)}
    if name in XLSA17_FOLDERS:
        dirs["xlsa17"] = dataset_dir("xlsa17", root) / XLSA17_FOLDERS[name]
    return dirs


SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _enter(path: str, seen: set[tuple[int, int]]) -> None:
    """Refuse a folder (reached through a link) that was entered before (a loop) or that lies in a
    system tree (``/proc``: endless and changing)."""
    real = os.path.realpath(path)
    if any(real == d or real.startswith(d + os.sep) for d in SYSTEM_DIRS):
        raise InputError(f"{path}: links to {real}, a system folder, not data; remove the link")
    ident = _identity(path)
    if ident in seen:
        raise InputError(f"{path}: a link to a folder already in the tree ({real}): a loop, or the same images "
                         "twice; remove the link")
    seen.add(ident)


def tree_digest(folder: Path) -> dict:
    """``{"files", "bytes", "sha256"}`` over ``(relative path, size, mtime_ns)`` of every file under
    ``folder`` (links followed, hidden files included); ``{"missing": true}`` when it is absent."""
    folder = Path(folder)
    if not folder.is_dir():
        return {"missing": True}
    entries = []
    total = 0
    skip = len(str(folder)) + 1
    stack = [str(folder)]
    seen = {_identity(str(folder))}
    try:
        while stack:  # one stat per file (scandir gives the type for free); no Path objects: 37k files
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=True):
                        _enter(entry.path, seen)
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=True):
                        st = entry.stat(follow_symlinks=True)
                        total += st.st_size
                        entries.append(f"{entry.path[skip:].replace(os.sep, '/')}\t{st.st_size}\t{st.st_mtime_ns}")
    except OSError as err:  # unreadable folder, a file gone mid-walk, a link loop the OS reports itself
        raise InputError(f"{err.filename or folder}: cannot be read ({err.strerror or err}); the raw data must "
                         "be a tree of readable files") from err
    entries.sort()
    digest = hashlib.sha256("\n".join(entries).encode("utf-8", "surrogateescape"))
    return {"files": len(entries), "bytes": total, "sha256": digest.hexdigest()}


def file_digest(path: Path) -> dict:
    """``{"bytes", "sha256"}`` of one file's *content*, or ``{"missing": true}``. Used for the files params
    name (a classifier's weights, its class list): a retrained model saved over the old one keeps its path
    and often its size, so only the content tells."""
    path = Path(path)
    if not path.is_file():
        return {"missing": True}
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def named_files(named: dict[str, str], keywords: dict[str, tuple[str, ...]], anchor: Path) -> dict:
    """Fingerprints of the files and folders that params name (``{"model.weights": "models/my.pth"}``):
    a file by content, a folder by :func:`tree_digest`; a keyword value (``none``, ``imagenet``, ``train``,
    ``noise``, an empty path) as itself. A relative path is under the project root of ``anchor``."""
    from niwt.io.project import resolve_root

    out: dict[str, dict] = {}
    for key, value in named.items():
        if not value or value in keywords.get(key, ()):
            out[key] = {"value": value}
            continue
        path = resolve_root(value, anchor)
        out[key] = {"path": value, **(tree_digest(path) if path.is_dir() else file_digest(path))}
    return out


def fingerprint(name: str, root: Path | None, dataset: str = "CUB") -> dict:
    """The fingerprint of dataset ``name`` under ``root``; the generated default has no raw files."""
    if name == "synthetic" or root is None:
        return {"dataset": name, "raw_files": "none: generated by prepare from params.yaml"}
    dirs = raw_dirs(name, root, dataset)
    return {"dataset": name, "folders": {label: tree_digest(path) for label, path in dirs.items()}}
