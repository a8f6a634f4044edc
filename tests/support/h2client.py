"""A raw HTTP/2 client for tests: the `h2` library as client over a plain socket (h2c
with prior knowledge, or TLS with ALPN h2), with frames made by hand where a well-behaved
library would refuse to send them (floods, bad header blocks), and a reader of the
server's frames as they come (GOAWAY and RST_STREAM codes)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.settings import SettingCodes

#: RFC 9113 Section 6: frame types and error codes the tests look for.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0,
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
)
NO_ERROR, PROTOCOL_ERROR, CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0, 1, 8, 7, 11
COMPRESSION_ERROR = 9


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame's bytes (RFC 9113 Section 4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


@dataclass
class Reply:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None  # the RST_STREAM code
    ended_at: float = 0.0
    interims: list[list[tuple[bytes, bytes]]] = field(default_factory=list)  # 1xx blocks
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def field(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k == key:
                return v.decode()
        return None


class H2Client:
    """One HTTP/2 connection to 127.0.0.1:`port`."""

    def __init__(
        self,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        settings: dict[int, int] | None = None,
        strict: bool = True,
        window: int | None = None,
        ack: bool = True,
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            raw = tls.wrap_socket(raw, server_hostname="localhost")
            assert raw.selected_alpn_protocol() == "h2"
        self.sock = raw
        self.authority = f"127.0.0.1:{port}"
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=strict,
            normalize_outbound_headers=strict,
            validate_inbound_headers=True,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        if window is not None and window > 65535:
            self.conn.increment_flow_control_window(window - 65535)
        self.ack = ack  # give the server's DATA back to its window as it arrives
        self.replies: dict[int, Reply] = {}
        self.goaway: int | None = None
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if not data:
            return
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            # The server ended the connection (GOAWAY, then close) while this client was
            # still writing: what it sent before closing is still to be read.
            while not self.closed:
                self.pump(0.5)

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        end: bool = True,
        authority: str | None = None,
        pseudo: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        block: list[tuple[bytes, bytes]] = list(
            pseudo
            if pseudo is not None
            else [
                (b":method", method.encode()),
                (b":scheme", b"http"),
                (b":authority", (authority or self.authority).encode()),
                (b":path", path.encode()),
            ]
        )
        block += [(k.encode(), v.encode("latin-1")) for k, v in headers]
        self.replies[sid] = Reply()
        self.conn.send_headers(sid, block, end_stream=end and body is None)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        """DATA frames as the server's windows and frame size allow."""
        view = memoryview(body)
        deadline = time.monotonic() + 30
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                assert time.monotonic() < deadline, "the server opened no window"
                self.pump(0.2)
                continue
            chunk, view = view[:room], view[room:]
            self.conn.send_data(sid, chunk.tobytes(), end_stream=end and not view)
            self.flush()
        if end and not body:
            self.conn.end_stream(sid)
            self.flush()

    def get(self, path: str, timeout: float = 30, **kw: object) -> Reply:
        sid = self.request(path, **kw)  # type: ignore[arg-type]
        self.wait(lambda: self.done(sid), timeout)
        return self.replies[sid]

    def done(self, sid: int) -> bool:
        reply = self.replies[sid]
        return reply.ended or reply.reset is not None or self.closed

    def wait(self, until: Callable[[], bool], timeout: float = 30) -> None:
        """Read and handle the server's frames until `until()` or the timeout (fails)."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for the server"
            self.pump(min(left, 1.0))

    def pump(self, timeout: float) -> None:
        if self.closed:
            return
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except (TimeoutError, ssl.SSLWantReadError):
            return
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.closed = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            self._event(event)
        try:
            self.flush()
        except OSError:
            self.closed = True

    def _event(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        reply = self.replies.get(sid)
        if isinstance(event, h2.events.ResponseReceived) and reply is not None:
            reply.headers = list(event.headers)
        elif isinstance(event, h2.events.InformationalResponseReceived) and reply is not None:
            reply.interims.append(list(event.headers))
        elif isinstance(event, h2.events.TrailersReceived) and reply is not None:
            reply.trailers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if reply is not None:
                reply.body += event.data
            if self.ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded) and reply is not None:
            reply.ended = True
            reply.ended_at = time.monotonic()
        elif isinstance(event, h2.events.StreamReset) and reply is not None:
            reply.reset = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code)

    def open_window(self, sid: int, size: int) -> None:
        self.conn.increment_flow_control_window(size, sid)
        self.flush()

    def close(self) -> None:
        self.sock.close()


def read_frames(sock: socket.socket, timeout: float = 20) -> list[tuple[int, int, int, bytes]]:
    """The server's frames until it closes (or `timeout`): (type, flags, stream, payload)."""
    frames: list[tuple[int, int, int, bytes]] = []
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 20)
        except (TimeoutError, ssl.SSLWantReadError):
            break
        except OSError:
            data = b""
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            frames.append((kind, flags, stream, buf[9 : 9 + length]))
            buf = buf[9 + length :]
    return frames


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


def preface(sock: socket.socket, settings: dict[int, int] | None = None) -> None:
    """The client's preface and SETTINGS, by hand."""
    body = b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items())
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0, body))


__all__ = ["H2Client", "Reply", "SettingCodes", "frame", "goaway_code", "preface", "read_frames"]
