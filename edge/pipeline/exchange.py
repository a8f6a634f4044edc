"""The protocol-independent exchange between a connection layer and what answers it.

Owns the two values that cross that seam, and the small channel a response leaves
through:
- `Request`: method, target, version, the header fields (in order, with
  case-insensitive lookup), the authority, peer, scheme, and the body as a stream;
- `Response`: a response description (status, fields, and a body given whole), which
  is also the head of a response whose body is streamed;
- `Channel`: how a response leaves: whole (`respond`), or as a head followed by
  pieces and file spans (`start`, `write`, `send_file`, `end`), an interim
  `100 Continue`, or an abort that tells the client the body was cut.

Nothing here is HTTP/1.1's own: connection-specific fields, chunking, keep-alive and
close-delimited bodies are decided by the connection layer that implements `Channel`
(edge.server.http1 for HTTP/1.1, edge.server.http2 for HTTP/2). Nothing here imports a
server framework; edge.pipeline.transaction and the node's own endpoints work on these
values alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

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

    async def end(self) -> None: ...

    def abort(self) -> None:
        """The body cannot be completed: drop the connection so the client sees a
        truncated response rather than a short one that looks whole."""
        ...
