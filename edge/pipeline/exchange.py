"""The protocol-independent exchange between a connection layer and what answers it.

Owns the two values that cross that seam, and the small channel a response leaves
through:
- `Request`: method, target, version, the header fields (in order, with
  case-insensitive lookup), the authority, peer, scheme, and the body as a stream;
- `Response`: a response description (status, fields, and a body given whole), which
  is also the head of a response whose body is streamed;
- `Channel`: how a response leaves: whole (`respond`), or as a head followed by
  pieces and file spans (`start`, `write`, `send_file`, `end` with any trailer
  fields), interim responses before it (`send_continue`, `send_interim`: 102, 103),
  or an abort that tells the client the body was cut;
- `InterimRelay`: hands the interim responses an upstream sends (told one by one as
  they arrive, edge.upstream.h1client) to a Channel in order, before its final head.

Nothing here is HTTP/1.1's own: connection-specific fields, chunking, keep-alive and
close-delimited bodies are decided by the connection layer that implements `Channel`
(edge.server.http1 for HTTP/1.1, edge.server.http2 for HTTP/2). Nothing here imports a
server framework; edge.pipeline.transaction and the node's own endpoints work on these
values alone.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Generic, Protocol, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy

#: Fields as (name, value) pairs, in the order they were sent.
RawFields = Sequence[tuple[bytes, bytes]]


class Body(Protocol):
    """A request body as it arrives. `readany()` returns the next bytes that
    arrived, b"" at its end."""

    async def readany(self) -> bytes: ...


class _NoBody:
    async def readany(self) -> bytes:
        return b""


NO_BODY: Body = _NoBody()

_Piece = TypeVar("_Piece")


class ArrivingBody(Generic[_Piece]):
    """What every connection layer's request body shares: pieces queued as they
    arrive, the reader woken for each, then the end or an error. A layer subclasses
    it for what is its own (back-pressure, flow control, framing checks), queues with
    `_put` and reads with `_next`."""

    def __init__(self) -> None:
        self._chunks: collections.deque[_Piece] = collections.deque()
        self.done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _put(self, piece: _Piece) -> None:
        self._chunks.append(piece)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        """No more pieces: the body ended, or broke with `error` (raised to the reader
        once what came before it is read)."""
        self.done = True
        self._error = self._error or error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _next(self) -> _Piece | None:
        """The next piece, waiting for it; None at the body's end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.done:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._chunks.popleft()


@dataclass(slots=True)
class Request:
    """One request as any HTTP version delivers it.

    `target` is the request-target as sent (origin-form or absolute-form);
    `authority` the Host field's value, or the address the client reached when the
    request named none (HTTP/1.0); `raw` the fields as the parser gave them, for
    checks that work on bytes (edge.pipeline.fastpath, edge.features.waf's remembered verdicts)."""

    method: str
    target: str
    version: tuple[int, int]
    headers: CIMultiDictProxy[str]
    raw: tuple[tuple[bytes, bytes], ...]
    authority: str
    peer: str
    scheme: str = "http"
    body: Body = NO_BODY
    #: Whether the request carries a body (a length above zero, or chunked).
    has_body: bool = False
    #: The body's declared length, None when chunked or absent.
    content_length: int | None = None

    @property
    def secure(self) -> bool:
        return self.scheme == "https"


def request_fields(raw: RawFields) -> CIMultiDictProxy[str]:
    """The case-insensitive view of raw fields (latin-1, as RFC 9110 Section 5.5
    leaves octets above 0x7F opaque)."""
    return CIMultiDictProxy(CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw))


@dataclass(slots=True)
class Response:
    """A response description: status and fields, and either its whole body (`body`)
    or, for a head whose body is streamed through a Channel, its length (`length`,
    None when unknown). `close`: the connection must not carry another request after
    this one (a framing the node no longer trusts)."""

    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    length: int | None = None
    close: bool = False


class Channel(Protocol):
    """Where one request's response goes. A connection layer implements it; it adds
    what is its own (framing, Date, Server, connection fields) and tells the caller
    the fields as written (the hot tier keeps them, edge.pipeline.fastpath).

    Writes raise ConnectionError once the client has gone."""

    @property
    def started(self) -> bool:
        """Whether a response head has been sent (then no other response can be)."""
        ...

    async def send_continue(self) -> None:
        """RFC 9110 Section 15.2.1: `100 Continue`, if the request's version has it."""
        ...

    async def send_interim(self, status: int, fields: Sequence[tuple[str, str]]) -> None:
        """An interim response (RFC 9110 Section 15.2: 102, 103 Early Hints, ...)
        with `fields` as given (already end-to-end: the caller removed hop-by-hop
        ones). An implementation must:
        - send it only before the final head: once `started`, do nothing;
        - send it only where the protocol has 1xx: an HTTP/1.0 request gets none
          (RFC 9110 Section 15.2), HTTP/2 and HTTP/3 send a HEADERS frame with the
          1xx `:status` and no END_STREAM (RFC 9113 Section 8.1);
        - add none of its own final-response fields (Date, Server, framing);
        - keep the order: interim responses leave in the order given, all before
          the final head;
        - raise ConnectionError if the client has gone, like the other writes.
        Several may be sent for one request; none is ever stored."""
        ...

    async def respond(self, response: Response) -> list[tuple[str, str]]:
        """Send a whole response (head and `response.body`); returns the fields as
        written."""
        ...

    async def start(self, head: Response) -> list[tuple[str, str]]:
        """Send a head; its body follows through write/send_file, then end."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def send_file(self, file: IO[bytes], offset: int, count: int) -> None:
        """`count` bytes of `file` from `offset`, without copying where the transport
        allows it (edge.server.zerocopy)."""
        ...

    async def end(self, trailers: Sequence[tuple[str, str]] = ()) -> None:
        """The body is complete. `trailers` (RFC 9110 Section 6.5, already filtered
        by edge.rfc.policy.forwardable_trailers) go out in a trailer section where the
        framing has one (HTTP/1.1 chunked, an HTTP/2 or HTTP/3 HEADERS frame after the
        data); elsewhere (a Content-Length, HTTP/1.0, no body) they are dropped, never
        merged into the head, which has already left."""
        ...

    def abort(self) -> None:
        """The body cannot be completed: drop the connection so the client sees a
        truncated response rather than a short one that looks whole."""
        ...


class InterimRelay:
    """Passes interim responses to a Channel in the order they arrive, from a sink
    that cannot wait (edge.upstream.h1client tells it from its parser), and stops
    before the final head: `close()` waits for those already handed on, and any told
    after it are dropped (RFC 9110 Section 15.2: interim responses precede the
    final one)."""

    __slots__ = ("_channel", "_closed", "_last", "sent")

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._closed = False
        self._last: asyncio.Task[None] | None = None
        self.sent: list[int] = []  # the statuses handed on, for the log and tests

    def __call__(self, status: int, fields: Sequence[tuple[str, str]]) -> None:
        if self._closed:
            return
        self._last = asyncio.get_running_loop().create_task(
            self._send(self._last, status, list(fields))
        )

    async def _send(
        self, before: asyncio.Task[None] | None, status: int, fields: list[tuple[str, str]]
    ) -> None:
        if before is not None:
            await before
        try:
            await self._channel.send_interim(status, fields)
            self.sent.append(status)
        except ConnectionError:
            self._closed = True  # the client went away: the final answer will see it

    def stop(self) -> None:
        """No more interim responses, without waiting for those on their way."""
        self._closed = True

    async def close(self) -> None:
        """No more interim responses; returns once those told so far have left."""
        self._closed = True
        last, self._last = self._last, None
        if last is not None:
            await last
