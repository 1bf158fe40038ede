"""Fetch and unpack the public benchmark archives, safely and resumably.

The archives are large (AwA2 13 GB, xlsa17 879 MB) and their hosts are slow or flaky, so a download
resumes from a ``.part`` file with an HTTP Range request instead of starting over, is verified by
sha256 when the checksum is known, and only appears under its final name once complete. Archives
come from third-party hosts, so extraction refuses anything that could write outside the target
(absolute paths, ``..``, links, devices) and unpacks into a temporary sibling that is renamed into
place: a half-extracted dataset never looks complete.

Everything uses the standard library (``urllib``), so no extra dependency is needed to download.

Layout under ``root`` (the ``data.root`` directory) after :func:`ensure_dataset`::

    awa2/Animals_with_Attributes2/{classes.txt, predicates.txt, predicate-matrix-*.txt, JPEGImages/}
    cub/attributes.txt  cub/CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt,
                                          attributes/class_attribute_labels_continuous.txt, images/}
    sun/images/<letter>/<class>/*.jpg  sun/SUNAttributeDB/{images.mat, attributes.mat,
                                                           attributeLabels_continuous.mat}
    xlsa17/data/{AWA2,CUB,SUN,...}/{att_splits.mat, res101.mat, *classes.txt}
    downloads/<archive>             (archives while they download; removed after extraction)
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from niwt.data.raw import DatasetError

_USER_AGENT = "niwt-downloader/0.1 (python-urllib)"
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)
DOWNLOADS = "downloads"


@dataclass(frozen=True)
class Remote:
    """One archive of a dataset.

    Attributes:
        url: where the archive is served.
        filename: the archive's file name under ``<root>/downloads/``.
        sha256: expected checksum, or None where no trustworthy checksum is known (never invented).
        extract_to: directory, relative to ``root``, the archive is unpacked into.
        provides: files or directories, relative to ``root``, that exist once the archive is
            unpacked; they decide whether the archive is needed at all.
    """

    url: str
    filename: str
    sha256: str | None
    extract_to: str
    provides: tuple[str, ...] = ()


_AWA2 = "awa2/Animals_with_Attributes2"
_CUB = "cub/CUB_200_2011"

# No checksum is published for any of these archives and none could be computed offline, so all
# sha256 fields are None: the download is then checked only for completeness (Content-Length).
DATASETS: dict[str, list[Remote]] = {
    "awa2": [
        Remote("https://cvml.ista.ac.at/AwA2/AwA2-data.zip", "AwA2-data.zip", None, "awa2",
               (f"{_AWA2}/classes.txt", f"{_AWA2}/predicates.txt",
                f"{_AWA2}/predicate-matrix-continuous.txt", f"{_AWA2}/predicate-matrix-binary.txt",
                f"{_AWA2}/JPEGImages")),
    ],
    "cub": [
        Remote("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "CUB_200_2011.tgz",
               None, "cub",
               (f"{_CUB}/images.txt", f"{_CUB}/image_class_labels.txt", f"{_CUB}/classes.txt",
                f"{_CUB}/attributes/class_attribute_labels_continuous.txt", f"{_CUB}/images")),
    ],
    "sun": [
        Remote("https://cs.brown.edu/~gmpatter/Attributes/SUNAttributeDB_Images.tar.gz",
               "SUNAttributeDB_Images.tar.gz", None, "sun", ("sun/images",)),
        Remote("https://cs.brown.edu/~gmpatter/Attributes/SUNAttributeDB.tar.gz", "SUNAttributeDB.tar.gz",
               None, "sun",
               ("sun/SUNAttributeDB/images.mat", "sun/SUNAttributeDB/attributes.mat",
                "sun/SUNAttributeDB/attributeLabels_continuous.mat")),
    ],
    "xlsa17": [
        # The archive holds xlsa17/data/<DS>/...; only the small att_splits.mat files are required
        # (res101.mat is optional for the loaders), so a hand-placed copy of those suffices.
        Remote("http://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip", "xlsa17.zip", None, ".",
               ("xlsa17/data/AWA2/att_splits.mat", "xlsa17/data/CUB/att_splits.mat",
                "xlsa17/data/SUN/att_splits.mat")),
    ],
}

# The directory each loader takes as its root, relative to data.root.
_DATASET_DIRS = {"awa2": _AWA2, "cub": "cub", "sun": "sun", "xlsa17": "xlsa17/data"}


# --------------------------------------------------------------------------------------- download


def _sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB archives do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _manual_hint(url: str, dest: Path) -> str:
    """The sentence every network error ends with: how to get going without the network."""
    return f"download {url} yourself (browser, wget) and put it at {dest}, then run again"


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Open ``url``, asking for the bytes from ``offset`` on when resuming."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs from DATASETS


def _resume_offset(response: http.client.HTTPResponse, offset: int) -> int:
    """Where the body of ``response`` starts: ``offset`` for a matching 206, else 0 (start over).

    A server that ignores Range answers 200 with the whole file; one that answers a different
    range than asked for cannot be trusted to line up with the part file, so both restart.
    """
    if offset and response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return offset
    return 0


def _expected_total(response: http.client.HTTPResponse, start: int) -> int | None:
    """Full file size from Content-Length (plus the resumed prefix), or None when not sent."""
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _stream(response: http.client.HTTPResponse, part: Path, start: int, chunk: int,
            progress: bool, desc: str) -> int:
    """Append the response body to ``part`` (truncated to ``start``) and return the bytes on disk."""
    total = _expected_total(response, start)
    with part.open("r+b" if start else "wb") as fh, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
            disable=not progress, leave=False) as bar:
        fh.seek(start)
        fh.truncate()
        while block := response.read(chunk):
            fh.write(block)
            bar.update(len(block))
        size = fh.tell()
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)
    return size


def _already_complete(err: urllib.error.HTTPError, offset: int) -> bool:
    """A 416 to ``bytes=<offset>-`` whose Content-Range total equals offset: the part is whole."""
    if err.code != 416 or not offset:
        return False
    match = re.match(r"bytes \*/(\d+)", err.headers.get("Content-Range", "") if err.headers else "")
    return bool(match) and int(match.group(1)) == offset


def _verify(path: Path, url: str, sha256: str | None) -> None:
    """Check the checksum; a mismatch deletes the file so the next run starts clean."""
    if sha256 is None:
        return
    actual = _sha256_of(path)
    if actual != sha256.lower():
        path.unlink(missing_ok=True)
        raise DatasetError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; "
                           f"the corrupt file {path} was deleted, run again to download it anew")


def download(url: str, dest: Path, sha256: str | None, progress: bool = True, chunk: int = 1 << 20,
             timeout: float = 30) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Bytes go to ``dest.part`` first; an interrupted run leaves it behind and the next run resumes
    from it with an HTTP Range request (starting over when the server ignores Range). The file is
    checked against ``sha256`` (when given) and only then renamed to ``dest``, so ``dest`` existing
    means complete. An existing ``dest`` is verified and reused without any network access.

    Raises:
        DatasetError: a network failure (naming the URL and where to put the file by hand) or a
            checksum mismatch (naming the URL, expected and actual digests).
    """
    dest = Path(dest)
    if dest.is_file():
        _verify(dest, url, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        try:
            with _open(url, offset, timeout) as response:
                start = _resume_offset(response, offset)
                _stream(response, part, start, chunk, progress, dest.name)
        except urllib.error.HTTPError as err:
            if not _already_complete(err, offset):
                raise
    except urllib.error.HTTPError as err:
        raise DatasetError(f"download of {url} failed: HTTP {err.code} {err.reason}; "
                           f"{_manual_hint(url, dest)}") from err
    except _NETWORK_ERRORS as err:
        reason = getattr(err, "reason", None) or err
        kept = f"the partial file {part} is kept and the next run resumes from it. " if part.exists() else ""
        raise DatasetError(f"download of {url} failed ({type(err).__name__}: {reason}). {kept}"
                           f"Without network access: {_manual_hint(url, dest)}") from err
    _verify(part, url, sha256)
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------- extract


def _check_member_name(name: str, archive: Path) -> None:
    """Reject a member name that is absolute or climbs out of the target (``..``)."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DatasetError(f"{archive}: unsafe member {name!r} (absolute path); refusing to extract")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise DatasetError(f"{archive}: unsafe member {name!r} ('..' path traversal); refusing to extract")
    if "\x00" in name:
        raise DatasetError(f"{archive}: unsafe member {name!r} (NUL in name); refusing to extract")


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    """Validate every zip entry: safe name and a plain file or directory (no symlink, no device)."""
    for info in zf.infolist():
        _check_member_name(info.filename, archive)
        mode = info.external_attr >> 16  # Unix mode, when the archiver stored one
        kind_bits = stat.S_IFMT(mode)  # 0 when only permission bits (or nothing) were stored
        if kind_bits and kind_bits not in (stat.S_IFREG, stat.S_IFDIR):
            kind = "symlink" if stat.S_ISLNK(mode) else "special file"
            raise DatasetError(f"{archive}: unsafe member {info.filename!r} ({kind}); refusing to extract")


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Validate one tar entry: safe name and a plain file or directory (no link, no device)."""
    _check_member_name(member.name, archive)
    if not (member.isfile() or member.isdir()):
        kind = ("symlink" if member.issym() else "hardlink" if member.islnk()
                else "device" if member.isdev() else "special file")
        raise DatasetError(f"{archive}: unsafe member {member.name!r} ({kind}); refusing to extract")


def _extract_into(archive: Path, target: Path) -> None:
    """Unpack ``archive`` (zip or tar, any compression) into ``target``, validating every member.

    Zip members are all checked before anything is written. Tar members are checked one by one as
    the stream is read (a second pass would decompress a multi-GB .tgz twice); a bad member stops
    extraction, and the caller discards ``target``.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _check_zip(zf, archive)
            zf.extractall(target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                _check_tar_member(member, archive)
                tf.extract(member, target, filter="data")
    else:
        raise DatasetError(f"{archive}: neither a zip nor a tar archive (a truncated download or an HTML "
                           "error page saved under the archive's name?); delete it and download again")


def _move_entries(source: Path, dest: Path) -> None:
    """Move each top-level entry of ``source`` into the existing ``dest``, never overwriting.

    Each rename is atomic, so a second archive (SUN ships two) can be unpacked into the same
    directory without disturbing what the first one put there.
    """
    entries = sorted(source.iterdir())
    clashes = [e.name for e in entries if (dest / e.name).exists()]
    if clashes:
        raise DatasetError(f"cannot extract into {dest}: {clashes} already exist there; remove them "
                           "(probably an earlier, incomplete extraction) and run again")
    for entry in entries:
        os.replace(entry, dest / entry.name)


def safe_extract(archive: Path, dest: Path) -> Path:
    """Unpack a zip or tar(.gz) ``archive`` into ``dest`` and return ``dest``.

    Every member is checked first (no absolute paths, no ``..``, no symlinks or hardlinks, no
    devices; tar members additionally go through ``tarfile``'s ``data`` filter). Extraction goes to
    a temporary directory next to ``dest``, which is renamed to ``dest`` (or, when ``dest`` exists,
    whose top-level entries are renamed into it), so an interrupted or rejected extraction leaves
    nothing behind.

    Raises:
        DatasetError: an unsafe member, an unreadable archive or a name clash in ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extract", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; it may become dest itself
    try:
        try:
            _extract_into(archive, tmp)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
            raise DatasetError(f"{archive}: cannot be extracted ({err}); delete it and download again") \
                from err
        if dest.exists():
            _move_entries(tmp, dest)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ------------------------------------------------------------------------------------ datasets


def dataset_dir(name: str, root: Path) -> Path:
    """The directory the loader of ``name`` takes as its root, under ``root`` (``data.root``)."""
    _remotes(name)
    return Path(root) / _DATASET_DIRS.get(name.lower(), name.lower())


def _remotes(name: str) -> list[Remote]:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def _missing(remote: Remote, root: Path) -> list[Path]:
    """The files ``remote`` provides that are not under ``root`` yet."""
    return [root / p for p in remote.provides if not (root / p).exists()]


def _fetch(remote: Remote, root: Path, progress: bool, keep_archive: bool) -> None:
    """Unpack ``remote`` under ``root``, downloading the archive first unless it is already there."""
    archive = root / DOWNLOADS / remote.filename
    # An archive already at ``archive`` (hand-placed or from an earlier run) is verified and reused
    # by download() without network access; ensure_dataset only gets here without one if allowed.
    download(remote.url, archive, remote.sha256, progress=progress)
    safe_extract(archive, root / remote.extract_to)
    still = _missing(remote, root)
    if still:
        raise DatasetError(f"{archive} was extracted into {root / remote.extract_to} but these expected "
                           f"paths are still missing (has the archive's layout changed?): "
                           f"{[str(p) for p in still]}")
    if not keep_archive:
        archive.unlink(missing_ok=True)


def ensure_dataset(name: str, root: Path, allow_download: bool, progress: bool = True,
                   keep_archive: bool = False) -> Path:
    """Make dataset ``name`` present under ``root`` and return the directory its loader reads.

    Files already in place are used as they are and nothing is downloaded. An archive placed by
    hand at ``<root>/downloads/<filename>`` is unpacked without network access. Otherwise the
    archive is downloaded (when ``allow_download``), unpacked and deleted (unless ``keep_archive``).

    Raises:
        DatasetError: files missing and downloading not allowed (listing the missing paths, the
            URLs and where to put them), or any download or extraction failure.
    """
    root = Path(root)
    wanting = [(r, _missing(r, root)) for r in _remotes(name)]
    wanting = [(r, m) for r, m in wanting if m]
    placed = [r for r, _ in wanting if (root / DOWNLOADS / r.filename).is_file()]
    if not allow_download and len(placed) < len(wanting):
        lines = [f"dataset {name!r} is not under {root} and downloading is not allowed."]
        for remote, missing in wanting:
            lines.append(f"  missing: {', '.join(str(p) for p in missing)}")
            lines.append(f"    from {remote.url}: extract it into {root / remote.extract_to}, or put the "
                         f"archive at {root / DOWNLOADS / remote.filename}")
        lines.append("Or allow downloading (the dataset's download option).")
        raise DatasetError("\n".join(lines))
    for remote, _ in wanting:
        _fetch(remote, root, progress, keep_archive)
    return dataset_dir(name, root)
