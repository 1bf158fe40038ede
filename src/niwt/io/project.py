"""Where the project is: the directory relative paths in ``params.yaml`` and the prepared tables
are resolved against, whatever the working directory.

``data.root`` (``data/raw``) and the image paths in ``splits.parquet`` are relative to the project
root, never to the working directory, so ``dvc repro``, ``dvc exp run --temp/--queue`` (which run
in a copy under ``.dvc/tmp/exps/`` that lacks the git-ignored ``data/raw``) and ``niwt`` typed in
another directory all find the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKERS = ("dvc.yaml", "params.yaml")  # a project holds one of these (dvc.yaml first)


def project_root(start: str | Path | None = None, default: str | Path | None = None) -> Path:
    """The project holding ``start`` (default: the working directory), outside any DVC experiment
    temp copy.

    Inside ``<root>/.dvc/tmp/exps/...`` the answer is ``<root>``; otherwise the nearest directory at
    or above ``start`` that holds ``dvc.yaml`` (else ``params.yaml``); when none does, ``default``
    (else ``start`` itself).
    """
    here = Path(start if start is not None else Path.cwd()).absolute().resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for marker in MARKERS:
        for candidate in (here, *here.parents):
            if (candidate / marker).is_file():
                return candidate
    return Path(default).absolute() if default is not None else here


def resolve_root(root: str | Path, start: str | Path) -> Path:
    """``root`` (``data.root``) as an absolute path: itself when absolute, else under the project
    holding ``start`` (falling back to the working directory outside any project). Symbolic links
    in ``root`` are kept, so paths built from it start with it."""
    root = Path(os.path.expanduser(str(root)))
    if root.is_absolute():
        return root
    return project_root(start, default=Path.cwd()) / root
