"""The hit fast path (edge.pipeline.fastpath) gives the bytes the general path gives, and every
per-request rule still holds on it: freshness, purges, rate limits, header rules,
conditionals and ranges (which go the general way), closing and pipelining.

The general path's answer to the same request is had by adding a field outside the
fast path's ordinary set (`X-General`), which changes nothing else about a hit.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory
from tests.support.guardkit import connect, exchange, read_all, status_of, statuses, write_config
from tests.support.procs import Proc

_TIMING = re.compile(rb"(\r\nAge: )(\d+)|(; ttl=)(\d+)")


def start(node: NodeFactory, upstream: Proc, tmp_path: Path, **settings) -> tuple[Proc, int]:
    config = write_config(tmp_path / "fast.toml", admin_token="t", **settings)
    proc = node("serve", "--upstream", upstream.url, "--config", str(config), name="fast")
    return proc, proc.port


def request(target: str, *fields: str, close: bool = True) -> bytes:
    extra = "".join(f"{f}\r\n" for f in fields)
    conn = "Connection: close\r\n" if close else ""
    return f"GET {target} HTTP/1.1\r\nHost: archive.test\r\n{extra}{conn}\r\n".encode()


def timing(response: bytes) -> tuple[bytes, list[int]]:
    """The response with Age and ttl blanked, and their values."""
    values = [int(m.group(2) or m.group(4)) for m in _TIMING.finditer(response)]
    return _TIMING.sub(lambda m: (m.group(1) or m.group(3)) + b"N", response), values


def fast_count(proc: Proc) -> int:
    time.sleep(0.05)  # access lines are written a loop turn later (edge.observe.accesslog)
    return proc.output().count("walk=fast")


CASES = {
    "binary": ("/b/1?size=1024", ()),
    "text, no Accept-Encoding": ("/t/1?size=4000&text=1&ctype=text/plain", ()),
    "text, gzip stored variant": (
        "/t/2?size=4000&text=1&ctype=text/plain",
        ("Accept-Encoding: gzip, br",),
    ),
    "Vary on Accept-Language": ("/v/1?vary=Accept-Language", ("Accept-Language: fr",)),
    # Shared only on the node's opt-in (set_cookie, edge.rfc.policy.is_storable).
    "explicit cookie": ("/c/1?cc=max-age%3D600&cookie=a%3Db", ("User-Agent: curl/8",)),
    "targeted field": ("/d/1?cc=no-cache&cdncc=max-age%3D600", ()),
    "empty body": ("/e/1?size=0", ()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_answers_are_the_general_answers(
    node: NodeFactory, upstream: Proc, tmp_path: Path, case: str
) -> None:
    opt_in = {"set_cookie": "explicit"} if case == "explicit cookie" else {}
    proc, port = start(node, upstream, tmp_path, **opt_in)
    target, fields = CASES[case]
    for _ in range(3):  # a miss, general hits (the last one is kept), ...
        exchange(port, request(target, *fields))
    if case == "text, gzip stored variant":
        # The encoding made by the node is kept once made at its strong level (in
        # the background); from then on it is hot like any stored response.
        for _ in range(50):
            if b"; hit" in exchange(port, request(target, *fields))[0] and fast_count(proc):
                break
            time.sleep(0.1)
    before = fast_count(proc)
    for _ in range(5):
        fast, _ = exchange(port, request(target, *fields))
        general, _ = exchange(port, request(target, *fields, "X-General: 1"))
        (fast_bytes, fast_times), (general_bytes, general_times) = timing(fast), timing(general)
        assert status_of(fast) == 200 and b"; hit" in fast
        assert fast_bytes == general_bytes, (fast, general)
        assert all(abs(a - b) <= 1 for a, b in zip(fast_times, general_times, strict=True))
    if case == "Vary on Accept-Language":
        # Selecting fields other than Accept-Encoding are not in the hot key: never fast.
        assert fast_count(proc) == before
        other, _ = exchange(port, request(target, "Accept-Language: de"))
        assert b"X-Echo: de" in other
    else:
        assert fast_count(proc) - before >= 4, proc.output()[-2000:]


def test_keep_alive_and_pipelining(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    proc, port = start(node, upstream, tmp_path)
    for _ in range(2):
        exchange(port, request("/k?size=100"))
    with connect(port) as sock:
        for _ in range(3):  # one at a time on a kept-alive connection
            sock.sendall(request("/k?size=100", close=False))
            data = b""
            while data.count(b"\r\n\r\n") < 1 or len(data.split(b"\r\n\r\n", 1)[1]) < 100:
                data += sock.recv(65536)
            assert status_of(data) == 200
        # Pipelined: both answered, in order (the general way).
        sock.sendall(request("/k?size=100", close=False) + request("/other?size=7"))
        data, closed = read_all(sock, timeout=5)
    assert statuses(data) == [200, 200] and closed
    assert data.index(b"Content-Length: 100") < data.index(b"Content-Length: 7")
    assert fast_count(proc) >= 3


def test_http_10_and_close(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    _, port = start(node, upstream, tmp_path)
    for _ in range(2):
        exchange(port, request("/h?size=10"))
    response, closed = exchange(port, request("/h?size=10"))  # Connection: close
    assert status_of(response) == 200 and closed
    response, closed = exchange(port, b"GET /h?size=10 HTTP/1.0\r\nHost: archive.test\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 200") and closed


def test_conditionals_and_ranges_go_the_general_way(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    _, port = start(node, upstream, tmp_path)
    target = "/cr?size=1000&etag=%22v1%22"
    for _ in range(3):
        exchange(port, request(target))
    assert status_of(exchange(port, request(target, 'If-None-Match: "v1"'))[0]) == 304
    response, _ = exchange(port, request(target, "Range: bytes=0-9"))
    assert status_of(response) == 206 and b"Content-Length: 10\r\n" in response
    response, _ = exchange(port, request(target, "Cache-Control: no-cache"))
    assert b"fwd=request" in response


def test_freshness_ends_on_time(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    _, port = start(node, upstream, tmp_path)
    target = "/f?cc=max-age%3D2"
    for _ in range(3):
        exchange(port, request(target))
    assert b"; hit" in exchange(port, request(target))[0]
    time.sleep(2.2)
    response, _ = exchange(port, request(target))
    assert b"; hit" not in response and b"fwd=stale" in response


def test_a_purge_empties_the_hot_tier(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    _, port = start(node, upstream, tmp_path)
    target = "/p?size=50"
    for _ in range(3):
        exchange(port, request(target))
    assert b"; hit" in exchange(port, request(target))[0]
    purge = b"PURGE /p?size=50 HTTP/1.1\r\nHost: archive.test\r\nAuthorization: Bearer t\r\n\r\n"
    assert status_of(exchange(port, purge)[0]) == 200
    response, _ = exchange(port, request(target))
    assert b"fwd=uri-miss" in response


def test_rate_limits_and_header_rules_hold(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    _, port = start(
        node, upstream, tmp_path, rate_limit=1.0, rate_burst=4, rate_tarpit=0, trusted_proxies=[]
    )
    target = "/r?size=20"
    codes = [status_of(exchange(port, request(target))[0]) for _ in range(6)]
    assert codes[:4] == [200] * 4 and 429 in codes[4:], codes
    time.sleep(2.1)
    response, _ = exchange(port, request(target, "User-Agent: ${jndi:ldap://x/a}"))
    assert status_of(response) == 403


def test_repeated_bytes_skip_the_parser_only_at_a_message_boundary(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    """A kept-alive client repeating its request is answered from the remembered parse
    of those bytes; bytes that arrive while llhttp holds part of a message are parsed."""
    proc, port = start(node, upstream, tmp_path)
    hot = request("/m?size=100", close=False)
    for _ in range(3):
        exchange(port, request("/m?size=100"))
    before = fast_count(proc)

    def one(sock, data: bytes) -> bytes:
        sock.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 100:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        return got

    with connect(port) as sock:
        answers = [one(sock, hot) for _ in range(6)]
        general = one(sock, request("/m?size=100", "X-General: 1", close=False))
        # The same request split in two: parsed, answered the same.
        sock.sendall(hot[:-2])
        time.sleep(0.2)
        answers.append(one(sock, hot[-2:]))
        # A request line left waiting, then the remembered bytes: they are the rest of
        # that head (an invalid field line), not a request of their own.
        sock.sendall(b"GET /other?size=7 HTTP/1.1\r\n")
        time.sleep(0.2)
        sock.sendall(hot)
        tail, closed = read_all(sock, timeout=5)
    for answer in answers:
        assert timing(answer)[0] == timing(general)[0]  # Connection: close only when asked
    assert fast_count(proc) - before >= 6
    assert statuses(tail) == [400] and closed and b"Content-Length: 100" not in tail
