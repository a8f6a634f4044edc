"""edge's own HTTP/1.1 client for the upstream side: keep-alive pools of connections
to one server each, responses parsed by llhttp (through httptools).

It owns one rule above all: a connection is reused only when it is known clean
(RFC 9112 Section 9.3). A response ends exactly where its framing says; anything else
the server sends ends the connection instead of becoming the next user's response:
- bytes after the end of a response, in the same read or later while the connection
  is idle in its pool;
- a body after an answer that has none (HEAD, 1xx, 204, 304: RFC 9112 Section 6.3);
- a response whose length is only known by the server closing (it is read to the end,
  never pooled), and any response that says `Connection: close`;
- a `101 Switching Protocols` nobody asked for (edge never forwards Upgrade): an
  error, never relayed;
- a parse error, a broken read, or a response abandoned before its end.
Interim responses (100, 102, 103) are handed, status and fields, to whoever asked for
them (`interim`), then read past: the final answer follows. A body given as `Deferred`
is asked for with `Expect: 100-continue` (RFC 9110 Section 10.1.1): it is fetched and
sent once the server says 100 (or has said nothing for `CONTINUE_WAIT` seconds), and
never if the server answers finally first (that connection is then never reused). The
trailer fields of a chunked body are kept apart (`Response.trailers`), never merged into
the head. Bodies are handed on as they arrive; reading from the socket pauses while too
much is waiting for the reader. A reader that puts the body in a file (`read_into`) has
a body of known length on plain TCP spliced there from the socket (splice(2) through a
pipe): the kernel moves the bytes, and none of them passes through this process.

It knows nothing of pools of members, health or retries across members (edge.upstream.pools)
nor of caching (edge.pipeline.transaction).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict

from edge.rfc import policy

#: Reading from a connection pauses while this much body waits for the reader.
_HIGH_WATER = 1 << 20
_LOW_WATER = 256 << 10

#: What one splice moves at most: the pipe between a connection and a file is made
#: this big where the system allows (Linux's default pipe-max-size), so a large body
#: moves in 1 MiB steps, each one wake of its reader.
_SPLICE_PIPE = 1 << 20
_SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")

#: RFC 9110 Section 9.2.2: requests that may be sent again (here, on a fresh connection
#: when a reused one turns out closed before any byte of the answer; edge.upstream.pools, on
#: another member).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_BREAKS = re.compile(r"[\r\n\x00]")

#: How long a request with `Expect: 100-continue` waits for the server's 100 before
#: sending its body anyway (a server may not know the expectation: RFC 9110 Section
#: 10.1.1); curl's default.
CONTINUE_WAIT = 1.0

#: Methods that carry a body by definition: an empty one is sent as Content-Length: 0
#: (RFC 9110 Section 8.6).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


#: Told of each interim response as it arrives: its status and fields (RFC 9110
#: Section 15.2). Called from the parser: it must not block or raise.
InterimSink = Callable[[int, CIMultiDict[str]], None]


@dataclass(frozen=True)
class Deferred:
    """A request body of `length` bytes not read yet: `supply()` reads it (and is
    called at most once per server asked; it keeps what it read for a retry)."""

    length: int
    supply: Callable[[], Awaitable[bytes]]


class ClientError(Exception):
    """The exchange with the server failed."""


class NotSent(ClientError):
    """The request never left: no connection could be made."""


class ConnectTimeout(NotSent, TimeoutError):
    """Connecting took longer than allowed."""


class ReadTimeout(ClientError, TimeoutError):
    """The server went quiet for longer than the read timeout."""


class BadResponse(ClientError):
    """The server's answer broke HTTP/1.1: unparseable, unsolicited or cut short."""


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing: the connection is unclean."""


@dataclass(frozen=True)
class Server:
    """Where a pool connects: scheme, host and port."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """One response: its head, then its body as the reader asks for it."""

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange: _Exchange | _Ended = exchange
        self.status = 0
        self.version = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        #: RFC 9112 Section 7.1.2: the trailer section of a chunked body, complete
        #: once read() has returned b"".
        self.trailers: CIMultiDict[str] = CIMultiDict()

    async def read(self) -> bytes:
        """The next piece of the body, b"" at its end; raises ClientError if the body
        broke or ReadTimeout if the server went quiet."""
        return await self._exchange.next_piece()

    async def read_into(self, fd: int | None, limit: int) -> int:
        """Up to `limit` bytes of the body written to the file `fd` (at its position;
        None: read and dropped): how many, 0 at the body's end. Raises as `read`."""
        return await self._exchange.next_into(fd, limit)

    def release(self) -> None:
        """Done with the response: the connection goes back to its pool if the body
        was read to its end and the connection is clean, else it is closed."""
        self._exchange.abandon()

    def close(self) -> None:
        """Done with the response, and the connection is closed whatever its state."""
        self._exchange.abandon(close=True)


class _Exchange:
    """One request and its response on a connection: the parser's callbacks, the body
    queue, and the verdict on whether the connection may be used again."""

    def __init__(
        self,
        conn: _Connection,
        method: str,
        read_timeout: float,
        interim: InterimSink | None = None,
    ) -> None:
        self.conn = conn
        self.on_interim = interim
        self.body_unsent = False  # Expect: 100-continue, the body not sent (yet)
        self.continued: asyncio.Future[None] = conn.loop.create_future()
        self.method = method
        self.read_timeout = read_timeout
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.response = Response(self)
        self.head: asyncio.Future[Response] = conn.loop.create_future()
        self.received = False  # any byte of an answer at all
        self.interim = False  # the message being parsed is a 1xx
        self.in_head = False
        self.complete = False  # the response's last byte has arrived
        self.until_close = False  # the body ends when the server closes
        self.keep_alive = False
        # Body bytes still to come of a response framed by Content-Length alone: once
        # llhttp has parsed the head, the rest of such a body is counted here rather
        # than parsed (see `feed`). None for any other framing.
        self.body_left: int | None = None
        self.pieces: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.error: ClientError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.finished = False  # the exchange let go of its connection

    # -- llhttp's callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete or self.head.done():
            # A second response to one request: the bytes are not ours to read.
            raise _Stop
        self.in_head = True
        self.response.headers = CIMultiDict()

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp reports a chunked body's trailer fields through on_header too, after
        # the body: kept apart, never merged into the head (RFC 9110 Section 6.5.1).
        fields = self.response.headers if self.in_head else self.response.trailers
        fields.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        assert parser is not None, "fed after it let go"
        status = parser.get_status_code()
        if status == 101:
            # edge never asks to upgrade (RFC 9110 Section 15.2.2): not an answer to relay.
            self._fail(BadResponse("unsolicited 101 Switching Protocols"))
            raise _Stop
        if 100 <= status < 200:
            self.interim = True  # 100, 102, 103: told, then read past
            if status == 100 and not self.continued.done():
                self.continued.set_result(None)
            if self.on_interim is not None:
                self.on_interim(status, self.response.headers)
            return
        response = self.response
        response.status = status
        response.version = parser.get_http_version()
        headers = response.headers
        tokens = policy.connection_listed(headers)
        persistent = "close" not in tokens and (response.version == "1.1" or "keep-alive" in tokens)
        bodyless = self.method == "HEAD" or status in (204, 304)
        # RFC 9112 Section 6.3: Transfer-Encoding overrides Content-Length; chunked as
        # the final coding frames the body, any other final coding (or neither field)
        # leaves it to run to the close.
        codings = policy.split_list(headers.getall("Transfer-Encoding", []))
        framed = codings[-1].lower() == "chunked" if codings else "Content-Length" in headers
        self.until_close = not bodyless and not framed
        # An answer before the body it waited for: whether the server reads that body
        # or takes its bytes for the next request is unknown, so no next request.
        self.keep_alive = persistent and not self.until_close and not self.body_unsent
        if not bodyless and not codings:
            lengths = headers.getall("Content-Length", [])
            if len(lengths) == 1 and lengths[0].isdigit():
                self.body_left = int(lengths[0])  # llhttp read it as this too
        self.head.set_result(response)
        if self.method == "HEAD":
            # llhttp does not know this answered a HEAD and would wait for the body
            # Content-Length announces: the response ends here, and any byte after it
            # is unclean (on_body stops the parse).
            self._completed()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise _Stop  # a body after HEAD
        if self.body_left is not None:
            self.body_left -= len(body)
        self._body(body)

    def _body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER:
            self.conn.pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.complete:
            self._completed()

    # -- fed by the connection -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received = True
        left = self.body_left
        if left is not None and not self.complete and self.error is None:
            # Past the head of a body of known length: its bytes are the body as they
            # came, with no parse and no copy (llhttp hands each piece of a body on
            # as a copy of its own), up to the declared length. Anything after that
            # is not this response: the connection ends, as a parse stopped would.
            piece = data if len(data) <= left else data[:left]
            self.body_left = left - len(piece)
            if piece:
                self._body(piece)
            if self.body_left == 0:
                self._completed()
                if len(piece) < len(data):
                    self.keep_alive = False
                    self.conn.close()
            return
        parser = self.parser
        if parser is None:
            self.conn.close()  # bytes after the exchange let go: never read
            return
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, _Stop) as exc:
            # HttpParserUpgrade is an HttpParserError: a 101 was refused above.
            if self.complete:
                # The response was whole; what came after it is not. Keep the answer,
                # never the connection.
                self.keep_alive = False
                self.conn.close()
            else:
                self._fail(BadResponse(f"malformed response: {_reason(exc)}"))

    def closed(self, exc: Exception | None) -> None:
        """The server closed (or the connection broke)."""
        if self.complete:
            return
        if self.until_close and self.head.done():
            self._completed()
            return
        if not self.received:
            self._fail(_Lost("connection closed before any response"))
        else:
            self._fail(BadResponse("connection closed before the response ended"))

    # -- the reader's side ---------------------------------------------------------------

    async def next_piece(self) -> bytes:
        while True:
            if self.pieces:
                piece = self.pieces.popleft()
                self.buffered -= len(piece)
                if self.buffered < _LOW_WATER:
                    self.conn.resume()
                return piece
            if self.error is not None:
                raise self.error
            if self.complete:
                self._let_go()
                return b""
            self.waiter = self.conn.loop.create_future()
            timer = self._deadline("upstream read timed out")
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()

    async def next_into(self, fd: int | None, limit: int) -> int:
        """The next bytes of the body, at most `limit`, into `fd` (see Response.read_into).
        What was already read is written from memory; the rest of a body of known
        length on a plain TCP connection is spliced from the socket to the file
        through a pipe, never copied into this process (nor parsed: see `feed`)."""
        if limit <= 0:
            return 0
        if not self.pieces and fd is not None and self.body_left and self.error is None:
            splicer = self.conn.splicer()
            if splicer is not None:
                return await self._splice(splicer, fd, min(limit, self.body_left))
        if not self.pieces:
            self.conn.resume()  # reading paused for a splice: this one reads
        piece = await self.next_piece()
        if len(piece) > limit:
            rest, piece = piece[limit:], piece[:limit]
            self.pieces.appendleft(rest)
            self.buffered += len(rest)
        if fd is not None:
            write_all(fd, piece)
        return len(piece)

    async def _splice(self, splicer: _Splicer, fd: int, want: int) -> int:
        """Move up to `want` (> 0) body bytes from the socket into `fd`, once any are
        there. The transport stops reading meanwhile (the bytes stay in the socket for
        the splice); the pool resumes it when the connection is put back."""
        self.conn.pause()
        waited = False
        while True:
            if self.error is not None:
                raise self.error
            try:
                n = splicer.fill(want)
            except BlockingIOError:
                await self._readable(splicer)
                waited = True
                continue
            except OSError as exc:
                self._fail(BadResponse(f"upstream body broke: {exc}"))
                self.conn.close()
                raise self.error from exc  # type: ignore[misc]
            break
        if n == 0:
            self._fail(BadResponse("connection closed before the response ended"))
            self.conn.close()
            raise self.error  # type: ignore[misc]
        try:
            splicer.drain(fd, n)
        except OSError:
            # What is left in the pipe is lost with the connection: the body breaks.
            self._fail(BadResponse("the body could not be written"))
            self.conn.close()
            raise
        assert self.body_left is not None
        self.body_left -= n
        if self.body_left == 0:
            self._completed()
        if not waited:
            # The bytes were there already: a fast server would keep them coming, and
            # a reader that never suspends would hold the loop (no accept, no client
            # served) for the whole body. One turn of the loop per step.
            await asyncio.sleep(0)
        return n

    async def _readable(self, splicer: _Splicer) -> None:
        """Until the socket has bytes (or closed), or the read timeout fails the
        exchange (its error is then raised by the caller)."""
        loop = self.conn.loop
        self.waiter = loop.create_future()
        loop.add_reader(splicer.sock, self._wake)
        splicer.watched = True
        timer = self._deadline("upstream read timed out")
        try:
            await self.waiter
        finally:
            self.waiter = None
            loop.remove_reader(splicer.sock)
            splicer.watched = False
            if splicer.closing:
                splicer.close()  # the connection closed while the socket was watched
            if timer is not None:
                timer.cancel()

    async def wait_continue(self, seconds: float) -> bool:
        """RFC 9110 Section 10.1.1: whether to send the body: True once the server
        said 100 or said nothing for `seconds`, False when it answered (or failed)
        first."""
        if not self.head.done():
            await asyncio.wait(
                (self.continued, self.head), timeout=seconds, return_when="FIRST_COMPLETED"
            )
        return not self.head.done()

    async def wait_head(self) -> Response:
        if self.head.done():
            return self.head.result()
        timer = self._deadline("upstream response timed out")
        try:
            # Not shielded: a cancelled head is a finished one to the parser's
            # callbacks (on_message_begin), and the caller closes the connection.
            return await self.head
        finally:
            if timer is not None:
                timer.cancel()

    def abandon(self, close: bool = False) -> None:
        if not self.complete or self.pieces or close:
            self.keep_alive = False
        if not self.complete:
            self._fail(ClientError("response abandoned"))
        self.pieces.clear()
        self.buffered = 0
        self._let_go()

    # -- internals -----------------------------------------------------------------------

    def _deadline(self, message: str) -> asyncio.TimerHandle | None:
        """The read timeout as one timer that fails the exchange (waking its reader),
        cheaper per wait than a timeout scope and a shielded future."""
        if not self.read_timeout:
            return None
        return self.conn.loop.call_later(self.read_timeout, self._fail, ReadTimeout(message))

    def _completed(self) -> None:
        self.complete = True
        self.conn.exchange_done(self)
        self._wake()

    def _fail(self, error: ClientError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.keep_alive = False
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved here: a reader may never come for it
        self.conn.exchange_done(self)
        self._wake()

    def _let_go(self) -> None:
        if not self.finished:
            self.finished = True
            self.conn.exchange_done(self)
            # Done with: no byte is fed to it again (the connection has let it go).
            # The parser holds this exchange's callbacks and the response held this
            # exchange: both cycles are cut, so that the exchange, and what its caller
            # hung on it, go when the last reference does, not at the cycle
            # collector's next pass (which cost a miss 10% of its CPU).
            self.parser = None
            self.response._exchange = _Ended(self.error)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Ended:
    """What a response reads from once its exchange let go: the end of its body, or
    the error it broke with, as the exchange itself would answer."""

    def __init__(self, error: ClientError | None) -> None:
        self.error = error

    async def next_piece(self) -> bytes:
        if self.error is not None:
            raise self.error
        return b""

    async def next_into(self, fd: int | None, limit: int) -> int:
        if limit > 0 and self.error is not None:
            raise self.error
        return 0

    def abandon(self, close: bool = False) -> None:
        pass


class _Lost(ClientError):
    """A connection closed before anything of the answer came: on a reused connection
    the server had closed it while idle, and an idempotent request may be sent again."""


def _reason(exc: BaseException) -> str:
    context = exc.__context__
    if isinstance(context, _Stop):
        return "bytes beyond the end of the response"
    return str(exc) or type(exc).__name__


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the server: idle in its pool, or carrying one
    exchange. Bytes that arrive while it is idle end it."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.is_closed = False
        self.paused = False
        self.holds_slot = False  # of its pool's limit, from the request until it is free
        self.idle_timer: asyncio.TimerHandle | None = None
        self._splicer: _Splicer | None = None
        self._no_splice = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.complete:
            self.close()  # unsolicited bytes: never read as the next response
            return
        exchange.feed(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._cancel_idle()
        self._close_splicer()
        exchange = self.exchange
        if exchange is not None:
            exchange.closed(exc)
        self.pool.forget(self)

    # used by the exchange and the pool

    def send(self, exchange: _Exchange, data: bytes) -> None:
        assert self.transport is not None
        self._cancel_idle()
        self.exchange = exchange
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.write(data)

    def exchange_done(self, exchange: _Exchange) -> None:
        """The exchange no longer needs the connection, or the response is whole: pool
        it if it is clean, close it otherwise. Called more than once; acts once."""
        if self.exchange is not exchange:
            return
        if exchange.complete and exchange.keep_alive and not self.is_closed:
            # Free as soon as the response is whole, even if its body still waits in the
            # exchange for its reader.
            self.exchange = None
            self.resume()
            self.pool.put_back(self)
        elif exchange.complete or exchange.error is not None or exchange.finished:
            self.exchange = None
            self.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.is_closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.is_closed:
            self.paused = False
            self.transport.resume_reading()

    def idle_for(self, seconds: float) -> None:
        self.idle_timer = self.loop.call_later(seconds, self.close)

    def close(self) -> None:
        self._cancel_idle()
        self._close_splicer()
        if self.transport is not None and not self.is_closed:
            self.is_closed = True
            self.transport.close()
            self.pool.forget(self)

    def splicer(self) -> _Splicer | None:
        """The connection's way to splice body bytes to a file, made on first use;
        None where there is none (TLS, a transport without a socket, no splice)."""
        if self._splicer is not None or self._no_splice:
            return self._splicer
        transport = self.transport
        sock = None if transport is None else transport.get_extra_info("socket")
        if (
            not _SPLICE
            or sock is None
            or self.is_closed
            or transport is None
            or transport.get_extra_info("sslcontext") is not None
        ):
            self._no_splice = True
            return None
        try:
            self._splicer = _Splicer(sock.fileno())
        except OSError:
            self._no_splice = True
        return self._splicer

    def _close_splicer(self) -> None:
        splicer, self._splicer = self._splicer, None
        if splicer is not None:
            splicer.close()

    def _cancel_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


def write_all(fd: int, data: bytes) -> None:
    """All of `data` into the file `fd` (a write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Splicer:
    """A pipe, and a descriptor of the connection's socket of its own (readiness is
    watched on it, apart from the transport's): bytes go socket -> pipe -> file by
    splice(2), moved by the kernel without a copy into this process. The pipe is
    empty between calls; a failure in between ends the connection."""

    def __init__(self, sock: int) -> None:
        self.sock = os.dup(sock)
        try:
            self.read_end, self.write_end = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(self.sock)
            raise
        with contextlib.suppress(OSError):  # a lower pipe-max-size: the default pipe
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, _SPLICE_PIPE)
        self.size = fcntl.fcntl(self.write_end, fcntl.F_GETPIPE_SZ)
        self.watched = False  # the loop watches `sock` for a reader
        self.closing = False

    def fill(self, want: int) -> int:
        """Bytes from the socket into the pipe (BlockingIOError: none yet; 0: closed)."""
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        return os.splice(self.sock, self.write_end, min(want, self.size), flags=flags)

    def drain(self, fd: int, count: int) -> None:
        """All `count` bytes in the pipe into the file `fd`, at its position."""
        while count:
            moved = os.splice(self.read_end, fd, count, flags=os.SPLICE_F_MOVE)
            if moved <= 0:
                raise OSError("the body's file took no bytes")
            count -= moved

    def close(self) -> None:
        """Close the descriptors; while the loop watches the socket's, once it stops
        (a descriptor closed under a watch could be reused by another socket)."""
        if self.watched:
            self.closing = True
            return
        for fd in (self.sock, self.read_end, self.write_end):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sock = self.read_end = self.write_end = -1


class ConnectionPool:
    """Keep-alive connections to one server: at most `limit` carrying requests at once
    (0: no limit), idle ones kept `keepalive` seconds, the most recently used first."""

    def __init__(
        self,
        server: Server,
        *,
        limit: int = 0,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = server
        self.keepalive = keepalive
        self.idle: collections.deque[_Connection] = collections.deque()
        self.all: set[_Connection] = set()
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self._ssl = ssl_context
        if server.scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | Deferred | None = None,
        *,
        connect_timeout: float,
        read_timeout: float,
        interim: InterimSink | None = None,
    ) -> Response:
        """Send one request and return its response once the head has arrived;
        `interim` is told of each 1xx that comes before it. A Deferred body is sent
        only when the server asks for it (or stays silent, CONTINUE_WAIT)."""
        deferred = body if isinstance(body, Deferred) else None
        data = _serialise(method, target, headers, body, self.server)
        if self._slots is not None:
            await self._slots.acquire()
        try:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, method, data, read_timeout, interim, deferred)
                except _Lost:
                    # The server closed the idle connection as the request went out.
                    if method not in IDEMPOTENT:
                        raise BadResponse("connection closed before any response") from None
            conn = await self._connect(connect_timeout)
            try:
                return await self._exchange(conn, method, data, read_timeout, interim, deferred)
            except _Lost:
                raise BadResponse("connection closed before any response") from None
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    async def close(self) -> None:
        for conn in list(self.all):
            conn.close()
        self.idle.clear()

    # -- used by connections -------------------------------------------------------------

    def put_back(self, conn: _Connection) -> None:
        self._free_slot(conn)
        if conn.is_closed:
            return
        conn.idle_for(self.keepalive)
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._free_slot(conn)
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    # -- internals -----------------------------------------------------------------------

    def _free_slot(self, conn: _Connection) -> None:
        if conn.holds_slot:
            conn.holds_slot = False
            if self._slots is not None:
                self._slots.release()

    def _take_idle(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.is_closed:
                return conn
        return None

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        server = self.server
        try:
            async with asyncio.timeout(timeout or None):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    server.host,
                    server.port,
                    ssl=self._ssl,
                    server_hostname=server.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {server.authority} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise NotSent(f"cannot connect to {server.authority}: {exc}") from exc
        self.all.add(conn)
        return conn

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        data: bytes,
        read_timeout: float,
        interim: InterimSink | None,
        deferred: Deferred | None = None,
    ) -> Response:
        exchange = _Exchange(conn, method, read_timeout, interim)
        exchange.body_unsent = deferred is not None
        conn.holds_slot = True
        conn.send(exchange, data)
        try:
            if deferred is not None and await exchange.wait_continue(CONTINUE_WAIT):
                body = await deferred.supply()
                if len(body) != deferred.length:
                    raise ClientError("the request body is not the length announced")
                exchange.body_unsent = False
                conn.write(body)
            return await exchange.wait_head()
        except BaseException:
            conn.holds_slot = False
            exchange.abandon(close=True)
            raise


def _serialise(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | Deferred | None,
    server: Server,
) -> bytes:
    """The request's bytes: request line, fields (Host first), framing, body (a
    Deferred one: the head alone, asking for `100 Continue`)."""
    lines = [f"{method} {target} HTTP/1.1"]
    has_host = False
    for name, value in headers:
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding", "expect"):
            continue  # framed below, and the expectation is this client's own
        if lower == "host":
            has_host = True
        lines.append(f"{name}: {value}")
    # One scan of every field for what would split it (the culprit named only then).
    if _BREAKS.search("".join(lines[1:])):
        for line in lines[1:]:
            if _BREAKS.search(line):
                name = line.split(":", 1)[0]
                raise ClientError(f"the request field {name!r} holds a line break")
    if not has_host:
        lines.insert(1, f"Host: {server.authority}")
    if isinstance(body, Deferred):
        lines.append(f"Content-Length: {body.length}")
        lines.append("Expect: 100-continue")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body or b'')}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + (body or b"")
