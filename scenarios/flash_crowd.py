"""Flash crowd: crowds on cold objects through a two-tier CDN (edges -> shield -> origin),
and through nginx built the same way, in one run.

    python -m scenarios.flash_crowd                  # 5 x 1 MiB, 3 edges x 50 clients, 1 shield
    python -m scenarios.flash_crowd --skip-nginx     # edge alone
    python -m scenarios.flash_crowd --objects 1 --clients 20 --latency 0.5

Owns: the topology (one `edge origin --latency L` serving generated objects; S
`edge shield` and E `edge serve --shield ...` nodes; the same shape in nginx, once with
`proxy_cache_lock on` and once off), the crowds, the counting at every tier, the table,
and `scenarios/out/flash_crowd.json`.

What it does, and how it counts:

- **Objects.** `--objects` files of `--size` random bytes, fresh names per system under
  test (`/edge/obj-1.bin`, `/nginx-lock-on/obj-1.bin`, ...), so every run starts cold
  against the one origin. The origin sends `Cache-Control: public, max-age=3600` for them
  (`--rule`) and waits `--latency` seconds before every response head, so the misses of
  a crowd overlap as they do when the origin is far away.
- **Crowds.** One object at a time: `--clients` clients per edge, `--edges` edges, all
  released at once by one event (one aiohttp session, a connection each). Every client
  sends `Host: flash.example`, one site name for all edges as GeoDNS would give (the cache
  key holds the host). Each reads the whole body and checks its length; client 0 checks
  the SHA-256. Latency is the time from the common start to the last body byte.
- **Origin.** Requests per object path from the origin's access log (one aiohttp line per
  request, written once the response is sent; read when the logs stop growing).
- **Shield tier.** edge: each client whose edge forwarded its request (a miss at the edge,
  not collapsed there) stands for one edge-to-shield request; the shield's entry in that
  client's `Cache-Status` chain (RFC 9211) says whether the shield had a hit, a miss or
  collapsed it into another fetch. The collapsed clients at the edge share that response,
  so they are not counted again. Checked against the shields' `edge_requests_total` on
  `/_edge/metrics` (read before and after each crowd), which does not tell a collapsed
  miss from a leading one. nginx: the shields' access logs (`$upstream_cache_status`).
- **Edge tier.** edge: each client's own entry (the edge's, last in the chain): `hit`,
  `collapsed` (joined another request's fetch), miss (fetched it itself), other; checked
  against the edges' metrics. nginx: the edges' access logs; nginx has no "collapsed":
  with the cache lock, a request that waited for another's fill is logged as a HIT.

nginx: one worker per process, its own `proxy_cache`, keep-alive upstream connections,
`X-Cache-Status` on every response; with more than one shield the edges pick one by
`hash $request_uri consistent`. `proxy_cache_lock_timeout` and `proxy_cache_lock_age` are
30 s (default 5 s), far above any fill here, so the lock run measures the lock and not
its timeout.

Prints a table and writes `scenarios/out/flash_crowd.json` (`--out`), with every
process's log copied beside it (`flash_crowd-logs/`). Bounded: every crowd has a timeout,
the whole run a deadline, and every child process is stopped on exit, Ctrl-C or SIGTERM.
Exit status 1 when the edge's origin saw anything but exactly one request for an object,
or an edge client failed (error status, short or corrupt body, timeout); nginx's numbers
are reported, not judged. Counts that do not add up between tiers are printed as
warnings.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from scenarios.harness import (
    Child,
    Processes,
    ScenarioError,
    client_loop_factory,
    edge_command,
    fmt_seconds,
    free_port,
    http_get_text,
    nginx_main,
    nginx_temp_paths,
    parse_size,
    prometheus_samples,
    report_path,
    require_tool,
    run_main,
    shield_argv,
    shielded_edge_argv,
    size_label,
    wait_http_ok,
    wait_tcp,
    write_nginx_config_text,
    write_report,
)

SYSTEMS = ("edge", "nginx-lock-on", "nginx-lock-off")
LABELS = {"edge": "edge", "nginx-lock-on": "nginx lock on", "nginx-lock-off": "nginx lock off"}
RULE = "/*=public, max-age=3600"
NGINX_LOCK_TIMEOUT = "30s"
# A crowd moves at most clients x size bytes over loopback: a minute means a hang.
CROWD_TIMEOUT = 60.0
RUN_TIMEOUT = 900.0
# Logs are written after a response ends; they are read once they stop growing.
QUIET_S = 0.3
SETTLE_TIMEOUT = 10.0
CHUNK = 1 << 16
# One site name for every edge, as when a crowd reaches them all through one host name
# (GeoDNS): the cache key holds the host, so clients naming each edge by its own
# 127.0.0.1:PORT would make one object per edge at the shield. Accept-Encoding: the bytes
# as stored (random bytes do not compress; a coded variant would defeat the length and
# hash checks).
SITE = "flash.example"
CLIENT_HEADERS = {"Host": SITE, "Accept-Encoding": "identity"}
TIERS = ("hit", "miss", "collapsed", "other")
#: nginx cache statuses that mean the request went to the upstream.
NGINX_FORWARDED = ("MISS", "EXPIRED", "BYPASS", "REVALIDATED")

# ---------------------------------------------------------------------------------------
# Pure parts (unit-tested in tests/unit/test_scenario_flash_crowd.py).


def split_outside_quotes(text: str, sep: str) -> list[str]:
    """`text` split at `sep` where it is not inside an sf-string ("...", with \\ escapes),
    each piece stripped."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def _bare(text: str) -> str:
    """An sf-token or sf-string (RFC 8941) as plain text."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


@dataclass(frozen=True)
class CacheStatusEntry:
    """One cache's entry in a Cache-Status field (RFC 9211 Section 2)."""

    node: str
    params: tuple[tuple[str, str | bool], ...] = ()

    def get(self, key: str) -> str | bool | None:
        return next((v for k, v in self.params if k == key), None)

    @property
    def hit(self) -> bool:
        return self.get("hit") is True

    @property
    def fwd(self) -> str | None:
        value = self.get("fwd")
        return value if isinstance(value, str) else None

    @property
    def collapsed(self) -> bool:
        return self.get("collapsed") is True

    def outcome(self) -> str:
        """hit, collapsed (joined another request's fetch), miss (fetched it itself), or
        other (forwarded for another reason, e.g. fwd=request, or said nothing)."""
        if self.hit:
            return "hit"
        if self.collapsed:
            return "collapsed"
        if self.fwd in ("uri-miss", "vary-miss", "miss"):
            return "miss"
        return "other"

    def forwarded(self) -> bool:
        """Did this cache send a request of its own upstream for this response?"""
        return not self.hit and not self.collapsed and self.fwd is not None


def parse_cache_status(value: str | None) -> list[CacheStatusEntry]:
    """A Cache-Status field value (several fields joined by ", ") -> its entries, first
    cache (nearest the origin) first. Parameters without a value are True; malformed
    members are skipped rather than guessed at."""
    entries = []
    for member in split_outside_quotes(value or "", ","):
        items = split_outside_quotes(member, ";")
        if not items[0]:
            continue
        params: list[tuple[str, str | bool]] = []
        for item in items[1:]:
            key, sep, raw = item.partition("=")
            if key.strip():
                params.append((key.strip().lower(), _bare(raw.strip()) if sep else True))
        entries.append(CacheStatusEntry(_bare(items[0]), tuple(params)))
    return entries


def entry_for(entries: Sequence[CacheStatusEntry], node: str) -> CacheStatusEntry | None:
    """The entry a node named `node` added (the last one, if a response passed it twice)."""
    return next((e for e in reversed(entries) if e.node == node), None)


def condense_chain(value: str | None) -> str:
    """A Cache-Status value without its per-response numbers (ttl), so that the answers of
    a crowd can be counted by kind."""
    if not value:
        return "-"
    return re.sub(r";\s*ttl=-?\d+", "", value).strip()


_ORIGIN_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


def origin_requests(text: str) -> Counter[str]:
    """Requests per path (query dropped) in aiohttp access-log lines
    ('... "GET /p HTTP/1.1" 200 ...'); other log lines are ignored."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        m = _ORIGIN_ACCESS.search(line)
        if m:
            counts[m.group("target").split("?", 1)[0]] += 1
    return counts


#: What the nginx configs log per request (parsed by parse_nginx_log).
NGINX_LOG_FORMAT = "flash $request_uri $status $upstream_cache_status $body_bytes_sent"
_NGINX_LINE = re.compile(r"^flash (?P<path>\S+) (?P<status>\d{3}) (?P<cache>\S+) (?P<bytes>\d+)$")


@dataclass(frozen=True)
class NginxLine:
    path: str
    status: int
    cache_status: str  # HIT, MISS, EXPIRED, UPDATING, STALE, BYPASS, REVALIDATED or "-"
    bytes: int


def parse_nginx_log(text: str) -> list[NginxLine]:
    """Lines in NGINX_LOG_FORMAT (others skipped), query dropped from the path."""
    lines = []
    for line in text.splitlines():
        m = _NGINX_LINE.match(line.strip())
        if m:
            lines.append(
                NginxLine(
                    m.group("path").split("?", 1)[0],
                    int(m.group("status")),
                    m.group("cache"),
                    int(m.group("bytes")),
                )
            )
    return lines


def nginx_outcome(cache_status: str) -> str:
    """$upstream_cache_status as a tier outcome: HIT is a hit (with the lock, also a request
    that waited for another's fill), MISS fetched from upstream, the rest other."""
    return {"HIT": "hit", "MISS": "miss"}.get(cache_status, "other")


def tier_counts(
    outcomes: Iterable[str], *, forwarded: int, detail: Iterable[str] = ()
) -> dict[str, Any]:
    """{requests, hit, miss, collapsed, other, forwarded, detail} for one tier: every
    outcome outside TIERS counts as other; `forwarded` is how many of the requests went on
    to the next tier up; `detail` a finer breakdown (e.g. nginx's own statuses)."""
    counts = Counter(o if o in TIERS else "other" for o in outcomes)
    out: dict[str, Any] = {"requests": sum(counts.values())}
    out.update({t: counts.get(t, 0) for t in TIERS})
    out["forwarded"] = forwarded
    out["detail"] = dict(sorted(Counter(detail).items()))
    return out


def add_tiers(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of several tier_counts results."""
    keys = ("requests", *TIERS, "forwarded")
    total: dict[str, Any] = dict.fromkeys(keys, 0)
    detail: Counter[str] = Counter()
    for part in parts:
        for key in keys:
            total[key] += part.get(key, 0)
        detail.update(part.get("detail", {}))
    total["detail"] = dict(sorted(detail.items()))
    return total


def requests_by_status(metrics_text: str, node: str) -> Counter[str]:
    """edge_requests_total of one node from /_edge/metrics, by cache_status label."""
    counts: Counter[str] = Counter()
    for labels, value in prometheus_samples(metrics_text, "edge_requests_total"):
        if labels.get("node") == node:
            counts[labels.get("cache_status", "?")] += int(value)
    return counts


def counter_delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """after - before, keys with a change only."""
    keys = sorted(set(after) | set(before))
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)
    }


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 (nearest rank) and max of some times, in seconds."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": round(rank(50), 4), "p99": round(rank(99), 4), "max": round(ordered[-1], 4)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def nginx_tier_config(
    run_dir: Path,
    listen_port: int,
    upstream_ports: Sequence[int],
    *,
    lock: bool,
    size: int,
    objects: int,
) -> str:
    """One nginx of the reference: one worker, its own proxy_cache (sized for the objects),
    keep-alive connections to its upstream (the origin for a shield, the shields for an
    edge, picked by `hash $request_uri consistent` so that each object has one shield),
    every request logged in NGINX_LOG_FORMAT, X-Cache-Status on every response.

    With `lock`, proxy_cache_lock with 30 s lock timeout and age (nginx's default 5 s would
    let waiting requests through to the upstream if a fill took that long)."""
    d = run_dir
    cache_mib = 2 * -(-size * objects // (1 << 20)) + 64
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstream_ports)
    balance = "        hash $request_uri consistent;\n" if len(upstream_ports) > 1 else ""
    lock_lines = (
        f"            proxy_cache_lock on;\n"
        f"            proxy_cache_lock_timeout {NGINX_LOCK_TIMEOUT};\n"
        f"            proxy_cache_lock_age {NGINX_LOCK_TIMEOUT};\n"
        if lock
        else "            proxy_cache_lock off;\n"
    )
    return f"""{nginx_main(d, connections=4096)}http {{
    log_format flash '{NGINX_LOG_FORMAT}';
    access_log {d}/access.log flash;
{nginx_temp_paths(d)}
    proxy_cache_path {d}/cache levels=1:2 keys_zone=flash:8m max_size={cache_mib}m
                     inactive=600m use_temp_path=off;
    upstream up {{
{balance}{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{listen_port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache flash;
{lock_lines}            proxy_read_timeout 60s;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------------------
# Objects and processes.


@dataclass(frozen=True)
class Obj:
    path: str  # URL path
    size: int
    sha256: str


def make_objects(root: Path, system: str, count: int, size: int) -> list[Obj]:
    """`count` files of random bytes under root/<system>/, fresh for this run."""
    folder = root / system
    folder.mkdir(parents=True, exist_ok=True)
    objs = []
    for i in range(1, count + 1):
        data = os.urandom(size)
        (folder / f"obj-{i}.bin").write_bytes(data)
        objs.append(Obj(f"/{system}/obj-{i}.bin", size, hashlib.sha256(data).hexdigest()))
    return objs


@dataclass
class Node:
    name: str
    child: Child
    port: int
    argv: list[str]
    log: Path  # the access log: nginx's own file, or the process's output for edge

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Topology:
    system: str
    origin: Node
    shields: list[Node]
    edges: list[Node]

    def logs(self) -> list[Path]:
        return [n.log for n in (self.origin, *self.shields, *self.edges)]


def start_origin(procs: Processes, root: Path, latency: float) -> Node:
    port = free_port()
    argv = edge_command(
        "origin",
        "--root",
        str(root),
        "--listen",
        f"127.0.0.1:{port}",
        "--latency",
        f"{latency:g}",
        "--rule",
        RULE,
    )
    child = procs.start("origin", argv)
    wait_tcp(child, port)
    return Node("origin", child, port, argv, child.log_path)


def start_edge_tier(
    procs: Processes, work: Path, origin: Node, shields: int, edges: int
) -> Topology:
    """S `edge shield` in front of the origin, E `edge serve` in front of the shields."""
    topo = Topology("edge", origin, [], [])
    for i in range(1, shields + 1):
        name, port = f"shield-{i}", free_port()
        argv = shield_argv(port, origin.url, work / f"cache-{name}", name)
        child = procs.start(name, argv)
        topo.shields.append(Node(name, child, port, argv, child.log_path))
    shield_urls = [s.url for s in topo.shields]
    for i in range(1, edges + 1):
        name, port = f"edge-{i}", free_port()
        argv = shielded_edge_argv(port, shield_urls, origin.url, work / f"cache-{name}", name)
        child = procs.start(name, argv)
        topo.edges.append(Node(name, child, port, argv, child.log_path))
    # Started together, waited for together: each is a Python process start.
    for node in (*topo.shields, *topo.edges):
        wait_http_ok(node.child, f"{node.url}/_edge/health")
    return topo


def start_nginx_tier(
    procs: Processes,
    work: Path,
    system: str,
    origin: Node,
    shields: int,
    edges: int,
    *,
    size: int,
    objects: int,
) -> Topology:
    """The same two tiers in nginx, every nginx in its own folder with its own cache."""
    lock = system == "nginx-lock-on"
    topo = Topology(system, origin, [], [])

    def start(name: str, upstream_ports: Sequence[int]) -> Node:
        port = free_port()
        run_dir = work / name
        text = nginx_tier_config(
            run_dir, port, upstream_ports, lock=lock, size=size, objects=objects
        )
        argv = write_nginx_config_text(run_dir, text)
        child = procs.start(name, argv)
        return Node(name, child, port, argv, run_dir / "access.log")

    topo.shields = [start(f"shield-{i}", [origin.port]) for i in range(1, shields + 1)]
    shield_ports = [s.port for s in topo.shields]
    topo.edges = [start(f"edge-{i}", shield_ports) for i in range(1, edges + 1)]
    for node in (*topo.shields, *topo.edges):
        wait_tcp(node.child, node.port)
    return topo


def wait_quiet(paths: Sequence[Path], deadline: float) -> None:
    """Until none of the files has grown for QUIET_S (bounded by `deadline`)."""

    def sizes() -> list[int]:
        return [p.stat().st_size if p.exists() else 0 for p in paths]

    last, quiet_since = sizes(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = sizes()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_S:
            return


def read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_marks(paths: Sequence[Path]) -> list[int]:
    return [p.stat().st_size if p.exists() else 0 for p in paths]


# ---------------------------------------------------------------------------------------
# Clients.


@dataclass
class Fetch:
    index: int
    edge: str  # the name of the edge the client asked
    status: int = 0
    bytes: int = 0
    done_s: float | None = None
    cache_status: str = ""  # Cache-Status (edge) or X-Cache-Status (nginx), as sent
    sha256_ok: bool | None = None
    error: str | None = None


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    f: Fetch,
    obj: Obj,
    gate: asyncio.Event,
    start: list[float],
    check_hash: bool,
) -> Fetch:
    await gate.wait()
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256() if check_hash else None
    try:
        async with session.get(url, headers=CLIENT_HEADERS) as resp:
            f.status = resp.status
            f.cache_status = ", ".join(
                resp.headers.getall("Cache-Status", []) or resp.headers.getall("X-Cache-Status", [])
            )
            if resp.status != 200:
                f.error = f"status {resp.status}"
                return f
            async for chunk in resp.content.iter_chunked(CHUNK):
                f.bytes += len(chunk)
                if digest is not None:
                    digest.update(chunk)
            f.done_s = loop.time() - start[0]
    except TimeoutError:
        f.error = "timeout"
    except aiohttp.ClientPayloadError:
        f.error = "body cut short (connection closed before Content-Length)"
    except aiohttp.ClientError as exc:
        f.error = f"{type(exc).__name__}: {exc}"[:200]
    if f.error is None and f.bytes != obj.size:
        f.error = f"short body: {f.bytes} of {obj.size} bytes"
    if digest is not None and f.error is None:
        f.sha256_ok = digest.hexdigest() == obj.sha256
        if not f.sha256_ok:
            f.error = "SHA-256 differs from the file's"
    return f


async def crowd(targets: Sequence[tuple[str, str]], obj: Obj, timeout: float) -> list[Fetch]:
    """One client per (edge name, URL), every one held at a gate until all are ready, then
    released at once; client 0 also checks the SHA-256. Bounded by `timeout`."""
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10)
    # limit=0: every client its own connection at once, as a crowd arrives.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=client_timeout, auto_decompress=False
    ) as session:
        loop = asyncio.get_running_loop()
        gate, start = asyncio.Event(), [0.0]
        fetches = [Fetch(i, name) for i, (name, _) in enumerate(targets)]
        tasks = [
            asyncio.ensure_future(fetch(session, url, f, obj, gate, start, f.index == 0))
            for (_, url), f in zip(targets, fetches, strict=True)
        ]
        await asyncio.sleep(0)  # every task is now waiting at the gate
        start[0] = loop.time()
        gate.set()
        try:
            await asyncio.wait(tasks, timeout=timeout + 10)
        finally:
            # Past the bound, or interrupted: stop every client before the session closes.
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
        for f, task in zip(fetches, tasks, strict=True):
            if not task.done() or task.cancelled():
                if f.error is None and f.done_s is None:
                    f.error = "crowd timeout"
            elif task.exception() is not None:
                exc = task.exception()
                f.error = f"{type(exc).__name__}: {exc}"[:200]
        return fetches


# ---------------------------------------------------------------------------------------
# One system under test.


def metrics_snapshot(topo: Topology) -> dict[str, Counter[str]]:
    """edge_requests_total by cache status, per shield and edge node."""
    return {
        n.name: requests_by_status(http_get_text(f"{n.url}/_edge/metrics"), n.name)
        for n in (*topo.shields, *topo.edges)
    }


def count_edge_crowd(
    shield_names: Sequence[str],
    edge_names: Sequence[str],
    fetches: Sequence[Fetch],
    before: Mapping[str, Mapping[str, int]],
    after: Mapping[str, Mapping[str, int]],
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(shield tier, edge tier, inconsistencies) for one crowd through edge, from the
    clients' Cache-Status chains and each node's edge_requests_total by cache status
    before and after the crowd."""
    edge_out, edge_detail, shield_out, shield_detail = [], [], [], []
    edge_fwd = shield_fwd = 0
    for f in fetches:
        if not f.cache_status:
            continue  # no response at all: the client's error says why
        chain = parse_cache_status(f.cache_status)
        own = entry_for(chain, f.edge)
        edge_out.append(own.outcome() if own else "other")
        edge_detail.append(own.outcome() if own else "no entry of the edge")
        if own is None or not own.forwarded():
            continue
        # This client's edge sent a request of its own upstream: the shield's entry in
        # its chain is that request's outcome at the shield tier.
        edge_fwd += 1
        shield = next((e for e in reversed(chain) if e.node in shield_names), None)
        shield_out.append(shield.outcome() if shield else "other")
        shield_detail.append(f"{shield.node} {shield.outcome()}" if shield else "no shield entry")
        shield_fwd += shield is not None and shield.forwarded()
    edge_tier = tier_counts(edge_out, forwarded=edge_fwd, detail=edge_detail)
    shield_tier = tier_counts(shield_out, forwarded=shield_fwd, detail=shield_detail)

    deltas = {n: counter_delta(after.get(n, {}), before.get(n, {})) for n in after}
    problems = []
    shield_tier["by_node"] = {n: sum(deltas.get(n, {}).values()) for n in shield_names}
    edge_tier["by_node"] = {n: sum(deltas.get(n, {}).values()) for n in edge_names}
    shield_tier["metrics"] = {n: deltas.get(n, {}) for n in shield_names}
    shield_metric = sum(shield_tier["by_node"].values())
    edge_metric = sum(edge_tier["by_node"].values())
    if shield_metric != shield_tier["requests"]:
        problems.append(
            f"shield metrics count {shield_metric} requests, the Cache-Status chains show "
            f"{shield_tier['requests']} edge-to-shield requests"
        )
    if edge_metric != edge_tier["requests"]:
        problems.append(
            f"edge metrics count {edge_metric} requests, {edge_tier['requests']} clients got "
            "an answer"
        )
    return shield_tier, edge_tier, problems


def count_nginx_crowd(
    shield_names: Sequence[str], edge_names: Sequence[str], path: str, texts: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(shield tier, edge tier, inconsistencies) for one crowd through nginx, from what
    each node's access log gained during it (`texts` by node name)."""

    def tier(names: Sequence[str]) -> dict[str, Any]:
        by_node = {n: [x for x in parse_nginx_log(texts[n]) if x.path == path] for n in names}
        lines = [x for node_lines in by_node.values() for x in node_lines]
        out = tier_counts(
            (nginx_outcome(x.cache_status) for x in lines),
            forwarded=sum(x.cache_status in NGINX_FORWARDED for x in lines),
            detail=(x.cache_status for x in lines),
        )
        out["by_node"] = {name: len(node_lines) for name, node_lines in by_node.items()}
        return out

    shield_tier, edge_tier = tier(shield_names), tier(edge_names)
    problems = []
    if shield_tier["requests"] != edge_tier["forwarded"]:
        problems.append(
            f"the shields logged {shield_tier['requests']} requests, the edges forwarded "
            f"{edge_tier['forwarded']}"
        )
    return shield_tier, edge_tier, problems


def run_object(
    runner: asyncio.Runner,
    topo: Topology,
    obj: Obj,
    clients: int,
    deadline: float,
) -> tuple[dict[str, Any], list[float]]:
    """One crowd on one cold object: what each tier saw, and the clients' latencies."""
    timeout = min(CROWD_TIMEOUT, deadline - time.monotonic())
    if timeout <= 1:
        raise ScenarioError(f"out of time ({RUN_TIMEOUT:g}s for the whole run)")
    targets = [(e.name, f"{e.url}{obj.path}") for e in topo.edges for _ in range(clients)]
    logs = topo.logs()
    marks = log_marks(logs)
    before = metrics_snapshot(topo) if topo.system == "edge" else {}
    started = time.monotonic()
    fetches = runner.run(crowd(targets, obj, timeout))
    wall = time.monotonic() - started
    wait_quiet(logs, time.monotonic() + SETTLE_TIMEOUT)
    texts = {p: read_from(p, m) for p, m in zip(logs, marks, strict=True)}
    node_texts = {n.name: texts[n.log] for n in (*topo.shields, *topo.edges)}
    origin_count = origin_requests(texts[topo.origin.log]).get(obj.path, 0)
    shield_names = [n.name for n in topo.shields]
    edge_names = [n.name for n in topo.edges]
    if topo.system == "edge":
        after = metrics_snapshot(topo)
        shield_tier, edge_tier, checks = count_edge_crowd(
            shield_names, edge_names, fetches, before, after
        )
    else:
        shield_tier, edge_tier, checks = count_nginx_crowd(
            shield_names, edge_names, obj.path, node_texts
        )
    if shield_tier["forwarded"] != origin_count:
        checks.append(
            f"the origin saw {origin_count} requests, the shield tier forwarded "
            f"{shield_tier['forwarded']}"
        )
    ok = [f for f in fetches if f.error is None]
    latencies = [f.done_s for f in ok if f.done_s is not None]
    result = {
        "path": obj.path,
        "clients": len(fetches),
        "complete": len(ok),
        "errors": dict(Counter(f.error for f in fetches if f.error)),
        "sha256_ok": next((f.sha256_ok for f in fetches if f.sha256_ok is not None), None),
        "wall_s": round(wall, 3),
        "latency_s": percentiles(latencies),
        "origin_requests": origin_count,
        "shield_tier": shield_tier,
        "edge_tier": edge_tier,
        "answers": dict(Counter(condense_chain(f.cache_status) for f in fetches).most_common()),
        "inconsistencies": checks,
    }
    return result, latencies


def summarise(
    system: str, per_object: list[dict[str, Any]], latencies: Sequence[float]
) -> dict[str, Any]:
    n = len(per_object)
    shield = add_tiers(o["shield_tier"] for o in per_object)
    edge = add_tiers(o["edge_tier"] for o in per_object)
    origin = [o["origin_requests"] for o in per_object]
    return {
        "system": system,
        "objects": per_object,
        "origin_requests": origin,
        "origin_requests_per_object": round(sum(origin) / n, 3) if n else None,
        "shield_tier": shield,
        "shield_requests_per_object": round(shield["requests"] / n, 3) if n else None,
        "edge_tier": edge,
        "clients": sum(o["clients"] for o in per_object),
        "client_errors": sum(o["clients"] - o["complete"] for o in per_object),
        "latency_s": percentiles(latencies),
    }


def run_system(
    runner: asyncio.Runner,
    topo: Topology,
    objs: Sequence[Obj],
    clients: int,
    deadline: float,
) -> dict[str, Any]:
    per_object, latencies = [], []
    for obj in objs:
        result, times = run_object(runner, topo, obj, clients, deadline)
        per_object.append(result)
        latencies += times
        print(
            f"  {LABELS[topo.system]:<15}{obj.path:<26} origin {result['origin_requests']:>3}, "
            f"shield {result['shield_tier']['requests']:>3} req, "
            f"{result['complete']}/{result['clients']} complete, "
            f"p99 {fmt_seconds(result['latency_s']['p99'])} s",
            flush=True,
        )
    summary = summarise(topo.system, per_object, latencies)
    summary["commands"] = {n.name: n.argv for n in (*topo.shields, *topo.edges)}
    return summary


# ---------------------------------------------------------------------------------------
# Report.


def _split(tier: Mapping[str, Any], collapsed: bool) -> str:
    parts = [tier["hit"], tier["miss"], tier["collapsed"] if collapsed else "-", tier["other"]]
    return "/".join(str(p) for p in parts)


def render(results: Mapping[str, Mapping[str, Any]], ratios: Mapping[str, float | None]) -> str:
    head = (
        f"{'system':<16}{'origin/obj':>11}{'shield/obj':>11}{'shield h/m/c/o':>16}"
        f"{'edge h/m/c/o':>18}{'errors':>8}{'p50 s':>8}{'p99 s':>8}{'max s':>8}"
    )
    lines = [head]
    for system, r in results.items():
        collapsed = system == "edge"  # nginx has no such status
        lat = r["latency_s"]
        lines.append(
            f"{LABELS[system]:<16}{r['origin_requests_per_object']:>11.2f}"
            f"{r['shield_requests_per_object']:>11.2f}"
            f"{_split(r['shield_tier'], collapsed):>16}{_split(r['edge_tier'], collapsed):>18}"
            f"{r['client_errors']:>8}"
            + "".join(f"{fmt_seconds(lat[k]):>8}" for k in ("p50", "p99", "max"))
        )
    lines.append(
        "h/m/c/o: hit/miss/collapsed/other, summed over the objects; latency: common start "
        "to the last body byte"
    )
    if ratios:
        parts = [
            f"edge / {LABELS[name]} = {'-' if v is None else f'{v:.4g}'}"
            for name, v in ratios.items()
        ]
        lines.append("origin requests per object: " + ", ".join(parts))
    return "\n".join(lines)


def find_problems(edge: Mapping[str, Any]) -> list[str]:
    """What makes the run fail: edge only (nginx is reported, not judged)."""
    problems = []
    for o in edge["objects"]:
        if o["origin_requests"] != 1:
            problems.append(f"edge: the origin saw {o['origin_requests']} requests for {o['path']}")
        for error, count in o["errors"].items():
            problems.append(f"edge: {count} client(s) on {o['path']}: {error}")
    return problems


def keep_logs(work: Path, log_dir: Path) -> list[str]:
    """Copy every process's output and nginx's logs to `log_dir` (emptied first), named
    after where they were (`edge-shield-1.log`, `nginx-lock-on-edge-1-access.log`)."""
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for log in sorted(work.rglob("*.log")):
        name = "-".join(log.relative_to(work).parts)
        shutil.copyfile(log, log_dir / name)
        kept.append(name)
    return kept


# ---------------------------------------------------------------------------------------
# The run.


def check_args(args: argparse.Namespace) -> int:
    """The object size, after every option is checked; a ScenarioError names the first
    one out of bounds."""
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    bounds = {
        "edges": (1, 16),
        "shields": (1, 8),
        "clients": (1, 500),
        "objects": (1, 50),
    }
    for opt, (low, high) in bounds.items():
        if not low <= getattr(args, opt) <= high:
            raise ScenarioError(f"--{opt} must be {low}..{high}")
    if args.edges * args.clients > 2000:
        raise ScenarioError("--edges x --clients must be at most 2000 (one client process)")
    if not 1 <= size <= 64 << 20:
        raise ScenarioError("--size must be between 1 byte and 64M")
    if not (math.isfinite(args.latency) and 0 <= args.latency <= 10):
        raise ScenarioError("--latency must be 0..10 seconds")
    return size


def run(args: argparse.Namespace) -> int:
    size = check_args(args)
    systems = ["edge"] if args.skip_nginx else list(SYSTEMS)
    if not args.skip_nginx:
        require_tool("nginx")
    print(
        f"flash_crowd: {args.objects} x {size_label(size)} objects, {args.edges} edges x "
        f"{args.clients} clients, {args.shields} shield(s), origin latency {args.latency:g}s; "
        f"{', '.join(LABELS[s] for s in systems)}",
        flush=True,
    )
    out = report_path(args.out, "flash_crowd.json")
    log_dir = out.with_name(out.stem + "-logs")
    started = time.monotonic()
    deadline = started + RUN_TIMEOUT
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-flash-") as tmp:
        work = Path(tmp)
        try:
            with (
                Processes(work) as procs,
                asyncio.Runner(loop_factory=client_loop_factory()) as runner,
            ):
                root = work / "origin-root"
                objects = {s: make_objects(root, s, args.objects, size) for s in systems}
                origin = start_origin(procs, root, args.latency)
                for system in systems:
                    folder = work / system
                    folder.mkdir()
                    # Each system's processes are stopped before the next one starts.
                    with Processes(folder) as tier:
                        if system == "edge":
                            topo = start_edge_tier(tier, folder, origin, args.shields, args.edges)
                        else:
                            topo = start_nginx_tier(
                                tier,
                                folder,
                                system,
                                origin,
                                args.shields,
                                args.edges,
                                size=size,
                                objects=args.objects,
                            )
                        results[system] = run_system(
                            runner, topo, objects[system], args.clients, deadline
                        )
                origin_argv = origin.argv
        finally:
            kept = keep_logs(work, log_dir)

    edge_per_object = results["edge"]["origin_requests_per_object"]
    ratios = {
        s: ratio(edge_per_object, results[s]["origin_requests_per_object"])
        for s in systems
        if s != "edge"
    }
    problems = find_problems(results["edge"])
    warnings = [
        f"{LABELS[s]} {o['path']}: {w}"
        for s, r in results.items()
        for o in r["objects"]
        for w in o["inconsistencies"]
    ]
    print()
    print(render(results, ratios))
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"FAILED: {p}")

    report = {
        "config": {
            "edges": args.edges,
            "shields": args.shields,
            "clients_per_edge": args.clients,
            "objects": args.objects,
            "size": size,
            "origin_latency_s": args.latency,
            "nginx_lock_timeout": NGINX_LOCK_TIMEOUT,
            "cores": os.cpu_count(),
        },
        "origin_command": origin_argv,
        "systems": results,
        "origin_ratio_edge_to": ratios,
        "problems": problems,
        "warnings": warnings,
        "log_dir": str(log_dir),
        "logs": kept,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_report(out, report, f" and the logs in {log_dir} ({report['seconds']:.0f}s)")
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.flash_crowd",
        description="Crowds on cold objects through edge shield + edge serve, and through "
        "nginx in the same two tiers (cache lock on and off): origin requests per object, "
        "hits/misses/collapsed per tier, client latency.",
    )
    parser.add_argument("--edges", type=int, default=3, help="edge nodes (default 3)")
    parser.add_argument("--shields", type=int, default=1, help="shield nodes (default 1)")
    parser.add_argument("--clients", type=int, default=50, help="clients per edge (default 50)")
    parser.add_argument("--objects", type=int, default=5, help="objects, one crowd each")
    parser.add_argument("--size", default="1M", help="object size, e.g. 64k, 1M (default 1M)")
    parser.add_argument(
        "--latency", type=float, default=0.2, help="origin delay per response, s (default 0.2)"
    )
    parser.add_argument("--skip-nginx", action="store_true", help="measure edge alone")
    parser.add_argument("--out", help="report path (default scenarios/out/flash_crowd.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("flash_crowd", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
