"""A 1 GiB object through one TLS edge on each protocol: filled over HTTP/1.1 (a miss),
then read from the store over HTTP/2 (curl, one connection, small requests multiplexed
beside it answered long before it ends) and over HTTP/3 (aioquic's client). Every byte
is the origin's, and the node never holds the body in memory (its peak RSS stays far
below the size).

A system test: it moves 3 GiB, HTTP/3 at aioquic's pace (about 10 MB/s here: its packet
work is Python), and runs in .ci/run's system stage.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from edge.server.tls import LocalCA
from tests.support.h3client import h3_connect
from tests.support.procs import Proc
from tests.support.tlsnodes import tls_edge
from tests.support.upstream import body_for

pytestmark = pytest.mark.system

GIB = 1 << 30
PATH = f"/big/gib.bin?size={GIB}"
SMALL = 10
#: The node's peak resident memory may grow by this much over a whole run: a body read
#: whole would add a GiB.
RSS_BOUND = 400 << 20


def expected_digest(path: str, size: int) -> str:
    """sha256 of the upstream's body for `path` (tests.support.upstream.body_for),
    computed in 1 MiB blocks of its 32-byte pattern rather than built whole."""
    seed = body_for(path, 32)
    block = seed * ((1 << 20) // len(seed))
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)
    digest.update(block[: size % len(block)])
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(600)
async def test_a_gib_over_h2_beside_small_requests_and_over_h3(
    procs: list[Proc], tmp_path: Path, upstream: Proc
) -> None:
    ca = LocalCA(tmp_path / "tls")
    pair = ca.issue("gib", ["localhost"], ["127.0.0.1"])
    edge = tls_edge(
        procs,
        tmp_path,
        upstream.url,
        [pair],
        ca.cert_path,
        "--http3",
        "--max-object-size",
        "2G",
        "--cache-size",
        "4G",
        name="gib",
    )
    base = f"https://localhost:{edge.port}"
    resolve = f"localhost:{edge.port}:127.0.0.1"
    want = expected_digest("/big/gib.bin", GIB)
    start_rss = peak_rss(edge.popen.pid)

    # The fill, over HTTP/1.1: the downloads below are hits read from the store.
    out = tmp_path / "gib.body"
    started = time.monotonic()
    fill = subprocess.run(
        ["curl", "-s", "--http1.1", "--cacert", str(ca.cert_path), "--resolve", resolve,
         "-o", str(out), "-w", "%{http_code}", f"{base}{PATH}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    h1_took = time.monotonic() - started
    assert fill.stdout == "200", fill
    assert file_digest(out) == want
    out.unlink()

    # HTTP/2: the big one first, then the small ones, all on one connection.
    fmt = (
        "%{url_effective} %{http_version} %{http_code} %{size_download} %{time_total}"
        " %{num_connects}\\n"
    )
    smalls = [a for i in range(SMALL) for a in (f"{base}/small/gib{i}", "-o", "/dev/null")]
    started = time.monotonic()
    h2 = subprocess.run(
        ["curl", "-s", "--http2", "--parallel", "--parallel-max", str(SMALL + 1),
         "--cacert", str(ca.cert_path), "--resolve", resolve, "-w", fmt,
         f"{base}{PATH}", "-o", str(out), *smalls],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    h2_took = time.monotonic() - started
    assert h2.returncode == 0, h2.stderr
    rows = [line.split() for line in h2.stdout.splitlines()]
    big = next(r for r in rows if "/big/" in r[0])
    small = [r for r in rows if "/small/" in r[0]]
    assert big[1:4] == ["2", "200", str(GIB)], big
    assert len(small) == SMALL and all(r[1:4] == ["2", "200", "1024"] for r in small), small
    assert sum(int(r[5]) for r in rows) == 1, "every transfer on one connection"
    slowest_small = max(float(r[4]) for r in small)
    assert slowest_small < float(big[4]) / 4, (slowest_small, big)
    assert file_digest(out) == want
    out.unlink()

    # HTTP/3.
    started = time.monotonic()
    async with h3_connect(edge.port, ca.cert_path) as client:
        reply = await client.request("GET", PATH, authority=f"localhost:{edge.port}", timeout=400)
    h3_took = time.monotonic() - started
    assert reply.status == 200 and "hit" in (reply.header("cache-status") or "")
    assert len(reply.body) == GIB
    assert hashlib.sha256(reply.body).hexdigest() == want

    grown = peak_rss(edge.popen.pid) - start_rss
    print(
        f"1 GiB: h1 miss {h1_took:.1f}s, h2 {h2_took:.1f}s "
        f"({GIB / h2_took / 1e6:.0f} MB/s, slowest small "
        f"{slowest_small:.3f}s), h3 {h3_took:.1f}s ({GIB / h3_took / 1e6:.0f} MB/s); "
        f"node peak RSS grew {grown >> 20} MiB"
    )
    assert grown < RSS_BOUND, grown
