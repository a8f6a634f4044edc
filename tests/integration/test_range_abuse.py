"""Range abuse at a real edge (RFC 9110 Section 14.2): however a Range is written, a
range request never costs more than the object -- for a small stored object (from the
scriptable upstream) and for a big sliced one (from `edge origin`, 64 KiB slices), on
a miss and on a hit. Raw sockets, so what is counted is what crossed the wire."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest

from edge.rfc.ranges import MAX_RANGES, ByteRange, multipart_length
from tests.integration.conftest import NodeFactory
from tests.support.guardkit import exchange, status_of
from tests.support.procs import Proc, edge_cmd, free_port, start
from tests.support.upstream import body_for

SMALL = 10_000
SLICE = 64 << 10
BIG = 5 * SLICE + 123  # five 64 KiB slices and a bit, over the 128 KiB threshold
SLICING = ("--slice-size", "64K", "--slice-threshold", "128K")

#: Head fields a 206 may carry that the 200 does not (Content-Range, a multipart
#: Content-Type with its boundary): the most its head may outweigh the 200's.
HEAD_SLACK = 128


class Reply:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        self.status = status_of(raw)
        self.head = head.decode("latin-1")
        self.fields: dict[str, str] = {}
        for line in self.head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            self.fields[name.strip().lower()] = value.strip()

    def field(self, name: str) -> str | None:
        return self.fields.get(name.lower())

    @property
    def hit(self) -> bool:
        return "hit" in (self.field("Cache-Status") or "").split("; ")


def ask(port: int, path: str, value: str | None = None) -> Reply:
    """One GET on a fresh connection, everything read until the edge closes it."""
    range_line = "" if value is None else f"Range: {value}\r\n"
    data = f"GET {path} HTTP/1.1\r\nHost: a\r\n{range_line}Connection: close\r\n\r\n"
    raw, closed = exchange(port, data.encode(), timeout=20)
    assert closed, raw[:300]
    reply = Reply(raw)
    assert reply.field("Content-Length") == str(len(reply.body)), reply.head  # complete
    return reply


def parts(reply: Reply) -> list[tuple[int, int, bytes]]:
    """The parts of a multipart/byteranges body: (first, last, bytes)."""
    ctype = reply.field("Content-Type") or ""
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", ctype)
    assert match, ctype
    delimiter = b"\r\n--" + match.group(1).encode()
    pieces = reply.body.split(delimiter)
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n", reply.body[-80:]
    out = []
    for piece in pieces[1:-1]:
        head, _, data = piece.partition(b"\r\n\r\n")
        span = re.search(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)", head)
        assert span, head
        first, last = int(span.group(1)), int(span.group(2))
        assert len(data) == last - first + 1
        out.append((first, last, data))
    return out


# -------------------------------------------------------------------- the objects


class Objects:
    """Two edges with slicing at 64 KiB over 128 KiB: one in front of the scriptable
    upstream (small objects, stored whole), one in front of a real `edge origin`
    (Accept-Ranges and validators: big objects are stored as slices)."""

    def __init__(self, small_port: int, big_port: int, archive: Path, origin: Proc) -> None:
        self.ports = {"small": small_port, "big": big_port}
        self.archive = archive
        self.origin = origin
        self.count = 0

    def fresh(self, kind: str) -> tuple[int, str, bytes]:
        """A new object nobody has asked for yet: (edge port, path, bytes)."""
        self.count += 1
        if kind == "small":
            path = f"/small-{self.count}"
            return self.ports["small"], f"{path}?size={SMALL}", body_for(path, SMALL)
        name = f"big-{self.count}.bin"
        block = hashlib.sha256(name.encode()).digest() * 2048
        data = (block * (BIG // len(block) + 1))[:BIG]
        (self.archive / name).write_bytes(data)
        return self.ports["big"], f"/{name}", data

    def origin_lines(self, path: str, at_least: int = 0) -> list[str]:
        """The origin's access-log lines for `path`. The origin logs a request once its
        response is written, which can be after the client has the bytes: with
        `at_least`, wait (a few seconds at most) for that many lines to be there."""
        deadline = time.monotonic() + 5
        while True:
            log = self.origin.output().splitlines()
            lines = [line for line in log if f'"GET {path} ' in line]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


@pytest.fixture
def objects(node: NodeFactory, upstream: Proc, procs: list[Proc], tmp_path: Path) -> Objects:
    archive = tmp_path / "archive"
    archive.mkdir()
    port = free_port()
    origin = start(
        edge_cmd("origin", "--root", str(archive), "--listen", f"127.0.0.1:{port}"),
        port,
        tmp_path / "origin.log",
        health_path="/",
    )
    procs.append(origin)
    small = node("serve", "--upstream", upstream.url, *SLICING, name="ranges-small")
    big = node("serve", "--upstream", origin.url, *SLICING, name="ranges-big")
    return Objects(
        int(small.url.rsplit(":", 1)[1]), int(big.url.rsplit(":", 1)[1]), archive, origin
    )


KINDS = ["small", "big"]
VISITS = ("miss", "hit")


def bounded(reply: Reply, whole: Reply, data: bytes) -> None:
    """Never more than the object: the body at most its length, and the whole answer
    on the wire at most the plain 200's (give or take a Content-Range)."""
    assert reply.status in (200, 206), reply.head
    assert len(reply.body) <= len(data), (len(reply.body), len(data))
    assert len(reply.raw) <= len(whole.raw) + HEAD_SLACK, (len(reply.raw), len(whole.raw))


# ------------------------------------------------------------------------- tests


BOMBS = {
    "1000 whole-object ranges": "bytes=" + ",".join(["0-"] * 1000),
    "16 overlapping whole-object ranges": "bytes=" + ",".join(["0-"] * MAX_RANGES),
    "16 overlapping suffixes": "bytes=" + ",".join(f"-{n * 300}" for n in range(MAX_RANGES, 0, -1)),
    "500 tiny ranges": "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 1000, 2)),
    "17 ranges": "bytes=" + ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(MAX_RANGES + 1)),
    "huge last position": "bytes=0-" + "9" * 3000,
    "16 overlapping then disjoint": "bytes=" + ",".join(["0-99"] * 15 + ["9000-9099"]),
}


@pytest.mark.parametrize("kind", KINDS)
def test_range_bombs_never_cost_more_than_the_object(objects: Objects, kind: str) -> None:
    for name, value in BOMBS.items():
        port, path, data = objects.fresh(kind)
        for visit in VISITS:
            reply = ask(port, path, value)
            whole = ask(port, path)
            assert whole.status == 200 and whole.body == data
            bounded(reply, whole, data)
            if reply.status == 206 and reply.field("Content-Range"):
                first, last = map(int, re.findall(r"\d+", reply.field("Content-Range") or "")[:2])
                assert reply.body == data[first : last + 1], (name, visit)
            elif reply.status == 206:
                for first, last, piece in parts(reply):
                    assert piece == data[first : last + 1], (name, visit)
            else:
                assert reply.body == data, (name, visit)
            assert (visit == "hit") <= reply.hit, (name, visit, reply.head)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("visit", VISITS)
def test_more_than_max_ranges_get_the_whole_200(objects: Objects, kind: str, visit: str) -> None:
    """Section 14.2: 17 ranges is abuse, whatever they ask for: the whole 200."""
    port, path, data = objects.fresh(kind)
    if visit == "hit":
        assert ask(port, path).body == data
    value = "bytes=" + ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(MAX_RANGES + 1))
    reply = ask(port, path, value)
    assert reply.status == 200 and reply.body == data
    assert reply.field("Content-Range") is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("visit", VISITS)
def test_many_tiny_ranges_get_the_whole_200(objects: Objects, kind: str, visit: str) -> None:
    port, path, data = objects.fresh(kind)
    if visit == "hit":
        assert ask(port, path).body == data
    reply = ask(port, path, "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 200, 2)))
    assert reply.status == 200 and reply.body == data


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("visit", VISITS)
def test_overlapping_ranges_are_one_part(objects: Objects, kind: str, visit: str) -> None:
    """Section 14.2: `0-99,50-149` is one 206 for 0-149, not two parts."""
    port, path, data = objects.fresh(kind)
    if visit == "hit":
        assert ask(port, path).body == data
    reply = ask(port, path, "bytes=0-99,50-149")
    assert reply.status == 206 and reply.body == data[:150]
    assert reply.field("Content-Range") == f"bytes 0-149/{len(data)}"
    adjacent = ask(port, path, "bytes=200-299,0-99,100-199")
    assert adjacent.status == 206 and adjacent.body == data[:300]
    assert adjacent.field("Content-Range") == f"bytes 0-299/{len(data)}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("visit", VISITS)
def test_unsorted_ranges_come_in_ascending_order(objects: Objects, kind: str, visit: str) -> None:
    """Section 14.2 lets a server reorder parts: edge sends them ascending. The body is
    exactly what edge.rfc.ranges.multipart_length costs it at, which is what parse_range
    weighs against the object."""
    port, path, data = objects.fresh(kind)
    if visit == "hit":
        assert ask(port, path).body == data
    last = len(data) - 1
    reply = ask(port, path, f"bytes={last - 99}-,200-299,0-99")
    assert reply.status == 206
    got = parts(reply)
    assert [(a, b) for a, b, _ in got] == [(0, 99), (200, 299), (last - 99, last)]
    for first, end, piece in got:
        assert piece == data[first : end + 1]
    whole = ask(port, path)
    spans = [ByteRange(a, b) for a, b, _ in got]
    assert len(reply.body) == multipart_length(spans, len(data), whole.field("Content-Type"))
    assert len(reply.body) < len(data)


def test_parts_that_would_outweigh_the_object_get_the_whole_200(objects: Objects) -> None:
    """Section 14.2: two parts whose framing (~100 bytes each) makes the body longer
    than a 150-byte object: the whole 200, on a miss and on a hit."""
    port, path = objects.ports["small"], "/tiny?size=150"
    for visit in VISITS:
        reply = ask(port, path, "bytes=0-9,100-109")
        assert reply.status == 200 and reply.body == body_for("/tiny", 150), visit
        assert (visit == "hit") <= reply.hit


def test_a_big_object_seeked_cold_is_sliced(objects: Objects) -> None:
    """The big objects here really are sliced: a cold bomb past the threshold costs the
    origin the two slices it spans, each by range, never the whole object."""
    port, path, data = objects.fresh("big")
    start_at = 4 * SLICE + 10
    bomb = "bytes=" + ",".join([f"{start_at}-"] * MAX_RANGES)
    reply = ask(port, path, bomb)
    assert reply.status == 206 and reply.body == data[start_at:]
    lines = objects.origin_lines(path, at_least=2)
    assert len(lines) == 2 and all('" 206 ' in line for line in lines), lines
    again = ask(port, path, bomb)
    assert again.status == 206 and again.body == data[start_at:] and again.hit


@pytest.mark.parametrize("kind", KINDS)
def test_a_first_position_int_cannot_read(objects: Objects, kind: str) -> None:
    """RFC 9110 Section 14.1.1: past the end is unsatisfiable (416); a position that
    is not ASCII digits makes the field invalid (ignored: 200)."""
    port, path, data = objects.fresh(kind)
    huge = ask(port, path, "bytes=" + "9" * 5000 + "-")
    assert huge.status == 416 and huge.field("Content-Range") == f"bytes */{len(data)}"
    port, path, data = objects.fresh(kind)
    odd = ask(port, path, "bytes=\u00b2-")
    assert odd.status == 200 and odd.body == data
