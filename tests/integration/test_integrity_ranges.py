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
from pathlib import Path

import aiohttp
import brotli
import pytest
from multidict import CIMultiDict

from tests.integration.conftest import NodeFactory
from tests.support.procs import Proc
from tests.support.upstream import body_for, text_for

MiB = 1 << 20
#: Small slices, so a sliced object is a few MiB (tests/integration/test_edge_slices.py).
SLICING = ("--slice-size", "1M", "--slice-threshold", "4M")


class Tiers:
    """Starts the nodes in front of an origin URL and returns the one clients talk to:
    an edge alone, or an edge whose shield (`shield`) is in front of the origin."""

    def __init__(self, node: NodeFactory, kind: str) -> None:
        self.node = node
        self.kind = kind
        self.shield: Proc | None = None

    def __call__(self, origin: str, *options: str) -> Proc:
        if self.kind == "one-tier":
            return self.node("serve", "--origin", origin, *options, name="edge-1")
        self.shield = self.node("shield", "--origin", origin, *options, name="shield-1")
        shield = self.shield.url
        return self.node("serve", "--shield", shield, "--origin", origin, *options, name="edge-1")


Front = Tiers


@pytest.fixture(params=["one-tier", "shield"])
def front(request: pytest.FixtureRequest, node: NodeFactory) -> Tiers:
    return Tiers(node, request.param)


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
    # The probe and the whole fetch: both counted, as many as the next hop served.
    for _ in range(50):  # bounded: the next hop accounts a request once it is sent
        fetches = summed(await metrics(node), "edge_upstream_latency_seconds_count")
        hop = await served(front, upstream, "/small")
        if hop >= fetches:
            break
        await asyncio.sleep(0.1)
    assert fetches == hop == 2


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
    # By its own strong tag, the encoding resumes (the bytes behind that tag are the
    # ones held); by the source's date, it is sent whole.
    assert status == (206 if validator == "etag" else 200)


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


# -- 9. Cache-Status and metrics tell what happened -----------------------------------


async def metrics(node: Proc) -> dict[str, float]:
    """The node's samples, by name with labels as exposed (`name{labels}`)."""
    _, _, text = await fetch(f"{node.url}/_edge/metrics")
    samples = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def served(front: Front, upstream: Proc, path: str) -> float:
    """How many requests the next hop up from the front node served: the origin's
    count of `path` at one tier, every request the shield served through a shield."""
    if front.shield is None:
        return count(upstream, path)
    return summed(await metrics(front.shield), "edge_requests_total{")


def summed(samples: dict[str, float], prefix: str, *labels: str) -> float:
    return sum(
        v for k, v in samples.items() if k.startswith(prefix) and all(lb in k for lb in labels)
    )


async def test_a_cold_segmented_download_is_a_miss_with_its_upstream_time(
    upstream: Proc, front: Front
) -> None:
    """RFC 9211 Section 2.2: a download manager's parallel ranges over a cold sliced
    object are answered by slices fetched upstream for them: each says so in
    Cache-Status (fwd=..., never hit), its access line has the upstream time, and the
    node counts every upstream fetch the next hop saw."""
    node = front(upstream.url, *SLICING)
    path, size, segments = "/segments", 16 * MiB, 16
    url = f'{node.url}{path}?ranges=1&size={size}&etag="s1"'
    data = body_for(path, size)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:

        async def segment(i: int) -> tuple[int, str, bytes]:
            span = f"bytes={i * MiB}-{(i + 1) * MiB - 1}"
            async with s.get(url, headers={"Range": span}) as r:
                return r.status, r.headers["Cache-Status"], await r.read()

        # As aria2c does: a first request, and once it has the size, the other
        # segments in parallel while the first is still downloading.
        async with s.get(url, headers={"Range": f"bytes=0-{MiB - 1}"}) as r:
            rest = await asyncio.gather(*(segment(i) for i in range(1, segments)))
            results = [(r.status, r.headers["Cache-Status"], await r.read()), *rest]
    for i, (status, _, body) in enumerate(results):
        assert status == 206 and body == data[i * MiB : (i + 1) * MiB]
    own = [cs.split(",")[-1].strip() for _, cs, _ in results]
    fetched = [cs for cs in own if "hit" not in cs.split("; ")]
    assert all("fwd=" in cs for cs in fetched), own
    for _ in range(50):  # bounded: a node accounts a request once its body is out
        samples = await metrics(node)
        fetches = summed(samples, "edge_upstream_latency_seconds_count")
        upstream_served = await served(front, upstream, path)
        if summed(samples, "edge_requests_total{") >= segments and upstream_served >= fetches:
            break
        await asyncio.sleep(0.1)
    # Each upstream fetch was made for a response that says so (the segments are
    # disjoint: a response is a hit only when the first one's stream brought its slice).
    assert len(fetched) >= upstream_served > 1, own
    assert summed(samples, "edge_requests_total{") == segments
    hits = summed(samples, "edge_requests_total{", 'cache_status="hit"')
    assert hits == segments - len(fetched)
    # Every upstream fetch for the object is counted, as many as the next hop served.
    assert summed(samples, "edge_upstream_latency_seconds_count") == upstream_served
    lines = [
        line
        for line in node.output().splitlines()
        if "edge.access" in line and f'"GET {path}?' in line
    ]
    assert len(lines) == segments
    misses = [line for line in lines if " hit " not in line]
    assert len(misses) == len(fetched)
    assert all("upstream_ms=-" not in line for line in misses), misses
