"""No response ever reaches the wrong user: an upstream connection is reused only when it
is known clean, whatever a broken or hostile origin sends (tests/support/hostile.py),
at one tier and through a shield. And uploads never hang a node: `Expect:
100-continue` is forwarded, and an origin that never sends `100` holds nothing (the body
follows after a short wait).

Real processes on loopback: the hostile origin, `edge shield`, `edge serve`, driven by
the aiohttp client and raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.procs import Proc, free_port, start

TIERS = ["edge", "shield"]

Front = Callable[[str], tuple[Proc, Proc]]


@pytest.fixture
def front(procs: list[Proc], tmp_path: Path, node: NodeFactory) -> Front:
    """`front(mode)` -> (the hostile origin, the node clients talk to); the tier comes
    from the test's `tier` parameter."""

    def factory(mode: str, tier: str = "edge") -> tuple[Proc, Proc]:
        port = free_port()
        cmd = [sys.executable, "-m", "tests.support.hostile", "--port", str(port), "--mode", mode]
        origin = start(cmd, port, tmp_path / f"hostile-{mode}.log", health_path="/_log")
        procs.append(origin)
        if tier == "edge":
            return origin, node("serve", "--origin", origin.url, name="edge-1")
        shield = node("shield", "--origin", origin.url, name="shield-1")
        return origin, node("serve", "--shield", shield.url, name="edge-1")

    return factory


def origin_log(origin: Proc) -> list[list[object]]:
    with urllib.request.urlopen(f"{origin.url}/_log", timeout=5) as resp:
        return [row for row in json.load(resp) if row[2] != "/_log"]


async def ask(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request from one user: a session (and connection) of its own."""
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def answer(body: bytes) -> dict[str, object]:
    return json.loads(body)


async def check_users(edge: Proc, paths: list[str], pause: float = 0.0) -> None:
    """Each user gets the answer to their own request, their own Cookie and
    Authorization echoed, and never the smuggled response."""
    for i, path in enumerate(paths):
        headers = {"Cookie": f"user={i}", "Authorization": f"Bearer secret-{i}"}
        status, _, body = await ask(f"{edge.url}{path}", headers=headers)
        assert status == 200, (path, status, body)
        got = answer(body)
        assert got["path"] == path, (path, got)
        assert got["cookie"] in ("", f"user={i}"), (path, got)  # "" when cached
        assert got["authorization"] in ("", f"Bearer secret-{i}"), (path, got)
        if pause:
            await asyncio.sleep(pause)


def never_reused_after(origin: Proc, unclean: Callable[[list[object]], bool]) -> None:
    """No connection carried another request after one whose answer was unclean."""
    rows = origin_log(origin)
    ended: set[object] = set()
    for row in rows:
        assert row[0] not in ended, (row, rows)
        if unclean(row):
            ended.add(row[0])


# -- bytes after a complete response ------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", ["trailing", "glued"])
async def test_bytes_after_a_response_never_become_the_next_users_answer(
    front: Front, mode: str, tier: str
) -> None:
    origin, edge = front(mode, tier)
    paths = [f"/user/{i}?{mode}" for i in range(10)]
    # Time for the trailing bytes to land while the connection is idle in its pool.
    await check_users(edge, paths, pause=0.2)
    # What was stored is stored under the right URL, at every tier.
    await check_users(edge, paths)
    status, _, body = await ask(f"{edge.url}/smuggled")
    assert status == 200 and "conn" in answer(body)  # the origin's answer, not the smuggled
    never_reused_after(origin, lambda row: True)


@pytest.mark.parametrize("tier", TIERS)
async def test_a_body_after_a_head_answer_ends_the_connection(front: Front, tier: str) -> None:
    origin, edge = front("head-body", tier)
    for i in range(4):
        status, _, body = await ask(f"{edge.url}/h/{i}", method="HEAD")
        assert status == 200 and body == b""
        await check_users(edge, [f"/g/{i}"], pause=0.1)
    never_reused_after(origin, lambda row: row[1] == "HEAD")


@pytest.mark.parametrize("tier", TIERS)
async def test_a_body_after_a_304_ends_the_connection(front: Front, tier: str) -> None:
    origin, edge = front("304-body", tier)
    await check_users(edge, ["/c"])
    for i in range(3):
        # no-cache: edge revalidates its stored copy with If-None-Match; the origin's 304
        # is followed by a whole response nobody asked for.
        status, _, body = await ask(f"{edge.url}/c", headers={"Cache-Control": "no-cache"})
        assert status == 200 and answer(body)["path"] == "/c"
        await check_users(edge, [f"/after/{i}"], pause=0.1)
    assert len([row for row in origin_log(origin) if row[2] == "/c"]) == 4
    never_reused_after(origin, lambda row: bool(row[4]))


@pytest.mark.parametrize("tier", TIERS)
async def test_a_body_after_a_204_ends_the_connection(front: Front, tier: str) -> None:
    origin, edge = front("204-body", tier)
    for i in range(3):
        status, _, body = await ask(f"{edge.url}/empty/{i}")
        assert status == 204 and body == b""
        await check_users(edge, [f"/after/{i}"], pause=0.1)
    never_reused_after(origin, lambda row: str(row[2]).startswith("/empty"))


@pytest.mark.parametrize("tier", TIERS)
async def test_an_unsolicited_101_is_a_bad_gateway(front: Front, tier: str) -> None:
    origin, edge = front("upgrade", tier)
    status, headers, body = await ask(f"{edge.url}/up")
    assert status == 502, (status, headers, body)
    assert b"smuggled" not in body
    await check_users(edge, ["/after"], pause=0.1)
    status, _, _ = await ask(f"{edge.url}/up")
    assert status == 502  # never stored either
    never_reused_after(origin, lambda row: row[2] == "/up")


@pytest.mark.parametrize("tier", TIERS)
async def test_an_http10_body_of_unknown_length_runs_to_the_close(front: Front, tier: str) -> None:
    origin, edge = front("http10", tier)
    for i in range(3):
        await check_users(edge, [f"/ten/{i}"])
    never_reused_after(origin, lambda row: True)  # each body ended with its connection
    # A kept-alive HTTP/1.0 client cannot be sent chunks: edge frames the body by
    # closing, or gives its length.
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(
            b"GET /ten/raw?x HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
        )
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                break
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], data
        assert b"transfer-encoding" not in head.lower()
        assert answer(body)["path"] == "/ten/raw?x"


# -- Content-Length: more or less than declared -------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
async def test_a_body_past_its_content_length_is_cut_stored_and_its_connection_ended(
    front: Front, tier: str
) -> None:
    """RFC 9112 Section 6.3: the declared length ends the response; what follows is
    not part of it (cut there, never sent on), the response is whole (stored), and the
    connection is unclean (never used again)."""
    origin, edge = front("overrun", tier)
    for i in range(3):
        path = f"/over/{i}"
        status, headers, body = await ask(f"{edge.url}{path}")
        assert status == 200, (status, body)
        assert b"OVERRUN" not in body
        assert answer(body)["path"] == path
        assert int(headers["Content-Length"]) == len(body)
        await check_users(edge, [f"/after/{i}"], pause=0.1)
    for i in range(3):
        status, _, body = await ask(f"{edge.url}/over/{i}")
        assert status == 200 and answer(body)["path"] == f"/over/{i}"
    over = [row for row in origin_log(origin) if str(row[2]).startswith("/over")]
    assert len(over) == 3, over  # each stored at every tier: asked for once
    never_reused_after(origin, lambda row: str(row[2]).startswith("/over"))


@pytest.mark.parametrize("tier", TIERS)
async def test_a_body_short_of_its_content_length_is_never_stored(front: Front, tier: str) -> None:
    origin, edge = front("overrun", tier)
    for _ in range(2):
        # A small body is read whole before its head is passed on
        # (edge.upstream.pools.WHOLE_BODY): the client gets a clean 502, not a cut answer.
        status, _, _ = await ask(f"{edge.url}/short/x")
        assert status == 502
    short = [row for row in origin_log(origin) if row[2] == "/short/x"]
    assert len(short) >= 2, short  # not stored: the second ask went upstream again
    await check_users(edge, ["/after/short"])


# -- Expect: 100-continue -------------------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
async def test_an_origin_that_never_sends_100_holds_nothing(front: Front, tier: str) -> None:
    origin, edge = front("no-continue", tier)
    payload = b"x" * 2048
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def post(i: int) -> tuple[int, dict[str, object]]:
            async with s.post(f"{edge.url}/upload/{i}", data=payload, expect100=True) as r:
                return r.status, json.loads(await r.read())

        results = await asyncio.wait_for(
            asyncio.gather(*(post(i) for i in range(256))), timeout=120
        )
    assert all(status == 200 and got["body"] == len(payload) for status, got in results)
    # Misses still go through at once afterwards.
    begun = time.monotonic()
    await check_users(edge, ["/after-uploads"])
    assert time.monotonic() - begun < 5
    # RFC 9110 Section 10.1.1: a proxy forwards the expectation (and sends the body
    # once the origin has stayed silent a moment, edge.upstream.h1client.CONTINUE_WAIT).
    uploads = [row for row in origin_log(origin) if str(row[2]).startswith("/upload/")]
    assert len(uploads) == 256 and all(row[3] == "100-continue" for row in uploads)
    assert time.monotonic() - started < 120


# -- a member that dies mid-answer -----------------------------------------------------


def cut_origin(procs: list[Proc], tmp_path: Path) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.support.hostile", "--port", str(port), "--mode", "cut"]
    origin = start(cmd, port, tmp_path / "hostile-cut.log", health_path="/_log")
    procs.append(origin)
    return origin


@pytest.mark.parametrize("kind", ["pass", "miss"])
async def test_a_small_answer_cut_short_is_asked_of_the_next_member(
    procs: list[Proc], tmp_path: Path, node: NodeFactory, upstream: Proc, kind: str
) -> None:
    """A member sends a head and half of a small body, then dies: the edge read the
    body before answering, so it asks the other member and the client gets that one's
    whole 200 (not a head followed by nothing)."""
    hostile = cut_origin(procs, tmp_path)
    edge = node("serve", "--origin", hostile.url, "--origin", upstream.url, name="edge-cut")
    query = "cc=no-store" if kind == "pass" else "cc=public,max-age=600&keep=1"
    for i in range(6):  # round-robin: every other request asks the hostile member first
        status, headers, body = await ask(f"{edge.url}/cut-{kind}-{i}?{query}&size=2048")
        assert status == 200 and len(body) == 2048, (i, status, headers.get("Cache-Status"))
        assert body != b"c" * 2048
    assert any(str(row[2]).startswith("/cut") for row in origin_log(hostile))


async def test_a_small_answer_cut_short_with_nobody_else_is_a_clean_502(
    procs: list[Proc], tmp_path: Path, node: NodeFactory
) -> None:
    hostile = cut_origin(procs, tmp_path)
    edge = node("serve", "--origin", hostile.url, name="edge-cut")
    for query in ("cc=no-store", "keep=1"):
        status, headers, _ = await ask(f"{edge.url}/cut-alone?{query}&size=2048")
        assert status == 502, headers


async def test_a_large_answer_cut_short_is_an_abort_never_a_short_whole(
    procs: list[Proc], tmp_path: Path, node: NodeFactory
) -> None:
    """Over the bound the body streams: a member dying mid-body can only be told by
    closing the connection before the declared length, which the client sees."""
    hostile = cut_origin(procs, tmp_path)
    edge = node("serve", "--origin", hostile.url, name="edge-cut")
    size = 256 << 10
    for query in ("cc=no-store", "keep=1"):
        with pytest.raises(aiohttp.ClientPayloadError):
            await ask(f"{edge.url}/cut-big?{query}&size={size}")


async def test_a_medium_object_is_filed_whole_as_it_arrives_and_a_cut_one_never(
    procs: list[Proc], tmp_path: Path, node: NodeFactory, upstream: Proc
) -> None:
    """Between the inline bound and the slicing threshold a body goes into a file of
    its own as it arrives (spliced from the upstream's socket where it can be): two
    clients reading it as it trickles in and the hit after it get the origin's bytes,
    from one origin request; one cut short is read to its end by neither and stored
    for nobody (the next asks the origin again)."""
    from tests.support.upstream import body_for

    edge = node("serve", "--origin", upstream.url, name="edge-medium")
    size = 3 << 20
    path = "/medium/filed"
    url = f"{edge.url}{path}?size={size}&trickle=0.5"
    answers = await asyncio.gather(ask(url), ask(url))
    hit = await ask(url)
    for status, _, body in [*answers, hit]:
        assert status == 200 and body == body_for(path, size)
    assert "hit" in hit[1].get("Cache-Status", "")
    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=5) as resp:
        assert json.load(resp)["count"] == 1

    hostile = cut_origin(procs, tmp_path)
    cut = node("serve", "--origin", hostile.url, name="edge-medium-cut")
    for _ in range(2):
        with pytest.raises(aiohttp.ClientPayloadError):
            await ask(f"{cut.url}/cut-medium?keep=1&size={size}")
    asked = [row for row in origin_log(hostile) if str(row[2]).startswith("/cut-medium")]
    assert len(asked) == 2, asked
