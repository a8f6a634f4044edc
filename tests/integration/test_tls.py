"""TLS at a real edge: HTTPS with aiohttp and curl, certificates chosen by SNI, TLS
1.2 and 1.3 only with modern ciphers, the HTTP redirect and HSTS, https upstreams
verified with a CA, one-line errors for bad files, and `edge up --tls` end to end."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from pathlib import Path

import aiohttp
import pytest

from edge.server.tls import LocalCA
from tests.support.procs import Proc, edge_cmd, free_port, start
from tests.support.proctable import matching
from tests.support.tlsnodes import tls_edge
from tests.support.upstream import body_for


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path / "tls")


def client_context(ca: LocalCA, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        for attr, version in versions.items():
            setattr(ctx, attr, version)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, server_name: str | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=server_name)


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, read one response (the head and a Content-Length body)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)", head, re.IGNORECASE)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


def peer_names(sock: ssl.SSLSocket) -> set[str]:
    cert = sock.getpeercert()
    assert cert is not None
    return {v for k, v in cert.get("subjectAltName", ()) if k == "DNS"}


async def test_https_hits_with_aiohttp_and_curl(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    pair = ca.issue("archive", ["archive.test", "localhost"], ["127.0.0.1"])
    edge = tls_edge(procs, tmp_path, upstream.url, [pair], ca.cert_path)
    base = f"https://127.0.0.1:{edge.port}"
    ctx = client_context(ca)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        for expect in ("fwd=uri-miss", "hit"):
            async with session.get(f"{base}/books/1?reqinfo=1") as resp:
                assert resp.status == 200
                assert expect in resp.headers["Cache-Status"]
                assert "Strict-Transport-Security" not in resp.headers  # not asked for
                info = await resp.json()
        seen = dict((k.lower(), v) for k, v in info["headers"])
        assert seen["x-forwarded-proto"] == "https" and "proto=https" in seen["forwarded"]
    run = subprocess.run(
        [
            "curl",
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            str(ca.cert_path),
            "--resolve",
            f"archive.test:{edge.port}:127.0.0.1",
            f"https://archive.test:{edge.port}/books/2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    # ALPN: h2 first (edge.server.http2), as curl prefers it.
    assert run.stdout.startswith("HTTP/2 200"), run.stdout
    # Without the CA, curl refuses the certificate: it is really checked.
    run = subprocess.run(
        ["curl", "-s", f"https://127.0.0.1:{edge.port}/books/2"], capture_output=True, timeout=30
    )
    assert run.returncode == 60


async def test_large_bodies_over_tls_are_whole(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """Bodies above the single-write size leave by sendfile over plain TCP; over TLS
    they must be read and encrypted (edge.server.zerocopy): miss, hit and a range, whole."""
    pair = ca.issue("archive", ["archive.test"], ["127.0.0.1"])
    edge = tls_edge(procs, tmp_path, upstream.url, [pair], ca.cert_path, name="tls-big")
    base = f"https://127.0.0.1:{edge.port}"
    size = 3 << 20
    want = body_for("/big/1", size)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(ca))) as s:
        for expect in ("fwd=uri-miss", "hit"):
            async with s.get(f"{base}/big/1?size={size}") as resp:
                assert resp.status == 200 and expect in resp.headers["Cache-Status"]
                assert await resp.read() == want
        headers = {"Range": "bytes=1000-2000999"}
        async with s.get(f"{base}/big/1?size={size}", headers=headers) as resp:
            assert resp.status == 206
            assert await resp.read() == want[1000:2001000]


def test_certificates_are_chosen_by_sni(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    first = ca.issue("archive", ["archive.test"], ["127.0.0.1"])
    second = ca.issue("books", ["books.test", "*.scans.test"], [])
    edge = tls_edge(procs, tmp_path, upstream.url, [first, second], ca.cert_path)
    ctx = client_context(ca)
    ctx.check_hostname = False  # the default certificate is checked by name below
    cases = {
        "archive.test": {"archive.test"},
        "books.test": {"books.test", "*.scans.test"},
        "maps.scans.test": {"books.test", "*.scans.test"},
        "BOOKS.test": {"books.test", "*.scans.test"},
        "a.b.scans.test": {"archive.test"},  # a wildcard is one label only
        "unknown.test": {"archive.test"},
        None: {"archive.test"},
    }
    for name, expected in cases.items():
        with handshake(edge.port, ctx, name) as sock:
            assert peer_names(sock) == expected, name
    # With hostname checking on, each name verifies against its own certificate.
    strict = client_context(ca)
    for name in ("archive.test", "books.test", "maps.scans.test"):
        with handshake(edge.port, strict, name):
            pass


def test_only_tls_12_and_13_with_modern_ciphers(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    pair = ca.issue("archive", ["archive.test"], ["127.0.0.1"])
    edge = tls_edge(procs, tmp_path, upstream.url, [pair], ca.cert_path)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(ca, minimum_version=version, maximum_version=version)
        with handshake(edge.port, ctx, "archive.test") as sock:
            assert sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
            if version == ssl.TLSVersion.TLSv1_2:
                assert "ECDHE" in sock.cipher()[0] and (
                    "GCM" in sock.cipher()[0] or "CHACHA" in sock.cipher()[0]
                )
    # TLS 1.0 and 1.1: the client is made willing (security level 0), the server refuses.
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = client_context(ca, minimum_version=version, maximum_version=version)
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError):
            handshake(edge.port, ctx, "archive.test").close()
    # TLS 1.2 offering only CBC suites, or only RSA key exchange: refused.
    for ciphers in ("ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA", "AES128-GCM-SHA256:AES256-SHA"):
        ctx = client_context(
            ca, minimum_version=ssl.TLSVersion.TLSv1_2, maximum_version=ssl.TLSVersion.TLSv1_2
        )
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
        with pytest.raises(ssl.SSLError):
            handshake(edge.port, ctx, "archive.test").close()
    # curl agrees.
    for flags in (["--tlsv1.0", "--tls-max", "1.0"], ["--tlsv1.1", "--tls-max", "1.1"]):
        run = subprocess.run(
            [
                "curl",
                "-s",
                "--cacert",
                str(ca.cert_path),
                *flags,
                "--resolve",
                f"archive.test:{edge.port}:127.0.0.1",
                f"https://archive.test:{edge.port}/x",
            ],
            capture_output=True,
            timeout=30,
        )
        assert run.returncode != 0, flags


async def test_http_redirect_and_hsts(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    pair = ca.issue("archive", ["archive.test"], ["127.0.0.1"])
    redirect_port = free_port()
    edge = tls_edge(
        procs,
        tmp_path,
        upstream.url,
        [pair],
        ca.cert_path,
        "--http-redirect",
        f"127.0.0.1:{redirect_port}",
        "--hsts",
        "31536000",
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{redirect_port}/books/1?q=a%20b",
            headers={"Host": "archive.test"},
            allow_redirects=False,
        ) as resp,
    ):
        assert resp.status == 308
        assert resp.headers["Location"] == f"https://archive.test:{edge.port}/books/1?q=a%20b"
        assert "Strict-Transport-Security" not in resp.headers  # never over plain HTTP
    ctx = client_context(ca)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"https://127.0.0.1:{edge.port}/books/1") as resp,
    ):
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
    # The same bytes over TLS, again and again (hits, from the hot tier after the
    # first), then over plain HTTP: HSTS on every TLS answer, a redirect on plain.
    head = f"GET /books/5 HTTP/1.1\r\nHost: archive.test:{edge.port}\r\n\r\n".encode()
    with handshake(edge.port, ctx, "archive.test") as sock:
        for _ in range(4):
            answer = exchange(sock, head)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert b"\r\nStrict-Transport-Security: max-age=31536000\r\n" in answer
        assert b"; hit" in answer
    with socket.create_connection(("127.0.0.1", redirect_port), timeout=5) as sock:
        answer = exchange(sock, head)
        assert answer.startswith(b"HTTP/1.1 308"), answer
        assert f"Location: https://archive.test:{edge.port}/books/5\r\n".encode() in answer
        assert b"Strict-Transport-Security" not in answer
    # Absolute-form gives its path; a Host that could make Location another URL: 400.
    for request, expect in (
        (b"GET http://archive.test/x?y=1 HTTP/1.1\r\nHost: archive.test\r\n\r\n", b"308"),
        (b"GET /x HTTP/1.1\r\nHost: evil.test/x\r\n\r\n", b"400"),
        (b"GET /x HTTP/1.1\r\nHost: a@evil.test\r\n\r\n", b"400"),
        (b"GET /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", b"308"),
    ):
        with socket.create_connection(("127.0.0.1", redirect_port), timeout=5) as sock:
            answer = exchange(sock, request)
        assert answer.startswith(b"HTTP/1.1 " + expect), (request, answer)
        if request.startswith(b"GET http:"):
            assert f"Location: https://archive.test:{edge.port}/x?y=1\r\n".encode() in answer
        if b"[::1]" in request:
            assert f"Location: https://[::1]:{edge.port}/x\r\n".encode() in answer


async def test_edge_to_shield_over_https_verified_with_a_ca(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    shield_pair = ca.issue("shield", ["localhost"], ["127.0.0.1"])
    shield = tls_edge(
        procs,
        tmp_path,
        upstream.url,
        [shield_pair],
        ca.cert_path,
        "--trusted-proxy",
        "127.0.0.1",
        name="shield",
        kind="shield",
    )
    front_pair = ca.issue("front", ["archive.test"], ["127.0.0.1"])
    port = free_port()
    cmd = edge_cmd(
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--shield",
        f"https://127.0.0.1:{shield.port}",
        "--no-origin-direct",
        "--upstream-ca",
        str(ca.cert_path),
        "--tls-cert",
        str(front_pair[0]),
        "--tls-key",
        str(front_pair[1]),
        "--cache-dir",
        str(tmp_path / "cache-front"),
        "--name",
        "front",
    )
    front = start(cmd, port, tmp_path / "front.log", "/_edge/health", ca=str(ca.cert_path))
    procs.append(front)
    connector = aiohttp.TCPConnector(ssl=client_context(ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        for expect in ("shield; fwd=uri-miss", "front; hit"):
            async with session.get(f"https://127.0.0.1:{port}/books/9?reqinfo=1") as resp:
                assert resp.status == 200
                assert expect in resp.headers["Cache-Status"]
                info = await resp.json()
    # The origin hears https from both hops (the shield trusts the edge's fields).
    seen = dict((k.lower(), v) for k, v in info["headers"])
    assert seen["x-forwarded-proto"] == "https"
    assert seen["forwarded"].count("proto=https") == 2, seen["forwarded"]
    # Without the CA the shield's certificate is not trusted: no answer from it.
    port = free_port()
    cmd = edge_cmd(
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--shield",
        f"https://127.0.0.1:{shield.port}",
        "--no-origin-direct",
        "--cache-dir",
        str(tmp_path / "cache-untrusting"),
        "--name",
        "untrusting",
    )
    untrusting = start(cmd, port, tmp_path / "untrusting.log", "/_edge/health")
    procs.append(untrusting)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{untrusting.url}/books/9") as resp,
    ):
        assert resp.status == 502


def test_bad_tls_settings_are_one_line_errors(tmp_path: Path, ca: LocalCA) -> None:
    cert, key = ca.issue("a", ["a.test"], [])
    other_cert, _ = ca.issue("b", ["b.test"], [])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    listen = f"127.0.0.1:{free_port()}"
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)], "not found"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.pem")], "not found"),
        (["--tls-cert", str(other_cert), "--tls-key", str(key)], "does not match"),
        (["--tls-cert", str(garbage), "--tls-key", str(key)], "PEM"),
        (["--tls-cert", str(cert)], "pairs"),
        (["--tls-key", str(key)], "pairs"),
        (["--tls-cert", str(cert), "--tls-key", str(key), "--tls-cert", str(other_cert)], "pairs"),
        (["--tls-cert", str(tmp_path), "--tls-key", str(key)], "cannot read"),
        (["--http-redirect", "127.0.0.1:1"], "needs TLS"),
        (["--tls-cert", str(cert), "--tls-key", str(key), "--http-redirect", "x"], "HOST:PORT"),
        (["--tls-cert", str(cert), "--tls-key", str(key), "--http-redirect", listen], "not"),
        (["--tls-cert", str(cert), "--tls-key", str(key), "--hsts", "-5"], "hsts"),
        (["--hsts", "60"], "needs TLS"),
        (["--upstream-ca", str(tmp_path / "missing-ca.pem")], "not found"),
        (["--upstream-ca", str(garbage)], "PEM"),
    ]
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "unreadable-key.pem"
        unreadable.write_bytes(key.read_bytes())
        unreadable.chmod(0)
        cases.append((["--tls-cert", str(cert), "--tls-key", str(unreadable)], "cannot read"))
    for n, (args, words) in enumerate(cases):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "shield" if n % 2 else "serve",  # both commands check the same way
                "--listen",
                listen,
                "--origin",
                "http://127.0.0.1:9",
                "--cache-dir",
                str(tmp_path / "c"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode != 0, args
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, run.stderr)


def test_tls_settings_from_a_node_config_file(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """tls_cert/tls_key (lists, paired in order), hsts and http_redirect in --config."""
    first = ca.issue("archive", ["archive.test"], ["127.0.0.1"])
    second = ca.issue("books", ["books.test"], [])
    port, redirect_port = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\n'
        f'origins = ["{upstream.url}"]\n'
        f'cache_dir = "{tmp_path / "cache-file"}"\n'
        f'tls_cert = ["{first[0]}", "{second[0]}"]\n'
        f'tls_key = ["{first[1]}", "{second[1]}"]\n'
        f'http_redirect = "127.0.0.1:{redirect_port}"\n'
        "hsts = 600\n"
    )
    proc = start(
        edge_cmd("serve", "--config", str(config)),
        port,
        tmp_path / "file.log",
        "/_edge/health",
        ca=str(ca.cert_path),
    )
    procs.append(proc)
    ctx = client_context(ca)
    for name in ("archive.test", "books.test"):
        with handshake(port, ctx, name) as sock:
            assert peer_names(sock) == {name}
            answer = exchange(sock, f"GET /x HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
            assert b"Strict-Transport-Security: max-age=600\r\n" in answer
    with socket.create_connection(("127.0.0.1", redirect_port), timeout=5) as sock:
        answer = exchange(sock, b"GET /x HTTP/1.1\r\nHost: books.test\r\n\r\n")
    assert f"Location: https://books.test:{port}/x\r\n".encode() in answer
    # Unpaired in the file: one line, as on the command line.
    config.write_text(config.read_text().replace(f', "{second[1]}"', ""))
    run = subprocess.run(
        edge_cmd("serve", "--config", str(config)), capture_output=True, text=True, timeout=30
    )
    assert run.returncode != 0
    assert len(run.stderr.strip().splitlines()) == 1 and "pairs" in run.stderr, run.stderr


def test_dns_health_ca_must_be_readable(tmp_path: Path) -> None:
    default = Path(__file__).resolve().parents[2] / "origin" / "topologies" / "default.toml"
    for ca_file, words in ((tmp_path / "missing.pem", "No such file"), (default, "not a PEM")):
        topology = tmp_path / "topology.toml"
        topology.write_text(
            default.read_text().replace("[health]\n", f'[health]\nca = "{ca_file}"\n')
        )
        run = subprocess.run(
            edge_cmd("dns", "--listen", f"127.0.0.1:{free_port()}", "--topology", str(topology)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "[health] ca" in lines[0] and words in lines[0], run.stderr


def test_local_ca_is_private_and_reused(tmp_path: Path) -> None:
    first = LocalCA(tmp_path / "tls")
    assert (first.key_path.stat().st_mode & 0o777) == 0o600
    assert (first.directory.stat().st_mode & 0o777) == 0o700
    _cert, key = first.issue("x", ["x.test"], ["127.0.0.1"])
    assert (key.stat().st_mode & 0o777) == 0o600
    again = LocalCA(tmp_path / "tls")
    assert again.cert_path.read_bytes() == first.cert_path.read_bytes()


def test_edge_up_tls_end_to_end(tmp_path: Path) -> None:
    """The whole CDN on HTTPS: curl trusts the printed CA and goes edge -> shield ->
    origin; GeoDNS probes the edges over https; Ctrl-C stops everything."""
    from scenarios.cdn import with_free_ports

    default = Path(__file__).resolve().parents[2] / "origin" / "topologies" / "default.toml"
    topology = tmp_path / "topology.toml"
    topology.write_text(with_free_ports(default.read_text()))
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "up",
            "--topology",
            str(topology),
            "--workdir",
            str(workdir),
            "--tls",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 150
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Logs in"):
                break
        out = "".join(lines)
        ca_file = workdir / "tls" / "ca.pem"
        assert f"--cacert {ca_file}" in out, out
        match = re.search(r"curl -si --cacert \S+ --resolve (\S+):(\S+) (https://\S+)", out)
        assert match, out
        site, host, url = match.groups()
        for expect in ("fwd=uri-miss", "hit"):
            run = subprocess.run(
                ["curl", "-si", "--cacert", str(ca_file), "--resolve", f"{site}:{host}", url],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert run.returncode == 0, run.stderr
            head = run.stdout.split("\r\n\r\n", 1)[0]
            # curl and the edge agree on HTTP/2 by ALPN (edge.server.http2).
            assert head.startswith("HTTP/2 200"), head
            status = re.search(r"Cache-Status: (.*)", head, re.IGNORECASE)
            assert status and "shield" in status.group(1) and expect in status.group(1), head
            # The edge serves HTTP/3 on its port too, and says so.
            assert re.search(r'Alt-Svc: h3=":\d+"; ma=86400', head, re.IGNORECASE), head
        # HTTP/3 as the table shows it: the edge's hit, over QUIC.
        h3 = re.search(r"edge h3get --cacert \S+ --resolve (\S+) (https://\S+)", out)
        assert h3, out
        run = subprocess.run(
            [
                *(sys.executable, "-m", "cli.main", "h3get", "--cacert", str(ca_file)),
                *("--resolve", h3.group(1), h3.group(2)),
            ],
            capture_output=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        h3_head = run.stdout.split(b"\r\n\r\n", 1)[0].decode()
        assert h3_head.startswith("HTTP/3 200"), h3_head
        assert re.search(r"cache-status: .*hit", h3_head), h3_head
        # The authority answers with edges (its https probes found them healthy).
        dns_line = re.search(r"dig @(\S+) -p (\d+) (\S+)", out)
        assert dns_line
        import dns.message
        import dns.query

        answer = dns.query.udp(
            dns.message.make_query(dns_line.group(3), "A"),
            dns_line.group(1),
            port=int(dns_line.group(2)),
            timeout=5,
        )
        assert answer.answer, answer
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rest = proc.communicate(timeout=40)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert "edge up: stopped" in rest
    assert matching(str(workdir)) == []
