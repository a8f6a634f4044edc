"""Bounded memory under decoding, with real processes: a node that decodes a gzip, br or
zstd body for clients that refuse the coding holds a bounded piece of the output at a
time, whether the encoded body is arriving from upstream or read from the store.

32 clients at once ask for 32 different objects of 16 MiB, each ~25-45 times smaller
encoded, sent by the origin with Content-Encoding; every body is read whole and
checked. The decoding node's resident set (VmRSS, sampled throughout) grows by less
than 100 MiB over what the same crowd costs without decoding, and comes back near
where it started. So do crowds of decompression bombs, cut short at the cap. At one
tier (the edge decodes) and through a shield (the edge asks the shield for no coding,
so the shield decodes; both are measured). Also the decoders on their own: every piece
they hand out is bounded, they make nothing until asked, they refuse input while output
is undrained, and their cap on the whole output still holds.
Here the parts with real processes or sockets; tests/unit/test_integrity_decode.py has
the pure ones."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import EdgeFactory, NodeFactory
from tests.support.procs import Proc
from tests.support.upstream import sparse_for

MIB = 1 << 20
CLIENTS = 32
SIZE = 16 * MIB
#: The issue's bound on a node's growth while it decodes, and how near its start it
#: must come back once the clients are served.
GROWTH = 100 * MIB
SETTLED = 30 * MIB
SITE = {"Host": "archive.example"}
CODINGS = ["gzip", "br", "zstd"]


def rss(pid: int) -> int:
    """The process's resident set in bytes (/proc/PID/status, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Sampler:
    """The peak VmRSS of some processes, sampled every few ms by a thread of its own
    (the test's event loop is busy reading bodies)."""

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.pids = {name: proc.popen.pid for name, proc in procs.items()}
        self.peak = {name: rss(pid) for name, pid in self.pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss(pid))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settled(pid: int, target: int, within: float = 10.0) -> int:
    """The lowest VmRSS seen until it is at most `target`, or `within` seconds pass
    (a process frees what it held as its last tasks end)."""
    low = rss(pid)
    deadline = time.monotonic() + within
    while low > target and time.monotonic() < deadline:
        time.sleep(0.1)
        low = min(low, rss(pid))
    return low


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=["Accept-Encoding"],
        timeout=aiohttp.ClientTimeout(total=600),
    )


async def fetch(s: aiohttp.ClientSession, url: str, accept: str) -> tuple[int, str | None, str]:
    """Status, Content-Encoding and the sha256 of the body, read whole a piece at a
    time (32 bodies of 16 MiB are not held by the test either)."""
    digest = hashlib.sha256()
    async with s.get(url, headers={**SITE, "Accept-Encoding": accept}) as resp:
        async for piece in resp.content.iter_chunked(1 << 16):
            digest.update(piece)
        return resp.status, resp.headers.get("Content-Encoding"), digest.hexdigest()


def paths(coding: str, kind: str, encoded: bool = True) -> dict[str, str]:
    """Query-bearing paths of CLIENTS objects (sent in `coding`, or not `encoded`), by
    the sha256 of their decoded body."""
    out: dict[str, str] = {}
    for i in range(CLIENTS):
        path = f"/{kind}-{coding}-{i}"
        query = f"sparse={SIZE}&ctype=text/plain" + (f"&encode={coding}" if encoded else "")
        out[f"{path}?{query}"] = hashlib.sha256(sparse_for(path, SIZE)).hexdigest()
    return out


async def crowd(base: str, objects: dict[str, str]) -> None:
    """CLIENTS clients at once, each asking for its own object without any coding; each
    gets the whole decoded body."""
    async with client() as s:
        results = await asyncio.gather(*(fetch(s, base + p, "identity") for p in objects))
    for (path, expected), (status, coding, digest) in zip(objects.items(), results, strict=True):
        assert (status, coding, digest) == (200, None, expected), path


async def warm(base: str, objects: dict[str, str], coding: str) -> None:
    """Store the encoded objects at `base`, by asking for them in their coding."""
    async with client() as s:
        for path in objects:
            status, got, _ = await fetch(s, base + path, coding)
            assert (status, got) == (200, coding), path


async def judged(
    decoding: dict[str, Proc], baseline: dict[str, int], sampler: Sampler, phase: str
) -> tuple[list[str], list[str]]:
    """Each decoding node's baseline, peak and settled size, as report lines; and the
    lines of nodes that grew by GROWTH or more, or did not settle within SETTLED."""
    report, failed = [], []
    for name, proc in decoding.items():
        after = await asyncio.to_thread(settled, proc.popen.pid, baseline[name] + SETTLED)
        line = (
            f"{name}{phase}: baseline {baseline[name] / MIB:.0f} MiB,"
            f" peak {sampler.peak[name] / MIB:.0f}, after {after / MIB:.0f}"
        )
        report.append(line)
        if sampler.peak[name] - baseline[name] >= GROWTH or after - baseline[name] >= SETTLED:
            failed.append(line)
    return report, failed


def shielded(upstream: Proc, node: NodeFactory) -> tuple[Proc, Proc]:
    """A shield on the origin and an edge in front of it, each with room for the crowd."""
    shield = node("shield", "--origin", upstream.url, "--cache-size", "4G", name="shield-1")
    front = node(
        "serve", "--shield", shield.url, "--origin", upstream.url, "--cache-size", "4G",
        name="edge-1",
    )  # fmt: skip
    return shield, front


async def decode_in_bounded_memory(
    decoding: dict[str, Proc], front: Proc, stores: Proc, coding: str
) -> None:
    """Baseline, then a crowd on objects arriving from upstream and a crowd on objects
    stored encoded (at `stores`); each node in `decoding` grows < GROWTH and settles.

    The baseline is taken once the nodes have served the same crowd for objects that
    need no decoding, and stored the encoded ones: what grows after it is decoding's."""
    # Code paths, worker threads and their malloc arenas up: a few small decodes at once.
    async with client() as s:
        warm_ups = [f"{front.url}/warm-up-{i}?sparse={MIB}&encode={coding}" for i in range(8)]
        results = await asyncio.gather(*(fetch(s, url, "identity") for url in warm_ups))
        assert all(status == 200 for status, _, _ in results)
    await crowd(front.url, paths(coding, "plain", encoded=False))
    arriving, stored = paths(coding, "arriving"), paths(coding, "stored")
    await warm(stores.url, stored, coding)
    await asyncio.sleep(0.5)
    baseline = {name: rss(proc.popen.pid) for name, proc in decoding.items()}
    report, failed = [], []
    for phase, objects in (("from upstream", arriving), ("from the store", stored)):
        with Sampler(decoding) as sampler:
            await crowd(front.url, objects)
        lines, bad = await judged(decoding, baseline, sampler, f" {phase}")
        report += lines
        failed += bad
    print("\n".join(report))
    assert not failed, report


@pytest.mark.parametrize("coding", CODINGS)
async def test_decoding_for_a_crowd_holds_bounded_memory(
    upstream: Proc, edge: EdgeFactory, coding: str
) -> None:
    node = edge(upstream.url, "--cache-size", "4G")
    await decode_in_bounded_memory({"edge": node}, node, node, coding)


@pytest.mark.parametrize("coding", CODINGS)
async def test_decoding_for_a_crowd_through_a_shield_holds_bounded_memory(
    upstream: Proc, node: NodeFactory, coding: str
) -> None:
    shield, front = shielded(upstream, node)
    # The shield keeps the origin's encoding and decodes for the edge, which asks for
    # no coding; the edge keeps and relays what it gets.
    await decode_in_bounded_memory({"shield": shield, "edge": front}, front, shield, coding)


# ------------------------------------------------------------------ decompression bombs

BOMB = 200 * MIB


async def fetch_cut(s: aiohttp.ClientSession, url: str) -> tuple[int, int, bool]:
    """Status, bytes received and whether the body was cut short."""
    received = 0
    async with s.get(url, headers={**SITE, "Accept-Encoding": "identity"}) as resp:
        try:
            async for piece in resp.content.iter_chunked(1 << 16):
                received += len(piece)
        except aiohttp.ClientPayloadError:
            return resp.status, received, True
        return resp.status, received, False


async def bombs_in_bounded_memory(
    decoding: dict[str, Proc], front: Proc, origin: Proc, coding: str
) -> None:
    """32 clients at once ask for 32 bombs (200 MiB of zeros, sent encoded): each body is
    cut short at the decoding cap (MAX_DECODE_RATIO times the encoded size), and the
    decoding nodes grow < GROWTH and settle."""
    async with client() as s:  # the origin encodes its bomb once, before the crowd
        status, _, _ = await fetch(s, f"{origin.url}/bomb?encode={coding}&zeros={BOMB}", coding)
        assert status == 200
        status, _, _ = await fetch(s, f"{front.url}/warm-up?sparse={MIB}&encode={coding}", "")
        assert status == 200
    baseline = {name: rss(proc.popen.pid) for name, proc in decoding.items()}
    urls = [
        f"{front.url}/bomb-{coding}-{i}?encode={coding}&zeros={BOMB}&ctype=text/plain"
        for i in range(CLIENTS)
    ]
    with Sampler(decoding) as sampler:
        async with client() as s:
            results = await asyncio.gather(*(fetch_cut(s, url) for url in urls))
    for status, received, cut in results:
        assert status == 200 and cut and received < 64 * MIB, (status, received, cut)
    report, failed = await judged(decoding, baseline, sampler, "")
    print("\n".join(report))
    assert not failed, report


@pytest.mark.parametrize("coding", CODINGS)
async def test_bombs_for_a_crowd_stop_at_the_cap_in_bounded_memory(
    upstream: Proc, edge: EdgeFactory, coding: str
) -> None:
    node = edge(upstream.url, "--cache-size", "4G")
    await bombs_in_bounded_memory({"edge": node}, node, upstream, coding)


@pytest.mark.parametrize("coding", CODINGS)
async def test_bombs_for_a_crowd_through_a_shield_stop_at_the_cap_in_bounded_memory(
    upstream: Proc, node: NodeFactory, coding: str
) -> None:
    shield, front = shielded(upstream, node)
    await bombs_in_bounded_memory({"shield": shield, "edge": front}, front, upstream, coding)
