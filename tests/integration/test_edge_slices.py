"""Segmented caching of big objects, end to end: a real `edge origin` serving files
from a folder, a real `edge serve` with small slices, real clients."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.integration.conftest import EdgeFactory
from tests.support.procs import Proc, edge_cmd, free_port, start
from tests.support.upstream import body_for

MiB = 1 << 20
SIZE = 24 * MiB + 12345  # 25 slices of 1 MiB, the last one short
SLICING = ("--slice-size", "1M", "--slice-threshold", "4M")


def write_object(path: Path, size: int, seed: bytes) -> bytes:
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    data = (block * (size // len(block) + 1))[:size]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def origin(procs: list[Proc], tmp_path: Path, archive: Path) -> Proc:
    archive.mkdir(exist_ok=True)
    port = free_port()
    proc = start(
        edge_cmd(
            "origin",
            "--root",
            str(archive),
            "--listen",
            f"127.0.0.1:{port}",
            "--rule",
            "/short/*=public, max-age=1",
        ),
        port,
        tmp_path / "origin.log",
        health_path="/",
    )
    procs.append(proc)
    return proc


def origin_requests(origin: Proc, path: str) -> list[str]:
    """The origin's access-log lines for one path."""
    return [line for line in origin.output().splitlines() if f'"GET {path} ' in line]


async def logged(origin: Proc, path: str, expected: int) -> list[str]:
    """The origin's lines for `path` once it has logged `expected` of them (it logs a
    request after sending it, so a client can be done first); bounded wait."""
    for _ in range(40):
        lines = origin_requests(origin, path)
        if len(lines) >= expected:
            await asyncio.sleep(0.1)  # and no more arrive
            return origin_requests(origin, path)
        await asyncio.sleep(0.05)
    return origin_requests(origin, path)


async def fetch(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(url, headers=headers) as r:
        return r.status, r.headers.copy(), await r.read()


async def test_big_object_streams_into_slices_with_one_upstream_request(
    origin: Proc, archive: Path, edge: EdgeFactory
):
    data = write_object(archive / "big.bin", SIZE, b"a")
    node = edge(origin.url, *SLICING)
    status, headers, body = await fetch(f"{node.url}/big.bin")
    assert status == 200 and body == data
    assert headers["Cache-Status"].startswith("edge-test; fwd=uri-miss; fwd-status=200; stored")
    status, headers, body = await fetch(f"{node.url}/big.bin")
    assert status == 200 and body == data
    assert "hit" in headers["Cache-Status"].split("; ")
    assert int(headers["Content-Length"]) == SIZE
    assert len(await logged(origin, "/big.bin", 1)) == 1


async def test_crowd_on_a_cold_big_object_makes_one_upstream_request(
    origin: Proc, archive: Path, edge: EdgeFactory
):
    data = write_object(archive / "crowd.bin", SIZE, b"c")
    node = edge(origin.url, *SLICING)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one() -> bytes:
            async with s.get(f"{node.url}/crowd.bin") as r:
                return await r.read()

        bodies = await asyncio.gather(*(one() for _ in range(30)))
    assert all(b == data for b in bodies)
    assert len(await logged(origin, "/crowd.bin", 1)) == 1


async def test_seek_into_a_cold_big_object_costs_one_slice(
    origin: Proc, archive: Path, edge: EdgeFactory
):
    data = write_object(archive / "seek.bin", SIZE, b"s")
    node = edge(origin.url, *SLICING)
    start = 20 * MiB + 100
    status, headers, body = await fetch(f"{node.url}/seek.bin", Range=f"bytes={start}-{start + 99}")
    assert status == 206 and body == data[start : start + 100]
    assert headers["Content-Range"] == f"bytes {start}-{start + 99}/{SIZE}"
    lines = await logged(origin, "/seek.bin", 1)
    assert len(lines) == 1 and '" 206 ' in lines[0]
    _, _, health = await fetch(f"{node.url}/_edge/health")
    assert json.loads(health)["store"]["bytes"] < 3 * MiB  # one slice, not the object
    # The same slice again is a hit; a range across two slices fetches only the other.
    status, headers, body = await fetch(f"{node.url}/seek.bin", Range=f"bytes={start}-{start + 9}")
    assert status == 206 and "hit" in headers["Cache-Status"].split("; ")
    span = f"bytes={21 * MiB - 10}-{21 * MiB + 9}"
    status, _, body = await fetch(f"{node.url}/seek.bin", Range=span)
    assert status == 206 and body == data[21 * MiB - 10 : 21 * MiB + 10]
    assert len(await logged(origin, "/seek.bin", 2)) == 2


async def test_ranges_and_conditionals_on_a_sliced_object(
    origin: Proc, archive: Path, edge: EdgeFactory
):
    data = write_object(archive / "multi.bin", SIZE, b"m")
    node = edge(origin.url, *SLICING)
    _, headers, _ = await fetch(f"{node.url}/multi.bin")
    etag = headers["ETag"]
    spans = f"bytes=10-19,{MiB - 5}-{MiB + 4},{SIZE - 3}-"
    status, headers, body = await fetch(f"{node.url}/multi.bin", Range=spans)
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    for part in (data[10:20], data[MiB - 5 : MiB + 5], data[SIZE - 3 :]):
        assert part in body
    status, _, _ = await fetch(f"{node.url}/multi.bin", **{"If-None-Match": etag})
    assert status == 304
    status, headers, _ = await fetch(f"{node.url}/multi.bin", Range=f"bytes={SIZE}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{SIZE}"
    async with aiohttp.ClientSession() as s, s.head(f"{node.url}/multi.bin") as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(SIZE)
    assert len(await logged(origin, "/multi.bin", 1)) == 1


async def test_revalidating_a_sliced_object_never_fetches_it_whole(
    origin: Proc, archive: Path, edge: EdgeFactory
):
    path = archive / "short" / "v.bin"
    data = write_object(path, SIZE, b"v1")
    node = edge(origin.url, *SLICING)
    assert (await fetch(f"{node.url}/short/v.bin"))[2] == data
    await asyncio.sleep(1.2)  # max-age=1: now stale
    status, headers, body = await fetch(f"{node.url}/short/v.bin")
    assert status == 200 and body == data
    assert "fwd=stale" in headers["Cache-Status"] and "fwd-status=304" in headers["Cache-Status"]
    lines = await logged(origin, "/short/v.bin", 2)
    assert len(lines) == 2 and '" 304 ' in lines[1]
    # The object changes: revalidation brings its first slice, the rest come as read.
    await asyncio.sleep(1.2)
    new = write_object(path, SIZE, b"v2")
    os.utime(path, (os.path.getmtime(path) + 5,) * 2)
    status, headers, body = await fetch(f"{node.url}/short/v.bin")
    assert status == 200 and body == new
    lines = await logged(origin, "/short/v.bin", 3)
    assert '" 206 ' in lines[2]  # a range for the first slice, not the whole object


def test_curl_range_on_a_sliced_object(origin: Proc, archive: Path, edge: EdgeFactory, tmp_path):
    data = write_object(archive / "curl.bin", SIZE, b"k")
    node = edge(origin.url, *SLICING)
    out = tmp_path / "part"
    cmd = ["curl", "-s", "--range", f"{5 * MiB}-{5 * MiB + 999}", "-o", str(out)]
    subprocess.run([*cmd, f"{node.url}/curl.bin"], check=True, timeout=30)
    assert out.read_bytes() == data[5 * MiB : 5 * MiB + 1000]


async def test_a_sliced_download_holds_one_slice_file_at_a_time(
    origin: Proc, archive: Path, edge: EdgeFactory
):
    """Each stored slice is closed once sent: a long download must not hold a descriptor
    per slice (a crowd would run the node out of them)."""
    data = write_object(archive / "fds.bin", SIZE, b"f")
    node = edge(origin.url, *SLICING)
    assert (await fetch(f"{node.url}/fds.bin"))[2] == data  # now every slice is stored
    fd_dir = Path(f"/proc/{node.popen.pid}/fd")
    baseline = len(os.listdir(fd_dir))
    most = 0
    async with aiohttp.ClientSession() as s, s.get(f"{node.url}/fds.bin") as r:
        got = b""
        async for chunk in r.content.iter_chunked(MiB):
            got += chunk
            most = max(most, len(os.listdir(fd_dir)))
            await asyncio.sleep(0.01)  # a slow reader: the edge runs ahead into many slices
    assert got == data
    assert most - baseline < 8, (baseline, most)


async def origin_sent(upstream: Proc, path: str) -> int:
    """The body bytes the test upstream handed to its connections for `path`."""
    _, _, body = await fetch(f"{upstream.url}/_sent{path}")
    return int(json.loads(body)["bytes"])


async def test_a_parallel_download_of_a_cold_object_costs_the_origin_each_byte_once(
    upstream: Proc, edge: EdgeFactory
) -> None:
    """As aria2c -x N does: one request without a range (its head gives the size),
    then ranges further on at once, while the first reads only its own segment. The
    object's stream stops where a range already brings the slice, so the origin does
    not send those bytes twice (before: the stream went on to the end for the ranges'
    readers, and the origin sent half the object again)."""
    size = 8 * MiB
    node = edge(upstream.url, *SLICING)
    # Each upstream response is spread over 2 s: the ranges start before the stream
    # reaches them.
    url = f"{node.url}/parallel.bin?ranges=1&etag=%22p1%22&size={size}&trickle=2"
    data = body_for("/parallel.bin", size)
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        whole = await s.get(url)
        assert whole.status == 200 and whole.content_length == size

        async def segment_of_whole() -> bytes:
            try:
                return await whole.content.readexactly(4 * MiB)
            finally:
                whole.close()  # its segment read: the next is another connection's

        async def segment(first: int, last: int) -> bytes:
            async with s.get(url, headers={"Range": f"bytes={first}-{last}"}) as r:
                assert r.status == 206
                return await r.read()

        got = await asyncio.gather(
            segment_of_whole(), segment(4 * MiB, 6 * MiB - 1), segment(6 * MiB, size - 1)
        )
    assert b"".join(got) == data
    await asyncio.sleep(0.5)  # the origin notices the stream's connection closed
    sent = await origin_sent(upstream, "/parallel.bin")
    assert size <= sent < size * 1.15, f"the origin sent {sent / size:.2f}x the object"
