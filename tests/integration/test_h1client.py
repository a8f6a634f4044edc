"""edge's upstream HTTP/1.1 client (edge.upstream.h1client) against raw-socket servers on
loopback: read timeouts for a head and a body that never come, a response that overruns
its Content-Length (in the read that ends it, or in a later one), a body of known length
arriving after its head, whole and in order, or cut short by the close, a field with a
line break refused before anything is sent, bodies whose end is the server's close
(RFC 9112 Section 6.3), and bodies read into a file (`read_into`): spliced from the socket
on plain TCP, whole and in order, cut, stalled or overrun as a read body is, and read from
memory when chunked or over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from edge.server.tls import LocalCA
from edge.upstream import h1client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> AsyncIterator[h1client.ConnectionPool]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = h1client.ConnectionPool(h1client.Server("http", "127.0.0.1", port))
    try:
        yield pool
    finally:
        await pool.close()
        server.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def _stall(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(30)


@pytest.fixture
async def quiet_head() -> AsyncIterator[h1client.ConnectionPool]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await _stall(writer, b"")

    async for pool in _serve(handler):
        yield pool


@pytest.fixture
async def quiet_body() -> AsyncIterator[h1client.ConnectionPool]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await _stall(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async for pool in _serve(handler):
        yield pool


def _answering(answer: bytes) -> Handler:
    """A server that answers every request on a connection with `answer`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answer)
            await writer.drain()

    return handler


@pytest.fixture
async def overrun() -> AsyncIterator[h1client.ConnectionPool]:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA BYTES"
    async for pool in _serve(_answering(answer)):
        yield pool


async def test_a_head_that_never_comes_times_out(quiet_head: h1client.ConnectionPool) -> None:
    started = time.monotonic()
    with pytest.raises(h1client.ReadTimeout):
        await quiet_head.request("GET", "/", [], connect_timeout=5, read_timeout=0.3)
    assert time.monotonic() - started < 5
    assert not quiet_head.idle and not quiet_head.all  # closed, never pooled


async def test_a_body_that_stops_times_out(quiet_body: h1client.ConnectionPool) -> None:
    response = await quiet_body.request("GET", "/", [], connect_timeout=5, read_timeout=0.3)
    assert await response.read() == b"abc"
    started = time.monotonic()
    with pytest.raises(h1client.ReadTimeout):
        await response.read()
    assert time.monotonic() - started < 5
    response.release()
    assert not quiet_body.idle


async def test_an_overrun_is_cut_at_the_declared_length_and_ends_the_connection(
    overrun: h1client.ConnectionPool,
) -> None:
    response = await overrun.request("GET", "/", [], connect_timeout=5, read_timeout=5)
    body = b""
    while piece := await response.read():
        body += piece
    assert body == b"hello"
    response.release()
    assert not overrun.idle  # never reused


async def _in_writes(
    writes: list[bytes], *, close: bool = False
) -> AsyncIterator[tuple[h1client.ConnectionPool, list[int]]]:
    """A server answering each request with `writes`, one write (and one segment on
    the wire) at a time, so the client reads a body after its head; it counts the
    connections it accepted."""
    accepted: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            for data in writes:
                writer.write(data)
                await writer.drain()
                await asyncio.sleep(0.05)  # the next write is a read of its own
            if close:
                writer.close()
                return

    async for pool in _serve(handler):
        yield pool, accepted


async def _body(response: h1client.Response) -> bytes:
    got = b""
    while piece := await response.read():
        got += piece
    return got


async def test_a_body_that_comes_after_its_head_is_whole_and_the_connection_reused() -> None:
    body = bytes(range(256)) * 1024
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    writes = [head, body[:1000], body[1000:100_000], body[100_000:]]
    async for pool, accepted in _in_writes(writes):
        for _ in range(2):
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
            assert await _body(response) == body
            response.release()
        assert len(pool.idle) == 1 and len(accepted) == 1  # clean: reused, not redialled


async def test_an_overrun_in_a_later_read_is_cut_at_the_declared_length() -> None:
    writes = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"defghijEXTRA"]
    async for pool, _ in _in_writes(writes):
        response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
        assert await _body(response) == b"abcdefghij"
        response.release()
        assert not pool.idle and not pool.all  # never reused


async def test_a_body_cut_short_by_the_close_is_a_broken_answer() -> None:
    writes = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"abcd"]
    async for pool, _ in _in_writes(writes, close=True):
        response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
        with pytest.raises(h1client.BadResponse, match="before the response ended"):
            await _body(response)
        response.release()
        assert not pool.idle


async def test_a_field_with_a_line_break_is_refused_before_sending(
    overrun: h1client.ConnectionPool,
) -> None:
    with pytest.raises(h1client.ClientError, match="X-Bad"):
        await overrun.request(
            "GET",
            "/",
            [("X-Ok", "1"), ("X-Bad", "a\r\nInjected: 1")],
            connect_timeout=5,
            read_timeout=5,
        )
    assert not overrun.all  # nothing was sent: no connection made


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        # RFC 9112 Section 6.3: a final coding other than chunked, and no framing at
        # all, each leave the body to run to the close. (With Content-Length beside
        # Transfer-Encoding the response is refused: Section 6.3 says to treat it as an
        # error, and llhttp does.)
        (b"Transfer-Encoding: foo-bar\r\n", b"close-delimited " * 64),
        (b"Transfer-Encoding: gzip, foo\r\n", b"two codings"),
        (b"", b"no framing at all"),
    ],
    ids=["unknown-coding", "codings-not-chunked", "neither-field"],
)
async def test_a_body_framed_by_nothing_runs_to_the_close(framing: bytes, body: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n" + body)
        await writer.drain()
        writer.close()

    async for pool in _serve(handler):
        response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
        got = b""
        while piece := await response.read():
            got += piece
        assert got == body
        response.release()
        assert not pool.idle  # a connection the server closed is never reused


async def _keep_answering(handler_bytes: bytes) -> AsyncIterator[h1client.ConnectionPool]:
    """A server answering every request on a connection with `handler_bytes`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(handler_bytes)
            await writer.drain()

    async for pool in _serve(handler):
        yield pool


async def test_interim_responses_are_told_in_order_and_the_connection_stays_clean() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok"
    )
    async for pool in _keep_answering(answer):
        for _ in range(2):  # the second on the pooled connection
            told: list[tuple[int, list[tuple[str, str]]]] = []
            response = await pool.request(
                "GET",
                "/",
                [],
                connect_timeout=5,
                read_timeout=5,
                interim=lambda status, fields, told=told: told.append(
                    (status, list(fields.items()))
                ),
            )
            assert told == [
                (100, []),
                (102, []),
                (103, [("Link", "</a.css>; rel=preload"), ("Link", "</b.js>")]),
            ]
            assert response.status == 200 and list(response.headers.items()) == [
                ("Content-Length", "2"),
                ("X-Final", "1"),
            ]
            assert await response.read() == b"ok" and await response.read() == b""
            response.release()
        assert len(pool.all) == 1  # 1xx and all, the answers ended cleanly: one connection


async def test_trailers_are_kept_apart_from_the_head() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Checksum: sha-1\r\nServer-Timing: db;dur=5\r\n\r\n"
    )
    async for pool in _keep_answering(answer):
        response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
        assert "X-Checksum" not in response.headers
        assert await response.read() == b"hello" and await response.read() == b""
        assert list(response.trailers.items()) == [
            ("X-Checksum", "sha-1"),
            ("Server-Timing", "db;dur=5"),
        ]
        response.release()
        assert len(pool.idle) == 1  # whole and clean: pooled


async def test_a_trailer_that_frames_is_a_broken_answer() -> None:
    # RFC 9110 Section 6.5.1: Content-Length is never a trailer; llhttp reads it as a
    # second framing and refuses it, so the answer is never taken for whole.
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nContent-Length: 999\r\n\r\n"
    )
    async for pool in _keep_answering(answer):
        response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
        with pytest.raises(h1client.BadResponse):
            while await response.read():
                pass
        response.release()
        assert not pool.idle


async def _expecting(answer_first: bytes | None) -> AsyncIterator[h1client.ConnectionPool]:
    """A server reading a head with `Expect: 100-continue`: it answers `answer_first`
    at once (the body unread), or says 100, reads the body and echoes its length."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_request(reader)
        assert b"Expect: 100-continue\r\n" in head and b"Content-Length: 4\r\n" in head
        if answer_first is not None:
            writer.write(answer_first)
            await writer.drain()
            await asyncio.sleep(1)
            return
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + body)
        await writer.drain()
        await asyncio.sleep(1)

    async for pool in _serve(handler):
        yield pool


async def test_a_deferred_body_is_sent_once_the_server_says_100() -> None:
    asked: list[int] = []

    async def supply() -> bytes:
        asked.append(1)
        return b"data"

    async for pool in _expecting(None):
        response = await pool.request(
            "POST", "/", [], h1client.Deferred(4, supply), connect_timeout=5, read_timeout=5
        )
        assert response.status == 200 and await response.read() == b"data"
        assert asked == [1]
        response.release()


async def test_a_deferred_body_is_never_sent_after_a_final_answer() -> None:
    async def supply() -> bytes:
        raise AssertionError("the body was asked for after a final answer")

    refusal = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"
    async for pool in _expecting(refusal):
        response = await pool.request(
            "POST", "/", [], h1client.Deferred(4, supply), connect_timeout=5, read_timeout=5
        )
        assert response.status == 413 and await response.read() == b""
        response.release()
        # The server may yet read the body it was promised: never reused.
        assert not pool.idle


async def test_a_deferred_body_goes_after_a_silent_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h1client, "CONTINUE_WAIT", 0.2)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)  # never says 100: reads the body as it comes
        body = await reader.readexactly(4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + body)
        await writer.drain()

    async def supply() -> bytes:
        return b"late"

    async for pool in _serve(handler):
        started = time.monotonic()
        response = await pool.request(
            "POST", "/", [], h1client.Deferred(4, supply), connect_timeout=5, read_timeout=5
        )
        assert await response.read() == b"late" and time.monotonic() - started >= 0.2
        response.release()


@pytest.fixture
async def keep_alive() -> AsyncIterator[h1client.ConnectionPool]:
    async for pool in _serve(_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")):
        yield pool


async def _freed_after(
    pool: h1client.ConnectionPool, finish: Callable[[h1client.Response], Awaitable[None]]
) -> None:
    """After `finish`, nothing of the exchange is left in a reference cycle: it and
    what hung on it (the interim sink a client's whole request hangs on) go at once,
    with the cycle collector off."""
    import gc
    import weakref

    def sink(status: int, fields: object) -> None: ...

    gc.disable()
    try:
        response = await pool.request(
            "GET", "/", [], connect_timeout=5, read_timeout=5, interim=sink
        )
        exchange = weakref.ref(response._exchange)
        held = weakref.ref(sink)
        del sink
        await finish(response)
        del response
        assert exchange() is None and held() is None
    finally:
        gc.enable()


async def test_an_exchange_read_to_its_end_is_freed_at_once(
    keep_alive: h1client.ConnectionPool,
) -> None:
    async def read_all(response: h1client.Response) -> None:
        assert await response.read() == b"hello"
        assert await response.read() == b""
        response.release()
        assert await response.read() == b""  # still the end, as before it let go

    await _freed_after(keep_alive, read_all)


async def test_an_abandoned_exchange_is_freed_at_once(quiet_body: h1client.ConnectionPool) -> None:
    async def abandon(response: h1client.Response) -> None:
        assert await response.read() == b"abc"
        response.release()  # 7 bytes short
        with pytest.raises(h1client.ClientError, match="abandoned"):
            await response.read()  # broken, as before it let go

    await _freed_after(quiet_body, abandon)


# -- bodies into a file (Response.read_into): spliced from the socket where it can be ------

Runner = Callable[[Awaitable[None]], None]


def _on_uvloop(coro: Awaitable[None]) -> None:
    import uvloop  # the loop nodes run on

    uvloop.run(coro)  # type: ignore[arg-type]


# Nodes run on uvloop; the splice's readiness watch is the loop's, so both are tried.
LOOPS = pytest.mark.parametrize("run", [asyncio.run, _on_uvloop], ids=["asyncio", "uvloop"])


async def _into_file(response: h1client.Response, path: Path, step: int) -> bytes:
    """The body read into a file `step` bytes at most at a time; the file's bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while await response.read_into(fd, step):
            pass
    finally:
        os.close(fd)
    return path.read_bytes()


def _large_writes(body: bytes, head_extra: bytes = b"") -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), head_extra)
    # Some of the body with the head (read from memory), the rest after it (spliced).
    return [head + body[:5000], body[5000 : 1 << 20], body[1 << 20 :]]


@LOOPS
def test_a_large_body_is_spliced_into_a_file_whole_and_the_connection_reused(
    run: Runner, tmp_path: Path
) -> None:
    body = os.urandom(3 << 20)

    async def main() -> None:
        async for pool, accepted in _in_writes(_large_writes(body)):
            for step in (333_333, 1 << 22):  # limits across pieces and splices alike
                response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
                assert await _into_file(response, tmp_path / "body", step) == body
                response.release()
            assert len(pool.idle) == 1 and len(accepted) == 1  # clean: reused
            assert pool.idle[0].splicer() is not None  # the kernel moved the bytes

    run(main())


@LOOPS
def test_a_body_spliced_in_part_and_dropped_for_the_rest_ends_clean(
    run: Runner, tmp_path: Path
) -> None:
    body = os.urandom(3 << 20)

    async def main() -> None:
        async for pool, _ in _in_writes(_large_writes(body)):
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
            fd = os.open(tmp_path / "part", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                got = 0
                while got < 2 << 20:
                    got += await response.read_into(fd, (2 << 20) - got)
            finally:
                os.close(fd)
            dropped = 0
            while n := await response.read_into(None, 1 << 20):  # reading resumes for it
                dropped += n
            assert dropped == len(body) - (2 << 20)
            assert (tmp_path / "part").read_bytes() == body[: 2 << 20]
            response.release()
            assert len(pool.idle) == 1

    run(main())


@LOOPS
def test_bytes_after_a_spliced_body_end_its_connection(run: Runner, tmp_path: Path) -> None:
    body = os.urandom(2 << 20)
    writes = [*_large_writes(body), b"HTTP/1.1 200 OK\r\n\r\nsmuggled"]

    async def main() -> None:
        async for pool, _ in _in_writes(writes):
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
            assert await _into_file(response, tmp_path / "body", 1 << 20) == body
            response.release()
            for _ in range(100):  # the extra bytes arrive once the pool reads again
                if not pool.idle:
                    break
                await asyncio.sleep(0.02)
            assert not pool.idle and not pool.all  # never reused

    run(main())


@LOOPS
def test_a_spliced_body_cut_by_the_close_is_a_broken_answer(run: Runner, tmp_path: Path) -> None:
    body = os.urandom(2 << 20)
    writes = _large_writes(body)[:2]  # the last part never comes

    async def main() -> None:
        async for pool, _ in _in_writes(writes, close=True):
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
            with pytest.raises(h1client.BadResponse, match="before the response ended"):
                await _into_file(response, tmp_path / "body", 1 << 20)
            response.release()
            assert not pool.idle and not pool.all
            assert (tmp_path / "body").read_bytes() == body[: 1 << 20]  # what came, in order

    run(main())


@LOOPS
def test_a_spliced_body_that_stops_times_out(run: Runner, tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n"

    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.1)
            await _stall(writer, b"x" * 100_000)

        async for pool in _serve(handler):
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=0.5)
            started = time.monotonic()
            with pytest.raises(h1client.ReadTimeout):
                await _into_file(response, tmp_path / "body", 1 << 20)
            assert time.monotonic() - started < 10
            response.release()
            assert not pool.idle and not pool.all

    run(main())


@LOOPS
def test_a_chunked_body_goes_into_a_file_from_memory(run: Runner, tmp_path: Path) -> None:
    body = os.urandom(300_000)
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 70_000]), body[i : i + 70_000])
        for i in range(0, len(body), 70_000)
    )
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def main() -> None:
        async for pool, _ in _in_writes([head, chunked + b"0\r\n\r\n"]):
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
            assert await _into_file(response, tmp_path / "body", 100_000) == body
            response.release()
            assert len(pool.idle) == 1

    run(main())


@LOOPS
def test_a_body_over_tls_is_never_spliced(run: Runner, tmp_path: Path) -> None:
    ca = LocalCA(tmp_path / "tls")
    cert, key = ca.issue("origin", ["localhost"], ["127.0.0.1"])
    body = os.urandom(2 << 20)
    writes = _large_writes(body)

    async def main() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            for data in writes:
                writer.write(data)
                await writer.drain()
                await asyncio.sleep(0.05)
            await asyncio.sleep(5)

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        pool = h1client.ConnectionPool(
            h1client.Server("https", "127.0.0.1", port), ssl_context=client_ctx
        )
        try:
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
            assert await _into_file(response, tmp_path / "body", 1 << 20) == body
            response.release()
            assert len(pool.idle) == 1 and pool.idle[0].splicer() is None
        finally:
            await pool.close()
            server.close()

    run(main())


@LOOPS
def test_a_fast_server_does_not_hold_the_loop_while_its_body_is_spliced(
    run: Runner, tmp_path: Path
) -> None:
    """Bytes that are already there make a splice that never waits: each step still
    gives the loop a turn, or a fast origin would hold it (no accept, no client
    served) for a whole large body."""
    body = os.urandom(8 << 20)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:  # apart from the client's loop, as an origin is
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            conn.sendall(body)
            with contextlib.suppress(OSError):
                conn.recv(1)  # until the client closes (or resets)

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        pool = h1client.ConnectionPool(h1client.Server("http", "127.0.0.1", port))
        ticking = asyncio.ensure_future(ticker())
        try:
            response = await pool.request("GET", "/", [], connect_timeout=5, read_timeout=5)
            fd = os.open(tmp_path / "body", os.O_WRONLY | os.O_CREAT, 0o600)
            held = longest = 0  # bytes read without the loop turning
            try:
                while True:
                    before = ticks
                    n = await response.read_into(fd, 64 << 10)
                    if not n:
                        break
                    held = held + n if ticks == before else 0
                    longest = max(longest, held)
            finally:
                os.close(fd)
            response.release()
            assert (tmp_path / "body").read_bytes() == body
            # At most what was read into memory before the splices (the pool pauses
            # reading at 1 MiB queued), never the body.
            assert longest <= 2 << 20, longest
        finally:
            ticking.cancel()
            await pool.close()

    try:
        run(main())
    finally:
        listener.close()
        server.join(timeout=10)
