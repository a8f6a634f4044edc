"""Range abuse at a real edge (RFC 9110 Section 14.2): however a Range is written,
the body sent is never larger than the object, for a small stored object and for a big
sliced one, on a miss and on a hit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.guardkit import exchange, status_of
from tests.support.procs import Proc

SMALL = 10_000
BIG = 3 * (64 << 10) + 123  # three 64 KiB slices and a bit


def ask(port: int, path: str, value: str) -> tuple[int, bytes, bytes]:
    data = (
        f"GET {path} HTTP/1.1\r\nHost: a\r\nRange: {value}\r\nConnection: close\r\n\r\n"
    ).encode()
    response, _ = exchange(port, data, timeout=10)
    head, _, body = response.partition(b"\r\n\r\n")
    return status_of(response), head, body


BOMBS = {
    "many whole-object ranges": "bytes=" + ",".join(["0-"] * 1000),
    "16 overlapping whole ranges": "bytes=" + ",".join(["0-"] * 16),
    "many tiny ranges": "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 32, 2)),
    "17 ranges": "bytes=" + ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(17)),
    "overlapping suffixes": "bytes=-500,-400,-300,-200,-100,-1",
    "huge numbers": "bytes=0-" + "9" * 5000,
}


@pytest.fixture
def edge_port(node: NodeFactory, upstream: Proc, tmp_path: Path) -> int:
    proc = node(
        "serve",
        "--upstream",
        upstream.url,
        "--slice-size",
        "64K",
        "--slice-threshold",
        "128K",
        name="ranges",
    )
    return int(proc.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_range_never_costs_more_than_the_object(edge_port: int, size: int, bomb: str) -> None:
    path = f"/bomb-{abs(hash(bomb)) % 10_000}?size={size}"
    for attempt in ("miss", "hit"):
        status, head, body = ask(edge_port, path, BOMBS[bomb])
        assert status in (200, 206), (attempt, head)
        assert len(body) <= size, (bomb, attempt, len(body))
        if status == 206:
            assert b"multipart" not in head or len(body) < size


def test_overlapping_and_unsorted_ranges_are_coalesced(edge_port: int) -> None:
    path = f"/coalesce?size={SMALL}"
    status, head, body = ask(edge_port, path, "bytes=0-99,50-149")
    assert status == 206 and len(body) == 150
    assert re.search(rb"Content-Range: bytes 0-149/10000", head)
    status, head, body = ask(edge_port, path, "bytes=5000-5999,0-999")
    assert status == 206 and b"multipart/byteranges" in head
    starts = [int(m) for m in re.findall(rb"Content-Range: bytes (\d+)-", body)]
    assert starts == [0, 5000]  # ascending, whatever the request's order
    assert len(body) < 2000 + 2 * 128 + 64


def test_adjacent_ranges_become_one(edge_port: int) -> None:
    status, head, body = ask(edge_port, f"/adjacent?size={SMALL}", "bytes=0-99,100-199,200-299")
    assert status == 206 and len(body) == 300 and b"multipart" not in head
