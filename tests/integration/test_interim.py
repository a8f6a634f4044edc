"""What an upstream sends besides its final answer reaches the client as HTTP allows: `103
Early Hints` and `102 Processing` before the answer (RFC 9110 Section 15.2, RFC 8297),
to HTTP/1.1 clients only, once, never stored nor replayed on a hit; an upload's `Expect:
100-continue` forwarded (RFC 9110 Section 10.1.1): the body asked of the client once the
origin asks for it, never when the origin answers first; the trailer section of a
chunked answer passed on to the client that asked (RFC 9110 Section 6.5), never stored,
never merged into the head.

Real processes on loopback: the hostile origin in its `interim` mode
(tests/support/hostile.py), `edge shield`, `edge serve`; raw-socket clients, since
HTTP client libraries hide interim responses and trailers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import NodeFactory
from tests.support.h2client import H2Client
from tests.support.procs import Proc, free_port, start

TIERS = ["edge", "shield"]

Front = Callable[[str], tuple[Proc, Proc]]


@pytest.fixture
def front(procs: list[Proc], tmp_path: Path, node: NodeFactory) -> Front:
    """`front(tier)` -> (the hostile origin in `interim` mode, the node clients talk
    to: an edge before it, or an edge before a shield before it)."""

    def factory(tier: str) -> tuple[Proc, Proc]:
        port = free_port()
        cmd = [sys.executable, "-m", "tests.support.hostile", "--port", str(port)]
        origin = start(
            [*cmd, "--mode", "interim"], port, tmp_path / "hostile.log", health_path="/_log"
        )
        procs.append(origin)
        if tier == "edge":
            return origin, node("serve", "--origin", origin.url, name="edge-1")
        shield = node("shield", "--origin", origin.url, name="shield-1")
        return origin, node("serve", "--shield", shield.url, name="edge-1")

    return factory


def origin_asked(origin: Proc, path: str) -> int:
    with urllib.request.urlopen(f"{origin.url}/_log", timeout=5) as resp:
        return sum(1 for row in json.load(resp) if row[2] == path)


def origin_expects(origin: Proc, path: str) -> list[str]:
    """The Expect field of each request for `path` the origin saw."""
    with urllib.request.urlopen(f"{origin.url}/_log", timeout=5) as resp:
        return [str(row[3]) for row in json.load(resp) if row[2] == path]


@dataclass
class Message:
    """One response as a raw socket saw it: each head with when it arrived."""

    interims: list[tuple[int, list[tuple[str, str]], float]] = field(default_factory=list)
    version: str = ""
    status: int = 0
    fields: list[tuple[str, str]] = field(default_factory=list)
    arrived: float = 0.0
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    raw: bytes = b""

    def field(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k.lower() == name.lower()), None)


def _fields(lines: list[str]) -> list[tuple[str, str]]:
    pairs = (line.split(":", 1) for line in lines if line)
    return [(name.strip(), value.strip()) for name, value in pairs]


async def exchange(
    node: Proc,
    method: str,
    path: str,
    *,
    version: str = "HTTP/1.1",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    body_after_100: bool = False,
) -> Message:
    """Send one request on a connection of its own and read its answer head by head:
    each 1xx, then the final head and its body by its framing. `body_after_100`: the
    body waits for a `100 Continue`, as a client that sent Expect does."""
    url = urlsplit(node.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    lines = [f"{method} {path} {version}", f"Host: {url.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    if not body_after_100:
        writer.write(body)
    message = Message()
    try:
        async with asyncio.timeout(30):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                message.raw += head
                status_line, *rest = head.decode("latin-1").split("\r\n")
                version_seen, status, _ = (status_line + " ").split(" ", 2)
                if 100 <= int(status) < 200:
                    message.interims.append((int(status), _fields(rest), time.monotonic()))
                    if int(status) == 100 and body_after_100:
                        writer.write(body)
                    continue
                message.version, message.status = version_seen, int(status)
                message.fields, message.arrived = _fields(rest), time.monotonic()
                break
            if (message.field("Transfer-Encoding") or "").lower() == "chunked":
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        break
                    message.body += await reader.readexactly(size)
                    await reader.readexactly(2)
                section = await reader.readuntil(b"\r\n")
                while section[-4:] != b"\r\n\r\n" and section != b"\r\n":
                    section += await reader.readuntil(b"\r\n")
                message.trailers = _fields(section.decode("latin-1").split("\r\n"))
            elif message.field("Content-Length") is not None:
                message.body = await reader.readexactly(int(message.field("Content-Length") or 0))
            else:
                message.body = await reader.read()
            message.raw += await reader.read()  # nothing more may come before the close
    finally:
        writer.close()
    return message


# -- 103 Early Hints, 102 Processing ---------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
async def test_early_hints_arrive_before_the_answer_once_and_never_from_the_store(
    front: Callable[[str], tuple[Proc, Proc]], tier: str
) -> None:
    origin, edge = front(tier)
    first = await exchange(edge, "GET", "/hints-1")
    assert first.status == 200, first
    ((status, fields, arrived),) = first.interims  # once, whatever the tiers
    assert status == 103
    assert ("Link", "</styles.css>; rel=preload; as=style") in fields
    assert ("X-My-Header", "test") in fields
    names = {name.lower() for name, _ in fields}
    assert "x-hop" not in names and "connection" not in names  # the hop's own
    # The origin waits 0.3 s between the two: the hints were not held for the answer.
    assert first.arrived - arrived > 0.15
    assert first.field("Link") is None  # hints are not the answer's fields
    # Stored without them: a hit sends the answer alone.
    again = await exchange(edge, "GET", "/hints-1")
    assert again.status == 200 and again.interims == []
    assert "hit" in (again.field("Cache-Status") or "")
    assert b"103" not in again.raw.split(b"\r\n", 1)[0]
    assert origin_asked(origin, "/hints-1") == 1


@pytest.mark.parametrize("tier", TIERS)
async def test_102_passes_through_and_the_final_answer_is_cached(
    front: Callable[[str], tuple[Proc, Proc]], tier: str
) -> None:
    origin, edge = front(tier)
    first = await exchange(edge, "GET", "/processing-1")
    assert first.status == 200 and [s for s, _, _ in first.interims] == [102]
    again = await exchange(edge, "GET", "/processing-1")
    assert again.status == 200 and again.interims == []
    assert origin_asked(origin, "/processing-1") == 1


async def test_an_http10_client_never_sees_an_interim_response(
    front: Callable[[str], tuple[Proc, Proc]],
) -> None:
    _, edge = front("edge")
    got = await exchange(edge, "GET", "/hints-10", version="HTTP/1.0")
    assert got.interims == [] and got.version == "HTTP/1.0" and got.status == 200
    assert got.raw.startswith(b"HTTP/1.0 200 ")
    assert b"Early Hints" not in got.raw and b"</styles.css>" not in got.raw


async def test_a_client_that_joins_a_fill_gets_the_answer_without_the_hints(
    front: Callable[[str], tuple[Proc, Proc]],
) -> None:
    origin, edge = front("edge")
    first = asyncio.create_task(exchange(edge, "GET", "/hints-joined"))
    await asyncio.sleep(0.1)  # the fill is waiting for its head (0.3 s)
    second = await exchange(edge, "GET", "/hints-joined")
    one = await first
    assert one.status == second.status == 200 and one.body == second.body
    assert [s for s, _, _ in one.interims] == [103]
    assert second.interims == []
    assert origin_asked(origin, "/hints-joined") == 1


# -- Expect: 100-continue --------------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
async def test_an_upload_gets_one_100_and_the_origins_answer(
    front: Callable[[str], tuple[Proc, Proc]], tier: str
) -> None:
    origin, edge = front(tier)
    got = await exchange(
        edge,
        "POST",
        "/continue-1",
        headers=(("Expect", "100-continue"),),
        body=b"x" * 2048,
        body_after_100=True,
    )
    # The origin's 100 (to the expectation edge forwarded) asks for the body: the
    # client gets one 100 at each hop's word, and the origin the whole body.
    assert [s for s, _, _ in got.interims] == [100]
    assert got.status == 200 and json.loads(got.body)["body"] == 2048
    assert origin_expects(origin, "/continue-1") == ["100-continue"]


@pytest.mark.parametrize("tier", TIERS)
async def test_an_origins_final_answer_before_the_body_reaches_the_client(
    front: Callable[[str], tuple[Proc, Proc]], tier: str
) -> None:
    origin, edge = front(tier)
    got = await exchange(
        edge,
        "POST",
        "/refuse-1",
        headers=(("Expect", "100-continue"),),
        body=b"x" * 2048,
        body_after_100=True,
    )
    assert got.status == 413 and json.loads(got.body) == {"refused": True}
    # The body was never asked for: no 100 reached the client, and since it may or
    # may not send the body now, its connection carries nothing more.
    assert got.interims == [] and got.field("Connection") == "close"
    assert origin_expects(origin, "/refuse-1") == ["100-continue"]
    # Nothing of the upstream connection is reused: the next request is answered whole.
    after = await exchange(edge, "GET", "/processing-after")
    assert after.status == 200 and json.loads(after.body)["path"] == "/processing-after"
    assert origin_asked(origin, "/refuse-1") == 1


# -- trailers --------------------------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_trailers_reach_the_client_of_an_answer_nobody_stores(
    front: Callable[[str], tuple[Proc, Proc]], tier: str, method: str
) -> None:
    _, edge = front(tier)
    body = b"k=v" if method == "POST" else b""  # a GET of no-store: a miss not kept
    got = await exchange(edge, method, "/trailers-pass", headers=(("TE", "trailers"),), body=body)
    assert got.status == 200 and got.body == b"hello world"
    assert got.field("Transfer-Encoding") == "chunked"
    # Passed as trailers: less what no trailer may carry and what the hop owned.
    assert got.trailers == [("X-Checksum", "sha-11")]
    assert got.field("X-Checksum") is None and got.field("Set-Cookie") is None


async def test_trailers_are_dropped_for_an_http10_client(
    front: Callable[[str], tuple[Proc, Proc]],
) -> None:
    _, edge = front("edge")
    got = await exchange(edge, "GET", "/trailers-old", version="HTTP/1.0")
    assert got.status == 200 and got.body == b"hello world"
    assert b"X-Checksum" not in got.raw and got.field("Transfer-Encoding") is None


@pytest.mark.parametrize("tier", TIERS)
async def test_trailers_are_never_stored(
    front: Callable[[str], tuple[Proc, Proc]], tier: str
) -> None:
    origin, edge = front(tier)
    first = await exchange(edge, "GET", "/trailers-kept?keep=1")
    again = await exchange(edge, "GET", "/trailers-kept?keep=1")
    for got in (first, again):
        assert got.status == 200 and got.body == b"hello world"
        assert got.trailers == [] and got.field("X-Checksum") is None
    assert "hit" in (again.field("Cache-Status") or "")
    assert origin_asked(origin, "/trailers-kept?keep=1") == 1


def test_early_hints_reach_an_http2_client_before_its_answer(
    procs: list[Proc], tmp_path: Path, node: NodeFactory
) -> None:
    """RFC 9113 Section 8.1: a 103 is a HEADERS frame before the final one; the same
    hints an HTTP/1.1 client gets, once, and not from the store."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.support.hostile", "--port", str(port)]
    origin = start([*cmd, "--mode", "interim"], port, tmp_path / "hostile.log", health_path="/_log")
    procs.append(origin)
    edge = node("serve", "--origin", origin.url, "--http2", name="edge-1")
    client = H2Client(edge.port)
    try:
        first = client.get("/hints-h2")
        assert first.status == 200
        (hints,) = first.interims
        assert (b":status", b"103") in hints
        assert (b"link", b"</styles.css>; rel=preload; as=style") in hints
        again = client.get("/hints-h2")
        assert again.status == 200 and again.interims == []
    finally:
        client.close()
