"""Write-then-rename helpers, so an interrupted stage never leaves a partial output behind.

DVC (and a human) must never mistake a half-written file for a complete one: every output is
written to a temporary sibling and moved into place with ``os.replace``, which is atomic on POSIX
within one filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    Works for files and directories. On an exception the temporary is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(directory: str | Path) -> Iterator[Path]:
    """Yield a staging directory inside ``directory``; on success move each file in it into place.

    For a stage that writes several files into a directory it shares with others (plots): if
    producing any of them fails, none of the previous files is replaced; the commit is a series of
    renames only. Other files in ``directory`` are never touched.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staged.", suffix=".tmp", dir=directory))
    try:
        yield tmp
        for item in sorted(tmp.iterdir()):
            if not item.name.startswith("."):
                os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write pretty, key-sorted JSON (stable diffs for ``dvc metrics diff``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
