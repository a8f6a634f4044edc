"""edge's HTTP/2 server connection (RFC 9113): an asyncio.Protocol on the sans-I/O `h2`
library, for the public listener over TLS (ALPN "h2") and, when `http2` is on, over
cleartext with prior knowledge (edge.server.http1 hands a connection over when its first
bytes are the connection preface).

Owns what is HTTP/2's own: the server settings, streams multiplexed onto the handler (one
task per stream, each request an edge.pipeline.exchange.Request with a Channel of its
stream), flow control both ways (a request body's window opens as the handler reads it;
a response waits for WINDOW_UPDATE and reads a stored file in spans no larger than the
window allows), the graceful GOAWAY on shutdown, and the bounds that make abuse cost the
client more than the node: resets, SETTINGS, PING, PRIORITY and empty DATA frames each
draw on a per-connection budget (`Budget`) whose exhaustion ends the connection with
GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487, among them); streams still being
served, reset ones included, are bounded (REFUSED_STREAM beyond); a stream whose client
accepts no more for `send_timeout` is reset. A malformed header block (edge.rfc.pseudo:
pseudo-fields, connection-specific fields, uppercase names, CR/LF/NUL, Host against
:authority) resets its stream with PROTOCOL_ERROR; `h2` itself refuses a Content-Length
against DATA, CONTINUATION floods and header lists over the advertised size, each as a
connection error (RFC 9113 Section 5.4.1 lets a stream error be treated as one).

Like edge.server.http1 it decides nothing about caching, routing or the guard's
per-request rules (the handler's); it keeps the guard's per-connection ones: a client's
streams count against max_connections_per_client as HTTP/1.1 connections do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from multidict import CIMultiDict, CIMultiDictProxy

from edge.observe.accesslog import request_line
from edge.pipeline import fastpath
from edge.pipeline.exchange import ArrivingBody, Request, Response
from edge.rfc import forwarding, pseudo
from edge.server.http1 import Listener, local_of, response_fields

log = logging.getLogger("edge.server.http2")

#: Server settings (RFC 9113 Section 6.5.2): what nginx and h2o offer, near enough.
MAX_STREAMS = 100
STREAM_WINDOW = 1 << 20  # a request body in flight per stream
CONNECTION_WINDOW = 16 << 20  # all streams' bodies together (WINDOW_UPDATE on stream 0)
#: The most of a response a stream writes before letting the others write theirs.
_SLICE = 64 << 10


class Budget:
    """A token bucket for one kind of frame on one connection: `burst` at once, then
    `rate` a second. `take()` is False once the client has spent more than that.
    `clock` is injected, so the rule is tested without sleeping."""

    __slots__ = ("_at", "_clock", "_left", "burst", "rate")

    def __init__(self, burst: float, rate: float, clock: Callable[[], float]) -> None:
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._left = burst
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._left = min(self.burst, self._left + (now - self._at) * self.rate)
        self._at = now
        if self._left < 1:
            return False
        self._left -= 1
        return True


@dataclass(frozen=True)
class Budgets:
    """What a connection may send of each kind of frame edge does no work for, as
    (burst, per second). A browser sends a few SETTINGS and PINGs, a PRIORITY per
    stream at most, and resets the streams of a page it leaves; an attacker sends
    thousands a second."""

    resets: tuple[float, float] = (200, 50)  # RST_STREAM, CVE-2023-44487
    settings: tuple[float, float] = (32, 4)
    pings: tuple[float, float] = (32, 4)
    priority: tuple[float, float] = (500, 100)
    empty_data: tuple[float, float] = (64, 16)  # DATA without content nor END_STREAM


@dataclass
class Http2Limits:
    """A listener's HTTP/2 settings and deadlines."""

    max_streams: int = MAX_STREAMS
    stream_window: int = STREAM_WINDOW
    connection_window: int = CONNECTION_WINDOW
    #: Seconds a stream waits for the client to take more of its response (a zero
    #: window, a full socket) before it is reset.
    send_timeout: float = 30.0
    #: SETTINGS_MAX_HEADER_LIST_SIZE: the guard's max_header_bytes.
    max_header_list: int = 32 << 10
    budgets: Budgets = field(default_factory=Budgets)


class _Body(ArrivingBody[tuple[bytes, int]]):
    """A stream's request body (exchange.Body): what DATA frames brought, with the
    stream's window given back as the handler reads, so a client sends no faster
    than the body is taken."""

    def __init__(self, conn: Http2Connection, stream_id: int) -> None:
        super().__init__()
        self._conn = conn
        self._id = stream_id

    def feed(self, data: bytes, flow: int) -> None:
        self._put((data, flow))

    def unread(self) -> int:
        """Drop what was not read; returns its flow-controlled length."""
        flow = sum(f for _, f in self._chunks)
        self._chunks.clear()
        return flow

    async def readany(self) -> bytes:
        piece = await self._next()
        if piece is None:
            return b""
        data, flow = piece
        self._conn.consumed(self._id, flow)
        return data


class _Stream:
    __slots__ = ("body", "channel", "id", "request", "reset", "window")

    def __init__(self, stream_id: int, body: _Body) -> None:
        self.id = stream_id
        self.body = body
        self.request: Request | None = None
        self.channel: Http2Channel | None = None
        self.reset = False  # by either side: writes fail
        self.window: asyncio.Future[None] | None = None


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 client connection (see the module's head)."""

    def __init__(self, listener: Listener, limits: Http2Limits | None = None) -> None:
        self.listener = listener
        self.guard = listener.guard
        self.limits = limits or Http2Limits()
        self.loop = asyncio.get_running_loop()
        # Header blocks are checked by edge.rfc.pseudo, so a malformed request is the
        # stream error RFC 9113 Section 8.1.1 asks for; h2's own checks end the connection.
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.scheme = "http"
        self.closed = False
        self._counted = 0  # places held in guard.open for this client
        self._streams: dict[int, _Stream] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}  # streams still being served
        self._write_paused = False
        self._flushing = False  # a write of h2's queued frames is scheduled
        self._drain: asyncio.Future[None] | None = None
        self._goaway_at: int | None = None  # last stream served after a graceful GOAWAY
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0  # loop time of the last request or stream end
        clock = time.monotonic
        b = self.limits.budgets
        self._resets = Budget(*b.resets, clock)
        self._settings = Budget(*b.settings, clock)
        self._pings = Budget(*b.pings, clock)
        self._priority = Budget(*b.priority, clock)
        self._empty = Budget(*b.empty_data, clock)
        engine = self.guard.engine
        # Whether hot hits are answered here (edge.pipeline.fastpath): the public listener's.
        self._hot = listener.hot and engine is not None and engine.hot is not None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) and peer else ""
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        if not self._hold(1):
            guard = self.guard
            if guard.metrics is not None:
                guard.metrics.connections_refused.labels(guard.node).inc()
            self.closed = True
            transport.abort()
            return
        self.listener.connections.add(self)
        limits = self.limits
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list,
                SettingCodes.ENABLE_PUSH: 0,
            }
        )
        # The connection's own window (65535 at first) opens by WINDOW_UPDATE alone.
        self.h2.increment_flow_control_window(limits.connection_window - 65535)
        self._write_out()
        self._idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.listener.connections.discard(self)
        self._release(self._counted)
        gone = ConnectionResetError("client went away")
        for stream in self._streams.values():
            stream.reset = True
            stream.body.finish(gone)
            self._wake(stream)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(gone)
        # Handlers are not cancelled (as on HTTP/1.1): a fill carries on for others.

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the error's code.
            log.debug("HTTP/2 connection error from %s: %s", self.client, exc)
            self.guard.refused(400)
            self._flush()
            self._close()
            return
        for event in events:
            if self.closed:
                return
            self._event(event)
        self._flush()

    def eof_received(self) -> bool | None:
        return None  # the client is done: close

    # -- events ---------------------------------------------------------------------------

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.body.finish()
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_opened(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self._settings.take():
                self._calm("SETTINGS flood")
            elif SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._window_opened(0)
        elif isinstance(event, h2.events.StreamReset):
            self._stream_reset(event.stream_id)
            if not self._resets.take():
                self._calm("stream reset flood")
        elif isinstance(event, h2.events.PingReceived):
            if not self._pings.take():
                self._calm("PING flood")
        elif isinstance(event, h2.events.PriorityUpdated):
            if not self._priority.take():
                self._calm("PRIORITY flood")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()
        elif isinstance(event, h2.events.TrailersReceived):
            # RFC 9110 Section 6.5.1: trailer fields may be discarded; none is forwarded
            # (the upstream request is framed anew, with its body whole).
            stream = self._streams.get(event.stream_id)
            reason = pseudo.trailers_malformed(event.headers or ())
            if reason is not None:
                if stream is not None:
                    stream.body.finish(ConnectionResetError(f"malformed trailers: {reason}"))
                self._malformed(event.stream_id, reason)
            elif stream is not None and event.stream_ended:
                stream.body.finish()

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self._goaway_at is not None and sid > self._goaway_at:
            self._refuse_stream(sid)  # sent after the GOAWAY: not served, retry elsewhere
            return
        head = pseudo.read_request(
            event.headers or (), scheme=self.scheme, max_fields=self.listener.limits.max_headers
        )
        if isinstance(head, pseudo.Malformed):
            self._malformed(sid, head.reason)
            return
        if self._hot and event.stream_ended and self._serve_hot(sid, head):
            return
        # Streams still being served, those the client reset included: a client that
        # resets and reopens streams cannot make the node serve more than this at once.
        if len(self._tasks) >= self.limits.max_streams or not self._hold(len(self._tasks) + 1):
            self._refuse_stream(sid)
            return
        stream = _Stream(sid, _Body(self, sid))
        self._streams[sid] = stream
        request = self._make_request(stream, head, ended=event.stream_ended)
        if event.stream_ended:
            stream.body.finish()
        stream.request = request
        stream.channel = Http2Channel(self, stream)
        self._tasks[sid] = self.loop.create_task(self._serve(stream))

    def _serve_hot(self, sid: int, head: pseudo.Head) -> bool:
        """A hot hit (edge.pipeline.fastpath) answered from the header block itself, as
        edge.server.http1 answers one from the parsed head: no Request, no task. The
        hot head is HTTP/1.1's; its fields are sent as they are, names lower-cased."""
        if head.method != "GET":
            return False
        target, raw = head.target, list(head.fields)
        key = fastpath.request_key("GET", (2, 0), target, raw)
        if key is None or sum(len(k) + len(v) + 4 for k, v in raw) > self.limits.max_header_list:
            return False
        at = local_of(self.transport) if self.transport is not None else ""
        found = self.guard.hot_answer(
            self.client, key, (target, at, (2, 0)), False, tuple(raw), None
        )
        if found is None:
            return False
        (hot, data), _ = found
        body = hot.body
        h2conn = self.h2
        if len(body) > h2conn.local_flow_control_window(sid):
            return False  # it would wait for the window: the general way does
        lines = data[: len(data) - len(body)].split(b"\r\n")
        block = [(b":status", b"200")]
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b": ")
                block.append((name.lower(), value))
        # These fields went out through h2's checks when the general path sent them:
        # not checked again (a quarter of a hot hit's time).
        config = h2conn.config
        config.validate_outbound_headers = config.normalize_outbound_headers = False
        try:
            h2conn.send_headers(sid, block, end_stream=not body)
        finally:
            config.validate_outbound_headers = config.normalize_outbound_headers = True
        size = h2conn.max_outbound_frame_size
        for at in range(0, len(body), size):
            h2conn.send_data(sid, body[at : at + size], end_stream=at + size >= len(body))
        self._flush()
        self._idle_since = self.loop.time()
        engine = self.guard.engine
        engine.metrics.fast_hits += 1
        engine.metrics.fast_bytes += len(body)
        if engine.access.enabled:
            engine.access.line(
                request_line(
                    self.client,
                    "GET",
                    target,
                    200,
                    "hit",
                    len(body),
                    0,
                    None,
                    "fast",
                    protocol="HTTP/2.0",
                )
            )
        return True

    def _make_request(self, stream: _Stream, head: pseudo.Head, *, ended: bool) -> Request:
        """The exchange's Request from a well-formed header block (edge.rfc.pseudo):
        :authority is the Host, first, as HTTP/1.1 would have carried it, so the key
        has one authority."""
        fields = CIMultiDictProxy(
            CIMultiDict(
                (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for k, v in head.fields
            )
        )
        return Request(
            method=head.method,
            target=head.target,
            version=(2, 0),
            headers=fields,
            raw=head.fields,
            authority=head.authority,
            peer=self.client,
            scheme=self.scheme,
            body=stream.body,
            has_body=not ended,
            content_length=head.content_length,
        )

    def _data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        flow = event.flow_controlled_length or 0
        if not event.data and not event.stream_ended and not self._empty.take():
            self._calm("empty DATA flood")
            return
        stream = self._streams.get(sid)
        if stream is None or stream.reset or stream.body.done:
            # Nobody reads it: the connection's window is given back now.
            self.consumed(sid, flow)
            return
        if event.data:
            stream.body.feed(event.data, flow)
        elif flow:
            self.consumed(sid, flow)
        if event.stream_ended:
            stream.body.finish()

    def consumed(self, stream_id: int, flow: int) -> None:
        """Give back a window for bytes the handler took (both the stream's and the
        connection's; the stream's only while it can still send)."""
        if flow <= 0 or self.closed:
            return
        try:
            self.h2.acknowledge_received_data(flow, stream_id)
        except (h2.exceptions.ProtocolError, ValueError):
            # The stream is gone: the connection's window alone.
            with contextlib.suppress(h2.exceptions.ProtocolError, ValueError):
                self.h2.increment_flow_control_window(flow)
        self._flush()

    def _stream_reset(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.reset = True
        stream.body.finish(ConnectionResetError("stream reset by the client"))
        self.consumed(stream.id, stream.body.unread())
        self._wake(stream)

    # -- serving --------------------------------------------------------------------------

    async def _serve(self, stream: _Stream) -> None:
        channel, request = stream.channel, stream.request
        assert channel is not None and request is not None
        try:
            await self.listener.handler(request, channel)
            if not channel.finished and not stream.reset:
                channel.abort()  # the handler ended without completing its answer
        except (ConnectionError, asyncio.CancelledError):
            channel.abort()
        except Exception:
            log.exception("internal error on %s %s", request.method, request.target)
            channel.abort()
        finally:
            self._tasks.pop(stream.id, None)
            self._streams.pop(stream.id, None)
            if not stream.body.done:
                # RFC 9113 Section 8.1: answered before the request ended: the rest
                # is not wanted.
                stream.body.finish()
                self._reset(stream, ErrorCodes.NO_ERROR)
            self.consumed(stream.id, stream.body.unread())
            self._release(self._counted - max(1, len(self._tasks)))
            self._flush()
            if not self._tasks:
                if self._goaway_at is not None:
                    self._close()
                else:
                    self._idle()

    async def send(self, stream: _Stream, data: bytes | memoryview, end: bool) -> None:
        """DATA frames for `data`, as the flow-control windows (the stream's and the
        connection's) and the client's frame size allow, waiting for WINDOW_UPDATE."""
        view = memoryview(data)
        while True:
            self._check(stream)
            if not view:
                if end:
                    self._send_data(stream, b"", True)
                return
            window = min(self.h2.local_flow_control_window(stream.id), len(view), _SLICE)
            if window <= 0:
                await self._wait_window(stream)
                continue
            # Up to a slice in frames of the client's size, then the other streams' turn.
            size = self.h2.max_outbound_frame_size
            ends = end and window == len(view)
            for at in range(0, window, size):
                chunk = view[at : min(at + size, window)]
                self._send_data(stream, chunk.tobytes(), ends and at + size >= window)
            view = view[window:]
            await self.drain(stream)
            if not view:
                return

    def _send_data(self, stream: _Stream, data: bytes, end: bool) -> None:
        try:
            self.h2.send_data(stream.id, data, end_stream=end)
        except h2.exceptions.ProtocolError as exc:  # the stream was closed meanwhile
            self._reset(stream, ErrorCodes.INTERNAL_ERROR)
            raise ConnectionResetError("stream closed") from exc
        self._flush()

    def window(self, stream: _Stream) -> int:
        return min(self.h2.local_flow_control_window(stream.id), _SLICE)

    async def _wait_window(self, stream: _Stream) -> None:
        """Wait until the client opens a window (a zero-window reader is reset after
        send_timeout: it holds a stream and the node's memory otherwise)."""
        stream.window = self.loop.create_future()
        try:
            await asyncio.wait_for(stream.window, self.limits.send_timeout)
        except TimeoutError:
            self._reset(stream, ErrorCodes.CANCEL)
            raise ConnectionResetError("the client took nothing in send_timeout") from None
        finally:
            stream.window = None

    async def drain(self, stream: _Stream) -> None:
        if self.closed:
            raise ConnectionResetError("client went away")
        if not self._write_paused:
            # Let the other streams write their turn.
            await asyncio.sleep(0)
            return
        if self._drain is None:
            self._drain = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._drain), self.limits.send_timeout)
        except TimeoutError:
            self._reset(stream, ErrorCodes.CANCEL)
            raise ConnectionResetError("the client took nothing in send_timeout") from None
        finally:
            if self._drain is not None and self._drain.done():
                self._drain = None

    def _window_opened(self, stream_id: int) -> None:
        streams = self._streams.values() if stream_id == 0 else (self._streams.get(stream_id),)
        for stream in streams:
            if stream is not None:
                self._wake(stream)

    @staticmethod
    def _wake(stream: _Stream) -> None:
        if stream.window is not None and not stream.window.done():
            stream.window.set_result(None)

    def _check(self, stream: _Stream) -> None:
        if self.closed or stream.reset:
            raise ConnectionResetError("client went away")

    # -- refusals, resets, closing -----------------------------------------------------

    def _malformed(self, stream_id: int, reason: str) -> None:
        """RFC 9113 Section 8.1.1: a malformed request is a stream error, PROTOCOL_ERROR;
        nothing of it is served or forwarded."""
        log.debug("malformed HTTP/2 request from %s: %s", self.client, reason)
        self.guard.refused(400)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._reset(stream, ErrorCodes.PROTOCOL_ERROR)
        else:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _refuse_stream(self, stream_id: int) -> None:
        """RFC 9113 Section 8.7: REFUSED_STREAM: nothing was done, the client may retry."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)

    def _reset(self, stream: _Stream, code: ErrorCodes) -> None:
        if stream.reset or self.closed:
            return
        stream.reset = True
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.h2.reset_stream(stream.id, code)
        self._flush()

    def _calm(self, what: str) -> None:
        """A flood: GOAWAY ENHANCE_YOUR_CALM, then close."""
        log.warning("HTTP/2 %s from %s: closing the connection", what, self.client)
        self.guard.refused(429)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._flush()
        self._close()

    def _flush(self) -> None:
        """Write what h2 has queued once the loop has run what is ready now: the
        frames of many streams (a head and its DATA, a turn's answers) leave in one
        write rather than one each."""
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flushing = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        self._write_out()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful (RFC 9113 Section 6.8): GOAWAY naming the last stream that will be
        served, those streams finished, then the connection closed. The GOAWAY goes
        out as a frame of its own: h2 sends nothing more once it has sent one."""
        if self.closed or self._goaway_at is not None:
            return
        self._goaway_at = self.h2.highest_inbound_stream_id
        frame = GoAwayFrame(0, last_stream_id=self._goaway_at, error_code=ErrorCodes.NO_ERROR)
        assert self.transport is not None
        self._write_out()
        self.transport.write(frame.serialize())
        if not self._tasks:
            self._goodbye()

    def _goodbye(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=self._goaway_at)
        self._flush()
        self._close()

    # -- the guard's per-client count and the idle deadline -------------------------

    def _hold(self, want: int) -> bool:
        """Hold `want` places for this client in the guard's count of its connections
        (a stream counts as a connection does on HTTP/1.1); False when the client
        would pass max_connections_per_client."""
        guard = self.guard
        if not guard.max_per_client or forwarding.is_trusted(self.client, guard.exempt):
            return True
        more = want - self._counted
        if more <= 0:
            return True
        if guard.open[self.client] + more > guard.max_per_client:
            return False
        guard.open[self.client] += more
        self._counted += more
        return True

    def _release(self, fewer: int) -> None:
        if fewer <= 0 or not self._counted:
            return
        fewer = min(fewer, self._counted)
        self._counted -= fewer
        open_ = self.guard.open
        open_[self.client] -= fewer
        if open_[self.client] <= 0:
            del open_[self.client]

    def _idle(self) -> None:
        """No stream being served: the connection closes (GOAWAY) after
        keepalive_timeout without a request. One timer per connection, moved on
        lazily: a hot hit (answered without a task) only notes the time."""
        if self.closed:
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(
                self._idle_since + self.listener.limits.keepalive_timeout, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.closed or self._tasks:
            return  # busy: the last stream to finish starts the wait again
        due = self._idle_since + self.listener.limits.keepalive_timeout
        if self.loop.time() < due:
            self._idle_timer = self.loop.call_at(due, self._idle_check)
        else:
            self._goaway_at = self.h2.highest_inbound_stream_id
            self._goodbye()


class Http2Channel:
    """exchange.Channel for one stream."""

    __slots__ = ("_empty", "conn", "finished", "started", "stream")

    def __init__(self, conn: Http2Connection, stream: _Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.started = False
        self.finished = False
        self._empty = False

    def _head(self, response: Response, length: int | None) -> list[tuple[str, str]]:
        """The fields as written: HTTP/1.1's rule (edge.server.http1.response_fields:
        the listener's finisher, framing, Content-Type's default, Date and Server),
        less what is a connection's own."""
        request = self.stream.request
        assert request is not None
        head = response_fields(self.conn.listener, request, response, length)
        self._empty = head.empty
        return list(head.headers.items())

    def _send_head(self, fields: list[tuple[str, str]], status: int, end: bool) -> None:
        conn = self.conn
        conn._check(self.stream)
        block = [(b":status", str(status).encode())]
        block += [
            (k.lower().encode("latin-1", "replace"), v.encode("utf-8", "surrogateescape"))
            for k, v in fields
        ]
        self.started = True
        try:
            conn.h2.send_headers(self.stream.id, block, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            # The stream was closed meanwhile, or a field h2 will not send: either
            # way the client is told this stream ends here.
            log.debug("HTTP/2 head not sent on stream %d: %s", self.stream.id, exc)
            conn._reset(self.stream, ErrorCodes.INTERNAL_ERROR)
            raise ConnectionResetError("stream closed") from exc
        conn._flush()

    async def send_continue(self) -> None:
        if not self.started:
            self.conn._check(self.stream)
            self.conn.h2.send_headers(self.stream.id, [(b":status", b"100")])
            self.conn._flush()

    async def respond(self, response: Response) -> list[tuple[str, str]]:
        fields = self._head(response, len(response.body))
        body = b"" if self._empty else response.body
        self._send_head(fields, response.status, end=not body)
        if body:
            await self.conn.send(self.stream, body, end=True)
        self.finished = True
        return fields

    async def start(self, head: Response) -> list[tuple[str, str]]:
        fields = self._head(head, head.length)
        self._send_head(fields, head.status, end=self._empty)
        if self._empty:
            self.finished = True
        return fields

    async def write(self, data: bytes) -> None:
        if self._empty or not data or self.finished:
            return
        await self.conn.send(self.stream, data, end=False)

    async def send_file(self, file: IO[bytes], offset: int, count: int) -> None:
        """Spans of the file no larger than the window allows are read and sent: a
        stored file is never read whole, and a slow client costs one span of memory."""
        if self._empty or self.finished:
            return
        conn, stream = self.conn, self.stream
        fd = file.fileno()
        end = offset + count
        while offset < end:
            conn._check(stream)
            window = conn.window(stream)
            if window <= 0:
                await conn._wait_window(stream)
                continue
            data = os.pread(fd, min(window, end - offset), offset)
            if not data:
                raise EOFError("the stored body is shorter than its entry says")
            await conn.send(stream, data, end=False)
            offset += len(data)

    async def send_interim(self, status: int, fields: Sequence[tuple[str, str]]) -> None:
        """A 1xx before the final head: a HEADERS frame without END_STREAM (RFC 9113
        Section 8.1)."""
        if self.started:
            return
        conn = self.conn
        conn._check(self.stream)
        conn.h2.send_headers(self.stream.id, _block(status, fields), end_stream=False)
        conn._flush()

    async def end(self, trailers: Sequence[tuple[str, str]] = ()) -> None:
        """The body is complete; `trailers` leave in a HEADERS frame after the data
        (RFC 9113 Section 8.1), which ends the stream."""
        if not self.finished:
            conn, stream = self.conn, self.stream
            if trailers and not self._empty:
                conn._check(stream)
                block = [(k.lower().encode("latin-1", "replace"), v.encode()) for k, v in trailers]
                conn.h2.send_headers(stream.id, block, end_stream=True)
                conn._flush()
            else:
                await conn.send(stream, b"", end=True)
        self.finished = True

    def abort(self) -> None:
        self.conn._reset(self.stream, ErrorCodes.INTERNAL_ERROR)


def _block(status: int, fields: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """A response's header block: :status, then the fields, names lower-cased."""
    return [
        (b":status", str(status).encode()),
        *(
            (k.lower().encode("latin-1", "replace"), v.encode("utf-8", "surrogateescape"))
            for k, v in fields
        ),
    ]
