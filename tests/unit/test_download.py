"""Downloads against a local HTTP server (with Range support) and archive extraction safety."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from niwt.data import download as dl
from niwt.data.download import Remote, download, ensure_dataset, safe_extract
from niwt.data.raw import DatasetError

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless told not to; can cut a transfer."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, rng = 0, self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.cut_after is not None:  # announce everything, send only part, hang up
            payload, srv.cut_after = payload[:srv.cut_after], None
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]]
    honour_range: bool
    cut_after: int | None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.honour_range, httpd.cut_after = {"/a.bin": DATA}, [], True, None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------ download


def test_download_whole_file(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "a.bin"
    assert download(server.url("/a.bin"), dest, SHA, progress=False, chunk=1 << 16, timeout=5) == dest
    assert dest.read_bytes() == DATA and not dest.with_name("a.bin.part").exists()
    assert server.requests == [("/a.bin", None)]


def test_resume_from_part_file(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(DATA[:100_000])
    download(server.url("/a.bin"), dest, SHA, progress=False, timeout=5)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/a.bin", "bytes=100000-")]


def test_server_ignoring_range_restarts(server: _Server, tmp_path: Path) -> None:
    server.honour_range = False
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(b"x" * 5000)  # wrong prefix: must be overwritten
    download(server.url("/a.bin"), dest, SHA, progress=False, timeout=5)
    assert dest.read_bytes() == DATA


def test_cut_transfer_keeps_part_and_resumes(server: _Server, tmp_path: Path) -> None:
    server.cut_after = 120_000
    dest = tmp_path / "a.bin"
    with pytest.raises(DatasetError, match=re.escape(server.url("/a.bin")) + ".*resumes"):
        download(server.url("/a.bin"), dest, SHA, progress=False, timeout=5)
    part = dest.with_name("a.bin.part")
    assert part.stat().st_size == 120_000 and not dest.exists()
    download(server.url("/a.bin"), dest, SHA, progress=False, timeout=5)
    assert dest.read_bytes() == DATA and server.requests[-1] == ("/a.bin", "bytes=120000-")


def test_complete_part_answered_416_is_finalised(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(DATA)
    download(server.url("/a.bin"), dest, SHA, progress=False, timeout=5)
    assert dest.read_bytes() == DATA


def test_checksum_mismatch_deletes_part(server: _Server, tmp_path: Path) -> None:
    dest, wrong = tmp_path / "a.bin", "0" * 64
    url = server.url("/a.bin")
    with pytest.raises(DatasetError) as info:
        download(url, dest, wrong, progress=False, timeout=5)
    assert url in str(info.value) and wrong in str(info.value) and SHA in str(info.value)
    assert not dest.exists() and not dest.with_name("a.bin.part").exists()


def test_http_error_names_url_and_manual_location(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "missing.bin"
    with pytest.raises(DatasetError, match="HTTP 404") as info:
        download(server.url("/missing.bin"), dest, None, progress=False, timeout=5)
    assert server.url("/missing.bin") in str(info.value) and str(dest) in str(info.value)


def test_network_failure_names_url_and_manual_location(tmp_path: Path) -> None:
    url, dest = f"http://127.0.0.1:{_closed_port()}/x.zip", tmp_path / "x.zip"
    with pytest.raises(DatasetError) as info:
        download(url, dest, None, progress=False, timeout=2)
    assert url in str(info.value) and f"put it at {dest}" in str(info.value)


def test_existing_file_is_verified_without_network(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.write_bytes(DATA)
    assert download(f"http://127.0.0.1:{_closed_port()}/a.bin", dest, SHA, progress=False) == dest
    with pytest.raises(DatasetError, match="checksum mismatch"):
        download("http://127.0.0.1:1/a.bin", dest, "f" * 64, progress=False)
    assert not dest.exists()


# ------------------------------------------------------------------------------------- extract


def _zip(path: Path, members: dict[str, bytes], infos: list[tuple[zipfile.ZipInfo, bytes]] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info, data in infos:
            zf.writestr(info, data)
    return path


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".extract")]


def test_good_zip_and_tar_extract(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "good.zip", {"top/a.txt": b"a", "top/sub/b.txt": b"b"})
    out = safe_extract(archive, tmp_path / "out_zip")
    assert (out / "top/a.txt").read_bytes() == b"a" and (out / "top/sub/b.txt").read_bytes() == b"b"
    members = [(_info("top", tarfile.DIRTYPE), b""), (_info("top/a.txt"), b"a")]
    archive = _tar(tmp_path / "good.tar.gz", members)
    out = safe_extract(archive, tmp_path / "out_tar")
    assert (out / "top/a.txt").read_bytes() == b"a"
    assert _leftovers(tmp_path) == []


def _symlink_zip_info() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


MALICIOUS = {
    "zip ..": lambda p: _zip(p / "m.zip", {"../evil.txt": b"x"}),
    "zip nested ..": lambda p: _zip(p / "m.zip", {"ok/../../evil.txt": b"x"}),
    "zip absolute": lambda p: _zip(p / "m.zip", {"/abs/evil.txt": b"x"}),
    "zip symlink": lambda p: _zip(p / "m.zip", {}, [(_symlink_zip_info(), b"/etc/passwd")]),
    "tar ..": lambda p: _tar(p / "m.tgz", [(_info("../evil.txt"), b"x")]),
    "tar absolute": lambda p: _tar(p / "m.tgz", [(_info("/abs/evil.txt"), b"x")]),
    "tar symlink": lambda p: _tar(p / "m.tgz", [(_info("link", tarfile.SYMTYPE, "/etc/passwd"), b"")]),
    "tar hardlink": lambda p: _tar(p / "m.tgz", [(_info("a.txt"), b"a"),
                                                 (_info("h", tarfile.LNKTYPE, "a.txt"), b"")]),
    "tar device": lambda p: _tar(p / "m.tgz", [(_info("dev", tarfile.CHRTYPE), b"")]),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_archives_are_rejected(case: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = MALICIOUS[case](tmp_path)
    with pytest.raises(DatasetError, match="unsafe member"):
        safe_extract(archive, work / "out")
    assert not (work / "out").exists() and _leftovers(work) == []
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()


def test_second_archive_merges_and_clash_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "sun"
    safe_extract(_zip(tmp_path / "one.zip", {"images/a.jpg": b"1"}), dest)
    safe_extract(_zip(tmp_path / "two.zip", {"SUNAttributeDB/images.mat": b"2"}), dest)
    assert (dest / "images/a.jpg").exists() and (dest / "SUNAttributeDB/images.mat").exists()
    with pytest.raises(DatasetError, match="already exist"):
        safe_extract(tmp_path / "one.zip", dest)
    assert _leftovers(tmp_path) == []


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "page.zip").write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(DatasetError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "page.zip", tmp_path / "out")


# ------------------------------------------------------------------------------ ensure_dataset


@pytest.fixture
def toy(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Remote:
    """A one-archive dataset 'toy' served by the local server."""
    blob = _zip(tmp_path / "blob.zip", {"toy_root/a.txt": b"a", "toy_root/b.txt": b"b"}).read_bytes()
    server.files["/toy.zip"] = blob
    remote = Remote(server.url("/toy.zip"), "toy.zip", hashlib.sha256(blob).hexdigest(), "toy",
                    ("toy/toy_root/a.txt", "toy/toy_root/b.txt"))
    monkeypatch.setitem(dl.DATASETS, "toy", [remote])
    return remote


def test_ensure_uses_present_files(server: _Server, toy: Remote, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in toy.provides:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("here")
    assert ensure_dataset("toy", root, allow_download=True, progress=False) == root / "toy"
    assert server.requests == []


def test_ensure_without_download_lists_what_is_missing(server: _Server, toy: Remote, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(DatasetError) as info:
        ensure_dataset("toy", root, allow_download=False)
    text = str(info.value)
    assert str(root / "toy/toy_root/a.txt") in text and toy.url in text
    assert str(root / "downloads" / "toy.zip") in text and str(root / "toy") in text
    assert server.requests == []


def test_ensure_downloads_and_extracts(server: _Server, toy: Remote, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert ensure_dataset("toy", root, allow_download=True, progress=False) == root / "toy"
    assert (root / "toy/toy_root/b.txt").read_bytes() == b"b"
    assert not (root / "downloads" / "toy.zip").exists()  # archive removed after extraction
    assert len(server.requests) == 1


def test_ensure_unpacks_hand_placed_archive_offline(server: _Server, toy: Remote, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "toy.zip").write_bytes(server.files["/toy.zip"])
    ensure_dataset("toy", root, allow_download=False, keep_archive=True)
    assert (root / "toy/toy_root/a.txt").exists() and (root / "downloads" / "toy.zip").exists()
    assert server.requests == []


def test_registry_and_unknown_name(tmp_path: Path) -> None:
    assert {"awa2", "cub", "sun", "xlsa17"} <= set(dl.DATASETS)
    assert all(r.sha256 is None or len(r.sha256) == 64 for rs in dl.DATASETS.values() for r in rs)
    assert dl.dataset_dir("awa2", tmp_path) == tmp_path / "awa2" / "Animals_with_Attributes2"
    with pytest.raises(DatasetError, match="unknown dataset"):
        ensure_dataset("imagenet", tmp_path, allow_download=False)
