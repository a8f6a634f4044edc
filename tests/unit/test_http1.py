"""edge.server.http1 on an in-memory transport: bytes in, bytes out, no sockets.

Each test feeds a connection the bytes a client would send and reads what the
connection wrote: pipelining in order, chunked request bodies, the head limits,
100-continue, 103 and trailers, HEAD, HTTP/1.0 framing, keep-alive and close.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from multidict import CIMultiDict

from edge.pipeline.exchange import Channel, Request, Response
from edge.server.http1 import Connection, ConnectionGuard, Limits, Listener


class FakeTransport(asyncio.Transport):
    """What a connection writes, kept; closing and aborting recorded."""

    def __init__(self, *, peer: str = "192.0.2.7") -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.eof = False
        self.paused = False
        self._extra = {"peername": (peer, 40000), "sockname": ("127.0.0.1", 8080)}
        self.protocol: Connection | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_write_buffer_size(self) -> int:
        return 0

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


Handler = Any


async def echo(request: Request, channel: Channel) -> None:
    """Answers with what it was asked: method, target, version, and the body read."""
    body = b""
    if request.has_body:
        while chunk := await request.body.readany():
            body += chunk
    text = f"{request.method} {request.target} {request.version} body={body.decode()}"
    await channel.respond(Response(200, CIMultiDict({"Content-Type": "text/plain"}), text.encode()))


def connect(
    handler: Handler = echo, *, limits: Limits | None = None, **guard: Any
) -> tuple[Connection, FakeTransport]:
    listener = Listener(
        handler,
        ConnectionGuard(
            header_timeout=10.0,
            max_per_client=guard.pop("max_per_client", 0),
            server_header="edge",
            **guard,
        ),
        limits or Limits(),
    )
    conn = listener()
    transport = FakeTransport()
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split written bytes into (status, fields, body) by Content-Length or chunks."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            fields[name.lower()] = value
        if status in (204, 304):
            body = b""
        elif "content-length" in fields:
            n = int(fields["content-length"])
            body, data = data[:n], data[n:]
        elif fields.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                chunk, data = data[:size], data[size + 2 :]
                if size == 0:
                    break
                body += chunk
        else:
            body, data = data, b""
        out.append((status, fields, body))
    return out


async def test_pipelined_requests_are_answered_in_order() -> None:
    conn, t = connect()
    conn.data_received(
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
        b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    await settle()
    got = responses(t.take())
    assert [body for _, _, body in got] == [
        b"GET /a (1, 1) body=",
        b"POST /b (1, 1) body=xyz",
        b"GET /c (1, 1) body=",
    ]
    assert all("connection" not in fields for _, fields, _ in got)  # kept alive
    assert not t.closed


async def test_chunked_request_body_arrives_across_reads() -> None:
    conn, t = connect()
    conn.data_received(b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    await settle()
    assert t.take() == b""
    conn.data_received(b"c\r\n2\r\nde\r\n0\r\n\r\n")
    await settle()
    ((status, _, body),) = responses(t.take())
    assert (status, body) == (200, b"POST /u (1, 1) body=abcde")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 400 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-1: v\r\n" * 30 + b"\r\n", 431),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET /<script> HTTP/1.1\r\nHost: h\r\nBad Header<script>: x\r\n\r\n", 400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ],
)
async def test_limits_and_bad_heads_are_refused_and_closed(data: bytes, status: int) -> None:
    conn, t = connect(limits=Limits(max_request_line=300, max_header_size=200, max_headers=20))
    conn.data_received(data)
    await settle()
    written = t.take()
    ((got, fields, _),) = responses(written)
    assert got == status, written
    assert fields["connection"] == "close" and t.eof
    assert b"script" not in written


async def test_100_continue_only_when_asked_and_only_in_http11() -> None:
    async def reader(request: Request, channel: Channel) -> None:
        await channel.send_continue()
        await echo(request, channel)

    conn, t = connect(reader)
    conn.data_received(
        b"POST /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    await settle()
    assert t.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"ok")
    await settle()
    assert responses(t.take())[0][2] == b"POST /u (1, 1) body=ok"

    conn, t = connect(reader)
    conn.data_received(b"POST /u HTTP/1.0\r\nContent-Length: 2\r\n\r\n")
    await settle()
    assert t.take() == b""  # HTTP/1.0 has no 1xx


async def hinted(request: Request, channel: Channel) -> None:
    link = [("Link", "</a.css>; rel=preload")]
    await channel.send_interim(103, link)
    await channel.send_interim(101, [])  # never an interim answer: only ever an upgrade
    await channel.start(Response(200, CIMultiDict()))
    await channel.send_interim(103, link)  # after the final head: nothing
    await channel.write(b"hello")
    await channel.end([("X-Checksum", "sha-1")])


async def test_interim_responses_go_before_the_head_and_only_in_http11() -> None:
    conn, t = connect(hinted)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    written = bytes(t.take())
    assert written.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
    final = written.split(b"\r\n\r\n", 1)[1]
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.count(b"Early Hints") == 0
    # RFC 9112 Section 7.1.2: the trailers close the chunked body.
    assert final.endswith(b"5\r\nhello\r\n0\r\nX-Checksum: sha-1\r\n\r\n")

    conn, t = connect(hinted)
    conn.data_received(b"GET / HTTP/1.0\r\n\r\n")
    await settle()
    written = bytes(t.take())
    assert written.startswith(b"HTTP/1.0 200 OK\r\n")  # no 1xx for HTTP/1.0
    assert written.endswith(b"\r\n\r\nhello") and b"X-Checksum" not in written


async def test_head_gets_the_length_and_no_body() -> None:
    conn, t = connect()
    conn.data_received(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    written = t.take()
    head, _, rest = written.partition(b"\r\n\r\n")
    assert b"Content-Length: 20" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")  # no body bytes between the two


async def streamer(request: Request, channel: Channel) -> None:
    await channel.start(Response(200, CIMultiDict()))
    await channel.write(b"hello ")
    await channel.write(b"world")
    await channel.end()


async def test_unknown_length_is_chunked_in_http11_and_close_delimited_in_http10() -> None:
    conn, t = connect(streamer)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    ((_, fields, body),) = responses(t.take())
    assert fields["transfer-encoding"] == "chunked" and body == b"hello world"
    assert not t.closed

    conn, t = connect(streamer)
    conn.data_received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await settle()
    written = t.take()
    assert written.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Transfer-Encoding" not in written and b"Content-Length" not in written
    assert written.endswith(b"\r\n\r\nhello world") and t.eof  # delimited by the close


async def test_http10_keeps_alive_only_when_asked() -> None:
    conn, t = connect()
    conn.data_received(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await settle()
    ((_, fields, _),) = responses(t.take())
    assert fields["connection"] == "keep-alive" and not t.eof
    conn.data_received(b"GET /b HTTP/1.0\r\n\r\n")
    await settle()
    ((_, fields, body),) = responses(t.take())
    assert "connection" not in fields and body == b"GET /b (1, 0) body=" and t.eof


async def test_connection_close_ends_after_the_answer_and_later_requests_are_dropped() -> None:
    conn, t = connect()
    conn.data_received(
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    await settle()
    got = responses(t.take())
    assert [b for _, _, b in got] == [b"GET /a (1, 1) body="]
    assert got[0][1]["connection"] == "close" and t.eof


async def test_minor_versions_above_one_are_read_as_http11() -> None:
    conn, t = connect()
    conn.data_received(b"GET /v HTTP/1.7\r\nHost: h\r\n\r\n")
    await settle()
    written = t.take()
    assert written.startswith(b"HTTP/1.1 200 OK") and b"(1, 1)" in written


async def test_a_client_over_its_connection_limit_is_dropped_before_a_byte() -> None:
    listener = Listener(echo, ConnectionGuard(10.0, 1, "edge"), Limits())
    first, second = listener(), listener()
    t1, t2 = FakeTransport(), FakeTransport()
    t1.protocol, t2.protocol = first, second
    first.connection_made(t1)
    second.connection_made(t2)
    assert not t1.closed and t2.closed
    t1.close()
    assert listener.guard.open == {}


async def test_a_client_leaving_does_not_cancel_its_handler() -> None:
    left, finished = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []

    async def slow(request: Request, channel: Channel) -> None:
        await left.wait()  # the client is gone by now: this handler carries on
        finished.set()
        try:
            await channel.respond(Response(200, CIMultiDict(), b"late"))
        except ConnectionError:
            outcome.append("told")

    conn, t = connect(slow)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    t.close()
    left.set()
    await asyncio.wait_for(finished.wait(), 5)
    await settle()
    assert outcome == ["told"] and t.take() == b""


async def test_an_unread_body_is_skipped_before_the_next_request() -> None:
    async def ignore(request: Request, channel: Channel) -> None:
        await channel.respond(Response(204, CIMultiDict()))

    conn, t = connect(ignore)
    conn.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")
    await settle()
    conn.data_received(b"cdeGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    got = responses(t.take())
    assert [status for status, _, _ in got] == [204, 204]


def hot_engine(max_header_bytes: int = 32 << 10) -> Any:
    """What the fast path asks of an engine: a hot tier holding GET /hot for Host h,
    and the recv checks (edge.features.recv) with nothing but the framing's limits."""
    from types import SimpleNamespace

    from edge.features import recv
    from edge.observe.accesslog import AccessLog
    from edge.pipeline.fastpath import HotTier

    tier = HotTier(lambda key, variant: True, lambda: 1)
    tier.offer(
        (b"/hot", b"h", b""),
        "k",
        "v",
        "/hot",
        "HTTP/1.1 200 OK",
        [("Age", "0"), ("Cache-Status", "e; hit; ttl=60"), ("Content-Length", "3")],
        b"hot",
        0.0,
        3600.0,
        time.time(),
    )
    metrics = SimpleNamespace(fast_hits=0, fast_bytes=0)
    settings = recv.Settings(
        max_body=1 << 20,
        max_header_bytes=max_header_bytes,
        allowed_methods=("GET", "HEAD"),
        rules=None,
        limiter=None,
        cdn_name="edge",
        node="e",
        loop_allowance=0,
        serves=lambda host: True,
    )
    return SimpleNamespace(
        hot=tier,
        purger=None,
        hot_checks=recv.Remembered(settings),
        metrics=metrics,
        access=AccessLog(),
        clock=time.time,
        monotonic=time.monotonic,
    )


async def test_a_hot_hit_is_answered_from_the_head_without_the_handler() -> None:
    asked: list[str] = []

    async def handler(request: Request, channel: Channel) -> None:
        asked.append(request.target)
        await echo(request, channel)

    engine = hot_engine()
    listener = Listener(
        handler, ConnectionGuard(10.0, 0, "edge", engine=engine), Limits(), hot=True
    )
    conn, t = listener(), FakeTransport()
    t.protocol = conn
    conn.connection_made(t)
    request = b"GET /hot HTTP/1.1\r\nHost: h\r\n\r\n"
    conn.data_received(request + b"GET /cold HTTP/1.1\r\nHost: h\r\n\r\n" + request)
    await settle()
    got = responses(t.take())
    assert [body for _, _, body in got] == [
        b"hot",
        b"GET /cold (1, 1) body=",
        b"GET /hot (1, 1) body=",
    ]
    # In order: the second /hot waited behind /cold, so it went the general way.
    assert asked == ["/cold", "/hot"]
    assert got[0][1]["age"] == "0" and got[0][1]["cache-status"].startswith("e; hit; ttl=35")
    # Alone, it is answered from its parsed head; then its bytes are remembered and
    # the same bytes again are answered without parsing them.
    for _ in range(2):
        conn.data_received(request)
        assert responses(t.take())[0][2] == b"hot"
        assert request in listener.guard.parsed
    assert asked == ["/cold", "/hot"] and engine.metrics.fast_hits == 3


async def test_shutdown_finishes_the_request_in_flight_then_closes() -> None:
    release = asyncio.Event()

    async def slow(request: Request, channel: Channel) -> None:
        await release.wait()
        await echo(request, channel)

    # No lingering: the fake client never closes its side.
    listener = Listener(slow, ConnectionGuard(10.0, 0, "edge"), Limits(lingering_time=0.0))
    busy, idle = listener(), listener()
    t_busy, t_idle = FakeTransport(), FakeTransport()
    for conn, t in ((busy, t_busy), (idle, t_idle)):
        t.protocol = conn
        conn.connection_made(t)
    busy.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    await settle()
    closing = asyncio.create_task(listener.close(timeout=5))
    await settle()
    assert t_idle.closed and not t_busy.closed  # the idle one at once
    release.set()
    await asyncio.wait_for(closing, 5)
    ((status, fields, body),) = responses(t_busy.take())
    assert (status, body) == (200, b"GET /a (1, 1) body=") and fields["connection"] == "close"
    assert t_busy.closed and listener.connections == set()


async def test_reading_pauses_while_a_body_waits_unread() -> None:
    release = asyncio.Event()

    async def late_reader(request: Request, channel: Channel) -> None:
        await release.wait()
        await echo(request, channel)

    conn, t = connect(late_reader)
    size = 3 << 20
    conn.data_received(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
    piece = b"x" * (256 << 10)
    for _ in range(size // len(piece)):
        conn.data_received(piece)
        if t.paused:
            break
    assert t.paused  # over the high-water mark: the client is made to wait
    release.set()
    for _ in range(200):
        await asyncio.sleep(0)
        if not t.paused:
            break
    assert not t.paused  # read: the client may send again


async def test_a_hot_request_over_the_header_bytes_limit_goes_the_general_way() -> None:
    asked: list[str] = []

    async def handler(request: Request, channel: Channel) -> None:
        asked.append(request.target)
        await channel.respond(Response(431, CIMultiDict()))

    guard = ConnectionGuard(10.0, 0, "edge", engine=hot_engine(max_header_bytes=2000))
    listener = Listener(handler, guard, Limits(), hot=True)
    conn, t = listener(), FakeTransport()
    t.protocol = conn
    conn.connection_made(t)
    accepts = b"".join(b"Accept: " + b"a" * 150 + b"\r\n" for _ in range(15))  # ~2.4 KB
    conn.data_received(b"GET /hot HTTP/1.1\r\nHost: h\r\n" + accepts + b"\r\n")
    await settle()
    assert asked == ["/hot"] and responses(t.take())[0][0] == 431
