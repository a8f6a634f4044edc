"""The edge node end to end: real `edge serve` processes in front of a real upstream
process on loopback, driven by aiohttp's client, curl and raw sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import EdgeFactory
from tests.support.procs import Proc, edge_cmd, free_port
from tests.support.upstream import body_for


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(url, headers=headers) as r:
        return r.status, {k: v for k, v in r.headers.items()}, await r.read()


async def origin_count(upstream: Proc, path: str) -> int:
    _, _, body = await get(f"{upstream.url}/_count{path}")
    return int(json.loads(body)["count"])


async def test_miss_then_hit_with_cache_status_age_and_via(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    status, headers, body = await get(f"{node.url}/books/a.txt")
    assert status == 200
    assert body == body_for("/books/a.txt", 1024)
    assert headers["Cache-Status"] == "edge-test; fwd=uri-miss; fwd-status=200; stored"
    assert "edge-test" in headers["Via"]
    status, headers, body = await get(f"{node.url}/books/a.txt")
    assert status == 200 and body == body_for("/books/a.txt", 1024)
    assert headers["Cache-Status"].startswith("edge-test; hit; ttl=")
    assert int(headers["Age"]) >= 0
    assert await origin_count(upstream, "/books/a.txt") == 1


async def test_restart_keeps_a_hit(upstream: Proc, edge: EdgeFactory, tmp_path: Path):
    cache = tmp_path / "persist"
    first = edge(upstream.url, cache_dir=cache)
    # The cache key is the effective URI, so both requests name the same host.
    host = {"Host": "archive.example"}
    await get(f"{first.url}/keep.bin?size=300000", **host)
    assert first.stop() == 0
    second = edge(upstream.url, cache_dir=cache)
    status, headers, body = await get(f"{second.url}/keep.bin?size=300000", **host)
    assert status == 200
    assert "hit" in headers["Cache-Status"].split("; ")
    assert body == body_for("/keep.bin", 300000)
    assert await origin_count(upstream, "/keep.bin") == 1


async def test_hundred_concurrent_clients_on_a_cold_object_make_one_upstream_request(
    upstream: Proc, edge: EdgeFactory
):
    node = edge(upstream.url)
    size = 4 << 20
    url = f"{node.url}/bundles/cold.bin?size={size}&delay=0.3&trickle=1"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:

        async def one() -> tuple[int, str, bytes]:
            async with s.get(url) as r:
                return r.status, r.headers["Cache-Status"], await r.read()

        results = await asyncio.gather(*(one() for _ in range(100)))
    expected = body_for("/bundles/cold.bin", size)
    assert all(status == 200 and body == expected for status, _, body in results)
    assert await origin_count(upstream, "/bundles/cold.bin") == 1
    collapsed = [cs for _, cs, _ in results if "collapsed" in cs]
    assert len(collapsed) >= 90, collapsed[:3]


async def test_upstream_killed_mid_body_leaves_no_entry(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/big.bin?size={32 << 20}&trickle=20"
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(32 << 20)
        await r.content.readexactly(1 << 16)  # the body is flowing
        upstream.stop(signal.SIGKILL)
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # the client sees a truncated body, never a short "complete" one
    # Nothing was stored: with the upstream gone the edge has nothing to serve.
    status, headers, _ = await get(url)
    assert status == 502
    assert "fwd=uri-miss" in headers["Cache-Status"]
    assert "detail=upstream-unreachable" in headers["Cache-Status"]
    incoming = list((Path(node.log.parent) / "cache" / "incoming").iterdir())
    assert incoming == []


async def test_upstream_unreachable_is_502(edge: EdgeFactory):
    node = edge(f"http://127.0.0.1:{free_port()}")
    status, headers, body = await get(f"{node.url}/x")
    assert status == 502
    assert headers["Cache-Status"] == "edge-test; fwd=uri-miss; detail=upstream-unreachable"
    assert b"Traceback" not in body


async def test_upstream_timeout_is_504_from_a_toml_config(
    upstream: Proc, procs: list[Proc], tmp_path: Path
):
    from tests.support.procs import start

    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\nupstream = "{upstream.url}"\n'
        f'cache-dir = "{tmp_path / "c"}"\nname = "tomlnode"\nupstream_read_timeout = 0.5\n'
    )
    node = start(
        edge_cmd("serve", "--config", str(config)), port, tmp_path / "e.log", "/_edge/health"
    )
    procs.append(node)
    status, headers, _ = await get(f"{node.url}/slow?delay=3")
    assert status == 504
    assert headers["Cache-Status"] == "tomlnode; fwd=uri-miss; detail=upstream-timeout"


async def test_only_if_cached_miss_is_504(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    status, _headers, _ = await get(f"{node.url}/never", **{"Cache-Control": "only-if-cached"})
    assert status == 504
    assert await origin_count(upstream, "/never") == 0


async def test_private_and_no_store_are_not_stored(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    for cc in ("private, max-age=60", "no-store"):
        path = f"/p-{cc[:4]}?cc={cc}"
        await get(f"{node.url}{path}")
        status, headers, _ = await get(f"{node.url}{path}")
        assert status == 200
        assert "hit" not in headers["Cache-Status"].split("; ")
        assert await origin_count(upstream, path.split("?")[0]) == 2


async def test_unsafe_method_invalidates(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    await get(f"{node.url}/doc")
    async with aiohttp.ClientSession() as s, s.post(f"{node.url}/doc", data=b"x") as r:
        assert r.status == 200
        assert "fwd=method" in r.headers["Cache-Status"]
    _, headers, _ = await get(f"{node.url}/doc")
    assert "fwd=uri-miss" in headers["Cache-Status"]
    assert await origin_count(upstream, "/doc") == 3


async def test_vary_keeps_variants_apart(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/v?vary=Accept-Language"
    _, h1, _ = await get(url, **{"Accept-Language": "fr"})
    _, h2, _ = await get(url, **{"Accept-Language": "de"})
    _, h3, _ = await get(url, **{"Accept-Language": "fr"})
    assert h1["X-Echo"] == "fr" and h2["X-Echo"] == "de" and h3["X-Echo"] == "fr"
    assert "fwd=vary-miss" in h2["Cache-Status"]
    assert "hit" in h3["Cache-Status"].split("; ")


async def test_revalidation_with_stored_etag_gets_304_and_serves_stored_body(
    upstream: Proc, edge: EdgeFactory
):
    node = edge(upstream.url)
    url = f'{node.url}/r?cc=max-age=0&etag="v1"'
    _, _, body1 = await get(url)
    status, headers, body2 = await get(url)
    assert status == 200 and body1 == body2
    assert "fwd=stale" in headers["Cache-Status"]
    assert "fwd-status=304" in headers["Cache-Status"]


async def test_client_conditionals_and_ranges_answered_from_cache(
    upstream: Proc, edge: EdgeFactory
):
    node = edge(upstream.url)
    url = f'{node.url}/ranged?size=10000&etag="abc"'
    full = body_for("/ranged", 10000)
    await get(url)
    status, _, _ = await get(url, **{"If-None-Match": '"abc"'})
    assert status == 304
    status, headers, body = await get(url, Range="bytes=100-199")
    assert status == 206 and body == full[100:200]
    assert headers["Content-Range"] == "bytes 100-199/10000"
    status, headers, body = await get(url, Range="bytes=-10")
    assert status == 206 and body == full[-10:]
    status, headers, body = await get(url, Range="bytes=0-1,5000-5001")
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    assert full[0:2] in body and full[5000:5002] in body
    status, headers, _ = await get(url, Range="bytes=20000-")
    assert status == 416 and headers["Content-Range"] == "bytes */10000"
    status, _, body = await get(url, Range="bytes=0-9", **{"If-Range": '"other"'})
    assert status == 200 and body == full
    assert await origin_count(upstream, "/ranged") == 1


async def test_head_from_cache_has_headers_and_no_body(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    await get(f"{node.url}/h?size=5000")
    async with aiohttp.ClientSession() as s, s.head(f"{node.url}/h?size=5000") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "5000"
        assert "hit" in r.headers["Cache-Status"].split("; ")
        assert await r.read() == b""


def test_malformed_request_is_400_without_traceback(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        reply = sock.recv(65536)
    assert reply.split(b" ")[1] == b"400"
    assert b"Content-Length: 2" not in reply  # the parser error is not echoed
    assert b"Traceback" not in reply


def test_curl_sees_hit_on_second_request(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    cmd = ["curl", "-s", "-D", "-", "-o", "/dev/null", f"{node.url}/curl.txt"]
    subprocess.run(cmd, check=True, capture_output=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "cache-status: edge-test; hit" in out.lower()


async def test_metrics_and_access_log(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    await get(f"{node.url}/m")
    await get(f"{node.url}/m")
    _, _headers, body = await get(f"{node.url}/_edge/metrics")
    text = body.decode()
    assert 'edge_requests_total{cache_status="hit",code="200",node="edge-test"} 1.0' in text
    assert 'edge_requests_total{cache_status="uri-miss",code="200",node="edge-test"} 1.0' in text
    assert "edge_store_objects" in text and "edge_upstream_latency_seconds_bucket" in text
    _, _, health = await get(f"{node.url}/_edge/health")
    assert json.loads(health)["status"] == "ok"
    log = node.output()
    assert '"GET /m" 200 hit' in log and '"GET /m" 200 uri-miss' in log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "listen address must be HOST:PORT"),
        (["--upstream", "ftp://x"], "upstream must be an http(s) URL"),
        (["--cache-size", "lots"], "not a size"),
        (["--config", "/nonexistent.toml"], "config file not found"),
    ],
)
def test_bad_options_get_one_line_errors(args: list[str], message: str, tmp_path: Path):
    base = ["serve", "--cache-dir", str(tmp_path / "c"), "--upstream", "http://127.0.0.1:1"]
    proc = subprocess.run(edge_cmd(*base, *args), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("edge: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_port_in_use_is_a_one_line_error(upstream: Proc, tmp_path: Path):
    proc = subprocess.run(
        edge_cmd(
            "serve",
            "--listen",
            f"127.0.0.1:{upstream.port}",
            "--upstream",
            upstream.url,
            "--cache-dir",
            str(tmp_path / "c"),
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("edge: cannot listen on")
    assert "Traceback" not in proc.stderr


async def test_cdn_cache_control_overrides_cache_control(upstream: Proc, edge: EdgeFactory):
    """RFC 9213: the targeted field governs this cache; clients still see
    Cache-Control unchanged."""
    node = edge(upstream.url)
    url = f"{node.url}/t?cc=no-store&cdncc=max-age=60"
    await get(url)
    _, headers, _ = await get(url)
    assert "hit" in headers["Cache-Status"].split("; ")
    assert headers["Cache-Control"] == "no-store"
    assert await origin_count(upstream, "/t") == 1


async def test_stale_if_error_serves_stale_when_upstream_is_down(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/sie?cc=max-age=1,stale-if-error=600"
    _, _, body = await get(url)
    upstream.stop()
    await asyncio.sleep(1.2)
    status, headers, stale = await get(url)
    assert status == 200 and stale == body
    assert "fwd=stale" in headers["Cache-Status"]
    assert "stale-if-error" in headers["Cache-Status"]
    assert int(headers["Age"]) >= 1


async def test_must_revalidate_forbids_stale_on_error(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/mr?cc=max-age=1,must-revalidate,stale-if-error=600"
    await get(url)
    upstream.stop()
    await asyncio.sleep(1.2)
    status, _, _ = await get(url)
    assert status == 502


async def test_cache_size_bound_evicts_least_recently_used(upstream: Proc, edge: EdgeFactory):
    # Objects of 300000 bytes: over the default largest object of a 1M cache (128K).
    node = edge(upstream.url, "--cache-size", "1M", "--max-object-size", "512K")
    for i in range(8):
        await get(f"{node.url}/lru{i}?size=300000")
    _, _, health = await get(f"{node.url}/_edge/health")
    assert json.loads(health)["store"]["bytes"] <= 1.5 * (1 << 20)
    _, headers, _ = await get(f"{node.url}/lru0?size=300000")
    assert "fwd=uri-miss" in headers["Cache-Status"]  # evicted first
    _, headers, _ = await get(f"{node.url}/lru7?size=300000")
    assert "hit" in headers["Cache-Status"].split("; ")  # newest kept


async def test_objects_over_max_object_size_pass_through(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url, "--max-object-size", "100K")
    for _ in range(2):
        status, headers, body = await get(f"{node.url}/huge?size=300000")
        assert status == 200 and len(body) == 300000
        assert "hit" not in headers["Cache-Status"].split("; ")
    assert await origin_count(upstream, "/huge") == 2


async def test_edge_killed_mid_fill_serves_no_partial_body_after_restart(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
):
    cache = tmp_path / "crash"
    host = {"Host": "archive.example"}
    first = edge(upstream.url, cache_dir=cache)
    url = f"/crash.bin?size={16 << 20}&trickle=10"
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(first.url + url, headers=host) as r,
    ):
        await r.content.readexactly(1 << 16)
        first.stop(signal.SIGKILL)
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    second = edge(upstream.url, cache_dir=cache)
    status, headers, body = await get(second.url + url.replace("trickle=10", "trickle=0"), **host)
    assert "fwd=uri-miss" in headers["Cache-Status"]
    assert status == 200 and body == body_for("/crash.bin", 16 << 20)
    assert list((cache / "incoming").iterdir()) == []


async def test_stale_while_revalidate_serves_stale_and_refreshes_in_background(
    upstream: Proc, edge: EdgeFactory
):
    node = edge(upstream.url)
    url = f"{node.url}/swr?cc=max-age=1,stale-while-revalidate=60"
    _, first, _ = await get(url)
    await asyncio.sleep(1.2)
    status, stale, _ = await get(url)
    assert status == 200
    assert "hit" in stale["Cache-Status"].split("; ")
    assert "detail=stale-while-revalidate" in stale["Cache-Status"]
    assert stale["X-Request-Count"] == first["X-Request-Count"] == "1"
    for _ in range(50):  # the refresh runs on its own; wait for it, bounded
        if await origin_count(upstream, "/swr") == 2:
            break
        await asyncio.sleep(0.05)
    _, fresh, _ = await get(url)
    assert fresh["X-Request-Count"] == "2"
    assert fresh["Cache-Status"].startswith("edge-test; hit; ttl=")


async def test_qualified_no_cache_fields_are_not_reused(upstream: Proc, edge: EdgeFactory):
    """RFC 9111 Section 5.2.2.4: the response is reused, the named field is not."""
    node = edge(upstream.url)
    url = f'{node.url}/qnc?cc=max-age=60, no-cache="X-Request-Count"'
    _, first, _ = await get(url)
    assert first["X-Request-Count"] == "1"
    _, second, _ = await get(url)
    assert "hit" in second["Cache-Status"].split("; ")
    assert "X-Request-Count" not in second


async def test_access_log_records_each_state_walk(upstream: Proc, edge: EdgeFactory):
    """Every pipeline state shows up in the walks the access log records."""
    node = edge(upstream.url)
    await get(f"{node.url}/w")  # miss
    await get(f"{node.url}/w")  # hit
    await get(f"{node.url}/w", **{"Cache-Control": "no-cache"})  # revalidation
    await get(f"{node.url}/w2?cc=max-age=1,stale-while-revalidate=60")
    await asyncio.sleep(1.1)
    await get(f"{node.url}/w2?cc=max-age=1,stale-while-revalidate=60")  # stale
    async with aiohttp.ClientSession() as s, s.delete(f"{node.url}/w") as r:  # pass
        assert r.status == 200
        await r.read()  # read to the end: a client leaving early is logged as client-gone
    await get(f"{node.url}/nothing", **{"Cache-Control": "only-if-cached"})  # synth
    for _ in range(50):  # access lines are written a loop turn later (edge.observe.accesslog)
        walks = {
            line.split("walk=")[1].strip() for line in node.output().splitlines() if "walk=" in line
        }
        if "recv>hash>lookup>synth" in walks:
            break
        await asyncio.sleep(0.05)
    assert "recv>hash>lookup>miss>fetch>deliver" in walks
    assert "recv>hash>lookup>hit>deliver" in walks
    assert "recv>hash>lookup>stale>deliver" in walks
    assert "recv>pass>deliver" in walks
    assert "recv>hash>lookup>synth" in walks  # only-if-cached miss: a synthetic 504


async def test_head_miss_is_passed_as_head_and_not_stored(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.head(f"{node.url}/hm?size=5000") as r:
                assert r.status == 200
                assert r.headers["Content-Length"] == "5000"
                assert r.headers["Cache-Status"].startswith("edge-test; fwd=uri-miss")
    assert await origin_count(upstream, "/hm") == 2
    _, headers, body = await get(f"{node.url}/hm?size=5000")
    assert len(body) == 5000 and "fwd=uri-miss" in headers["Cache-Status"]


async def test_a_client_leaving_mid_body_is_logged_not_a_traceback(
    upstream: Proc, edge: EdgeFactory
):
    node = edge(upstream.url)
    url = f"{node.url}/leave?size={8 << 20}"
    await get(url)  # stored
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /leave?size=8388608 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    await reader.read(1 << 16)
    writer.close()  # gone with most of the body unread
    await writer.wait_closed()
    for _ in range(50):  # bounded wait for the access line
        if "client-gone" in node.output():
            break
        await asyncio.sleep(0.05)
    assert "client-gone" in node.output()
    assert "Traceback" not in node.output()
    status, _, body = await get(url)  # the node carries on
    assert status == 200 and len(body) == 8 << 20
