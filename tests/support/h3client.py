"""An HTTP/3 client for the tests, on aioquic's client API: one QUIC connection,
requests on it one after another or side by side, and the raw field lists a test
needs to send what a well-behaved client would not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset
from aioquic.tls import SessionTicket

Fields = list[tuple[bytes, bytes]]


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    received: bytearray = field(default_factory=bytearray)  # the body as it arrives
    reset: int | None = None  # the stream's reset code, when it was reset
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _Client(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, *args: object, **kwargs: object) -> None:
        super().__init__(quic, *args, **kwargs)  # type: ignore[arg-type]
        self.quic = quic  # the constructor's own argument: no protected attribute
        self.h3 = H3Connection(quic)
        self.replies: dict[int, Reply] = {}
        self.waiters: dict[int, asyncio.Future[Reply]] = {}
        self.terminated: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self.waiters:
            self.replies[event.stream_id].reset = event.error_code
            self._done(event.stream_id)
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            for sid in list(self.waiters):
                self.waiters[sid].set_exception(ConnectionError(event.reason_phrase))
            self.waiters.clear()
        for http_event in self.h3.handle_event(event):
            self._http(http_event)

    def _http(self, event: H3Event) -> None:
        reply = self.replies.get(getattr(event, "stream_id", -1))
        if reply is None:
            return
        if isinstance(event, HeadersReceived):
            fields = {k.decode(): v.decode() for k, v in event.headers}
            status = int(fields.pop(":status"))
            if 100 <= status < 200:
                reply.interim.append(status)
            else:
                reply.status, reply.headers = status, fields
        elif isinstance(event, DataReceived):
            reply.received += event.data
        if getattr(event, "stream_ended", False):
            self._done(event.stream_id)  # type: ignore[attr-defined]

    def _done(self, sid: int) -> None:
        reply = self.replies[sid]
        reply.body = bytes(reply.received)
        waiter = self.waiters.pop(sid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def send(self, fields: Fields, body: Sequence[bytes] = (), end: bool = True) -> int:
        """Send a request's fields as given (no checks) and its DATA frames."""
        sid = self.quic.get_next_available_stream_id()
        self.replies[sid] = Reply()
        self.waiters[sid] = asyncio.get_running_loop().create_future()
        self.h3.send_headers(sid, fields, end_stream=end and not body)
        for i, piece in enumerate(body):
            self.h3.send_data(sid, piece, end_stream=end and i == len(body) - 1)
        self.transmit()
        return sid

    async def reply(self, sid: int, timeout: float = 20.0) -> Reply:
        waiter = self.waiters.get(sid)
        if waiter is None:
            return self.replies[sid]
        return await asyncio.wait_for(waiter, timeout)

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        authority: str = "localhost",
        timeout: float = 20.0,
    ) -> Reply:
        fields: Fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers),
        ]
        if body:
            fields.append((b"content-length", str(len(body)).encode()))
        sid = self.send(fields, [body] if body else [])
        return await self.reply(sid, timeout)


def client_configuration(ca: Path, server_name: str = "localhost") -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN))
    config.load_verify_locations(str(ca))
    config.server_name = server_name
    return config


@contextlib.asynccontextmanager
async def h3_connect(
    port: int,
    ca: Path,
    *,
    host: str = "127.0.0.1",
    server_name: str = "localhost",
    configuration: QuicConfiguration | None = None,
    wait_connected: bool = True,
    session_ticket_handler: Callable[[SessionTicket], None] | None = None,
) -> AsyncIterator[_Client]:
    config = configuration or client_configuration(ca, server_name)
    async with connect(
        host,
        port,
        configuration=config,
        create_protocol=_Client,
        wait_connected=wait_connected,
        session_ticket_handler=session_ticket_handler,
    ) as client:
        yield client  # type: ignore[misc]


class _Relay(asyncio.DatagramProtocol):
    """A UDP relay between one client and a server that can hold what the server sends:
    to the server the client then looks like one that has stopped reading (no
    acknowledgements come back)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.held: list[bytes] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        if self.held is None and self.upstream is not None:
            self.upstream.sendto(data)

    def from_server(self, data: bytes) -> None:
        if self.held is not None:
            if len(self.held) < 4096:
                self.held.append(data)
        elif self.transport is not None and self.client is not None:
            self.transport.sendto(data, self.client)

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for data in held:
            self.from_server(data)

    async def migrate(self) -> int:
        """Speak to the server from a new source port from now on, as a client whose
        NAT rebinds or whose network changes does (RFC 9000 Section 9); returns it."""
        old = self.upstream
        self.upstream, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _FromServer(self), remote_addr=self.server
        )
        if old is not None:
            old.close()
        return int(self.upstream.get_extra_info("sockname")[1])


class _FromServer(asyncio.DatagramProtocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.from_server(data)


@contextlib.asynccontextmanager
async def relay(server_port: int) -> AsyncIterator[tuple[int, _Relay]]:
    """A relay on a free loopback port to 127.0.0.1:server_port; yields its port."""
    loop = asyncio.get_running_loop()
    proto = _Relay(("127.0.0.1", server_port))
    listen, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    upstream, _ = await loop.create_datagram_endpoint(
        lambda: _FromServer(proto), remote_addr=proto.server
    )
    proto.upstream = upstream
    try:
        yield listen.get_extra_info("sockname")[1], proto
    finally:
        if proto.upstream is not None:
            proto.upstream.close()
        listen.close()
