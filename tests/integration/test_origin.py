"""`edge origin` end to end: the real process on a loopback port, serving a small demo
archive it generated itself, driven by aiohttp's client, curl and raw sockets."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.support.procs import REPO, Proc, edge_cmd, free_port, start

BOOK = "/books/the-voyage-of-the-narwhal.txt"
RULE = "/books/the-salt-road.txt=public, max-age=5"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Not created here: `--demo` must create it.
    return tmp_path_factory.mktemp("origin") / "archive"


@pytest.fixture(scope="module")
def origin(root: Path) -> Iterator[Proc]:
    port = free_port()
    cmd = edge_cmd(
        "origin", "--root", str(root), "--listen", f"127.0.0.1:{port}", "--demo", "--small"
    )
    proc = start([*cmd, "--rule", RULE], port, root.parent / "origin.log")
    try:
        yield proc
    finally:
        proc.stop()


async def fetch(
    url: str, method: str = "GET", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    """(status, headers (case-insensitive, as aiohttp's client spells them), body)."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.request(method, url, headers=headers, allow_redirects=False) as r,
    ):
        return r.status, CIMultiDict(r.headers), await r.read()


def curl(*args: str) -> str:
    done = subprocess.run(
        ["curl", "-s", "--max-time", "10", *args], capture_output=True, check=True
    )
    return done.stdout.decode("utf-8", "replace")


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client normalises the path) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """multipart/byteranges (RFC 9110 Section 14.6) -> [(part headers, part bytes)]."""
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", content_type)
    assert match, content_type
    delimiter = b"--" + match[1].encode()
    assert body.startswith(delimiter + b"\r\n")
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for raw in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, _, data = raw.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((fields, data))
    return parts


def write_old(path: Path, data: bytes, age: float = 3600) -> None:
    """Write a file whose mtime is `age` seconds ago, so its Last-Modified is a strong
    validator (RFC 9110 Section 8.8.2.2) and If-Modified-Since has room to differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))


# ---------------------------------------------------------------- basics


async def test_start_prints_where_it_listens_and_generates_the_demo(origin: Proc, root: Path):
    first = origin.output().splitlines()[0]
    assert first == f"edge origin: serving {root.resolve()} on {origin.url}"
    assert (root / BOOK.lstrip("/")).is_file()
    assert (root / "catalogue.json").is_file()


async def test_get_and_head_headers(origin: Proc, root: Path):
    path = root / BOOK.lstrip("/")
    status, h, body = await fetch(origin.url + BOOK)
    assert status == 200
    assert body == path.read_bytes()
    st = path.stat()
    assert h["Content-Length"] == str(st.st_size)
    assert h["Content-Type"] == "text/plain; charset=utf-8"
    assert h["Accept-Ranges"] == "bytes"
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"', h["ETag"])
    assert h["Last-Modified"] == email.utils.formatdate(int(st.st_mtime), usegmt=True)
    assert abs(email.utils.parsedate_to_datetime(h["Date"]).timestamp() - time.time()) < 5
    assert h["Cache-Control"] == "public, max-age=3600"

    status, head, body = await fetch(origin.url + BOOK, "HEAD")
    assert status == 200 and body == b""
    for name in ("Content-Length", "Content-Type", "ETag", "Last-Modified", "Cache-Control"):
        assert head[name] == h[name]

    # curl sees the same: a HEAD with no body and the full length.
    out = curl("-I", origin.url + BOOK)
    assert out.startswith("HTTP/1.1 200")
    assert f"Content-Length: {st.st_size}\r\n" in out


async def test_content_types(origin: Proc):
    expected = {
        "/catalogue.json": "application/json",
        "/README.txt": "text/plain; charset=utf-8",
        "/images/moonrise.png": "image/png",
        "/images/archive-seal.svg": "image/svg+xml",
        "/audio/harbour-bell.wav": "audio/wav",
        "/bundles/scans-volume-1.bin": "application/octet-stream",
    }
    for path, ctype in expected.items():
        status, h, _ = await fetch(origin.url + path, "HEAD")
        assert (status, h["Content-Type"]) == (200, ctype), path


async def test_bundle_is_streamed_whole_and_intact(origin: Proc, root: Path):
    catalogue = json.loads((root / "catalogue.json").read_bytes())
    item = next(i for i in catalogue["items"] if i["path"] == "/bundles/complete-archive.bin")
    status, h, body = await fetch(origin.url + item["path"])
    assert status == 200
    assert len(body) == item["size"] == int(h["Content-Length"]) == 4 << 20
    assert hashlib.sha256(body).hexdigest() == item["sha256"]


async def test_cache_control_rules_and_rule_option(origin: Proc):
    expected = {
        "/catalogue.json": "public, max-age=60",
        BOOK: "public, max-age=3600",
        "/books/the-salt-road.txt": "public, max-age=5",  # the --rule, before the defaults
        "/images/moonrise.png": "public, max-age=3600",
        "/audio/harbour-bell.wav": "public, max-age=3600",
        "/bundles/scans-volume-2.bin": "public, max-age=86400",
        "/README.txt": "public, max-age=300",
        "/": "public, max-age=60",
        "/books/": "public, max-age=60",
    }
    for path, cc in expected.items():
        _, h, _ = await fetch(origin.url + path, "HEAD")
        assert h["Cache-Control"] == cc, path


async def test_surrogate_keys_name_the_collection_and_the_item(origin: Proc):
    expected = {
        BOOK: "books books/the-voyage-of-the-narwhal.txt",
        "/bundles/scans-volume-1.bin": "bundles bundles/scans-volume-1.bin",
        "/catalogue.json": "catalogue.json",
        "/books/": "books books/",
        "/": "/",
    }
    for path, keys in expected.items():
        _, h, _ = await fetch(origin.url + path, "HEAD")
        assert h["Surrogate-Key"] == keys, path


async def test_other_methods_get_405_with_allow(origin: Proc):
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, h, _ = await fetch(origin.url + BOOK, method)
        assert (status, h["Allow"]) == (405, "GET, HEAD"), method


async def test_not_found(origin: Proc):
    status, h, body = await fetch(origin.url + "/books/no-such-book.txt")
    assert status == 404 and body == b"404 Not Found\n"
    assert "ETag" not in h and "Cache-Control" not in h
    # A file is not a folder.
    assert (await fetch(origin.url + BOOK + "/"))[0] == 404


# ---------------------------------------------------------------- validators


async def test_etag_is_stable_and_changes_with_the_content(origin: Proc, root: Path):
    path = root / "notes" / "etag.txt"
    write_old(path, b"first version\n")
    url = origin.url + "/notes/etag.txt"
    etags = [(await fetch(url, "HEAD"))[1]["ETag"] for _ in range(3)]
    assert len(set(etags)) == 1
    before = etags[0]

    # Rewritten in place (new size, new mtime).
    write_old(path, b"second, longer version\n", age=1800)
    _, h, body = await fetch(url)
    assert body == b"second, longer version\n" and h["ETag"] != before
    second = h["ETag"]

    # Replaced by rename with the same size and the very same mtime: only the inode
    # tells them apart, and the ETag must still change.
    st = path.stat()
    tmp = path.with_name("etag.new")
    tmp.write_bytes(b"SECOND, LONGER VERSION\n")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    _, h, body = await fetch(url)
    assert body == b"SECOND, LONGER VERSION\n" and h["ETag"] not in (before, second)


async def test_if_none_match_gives_304_with_validators_and_no_body(origin: Proc):
    url = origin.url + BOOK
    _, h, _ = await fetch(url, "HEAD")
    for inm in (h["ETag"], f'"x", {h["ETag"]}', "W/" + h["ETag"], "*"):
        for method in ("GET", "HEAD"):
            status, nm, body = await fetch(url, method, **{"If-None-Match": inm})
            assert status == 304 and body == b"", (inm, method)
            assert "Content-Length" not in nm
            for name in ("ETag", "Last-Modified", "Cache-Control", "Surrogate-Key", "Date"):
                assert name in nm, name
            assert nm["ETag"] == h["ETag"]
    status, _, _ = await fetch(url, **{"If-None-Match": '"something-else"'})
    assert status == 200
    # curl, too.
    out = curl("-i", "-H", f"If-None-Match: {h['ETag']}", url)
    assert out.startswith("HTTP/1.1 304")


async def test_if_modified_since(origin: Proc, root: Path):
    write_old(root / "notes" / "ims.txt", b"unchanged for an hour\n")
    url = origin.url + "/notes/ims.txt"
    _, h, _ = await fetch(url, "HEAD")
    lm = h["Last-Modified"]
    earlier = email.utils.formatdate(email.utils.parsedate_to_datetime(lm).timestamp() - 10)
    assert (await fetch(url, **{"If-Modified-Since": lm}))[0] == 304
    assert (await fetch(url, "HEAD", **{"If-Modified-Since": lm}))[0] == 304
    assert (await fetch(url, **{"If-Modified-Since": earlier}))[0] == 200
    assert (await fetch(url, **{"If-Modified-Since": "not a date"}))[0] == 200
    # If-None-Match takes precedence: a non-matching tag wins over a satisfied date.
    status, _, _ = await fetch(url, **{"If-None-Match": '"other"', "If-Modified-Since": lm})
    assert status == 200


async def test_if_match_and_if_unmodified_since(origin: Proc, root: Path):
    write_old(root / "notes" / "match.txt", b"match me\n")
    url = origin.url + "/notes/match.txt"
    _, h, _ = await fetch(url, "HEAD")
    etag, lm = h["ETag"], h["Last-Modified"]
    earlier = email.utils.formatdate(email.utils.parsedate_to_datetime(lm).timestamp() - 10)
    assert (await fetch(url, **{"If-Match": '"nope"'}))[0] == 412
    assert (await fetch(url, **{"If-Match": "W/" + etag}))[0] == 412  # strong comparison
    assert (await fetch(url, **{"If-Match": etag}))[0] == 200
    assert (await fetch(url, **{"If-Match": "*"}))[0] == 200
    assert (await fetch(url, **{"If-Unmodified-Since": earlier}))[0] == 412
    assert (await fetch(url, **{"If-Unmodified-Since": lm}))[0] == 200
    # If-Unmodified-Since is ignored when If-Match is present...
    assert (await fetch(url, **{"If-Match": etag, "If-Unmodified-Since": earlier}))[0] == 200
    # ...and If-Match is evaluated before If-None-Match.
    assert (await fetch(url, **{"If-Match": '"nope"', "If-None-Match": etag}))[0] == 412


# ---------------------------------------------------------------- ranges


async def test_single_suffix_and_open_ranges(origin: Proc, root: Path):
    data = (root / BOOK.lstrip("/")).read_bytes()
    size = len(data)
    url = origin.url + BOOK
    cases = {
        "bytes=0-99": (0, 99),
        "bytes=-500": (size - 500, size - 1),
        "bytes=100-": (100, size - 1),
        f"bytes=1000-{size + 5000}": (1000, size - 1),
    }
    for spec, (first, last) in cases.items():
        status, h, body = await fetch(url, Range=spec)
        assert status == 206, spec
        assert h["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert h["Content-Type"] == "text/plain; charset=utf-8"
        assert body == data[first : last + 1]
        assert h["Content-Length"] == str(last - first + 1)
    # curl's -r, on a bundle (sendfile from the middle of a large file).
    bundle = (root / "bundles" / "scans-volume-2.bin").read_bytes()
    out = subprocess.run(
        ["curl", "-s", "-r", "1000000-1000999", origin.url + "/bundles/scans-volume-2.bin"],
        capture_output=True,
        check=True,
    ).stdout
    assert out == bundle[1_000_000:1_001_000]


async def test_multiple_ranges_are_multipart_byteranges(origin: Proc, root: Path):
    data = (root / BOOK.lstrip("/")).read_bytes()
    size = len(data)
    status, h, body = await fetch(origin.url + BOOK, Range="bytes=0-9, 200-299,-50")
    assert status == 206
    assert "Content-Range" not in h
    assert int(h["Content-Length"]) == len(body)
    parts = parse_multipart(body, h["Content-Type"])
    expected = [(0, 9), (200, 299), (size - 50, size - 1)]
    assert len(parts) == len(expected)
    for (fields, chunk), (first, last) in zip(parts, expected, strict=True):
        assert fields["Content-Type"] == "text/plain; charset=utf-8"
        assert fields["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert chunk == data[first : last + 1]


async def test_overlapping_ranges_coalesce_and_too_many_ranges_get_everything(
    origin: Proc, root: Path
):
    data = (root / BOOK.lstrip("/")).read_bytes()
    status, h, body = await fetch(origin.url + BOOK, Range="bytes=0-99,50-149,150-199")
    assert status == 206 and h["Content-Range"] == f"bytes 0-199/{len(data)}"
    assert body == data[:200]
    many = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17))
    status, h, body = await fetch(origin.url + BOOK, Range=many)
    assert status == 200 and body == data


async def test_unsatisfiable_range_is_416(origin: Proc, root: Path):
    size = (root / BOOK.lstrip("/")).stat().st_size
    for spec in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        status, h, _ = await fetch(origin.url + BOOK, Range=spec)
        assert status == 416, spec
        assert h["Content-Range"] == f"bytes */{size}"


async def test_invalid_range_is_ignored(origin: Proc, root: Path):
    data = (root / BOOK.lstrip("/")).read_bytes()
    for spec in ("bytes=abc", "bytes=5-2", "items=0-1", "bytes=", "bytes=1-2-3", "0-10"):
        status, h, body = await fetch(origin.url + BOOK, Range=spec)
        assert (status, body) == (200, data), spec
        assert "Content-Range" not in h


async def test_range_on_head_is_ignored(origin: Proc, root: Path):
    # RFC 9110 Section 14.2: range handling is defined for GET only.
    size = (root / BOOK.lstrip("/")).stat().st_size
    status, h, _ = await fetch(origin.url + BOOK, "HEAD", Range="bytes=0-9")
    assert status == 200 and h["Content-Length"] == str(size)


async def test_if_range(origin: Proc, root: Path):
    write_old(root / "notes" / "if-range.txt", b"0123456789" * 100)
    url = origin.url + "/notes/if-range.txt"
    _, h, _ = await fetch(url, "HEAD")
    etag, lm = h["ETag"], h["Last-Modified"]
    for validator in (etag, lm):
        status, _, body = await fetch(url, Range="bytes=0-4", **{"If-Range": validator})
        assert (status, body) == (206, b"01234"), validator
    for validator in ('"stale"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT", "junk"):
        status, _, body = await fetch(url, Range="bytes=0-4", **{"If-Range": validator})
        assert status == 200 and len(body) == 1000, validator


async def test_future_mtime_is_sent_as_now_and_is_a_weak_date(origin: Proc, root: Path):
    # RFC 9110 Section 8.8.2.1: Last-Modified is never later than Date; and a date that
    # is not at least a second old is weak, so If-Range with it sends everything.
    path = root / "notes" / "future.txt"
    write_old(path, b"abcdefghij", age=-3600)
    url = origin.url + "/notes/future.txt"
    _, h, _ = await fetch(url, "HEAD")
    last_modified = email.utils.parsedate_to_datetime(h["Last-Modified"]).timestamp()
    assert last_modified <= email.utils.parsedate_to_datetime(h["Date"]).timestamp()
    status, _, body = await fetch(url, Range="bytes=0-1", **{"If-Range": h["Last-Modified"]})
    assert (status, body) == (200, b"abcdefghij")
    status, _, body = await fetch(url, Range="bytes=0-1", **{"If-Range": h["ETag"]})
    assert (status, body) == (206, b"ab")


def test_a_file_truncated_while_sent_ends_in_a_short_body_and_a_closed_connection(
    origin: Proc, root: Path
):
    # The client must be able to tell: a short body on a closed connection, never a
    # complete-looking response (an edge would otherwise store a truncated object).
    path = root / "notes" / "shrinking.bin"
    write_old(path, b"\x01" * (32 << 20))
    with socket.create_connection(("127.0.0.1", origin.port), timeout=10) as s:
        s.sendall(b"GET /notes/shrinking.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        received = s.recv(65536)
        with open(path, "r+b") as f:
            f.truncate(1 << 20)
        while chunk := s.recv(1 << 20):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Length: 33554432" in head
    assert len(body) < 32 << 20


# ---------------------------------------------------------------- confinement


def test_traversal_is_refused(origin: Proc, root: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root\n")
    (root / "notes").mkdir(exist_ok=True)
    link = root / "notes" / "escape.txt"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    dir_link = root / "notes" / "outside"
    dir_link.unlink(missing_ok=True)
    dir_link.symlink_to(tmp_path, target_is_directory=True)
    (root / ".private").write_text("hidden\n")
    depth = "/".join([".."] * len(root.parts))
    attempts = {
        f"/{depth}/etc/passwd": "400",
        f"/books/{depth}{secret}": "400",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd": "400",
        "/books/%2E%2E/%2E%2E/etc/passwd": "400",
        "/books/..%2f..%2f..%2fetc%2fpasswd": "400",
        "/books%5c..%5c..%5cetc%5cpasswd": "400",
        "/catalogue.json%00.txt": "400",
        "/%ff%fe": "400",
        "/bad%zzescape": "400",
        "/notes/escape.txt": "404",
        "/notes/outside/secret.txt": "404",
        "/notes/outside/": "404",
        "/.private": "404",
        "/books/.hidden-by-name.partial": "404",
    }
    for path, code in attempts.items():
        got = curl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", origin.url + path)
        assert got == code, path
    # Without any client in the way, including an absolute-form request target.
    for target in (b"/../../../../etc/passwd", b"http://x/../../etc/passwd", b"//etc/passwd"):
        answer = raw_request(
            origin.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.split(b"\r\n")[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 404 Not Found")
        assert b"root:" not in answer
    # A symlink that stays inside the root is fine.
    inside = root / "notes" / "alias.txt"
    inside.unlink(missing_ok=True)
    inside.symlink_to(root / "README.txt")
    assert curl(origin.url + "/notes/alias.txt") == (root / "README.txt").read_text()


# ---------------------------------------------------------------- listings


async def test_listings(origin: Proc):
    status, h, body = await fetch(origin.url + "/")
    assert status == 200 and h["Content-Type"] == "text/html; charset=utf-8"
    assert h["Vary"] == "Accept"
    page = body.decode()
    for collection in ("books/", "images/", "audio/", "bundles/", "catalogue.json"):
        assert f'href="{collection}"' in page

    status, h, body = await fetch(origin.url + "/books/", Accept="application/json")
    assert status == 200 and h["Content-Type"] == "application/json"
    listing = json.loads(body)
    assert listing["path"] == "/books/"
    names = {e["name"] for e in listing["entries"]}
    assert "the-voyage-of-the-narwhal.txt" in names and len(names) == 20
    assert all(e["type"] == "file" and e["size"] > 0 for e in listing["entries"])

    status, h, _ = await fetch(origin.url + "/books")
    assert (status, h["Location"]) == (301, "/books/")

    _, h, _ = await fetch(origin.url + "/books/")
    status, _, body = await fetch(origin.url + "/books/", **{"If-None-Match": h["ETag"]})
    assert (status, body) == (304, b"")


# ---------------------------------------------------------------- the command line


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        edge_cmd("origin", *args), capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge: "), done.stderr
    assert words in lines[0]


def test_cli_bad_listen(root: Path, origin: Proc):
    # Each is a process start; the parser's other cases are unit-tested in edge's config.
    for listen in ("nonsense", "127.0.0.1:99999"):
        assert_one_line_error(run_cli("--root", str(root), "--listen", listen), 2, "HOST:PORT")


def test_cli_missing_root(tmp_path: Path):
    assert_one_line_error(run_cli("--listen", f"127.0.0.1:{free_port()}"), 2, "--root")
    missing = tmp_path / "nowhere"
    done = run_cli("--root", str(missing), "--listen", f"127.0.0.1:{free_port()}")
    assert_one_line_error(done, 2, "does not exist")
    assert not missing.exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    done = run_cli("--root", str(a_file), "--listen", f"127.0.0.1:{free_port()}")
    assert_one_line_error(done, 2, "not a directory")


def test_cli_bad_rule_and_small_without_demo(root: Path, origin: Proc):
    listen = f"127.0.0.1:{free_port()}"
    # Each is a process start; tests/unit/test_origin_http.py has the parser's other cases.
    for rule, words in (("no-equals-sign", "GLOB=CACHE-CONTROL"), ("/x=max-age=6\r\nX: 1", "")):
        done = run_cli("--root", str(root), "--listen", listen, "--rule", rule)
        assert_one_line_error(done, 2, words)
    assert_one_line_error(run_cli("--root", str(root), "--small"), 2, "--demo")


def test_cli_port_in_use(root: Path, origin: Proc):
    assert_one_line_error(
        run_cli("--root", str(root), "--listen", f"127.0.0.1:{origin.port}"),
        1,
        "cannot listen on",
    )


def demo_files(root: Path) -> dict[Path, tuple[int, int]]:
    """(mtime_ns, inode) of every file the demo writes."""
    files = [root / "README.txt", root / "catalogue.json"]
    for collection in ("books", "images", "audio", "bundles"):
        files += (root / collection).iterdir()
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in files}


def test_cli_demo_is_idempotent(root: Path, origin: Proc, tmp_path: Path):
    before = demo_files(root)
    assert len(before) == 2 + 20 + 5 + 2 + 3
    port = free_port()
    cmd = edge_cmd(
        "origin", "--root", str(root), "--listen", f"127.0.0.1:{port}", "--demo", "--small"
    )
    second = start(cmd, port, tmp_path / "second.log")
    try:
        assert demo_files(root) == before
    finally:
        assert second.stop() == 0
    assert "Traceback" not in second.output()


def test_stops_cleanly_on_sigterm_and_sigint(root: Path, origin: Proc, tmp_path: Path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = free_port()
        cmd = edge_cmd("origin", "--root", str(root), "--listen", f"127.0.0.1:{port}")
        proc = start(cmd, port, tmp_path / f"stop-{sig}.log")
        assert proc.stop(sig) == 0
        assert "Traceback" not in proc.output()
