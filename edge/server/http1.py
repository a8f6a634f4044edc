"""edge's HTTP/1.1 server connection: an asyncio.Protocol on llhttp (httptools).

Owns everything about a client connection that is HTTP/1.1's own, for the public, TLS,
admin and redirect listeners: request framing (llhttp refuses what is ambiguous:
Content-Length with Transfer-Encoding, bad or repeated lengths, bad chunk sizes,
obs-fold, bare CR/LF), the head limits (request line 414, a field or too many fields
431, RFC 6585 Section 5), keep-alive and pipelining (answers in request order), interim
responses (`100 Continue`, 102, 103: to HTTP/1.1 requests only, before the final head),
trailer sections of chunked answers, HEAD, HTTP/1.0 (no chunked coding; a body of
unknown length is delimited by closing, RFC 9112 Section 6.3), response framing
(Content-Length, chunked), back-pressure both ways, sendfile (edge.server.zerocopy), the
idle and head deadlines, and the guard's per-connection checks (`ConnectionGuard`). It
hands each request to its listener's handler as an edge.pipeline.exchange.Request with a
Channel for the response, and answers a hot hit (edge.pipeline.fastpath) from the parsed
head itself. A connection whose TLS handshake chose "h2" by ALPN, or (h2c, when the
listener takes it) whose first bytes are the HTTP/2 preface, is handed to the listener's
HTTP/2 protocol (edge.server.http2) before any of this.

It decides nothing about caching, routing or the guard's per-request rules (the
handler's), and never echoes request bytes in its own error answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import IO, Any

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from edge.features import recv
from edge.features.guard import Refusal, Refused
from edge.observe.accesslog import request_line
from edge.observe.metrics import NodeMetrics
from edge.pipeline import fastpath
from edge.pipeline.exchange import ArrivingBody, Channel, Request, Response
from edge.rfc import forwarding
from edge.server import zerocopy

log = logging.getLogger("edge.server.http1")

#: A request line at the start of a connection's next bytes: method, target, version.
_REQUEST_LINE = re.compile(rb"([!-~]+) [!-~]+ HTTP/([0-9]\.[0-9])\r?\n")

#: RFC 9110 Section 6.4.1 / RFC 9112 Section 6.3: answers that never carry a body.
_NO_BODY_STATUSES = frozenset((204, 304, *range(100, 200)))

#: RFC 9113 Section 3.4: the HTTP/2 connection preface. With prior knowledge (h2c) a
#: cleartext connection that begins with it is handed to the listener's HTTP/2 protocol.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Reading from the client pauses while this much of a request body waits unread, or
#: while this many pipelined requests wait their turn.
_BODY_HIGH_WATER = 1 << 20
_BODY_LOW_WATER = 256 << 10
_MAX_QUEUED = 8

Handler = Callable[[Request, Channel], Awaitable[None]]
#: A hot request's parse: its hot-tier key, target, whether it closes, and the request
#: as the recv checks (edge.features.recv) settled it.
_HotParse = tuple[tuple[bytes, bytes, bytes], str, bool, recv.Inbound]
#: Fills in a response's fields before they are written (Server, HSTS, spellings).
Finisher = Callable[[CIMultiDict[str], Request], None]


def local_of(transport: asyncio.BaseTransport) -> str:
    """The address a client reached, as HOST:PORT (the authority of a request that
    named none)."""
    sock = transport.get_extra_info("sockname")
    if not (isinstance(sock, tuple) and sock):
        return ""
    host = f"[{sock[0]}]" if ":" in str(sock[0]) else str(sock[0])
    return f"{host}:{sock[1]}"


def fields_of(raw: tuple[tuple[bytes, bytes], ...]) -> CIMultiDictProxy[str]:
    """A request's fields as the handler and the recv checks read them: one decoding
    (UTF-8, other bytes kept as surrogates), so both judge the same text."""
    return CIMultiDictProxy(
        CIMultiDict(
            (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for k, v in raw
        )
    )


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class DateField:
    """The Date field's value for now, formatted once a second."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        now = int(self._clock())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True)
        return self._value


@dataclass
class ConnectionGuard:
    """The guard's connection-level state, shared by a node's connections: open
    connections per client address, and what to count refusals in."""

    header_timeout: float
    max_per_client: int
    server_header: str
    # edge.pipeline.transaction.Engine, for the hit fast path (edge.pipeline.fastpath)
    engine: Any = None
    # Trusted proxies (edges, at a shield) carry many clients: not limited per address.
    exempt: tuple[forwarding.Network, ...] = ()
    metrics: NodeMetrics | None = None
    node: str = ""
    open: collections.Counter[str] = field(default_factory=collections.Counter)

    # The exact bytes of whole requests the fast path answered, with what their parse
    # gave (edge.pipeline.fastpath key, path, close?, the request as the recv checks
    # settled it): identical bytes parse identically, and a client sends the same
    # request head again and again.
    parsed: dict[bytes, _HotParse] = field(default_factory=dict)

    def hot_answer(
        self,
        client: str,
        key: tuple[bytes, bytes, bytes],
        request: tuple[str, str, tuple[int, int]],
        close: bool,
        raw: tuple[tuple[bytes, bytes], ...] | None,
        settled: recv.Inbound | None,
    ) -> tuple[tuple[fastpath.Hot, bytes], recv.Inbound] | None:
        """The hot tier's answer (edge.pipeline.fastpath) if it holds one and the recv
        checks (edge.features.recv) admit the request, for HTTP/1.1 and HTTP/2 alike;
        None sends it the general way, which answers what the checks refuse. The rate
        limit counts the peer: a hot request carries no forwarding field. `request`:
        (path, the address the client reached, version); `settled`: these exact bytes
        passed the pure checks before (then `raw` is None). Returns the answer and the
        request as the checks settled it."""
        engine = self.engine
        if engine.purger is not None and not engine.purger.ready:
            return None
        found = engine.hot.answer(key, engine.clock(), close)
        if found is None:
            return None
        path, local, version = request
        checks: recv.Remembered = engine.hot_checks
        if settled is None:
            assert raw is not None
            failed, settled = checks.admit(
                (version, path, raw),
                lambda: recv.Inbound("GET", version, path, fields_of(raw), local),
                client,
                engine.monotonic(),
            )
        else:
            failed = checks.stateful(settled, client, engine.monotonic())
        if failed is not None:
            return None
        return found, settled

    def refused(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(self.node, str(status)).inc()


@dataclass
class Limits:
    """A listener's HTTP/1.1 limits and deadlines."""

    max_request_line: int = 8190
    max_header_size: int = 8190
    max_headers: int = 100
    keepalive_timeout: float = 5.0
    #: After refusing a body it did not read, how long the connection reads on before
    #: closing, so the client sees the answer rather than a reset.
    lingering_time: float = 2.0


class Listener:
    """What one listening address serves: its handler, guard, limits and finisher,
    and its open connections (closed gracefully by `close`)."""

    def __init__(
        self,
        handler: Handler,
        guard: ConnectionGuard,
        limits: Limits,
        finish: Finisher | None = None,
        *,
        hot: bool = False,
    ) -> None:
        self.handler = handler
        self.guard = guard
        self.limits = limits
        self.finish = finish
        self.hot = hot  # answer hot hits (edge.pipeline.fastpath): the public listener only
        self.connections: set[Any] = set()  # Connection, or edge.server.http2's
        # The HTTP/2 protocol's factory (edge.server.http2): used when TLS's ALPN chose
        # "h2", and on cleartext when `h2c` (prior knowledge, RFC 9113 Section 3.3).
        self.http2: Callable[[], asyncio.Protocol] | None = None
        self.h2c = False
        self.servers: list[asyncio.Server] = []
        self.date = DateField()

    def __call__(self) -> Connection:
        return Connection(self)

    async def listen(
        self, host: str, port: int, *, reuse_port: bool | None = None
    ) -> tuple[str, int]:
        """Listen on host:port (0: a free port); returns the address bound."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self, host, port, reuse_address=True, reuse_port=reuse_port, backlog=1024
        )
        self.servers.append(server)
        sockname = server.sockets[0].getsockname()
        return sockname[0], int(sockname[1])

    async def close(self, timeout: float = 10.0) -> None:
        """Stop listening; idle connections close now, busy ones after their current
        response (within `timeout`)."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


class _Refuse(Exception):
    """Raised in a parser callback: the head breaks a limit; answer `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class BodyStream(ArrivingBody[bytes]):
    """A request body as llhttp hands it over (exchange.Body), the connection paused
    while more than _BODY_HIGH_WATER of it waits to be read."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn
        self.buffered = 0
        self.discard = False  # its request was answered: the rest is read and dropped

    def feed(self, data: bytes) -> None:
        if self.discard:
            return
        self.buffered += len(data)
        if self.buffered > _BODY_HIGH_WATER:
            self._conn.pause_for_body()
        self._put(data)

    def drop(self) -> None:
        self._chunks.clear()
        self.buffered = 0

    async def readany(self) -> bytes:
        data = await self._next()
        if data is None:
            return b""
        self.buffered -= len(data)
        if self.buffered < _BODY_LOW_WATER:
            self._conn.resume_for_body()
        return data


class _Pending:
    """A parsed request waiting for (or being given) its answer."""

    __slots__ = ("body", "keep_alive", "request")

    def __init__(self, request: Request, body: BodyStream, keep_alive: bool) -> None:
        self.request = request
        self.body = body
        self.keep_alive = keep_alive


class Connection(asyncio.Protocol):
    """One client connection (see the module's head)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.guard = listener.guard
        self.limits = listener.limits
        limits = self.limits
        # What llhttp may hold of one head before it is refused (it keeps a field whole
        # until its end): every limit at once, as the per-field checks allow.
        self._head_cap = limits.max_request_line + limits.max_headers * (limits.max_header_size + 4)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.client = ""
        self.scheme = "http"
        self.local = ""
        self._counted = False
        self.closed = False
        self._no_more = False  # no request is taken after those already queued
        self._shutdown = False  # the node stops: close after the current answer
        self._lingering = False  # closing: what arrives is read and dropped
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._current: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._body_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # loop time the connection went idle
        self._head_timer: asyncio.TimerHandle | None = None
        # The message being parsed.
        self._in_message = False
        self._head_done = False
        self._head_bytes = 0
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._body: BodyStream | None = None
        self._pending: _Pending | None = None  # parsed head, not yet queued
        self._whole = False  # this feed began at a message boundary
        self._hot_whole: _HotParse | None = None
        self._messages_in_feed = 0
        self._first = b""  # the connection's first bytes while they may be the h2 preface
        self._fresh = True  # nothing received yet
        engine = self.guard.engine
        # Whether hot hits are answered here (edge.pipeline.fastpath): the public listener's.
        self._hot = listener.hot and engine is not None and engine.hot is not None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        if self.listener.http2 is not None:
            tls = transport.get_extra_info("ssl_object")
            if tls is not None and tls.selected_alpn_protocol() == "h2":
                self._hand_over(b"")
                return
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) and peer else ""
        self.local = local_of(transport)
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        guard = self.guard
        if guard.max_per_client and not forwarding.is_trusted(self.client, guard.exempt):
            if guard.open[self.client] >= guard.max_per_client:
                # Before anything is set up: a refused connection costs little.
                if guard.metrics is not None:
                    guard.metrics.connections_refused.labels(guard.node).inc()
                self.closed = True
                transport.abort()
                return
            guard.open[self.client] += 1
            self._counted = True
        self.listener.connections.add(self)
        self._idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._forget()
        gone = ConnectionResetError("client went away")
        for pending in (self._current, self._pending, *self._queue):
            if pending is not None:
                pending.body.finish(gone)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(gone)
        # The handler is not cancelled: a fill it started carries on for others, and its
        # next write tells it the client left.

    def _forget(self) -> None:
        """This protocol is done with the connection: its timers, its place among the
        listener's connections and in the guard's count of the client's go."""
        self.closed = True
        self._cancel_timers()
        self.listener.connections.discard(self)
        if self._counted:
            self._counted = False
            open_ = self.guard.open
            open_[self.client] -= 1
            if open_[self.client] <= 0:
                del open_[self.client]

    def _hand_over(self, data: bytes) -> None:
        """HTTP/2 on this connection: the listener's HTTP/2 protocol takes it over,
        with the bytes read so far."""
        assert self.listener.http2 is not None and self.transport is not None
        self._forget()
        protocol = self.listener.http2()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if data:
            protocol.data_received(data)

    def _preface(self, data: bytes) -> bytes | None:
        """The first bytes of a cleartext connection on a listener with h2c: the h2
        preface hands the connection over (None: handed over, or wait for more)."""
        self._fresh = False
        data = self._first + data
        self._first = b""
        size = min(len(data), len(H2_PREFACE))
        if data[:size] != H2_PREFACE[:size]:
            return data
        if size < len(H2_PREFACE):
            self._first = data
            self._fresh = True
            return None
        self._hand_over(data)
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def eof_received(self) -> bool | None:
        # A client that half-closes after its requests still gets their answers.
        if self._current is None and not self._queue:
            return None  # nothing to answer: close
        self._no_more = True
        return True

    def data_received(self, data: bytes) -> None:
        if self.closed or self._lingering or (self._no_more and not self._in_message):
            return  # closing: read and dropped
        if self._fresh and self.listener.h2c:
            checked = self._preface(data)
            if checked is None:
                return
            data = checked
        self._fresh = False
        if not self._in_message:
            if self._hot and self._current is None and not self._queue:
                # Bytes that parsed as a whole hot request before (never a rewritten
                # request line: those are remembered as rewritten).
                parsed = self.guard.parsed.get(data)
                if parsed is not None and self._serve_hot(*parsed[:3], None, parsed[3]) is not None:
                    return
            checked = self._request_line(data)
            if checked is None:
                return
            data = checked
        self._cancel_idle()
        self._whole = not self._in_message
        self._hot_whole = None
        self._messages_in_feed = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade: the request is answered, then the connection ends
            # (edge tunnels and switches nothing).
            if self._pending is not None:
                self.on_message_complete()
            self._no_more = True
            self._in_message = False
        except httptools.HttpParserError as exc:
            self._broken_body()
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _Refuse):
                self._refuse_now(cause.status, str(cause), plain=True)
            else:
                log.debug("refused a request from %s: 400 %s", self.client, exc)
                self._refuse_now(400, "bad request", plain=True)
            return
        if (
            self._hot_whole is not None
            and self._messages_in_feed == 1
            and not self._in_message
            and data.find(b"\r\n\r\n") == len(data) - 4
            and len(data) <= fastpath.MAX_REQUEST_BYTES
        ):
            # The head ended where the data did: these bytes will parse the same again.
            parsed = self.guard.parsed
            if len(parsed) >= fastpath.MAX_ENTRIES:
                parsed.clear()
            parsed[data] = self._hot_whole
        if self._in_message and not self._head_done:
            # llhttp keeps a field whole until its end: a head is bounded here.
            self._head_bytes += len(data)
            if self._head_bytes > self._head_cap:
                self._refuse_now(431, "request header fields too large", plain=True)
                return
            if self._head_timer is None:
                self._start_head_timer()
        elif self._current is None and not self._queue and not self._in_message:
            self._idle()

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._head_bytes = 0
        self._head_done = False
        self._url = b""
        self._fields = []
        self._body = None
        self._pending = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            raise _Refuse(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools hands over each field whole.
        if len(name) + len(value) + 2 > self.limits.max_header_size:
            raise _Refuse(431, "request header field too large")
        self._fields.append((name, value))
        if len(self._fields) > self.limits.max_headers:
            raise _Refuse(431, "too many request header fields")

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._head_done = True
        self._head_bytes = 0
        if self._no_more:
            return  # after a request that ends the connection: never served
        parser = self._parser
        version_text = parser.get_http_version()
        version = (int(version_text[0]), int(version_text[2])) if version_text else (1, 1)
        raw = tuple(self._fields)
        method = parser.get_method().decode("ascii", "replace")
        target = self._url.decode("utf-8", "surrogateescape")
        if self._hot and self._current is None and not self._queue:
            # A hot hit is answered from the parsed head: no request value is built.
            # Its key admits no Content-Length or Transfer-Encoding, so no body follows.
            key = fastpath.request_key(method, version, target, raw)
            if key is not None:
                close = not parser.should_keep_alive()
                settled = self._serve_hot(key, target, close, raw, None)
                if settled is not None:
                    if self._whole and self._messages_in_feed == 0:
                        self._hot_whole = (key, target, close, settled)
                    return
        headers = fields_of(raw)
        length_field = headers.get("Content-Length")
        length = int(length_field) if length_field is not None and length_field.isdigit() else None
        chunked = "Transfer-Encoding" in headers
        body = BodyStream(self)
        self._body = body
        authority = headers.get("Host")
        request = Request(
            method=method,
            target=target,
            version=version,
            headers=headers,
            raw=raw,
            authority=authority if authority is not None else self.local,
            peer=self.client,
            scheme=self.scheme,
            body=body,
            has_body=chunked or bool(length),
            content_length=length,
        )
        pending = _Pending(request, body, parser.should_keep_alive())
        if request.has_body:
            # Handed over at once: the handler reads the body as it comes (and may
            # answer 100-continue or refuse it before it is sent).
            self._enqueue(pending)
        else:
            self._pending = pending  # handed over when llhttp sees its end

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._messages_in_feed += 1
        if self._body is not None:
            self._body.finish()
            self._body = None
        pending, self._pending = self._pending, None
        if pending is not None:
            self._enqueue(pending)

    def _broken_body(self) -> None:
        """The message llhttp refused mid-body was handed over at its head: not yet
        begun, it is dropped (the refusal answers it); begun, its body read fails
        with a 400 that closes the connection."""
        body = self._body
        if body is None:
            return
        self._body = None
        for pending in self._queue:
            if pending.body is body:
                self._queue.remove(pending)
                return
        body.finish(Refused(Refusal(400, "bad request body framing", close=True)))

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if not pending.keep_alive:
            self._no_more = True
        if len(self._queue) >= _MAX_QUEUED:
            self._pause_reading()
        if self._task is None:
            self._task = self.loop.create_task(self._serve())

    # -- serving -------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self._queue and not self.closed:
                pending = self._queue.popleft()
                self._current = pending
                if len(self._queue) < _MAX_QUEUED // 2:
                    self._resume_reading()
                channel = Http1Channel(self, pending)
                try:
                    await self.listener.handler(pending.request, channel)
                    if not channel.finished and not self.closed:
                        self.abort()  # the handler ended without completing its answer
                except (ConnectionError, asyncio.CancelledError):
                    self.abort()
                except Exception:
                    log.exception(
                        "internal error on %s %s", pending.request.method, pending.request.target
                    )
                    self.abort()
                finally:
                    self._current = None
                if self.closed:
                    return
                if channel.close or not pending.keep_alive:
                    self._finish_and_close()
                    return
                if not pending.body.done:
                    pending.body.discard = True  # unread: llhttp reads past the rest
                    pending.body.drop()
                    self.resume_for_body()
        finally:
            self._task = None
        if self.closed or self._lingering:
            return
        if (self._no_more or self._shutdown) and not self._in_message:
            self._finish_and_close()
        elif not self._in_message:
            self._idle()

    def _finish_and_close(self) -> None:
        """Close after the answer has left; read on a while (dropping what comes) so
        the close does not reset the answer away from the client."""
        self._lingering = True
        transport = self.transport
        if transport is None or self.closed:
            return
        self._cancel_timers()
        self._body_paused = False
        self._resume_reading()
        if transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
            self.loop.call_later(self.limits.lingering_time, self.close)
        else:
            transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self._lingering = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful: finish the current request, serve nothing after it."""
        self._shutdown = self._no_more = True
        if self._current is None and not self._queue:
            self.close()

    # -- the hit fast path (edge.pipeline.fastpath) -----------------------------------------------

    def _serve_hot(
        self,
        key: tuple[bytes, bytes, bytes],
        path: str,
        close: bool,
        raw: tuple[tuple[bytes, bytes], ...] | None,
        settled: recv.Inbound | None,
    ) -> recv.Inbound | None:
        """Answer from the hot tier if it holds this request's response and the recv
        checks (edge.features.recv) admit it; None sends it the general way, which
        answers what the checks refuse. The rate limit counts the peer: a hot request
        carries no forwarding field. `settled`: these exact bytes passed the pure checks
        before (then `raw` is None). Returns the request as the checks settled it."""
        found = self.guard.hot_answer(
            self.client, key, (path, self.local, (1, 1)), close, raw, settled
        )
        if found is None:
            return None
        (hot, data), settled = found
        engine = self.guard.engine
        assert self.transport is not None
        self.transport.write(data)
        engine.metrics.fast_hits += 1
        engine.metrics.fast_bytes += len(hot.body)
        if engine.access.enabled:
            engine.access.line(
                request_line(
                    self.client,
                    "GET",
                    path,
                    200,
                    "hit",
                    len(hot.body),
                    0,
                    None,
                    "fast",
                    protocol="HTTP/1.1",
                )
            )
        self._cancel_head_timer()
        if close:
            self._no_more = True
            self._finish_and_close()
        else:
            self._idle()
        return settled

    # -- request lines, deadlines, refusals ---------------------------------------------

    def _request_line(self, data: bytes) -> bytes | None:
        """The version of a request line starting these bytes, before llhttp sees it.
        RFC 9110 Section 2.5: a 1.x minor above 1 is read as HTTP/1.1 (llhttp would
        refuse it). HTTP/2 and later (the h2 preface "PRI * HTTP/2.0", an "HTTP/2.0"
        request line) get a 505 in HTTP/1.1, then the connection closes: a reply in
        the request's own version would not be HTTP/1.1 at all. None: answered."""
        match = _REQUEST_LINE.match(data)
        if match is None:
            return data
        major, minor = match.group(2)[0], match.group(2)[2]
        if major == 0x31 and minor > 0x31:  # "1", a minor above "1"
            at = match.start(2) + 2
            return data[:at] + b"1" + data[at + 1 :]
        if major > 0x31:
            self._refuse_now(505, "only HTTP/1.0 and HTTP/1.1 are served here")
            return None
        return data

    def _refuse_now(self, status: int, reason: str, *, plain: bool = False) -> None:
        """Answer from the connection itself, in HTTP/1.1, and close. `plain`: the
        body is the status alone (parser errors: their text could quote the input)."""
        if self.transport is None or self.closed or self._lingering:
            return
        if self._current is not None or self._queue:
            # Answers are due first: the connection ends after them, refusing no more.
            self._no_more = True
            self._in_message = False
            return
        text = f"{status} {phrase(status)}\n" if plain else f"{status} {phrase(status)}: {reason}\n"
        body = text.encode()
        server = self.guard.server_header.encode()
        date = self.listener.date().encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nDate: %s\r\nServer: %s\r\nConnection: close\r\n\r\n%s"
            % (status, phrase(status).encode(), len(body), date, server, body)
        )
        if status < 500 or status == 505:
            self.guard.refused(status)
        self._finish_and_close()

    def _idle(self) -> None:
        """Between requests (or before the first): closed after keepalive_timeout.
        One timer per connection, moved on lazily: a kept-alive client's every
        request must not cost a timer of its own."""
        if self.transport is None or self.closed:
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(
                self._idle_since + self.limits.keepalive_timeout, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None or self.closed:
            return  # busy since: _idle starts it again
        due = since + self.limits.keepalive_timeout
        if self.loop.time() < due:
            self._idle_timer = self.loop.call_at(due, self._idle_check)
        else:
            self.close()

    def _start_head_timer(self) -> None:
        # The first bytes of a new head: its deadline starts now. It falls in the last
        # quarter of header_timeout, at random, so that a crowd of slow heads sent
        # together does not expire in one burst that stalls the loop for everyone else.
        deadline = self.guard.header_timeout * random.uniform(0.75, 1.0)
        self._head_timer = self.loop.call_later(deadline, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_message and not self._head_done:
            self._refuse_now(408, "the request head was not sent in time")

    def _cancel_idle(self) -> None:
        self._idle_since = None

    def _cancel_timers(self) -> None:
        self._cancel_idle()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._cancel_head_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # -- back-pressure -------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._body_paused and self.transport is not None:
            self._reading_paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def pause_for_body(self) -> None:
        self._body_paused = True
        self._pause_reading()

    def resume_for_body(self) -> None:
        if self._body_paused:
            self._body_paused = False
            if len(self._queue) < _MAX_QUEUED:
                self._resume_reading()

    def _resume_for_body_forced(self) -> None:
        self._body_paused = False
        self._resume_reading()

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("client went away")
        if not self._write_paused:
            return
        self._drain = self.loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None


#: RFC 9114 Section 4.2 (RFC 9113 Section 8.2.2): fields about an HTTP/1.1 connection,
#: never written in HTTP/2 or HTTP/3.
CONNECTION_FIELDS = ("Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade")


@dataclass(slots=True)
class Head:
    """A response head's fields as a connection layer writes them, and what they
    decided: no body bytes go out (`empty`), chunked (`chunked`), the connection
    stays open after it (`keep_alive`)."""

    headers: CIMultiDict[str]
    empty: bool
    chunked: bool = False
    keep_alive: bool = True


def response_fields(
    listener: Listener,
    request: Request,
    response: Response,
    length: int | None,
    keep_alive: bool | None = None,
) -> Head:
    """The fields of a response head, in the order edge's answers have always had:
    the response's own (finished by the listener), then framing, Content-Type's
    default (RFC 9110 Section 8.3), Date, Server and, for HTTP/1.x (`keep_alive` not
    None), Transfer-Encoding and Connection. With `keep_alive` None (HTTP/2, HTTP/3)
    no connection-specific field is written (RFC 9114 Section 4.2): the caller's
    framing carries the body."""
    method = request.method
    status = response.status
    version = request.version
    headers = CIMultiDict(response.headers)
    if listener.finish is not None:
        listener.finish(headers, request)
    empty = status in _NO_BODY_STATUSES or method == "HEAD"
    h1 = keep_alive is not None
    chunked = False
    if length is not None:
        headers["Content-Length"] = str(length)
    elif not empty and h1:
        if version >= (1, 1):
            chunked = True
            headers["Transfer-Encoding"] = "chunked"
        else:
            keep_alive = False  # RFC 9112 Section 6.3: delimited by the close
    if empty:
        if status in _NO_BODY_STATUSES:
            headers.popall("Content-Length", None)
        headers.popall("Transfer-Encoding", None)
    elif length != 0:
        # RFC 9110 Section 8.3: a body without a type is an octet stream.
        headers.setdefault("Content-Type", "application/octet-stream")
    if "Date" not in headers:
        headers["Date"] = listener.date()
    headers.setdefault("Server", listener.guard.server_header or "edge")
    if not h1:
        for name in CONNECTION_FIELDS:
            headers.popall(name, None)
        return Head(headers, empty)
    if "Connection" not in headers:
        if keep_alive:
            if version == (1, 0):
                headers["Connection"] = "keep-alive"
        elif version == (1, 1):
            headers["Connection"] = "close"
    return Head(headers, empty, chunked, bool(keep_alive))


class Http1Channel:
    """exchange.Channel for one request on an HTTP/1.1 connection."""

    __slots__ = ("_chunked", "_empty", "close", "conn", "finished", "pending", "started")

    def __init__(self, conn: Connection, pending: _Pending) -> None:
        self.conn = conn
        self.pending = pending
        self.started = False
        self.finished = False
        self.close = False  # the connection ends after this answer
        self._chunked = False
        self._empty = False  # HEAD, 204, 304: no body bytes go out

    def _transport(self) -> asyncio.Transport:
        transport = self.conn.transport
        if transport is None or self.conn.closed or transport.is_closing():
            raise ConnectionResetError("client went away")
        return transport

    async def send_continue(self) -> None:
        request = self.pending.request
        if request.version >= (1, 1) and not self.started:
            self._transport().write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def send_interim(self, status: int, fields: Sequence[tuple[str, str]]) -> None:
        # RFC 9110 Section 15.2: never to an HTTP/1.0 client (which cannot tell a 1xx
        # from the answer), never after the final head; 101 only ever ends HTTP/1.1.
        if self.pending.request.version < (1, 1) or self.started or self.finished:
            return
        if not 100 <= status < 200 or status == 101:
            return
        lines = [f"HTTP/1.1 {status} {phrase(status)}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in fields]
        lines.append("\r\n")
        self._transport().write("".join(lines).encode("latin-1", "replace"))
        await self.conn.drain()

    def _head(self, response: Response, length: int | None) -> tuple[bytes, list[tuple[str, str]]]:
        """The head as written, and its fields (response_fields), in HTTP/1.x."""
        request = self.pending.request
        keep_alive = self.pending.keep_alive and not response.close and not self.conn._shutdown
        head = response_fields(self.conn.listener, request, response, length, keep_alive)
        self._empty, self._chunked = head.empty, head.chunked
        if not head.keep_alive:
            self.close = True
        fields = list(head.headers.items())
        version = request.version
        status = response.status
        lines = [f"HTTP/{version[0]}.{version[1]} {status} {phrase(status)}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in fields]
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape"), fields

    async def respond(self, response: Response) -> list[tuple[str, str]]:
        head, fields = self._head(response, len(response.body))
        self.started = True
        transport = self._transport()
        transport.write(head if self._empty or not response.body else head + response.body)
        self.finished = True
        await self.conn.drain()
        return fields

    async def start(self, head: Response) -> list[tuple[str, str]]:
        data, fields = self._head(head, head.length)
        self.started = True
        self._transport().write(data)
        await self.conn.drain()
        return fields

    async def write(self, data: bytes) -> None:
        if self._empty or not data:
            return
        transport = self._transport()
        if self._chunked:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.write(data)
        await self.conn.drain()

    async def send_file(self, file: IO[bytes], offset: int, count: int) -> None:
        if self._empty:
            return
        if self._chunked:
            self._transport().write(b"%x\r\n" % count)
            await zerocopy.send_span(self._transport(), file, offset, count, self._raw_write)
            self._transport().write(b"\r\n")
        else:
            await zerocopy.send_span(self._transport(), file, offset, count, self._raw_write)

    async def _raw_write(self, data: bytes) -> None:
        self._transport().write(data)
        await self.conn.drain()

    async def end(self, trailers: Sequence[tuple[str, str]] = ()) -> None:
        if self._chunked and not self.finished:
            # RFC 9112 Section 7.1.2: the trailer section closes the chunked body;
            # with any other framing there is none, and the trailers are dropped.
            section = "".join(f"{name}: {value}\r\n" for name, value in trailers)
            self._transport().write(b"0\r\n" + section.encode("latin-1", "replace") + b"\r\n")
        self.finished = True

    def abort(self) -> None:
        self.conn.abort()
