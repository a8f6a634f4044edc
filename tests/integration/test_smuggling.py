"""Request smuggling: every ambiguous framing is refused with 400 (or 501 for a
transfer coding edge does not implement) and the connection closed, nothing of it
reaches the origin, and what is forwarded is framed by the node itself.

The origin here is a raw socket server that records the exact bytes of each request
it receives, so the tests see the framing the origin would parse.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory
from tests.support.guardkit import exchange, status_of, statuses
from tests.support.procs import Proc


class RawOrigin:
    """Records each request's bytes; answers 200 with a small no-store body. Parses
    only what the node sends: a head, then a Content-Length body (never chunked)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(10)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    assert name.strip().lower() != b"transfer-encoding", head
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok"
                )
        except (OSError, AssertionError):
            return
        finally:
            conn.close()

    def seen(self, needle: bytes) -> list[bytes]:
        with self.lock:
            return [r for r in self.requests if needle in r]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def raw_origin() -> Iterator[RawOrigin]:
    origin = RawOrigin()
    yield origin
    origin.close()


@pytest.fixture
def edge_port(node: NodeFactory, raw_origin: RawOrigin, tmp_path: Path) -> int:
    proc: Proc = node("serve", "--upstream", raw_origin.url, name="smuggle")
    return int(proc.url.rsplit(":", 1)[1])


def head(*lines: str, target: str = "/smuggle") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: a\r\n" + "".join(f"{x}\r\n" for x in lines)).encode()


# Each variant carries the word SMUGGLED where a second request would hide, so the
# origin's record shows whether any of it got through.
VARIANTS = {
    # CL.TE / TE.CL: both framings present, in either order.
    "CL.TE": head("Content-Length: 6", "Transfer-Encoding: chunked")
    + b"\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n",
    "TE.CL": head("Transfer-Encoding: chunked", "Content-Length: 4")
    + b"\r\n5c\r\nGPOST /SMUGGLED HTTP/1.1\r\nHost: a\r\nContent-Length: 15\r\n\r\n"
    + b"x=1\r\n0\r\n\r\n",
    # TE.TE: Transfer-Encoding spelled so that one parser sees chunked, another not.
    "TE.TE xchunked": head("Transfer-Encoding: xchunked") + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE space before colon": head("Transfer-Encoding : chunked") + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE vertical tab": head("Transfer-Encoding:\x0bchunked") + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE quoted": head('Transfer-Encoding: "chunked"') + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE two fields": head("Transfer-Encoding: chunked", "Transfer-Encoding: x")
    + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE chunked then identity": head("Transfer-Encoding: chunked, identity")
    + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE trailing comma": head("Transfer-Encoding: chunked,") + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE obs-fold": head("Transfer-Encoding:", " chunked") + b"\r\n0\r\n\r\nSMUGGLED",
    "TE.TE bare LF": b"POST /smuggle HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nSMUGGLED",
    # Content-Length duplicated, listed or malformed.
    "CL twice, different": head("Content-Length: 3", "Content-Length: 20") + b"\r\nabcSMUGGLED",
    "CL twice, same": head("Content-Length: 3", "Content-Length: 3") + b"\r\nabcSMUGGLED",
    "CL list": head("Content-Length: 3, 3") + b"\r\nabcSMUGGLED",
    "CL plus sign": head("Content-Length: +3") + b"\r\nabcSMUGGLED",
    "CL hex": head("Content-Length: 0x3") + b"\r\nabcSMUGGLED",
    "CL negative": head("Content-Length: -1") + b"\r\nSMUGGLED",
    "CL space before colon": head("Content-Length : 3") + b"\r\nabcSMUGGLED",
    # Chunk sizes a lenient parser reads differently.
    "chunk size hex prefix": head("Transfer-Encoding: chunked")
    + b"\r\n0x3\r\nabc\r\n0\r\n\r\nSMUGGLED",
    "chunk size negative": head("Transfer-Encoding: chunked")
    + b"\r\n-3\r\nabc\r\n0\r\n\r\nSMUGGLED",
    "chunk size overflow": head("Transfer-Encoding: chunked")
    + b"\r\n10000000000000000000001\r\nSMUGGLED\r\n0\r\n\r\n",
    "chunk size trailing space": head("Transfer-Encoding: chunked")
    + b"\r\n3 \r\nabc\r\n0\r\n\r\nSMUGGLED",
    "chunk data too long": head("Transfer-Encoding: chunked")
    + b"\r\n3\r\nabcSMUGGLED\r\n0\r\n\r\n",
    "chunk extension bare LF": head("Transfer-Encoding: chunked")
    + b"\r\n3;a=b\nabc\r\n0\r\n\r\nSMUGGLED",
    # Line endings and folding anywhere in the head.
    "bare CR in a field": head("X-A: a\rSMUGGLED: b", "Content-Length: 0") + b"\r\n",
    "obs-fold": head("X-A: a", " SMUGGLED", "Content-Length: 0") + b"\r\n",
    "LF-only head end": head("Content-Length: 3").rstrip(b"\r\n") + b"\n\nabcSMUGGLED",
    # HTTP/1.0 with chunked: the framing is faulty by definition (RFC 9112 Section 6.1).
    "HTTP/1.0 chunked": b"POST /smuggle HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nSMUGGLED",
    # CL.0: a body on a GET, which an origin may ignore and parse as the next request.
    "CL.0 GET with a body": b"GET /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 34\r\n\r\n"
    b"GET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET with chunked body": b"GET /smuggle HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"22\r\nGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n",
    "HEAD with a body": b"HEAD /smuggle HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\nSMUGGLED",
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ambiguous_framing_is_refused_and_never_forwarded(
    edge_port: int, raw_origin: RawOrigin, name: str
) -> None:
    response, closed = exchange(edge_port, VARIANTS[name])
    assert statuses(response) in ([400], [501]), (name, response[:300])
    assert closed, f"{name}: connection left open after the refusal"
    assert b"SMUGGLED" not in response
    assert raw_origin.requests == [], raw_origin.requests


def test_unimplemented_transfer_coding_gets_501(edge_port: int, raw_origin: RawOrigin) -> None:
    response, closed = exchange(
        edge_port, head("Transfer-Encoding: gzip, chunked") + b"\r\n0\r\n\r\n"
    )
    assert status_of(response) == 501 and closed
    assert raw_origin.requests == []


def test_a_refused_request_takes_its_pipelined_successor_with_it(
    edge_port: int, raw_origin: RawOrigin
) -> None:
    data = (
        head("Content-Length: 3", "Content-Length: 4")
        + b"\r\nabcdGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    response, closed = exchange(edge_port, data)
    assert statuses(response) == [400] and closed
    assert raw_origin.requests == []


def test_chunked_bodies_are_reframed_with_content_length(
    edge_port: int, raw_origin: RawOrigin
) -> None:
    """Chunk extensions, trailers and chunk boundaries end at the node: the origin
    gets one Content-Length body and no Transfer-Encoding."""
    body = b'5;name=value\r\nhello\r\n6;a="quoted ext"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n'
    response, _ = exchange(
        edge_port, head("Transfer-Encoding: chunked", "Connection: close") + b"\r\n" + body
    )
    assert status_of(response) == 200
    (forwarded,) = raw_origin.requests
    fhead, _, fbody = forwarded.partition(b"\r\n\r\n")
    assert fbody == b"hello world"
    assert b"\r\nContent-Length: 11" in fhead
    lowered = fhead.lower()
    assert b"transfer-encoding" not in lowered and b"x-trailer" not in lowered


def test_content_length_bodies_are_forwarded_exactly(edge_port: int, raw_origin: RawOrigin) -> None:
    response, _ = exchange(edge_port, head("Content-Length: 03", "Connection: close") + b"\r\nabc")
    assert status_of(response) == 200
    (forwarded,) = raw_origin.requests
    assert forwarded.endswith(b"\r\nContent-Length: 3\r\n\r\nabc") or (
        b"\r\nContent-Length: 3\r\n" in forwarded and forwarded.endswith(b"\r\n\r\nabc")
    )


def test_two_honest_pipelined_requests_are_two_requests(
    edge_port: int, raw_origin: RawOrigin
) -> None:
    """A body that looks like a request is just a body (CL.0 from the other side)."""
    inner = b"GET /inside HTTP/1.1\r\nHost: a\r\n\r\n"
    data = (
        head(f"Content-Length: {len(inner)}")
        + b"\r\n"
        + inner
        + b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    response, _ = exchange(edge_port, data)
    assert statuses(response) == [200, 200]
    assert len(raw_origin.requests) == 2
    first, second = raw_origin.requests
    assert first.startswith(b"POST /smuggle ") and first.endswith(
        b"GET /inside HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert second.startswith(b"POST /second ")
