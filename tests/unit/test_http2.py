"""edge.server.http2 on an in-memory transport, with the h2 library as the client: the
h2c hand-over from edge.server.http1, a request answered on a stream, responses that
wait for the client's window, stored files sent in window-sized spans, and the frame
budgets (`Budget`, with an injected clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from multidict import CIMultiDict

from edge.pipeline.exchange import Channel, Request, Response
from edge.server.http1 import H2_PREFACE, ConnectionGuard, Limits, Listener
from edge.server.http2 import Budget, Http2Connection
from tests.unit.test_http1 import FakeTransport, echo, settle


class Transport(FakeTransport):
    """FakeTransport whose protocol may be replaced (the h2c hand-over)."""

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol


class Client:
    """The h2 library as a client, fed what the server wrote."""

    def __init__(self, transport: Transport, settings: dict[int, int] | None = None) -> None:
        self.transport = transport
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.events: list[h2.events.Event] = []

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.transport.protocol.data_received(data)  # type: ignore[union-attr]

    def receive(self) -> list[h2.events.Event]:
        events = self.h2.receive_data(self.transport.take())
        self.events += events
        return events

    def get(self, path: str, **fields: str) -> int:
        sid = self.h2.get_next_available_stream_id()
        block = [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", path)]
        self.h2.send_headers(sid, block + list(fields.items()), end_stream=True)
        self.send()
        return sid

    def body(self, sid: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == sid
        )

    def ended(self, sid: int) -> bool:
        return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in self.events)


def listener(handler: Any = echo, **guard: Any) -> Listener:
    lst = Listener(
        handler,
        ConnectionGuard(
            header_timeout=10.0,
            max_per_client=guard.pop("max_per_client", 0),
            server_header="edge",
            **guard,
        ),
        Limits(),
    )
    lst.http2 = lambda: Http2Connection(lst)
    lst.h2c = True
    return lst


def h2_connect(handler: Any = echo, settings: dict[int, int] | None = None) -> Client:
    lst = listener(handler)
    transport = Transport()
    conn = Http2Connection(lst)
    transport.protocol = conn
    conn.connection_made(transport)
    client = Client(transport, settings)
    client.send()
    client.receive()
    client.send()  # its SETTINGS acknowledged
    return client


# -- the budget ------------------------------------------------------------------------


def test_a_budget_allows_its_burst_then_its_rate() -> None:
    now = [100.0]
    budget = Budget(3, 2, lambda: now[0])
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one more token
    assert budget.take() and not budget.take()
    now[0] += 60  # refills to the burst, never beyond
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


# -- the connection ---------------------------------------------------------------------


async def test_the_h2c_preface_hands_the_connection_over_even_in_pieces() -> None:
    lst = listener()
    transport = Transport()
    conn = lst()
    transport.protocol = conn
    conn.connection_made(transport)
    client = Client(transport)
    data = client.h2.data_to_send()
    assert data.startswith(H2_PREFACE)
    conn.data_received(data[:10])  # a part of the preface: wait for the rest
    assert transport.protocol is conn and not transport.out
    conn.data_received(data[10:])
    assert isinstance(transport.protocol, Http2Connection)
    assert conn not in lst.connections and transport.protocol in lst.connections
    client.receive()
    client.send()
    sid = client.get("/x?y=1")
    await settle()
    client.receive()
    assert client.body(sid) == b"GET /x?y=1 (2, 0) body="
    assert client.ended(sid)


async def test_http11_on_an_h2c_listener_is_still_http11() -> None:
    lst = listener()
    transport = Transport()
    conn = lst()
    transport.protocol = conn
    conn.connection_made(transport)
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    assert transport.protocol is conn
    assert transport.take().startswith(b"HTTP/1.1 200 OK")


async def test_authority_becomes_host_and_the_fields_are_lower_case() -> None:
    seen: list[Request] = []

    async def handler(request: Request, channel: Channel) -> None:
        seen.append(request)
        headers = CIMultiDict({"X-Thing": "1", "Connection": "close"})
        await channel.respond(Response(200, headers, b"ok"))

    client = h2_connect(handler)
    sid = client.get("/p", cookie="a=1")
    await settle()
    client.receive()
    request = seen[0]
    assert request.headers["Host"] == "a.test" and request.authority == "a.test"
    assert request.version == (2, 0) and not request.has_body
    (response,) = [e for e in client.events if isinstance(e, h2.events.ResponseReceived)]
    fields = dict(response.headers)
    # Connection-specific fields are HTTP/1.1's own (RFC 9113 Section 8.2.2).
    assert fields[b"x-thing"] == b"1" and b"connection" not in fields
    assert fields[b"content-length"] == b"2" and client.body(sid) == b"ok"


async def test_a_response_waits_for_the_clients_window() -> None:
    async def big(request: Request, channel: Channel) -> None:
        await channel.respond(Response(200, CIMultiDict(), b"z" * 1000))

    client = h2_connect(big, {SettingCodes.INITIAL_WINDOW_SIZE: 100})
    sid = client.get("/big")
    await settle()
    client.receive()
    assert client.body(sid) == b"z" * 100 and not client.ended(sid)
    client.h2.increment_flow_control_window(2000, sid)
    client.send()
    await settle()
    client.receive()
    assert client.body(sid) == b"z" * 1000 and client.ended(sid)


async def test_a_stored_file_goes_out_in_spans_the_window_allows(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(bytes(range(256)) * 1000)

    async def from_file(request: Request, channel: Channel) -> None:
        await channel.start(Response(200, CIMultiDict(), length=200_000))
        with open(path, "rb") as file:
            await channel.send_file(file, 1000, 200_000)
        await channel.end()

    client = h2_connect(from_file, {SettingCodes.INITIAL_WINDOW_SIZE: 50_000})
    sid = client.get("/file")
    got = 0
    for _ in range(20):
        await settle()
        client.receive()
        now = len(client.body(sid))
        assert now - got <= 50_000  # never more than the window at once
        got = now
        if client.ended(sid):
            break
        client.h2.increment_flow_control_window(50_000, sid)
        client.h2.increment_flow_control_window(50_000)
        client.send()
    assert client.body(sid) == path.read_bytes()[1000:201_000] and client.ended(sid)


async def test_a_ping_flood_ends_in_goaway_enhance_your_calm() -> None:
    client = h2_connect()
    for i in range(200):
        client.h2.ping(i.to_bytes(8, "big"))
    client.send()
    client.receive()
    (ended,) = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert client.transport.closed


async def test_an_answer_before_the_body_ends_resets_the_rest_and_the_connection_goes_on() -> None:
    async def refuse(request: Request, channel: Channel) -> None:
        await channel.respond(Response(413, CIMultiDict(), b"too big"))

    client = h2_connect(refuse)
    sid = client.h2.get_next_available_stream_id()
    block = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/up")]
    client.h2.send_headers(sid, block)
    client.h2.send_data(sid, b"x" * 10_000)
    client.send()
    await settle()
    client.receive()
    assert client.body(sid) == b"too big" and client.ended(sid)
    (reset,) = [e for e in client.events if isinstance(e, h2.events.StreamReset)]
    assert reset.error_code == ErrorCodes.NO_ERROR  # RFC 9113 Section 8.1: the rest not wanted
    # The next stream is served, and the unread bytes went back to the connection's window.
    later = client.get("/after")
    await settle()
    client.receive()
    assert client.body(later) == b"too big" and client.ended(later)


async def test_a_head_h2_will_not_send_resets_its_stream_only() -> None:
    async def odd(request: Request, channel: Channel) -> None:
        headers = CIMultiDict({":bogus": "1"}) if request.target == "/odd" else CIMultiDict()
        await channel.respond(Response(200, headers, b"fine"))

    client = h2_connect(odd)
    sid = client.get("/odd")
    await settle()
    client.receive()
    resets = [e for e in client.events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(sid, ErrorCodes.INTERNAL_ERROR)]
    later = client.get("/plain")
    await settle()
    client.receive()
    assert client.body(later) == b"fine" and client.ended(later)
