"""HTTP/3 at a real edge (`edge serve --http3` with TLS), driven by aioquic's client:
the same answers as HTTP/1.1 (Cache-Status, ranges, compression, purges, the guard,
the access log), Alt-Svc on HTTP/1.1 answers, and refusals of malformed requests."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aioquic.tls import SessionTicket

from edge.server.http3 import H3_EXCESSIVE_LOAD, H3_NO_ERROR, H3_REQUEST_REJECTED
from edge.server.tls import LocalCA
from tests.support.h3client import Reply, client_configuration, h3_connect, relay
from tests.support.procs import Proc, edge_cmd
from tests.support.qpackwire import insert_literal
from tests.support.tlsnodes import tls_edge
from tests.support.upstream import body_for, text_for

TOKEN = "h3-admin-token"
#: RFC 9114 Section 8.1.
H3_MESSAGE_ERROR = 0x10E


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path / "tls")


def h3_edge(
    procs: list[Proc],
    tmp_path: Path,
    upstream: Proc,
    ca: LocalCA,
    *extra: str,
    name: str = "h3",
    toml: str = "",
) -> Proc:
    pair = ca.issue(name, ["localhost", "archive.test"], ["127.0.0.1"])
    config = tmp_path / f"{name}.toml"
    config.write_text(f'admin_token = "{TOKEN}"\n{toml}')
    return tls_edge(
        procs,
        tmp_path,
        upstream.url,
        [pair],
        ca.cert_path,
        "--http3",
        "--config",
        str(config),
        *extra,
        name=name,
    )


def upstream_count(upstream: Proc, path: str) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=10) as resp:
        return int(json.loads(resp.read())["count"])


async def test_miss_then_hit_range_and_compression_over_h3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    edge = h3_edge(procs, tmp_path, upstream, ca)
    async with h3_connect(edge.port, ca.cert_path) as client:
        first = await client.request("GET", "/books/h3?size=5000")
        second = await client.request("GET", "/books/h3?size=5000")
        ranged = await client.request("GET", "/books/h3?size=5000", [("range", "bytes=10-19")])
        text = await client.request(
            "GET", "/books/words?text=1&ctype=text/plain&size=20000", [("accept-encoding", "gzip")]
        )
    want = body_for("/books/h3", 5000)
    assert first.status == 200 and "fwd=uri-miss" in first.header("cache-status")
    assert first.body == want
    assert second.status == 200 and "hit" in second.header("cache-status")
    assert second.body == want
    assert int(second.header("age")) >= 0
    assert ranged.status == 206 and ranged.body == want[10:20]
    assert ranged.header("content-range") == "bytes 10-19/5000"
    assert text.status == 200 and text.header("content-encoding") == "gzip"
    assert len(gzip.decompress(text.body)) == 20000
    for reply in (first, second, ranged, text):
        # RFC 9114 Section 4.2: nothing of HTTP/1.1's connection management.
        assert not {"connection", "transfer-encoding", "keep-alive"} & set(reply.headers)
        assert reply.header("server") and reply.header("date")
    assert upstream_count(upstream, "/books/h3") == 1
    edge.stop()
    log = edge.output()
    assert '"GET /books/h3?size=5000" 200 hit' in log and "proto=HTTP/3.0" in log


async def test_large_body_in_chunks_and_upstream_sees_via_3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """A stored body far above QUIC's initial windows arrives whole on a miss and a hit;
    the request went upstream in HTTP/1.1 with Via naming HTTP/3."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3big")
    size = 6 << 20
    async with h3_connect(edge.port, ca.cert_path) as client:
        miss = await client.request("GET", f"/big/h3?size={size}", timeout=60)
        hit = await client.request("GET", f"/big/h3?size={size}", timeout=60)
        info = await client.request("GET", "/info/h3?reqinfo=1&cc=no-store")
    want = body_for("/big/h3", size)
    assert miss.status == 200 and miss.body == want
    assert hit.status == 200 and "hit" in hit.header("cache-status") and hit.body == want
    seen = {k.lower(): v for k, v in json.loads(info.body)["headers"]}
    assert seen["via"].startswith("3 ") and seen["x-forwarded-proto"] == "https"
    assert seen["host"] == "localhost"


async def test_alt_svc_on_http1_answers_and_purge_over_h3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3alt")
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"https://localhost:{edge.port}/books/alt") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Alt-Svc"] == f'h3=":{edge.port}"; ma=86400'
    async with h3_connect(edge.port, ca.cert_path) as client:
        await client.request("GET", "/books/purged")
        hit = await client.request("GET", "/books/purged")
        assert "hit" in hit.header("cache-status")
        refused = await client.request("PURGE", "/books/purged")
        assert refused.status == 401
        purged = await client.request(
            "PURGE", "/books/purged", [("authorization", f"Bearer {TOKEN}")]
        )
        assert purged.status == 200, purged.body
        assert json.loads(purged.body)["purged"] == "https://localhost/books/purged"
        after = await client.request("GET", "/books/purged")
        assert "fwd=" in after.header("cache-status") and "hit" not in after.header("cache-status")
    assert upstream_count(upstream, "/books/purged") == 2


async def test_no_alt_svc_without_http3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    pair = ca.issue("plain", ["localhost"], ["127.0.0.1"])
    edge = tls_edge(procs, tmp_path, upstream.url, [pair], ca.cert_path, name="noh3")
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"https://localhost:{edge.port}/books/x") as resp,
    ):
        assert resp.status == 200 and "Alt-Svc" not in resp.headers
    with pytest.raises((ConnectionError, TimeoutError)):
        async with asyncio.timeout(5):
            async with h3_connect(edge.port, ca.cert_path):
                pass


# -- the guard -------------------------------------------------------------------------


async def test_http3_connections_count_in_the_per_client_limit(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """max_connections_per_client counts TCP and QUIC connections together: with one
    of each open, a third (QUIC) is closed with H3_EXCESSIVE_LOAD; once one closes, a
    new one is served."""
    edge = h3_edge(
        procs,
        tmp_path,
        upstream,
        ca,
        name="h3guard",
        toml="max_connections_per_client = 2\ntrusted_proxies = []\n",
    )
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    raw = socket.create_connection(("127.0.0.1", edge.port), timeout=10)
    tcp = ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        async with h3_connect(edge.port, ca.cert_path) as first:
            assert (await first.request("GET", "/books/g1")).status == 200
            with pytest.raises(ConnectionError):
                async with h3_connect(edge.port, ca.cert_path) as second:
                    await second.request("GET", "/books/g2", timeout=10)
            assert second.terminated is not None
            assert second.terminated.error_code == H3_EXCESSIVE_LOAD
            # The first is untouched.
            assert (await first.request("GET", "/books/g1")).status == 200
    finally:
        tcp.close()
    async with h3_connect(edge.port, ca.cert_path) as third:
        assert (await third.request("GET", "/books/g3")).status == 200
        metrics = await third.request("GET", "/_edge/metrics")
    assert metrics.status == 200
    refused = [
        line
        for line in metrics.body.decode().splitlines()
        if line.startswith("edge_guard_connections_refused_total")
    ]
    assert len(refused) == 1 and refused[0].endswith(" 1.0"), refused


async def test_rate_limit_refuses_over_http3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    edge = h3_edge(
        procs,
        tmp_path,
        upstream,
        ca,
        name="h3rate",
        toml="rate_limit = 1.0\nrate_burst = 3\nrate_tarpit = 0\ntrusted_proxies = []\n",
    )
    async with h3_connect(edge.port, ca.cert_path) as client:
        statuses = [(await client.request("GET", f"/books/r{i}")).status for i in range(6)]
        refused = await client.request("GET", "/books/r9")
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    assert refused.status == 429 and int(refused.header("retry-after")) >= 1
    assert "refused" in refused.header("cache-status")


# -- abuse -------------------------------------------------------------------------------


def fields(method: str, path: str, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method.encode()),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", path.encode()),
        *extra,
    ]


async def test_streams_beyond_the_limit_wait_their_turn(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """300 requests at once on one connection: QUIC's stream limit (128 concurrent
    request streams, RFC 9000 Section 4.6) holds the rest back until streams finish,
    so a second-long upstream takes at least three rounds; every request is answered."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3streams")
    async with h3_connect(edge.port, ca.cert_path) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await asyncio.gather(
            *(
                client.request("GET", f"/slow/{i}?delay=1&cc=no-store", timeout=60)
                for i in range(300)
            )
        )
        took = loop.time() - started
    assert [r.status for r in replies] == [200] * 300
    assert took >= 2.5, took


async def test_a_header_list_too_large_is_a_431_and_the_connection_lives(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """A field section that QPACK makes small on the wire but large once decoded (the
    same 3000-byte field twenty times, from the dynamic table) or with too many fields:
    431, nothing forwarded, and the connection serves the next request."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3big-head")
    big = tuple((b"x-filler", b"f" * 3000) for _ in range(20))
    many = tuple((b"x-%d" % i, b"v") for i in range(150))
    async with h3_connect(edge.port, ca.cert_path) as client:
        for extra in (big, many):
            reply = await client.reply(client.send(fields("GET", "/books/qpack", *extra)))
            assert reply.status == 431, reply.body
        assert (await client.request("GET", "/books/after")).status == 200
    assert upstream_count(upstream, "/books/qpack") == 0


async def test_malformed_heads_are_refused_and_never_forwarded(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """RFC 9114 Section 4.1.2: a malformed request is an error, never served. aioquic
    refuses some itself (the connection closes with H3_MESSAGE_ERROR); edge.rfc.pseudo
    answers the rest with a 400. Either way the upstream never sees one."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3malformed")
    cases = [
        [*fields("GET", "/m/conn"), (b"connection", b"keep-alive")],
        [*fields("GET", "/m/te"), (b"transfer-encoding", b"chunked")],
        [*fields("GET", "/m/upper"), (b"X-Upper", b"1")],
        [(b":method", b"GET"), (b":authority", b"localhost"), (b":path", b"/m/noscheme")],
        [*fields("GET", "/m/status"), (b":status", b"200")][::-1],
        [*fields("GET", "/m/authority"), (b"host", b"elsewhere.test")],
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"localhost"),
            (b":path", b"/m/scheme"),
        ],
        fields("GET", "m/relative"),
    ]
    outcomes = []
    for case in cases:
        async with h3_connect(edge.port, ca.cert_path) as client:
            try:
                reply = await client.reply(client.send(case), timeout=10)
                outcomes.append(reply.status)
            except ConnectionError:
                assert client.terminated is not None
                outcomes.append(client.terminated.error_code)
    assert all(o in (400, H3_MESSAGE_ERROR) for o in outcomes), outcomes
    # The rules only edge holds (one authority, the listener's scheme, a path) are 400s.
    assert outcomes[-3:] == [400, 400, 400]
    with urllib.request.urlopen(f"{upstream.url}/_total", timeout=10) as resp:
        assert json.loads(resp.read())["count"] == 0


async def test_content_length_that_disagrees_with_data_is_never_forwarded(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """A body longer than its Content-Length (the DATA still coming) is a 400 at once;
    one shorter is refused at its end. The upstream sees neither request: the smuggling
    an HTTP/1.1 upstream would read as a second request never leaves the node."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3length")
    smuggled = b"hello" + b"GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n"
    async with h3_connect(edge.port, ca.cert_path) as client:
        sid = client.send(
            fields("POST", "/post/long", (b"content-length", b"5")), [smuggled], end=False
        )
        reply = await client.reply(sid)
        assert reply.status == 400 and b"framing" in reply.body
        fine = await client.request("POST", "/post/fine?cc=no-store", body=b"12345")
        assert fine.status == 200
    async with h3_connect(edge.port, ca.cert_path) as client:
        try:
            short = await client.reply(
                client.send(fields("POST", "/post/short", (b"content-length", b"50")), [b"abc"])
            )
            assert short.status == 400
        except ConnectionError:
            assert client.terminated is not None
            assert client.terminated.error_code == H3_MESSAGE_ERROR
    assert upstream_count(upstream, "/post/long") == 0
    assert upstream_count(upstream, "/post/short") == 0
    assert upstream_count(upstream, "/admin") == 0
    assert upstream_count(upstream, "/post/fine") == 1


async def test_shutdown_finishes_streams_then_closes_with_no_error(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """SIGTERM: a request in flight is answered whole, a new stream is refused with
    H3_REQUEST_REJECTED (safe to retry elsewhere), then the connection closes with
    H3_NO_ERROR and the node exits 0."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3stop")
    async with h3_connect(edge.port, ca.cert_path) as client:
        slow = asyncio.ensure_future(
            client.request("GET", "/slow/stop?delay=2&size=300000&cc=no-store", timeout=30)
        )
        await asyncio.sleep(0.7)
        edge.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        late = await client.request("GET", "/books/late", timeout=10)
        reply = await slow
        assert reply.status == 200 and reply.body == body_for("/slow/stop", 300000)
        assert late.reset == H3_REQUEST_REJECTED
        for _ in range(100):
            if client.terminated is not None:
                break
            await asyncio.sleep(0.1)
        assert client.terminated is not None and client.terminated.error_code == H3_NO_ERROR
    assert edge.popen.wait(timeout=20) == 0
    assert upstream_count(upstream, "/books/late") == 0


def rss(pid: int) -> int:
    """A process's resident memory in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_stops_reading_holds_little_memory(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """A 40 MiB stored object to a client that stops acknowledging (a relay holds what
    the node sends): the node queues about a megabyte, not the file; once the client
    reads again the body arrives whole."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3slow")
    size = 40 << 20
    path = f"/big/slow?size={size}"
    async with h3_connect(edge.port, ca.cert_path) as client:
        warm = await client.request("GET", path, timeout=120)
        assert warm.status == 200 and len(warm.body) == size
    del warm
    await asyncio.sleep(0.5)
    before = rss(edge.popen.pid)
    async with relay(edge.port) as (port, held), h3_connect(port, ca.cert_path) as client:
        sid = client.send(fields("GET", path))
        for _ in range(200):
            if len(client.replies[sid].received) > 1 << 20:
                break
            await asyncio.sleep(0.05)
        held.hold()
        await asyncio.sleep(3)
        during = rss(edge.popen.pid)
        held.release()
        reply = await client.reply(sid, timeout=180)
    assert reply.status == 200 and "hit" in reply.header("cache-status")
    assert reply.body == body_for("/big/slow", size)
    assert during - before < 16 << 20, (before, during)


async def test_workers_share_the_port_and_the_lead_serves_http3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """With two workers on the TLS port, HTTP/3 is served (by the lead) and every
    HTTP/1.1 answer, whichever worker gives it, advertises it."""
    edge = h3_edge(procs, tmp_path, upstream, ca, "--workers", "2", name="h3workers")
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    for i in range(8):
        # A new connection each time: the kernel spreads them over the workers.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.get(f"https://localhost:{edge.port}/books/w{i}") as resp,
        ):
            assert resp.headers["Alt-Svc"] == f'h3=":{edge.port}"; ma=86400'
    async with h3_connect(edge.port, ca.cert_path) as client:
        reply = await client.request("GET", "/books/w0", authority=f"localhost:{edge.port}")
    assert reply.status == 200 and "hit" in reply.header("cache-status")


def test_edge_h3get_prints_an_http3_answer_as_curl_does(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3get")
    base = [sys.executable, "-m", "cli.main", "h3get", "--cacert", str(ca.cert_path)]
    url = f"https://archive.test:{edge.port}/books/cli?text=1&ctype=text/plain"
    resolve = ["--resolve", f"archive.test:{edge.port}:127.0.0.1"]
    runs = [
        subprocess.run([*base, *resolve, url], capture_output=True, timeout=60) for _ in range(2)
    ]
    head_only = subprocess.run(
        [*base, *resolve, "-I", "-H", "Accept-Encoding: gzip", url], capture_output=True, timeout=60
    )
    for run in (*runs, head_only):
        assert run.returncode == 0, run.stderr
    head, body = runs[1].stdout.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/3 200\r\n"), head
    assert b"\r\ncache-status: h3get; hit" in head, head
    assert body == text_for("/books/cli", 1024)
    assert b"content-encoding: gzip" in head_only.stdout
    assert head_only.stdout.endswith(b"\r\n\r\n")  # HEAD: no body
    bad = subprocess.run(
        [*base, "http://archive.test/"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and bad.stderr == "edge: not an https URL: http://archive.test/\n"


async def test_early_data_is_off_unless_enabled_then_safe_methods_only(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """Without http3_early_data the node issues no session ticket, so no client can
    send 0-RTT. With it, a resumed client's early GET is served (upstream told
    Early-Data: 1, RFC 8470 Section 5.1) and an early POST gets 425 Too Early; the
    same POST after the handshake is served."""
    plain = h3_edge(procs, tmp_path, upstream, ca, name="h3no0rtt")
    tickets: list[SessionTicket] = []
    config = client_configuration(ca.cert_path)
    async with h3_connect(
        plain.port, ca.cert_path, configuration=config, session_ticket_handler=tickets.append
    ) as client:
        assert (await client.request("GET", "/books/0rtt")).status == 200
        await asyncio.sleep(0.3)  # a ticket would follow the handshake
    assert tickets == []

    edge = h3_edge(procs, tmp_path, upstream, ca, "--http3-early-data", name="h3early")
    first = client_configuration(ca.cert_path)
    async with h3_connect(
        edge.port, ca.cert_path, configuration=first, session_ticket_handler=tickets.append
    ) as client:
        assert (await client.request("GET", "/books/0rtt")).status == 200
        await asyncio.sleep(0.3)  # the ticket follows the handshake
    assert tickets, "no session ticket"
    again = client_configuration(ca.cert_path)
    again.session_ticket = tickets[-1]
    async with h3_connect(
        edge.port, ca.cert_path, configuration=again, wait_connected=False
    ) as client:
        # Sent at once, before the handshake completes: in 0-RTT packets.
        get_sid = client.send(fields("GET", "/info/early?reqinfo=1&cc=no-store"))
        post_sid = client.send(fields("POST", "/post/early", (b"content-length", b"2")), [b"hi"])
        early_get = await client.reply(get_sid)
        early_post = await client.reply(post_sid)
        late_post = await client.request("POST", "/post/late?cc=no-store", body=b"hi")
    assert early_post.status == 425, early_post
    assert early_get.status == 200
    seen = {k.lower(): v for k, v in json.loads(early_get.body)["headers"]}
    assert seen.get("early-data") == "1", seen
    assert late_post.status == 200
    assert upstream_count(upstream, "/post/early") == 0
    assert upstream_count(upstream, "/post/late") == 1


async def test_concurrent_misses_on_streams_collapse_into_one_fetch(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """Twelve streams ask for the same cold object at once: one upstream request, the
    others wait for it (Cache-Status `collapsed`), every body whole; the requests
    counter of the metrics counts all twelve."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3collapse")
    async with h3_connect(edge.port, ca.cert_path) as client:
        replies = await asyncio.gather(
            *(client.request("GET", "/books/crowd?delay=1&size=200000") for _ in range(12))
        )
        metrics = await client.request("GET", "/_edge/metrics")
    want = body_for("/books/crowd", 200000)
    assert all(r.status == 200 and r.body == want for r in replies)
    statuses = [r.header("cache-status") for r in replies]
    assert sum("collapsed" in s for s in statuses) >= 10, statuses
    assert upstream_count(upstream, "/books/crowd") == 1
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.body.decode().splitlines()
        if line.startswith("edge_requests_total{") and 'code="200"' in line
    )
    assert counted >= 12, metrics.body.decode()[:2000]


def peak_rss(pid: int) -> int:
    """A process's peak resident memory in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def h3_varint(value: int) -> bytes:
    """RFC 9000 Section 16, in four bytes."""
    return (value | 0x80000000).to_bytes(4, "big")


async def test_a_qpack_bomb_is_refused_before_it_is_decoded(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """One 4000-byte dynamic-table entry, then a 30 KB HEADERS frame naming it 30000
    times: 120 MB once decoded. The node weighs the section first (edge.rfc.qpack) and
    answers 431 without decoding it: its peak memory does not move."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3bomb")
    async with h3_connect(edge.port, ca.cert_path) as client:
        assert (await client.request("GET", "/books/pre")).status == 200
        await asyncio.sleep(0.5)
        before = peak_rss(edge.popen.pid)
        quic = client.quic
        # The client's encoder stream is its second unidirectional stream (control,
        # encoder, decoder: RFC 9114 Section 6.2, in the order aioquic opens them).
        name, value = b"x-a", b"v" * 4000
        insert = insert_literal(name, value)
        quic.send_stream_data(6, insert)
        section = (
            b"\x02\x00"  # Required Insert Count 1 (encoded 2), Delta Base 0
            + b"\xd1\xd7\xc1"  # static :method GET, :scheme https, :path /
            + b"\x50\x09localhost"  # :authority, a literal value
            + b"\x80" * 30000  # the dynamic entry, again and again
        )
        sid = quic.get_next_available_stream_id()
        client.replies[sid] = Reply()
        client.waiters[sid] = asyncio.get_running_loop().create_future()
        quic.send_stream_data(sid, h3_varint(1) + h3_varint(len(section)) + section, True)
        client.transmit()
        bomb = await client.reply(sid, timeout=60)
        # The client's own encoder knows nothing of the entry inserted behind its back:
        # the next request goes on a new connection.
    async with h3_connect(edge.port, ca.cert_path) as client:
        after = await client.request("GET", "/books/post")
    assert bomb.status == 431 and b"decodes too large" in bomb.body, bomb
    assert after.status == 200
    assert peak_rss(edge.popen.pid) - before < 20 << 20
    assert upstream_count(upstream, "/") == 0


def test_a_udp_port_in_use_is_a_one_line_error(tmp_path: Path, ca: LocalCA) -> None:
    cert, key = ca.issue("busy", ["localhost"], ["127.0.0.1"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        run = subprocess.run(
            [
                *edge_cmd("serve", "--listen", f"127.0.0.1:{port}"),
                *("--origin", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "c")),
                *("--tls-cert", str(cert), "--tls-key", str(key), "--http3"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edge: cannot listen on 127.0.0.1:{port}: ")
    assert lines[0].endswith("(UDP, for HTTP/3)"), lines


async def test_a_connection_survives_the_client_changing_address(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """RFC 9000 Section 9: the client's datagrams start coming from another port (a NAT
    rebinding); aioquic validates the new path and the same connection goes on."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3migrate")
    async with relay(edge.port) as (port, path), h3_connect(port, ca.cert_path) as client:
        first = await client.request("GET", "/books/m1")
        await path.migrate()
        second = await client.request("GET", "/books/m2")
        third = await client.request("GET", "/books/m1")
        assert client.terminated is None
    assert first.status == second.status == 200
    assert "hit" in third.header("cache-status")
