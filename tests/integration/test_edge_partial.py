"""Partial responses end to end (RFC 9111 Sections 3.3 and 3.4): a cold range is
passed upstream and its 206 kept as the part it is; ranges inside the part are hits;
a request past it asks upstream only for what the part lacks and combines the two
when they carry the same strong validator, and otherwise fetches the whole. A real
`edge serve` in front of the scriptable test upstream (tests/support/upstream.py),
driven by aiohttp and curl."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from tests.integration.conftest import EdgeFactory
from tests.support.procs import Proc
from tests.support.upstream import body_for, text_for

SIZE = 10_000
#: Not periodic (text_for draws words), so bytes put in the wrong place show.
OBJECT = text_for("/book", SIZE)
FIELDS = f"ranges=1&text=1&size={SIZE}"


async def fetch(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["Accept-Encoding"]) as s,
        s.get(url, headers=headers) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


def asked(upstream: Proc, path: str) -> list[str | None]:
    """The Range field of each request the upstream had for `path` (None: none)."""
    with urllib.request.urlopen(f"{upstream.url}/_ranges{path}", timeout=5) as resp:
        return list(json.load(resp))


def status_of(headers: CIMultiDict[str]) -> list[str]:
    return headers["Cache-Status"].split("; ")


def curl_range(url: str, spec: str, out: Path) -> tuple[str, bytes]:
    """`curl -r spec`: the response's head, and the body it saved."""
    head = subprocess.run(
        ["curl", "-s", "-D", "-", "-r", spec, "-o", str(out), url],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    ).stdout
    return head, out.read_bytes()


async def test_a_cold_range_is_stored_as_its_part_and_ranges_inside_it_are_hits(
    upstream: Proc, edge: EdgeFactory, tmp_path: Path
) -> None:
    node = edge(upstream.url)
    url = f"{node.url}/book?{FIELDS}&etag=%22v1%22"
    status, headers, body = await fetch(url, Range="bytes=100-1099")
    assert status == 206 and body == OBJECT[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{SIZE}"
    assert asked(upstream, "/book") == ["bytes=100-1099"]  # passed on as the client asked
    status, headers, body = await fetch(url, Range="bytes=500-599")
    assert status == 206 and body == OBJECT[500:600]
    assert headers["Content-Range"] == f"bytes 500-599/{SIZE}"
    assert "hit" in status_of(headers)
    head, saved = curl_range(url, "1000-1099", tmp_path / "part")
    assert head.startswith("HTTP/1.1 206") and saved == OBJECT[1000:1100]
    assert asked(upstream, "/book") == ["bytes=100-1099"]  # both were hits
    # Bytes 0-1 are not in the part, which lies in the middle: the whole is fetched.
    status, headers, body = await fetch(url, Range="bytes=0-1,200-201")
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    assert f"bytes 0-1/{SIZE}\r\n\r\n".encode() + OBJECT[0:2] in body
    assert f"bytes 200-201/{SIZE}\r\n\r\n".encode() + OBJECT[200:202] in body
    assert asked(upstream, "/book") == ["bytes=100-1099", None]
    # A range past the end is answered from what is known: the complete length.
    status, headers, _ = await fetch(url, Range=f"bytes={SIZE + 5}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{SIZE}"


async def test_a_part_is_completed_with_only_what_it_lacks(
    upstream: Proc, edge: EdgeFactory
) -> None:
    node = edge(upstream.url)
    url = f"{node.url}/book?{FIELDS}&etag=%22v1%22"
    status, _, body = await fetch(url, Range="bytes=0-999")
    assert status == 206 and body == OBJECT[:1000]
    status, headers, body = await fetch(url)
    assert status == 200 and body == OBJECT
    assert "fwd=partial" in status_of(headers) and "stored" in status_of(headers)
    assert asked(upstream, "/book") == ["bytes=0-999", "bytes=1000-"]
    # Combined into the whole: every request is a hit from now on.
    for spec in (None, "bytes=5000-5099", "bytes=-10"):
        status, headers, body = await fetch(url, **({"Range": spec} if spec else {}))
        assert "hit" in status_of(headers), spec
    assert body == OBJECT[-10:]
    assert len(asked(upstream, "/book")) == 2


async def test_a_part_at_the_end_is_completed_from_the_start(
    upstream: Proc, edge: EdgeFactory
) -> None:
    node = edge(upstream.url)
    url = f"{node.url}/book?{FIELDS}&lm=old"  # Last-Modified the only validator
    status, headers, body = await fetch(url, Range="bytes=-1000")
    assert status == 206 and body == OBJECT[-1000:]
    status, headers, body = await fetch(url, Range="bytes=8999-9009")  # one byte before it
    assert status == 206 and body == OBJECT[8999:9010]
    assert asked(upstream, "/book") == ["bytes=-1000", f"bytes=0-{SIZE - 1001}"]
    status, headers, body = await fetch(url)
    assert status == 200 and body == OBJECT and "hit" in status_of(headers)


async def test_a_part_without_a_strong_validator_is_never_combined(
    upstream: Proc, edge: EdgeFactory
) -> None:
    """RFC 9111 Section 3.4: nothing says the two parts are of one representation; the
    rest is asked for, and then the whole."""
    node = edge(upstream.url)
    url = f"{node.url}/book?{FIELDS}"
    await fetch(url, Range="bytes=0-999")
    status, _, body = await fetch(url)
    assert status == 200 and body == OBJECT
    assert asked(upstream, "/book") == ["bytes=0-999", "bytes=1000-", None]
    status, headers, body = await fetch(url, Range="bytes=9000-")
    assert body == OBJECT[9000:] and "hit" in status_of(headers)


async def test_a_changed_object_is_never_spliced_onto_a_part(
    upstream: Proc, edge: EdgeFactory
) -> None:
    """The origin ignores If-Range (as a careless one does) and the object changed
    after the part was stored: the new part's ETag differs, so it is not combined;
    the whole of the new version is fetched and served."""
    node = edge(upstream.url)
    url = f"{node.url}/book?{FIELDS}&etag=%22v1%22&changes=1&etag2=%22v2%22"
    await fetch(url, Range="bytes=0-999")
    status, headers, body = await fetch(url)
    assert status == 200 and body == text_for("/book#2", SIZE)
    assert headers["ETag"] == '"v2"'
    sent = asked(upstream, "/book")
    assert sent == ["bytes=0-999", "bytes=1000-", None]


async def test_a_collapsed_request_never_gets_another_clients_part(
    upstream: Proc, edge: EdgeFactory
) -> None:
    """Requests that join a fill bringing one client's 206 ask for their own answer."""
    node = edge(upstream.url)
    url = f"{node.url}/book?{FIELDS}&etag=%22v1%22&delay=0.5"
    (s1, _, b1), (s2, _, b2), (s3, _, b3) = await asyncio.gather(
        fetch(url, Range="bytes=0-99"), fetch(url), fetch(url, Range="bytes=5000-5009")
    )
    assert (s1, b1) == (206, OBJECT[:100])
    assert (s2, b2) == (200, OBJECT)
    assert (s3, b3) == (206, OBJECT[5000:5010])


async def test_a_cold_range_of_a_big_object_keeps_the_slice_it_lands_in(
    upstream: Proc, edge: EdgeFactory
) -> None:
    """A big object is kept as slices (tests/integration/test_edge_slices.py), whichever
    range first found it: its 206 to a client's range tells edge its size, and edge asks
    for the slice the range lands in, as for a seek past the slicing threshold."""
    mib = 1 << 20
    size = 6 * mib
    node = edge(upstream.url, "--slice-size", "1M", "--slice-threshold", "4M")
    url = f"{node.url}/big?ranges=1&etag=%22b1%22&size={size}"
    data = body_for("/big", size)
    start = mib + 100
    status, headers, body = await fetch(url, Range=f"bytes={start}-{start + 99}")
    assert status == 206 and body == data[start : start + 100]
    assert headers["Content-Range"] == f"bytes {start}-{start + 99}/{size}"
    assert asked(upstream, "/big") == [f"bytes={start}-{start + 99}", f"bytes={mib}-{2 * mib - 1}"]
    status, headers, body = await fetch(url, Range=f"bytes={mib}-{2 * mib - 1}")
    assert status == 206 and body == data[mib : 2 * mib] and "hit" in status_of(headers)
    status, headers, body = await fetch(url)  # the other slices, each by range
    assert status == 200 and body == data and "fwd=partial" in status_of(headers)
    assert len(asked(upstream, "/big")) == 2 + 5
