"""Compression at the edge, end to end: negotiation, one stored variant per coding,
headers consistent across variants, pass-through and capped decoding of upstream
encodings. Real `edge serve` and upstream processes, aiohttp and curl clients."""

from __future__ import annotations

import gzip
import json
import subprocess

import aiohttp
import brotli
import pytest
import zstandard
from multidict import CIMultiDict

from edge.features.compress import LEVELS
from tests.integration.conftest import EdgeFactory
from tests.support.procs import Proc
from tests.support.upstream import text_for

TEXT = "?text=1&size=200000&ctype=text/plain;%20charset=utf-8"


def decode(coding: str | None, body: bytes) -> bytes:
    if coding == "br":
        return brotli.decompress(body)
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if coding == "gzip":
        return gzip.decompress(body)
    return body


async def get(url: str, method: str = "GET", **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["Accept-Encoding"]) as s,
        s.request(method, url, headers=headers) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


async def count(upstream: Proc, path: str) -> int:
    _, _, body = await get(f"{upstream.url}/_count{path}")
    return int(json.loads(body)["count"])


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
async def test_text_is_compressed_once_per_coding_and_kept(
    upstream: Proc, edge: EdgeFactory, coding: str
):
    node = edge(upstream.url)
    url = f"{node.url}/book{TEXT}"
    original = text_for("/book", 200000)
    status, first, body = await get(url, **{"Accept-Encoding": coding})
    assert status == 200 and first["Content-Encoding"] == coding
    assert decode(coding, body) == original
    assert "Accept-Encoding" in first["Vary"]
    status, second, body2 = await get(url, **{"Accept-Encoding": coding})
    assert "hit" in second["Cache-Status"].split("; ")
    assert second["Content-Encoding"] == coding
    assert int(second["Content-Length"]) == len(body2) < len(original) // 2
    assert decode(coding, body2) == original
    assert second.get("ETag") == first.get("ETag")
    assert await count(upstream, "/book") == 1


async def test_negotiation_follows_q_values_and_identity(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/neg{TEXT}"
    cases = {
        "gzip;q=0.5, zstd;q=0.9": "zstd",
        "br;q=0, gzip": "gzip",
        "*": "br",
        "identity": None,
        "br;q=0, zstd;q=0, gzip;q=0": None,
    }
    for accept, expected in cases.items():
        _, headers, body = await get(url, **{"Accept-Encoding": accept})
        assert headers.get("Content-Encoding") == expected, accept
        assert decode(expected, body) == text_for("/neg", 200000)
        assert "Accept-Encoding" in headers["Vary"]
    _, headers, body = await get(url)  # no Accept-Encoding at all: identity
    assert "Content-Encoding" not in headers and len(body) == 200000


async def test_variants_have_their_own_etag_and_consistent_conditionals_and_head(
    upstream: Proc, edge: EdgeFactory
):
    node = edge(upstream.url)
    url = f'{node.url}/etag{TEXT}&etag="v1"'
    _, plain, _ = await get(url, **{"Accept-Encoding": "identity"})
    _, br, body = await get(url, **{"Accept-Encoding": "br"})
    # Its own tag, naming the level it was made at (from the stored source): as strong
    # as the source's, since those bytes are kept as they are.
    assert plain["ETag"] == '"v1"' and br["ETag"] == f'"v1-br.{LEVELS["store"]["br"]}"'
    status, _, _ = await get(url, **{"Accept-Encoding": "br", "If-None-Match": br["ETag"]})
    assert status == 304
    status, _, _ = await get(url, **{"Accept-Encoding": "br", "If-None-Match": '"v1"'})
    assert status == 200
    status, head, nobody = await get(url, "HEAD", **{"Accept-Encoding": "br"})
    assert status == 200 and nobody == b""
    assert head["Content-Encoding"] == "br" and int(head["Content-Length"]) == len(body)
    status, ranged, part = await get(url, **{"Accept-Encoding": "br", "Range": "bytes=0-9"})
    assert status == 206 and part == body[:10]
    assert ranged["Content-Range"] == f"bytes 0-9/{len(body)}"


async def test_binary_small_and_no_transform_are_left_alone(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    for query in (
        "?size=200000&ctype=image/png",
        "?text=1&size=100&ctype=text/plain",
        f"{TEXT}&cc=public,max-age=60,no-transform",
    ):
        _, headers, _ = await get(f"{node.url}/left{query}", **{"Accept-Encoding": "br, gzip"})
        assert "Content-Encoding" not in headers, query


async def test_upstream_gzip_passes_through_or_is_decoded(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/gz{TEXT}&gzip=1"
    original = text_for("/gz", 200000)
    _, headers, body = await get(url, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == original
    _, headers, body = await get(url, **{"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in headers and body == original
    _, headers, body = await get(url, **{"Accept-Encoding": "identity"})
    assert body == original and "hit" in headers["Cache-Status"].split("; ")
    assert await count(upstream, "/gz") == 1


async def test_a_decompression_bomb_does_not_get_through(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/bomb?gzip=1&zeros={200 << 20}&ctype=text/plain"
    received = 0
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(url, headers={"Accept-Encoding": "identity"}) as r:
                async for chunk in r.content.iter_chunked(1 << 16):
                    received += len(chunk)
    assert received < 100 << 20


def test_curl_compressed(upstream: Proc, edge: EdgeFactory):
    node = edge(upstream.url)
    url = f"{node.url}/curl{TEXT}"
    out = subprocess.run(
        ["curl", "-s", "--compressed", "-D", "-", url], capture_output=True, timeout=30
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-encoding: " in head.lower()
    assert body == text_for("/curl", 200000)


async def test_variant_made_while_streaming_is_kept_as_it_is(upstream: Proc, edge: EdgeFactory):
    """The first br copy is made at the fast level while the object arrives, and kept:
    a client that resumes it with a bare Range must get the rest of those very bytes,
    so it is never remade at another level under the same URL."""
    import asyncio

    node = edge(upstream.url)
    # Longer than what is encoded at the strong level while it arrives.
    url = f'{node.url}/remake?text=1&size=400000&ctype=text/plain&etag="r1"'
    _, first, fast = await get(url, **{"Accept-Encoding": "br"})  # cold: streamed
    for _ in range(10):  # hits, with time for anything done in the background
        await asyncio.sleep(0.05)
        _, headers, again = await get(url, **{"Accept-Encoding": "br"})
        assert again == fast
    assert brotli.decompress(again) == text_for("/remake", 400000)
    assert int(headers["Content-Length"]) == len(again)
    assert headers["ETag"] == first["ETag"] == f'"r1-br.{LEVELS["stream"]["br"]}"'


async def test_responses_that_are_not_stored_are_compressed_on_the_fly(
    upstream: Proc, edge: EdgeFactory
):
    node = edge(upstream.url)
    url = f"{node.url}/private{TEXT}&cc=private"
    for _ in range(2):
        _, headers, body = await get(url, **{"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == text_for("/private", 200000)
        assert "hit" not in headers["Cache-Status"].split("; ")
    assert await count(upstream, "/private") == 2
