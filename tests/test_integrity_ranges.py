"""What is stored is what the object is; its bytes never change under a validator;
Cache-Status and metrics say what happened. Real test upstreams, `edge serve` alone and
behind `edge shield`, driven by aiohttp and curl.

Each test runs at one tier (edge -> origin) and through a shield (edge -> shield ->
origin): what one tier gets wrong, the next must not repeat or store for everyone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import brotli
import pytest
from multidict import CIMultiDict

from tests.conftest import NodeFactory
from tests.support.procs import Proc
from tests.support.upstream import body_for, text_for

MiB = 1 << 20
#: Small slices, so a sliced object is a few MiB (tests/test_edge_slices.py).
SLICING = ("--slice-size", "1M", "--slice-threshold", "4M")

#: Starts the nodes in front of an origin URL and returns the one clients talk to.
Front = Callable[..., Proc]


@pytest.fixture(params=["one-tier", "shield"])
def front(request: pytest.FixtureRequest, node: NodeFactory) -> Front:
    def make(origin: str, *options: str) -> Proc:
        if request.param == "one-tier":
            return node("serve", "--origin", origin, *options, name="edge-1")
        shield = node("shield", "--origin", origin, *options, name="shield-1")
        return node("serve", "--shield", shield.url, "--origin", origin, *options, name="edge-1")

    return make


async def fetch(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["Accept-Encoding"]) as s,
        s.get(url, headers=headers) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


def count(upstream: Proc, path: str) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=5) as resp:
        return int(json.load(resp)["count"])


def own_status(headers: CIMultiDict[str]) -> str:
    """The front node's Cache-Status entry (the last one)."""
    return headers["Cache-Status"].split(",")[-1].strip()


# -- 4. what is stored is what the object is ------------------------------------------


async def test_a_range_past_a_small_object_never_stores_the_416_for_everyone(
    upstream: Proc, front: Front
) -> None:
    """A cold range starting past the slicing threshold (16 MiB by default) makes edge
    probe one slice by range; a small object answers 416. That answer speaks of the
    range, not of the object: the object is fetched and stored whole."""
    node = front(upstream.url)
    url = f"{node.url}/small?ranges=1&size=1000"
    status, headers, _ = await fetch(url, Range=f"bytes={17 * MiB}-")
    assert status == 416 and headers["Content-Range"] == "bytes */1000"
    status, headers, body = await fetch(url)
    assert status == 200 and body == body_for("/small", 1000), own_status(headers)
    status, headers, body = await fetch(url, Range="bytes=10-19")
    assert status == 206 and body == body_for("/small", 1000)[10:20]
    assert "hit" in own_status(headers).split("; ")


async def test_a_206_to_the_probe_is_kept_only_as_a_slice(upstream: Proc, front: Front) -> None:
    """A big object without validators cannot be sliced: the probe's 206 is answered
    but never kept as the object; the object is fetched whole and stored as a 200."""
    node = front(upstream.url, *SLICING)
    url = f"{node.url}/big-unvalidated?ranges=1&size={6 * MiB}"
    start = 5 * MiB + 7
    status, headers, body = await fetch(url, Range=f"bytes={start}-{start + 99}")
    assert status == 206 and body == body_for("/big-unvalidated", 6 * MiB)[start : start + 100]
    status, headers, body = await fetch(url)
    assert status == 200 and body == body_for("/big-unvalidated", 6 * MiB)
    status, headers, body = await fetch(url)  # the fill has ended: stored whole
    assert status == 200 and body == body_for("/big-unvalidated", 6 * MiB)
    assert "hit" in own_status(headers).split("; ")


# -- 3. bytes never change under a validator ------------------------------------------

TEXT_SIZE = 400_000
BOOK = f'?text=1&size={TEXT_SIZE}&ctype=text/plain&etag="v1"&lm=old'
LAST_MODIFIED = "Wed, 01 Jan 2020 00:00:00 GMT"  # lm=old


async def br_copies(url: str, saved: Path) -> tuple[bytes, bytes, str]:
    """The br encoding as a client downloads it with curl while the object is cold (the
    encoding is made as it arrives), and its ETag; and as a client gets it a little
    later (hits, after anything edge does with it meanwhile, such as remaking it)."""
    head = subprocess.run(
        ["curl", "-s", "-D", "-", "-H", "Accept-Encoding: br", "-o", str(saved), url],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    ).stdout
    etag = next(
        line.split(":", 1)[1].strip()
        for line in head.splitlines()
        if line.lower().startswith("etag:")
    )
    first = latest = saved.read_bytes()
    for _ in range(20):  # bounded: long enough for a background remake to land
        await asyncio.sleep(0.1)
        _, _, latest = await fetch(url, **{"Accept-Encoding": "br"})
        if latest != first:
            break
    return first, latest, etag


@pytest.mark.parametrize("copy", ["first", "latest"])
async def test_curl_resume_of_a_br_download_decodes(
    upstream: Proc, front: Front, tmp_path: Path, copy: str
) -> None:
    """`curl -C -` sends a bare Range: what it resumes must be the very bytes it has,
    whichever copy of the encoding its first half came from."""
    node = front(upstream.url)
    url = f"{node.url}/book{BOOK}"
    partial = tmp_path / "book.br"
    first, latest, _ = await br_copies(url, partial)
    held = first if copy == "first" else latest
    partial.write_bytes(held[: len(held) // 2])
    subprocess.run(
        ["curl", "-s", "-S", "-C", "-", "-H", "Accept-Encoding: br", "-o", str(partial), url],
        check=True,
        timeout=30,
    )
    assert brotli.decompress(partial.read_bytes()) == text_for("/book", TEXT_SIZE)


@pytest.mark.parametrize("validator", ["etag", "date"])
async def test_if_range_resume_of_a_br_download_never_splices(
    upstream: Proc, front: Front, tmp_path: Path, validator: str
) -> None:
    """RFC 9110 Section 13.1.5: If-Range sends the rest only while the representation
    is the one the validator names; a derived encoding's bytes are not dated by the
    source's Last-Modified, so a date never matches it."""
    node = front(upstream.url)
    url = f"{node.url}/book{BOOK}"
    first, _, etag = await br_copies(url, tmp_path / "book.br")
    held = first[: len(first) // 2]
    if_range = etag if validator == "etag" else LAST_MODIFIED
    status, _, rest = await fetch(
        url, **{"Accept-Encoding": "br", "Range": f"bytes={len(held)}-", "If-Range": if_range}
    )
    assert status in (200, 206)
    result = held + rest if status == 206 else rest
    assert brotli.decompress(result) == text_for("/book", TEXT_SIZE)
    if validator == "date":
        assert status == 200


async def test_slices_of_a_changed_object_are_never_served_together(
    upstream: Proc, front: Front
) -> None:
    """RFC 9111 Section 3.4: slices are combined only when their strong validators and
    complete lengths agree. An origin that changed the object and ignores If-Match
    answers a later slice with the new version: edge drops the object and fetches it
    again; no response is made of two versions."""
    node = front(upstream.url, *SLICING)
    size = 6 * MiB
    url = f'{node.url}/changing?ranges=1&size={size}&etag="v1"&etag2="v2"&changes=1'
    v1, v2 = body_for("/changing", size), body_for("/changing#2", size)
    start = 5 * MiB + 3
    status, headers, body = await fetch(url, Range=f"bytes={start}-{start + 9}")
    assert status == 206 and body == v1[start : start + 10] and headers["ETag"] == '"v1"'
    # The origin has changed since; the slices asked for now come back as v2.
    complete = []
    for _ in range(4):  # bounded: a cut response is retried, as a client would
        try:
            status, headers, body = await fetch(url)
        except aiohttp.ClientPayloadError:
            continue  # cut: the change showed up after the head was sent
        assert status == 200
        assert body == {'"v1"': v1, '"v2"': v2}[headers["ETag"]], headers["ETag"]
        complete.append(headers["ETag"])
        if headers["ETag"] == '"v2"':
            break
    assert complete and complete[-1] == '"v2"'
