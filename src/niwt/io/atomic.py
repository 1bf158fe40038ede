"""Write-then-rename helpers, so an interrupted stage never leaves a partial output behind.

DVC (and a human) must never mistake a half-written file for a complete one: every output is
written to a temporary sibling and moved into place with ``os.replace``, which is atomic on POSIX
within one filesystem.

Temporaries are named ``.<target>.<host>-<pid>.<random>.tmp``. A process killed mid-write
(SIGKILL, OOM) cannot clean up, so every new write first removes the temporaries of the same
target whose writing process no longer exists on this host; those of live writers, and any from
other hosts sharing the filesystem, are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from niwt.errors import InputError

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# torch.save's C++ writer reports a full disk as a RuntimeError without an errno.
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


class DiskFullError(InputError):
    """Writing an output failed for lack of space: the message names the file and the free space."""


def free_space(path: str | Path) -> str:
    """Free space on the filesystem holding ``path`` (or its nearest existing parent), readable."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free = shutil.disk_usage(here).free
    except OSError:
        return "unknown free space"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""


def disk_error(path: str | Path, err: BaseException) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` when ``err`` is an out-of-space write failure, else None."""
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        what = os.strerror(err.errno).lower()
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED):
        what = f"the write failed ({(str(err).splitlines() or [''])[0][:120]}), most likely a full disk"
    else:
        return None
    return DiskFullError(f"{path}: {what} ({free_space(path)} on its filesystem); free space there and rerun "
                         "(nothing partial was left)")

# after the prefix: host, pid, and mkdtemp's 8 random characters
_TMP_TAIL = re.compile(r"([A-Za-z0-9]+)-(\d+)\.[a-z0-9_]{8}\.tmp")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: Path, prefix: str) -> list[Path]:
    """Delete ``<prefix><host>-<pid>.<random>.tmp`` entries in ``directory`` left by dead
    processes of this host."""
    removed = []
    host = _host()
    for entry in directory.iterdir() if directory.is_dir() else ():
        if not entry.name.startswith(prefix):
            continue
        match = _TMP_TAIL.fullmatch(entry.name[len(prefix):])
        if match and match.group(1) == host and not _alive(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def fresh_temporary(directory: Path, prefix: str) -> Path:
    """A new private temporary directory ``<prefix><host>-<pid>.<random>.tmp`` in ``directory``,
    after removing the ones dead writers of this host left there."""
    remove_stale_temporaries(directory, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_host()}-{os.getpid()}.", suffix=".tmp", dir=directory))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    Works for files and directories. On an exception the temporary is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_temporary(path.parent, f".{path.name}.")
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    except (OSError, RuntimeError) as err:
        full = disk_error(path, err)
        if full is None:
            raise
        raise full from err
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
    tmp = fresh_temporary(directory, ".staged.")
    try:
        yield tmp
        for item in sorted(tmp.iterdir()):
            if item.name.startswith("."):
                continue
            target = directory / item.name
            if item.is_dir() and target.is_dir():  # a sub-directory is replaced whole (stale files go)
                old = fresh_temporary(directory, ".replaced.")
                os.replace(target, old)
                os.replace(item, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write pretty, key-sorted JSON (stable diffs for ``dvc metrics diff``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
