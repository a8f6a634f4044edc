"""The front door at real nodes, alone and as edge -> shield -> origin: a Host is one
authority or a 400 on every listener; unkeyed fields (X-Forwarded-Host from anyone,
names with "_") never shape a stored response; a head over 32 KiB gets 431 and an
idle connection is closed in 5 s; HTTP/1.x minors are HTTP/1.1, HTTP/2 gets a 505 in
HTTP/1.1 and plain HTTP on a TLS port a 400 that says so; field names are spelled one
way on every answer.

Raw sockets send what an HTTP library would not; the test upstream's echo shows what
reached the origin.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edge.server.tls import LocalCA
from tests.integration.conftest import NodeFactory
from tests.support.guardkit import connect, exchange, read_all, status_of, write_config
from tests.support.procs import Proc, free_port
from tests.support.tlsnodes import tls_edge

SITE = "site.test"
TOKEN = "front-door-admin"


@dataclass
class Tiers:
    """An edge on the origin (one tier), and an edge on a shield on the origin."""

    alone: Proc
    shield: Proc
    front: Proc  # the edge in front of the shield

    @property
    def all(self) -> list[Proc]:
        return [self.alone, self.shield, self.front]


def tiers(node: NodeFactory, origin_url: str, *extra: str) -> Tiers:
    # Loopback is where the test client is: trusted here, so that the test can send
    # what a trusted proxy would.
    trust = ("--trusted-proxy", "127.0.0.0/8")
    env = {"EDGE_ADMIN_TOKEN": TOKEN}
    shield = node("shield", "--origin", origin_url, *trust, *extra, name="fd-shield", env=env)
    return Tiers(
        node("serve", "--origin", origin_url, *trust, *extra, name="fd-alone", env=env),
        shield,
        node("serve", "--shield", shield.url, *trust, *extra, name="fd-front", env=env),
    )


def origin_total(upstream: Proc) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_total", timeout=5) as resp:
        return int(json.loads(resp.read())["count"])


def request(target: str, *fields: str, version: str = "HTTP/1.1", close: bool = True) -> bytes:
    lines = "".join(f"{f}\r\n" for f in fields)
    end = "Connection: close\r\n" if close else ""
    return f"GET {target} {version}\r\n{lines}{end}\r\n".encode()


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


# -- 1. Host ---------------------------------------------------------------------------

BAD_HOSTS = ["a b", "h/a", "h?a", "h#a", "user@h", "", "h:99999", "h:x", "h\tb"]


def test_a_host_is_one_authority_or_a_400_at_every_tier_and_listener(
    node: NodeFactory, upstream: Proc
) -> None:
    t = tiers(node, upstream.url)
    before = origin_total(upstream)
    for proc in t.all:
        for host in BAD_HOSTS:
            answer, closed = exchange(proc.port, request("/b?cc=no-store", f"Host: {host}"))
            assert status_of(answer) == 400 and closed, (proc.port, host, answer[:200])
        two = request("/b", "Host: h", "Host: h")
        assert status_of(exchange(proc.port, two)[0]) == 400
        # Absolute-form's authority is checked alike.
        absolute = b"GET http://h:99999/b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        assert status_of(exchange(proc.port, absolute)[0]) == 400
        # The node's own endpoints are on the same listener: the same rule.
        health = request("/_edge/health", "Host: a b")
        assert status_of(exchange(proc.port, health)[0]) == 400
        # PURGE by URL builds the URL from Host: h/a would purge the key of h + /a/b.
        purge = request("/b", "Host: h/a", f"Authorization: Bearer {TOKEN}").replace(
            b"GET ", b"PURGE ", 1
        )
        assert status_of(exchange(proc.port, purge)[0]) == 400
    assert origin_total(upstream) == before  # nothing of it was forwarded
    # An empty port is no port (RFC 3986 Section 6.2.3): one key, the second a hit.
    for proc in (t.alone, t.front):
        first = exchange(proc.port, request("/norm", f"Host: {SITE}"))[0]
        second = exchange(proc.port, request("/norm", f"Host: {SITE}:"))[0]
        assert status_of(first) == 200 and status_of(second) == 200
        assert b"hit" in second.partition(b"Cache-Status:")[2].split(b"\r\n")[0], second[:400]
    # A hot hit (edge.pipeline.fastpath) answers a good Host only: a second Host line is a 400.
    for _ in range(3):
        assert status_of(exchange(t.front.port, request("/hot", f"Host: {SITE}"))[0]) == 200
    answer, closed = exchange(t.front.port, request("/hot", f"Host: {SITE}", "Host: evil.test"))
    assert status_of(answer) == 400 and closed


# -- 2. unkeyed fields -------------------------------------------------------------------


async def test_x_forwarded_host_is_the_keyed_host_and_underscored_fields_stay_home(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    t = tiers(node, upstream.url)
    forged = {
        "Host": SITE,
        "X-Forwarded-Host": "evil.example",  # from a trusted proxy: still not forwarded
        "X_Original_URL": "/evil",
        "X_Forwarded_Host": "evil.example",
    }
    async with aiohttp.ClientSession() as session:
        for i, proc in enumerate(t.all):
            url = f"{proc.url}/fwd{i}?echo=1"
            async with session.get(url, headers=forged) as resp:
                assert resp.status == 200
                body = await resp.read()
            sent = json.loads(body)
            assert b"evil" not in body, (proc.port, sent)
            assert [v for k, v in sent if k.lower() == "x-forwarded-host"] == [SITE]
            assert not [k for k, _ in sent if "_" in k]
            # What was stored is what any client gets: clean.
            async with session.get(url, headers={"Host": SITE}) as resp:
                assert "hit" in resp.headers["Cache-Status"].split(",")[-1]
                assert await resp.read() == body
    # underscores_in_headers keeps them, for an origin that needs one.
    config = write_config(tmp_path / "keep.toml", underscores_in_headers=True)
    keep = node("serve", "--origin", upstream.url, "--config", str(config), name="fd-keep")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{keep.url}/kept?echo=1&cc=no-store", headers=forged) as resp,
    ):
        sent = json.loads(await resp.read())
    assert ["X_Original_URL", "/evil"] in sent


# -- 3. limits ---------------------------------------------------------------------------


def seconds_until_closed(port: int, first: bytes = b"", limit: float = 12.0) -> float:
    """Connect, send `first` (and read its answer), then wait: seconds until closed."""
    with connect(port) as sock:
        if first:
            sock.sendall(first)
            sock.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
        started = time.monotonic()
        _, closed = read_all(sock, limit)
        return time.monotonic() - started if closed else float("inf")


def slow_head(port: int) -> bytes:
    """A head sent in three parts over 6 s: longer than the idle timeout, within the
    head timeout (header_timeout, 10 s)."""
    with connect(port, timeout=10) as sock:
        for part in (b"GET /slow HTTP/1.1\r\n", f"Host: {SITE}\r\n".encode(), b"\r\n"):
            sock.sendall(part)
            time.sleep(3)
        return sock.recv(65536)


def test_heads_over_32k_get_431_and_idle_connections_close_within_5s(
    node: NodeFactory, upstream: Proc
) -> None:
    t = tiers(node, upstream.url)
    pads = [f"X-Pad-{i}: {'p' * 7000}" for i in range(6)]  # ~42 KiB of fields
    for proc in t.all:
        answer, _ = exchange(proc.port, request("/big", f"Host: {SITE}", *pads))
        assert status_of(answer) == 431, (proc.port, answer[:200])
        answer, _ = exchange(proc.port, request("/big", f"Host: {SITE}", *pads[:3]))
        assert status_of(answer) == 200, (proc.port, answer[:200])
    keepalive = request("/idle", f"Host: {SITE}", close=False)
    with ThreadPoolExecutor(8) as pool:
        silent = [pool.submit(seconds_until_closed, p.port) for p in t.all]
        idle = [pool.submit(seconds_until_closed, p.port, keepalive) for p in t.all]
        slow = [pool.submit(slow_head, p.port) for p in (t.alone, t.shield)]
        for future in silent + idle:
            assert 3.0 < future.result() < 8.0
        for future in slow:
            assert future.result().startswith(b"HTTP/1.1 200"), future.result()[:200]


# -- 4. versions -------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
REFUSED_H2 = b"HTTP/1.1 505 HTTP Version Not Supported\r\n"


def test_http_1x_minors_are_11_and_http2_gets_a_505_in_http11(
    node: NodeFactory, upstream: Proc
) -> None:
    t = tiers(node, upstream.url)
    for proc in t.all:
        answer, _ = exchange(proc.port, request("/v12", f"Host: {SITE}", version="HTTP/1.2"))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), (proc.port, answer[:200])
        for refused in (PREFACE, request("/v2", f"Host: {SITE}", version="HTTP/2.0")):
            answer, closed = exchange(proc.port, refused)
            assert answer.startswith(REFUSED_H2) and closed, (proc.port, answer[:200])
    # Through both tiers: the front edge forwards it as HTTP/1.1 to the shield.
    answer, _ = exchange(t.front.port, request("/v12b", f"Host: {SITE}", version="HTTP/1.9"))
    assert answer.startswith(b"HTTP/1.1 200") and b"fd-shield; fwd=" in answer


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path / "tls")


async def test_plain_http_on_a_tls_port_gets_a_400_that_says_so(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA, node: NodeFactory
) -> None:
    pair = ca.issue("door", [SITE], ["127.0.0.1"])
    shield = tls_edge(
        procs, tmp_path, upstream.url, [pair], ca.cert_path, name="tls-s", kind="shield"
    )
    redirect_port = free_port()
    redirect = tls_edge(
        procs,
        tmp_path,
        upstream.url,
        [pair],
        ca.cert_path,
        "--http-redirect",
        f"127.0.0.1:{redirect_port}",
        name="tls-r",
    )
    # The redirect listener holds Host to the same rule.
    for host in ("a b", "h/a", "user@h"):
        answer, _ = exchange(redirect_port, request("/r", f"Host: {host}"))
        assert status_of(answer) == 400, (host, answer[:200])
    assert status_of(exchange(redirect_port, request("/r", f"Host: {SITE}"))[0]) == 308
    front = node(
        "serve",
        "--shield",
        f"https://127.0.0.1:{shield.port}",
        "--upstream-ca",
        str(ca.cert_path),
        name="fd-tls-front",
    )
    for proc in (shield, redirect):
        answer, closed = exchange(proc.port, request("/plain", f"Host: {SITE}"))
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
        assert b"The plain HTTP request was sent to HTTPS port" in body_of(answer)
        assert closed
    # TLS itself is untouched: a client, and an edge in front of the TLS shield.
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    tls_client = aiohttp.TCPConnector(ssl=ctx)
    site = {"Host": SITE}
    async with (
        aiohttp.ClientSession(connector=tls_client) as session,
        session.get(f"https://127.0.0.1:{shield.port}/t", headers=site) as resp,
    ):
        assert resp.status == 200
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{front.url}/t2", headers=site) as resp,
    ):
        assert resp.status == 200 and "tls-s; fwd=" in resp.headers["Cache-Status"]
    # A silent TLS-port connection is closed like a plain one.
    assert seconds_until_closed(shield.port) < 8.0


# -- 5. field names and the start-up line ---------------------------------------------------


class EtagOrigin:
    """An origin that spells the field "Etag" (as aiohttp's FileResponse does), with
    a cacheable text body and 304s for a matching If-None-Match."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        body = b"the archive keeps books for readers everywhere " * 40
        buf = b""
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                common = (
                    b'Etag: "v1"\r\nCache-Control: public, max-age=600\r\n'
                    b"Content-Type: text/plain\r\n"
                )
                if b'if-none-match: "v1"' in head.lower():
                    conn.sendall(b"HTTP/1.1 304 Not Modified\r\n" + common + b"\r\n")
                else:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\n"
                        + common
                        + b"Content-Length: %d\r\n\r\n" % len(body)
                        + body
                    )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def etag_origin() -> Iterator[EtagOrigin]:
    origin = EtagOrigin()
    yield origin
    origin.close()


def test_field_names_are_spelled_one_way_and_the_start_line_names_the_role_once(
    node: NodeFactory, etag_origin: EtagOrigin
) -> None:
    t = tiers(node, etag_origin.url)
    host = f"Host: {SITE}"
    for proc in t.all:
        answers = [
            exchange(proc.port, request("/e", host))[0],  # miss
            exchange(proc.port, request("/e", host))[0],  # hit
            exchange(proc.port, request("/e", host))[0],  # hot hit
            exchange(proc.port, request("/e", host, 'If-None-Match: "v1"'))[0],  # 304
            exchange(proc.port, request("/e", host, "Accept-Encoding: gzip"))[0],  # variant
        ]
        for answer in answers:
            assert b"\r\nETag: " in answer and b"\r\nEtag: " not in answer, answer[:400]
        assert [status_of(a) for a in answers] == [200, 200, 200, 304, 200]
    assert "edge fd-alone: listening on http://" in t.alone.output()
    assert "shield fd-shield: listening on http://" in t.shield.output()
    for proc in t.all:
        assert "edge edge" not in proc.output() and "edge shield" not in proc.output()
