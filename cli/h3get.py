"""`edge h3get`: one HTTP/3 request, printed as `curl -si` prints one, for a person
checking a node's HTTP/3 where the system's curl has none (Debian's has not).

This module owns the command line (URL, --cacert, --resolve, -I for HEAD, -H for
fields) and the exchange on aioquic's client API; it speaks no other protocol.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import Annotated
from urllib.parse import urlsplit

import typer
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset

from cli.errors import fail


class _Client(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, *args: object, **kwargs: object) -> None:
        super().__init__(quic, *args, **kwargs)  # type: ignore[arg-type]
        self.quic = quic
        self.h3 = H3Connection(quic)
        self.head: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset):
            self._end(ConnectionError(f"the stream was reset (code 0x{event.error_code:x})"))
        elif isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"code 0x{event.error_code:x}"
            self._end(ConnectionError(f"the connection was closed: {reason}"))
        for http_event in self.h3.handle_event(event):
            self._http(http_event)

    def _http(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived) and not self.head:
            status = dict(event.headers).get(b":status", b"")
            if not status.startswith(b"1"):  # interim answers are not shown
                self.head = event.headers
        elif isinstance(event, DataReceived):
            self.body += event.data
        if getattr(event, "stream_ended", False):
            self._end(None)

    def _end(self, error: BaseException | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)


async def fetch(
    url: str, *, cacert: str, resolve: str, method: str, fields: list[tuple[str, str]]
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The response head (pseudo-header first) and body of one request."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"not an https URL: {url}")
    port = parts.port or 443
    address = parts.hostname
    if resolve:
        name, _, rest = resolve.partition(":")
        wanted_port, _, to = rest.partition(":")
        if not to or not wanted_port.isdigit():
            raise ValueError(f"--resolve wants HOST:PORT:ADDRESS: {resolve}")
        if name == parts.hostname and int(wanted_port) == port:
            address = to.strip("[]")
    config = QuicConfiguration(is_client=True, alpn_protocols=list(H3_ALPN))
    config.server_name = parts.hostname
    config.idle_timeout = 20.0  # a port with nothing on UDP: give up in this time
    if cacert:
        config.load_verify_locations(cacert)
    authority = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with connect(address, port, configuration=config, create_protocol=_Client) as client:
        assert isinstance(client, _Client)
        sid = client.quic.get_next_available_stream_id()
        client.h3.send_headers(
            sid,
            [
                (b":method", method.encode()),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", target.encode()),
                (b"user-agent", b"edge-h3get"),
                *((k.strip().lower().encode(), v.strip().encode()) for k, v in fields),
            ],
            end_stream=True,
        )
        client.transmit()
        await client.done
        return client.head, bytes(client.body)


def h3get(
    url: Annotated[str, typer.Argument(help="An https URL.")],
    cacert: Annotated[
        str,
        typer.Option(
            "--cacert",
            help="CA file to verify the node with (edge up's).",
            show_default="the system's trusted CAs",
        ),
    ] = "",
    resolve: Annotated[
        str,
        typer.Option(
            "--resolve",
            help="HOST:PORT:ADDRESS, as curl's: where to connect.",
            show_default="the URL's host, resolved",
        ),
    ] = "",
    head: Annotated[
        bool, typer.Option("-I", "--head", help="HEAD instead of GET.", show_default="GET")
    ] = False,
    header: Annotated[
        list[str] | None,
        typer.Option("-H", "--header", help="A request field, NAME: VALUE.", show_default="none"),
    ] = None,
) -> None:
    """Print the response's status line and fields, a blank line, then its body."""
    fields = []
    for line in header or []:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            fail(f"a header is NAME: VALUE: {line!r}", 2)
        fields.append((name, value))
    try:
        method = "HEAD" if head else "GET"
        response, body = asyncio.run(
            asyncio.wait_for(
                fetch(url, cacert=cacert, resolve=resolve, method=method, fields=fields), 60
            )
        )
    except ValueError as exc:
        fail(str(exc), 2)
    except (ConnectionError, OSError, ssl.SSLError) as exc:
        fail(f"HTTP/3 request to {url} failed: {exc}")
    except TimeoutError:
        fail(f"HTTP/3 request to {url} failed: no answer in time (is UDP open, http3 on?)")
    out = sys.stdout.buffer
    status = dict(response).get(b":status", b"")
    out.write(b"HTTP/3 " + status + b"\r\n")
    for name, value in response:
        if not name.startswith(b":"):
            out.write(name + b": " + value + b"\r\n")
    out.write(b"\r\n" + body)
    out.flush()
