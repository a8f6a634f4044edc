"""What is stored is what the object is; its bytes never change under a validator;
Cache-Status and metrics say what happened. Real test upstreams, `edge serve` alone and
behind `edge shield`, driven by aiohttp and curl.

Each test runs at one tier (edge -> origin) and through a shield (edge -> shield ->
origin): what one tier gets wrong, the next must not repeat or store for everyone.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.conftest import NodeFactory
from tests.support.procs import Proc
from tests.support.upstream import body_for

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
