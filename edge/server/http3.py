"""edge's HTTP/3 server (RFC 9114) over QUIC (RFC 9000), on aioquic.

Owns what is HTTP/3's own on the TLS listener's port over UDP: the QUIC listener and
its configuration (the node's first certificate; ALPN "h3"), each connection's HTTP/3
state (aioquic's H3Connection), a request stream read as an edge.pipeline.exchange
Request (edge.rfc.pseudo refuses malformed heads), its request body (the length it
declared held to the DATA it carried: a mismatch is a 400 and nothing goes upstream),
its response as an exchange Channel (fields lowercased, no connection-specific ones,
bodies in DATA frames of at most 64 KiB that wait while a connection's unsent
backlog is above 1 MiB, so a stored file is never read whole and a client that does
not read holds only its own streams), 0-RTT (off unless enabled; then only safe
methods are served early, others get 425 Too Early, RFC 8470), QPACK bombs (each
HEADERS frame weighed by edge.rfc.qpack before aioquic decodes it: at most the
guard's max_header_bytes encoded, four times that decoded), the guard's per-client
connection limit (HTTP/3 connections count with TCP ones, in the listener's
ConnectionGuard), and a clean shutdown (new streams refused with
H3_REQUEST_REJECTED, in-flight ones finished, then CONNECTION_CLOSE with
H3_NO_ERROR).

aioquic owns QUIC itself: the handshake, the anti-amplification limit (RFC 9000
Section 8.1), path validation on migration (Section 9), flow control, the stream
limit (128 concurrent request streams) and QPACK. It decides nothing about caching,
routing or the guard's per-request rules (the handler's, as for HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from functools import partial
from typing import IO, Any

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.tls import SessionTicket
from multidict import CIMultiDict, CIMultiDictProxy

from edge.config import ConfigError
from edge.features.guard import Refusal, Refused
from edge.pipeline.exchange import ArrivingBody, Request, Response
from edge.rfc import forwarding, pseudo, qpack
from edge.server.http1 import Listener, response_fields

log = logging.getLogger("edge.server.http3")

#: RFC 9114 Section 8.1 error codes.
H3_NO_ERROR = 0x100
H3_INTERNAL_ERROR = 0x102
H3_EXCESSIVE_LOAD = 0x107
H3_REQUEST_REJECTED = 0x10B
H3_REQUEST_CANCELLED = 0x10C

#: The largest DATA frame written, and the unsent bytes a connection may queue before
#: its writers wait (aioquic buffers whatever it is given).
CHUNK = 64 << 10
SEND_HIGH_WATER = 1 << 20

#: At shutdown, a connection that has sent nothing for this long has delivered its
#: answers (what is unacknowledged would have been sent again by now).
QUIET = 0.3

#: The dynamic table capacity aioquic's H3Connection advertises
#: (SETTINGS_QPACK_MAX_TABLE_CAPACITY); edge.rfc.qpack weighs sections against it.
QPACK_TABLE_CAPACITY = 4096
#: RFC 9114 Section 6.2: the QPACK encoder stream's type.
QPACK_ENCODER_STREAM = 0x02

#: RFC 8470 Section 4 / RFC 9110 Section 9.2.1: what may be answered from early data.
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))

#: 0-RTT session tickets kept (each used once).
MAX_TICKETS = 4096


def configuration(cert: str, key: str, *, idle_timeout: float, max_body: int) -> QuicConfiguration:
    """The server's QUIC configuration with the node's (first) certificate; a file that
    does not load is a one-line ConfigError (edge.server.tls has checked it already)."""
    quic = QuicConfiguration(
        is_client=False,
        alpn_protocols=list(H3_ALPN),
        idle_timeout=idle_timeout,
        # A request stream's credit bounds what a client sends before it is read:
        # one body at most, and 1 MiB at least (aioquic's default).
        max_stream_data=max(1 << 20, min(max_body, 16 << 20)),
        max_data=16 << 20,
    )
    try:
        quic.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"HTTP/3 cannot load TLS certificate {cert} with key {key}: {exc}"
        ) from exc
    return quic


class _Tickets:
    """0-RTT session tickets, each handed out once: a replayed ClientHello finds none
    and gets a full handshake (RFC 8446 Section 8.1, single-use tickets)."""

    def __init__(self) -> None:
        self._tickets: collections.OrderedDict[bytes, SessionTicket] = collections.OrderedDict()

    def add(self, ticket: SessionTicket) -> None:
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > MAX_TICKETS:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        return self._tickets.pop(label, None)


class Http3Listener:
    """The UDP side of the TLS port: serves HTTP/3 through `listener` (the public
    listener: its handler, guard, finisher and Date)."""

    def __init__(
        self,
        listener: Listener,
        quic: QuicConfiguration,
        *,
        early_data: bool = False,
        max_body: int = 16 << 20,
        max_header_bytes: int = 32 << 10,
    ) -> None:
        self.listener = listener
        self.quic = quic
        self.early_data = early_data
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes  # the guard's limit of a field section
        self.connections: set[H3Protocol] = set()
        self.closing = False
        self._server: QuicServer | None = None
        self._tickets = _Tickets() if early_data else None

    async def start(self, host: str, port: int) -> None:
        tickets = self._tickets
        self._server = await serve(
            host,
            port,
            configuration=self.quic,
            create_protocol=partial(H3Protocol, server=self),
            session_ticket_fetcher=tickets.pop if tickets else None,
            session_ticket_handler=tickets.add if tickets else None,
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new streams, let in-flight ones finish (within `timeout`), then close
        every connection with H3_NO_ERROR and stop listening."""
        self.closing = True
        deadline = time.monotonic() + timeout
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close(error_code=H3_NO_ERROR, reason_phrase="shutting down")
        await asyncio.sleep(0)  # let the CONNECTION_CLOSE frames leave
        if self._server is not None:
            self._server.close()


class _CountingTransport:
    """The server's datagram transport as one connection sees it: it counts the bytes
    that connection sent, which is how its writers know their backlog drains."""

    def __init__(self, transport: asyncio.DatagramTransport, conn: H3Protocol) -> None:
        self._transport = transport
        self._conn = conn

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self._transport.sendto(data, addr)
        self._conn.sent(len(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        pass  # shared by every connection: the listener closes it


class H3Protocol(QuicConnectionProtocol):
    """One QUIC connection carrying HTTP/3."""

    def __init__(
        self, quic: QuicConnection, *args: Any, server: Http3Listener, **kwargs: Any
    ) -> None:
        super().__init__(quic, *args, **kwargs)
        # The connection aioquic's `serve` made for this protocol, kept from the
        # constructor's public argument rather than read back from the base class.
        self.quic = quic
        self.server = server
        self.guard = server.listener.guard
        self.loop = asyncio.get_running_loop()
        self.h3: H3Connection | None = None
        self.client = ""
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self._counted = False
        self._handshake_done = False
        self._queued = 0  # body bytes handed to QUIC
        self._sent = 0  # bytes that left in datagrams
        self._last_sent = 0.0  # when the last datagram left (loop time)
        self._drainers: list[asyncio.Future[None]] = []
        # QPACK bombs (edge.rfc.qpack): the peer's encoder stream, and a gate per
        # request stream that weighs each HEADERS frame before aioquic decodes it.
        self._table = qpack.EncoderStream(QPACK_TABLE_CAPACITY)
        self._gates: dict[int, tuple[qpack.RequestGate, bool]] = {}  # gate, FIN held
        self._refused: set[int] = set()  # streams whose bytes are no longer read
        self._uni: dict[int, bytearray | int] = {}  # client stream -> type (or its bytes)
        limit = server.max_header_bytes
        self._max_frame = limit + 1024
        self._max_decoded = 4 * limit
        server.connections.add(self)

    @property
    def busy(self) -> bool:
        """Streams being answered, or their last bytes still leaving: the backlog not
        yet sent, or datagrams sent within the last QUIET seconds (acknowledgements
        and retransmissions of the ends of bodies)."""
        return (
            bool(self.streams)
            or self._queued > self._sent
            or self.loop.time() - self._last_sent < QUIET
        )

    # -- QUIC ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_CountingTransport(transport, self))  # type: ignore[arg-type]

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.client and isinstance(addr, tuple):
            self.client = str(addr[0])
        super().datagram_received(data, addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and self.h3 is None:
            self.h3 = H3Connection(self.quic)
        elif isinstance(event, HandshakeCompleted):
            self._handshake_done = True
            self._count()
        elif isinstance(event, StreamReset):
            self._gates.pop(event.stream_id, None)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.gone(ConnectionResetError("the client cancelled the request"))
        elif isinstance(event, ConnectionTerminated):
            self._terminated()
        if isinstance(event, StreamDataReceived) and self.h3 is not None:
            self._stream_data(event)
            return
        self._to_h3(event)

    def _to_h3(self, event: QuicEvent) -> None:
        if self.h3 is not None and not self.closed:
            for http_event in self.h3.handle_event(event):
                self._http_event(http_event)

    # -- QPACK bombs (edge.rfc.qpack) ------------------------------------------------------

    def _stream_data(self, event: StreamDataReceived) -> None:
        """Stream bytes on their way to aioquic's HTTP/3 layer: the peer's encoder
        stream is followed, request streams pass through their gates."""
        sid = event.stream_id
        if sid in self._refused:
            return
        if sid % 4 == 2:  # client-initiated unidirectional (RFC 9000 Section 2.1)
            self._to_h3(event)
            if self._uni_data(sid, event.data):
                self._reweigh()
            return
        if sid % 4 != 0:
            self._to_h3(event)
            return
        gate, fin = self._gates.get(sid) or (
            qpack.RequestGate(
                self._table, max_frame=self._max_frame, max_decoded=self._max_decoded
            ),
            False,
        )
        self._release(sid, gate, event.data, fin or event.end_stream)

    def _release(self, sid: int, gate: qpack.RequestGate, data: bytes, fin: bool) -> None:
        passed = gate.feed(data)
        if isinstance(passed, qpack.Refuse):
            self._gates.pop(sid, None)
            self._refused.add(sid)
            log.debug("refused an HTTP/3 request from %s: %s", self.client, passed.reason)
            stream = self.streams.get(sid)
            if stream is None:
                self._refuse(sid, passed.status, passed.reason)
            else:  # trailers: the answer may have begun; the stream ends here
                stream.gone(ConnectionResetError(passed.reason))
                with contextlib.suppress(Exception):
                    self.quic.stop_stream(sid, H3_EXCESSIVE_LOAD)
                    self.quic.reset_stream(sid, H3_EXCESSIVE_LOAD)
                self.transmit()
            return
        whole = fin and not gate.holding
        if whole:
            self._gates.pop(sid, None)
        else:
            self._gates[sid] = (gate, fin)
        if passed or whole:
            self._to_h3(StreamDataReceived(data=passed, end_stream=whole, stream_id=sid))

    def _uni_data(self, sid: int, data: bytes) -> bool:
        """Follow the client's QPACK encoder stream; True when it brought inserts."""
        kind = self._uni.get(sid)
        if isinstance(kind, int):
            if kind != QPACK_ENCODER_STREAM:
                return False
            payload = data
        else:
            buffered = (kind or bytearray()) + data
            read = qpack.varint(buffered, 0)
            if read is None:
                self._uni[sid] = buffered
                return False
            self._uni[sid], at = read
            if read[0] != QPACK_ENCODER_STREAM:
                return False
            payload = bytes(buffered[at:])
        before = self._table.inserted
        try:
            self._table.feed(payload)
        except qpack.QpackError:
            return False  # aioquic's decoder refuses the same bytes and closes
        return self._table.inserted != before

    def _reweigh(self) -> None:
        """Sections held because they named inserts not yet seen: weighed again."""
        for sid, (gate, fin) in list(self._gates.items()):
            if gate.holding:
                self._release(sid, gate, b"", fin)

    def _count(self) -> None:
        """The guard's per-client connection limit, once the handshake has shown the
        address is the client's (a spoofed one never completes it)."""
        guard = self.guard
        if not guard.max_per_client or forwarding.is_trusted(self.client, guard.exempt):
            return
        if guard.open[self.client] >= guard.max_per_client:
            if guard.metrics is not None:
                guard.metrics.connections_refused.labels(guard.node).inc()
            self.close(error_code=H3_EXCESSIVE_LOAD, reason_phrase="too many connections")
            return
        guard.open[self.client] += 1
        self._counted = True

    def _terminated(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.connections.discard(self)
        if self._counted:
            self._counted = False
            open_ = self.guard.open
            open_[self.client] -= 1
            if open_[self.client] <= 0:
                del open_[self.client]
        gone = ConnectionResetError("client went away")
        for stream in list(self.streams.values()):
            stream.gone(gone)
        self._wake(gone)

    # -- back-pressure ------------------------------------------------------------------

    def sent(self, count: int) -> None:
        self._sent += count
        self._last_sent = self.loop.time()
        if self._drainers and self._queued - self._sent < SEND_HIGH_WATER // 2:
            self._wake(None)

    def _wake(self, error: BaseException | None) -> None:
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    async def drain(self, queued: int) -> None:
        """Count `queued` more bytes handed to QUIC, send what can go, and wait while
        the unsent backlog is above SEND_HIGH_WATER; a connection that sends nothing
        for its idle timeout meanwhile is given up on."""
        self._queued += queued
        self.transmit()
        while not self.closed and self._queued - self._sent > SEND_HIGH_WATER:
            before = self._sent
            waiter = self.loop.create_future()
            self._drainers.append(waiter)
            try:
                await asyncio.wait_for(waiter, self.server.quic.idle_timeout)
            except TimeoutError:
                if self._sent == before:
                    raise ConnectionResetError("the client stopped reading") from None
        if self.closed:
            raise ConnectionResetError("client went away")

    # -- HTTP/3 -------------------------------------------------------------------------

    def _http_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._request(event)
            elif event.stream_ended:
                stream.body.finish()  # trailers: RFC 9110 Section 6.5.1 lets them go
        elif isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body.feed(event.data)
                if event.stream_ended:
                    stream.body.finish()

    def _request(self, event: HeadersReceived) -> None:
        sid = event.stream_id
        listener = self.server.listener
        if self.server.closing:
            # RFC 9114 Section 4.1.1: rejected before any processing; safe to retry.
            self.quic.reset_stream(sid, H3_REQUEST_REJECTED)
            self.transmit()
            return
        head = pseudo.read_request(
            event.headers, scheme="https", max_fields=listener.limits.max_headers
        )
        if isinstance(head, pseudo.Malformed):
            log.debug("refused an HTTP/3 request from %s: %s", self.client, head.reason)
            self._refuse(sid, head.status, head.reason, event.stream_ended)
            return
        early = self.server.early_data and not self._handshake_done
        if early and head.method not in SAFE_METHODS:
            self._refuse(sid, 425, "sent in 0-RTT early data: retry after the handshake")
            return
        fields = head.fields
        if early:
            # RFC 8470 Section 5.1: tell the origin this request may be replayed.
            fields = (*fields, (b"early-data", b"1"))
        headers = CIMultiDictProxy(
            CIMultiDict(
                (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for k, v in fields
            )
        )
        body = BodyStream(self, sid, head.content_length, self.server.max_body)
        if event.stream_ended:
            body.finish()
        request = Request(
            method=head.method,
            target=head.target,
            version=(3, 0),
            headers=headers,
            raw=fields,
            authority=head.authority,
            peer=self.client,
            scheme="https",
            body=body,
            has_body=not event.stream_ended and head.content_length != 0,
            content_length=head.content_length,
        )
        stream = _Stream(self, sid, request, body)
        self.streams[sid] = stream
        stream.task = self.loop.create_task(stream.serve())

    def _refuse(self, sid: int, status: int, reason: str, ended: bool = False) -> None:
        """Answer from the connection itself: `status` with its reason, and stop the
        client's side of the stream (RFC 9114 Section 4.1.2: what it sends is
        not read)."""
        assert self.h3 is not None
        body = f"{status} {reason}\n".encode()
        self.h3.send_headers(
            sid,
            [
                (b":status", str(status).encode()),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"date", self.server.listener.date().encode()),
                (b"server", (self.guard.server_header or "edge").encode()),
            ],
        )
        self.h3.send_data(sid, body, end_stream=True)
        if not ended:
            with contextlib.suppress(Exception):
                self.quic.stop_stream(sid, H3_REQUEST_CANCELLED)
        self.guard.refused(status)
        self.transmit()

    def stream_done(self, sid: int) -> None:
        self.streams.pop(sid, None)


class BodyStream(ArrivingBody[bytes]):
    """A request body as DATA frames bring it (exchange.Body), held to the length its
    head declared: more, or less at its end, fails the read with a 400 (RFC 9114
    Section 4.1.2), so the pipeline forwards nothing of it. At most `max_body` bytes
    are kept unread (edge.features.guard.read_body refuses more with a 413)."""

    def __init__(self, conn: H3Protocol, sid: int, length: int | None, max_body: int) -> None:
        super().__init__()
        self._conn = conn
        self._sid = sid
        self._length = length
        self._max = max_body
        self.received = 0

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.received += len(data)
        if self._length is not None and self.received > self._length:
            self.fail(_framing("more DATA than its Content-Length"))
            return
        if self.received > self._max + 1:
            self.fail(Refused(Refusal(413, "request body too large", close=True)))
            return
        self._put(data)

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        if error is None and self._length is not None and self.received != self._length:
            error = _framing("less DATA than its Content-Length")
        if error is not None:
            self.fail(error)
            return
        super().finish()

    def fail(self, error: BaseException) -> None:
        self._chunks.clear()
        super().finish(error)

    async def readany(self) -> bytes:
        data = await self._next()
        return b"" if data is None else data


def _framing(reason: str) -> Refused:
    return Refused(Refusal(400, f"request body framing: {reason}", close=True))


class _Stream:
    """One request stream: its request, its body, and the task that serves it."""

    __slots__ = ("body", "channel", "conn", "request", "sid", "task")

    def __init__(self, conn: H3Protocol, sid: int, request: Request, body: BodyStream) -> None:
        self.conn = conn
        self.sid = sid
        self.request = request
        self.body = body
        self.channel = H3Channel(conn, sid, request)
        self.task: asyncio.Task[None] | None = None

    def gone(self, error: BaseException) -> None:
        self.body.fail(error)
        self.channel.gone = True

    async def serve(self) -> None:
        channel = self.channel
        try:
            await self.conn.server.listener.handler(self.request, channel)
            if not channel.finished:
                channel.abort()  # the handler ended without completing its answer
        except (ConnectionError, asyncio.CancelledError):
            channel.abort()
        except Exception:
            log.exception("internal error on %s %s", self.request.method, self.request.target)
            channel.abort()
        finally:
            self.conn.stream_done(self.sid)
            if not self.body.done:
                # Answered before its body was read: the rest is not wanted.
                with contextlib.suppress(Exception):
                    self.conn.quic.stop_stream(self.sid, H3_NO_ERROR)
                self.body.fail(ConnectionResetError("answered"))
            self.conn.transmit()


class H3Channel:
    """exchange.Channel for one HTTP/3 request stream."""

    __slots__ = ("_empty", "conn", "finished", "gone", "request", "sid", "started")

    def __init__(self, conn: H3Protocol, sid: int, request: Request) -> None:
        self.conn = conn
        self.sid = sid
        self.request = request
        self.started = False
        self.finished = False
        self.gone = False
        self._empty = False

    def _h3(self) -> H3Connection:
        h3 = self.conn.h3
        if h3 is None or self.conn.closed or self.gone:
            raise ConnectionResetError("client went away")
        return h3

    def _fields(self, response: Response, length: int | None) -> list[tuple[str, str]]:
        head = response_fields(self.conn.server.listener, self.request, response, length)
        self._empty = head.empty
        fields = list(head.headers.items())
        self._h3().send_headers(
            self.sid,
            [
                (b":status", str(response.status).encode()),
                *(
                    (name.lower().encode("latin-1"), value.encode("utf-8", "surrogateescape"))
                    for name, value in fields
                ),
            ],
            end_stream=False,
        )
        self.started = True
        return fields

    async def send_continue(self) -> None:
        if not self.started:
            self._h3().send_headers(self.sid, [(b":status", b"100")])
            self.conn.transmit()

    async def respond(self, response: Response) -> list[tuple[str, str]]:
        fields = self._fields(response, len(response.body))
        body = b"" if self._empty else response.body
        for at in range(0, len(body), CHUNK):
            piece = body[at : at + CHUNK]
            self._h3().send_data(self.sid, piece, end_stream=at + CHUNK >= len(body))
            await self.conn.drain(len(piece))
        if not body:
            self._h3().send_data(self.sid, b"", end_stream=True)
            self.conn.transmit()
        self.finished = True
        return fields

    async def start(self, head: Response) -> list[tuple[str, str]]:
        fields = self._fields(head, head.length)
        self.conn.transmit()
        return fields

    async def write(self, data: bytes) -> None:
        if self._empty or not data:
            return
        view = memoryview(data)
        for at in range(0, len(view), CHUNK):
            piece = bytes(view[at : at + CHUNK])
            self._h3().send_data(self.sid, piece, end_stream=False)
            await self.conn.drain(len(piece))

    async def send_file(self, file: IO[bytes], offset: int, count: int) -> None:
        """A stored file's span in DATA frames of CHUNK bytes, each read as the
        connection's backlog allows: never the whole file at once."""
        if self._empty:
            return
        fd = file.fileno()
        end = offset + count
        while offset < end:
            piece = os.pread(fd, min(CHUNK, end - offset), offset)
            if not piece:
                raise ConnectionResetError("the stored file ended early")
            self._h3().send_data(self.sid, piece, end_stream=False)
            offset += len(piece)
            await self.conn.drain(len(piece))

    async def send_interim(self, status: int, fields: Sequence[tuple[str, str]]) -> None:
        """A 1xx before the final head: a HEADERS frame on the request stream, not its
        end (RFC 9114 Section 4.1)."""
        if self.started:
            return
        block = [(k.lower().encode("latin-1", "replace"), v.encode()) for k, v in fields]
        self._h3().send_headers(self.sid, [(b":status", str(status).encode()), *block])
        self.conn.transmit()

    async def end(self, trailers: Sequence[tuple[str, str]] = ()) -> None:
        """The body is complete; `trailers` leave in a HEADERS frame after the data
        (RFC 9114 Section 4.1), which ends the stream."""
        if not self.finished:
            if trailers and not self._empty:
                block = [(k.lower().encode("latin-1", "replace"), v.encode()) for k, v in trailers]
                self._h3().send_headers(self.sid, block, end_stream=True)
            else:
                self._h3().send_data(self.sid, b"", end_stream=True)
            self.conn.transmit()
        self.finished = True

    def abort(self) -> None:
        """RFC 9114 Section 4.1.1: a response cut short is a reset stream, which the
        client cannot mistake for a whole one."""
        self.finished = True
        if self.conn.closed:
            return
        with contextlib.suppress(Exception):
            self.conn.quic.reset_stream(self.sid, H3_INTERNAL_ERROR)
        self.conn.transmit()
