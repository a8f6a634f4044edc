"""Scenario: guard soak — abusive clients beside well-behaved ones, at one edge.

    python -m scenarios.guard_soak                     # 20 s baseline, 30 s soak
    python -m scenarios.guard_soak --quick             # 5 s + 8 s (about 30 s in all)
    python -m scenarios.guard_soak --flood-rate 2000 --slowloris 400

Starts `edge origin` (random-byte objects, `public, max-age=3600`) and one `edge serve
--config FILE` whose guard is set for a short run: rate_limit 200/s, burst 400 per
client address, header_timeout 2 s, body_timeout 2 s, keepalive_timeout 5 s,
max_connections_per_client 32 and `trusted_proxies = []`, so that loopback clients count
as clients. Every client binds its own loopback source address (127.0.0.x), so the
edge tells them apart as it would tell apart addresses on the internet.

1. Baseline: well-behaved clients alone (8, from 127.0.0.10-17), each one request at a
   time at a fixed rate well under the limit, mostly cached small objects and a few
   misses (unique queries). Success rate and latency p50/p99/max.
2. Soak: the same load while abusers run from other addresses in a separate process
   (this module with `--abuse SPEC`, so their client work does not stall the
   well-behaved clients' event loop): slowloris (heads trickled a byte a second, plus
   idle connections that send nothing), a flood over the rate limit from one address,
   range bombs on a large cached object, oversize request lines and headers, request
   smuggling (CL.TE, TE.CL, TE.TE, CL.CL) and slow POST bodies.
3. A table of both phases, the ratio soak p99 / baseline p99, what each abuser got, and
   the edge's guard counters (/_edge/metrics) per phase; JSON in
   scenarios/out/guard_soak.json and the processes' logs beside it.

Goals (exit 1, one line each, when missed): the well-behaved clients lose nothing (every
request a whole 200, no 429) in either phase, their soak p99 is at most twice the
baseline p99, and every abuser is refused as the guard promises (see `judge_abusers`).

Owns the load generators for both kinds of client and the judging; processes, ports and
Prometheus parsing come from scenarios.harness. Must not import edge/ or origin/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from scenarios.harness import (
    Child,
    Processes,
    ScenarioError,
    client_loop_factory,
    edge_command,
    free_port,
    http_get_text,
    prometheus_samples,
    report_path,
    run_main,
    wait_http_ok,
    wait_tcp,
    write_report,
)

# The guard as this run sets it (a node TOML); short timeouts so a run takes a minute.
GUARD = {
    "rate_limit": 200,
    "rate_burst": 400,
    "header_timeout": 2.0,
    "body_timeout": 2.0,
    "body_min_rate": 500,
    "keepalive_timeout": 5.0,
    "max_connections_per_client": 32,
}
# aiohttp reads on for this long after refusing an unread body (edge/server/node.py).
LINGER_S = 2.0
# What a client may see beyond a deadline before it counts as held too long: the
# edge's timers are checked on its event loop, which is busy during a soak.
SLACK_S = 1.5

ORIGIN_RULE = "/*=public, max-age=3600"
SMALL_OBJECTS = 32
SMALL_SIZE = 8 << 10
LARGE_SIZE = 2 << 20
SMALL_PATH = "/small/obj-{}.bin"
LARGE_PATH = "/large/archive.bin"

# Loopback source addresses: the edge sees each as a different client.
METRICS_ADDR = "127.0.0.1"
WELL_BEHAVED_BASE = 10  # 127.0.0.10, .11, ...
SLOWLORIS_ADDRS = ("127.0.0.60", "127.0.0.61", "127.0.0.62", "127.0.0.63")
IDLE_ADDR = "127.0.0.64"
FLOOD_ADDR = "127.0.0.70"
RANGE_ADDR = "127.0.0.80"
OVERSIZE_ADDR = "127.0.0.81"
SMUGGLE_ADDR = "127.0.0.82"
SLOW_POST_ADDR = "127.0.0.83"

# Abusers start this long before the well-behaved soak load, so that it meets them
# established (slowloris slots taken, the flood's bucket empty).
LEAD_S = 1.5
ABUSERS = ("slowloris", "idle", "flood", "range_bombs", "oversize", "smuggling", "slow_post")
RUN_TIMEOUT = 900.0


# ---------------------------------------------------------------------------------------
# Small helpers.


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 (nearest rank) and max, in milliseconds."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {k: round(v * 1000, 3) for k, v in (("p50", rank(50)), ("p99", rank(99)))} | {
        "max": round(ordered[-1] * 1000, 3)
    }


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def status_of(data: bytes) -> int | None:
    """The status of the first response in `data`, None when there is none."""
    if not data.startswith(b"HTTP/1."):
        return None
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def response_count(data: bytes) -> int:
    """Status lines in a byte stream: more than one means a pipelined request was
    answered (on a smuggling connection, the smuggled one)."""
    return data.count(b"\r\nHTTP/1.") + (1 if data.startswith(b"HTTP/1.") else 0)


def machine_busy() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # Only the first eight fields: guest time is already counted in user.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------
# The processes.


@dataclass
class Node:
    name: str
    child: Child
    port: int
    argv: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_objects(root: Path) -> None:
    rng = random.Random(7)
    small = root / "small"
    small.mkdir(parents=True)
    for i in range(SMALL_OBJECTS):
        (small / f"obj-{i}.bin").write_bytes(rng.randbytes(SMALL_SIZE))
    (root / "large").mkdir()
    (root / LARGE_PATH.lstrip("/")).write_bytes(rng.randbytes(LARGE_SIZE))


def start_origin(procs: Processes, root: Path) -> Node:
    port = free_port()
    argv = edge_command(
        "origin", "--root", str(root), "--listen", f"127.0.0.1:{port}", "--rule", ORIGIN_RULE
    )
    child = procs.start("origin", argv)
    wait_tcp(child, port)
    return Node("origin", child, port, argv)


def edge_toml(port: int, origin: Node, cache_dir: Path) -> str:
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "upstream": origin.url,
        "cache_dir": str(cache_dir),
        "name": "edge-soak",
        # Nobody is trusted by default; said explicitly, as every loopback address here
        # is a client, limited like any other.
        "trusted_proxies": [],
        **GUARD,
    }

    def value(v: Any) -> str:
        return "[]" if v == [] else json.dumps(v)

    return "".join(f"{k} = {value(v)}\n" for k, v in settings.items())


def start_edge(procs: Processes, work: Path, origin: Node) -> Node:
    port = free_port()
    config = work / "edge.toml"
    config.write_text(edge_toml(port, origin, work / "cache-edge"))
    argv = edge_command("serve", "--config", str(config))
    child = procs.start("edge", argv)
    wait_http_ok(child, f"http://127.0.0.1:{port}/_edge/health")
    return Node("edge-soak", child, port, argv)


def warm(edge: Node) -> None:
    """Every small object and the large one cached before the baseline."""
    objects = {SMALL_PATH.format(i): SMALL_SIZE for i in range(SMALL_OBJECTS)}
    for path, size in {**objects, LARGE_PATH: LARGE_SIZE}.items():
        try:
            with urllib.request.urlopen(edge.url + path, timeout=10) as resp:
                got = len(resp.read())
        except (OSError, urllib.error.URLError) as exc:
            raise ScenarioError(f"warming {path} failed: {exc}") from None
        if got != size:
            raise ScenarioError(f"warming {path} returned {got} bytes, not {size}")


def metrics(edge: Node) -> dict[str, Any]:
    """The guard's counters and the requests by status, from /_edge/metrics."""
    text = http_get_text(f"{edge.url}/_edge/metrics")
    refused = Counter[str]()
    for labels, value in prometheus_samples(text, "edge_guard_refused_total"):
        refused[labels.get("code", "?")] += int(value)
    codes = Counter[str]()
    for labels, value in prometheus_samples(text, "edge_requests_total"):
        codes[labels.get("code", "?")] += int(value)
    conns = sum(v for _, v in prometheus_samples(text, "edge_guard_connections_refused_total"))
    return {"refused": dict(refused), "connections_refused": int(conns), "requests": dict(codes)}


def metrics_delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    def sub(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
        return {k: a[k] - b.get(k, 0) for k in sorted(a) if a[k] - b.get(k, 0)}

    return {
        "refused": sub(after["refused"], before["refused"]),
        "connections_refused": after["connections_refused"] - before["connections_refused"],
        "requests": sub(after["requests"], before["requests"]),
    }


# ---------------------------------------------------------------------------------------
# Well-behaved clients.


@dataclass
class Sample:
    kind: str  # "hit" or "miss" (what was asked for, not what the edge said)
    status: int  # 0: no answer
    ok: bool
    seconds: float
    at: float  # when it was sent (time.monotonic)
    error: str = ""


async def behaved_client(
    port: int, index: int, phase: str, rate: float, miss_ratio: float, duration: float
) -> list[Sample]:
    """One client from its own address: a request at a time, `rate` a second, for
    `duration` seconds (and at most rate x duration x 1.2 requests)."""
    rng = random.Random(f"{phase}-{index}")
    source = f"127.0.0.{WELL_BEHAVED_BASE + index}"
    # Idle connections retire before the edge's keepalive_timeout could close one
    # under a request.
    connector = aiohttp.TCPConnector(
        local_addr=(source, 0), limit=4, keepalive_timeout=GUARD["keepalive_timeout"] / 2
    )
    timeout = aiohttp.ClientTimeout(total=10)
    samples: list[Sample] = []
    interval = 1 / rate
    limit = int(rate * duration * 1.2) + 2
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        # Clients start spread over one interval, not in lock step.
        due = start + interval * index / 8
        while len(samples) < limit:
            now = time.monotonic()
            if now - start >= duration:
                break
            if due > now:
                await asyncio.sleep(due - now)
            due = max(due + interval, time.monotonic() - interval)
            path = SMALL_PATH.format(rng.randrange(SMALL_OBJECTS))
            kind = "hit"
            if rng.random() < miss_ratio:
                kind = "miss"
                path += f"?miss={phase}-{index}-{len(samples)}"
            t0 = time.monotonic()
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    body = await resp.read()
                    status = resp.status
                elapsed = time.monotonic() - t0
                ok = status == 200 and len(body) == SMALL_SIZE
                error = "" if ok else f"status {status}, {len(body)} bytes"
                samples.append(Sample(kind, status, ok, elapsed, t0, error))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                elapsed = time.monotonic() - t0
                samples.append(Sample(kind, 0, False, elapsed, t0, type(exc).__name__))
    return samples


async def behaved_load(
    port: int, clients: int, phase: str, rate: float, miss_ratio: float, duration: float
) -> list[Sample]:
    runs = [behaved_client(port, i, phase, rate, miss_ratio, duration) for i in range(clients)]
    return [s for run in await asyncio.gather(*runs) for s in run]


def summarise_phase(samples: Sequence[Sample], started: float, seconds: float) -> dict[str, Any]:
    """Counts and latencies of one phase; the slowest 1% (at most 50) with when they
    were sent, to tell a steady slowdown from stalls."""
    ok = [s for s in samples if s.ok]
    hits = [s.seconds for s in ok if s.kind == "hit"]
    slowest = sorted(ok, key=lambda s: s.seconds)[-min(50, math.ceil(len(ok) / 100)) :]
    return {
        "requests": len(samples),
        "ok": len(ok),
        "success_rate": round(len(ok) / len(samples), 6) if samples else None,
        "statuses": dict(Counter(str(s.status) for s in samples)),
        "errors": dict(Counter(s.error for s in samples if s.error)),
        "got_429": sum(s.status == 429 for s in samples),
        "misses_asked": sum(s.kind == "miss" for s in samples),
        "latency_ms": percentiles([s.seconds for s in ok]),
        "hit_latency_ms": percentiles(hits),
        "slowest": [
            {"at_s": round(s.at - started, 3), "ms": round(s.seconds * 1000, 2), "kind": s.kind}
            for s in sorted(slowest, key=lambda s: s.at)
        ],
        "seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------------------------
# Abusers (run in their own process: `--abuse SPEC`).


@dataclass
class ConnStats:
    """Outcomes of an abuser's connections and how long the edge let each live."""

    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    held: dict[str, float] = field(default_factory=dict)  # longest per outcome
    open_at_end: int = 0
    longest_open_at_end: float = 0.0

    def record(self, outcome: str, held: float) -> None:
        self.outcomes[outcome] += 1
        self.held[outcome] = round(max(self.held.get(outcome, 0.0), held), 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "connections": self.attempts,
            "outcomes": dict(self.outcomes),
            "longest_held_s": self.held,
            "open_at_end": self.open_at_end,
            "longest_open_at_end_s": round(self.longest_open_at_end, 3),
        }


def outcome_of(data: bytes) -> str:
    """'408', '431', ... for an answered connection; 'closed' when the edge closed it
    without an answer (the per-address cap, or a reset)."""
    status = status_of(data)
    return "closed" if status is None else str(status)


async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5.0
    )


def close_quietly(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def read_for(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What arrives within `seconds`: bytes, b'' at EOF or reset, None if nothing came."""
    try:
        return await asyncio.wait_for(reader.read(65536), max(0.0, seconds))
    except TimeoutError:
        return None
    except (ConnectionError, OSError):
        return b""


async def read_to_close(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, bool]:
    """Everything until the edge closes (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    data = b""
    while True:
        chunk = await read_for(reader, deadline - time.monotonic())
        if chunk is None:
            return data, False
        if not chunk:
            return data, True
        data += chunk


async def trickle_slot(
    source: str, port: int, host: str, deadline: float, stats: ConnStats, *, silent: bool
) -> None:
    """One slowloris slot: connect, send a head a byte a second (or nothing when
    `silent`), see how long the edge keeps the connection; reconnect until the end."""
    while True:
        if time.monotonic() >= deadline - 0.5:
            return
        stats.attempts += 1
        t0 = time.monotonic()
        try:
            reader, writer = await open_from(source, port)
        except (OSError, TimeoutError):
            stats.record("connect failed", time.monotonic() - t0)
            await asyncio.sleep(0.5)
            continue
        head = f"GET {SMALL_PATH.format(0)} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
        data = b""
        try:
            if not silent:
                writer.write(head)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    stats.open_at_end += 1
                    stats.longest_open_at_end = max(stats.longest_open_at_end, now - t0)
                    return
                chunk = await read_for(reader, min(1.0, deadline - now))
                if chunk is None:
                    if not silent:
                        writer.write(b"a")
                    continue
                if not chunk:
                    stats.record(outcome_of(data), time.monotonic() - t0)
                    break
                data += chunk
        finally:
            close_quietly(writer)
        # An attacker reconnects at once to take the slot back; a pause keeps the
        # refused-at-once slots from spinning.
        await asyncio.sleep(0.5)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    """One response on a keep-alive connection (Content-Length framed, as the edge
    frames cached objects and its own answers): status and header fields."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if b"transfer-encoding" in fields:
        raise ValueError("a chunked response")
    await reader.readexactly(int(fields.get(b"content-length", b"0")))
    return status, fields


async def flood(
    port: int, rate: float, connections: int, deadline: float, out: dict[str, Any]
) -> None:
    """Requests for a cached object from one address at `rate` a second (over the
    limit), on keep-alive connections; what came back. A bare client on streams: an
    HTTP library would cost this process (on the edge's machine) several times the CPU."""
    statuses: Counter[str] = Counter()
    retry_after = Counter[str]()
    errors = Counter[str]()
    interval = connections / rate
    started = time.monotonic()
    limit = int(rate * (deadline - started) * 1.2) + 10
    sent = 0
    first = last = 0.0
    request = (
        f"GET {SMALL_PATH.format(1)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "User-Agent: flood\r\n\r\n"
    ).encode()

    async def worker(i: int) -> None:
        nonlocal sent, first, last
        due = started + interval * i / connections
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while sent < limit:
                now = time.monotonic()
                if now >= deadline:
                    return
                if due > now:
                    await asyncio.sleep(due - now)
                due = max(due + interval, time.monotonic() - interval)
                sent += 1
                first = first or time.monotonic()
                try:
                    if conn is None:
                        conn = await open_from(FLOOD_ADDR, port)
                    conn[1].write(request)
                    status, fields = await asyncio.wait_for(read_response(conn[0]), 10.0)
                    statuses[str(status)] += 1
                    if status == 429:
                        retry_after[fields.get(b"retry-after", b"none").decode()] += 1
                    if fields.get(b"connection", b"").lower() == b"close":
                        close_quietly(conn[1])
                        conn = None
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                    errors[type(exc).__name__] += 1
                    if conn is not None:
                        close_quietly(conn[1])
                    conn = None
                last = time.monotonic()
        finally:
            if conn is not None:
                close_quietly(conn[1])

    await asyncio.gather(*(worker(i) for i in range(connections)))
    out.update(
        {
            "from": FLOOD_ADDR,
            "offered_rate": rate,
            "connections": connections,
            "requests": sent,
            "statuses": dict(statuses),
            "retry_after": dict(retry_after),
            "errors": dict(errors),
            "span_s": round(last - first, 3) if sent else 0.0,
        }
    )


def range_bombs() -> dict[str, str]:
    """Range fields that would multiply the bytes sent if honoured as written."""
    tiny = ",".join(f"{2 * i}-{2 * i}" for i in range(400))
    return {
        "16x 0-": "bytes=" + ",".join(["0-"] * 16),
        "200x 0-": "bytes=" + ",".join(["0-"] * 200),
        "400 tiny": "bytes=" + tiny,
        "16 overlapping": "bytes=" + ",".join(f"{i}-{LARGE_SIZE - 1}" for i in range(16)),
        "16 tiny": "bytes=" + ",".join(f"{100 * i}-{100 * i}" for i in range(16)),
    }


def oversize_requests(host: str) -> dict[str, tuple[bytes, tuple[int, ...]]]:
    """Requests over the edge's default limits (8190-byte lines, 100 fields, 64 KiB of
    fields), and the statuses each should get."""
    path = SMALL_PATH.format(2)
    many = "".join(f"X-Many-{i}: v\r\n" for i in range(150))
    big = "".join(f"X-Big-{i}: {'b' * 4000}\r\n" for i in range(20))
    return {
        "request line 16 KiB": (
            f"GET {path}?q={'a' * 16384} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
            (414,),
        ),
        "header line 16 KiB": (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Long: {'a' * 16384}\r\n\r\n".encode(),
            (431,),
        ),
        "150 header fields": (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{many}\r\n".encode(),
            (431,),
        ),
        "80 KiB of fields": (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{big}\r\n".encode(), (431,)),
    }


def smuggling_requests(host: str, marker: str) -> dict[str, bytes]:
    """Requests whose framing two parsers could read differently; the hidden second
    request names a path containing `marker`, which the origin must never see."""
    inner = f"GET /{marker}-{{}} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    path = SMALL_PATH.format(3)
    out = {}
    body = "0\r\n\r\n" + inner.format("clte")
    out["CL.TE"] = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n{body}"
    )
    chunk = inner.format("tecl")
    out["TE.CL"] = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n{len(chunk):x}\r\n{chunk}\r\n0\r\n\r\n"
    )
    out["TE.TE"] = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        f"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n{inner.format('tete')}"
    )
    out["TE obfuscated"] = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n"
        f"Content-Length: 5\r\n\r\n0\r\n\r\n{inner.format('teobf')}"
    )
    out["CL.CL"] = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
        f"Content-Length: {len(inner.format('clcl'))}\r\n\r\n{inner.format('clcl')}"
    )
    return {k: v.encode() for k, v in out.items()}


async def one_shot(source: str, port: int, data: bytes, wait: float) -> tuple[bytes, bool, float]:
    """Send `data` on a fresh connection: what came back, whether the edge closed the
    connection within `wait` seconds, and when (from the connect)."""
    t0 = time.monotonic()
    reader, writer = await open_from(source, port)
    try:
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(data)
            await writer.drain()
        got, closed = await read_to_close(reader, wait)
        return got, closed, time.monotonic() - t0
    finally:
        close_quietly(writer)


async def ranges_abuser(
    port: int, host: str, rate: float, deadline: float, out: dict[str, Any]
) -> None:
    bombs = range_bombs()
    per_kind: dict[str, dict[str, Any]] = {
        k: {"statuses": Counter(), "max_body_bytes": 0} for k in bombs
    }
    errors = Counter[str]()
    kinds = list(bombs)
    i = 0
    while time.monotonic() < deadline - 1 and i < 10_000:
        kind = kinds[i % len(kinds)]
        i += 1
        t0 = time.monotonic()
        req = (
            f"GET {LARGE_PATH} HTTP/1.1\r\nHost: {host}\r\nRange: {bombs[kind]}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            got, closed, _ = await one_shot(RANGE_ADDR, port, req, 10.0)
        except (OSError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            continue
        head_end = got.find(b"\r\n\r\n")
        body = len(got) - head_end - 4 if head_end >= 0 else 0
        rec = per_kind[kind]
        rec["statuses"][outcome_of(got)] += 1
        rec["max_body_bytes"] = max(rec["max_body_bytes"], body)
        if not closed:
            errors["not closed after Connection: close"] += 1
        await asyncio.sleep(max(0.0, t0 + 1 / rate - time.monotonic()))
    out.update(
        {
            "from": RANGE_ADDR,
            "object_bytes": LARGE_SIZE,
            "requests": i,
            "kinds": {
                k: {
                    "statuses": dict(v["statuses"]),
                    "max_body_bytes": v["max_body_bytes"],
                    "max_amplification": round(v["max_body_bytes"] / LARGE_SIZE, 4),
                    "range": bombs[k][:60] + ("..." if len(bombs[k]) > 60 else ""),
                }
                for k, v in per_kind.items()
            },
            "errors": dict(errors),
        }
    )


async def one_shot_abuser(
    port: int,
    source: str,
    requests: Mapping[str, bytes],
    rate: float,
    deadline: float,
    out: dict[str, Any],
) -> None:
    """Each request in turn on a fresh connection at `rate` a second: per kind, the
    statuses, how many connections the edge left open, and how many answered twice."""
    per_kind = {
        k: {"statuses": Counter[str](), "left_open": 0, "answered_twice": 0} for k in requests
    }
    errors = Counter[str]()
    kinds = list(requests)
    i = 0
    while time.monotonic() < deadline - 1 and i < 10_000:
        kind = kinds[i % len(kinds)]
        i += 1
        t0 = time.monotonic()
        try:
            got, closed, _ = await one_shot(source, port, requests[kind], 3.0)
        except (OSError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            continue
        rec = per_kind[kind]
        rec["statuses"][outcome_of(got)] += 1
        rec["left_open"] += not closed
        rec["answered_twice"] += response_count(got) > 1
        await asyncio.sleep(max(0.0, t0 + 1 / rate - time.monotonic()))
    out.update(
        {
            "from": source,
            "requests": i,
            "kinds": {k: {**v, "statuses": dict(v["statuses"])} for k, v in per_kind.items()},
            "errors": dict(errors),
        }
    )


async def slow_post_slot(
    port: int, host: str, deadline: float, stats: ConnStats, answered: list[float]
) -> None:
    """A POST whose body comes a byte a second: when the edge answers (and closes)."""
    head = (
        f"POST /upload/slow HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream"
        f"\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    while time.monotonic() < deadline - 0.5:
        stats.attempts += 1
        t0 = time.monotonic()
        try:
            reader, writer = await open_from(SLOW_POST_ADDR, port)
        except (OSError, TimeoutError):
            stats.record("connect failed", time.monotonic() - t0)
            await asyncio.sleep(0.5)
            continue
        data = b""
        try:
            writer.write(head)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    stats.open_at_end += 1
                    stats.longest_open_at_end = max(stats.longest_open_at_end, now - t0)
                    return
                chunk = await read_for(reader, min(1.0, deadline - now))
                if chunk is None:
                    if not data:  # still trickling until the edge answers
                        with contextlib.suppress(ConnectionError, OSError):
                            writer.write(b"x")
                    continue
                if not chunk:
                    stats.record(outcome_of(data), time.monotonic() - t0)
                    break
                if not data:
                    answered.append(time.monotonic() - t0)
                data += chunk
        finally:
            close_quietly(writer)
        await asyncio.sleep(0.5)


async def abuse(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every abuser named in spec['abusers'] at once until the deadline; what each got."""
    port, host = spec["port"], f"127.0.0.1:{spec['port']}"
    started = time.monotonic()
    deadline = started + spec["duration"]
    chosen = set(spec["abusers"])
    print("abusers: started", flush=True)
    slow, idle, posts = ConnStats(), ConnStats(), ConnStats()
    answered: list[float] = []
    outs: dict[str, dict[str, Any]] = {name: {} for name in ABUSERS}
    tasks: list[Any] = []
    if "slowloris" in chosen:
        tasks += [
            trickle_slot(
                SLOWLORIS_ADDRS[i % len(SLOWLORIS_ADDRS)], port, host, deadline, slow, silent=False
            )
            for i in range(spec["slowloris"])
        ]
    if "idle" in chosen:
        tasks += [
            trickle_slot(IDLE_ADDR, port, host, deadline, idle, silent=True)
            for _ in range(spec["idle"])
        ]
    if "slow_post" in chosen:
        tasks += [
            slow_post_slot(port, host, deadline, posts, answered) for _ in range(spec["slow_posts"])
        ]
    if "flood" in chosen:
        tasks.append(
            flood(port, spec["flood_rate"], spec["flood_connections"], deadline, outs["flood"])
        )
    if "range_bombs" in chosen:
        tasks.append(ranges_abuser(port, host, spec["range_rate"], deadline, outs["range_bombs"]))
    oversize = oversize_requests(host)
    if "oversize" in chosen:
        requests = {k: v[0] for k, v in oversize.items()}
        tasks.append(
            one_shot_abuser(
                port, OVERSIZE_ADDR, requests, spec["oneshot_rate"], deadline, outs["oversize"]
            )
        )
        outs["oversize"]["expected"] = {k: list(v[1]) for k, v in oversize.items()}
    if "smuggling" in chosen:
        requests = smuggling_requests(host, spec["marker"])
        tasks.append(
            one_shot_abuser(
                port, SMUGGLE_ADDR, requests, spec["oneshot_rate"], deadline, outs["smuggling"]
            )
        )
        outs["smuggling"]["marker"] = spec["marker"]
    await asyncio.gather(*tasks)
    outs["slowloris"] = {"from": list(SLOWLORIS_ADDRS), "slots": spec["slowloris"]}
    outs["slowloris"] |= slow.to_json()
    outs["idle"] = {"from": IDLE_ADDR, "slots": spec["idle"], **idle.to_json()}
    outs["slow_post"] = {
        "from": SLOW_POST_ADDR,
        "slots": spec["slow_posts"],
        **posts.to_json(),
        "longest_until_answer_s": round(max(answered), 3) if answered else None,
        "answers": len(answered),
    }
    return {"seconds": round(time.monotonic() - started, 2)} | {
        name: outs[name] for name in ABUSERS if name in chosen
    }


def run_abusers(spec_path: str) -> int:
    """The child process: run every abuser, write what they got to spec['out']."""
    spec = json.loads(Path(spec_path).read_text())
    with asyncio.Runner(loop_factory=client_loop_factory()) as runner:
        result = runner.run(abuse(spec))
    Path(spec["out"]).write_text(json.dumps(result, indent=2) + "\n")
    print("abusers: done", flush=True)
    return 0


# ---------------------------------------------------------------------------------------
# Judging and the report.


def judge_behaved(name: str, phase: Mapping[str, Any]) -> list[str]:
    problems = []
    if phase["requests"] == 0:
        problems.append(f"{name}: the well-behaved clients sent nothing")
    elif phase["ok"] != phase["requests"]:
        failed = phase["requests"] - phase["ok"]
        detail = ", ".join(f"{k} x{v}" for k, v in phase["errors"].items())
        problems.append(
            f"{name}: {failed} of {phase['requests']} well-behaved requests failed ({detail})"
        )
    if phase["got_429"]:
        problems.append(f"{name}: well-behaved clients got {phase['got_429']} 429s")
    return problems


def allowed_by_bucket(span_s: float) -> int:
    """Requests a token bucket (full at the start) lets through in `span_s` seconds;
    a little slack for the two clocks."""
    return int(GUARD["rate_burst"] + GUARD["rate_limit"] * (span_s + 0.1)) + 1


def _held_too_long(
    name: str, rec: Mapping[str, Any], limit: float, why: str, answers: Sequence[str]
) -> list[str]:
    """A connection abuser's broken promises: an answer other than `answers` (or a
    close without one), or a connection the edge kept longer than `limit`."""
    problems = []
    for outcome, held in rec["longest_held_s"].items():
        if outcome not in (*answers, "closed"):
            problems.append(f"{name}: answered {outcome}")
        elif held > limit:
            problems.append(f"{name}: a connection lived {held:.1f}s ({why})")
    if rec["longest_open_at_end_s"] > limit:
        problems.append(
            f"{name}: a connection was still open after {rec['longest_open_at_end_s']:.1f}s ({why})"
        )
    return problems


def judge_slowloris(rec: Mapping[str, Any]) -> list[str]:
    limit = GUARD["header_timeout"] + SLACK_S
    why = f"header_timeout {GUARD['header_timeout']:g}s"
    problems = _held_too_long("slowloris", rec, limit, why, ("408",))
    if not rec["outcomes"].get("408"):
        problems.append("slowloris: no connection was answered 408")
    return problems


def judge_idle(rec: Mapping[str, Any]) -> list[str]:
    limit = GUARD["keepalive_timeout"] + SLACK_S
    why = f"keepalive_timeout {GUARD['keepalive_timeout']:g}s"
    return _held_too_long("idle", rec, limit, why, ())


def judge_flood(rec: Mapping[str, Any]) -> list[str]:
    problems = []
    ok_200 = rec["statuses"].get("200", 0)
    allowed = allowed_by_bucket(rec["span_s"])
    if not rec["statuses"].get("429"):
        problems.append(f"flood: no 429 in {rec['requests']} requests at {rec['offered_rate']:g}/s")
    if ok_200 > allowed:
        problems.append(
            f"flood: {ok_200} requests served in {rec['span_s']:.1f}s, the bucket allows {allowed}"
        )
    if rec["retry_after"].get("none"):
        problems.append(f"flood: {rec['retry_after']['none']} 429s without Retry-After")
    return problems


def judge_range_bombs(rec: Mapping[str, Any]) -> list[str]:
    problems = []
    for kind, k in rec["kinds"].items():
        # Coalesced or answered whole: never more bytes than the object (a little for
        # multipart part headers).
        if k["max_amplification"] > 1.05:
            problems.append(
                f"range bomb {kind}: {k['max_body_bytes']} bytes sent for a "
                f"{LARGE_SIZE}-byte object ({k['max_amplification']:.2f}x)"
            )
        bad = {s for s in k["statuses"] if s not in ("200", "206", "416")}
        if bad:
            problems.append(f"range bomb {kind}: answered {', '.join(sorted(bad))}")
    return problems


def _judge_one_shots(
    name: str, rec: Mapping[str, Any], expected: Mapping[str, Sequence[str]]
) -> list[str]:
    problems = []
    for kind, k in rec["kinds"].items():
        bad = {s for s in k["statuses"] if s not in (*expected[kind], "closed")}
        if bad:
            problems.append(f"{name} {kind}: answered {', '.join(sorted(bad))}")
        if k["left_open"]:
            problems.append(f"{name} {kind}: {k['left_open']} connections left open")
        if k["answered_twice"]:
            problems.append(f"{name} {kind}: a second (hidden) request was answered")
    return problems


def judge_oversize(rec: Mapping[str, Any]) -> list[str]:
    expected = {k: [str(s) for s in v] for k, v in rec["expected"].items()}
    return _judge_one_shots("oversize", rec, expected)


def judge_smuggling(rec: Mapping[str, Any]) -> list[str]:
    problems = _judge_one_shots("smuggling", rec, {k: ("400", "501") for k in rec["kinds"]})
    if rec["origin_saw_marker"]:
        problems.append(
            f"smuggling: the origin received {rec['origin_saw_marker']} hidden requests"
        )
    return problems


def judge_slow_post(rec: Mapping[str, Any]) -> list[str]:
    limit = GUARD["body_timeout"] + LINGER_S + SLACK_S
    why = f"body_timeout {GUARD['body_timeout']:g}s + {LINGER_S:g}s lingering"
    problems = _held_too_long("slow POST", rec, limit, why, ("408",))
    if not rec["outcomes"].get("408"):
        problems.append("slow POST: no body was answered 408")
    return problems


JUDGES = {
    "slowloris": judge_slowloris,
    "idle": judge_idle,
    "flood": judge_flood,
    "range_bombs": judge_range_bombs,
    "oversize": judge_oversize,
    "smuggling": judge_smuggling,
    "slow_post": judge_slow_post,
}


def judge_abusers(ab: Mapping[str, Any]) -> list[str]:
    """What the guard promises, per abuser that ran; each broken promise is one line."""
    return [p for name, judge in JUDGES.items() if name in ab for p in judge(ab[name])]


def counts(c: Mapping[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "-"


def _conn_line(rec: Mapping[str, Any]) -> str:
    return (
        f"{rec['slots']} slots, {rec['connections']} connections: {counts(rec['outcomes'])}; "
        f"longest held {max(rec['longest_held_s'].values(), default=0):.2f}s, "
        f"{rec['open_at_end']} open at the end (longest {rec['longest_open_at_end_s']:.2f}s)"
    )


def abuser_lines(name: str, rec: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(abuser, from, what it got) rows of the report."""
    if name == "slowloris":
        return [
            ("slowloris", f"{rec['from'][0]}-{rec['from'][-1].rsplit('.', 1)[1]}", _conn_line(rec))
        ]
    if name == "idle":
        return [("idle", rec["from"], _conn_line(rec))]
    if name == "flood":
        return [
            (
                "flood",
                rec["from"],
                f"{rec['requests']} requests at {rec['offered_rate']:g}/s over "
                f"{rec['span_s']:.1f}s: {counts(rec['statuses'])} (the bucket allows "
                f"{allowed_by_bucket(rec['span_s'])} 200s); "
                f"Retry-After {counts(rec['retry_after'])}",
            )
        ]
    if name == "range_bombs":
        return [
            (
                "range bomb",
                rec["from"],
                f"{kind}: {counts(k['statuses'])}; "
                f"at most {k['max_amplification']:.3f}x the object",
            )
            for kind, k in rec["kinds"].items()
        ]
    if name in ("oversize", "smuggling"):
        rows = [
            (
                name,
                rec["from"],
                f"{kind}: {counts(k['statuses'])}; left open {k['left_open']}, answered twice "
                f"{k['answered_twice']}",
            )
            for kind, k in rec["kinds"].items()
        ]
        if name == "smuggling":
            rows.append((name, "", f"hidden requests the origin saw: {rec['origin_saw_marker']}"))
        return rows
    if name == "slow_post":
        answer = rec["longest_until_answer_s"]
        return [
            (
                "slow POST",
                rec["from"],
                _conn_line(rec) + f"; answered within {answer or 0:.2f}s",
            )
        ]
    return []


def render(
    phases: Mapping[str, Mapping[str, Any]],
    p99_ratio: float | None,
    ab: Mapping[str, Any],
    metric_deltas: Mapping[str, Mapping[str, Any]],
    cpu: Mapping[str, Mapping[str, Any]],
) -> str:
    lines = [
        f"{'phase':<10}{'requests':>9}{'success':>10}{'429':>6}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'hit p99':>9}{'edge CPU':>10}{'machine':>9}"
    ]
    for name, ph in phases.items():
        lat, hit = ph["latency_ms"], ph["hit_latency_ms"]
        rate = "-" if ph["success_rate"] is None else f"{100 * ph['success_rate']:.2f}%"
        edge_cpu, machine = cpu[name]["edge_cores"], cpu[name]["machine_cores"]
        lines.append(
            f"{name:<10}{ph['requests']:>9}{rate:>10}{ph['got_429']:>6}"
            + "".join(f"{fmt_ms(lat[k]):>9}" for k in ("p50", "p99", "max"))
            + f"{fmt_ms(hit['p99']):>9}"
            + f"{'-' if edge_cpu is None else f'{edge_cpu:.2f}':>10}"
            + f"{'-' if machine is None else f'{machine:.2f}':>9}"
        )
    ratio = "-" if p99_ratio is None else f"{p99_ratio:.2f}"
    lines.append(
        f"soak p99 / baseline p99 = {ratio} (goal: at most 2); latency of whole 200s in ms; "
        f"CPU in cores busy (edge process, whole machine of {os.cpu_count()})"
    )
    lines.append("")
    rows = [row for name in ABUSERS if name in ab for row in abuser_lines(name, ab[name])]
    lines.append(f"{'abuser':<12}{'from':<15}what it got")
    lines += [f"{a:<12}{b:<15}{c}" for a, b, c in rows]
    lines.append("")
    for name, d in metric_deltas.items():
        lines.append(
            f"edge metrics, {name}: refused {counts(d['refused'])}; connections refused "
            f"{d['connections_refused']}; requests {counts(d['requests'])}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The run.


def wait_for_line(child: Child, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in child.log_path.read_text(errors="replace"):
                return
        if not child.alive():
            raise child.died()
        time.sleep(0.05)
    raise ScenarioError(f"{child.name} did not say {text!r} in {timeout:g}s")


def measure_phase(
    runner: asyncio.Runner,
    edge: Node,
    args: argparse.Namespace,
    name: str,
    seconds: float,
    others: Mapping[str, int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Well-behaved load for `seconds`: its summary, and the CPU (in cores) the edge,
    the `others` (name: pid) and the whole machine used meanwhile: a busy machine
    (other work on it) shows as machine cores well above what the run's processes used."""
    pids = {"edge": edge.child.proc.pid, **others}
    before, busy0, t0 = (
        {n: cpu_seconds(p) for n, p in pids.items()},
        machine_busy(),
        time.monotonic(),
    )
    samples = runner.run(
        behaved_load(edge.port, args.clients, name, args.rate, args.miss_ratio, seconds)
    )
    wall = time.monotonic() - t0
    after, busy1 = {n: cpu_seconds(p) for n, p in pids.items()}, machine_busy()

    def cores(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) / wall, 3)

    cpu = {f"{n}_cores": cores(before[n], after[n]) for n in pids}
    cpu["machine_cores"] = cores(busy0, busy1)
    return summarise_phase(samples, t0, wall), cpu | {"wall_s": round(wall, 2)}


def keep_logs(work: Path, log_dir: Path) -> list[str]:
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for log in sorted(work.glob("*.log")):
        shutil.copyfile(log, log_dir / log.name)
        kept.append(log.name)
    return kept


def run(args: argparse.Namespace) -> int:
    if args.abuse:
        return run_abusers(args.abuse)
    if args.quick:
        args.baseline, args.soak = 5.0, 8.0
    chosen = check_args(args)
    print(
        f"guard_soak: {args.clients} well-behaved clients at {args.rate:g}/s each "
        f"({100 * args.miss_ratio:g}% misses); baseline {args.baseline:g}s, soak {args.soak:g}s "
        f"beside {', '.join(chosen)} (slowloris {args.slowloris} slots, flood "
        f"{args.flood_rate:g}/s)",
        flush=True,
    )
    out = report_path(args.out, "guard_soak.json")
    log_dir = out.with_name(out.stem + "-logs")
    started = time.monotonic()
    marker = f"smuggled-{os.urandom(4).hex()}"
    with tempfile.TemporaryDirectory(prefix="edge-guard-soak-") as tmp:
        work = Path(tmp)
        try:
            with (
                Processes(work) as procs,
                asyncio.Runner(loop_factory=client_loop_factory()) as runner,
            ):
                root = work / "origin-root"
                make_objects(root)
                origin = start_origin(procs, root)
                edge = start_edge(procs, work, origin)
                warm(edge)
                m0 = metrics(edge)
                print(f"  baseline: {args.baseline:g}s of well-behaved load", flush=True)
                baseline, cpu_base = measure_phase(
                    runner, edge, args, "baseline", args.baseline, {"origin": origin.child.proc.pid}
                )
                m1 = metrics(edge)

                spec = {
                    "port": edge.port,
                    "abusers": chosen,
                    "duration": LEAD_S + args.soak + 0.5,
                    "slowloris": args.slowloris,
                    "idle": args.idle,
                    "slow_posts": args.slow_posts,
                    "flood_rate": args.flood_rate,
                    "flood_connections": 8,
                    "range_rate": 4.0,
                    "oneshot_rate": 4.0,
                    "marker": marker,
                    "out": str(work / "abusers.json"),
                }
                spec_path = work / "abusers-spec.json"
                spec_path.write_text(json.dumps(spec))
                argv = [sys.executable, "-m", "scenarios.guard_soak", "--abuse", str(spec_path)]
                abusers = procs.start("abusers", argv, cwd=Path(__file__).resolve().parent.parent)
                wait_for_line(abusers, "abusers: started", 30.0)
                time.sleep(LEAD_S)
                print(f"  soak: {args.soak:g}s of the same load beside the abusers", flush=True)
                others = {"origin": origin.child.proc.pid, "abusers": abusers.proc.pid}
                soak, cpu_soak = measure_phase(runner, edge, args, "soak", args.soak, others)
                try:
                    abusers.proc.wait(timeout=spec["duration"] + 30)
                except subprocess.TimeoutExpired:
                    raise ScenarioError("the abusers did not finish in time") from None
                if abusers.proc.returncode != 0:
                    raise ScenarioError(
                        f"the abusers' process failed (status {abusers.proc.returncode}): "
                        f"{abusers.tail(3)}"
                    )
                ab = json.loads((work / "abusers.json").read_text())
                m2 = metrics(edge)
                if not edge.child.alive():
                    raise edge.child.died()
                if "smuggling" in ab:
                    origin_log = origin.child.log_path.read_text(errors="replace")
                    ab["smuggling"]["origin_saw_marker"] = origin_log.count(marker)
                commands = {"origin": origin.argv, "edge": edge.argv}
                edge_config = (work / "edge.toml").read_text()
        finally:
            kept = keep_logs(work, log_dir)

    phases = {"baseline": baseline, "soak": soak}
    b99, s99 = baseline["latency_ms"]["p99"], soak["latency_ms"]["p99"]
    p99_ratio = round(s99 / b99, 3) if b99 and s99 is not None else None
    deltas = {"baseline": metrics_delta(m1, m0), "soak": metrics_delta(m2, m1)}
    cpu = {"baseline": cpu_base, "soak": cpu_soak}
    problems = judge_behaved("baseline", baseline) + judge_behaved("soak", soak)
    if p99_ratio is None or p99_ratio > 2.0:
        problems.append(
            f"soak: well-behaved p99 {fmt_ms(s99)} ms is {p99_ratio}x the baseline's "
            f"{fmt_ms(b99)} ms (goal: at most 2x)"
        )
    problems += judge_abusers(ab)
    print()
    print(render(phases, p99_ratio, ab, deltas, cpu))
    for p in problems:
        print(f"FAILED: {p}")
    report = {
        "config": {
            "clients": args.clients,
            "rate_per_client": args.rate,
            "miss_ratio": args.miss_ratio,
            "baseline_s": args.baseline,
            "soak_s": args.soak,
            "lead_s": LEAD_S,
            "abusers": chosen,
            "slowloris_slots": args.slowloris,
            "idle_slots": args.idle,
            "slow_post_slots": args.slow_posts,
            "flood_rate": args.flood_rate,
            "guard": GUARD,
            "edge_toml": edge_config,
            "cores": os.cpu_count(),
        },
        "commands": commands,
        "phases": phases,
        "p99_ratio": p99_ratio,
        "cpu": cpu,
        "abusers": ab,
        "metrics": deltas,
        "goals": {
            "well_behaved_lossless": all(
                ph["ok"] == ph["requests"] > 0 and not ph["got_429"] for ph in phases.values()
            ),
            "p99_at_most_doubled": p99_ratio is not None and p99_ratio <= 2.0,
            "abusers_refused": not judge_abusers(ab),
        },
        "problems": problems,
        "log_dir": str(log_dir),
        "logs": kept,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_report(out, report, f" and the logs in {log_dir} ({report['seconds']:.0f}s)")
    return 1 if problems else 0


def check_args(args: argparse.Namespace) -> list[str]:
    """The abusers to run, after every option is checked; a ScenarioError names the
    first one out of bounds."""
    bounds: dict[str, tuple[float, float]] = {
        "clients": (1, 40),
        "rate": (1, GUARD["rate_limit"] / 2),
        "miss_ratio": (0, 0.5),
        "baseline": (2, 300),
        "soak": (3, 300),
        "slowloris": (0, 1000),
        "idle": (0, 32),
        "slow_posts": (0, 32),
        "flood_rate": (GUARD["rate_limit"] * 1.5, 10_000),
    }
    for opt, (low, high) in bounds.items():
        value = getattr(args, opt)
        if not (math.isfinite(value) and low <= value <= high):
            raise ScenarioError(f"--{opt.replace('_', '-')} must be {low:g}..{high:g}")
    chosen = [a.strip().replace("-", "_") for a in args.abusers.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in ABUSERS]
    if unknown or not chosen:
        raise ScenarioError(f"--abusers takes some of {','.join(ABUSERS)}")
    return [a for a in ABUSERS if a in chosen]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.guard_soak",
        description="Well-behaved clients alone, then beside slowloris, a flood, range "
        "bombs, oversize heads, smuggling and slow POSTs: their success and latency, and "
        "what the abusers got.",
    )
    parser.add_argument("--quick", action="store_true", help="5 s baseline, 8 s soak")
    parser.add_argument("--clients", type=int, default=8, help="well-behaved clients (8)")
    parser.add_argument("--rate", type=float, default=25.0, help="requests/s per client (25)")
    parser.add_argument("--miss-ratio", type=float, default=0.05, help="share of misses (0.05)")
    parser.add_argument("--baseline", type=float, default=20.0, help="baseline seconds (20)")
    parser.add_argument("--soak", type=float, default=30.0, help="soak seconds (30)")
    parser.add_argument("--slowloris", type=int, default=200, help="slowloris slots (200)")
    parser.add_argument("--idle", type=int, default=16, help="silent connections (16)")
    parser.add_argument("--slow-posts", type=int, default=10, help="slow POST slots (10)")
    parser.add_argument(
        "--flood-rate", type=float, default=1000.0, help="flood requests/s from one address (1000)"
    )
    parser.add_argument(
        "--abusers",
        default=",".join(ABUSERS),
        help=f"which abusers run in the soak, comma-separated (default all: {','.join(ABUSERS)})",
    )
    parser.add_argument("--out", help="report path (default scenarios/out/guard_soak.json)")
    # The abusers' own process (started by the scenario): SPEC is a JSON file.
    parser.add_argument("--abuse", metavar="SPEC", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("guard_soak", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
