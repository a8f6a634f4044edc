"""HTTP/3 at a real edge (`edge serve --http3` with TLS), driven by aioquic's client:
the same answers as HTTP/1.1 (Cache-Status, ranges, compression, purges, the guard,
the access log), Alt-Svc on HTTP/1.1 answers, and refusals of malformed requests."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from edge.server.tls import LocalCA
from tests.support.h3client import h3_connect
from tests.support.procs import Proc
from tests.support.tlsnodes import tls_edge
from tests.support.upstream import body_for

TOKEN = "h3-admin-token"


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path / "tls")


def h3_edge(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA, *extra: str, name: str = "h3"
) -> Proc:
    pair = ca.issue(name, ["localhost", "archive.test"], ["127.0.0.1"])
    config = tmp_path / f"{name}.toml"
    config.write_text(f'admin_token = "{TOKEN}"\n')
    return tls_edge(
        procs,
        tmp_path,
        upstream.url,
        [pair],
        ca.cert_path,
        "--http3",
        "--config",
        str(config),
        *extra,
        name=name,
    )


def upstream_count(upstream: Proc, path: str) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=10) as resp:
        return int(json.loads(resp.read())["count"])


async def test_miss_then_hit_range_and_compression_over_h3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    edge = h3_edge(procs, tmp_path, upstream, ca)
    async with h3_connect(edge.port, ca.cert_path) as client:
        first = await client.request("GET", "/books/h3?size=5000")
        second = await client.request("GET", "/books/h3?size=5000")
        ranged = await client.request("GET", "/books/h3?size=5000", [("range", "bytes=10-19")])
        text = await client.request(
            "GET", "/books/words?text=1&ctype=text/plain&size=20000", [("accept-encoding", "gzip")]
        )
    want = body_for("/books/h3", 5000)
    assert first.status == 200 and "fwd=uri-miss" in first.header("cache-status")
    assert first.body == want
    assert second.status == 200 and "hit" in second.header("cache-status")
    assert second.body == want
    assert int(second.header("age")) >= 0
    assert ranged.status == 206 and ranged.body == want[10:20]
    assert ranged.header("content-range") == "bytes 10-19/5000"
    assert text.status == 200 and text.header("content-encoding") == "gzip"
    assert len(gzip.decompress(text.body)) == 20000
    for reply in (first, second, ranged, text):
        # RFC 9114 Section 4.2: nothing of HTTP/1.1's connection management.
        assert not {"connection", "transfer-encoding", "keep-alive"} & set(reply.headers)
        assert reply.header("server") and reply.header("date")
    assert upstream_count(upstream, "/books/h3") == 1
    edge.stop()
    log = edge.output()
    assert '"GET /books/h3?size=5000" 200 hit' in log and "proto=h3" in log


async def test_large_body_in_chunks_and_upstream_sees_via_3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    """A stored body far above QUIC's initial windows arrives whole on a miss and a hit;
    the request went upstream in HTTP/1.1 with Via naming HTTP/3."""
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3big")
    size = 6 << 20
    async with h3_connect(edge.port, ca.cert_path) as client:
        miss = await client.request("GET", f"/big/h3?size={size}", timeout=60)
        hit = await client.request("GET", f"/big/h3?size={size}", timeout=60)
        info = await client.request("GET", "/info/h3?reqinfo=1&cc=no-store")
    want = body_for("/big/h3", size)
    assert miss.status == 200 and miss.body == want
    assert hit.status == 200 and "hit" in hit.header("cache-status") and hit.body == want
    seen = {k.lower(): v for k, v in json.loads(info.body)["headers"]}
    assert seen["via"].startswith("3 ") and seen["x-forwarded-proto"] == "https"
    assert seen["host"] == "localhost"


async def test_alt_svc_on_http1_answers_and_purge_over_h3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    edge = h3_edge(procs, tmp_path, upstream, ca, name="h3alt")
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"https://localhost:{edge.port}/books/alt") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Alt-Svc"] == f'h3=":{edge.port}"; ma=86400'
    async with h3_connect(edge.port, ca.cert_path) as client:
        await client.request("GET", "/books/purged")
        hit = await client.request("GET", "/books/purged")
        assert "hit" in hit.header("cache-status")
        refused = await client.request("PURGE", "/books/purged")
        assert refused.status == 401
        purged = await client.request(
            "PURGE", "/books/purged", [("authorization", f"Bearer {TOKEN}")]
        )
        assert purged.status == 200, purged.body
        assert json.loads(purged.body)["purged"] == "https://localhost/books/purged"
        after = await client.request("GET", "/books/purged")
        assert "fwd=" in after.header("cache-status") and "hit" not in after.header("cache-status")
    assert upstream_count(upstream, "/books/purged") == 2


async def test_no_alt_svc_without_http3(
    procs: list[Proc], tmp_path: Path, upstream: Proc, ca: LocalCA
) -> None:
    pair = ca.issue("plain", ["localhost"], ["127.0.0.1"])
    edge = tls_edge(procs, tmp_path, upstream.url, [pair], ca.cert_path, name="noh3")
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(f"https://localhost:{edge.port}/books/x") as resp,
    ):
        assert resp.status == 200 and "Alt-Svc" not in resp.headers
    with pytest.raises((ConnectionError, TimeoutError)):
        async with asyncio.timeout(5):
            async with h3_connect(edge.port, ca.cert_path):
                pass
