"""HTTP/2 at a real edge (edge.server.http2): ALPN h2 over TLS and h2c with prior
knowledge, driven by curl, nghttp and h2load (Debian's nghttp2-client) and by a raw h2
client (tests/support/h2client.py) for what a well-behaved client never sends: every
behaviour of the pipeline holds on HTTP/2 (Cache-Status, collapsing, ranges,
compression, purges, request bodies, the guard, the access log), a big download does
not hold up small requests on the same connection, and abuse ends in GOAWAY or a reset
stream, never in work for the node or a request forwarded upstream."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from h2.settings import SettingCodes

from edge.server.tls import LocalCA
from tests.integration.conftest import EdgeFactory
from tests.support.h2client import (
    CANCEL,
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    NO_ERROR,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    SETTINGS,
    H2Client,
    Reply,
    frame,
    goaway_code,
    preface,
    read_frames,
)
from tests.support.procs import Proc
from tests.support.tlsnodes import tls_edge
from tests.support.upstream import body_for, text_for

TOKEN = "h2-admin-token"


def count(upstream: Proc, path: str) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=10) as resp:
        return int(json.loads(resp.read())["count"])


def total(upstream: Proc) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_total", timeout=10) as resp:
        return int(json.loads(resp.read())["count"])


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl's output as latin-1 text (bodies are bytes)."""
    run = subprocess.run(["curl", "-s", *args], capture_output=True, timeout=60)
    return subprocess.CompletedProcess(
        run.args, run.returncode, run.stdout.decode("latin-1"), run.stderr.decode("latin-1")
    )


def head_of(out: str) -> dict[str, str]:
    """The last response head curl -i printed, as lower-case names."""
    head = out.split("\r\n\r\n")[0]
    status, *lines = head.split("\r\n")
    fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
    fields[":status-line"] = status
    return fields


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "h2.toml"
    path.write_text(f'admin_token = "{TOKEN}"\n{text}')
    return str(path)


def h2c(edge: EdgeFactory, upstream: Proc, tmp_path: Path, toml: str = "", *extra: str) -> Proc:
    return edge(upstream.url, "--http2", "--config", config(tmp_path, toml), *extra)


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# -- real clients -------------------------------------------------------------------------


def test_h2c_with_prior_knowledge_misses_hits_and_logs_http2(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    node = h2c(edge, upstream, tmp_path)
    url = f"{node.url}/books/h2c"
    labels = []
    for _ in range(2):
        run = curl("-i", "--http2-prior-knowledge", url)
        assert run.returncode == 0, run.stderr
        head = head_of(run.stdout)
        assert head[":status-line"].startswith("HTTP/2 200"), head
        assert run.stdout.split("\r\n\r\n", 1)[1].encode("latin-1") == body_for("/books/h2c", 1024)
        labels.append(head["cache-status"])
    assert "fwd=uri-miss" in labels[0] and "; hit" in labels[1], labels
    assert count(upstream, "/books/h2c") == 1
    # HTTP/1.1 on the same port is as before, and hits what HTTP/2 stored.
    run = curl("-i", "--http1.1", url)
    assert head_of(run.stdout)[":status-line"].startswith("HTTP/1.1 200")
    assert "; hit" in head_of(run.stdout)["cache-status"]

    def lines() -> list[str]:
        return [ln for ln in node.output().splitlines() if '"GET /books/h2c"' in ln]

    assert eventually(lambda: any(" hit " in ln and "proto=HTTP/2.0" in ln for ln in lines()))
    assert eventually(lambda: any("proto=HTTP/1.1" in ln for ln in lines()))


def test_without_the_option_a_cleartext_preface_gets_505(upstream: Proc, edge: EdgeFactory) -> None:
    node = edge(upstream.url)
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        preface(sock)
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 505"), data


def test_tls_offers_h2_then_http11_to_curl(
    procs: list[Proc], tmp_path: Path, upstream: Proc
) -> None:
    ca = LocalCA(tmp_path / "tls")
    pair = ca.issue("h2", ["localhost"], ["127.0.0.1"])
    node = tls_edge(procs, tmp_path, upstream.url, [pair], ca.cert_path)
    base = f"https://127.0.0.1:{node.port}"
    cacert = ("--cacert", str(ca.cert_path))
    run = curl(*cacert, "--http2", "-o", "/dev/null", "-w", "%{http_version}", f"{base}/t/1")
    assert run.stdout == "2", run
    run = curl(*cacert, "--http1.1", "-o", "/dev/null", "-w", "%{http_version}", f"{base}/t/1")
    assert run.stdout == "1.1", run
    # Several transfers on one connection: curl reuses it over TLS.
    urls = [f"{base}/t/{i}" for i in range(1, 4)]
    run = curl(*cacert, "--http2", *[a for u in urls for a in ("-o", "/dev/null", u)],
               "-w", "%{http_code} %{num_connects}\n")  # fmt: skip
    assert run.stdout.split("\n")[:3] == ["200 1", "200 0", "200 0"], run.stdout


@pytest.mark.system
def test_nghttp_and_h2load_over_tls(procs: list[Proc], tmp_path: Path, upstream: Proc) -> None:
    """Debian's nghttp2-client: several streams at once on one connection, and a load."""
    ca = LocalCA(tmp_path / "tls")
    pair = ca.issue("h2", ["localhost"], ["127.0.0.1"])
    node = tls_edge(procs, tmp_path, upstream.url, [pair], ca.cert_path)
    base = f"https://127.0.0.1:{node.port}"
    urls = [f"{base}/t/{i}" for i in range(1, 4)]
    # nghttp: three streams at once on one connection, each a whole answer.
    nghttp = subprocess.run(
        ["nghttp", "-ns", *urls], capture_output=True, text=True, timeout=60,
        env={"SSL_CERT_FILE": str(ca.cert_path)},
    )  # fmt: skip
    assert nghttp.returncode == 0, nghttp.stderr
    assert nghttp.stdout.count(" 200 ") == 3, nghttp.stdout
    load = subprocess.run(
        ["h2load", "-n", "400", "-c", "2", "-m", "10", f"{base}/t/1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Application protocol: h2" in load.stdout, load.stdout
    assert "400 succeeded, 0 failed, 0 errored" in load.stdout, load.stdout
    assert "status codes: 400 2xx" in load.stdout, load.stdout


def test_every_behaviour_holds_on_h2(upstream: Proc, edge: EdgeFactory, tmp_path: Path) -> None:
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port)
    # Ranges from the stored object.
    client.get("/r/obj?size=5000")
    reply = client.get("/r/obj?size=5000", headers=[("range", "bytes=100-199")])
    assert reply.status == 206 and reply.field("content-range") == "bytes 100-199/5000"
    assert bytes(reply.body) == body_for("/r/obj", 5000)[100:200]
    # A compressed variant.
    text = "/c/book?text=1&size=200000&ctype=text/plain;%20charset=utf-8"
    reply = client.get(text, headers=[("accept-encoding", "gzip")])
    assert reply.field("content-encoding") == "gzip"
    assert gzip.decompress(bytes(reply.body)) == text_for("/c/book", 200000)
    # Collapsed misses: ten streams at once for one cold object, one upstream fetch.
    sids = [client.request("/col/x?delay=1") for _ in range(10)]
    client.wait(lambda: all(client.done(s) for s in sids))
    assert all(client.replies[s].status == 200 for s in sids)
    assert count(upstream, "/col/x") == 1
    # A purge (PURGE with the admin token), then a miss again.
    auth = [("authorization", f"Bearer {TOKEN}")]
    assert client.get("/r/obj?size=5000", method="PURGE", headers=auth).status == 200
    reply = client.get("/r/obj?size=5000")
    assert "fwd=" in (reply.field("cache-status") or "") and count(upstream, "/r/obj") == 2
    # A request body passes through (exchange.Body), Via says HTTP/2 was received.
    payload = b"x" * 300_000
    reply = client.get(
        "/post/echo?reqinfo=1", method="POST", body=payload,
        headers=[("content-type", "application/octet-stream")],
    )  # fmt: skip
    info = json.loads(bytes(reply.body))
    assert reply.status == 200 and info["method"] == "POST", info
    assert info["body_length"] == len(payload), info
    via = {k.lower(): v for k, v in info["headers"]}.get("via", "")
    assert via.endswith(f"2 {'edge-test'}"), via
    # The node's own endpoints, through the same exchange.
    reply = client.get("/_edge/metrics", headers=auth)
    assert reply.status == 200 and b"edge_requests_total" in reply.body
    client.close()


def test_h2_hits_take_the_fast_path_with_the_general_answers_fields(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    """The hot tier answers HTTP/2 as it answers HTTP/1.1 (edge.pipeline.fastpath): the
    same fields as the general path's answer but for Age and the ttl; and a connection
    busy with such hits (no stream task) is not closed as idle."""
    node = h2c(edge, upstream, tmp_path, "keepalive_timeout = 1\n")
    client = H2Client(node.port)
    miss = client.get("/hot/x")
    general = client.get("/hot/x")  # a plain hit: offered to the hot tier
    assert "; hit" in (general.field("cache-status") or "")

    def timeless(reply: Reply) -> list[tuple[bytes, bytes]]:
        return [(k, v.split(b"; ttl=")[0]) for k, v in reply.headers if k != b"age"]

    started = time.monotonic()
    fast = []
    while time.monotonic() - started < 2.5:  # longer than keepalive_timeout
        fast.append(client.get("/hot/x"))
        time.sleep(0.2)
    assert client.goaway is None and not client.closed
    assert all(r.status == 200 and bytes(r.body) == bytes(miss.body) for r in fast)
    assert all(timeless(r) == timeless(general) for r in fast)
    # The first may still go the general way: the hot tier takes the general answer's
    # offer once that answer is written.
    assert eventually(lambda: node.output().count("proto=HTTP/2.0 walk=fast") >= len(fast) - 1)
    # Idle now: GOAWAY (NO_ERROR) after keepalive_timeout.
    client.wait(lambda: client.goaway is not None or client.closed, timeout=10)
    assert client.goaway == NO_ERROR


def test_a_big_download_does_not_hold_up_small_requests_beside_it(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    """64 MiB (a 1 GiB download's behaviour at a size a loaded test machine moves in
    seconds): stored first, then read from the store in window-sized spans while
    small requests on the same connection are answered in between."""
    size = 64 << 20
    node = h2c(edge, upstream, tmp_path, "", "--max-object-size", "256M")
    path = f"/big/file.bin?size={size}"
    warm = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                f"{node.url}{path}")  # fmt: skip
    assert warm.stdout == "200", warm
    client = H2Client(node.port, window=64 << 20)
    started = time.monotonic()
    big = client.request(path)
    client.wait(lambda: len(client.replies[big].body) > (4 << 20))
    small_took = []
    for i in range(10):
        t0 = time.monotonic()
        reply = client.get(f"/small/{i}")
        small_took.append(time.monotonic() - t0)
        assert reply.status == 200 and len(reply.body) == 1024
    assert not client.replies[big].ended, "the small requests came after the big one ended"
    client.wait(lambda: client.done(big), timeout=120)
    took = time.monotonic() - started
    reply = client.replies[big]
    assert reply.ended and reply.status == 200 and len(reply.body) == size
    expected = hashlib.sha256(body_for("/big/file.bin", size)).hexdigest()
    assert hashlib.sha256(bytes(reply.body)).hexdigest() == expected
    print(f"64 MiB in {took:.2f}s ({size / took / 1e6:.0f} MB/s); small: {max(small_took):.3f}s")
    assert max(small_took) < 5, small_took


# -- abuse ------------------------------------------------------------------------------


def test_rapid_reset_ends_in_enhance_your_calm(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    """CVE-2023-44487: streams opened and reset at once, in a loop."""
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port)
    for i in range(1000):
        sid = client.request(f"/rr/{i}?delay=2")
        if client.closed or client.goaway is not None:
            break  # the node ended the connection while this request was being sent
        client.conn.reset_stream(sid, CANCEL)
        client.flush()
        if i % 50 == 0:
            client.pump(0.01)
        if client.closed or client.goaway is not None:
            break
    client.wait(lambda: client.goaway is not None or client.closed)
    assert client.goaway == ENHANCE_YOUR_CALM
    # Far fewer than the streams opened reached upstream, and the node serves on.
    assert total(upstream) < 400
    assert H2Client(node.port).get("/after/rr").status == 200


def _open_stream(port: int) -> socket.socket:
    """A raw connection after the preface, with stream 1 open for a body."""
    client = H2Client(port)
    client.request("/flood", method="POST", end=False)
    return client.sock


def _settings(_: socket.socket) -> bytes:
    return frame(SETTINGS, 0, 0)


def _ping(_: socket.socket) -> bytes:
    return frame(PING, 0, 0, b"12345678")


def _priority(_: socket.socket) -> bytes:
    return frame(PRIORITY, 0, 3, b"\x00\x00\x00\x00\x10")


def _empty_data(_: socket.socket) -> bytes:
    return frame(DATA, 0, 1)


@pytest.mark.parametrize(
    ("what", "make", "count_"),
    [
        ("settings", _settings, 500),
        ("ping", _ping, 500),
        ("priority", _priority, 5000),
        ("empty-data", _empty_data, 1000),
    ],
)
def test_frame_floods_end_in_enhance_your_calm(
    upstream: Proc,
    edge: EdgeFactory,
    tmp_path: Path,
    what: str,
    make: Callable[[socket.socket], bytes],
    count_: int,
) -> None:
    node = h2c(edge, upstream, tmp_path)
    sock = _open_stream(node.port)
    with contextlib.suppress(OSError):  # closed while sending: the frames read say why
        sock.sendall(make(sock) * count_)
    frames = read_frames(sock)
    assert goaway_code(frames) == ENHANCE_YOUR_CALM, (what, frames[-3:])
    sock.close()


def test_a_continuation_flood_is_bounded(upstream: Proc, edge: EdgeFactory, tmp_path: Path) -> None:
    node = h2c(edge, upstream, tmp_path)
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        preface(sock)
        # A header block that never ends: HEADERS without END_HEADERS, then endless
        # CONTINUATION frames of a literal field.
        piece = b"\x00\x01a\x7f\x81\x7f" + b"b" * 16000
        sock.sendall(frame(HEADERS, 0, 1, b"\x82\x86\x84"))
        sent = 0
        try:
            for _ in range(400):
                sock.sendall(frame(CONTINUATION, 0, 1, piece[:16000]))
                sent += 1
        except OSError:
            pass
        started = time.monotonic()
        frames = read_frames(sock)
    # h2 keeps at most 64 CONTINUATION frames of one block, then ends the connection.
    assert goaway_code(frames) == PROTOCOL_ERROR, frames[-3:]
    assert frames[-1][0] == GOAWAY and time.monotonic() - started < 15
    assert sent < 400 or goaway_code(frames) == PROTOCOL_ERROR
    assert total(upstream) == 0


def test_an_hpack_bomb_is_refused_by_the_header_list_size(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port, strict=False)
    client.pump(1.0)  # the server's SETTINGS (its header list size), acknowledged
    # One 4000-byte field, then the same field by index: a small block decoding big.
    headers = [("x-bomb", "a" * 4000)] * 100
    sid = client.request("/bomb", headers=headers)
    client.wait(lambda: client.done(sid) or client.goaway is not None)
    # hpack's decoder stops at the advertised size: h2 ends the connection.
    assert client.goaway == ENHANCE_YOUR_CALM and not client.replies[sid].headers
    assert count(upstream, "/bomb") == 0


def test_a_zero_window_reader_is_reset_after_send_timeout(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    node = h2c(edge, upstream, tmp_path, "", "--send-timeout", "1")
    client = H2Client(node.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    started = time.monotonic()
    sid = client.request("/slow/reader?size=500000")
    client.wait(lambda: client.done(sid), timeout=20)
    reply = client.replies[sid]
    assert reply.reset == CANCEL and not reply.body, reply
    assert time.monotonic() - started < 15
    # The connection serves on: a stream with a window gets its answer.
    client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    client.flush()
    assert client.get("/after/reader").status == 200


def test_streams_count_against_the_guards_per_client_limit(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    node = h2c(edge, upstream, tmp_path, "max_connections_per_client = 3\n")
    client = H2Client(node.port)
    sids = [client.request(f"/pc/{i}?delay=1.5") for i in range(5)]
    client.wait(lambda: all(client.done(s) for s in sids))
    refused = [s for s in sids if client.replies[s].reset == REFUSED_STREAM]
    answered = [s for s in sids if client.replies[s].ended]
    assert len(answered) == 3 and len(refused) == 2, client.replies
    # Their places are given back: the next ones are served.
    assert client.get("/pc/later").status == 200
    # HTTP/1.1 connections and h2 streams share the count: three h2 streams busy,
    # an HTTP/1.1 connection is refused.
    busy = [client.request(f"/pc/b{i}?delay=2") for i in range(3)]
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(b"GET /pc/h1 HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    assert answer == b"", answer
    client.wait(lambda: all(client.done(s) for s in busy))


def test_streams_still_being_served_are_bounded_reset_ones_included(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    """A stream the client resets is closed for h2 but may still be served (a fill
    carries on for others): the node serves at most max_streams at once, and refuses
    more with REFUSED_STREAM (RFC 9113 Section 8.7: not processed, safe to retry)."""
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port)
    client.pump(1.0)
    first = [client.request(f"/many/{i}?delay=3") for i in range(100)]
    for sid in first[:20]:
        client.conn.reset_stream(sid, CANCEL)
    client.flush()
    more = [client.request(f"/more/{i}?delay=3") for i in range(20)]
    client.wait(lambda: all(client.done(s) for s in first[20:] + more), timeout=60)
    assert all(client.replies[s].reset == REFUSED_STREAM for s in more)
    assert all(client.replies[s].status == 200 for s in first[20:])
    assert total(upstream) == 100
    assert client.get("/many/after").status == 200


def test_the_rate_limit_counts_streams(upstream: Proc, edge: EdgeFactory, tmp_path: Path) -> None:
    node = h2c(edge, upstream, tmp_path, "rate_limit = 1\nrate_burst = 5\nrate_tarpit = 0\n")
    client = H2Client(node.port)
    sids = [client.request(f"/rl/{i}") for i in range(12)]
    client.wait(lambda: all(client.done(s) for s in sids))
    statuses = sorted(client.replies[s].status for s in sids)
    assert statuses.count(429) >= 6 and statuses.count(200) <= 6, statuses


BAD_BLOCKS = {
    "uppercase-name": [("X-Upper", "1")],
    "connection-field": [("connection", "keep-alive")],
    "te-not-trailers": [("te", "gzip")],
    "transfer-encoding": [("transfer-encoding", "chunked")],
    "cr-lf-in-value": [("x-split", "a\r\nx-injected: 1")],
    "nul-in-value": [("x-nul", "a\x00b")],
    "host-not-authority": [("host", "other.example")],
}


PSEUDO = {
    "unknown-pseudo": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/p"),
                       (b":authority", b"a"), (b":foo", b"1")],
    "missing-path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],
    "pseudo-after-field": [(b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"),
                           (b":path", b"/p"), (b":authority", b"a")],
    "two-paths": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/p"),
                  (b":path", b"/q"), (b":authority", b"a")],
}  # fmt: skip


def test_malformed_requests_reset_their_stream_and_are_never_forwarded(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    """RFC 9113 Section 8.1.1 (edge.rfc.pseudo): each malformed block is a stream
    error, PROTOCOL_ERROR; the connection serves its other streams on."""
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port, strict=False)
    client.pump(1.0)
    cases = [(name, {"headers": fields}) for name, fields in BAD_BLOCKS.items()]
    cases += [(name, {"pseudo": block}) for name, block in PSEUDO.items()]
    for name, kw in cases:
        sid = client.request(f"/bad/{name.replace(' ', '-')}", **kw)  # type: ignore[arg-type]
        client.wait(lambda sid=sid: client.done(sid))
        assert client.replies[sid].reset == PROTOCOL_ERROR, name
        assert not client.replies[sid].headers, name
    assert client.goaway is None and not client.closed
    assert client.get("/good").status == 200
    assert total(upstream) == 1


@pytest.mark.parametrize(("declared", "sent"), [(5, 20), (50, 10)])
def test_a_content_length_that_disagrees_with_data_is_never_forwarded(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path, declared: int, sent: int
) -> None:
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port, strict=False)
    sid = client.request(
        "/smuggle", method="POST", body=b"y" * sent,
        headers=[("content-length", str(declared))],
    )  # fmt: skip
    client.wait(lambda: client.done(sid) or client.goaway is not None)
    reply = client.replies[sid]
    assert client.goaway == PROTOCOL_ERROR or reply.reset is not None, reply
    time.sleep(0.5)
    assert count(upstream, "/smuggle") == 0


def test_in_flight_streams_finish_after_the_goaway_of_a_stop(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port)
    sids = [client.request(f"/stop/{i}?delay=1.5") for i in range(3)]
    time.sleep(0.5)
    stopper = threading.Thread(target=node.stop)
    stopper.start()
    # Read as frames: h2 as a client takes nothing more once it has a GOAWAY.
    frames = read_frames(client.sock, timeout=20)
    stopper.join(timeout=30)
    kinds = [(kind, stream) for kind, _, stream, _ in frames]
    goaway = next(i for i, (kind, _) in enumerate(kinds) if kind == GOAWAY)
    assert goaway_code(frames) == NO_ERROR
    last = int.from_bytes(frames[goaway][3][:4], "big")
    assert last == sids[-1]
    for sid in sids:
        ends = [f for f in frames[goaway:] if f[2] == sid and f[0] == DATA and f[1] & 1]
        assert ends, (sid, kinds)


def test_workers_serve_h2_from_one_store(upstream: Proc, edge: EdgeFactory, tmp_path: Path) -> None:
    """Two workers on one port (SO_REUSEPORT): connections land on either, each speaks
    HTTP/2, and one object is fetched from the origin once for all of them."""
    node = h2c(edge, upstream, tmp_path, "", "--workers", "2")
    clients = [H2Client(node.port) for _ in range(8)]
    first = clients[0].get("/w/shared")
    assert first.status == 200
    for client in clients:
        reply = client.get("/w/shared")
        assert reply.status == 200 and bytes(reply.body) == bytes(first.body)
        assert "; hit" in (reply.field("cache-status") or "")
        client.close()
    assert count(upstream, "/w/shared") == 1


def test_request_trailers_are_dropped_and_the_body_forwarded(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    """RFC 9110 Section 6.5.1: trailer fields may be discarded; the upstream request is
    framed anew with its body whole, so none is forwarded."""
    node = h2c(edge, upstream, tmp_path)
    client = H2Client(node.port)
    sid = client.request("/trailers?reqinfo=1", method="POST", headers=[("te", "trailers")],
                         end=False)  # fmt: skip
    client.send_body(sid, b"t" * 5000, end=False)
    client.conn.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
    client.flush()
    client.wait(lambda: client.done(sid))
    reply = client.replies[sid]
    info = json.loads(bytes(reply.body))
    assert reply.status == 200 and info["body_length"] == 5000, info
    names = {k.lower() for k, _ in info["headers"]}
    assert "x-checksum" not in names and "te" not in names, names


def test_a_header_block_that_never_ends_is_closed_as_idle(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    """Slowloris on HTTP/2: HEADERS without END_HEADERS, then nothing. No stream is
    served, so the connection closes after keepalive_timeout."""
    node = h2c(edge, upstream, tmp_path, "keepalive_timeout = 1\n")
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        preface(sock)
        sock.sendall(frame(HEADERS, 0, 1, b"\x82\x86\x84"))
        started = time.monotonic()
        frames = read_frames(sock, timeout=15)
        took = time.monotonic() - started
    assert goaway_code(frames) == NO_ERROR and took < 10, (took, frames)
    assert total(upstream) == 0
