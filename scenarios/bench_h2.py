"""HTTP/2 cache-hit benchmark: `edge serve --http2` against nginx (`http2` + proxy_cache).

Owns: starting one edge (h2c with prior knowledge and HTTP/1.1 on one cleartext port)
and one nginx (an `http2` listener for h2c and a plain one for HTTP/1.1, both in front of
the same proxy_cache), each with one worker and its own counting origin from
scenarios.bench_hits; warming both; driving them in turn with h2load over HTTP/2 and over
HTTP/1.1 (`--h1`), the same client for both protocols; parsing h2load's summary and its
per-request log (h2load prints no percentiles: p50/p99 come from `--log-file`); the table,
the edge/nginx ratios per protocol and object, and `scenarios/out/bench_h2.json`.

The HTTP/1.1 rows show what the HTTP/2 layer costs the HTTP/1.1 path (its ratio should
match scenarios.bench_hits'). With `h3` among the protocols a second edge, on TLS with
`--http3` (a self-signed certificate made here), is measured alone: h2load over TLS
(ALPN h2) and HTTP/3 by a bounded aioquic load loop in a child process (this module with
the hidden `--h3-load`; Debian 12's h2load has no QUIC), so both rates are of one node.
nginx 1.22 has no HTTP/3: those rows have no reference.

Pinning as bench_hits: server on core 0, h2load and this process (the origins) on core 1.

    python -m scenarios.bench_h2                        # edge and nginx, 1 KiB and 100 KiB
    python -m scenarios.bench_h2 --duration 5 --sizes 1k --protocols h2
    python -m scenarios.bench_h2 --protocols h3          # HTTP/3 beside HTTP/2 over TLS
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.server.tls import LocalCA
from scenarios.bench_hits import (
    LOAD_CORE,
    MAX_ORIGIN_REQUESTS,
    SERVER_CORE,
    WARM_REQUESTS,
    OriginThread,
    Target,
    object_path,
    ratio,
    wait_log,
    warm,
)
from scenarios.harness import (
    REPO_ROOT,
    Processes,
    ScenarioError,
    can_pin,
    client_loop_factory,
    edge_argv,
    free_port,
    nginx_main,
    nginx_temp_paths,
    parse_size,
    pinned,
    report_path,
    require_tool,
    run_main,
    size_label,
    wait_http_ok,
    wait_tcp,
    write_nginx_config_text,
    write_report,
)

SERVERS = ("nginx", "edge")
PROTOCOLS = ("h2", "h1", "h3")
# "h3" runs two rows on the TLS edge: h2 over TLS ("h2tls") and HTTP/3.
PROTOCOL_NAMES = {"h2": "HTTP/2", "h1": "HTTP/1.1", "h2tls": "h2+TLS", "h3": "HTTP/3"}
TLS_NAME = "bench.edge.test"
TLS_SERVER = "edge-tls"
H3_REQUEST_TIMEOUT = 10.0

# ---------------------------------------------------------------------------------------
# Pure parts: h2load's summary and per-request log (unit-tested).

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class H2loadResult:
    requests_per_s: float
    seconds: float
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    non_2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def errors(self) -> int:
        return self.failed + self.errored + self.timeout


def parse_h2load_summary(output: str) -> dict[str, float | int]:
    """Requests/s, duration, request counts and status classes from h2load's stdout."""
    fin = re.search(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", output, re.M)
    req = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output,
        re.M,
    )
    st = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    if not (fin and req and st):
        raise ValueError("h2load output lacks the finished, requests or status codes line")
    return {
        "seconds": float(fin.group(1)) * _UNITS_S[fin.group(2)],
        "requests_per_s": float(fin.group(3)),
        "succeeded": int(req.group(4)),
        "failed": int(req.group(5)),
        "errored": int(req.group(6)),
        "timeout": int(req.group(7)),
        "status_2xx": int(st.group(1)),
        "non_2xx": int(st.group(2)) + int(st.group(3)) + int(st.group(4)),
    }


def parse_h2load_log(text: str) -> list[float]:
    """Per-request latencies in ms from `--log-file` lines: start µs since the epoch, status
    (-1 for a request that failed), µs until the end of the response. Failed requests are
    left out: they are counted by the summary."""
    latencies = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        try:
            status, elapsed = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if status > 0:
            latencies.append(elapsed / 1000.0)
    return latencies


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1])


def h2load_result(output: str, log_text: str) -> H2loadResult:
    s = parse_h2load_summary(output)
    lat = parse_h2load_log(log_text)
    return H2loadResult(
        requests_per_s=float(s["requests_per_s"]),
        seconds=float(s["seconds"]),
        succeeded=int(s["succeeded"]),
        failed=int(s["failed"]),
        errored=int(s["errored"]),
        timeout=int(s["timeout"]),
        status_2xx=int(s["status_2xx"]),
        non_2xx=int(s["non_2xx"]),
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
    )


def h3_load_result(report: dict[str, Any]) -> H2loadResult:
    """The HTTP/3 load loop's JSON report (`--h3-load`) as an h2load result."""
    latencies = [float(v) for v in report["latencies_ms"]]
    seconds = float(report["seconds"])
    ok = int(report["succeeded"])
    return H2loadResult(
        requests_per_s=ok / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        succeeded=ok,
        failed=int(report["failed"]),
        errored=0,
        timeout=int(report["timeout"]),
        status_2xx=ok,
        non_2xx=int(report["non_2xx"]),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
    )


# ---------------------------------------------------------------------------------------
# The HTTP/3 load loop (a child process: its client work must not share this process's
# loop with the origins).


def h3_load(port: int, path: str, clients: int, streams: int, duration: float) -> dict[str, Any]:
    """`clients` QUIC connections, each with `streams` requests in flight one after
    another, for `duration` seconds; every request bounded by H3_REQUEST_TIMEOUT."""
    # Only this child needs aioquic.
    from aioquic.asyncio import QuicConnectionProtocol, connect
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import QuicEvent

    class Client(QuicConnectionProtocol):
        def __init__(self, quic: QuicConnection, *args: Any, **kwargs: Any) -> None:
            super().__init__(quic, *args, **kwargs)
            self.quic = quic
            self.h3 = H3Connection(quic)
            self.waiting: dict[int, asyncio.Future[tuple[int, int]]] = {}
            self.status: dict[int, int] = {}
            self.size: dict[int, int] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            for ev in self.h3.handle_event(event):
                self._http(ev)

        def _http(self, ev: H3Event) -> None:
            sid = getattr(ev, "stream_id", -1)
            if isinstance(ev, HeadersReceived) and sid not in self.status:
                self.status[sid] = int(dict(ev.headers).get(b":status", b"0"))
            elif isinstance(ev, DataReceived):
                self.size[sid] = self.size.get(sid, 0) + len(ev.data)
            if getattr(ev, "stream_ended", False) and sid in self.waiting:
                answer = (self.status.pop(sid, 0), self.size.pop(sid, 0))
                self.waiting.pop(sid).set_result(answer)

        async def get(self) -> tuple[int, int]:
            sid = self.quic.get_next_available_stream_id()
            fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
            self.waiting[sid] = fut
            self.h3.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", f"{TLS_NAME}:{port}".encode()),
                    (b":path", path.encode()),
                ],
                end_stream=True,
            )
            self.transmit()
            return await fut

    counts = {"succeeded": 0, "failed": 0, "timeout": 0, "non_2xx": 0}
    latencies: list[float] = []

    async def main() -> float:
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            server_name=TLS_NAME,
            # The benchmark's own self-signed certificate; nothing here is secret.
            verify_mode=ssl.CERT_NONE,
        )
        end = time.monotonic() + duration

        async def stream(client: Client) -> None:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    status, _ = await asyncio.wait_for(client.get(), H3_REQUEST_TIMEOUT)
                except TimeoutError:
                    counts["timeout"] += 1
                    continue
                if 200 <= status < 300:
                    counts["succeeded"] += 1
                    latencies.append((time.perf_counter() - t0) * 1000.0)
                else:
                    counts["non_2xx"] += 1

        async def connection() -> None:
            try:
                async with connect(
                    "127.0.0.1", port, configuration=config, create_protocol=Client
                ) as client:
                    assert isinstance(client, Client)
                    await asyncio.gather(*(stream(client) for _ in range(streams)))
            except (ConnectionError, OSError, TimeoutError):
                counts["failed"] += 1

        start = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(connection() for _ in range(clients))), duration + 30
        )
        return time.monotonic() - start

    loop_factory = client_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        seconds = runner.run(main())
    return {**counts, "seconds": seconds, "latencies_ms": latencies, "cpu_s": time.process_time()}


# ---------------------------------------------------------------------------------------
# Servers under test and h2load.


@dataclass
class Server:
    name: str
    ports: dict[str, int]  # protocol -> port
    command: list[str]


def nginx_h2_config(run_dir: Path, h2_port: int, h1_port: int, origin_port: int) -> str:
    """One nginx worker, one proxy_cache, two listeners: `http2` on a cleartext listen is
    h2c with prior knowledge only (nginx 1.22), so HTTP/1.1 gets its own port. Keep-alive
    upstream connections and no access log, as bench_hits' reference."""
    d = run_dir
    return f"""{nginx_main(d)}http {{
    access_log off;
{nginx_temp_paths(d)}
    proxy_cache_path {d}/cache levels=1:2 keys_zone=edge_ref:8m max_size=1000m inactive=600m;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2;
        listen 127.0.0.1:{h1_port};
        http2_max_concurrent_streams 128;
        # nginx closes a connection after 1000 requests (GOAWAY on HTTP/2) by default;
        # h2load does not reconnect then, and edge sets no such limit.
        keepalive_requests 100000000;
        location / {{
            proxy_pass http://origin;
            proxy_cache edge_ref;
            proxy_cache_revalidate on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_server(
    procs: Processes, server: str, origin_port: int, workdir: Path, pin: bool
) -> Server:
    if server == "nginx":
        h2_port, h1_port = free_port(), free_port()
        argv = write_nginx_config_text(
            workdir / "nginx", nginx_h2_config(workdir / "nginx", h2_port, h1_port, origin_port)
        )
        argv = pinned(argv, SERVER_CORE) if pin else argv
        child = procs.start("nginx", argv)
        wait_tcp(child, h1_port)
        return Server(server, {"h2": h2_port, "h1": h1_port}, argv)
    port = free_port()
    argv = edge_argv(port, f"http://127.0.0.1:{origin_port}", workdir / "edge-cache", "bench", "1G")
    config = workdir / "edge.toml"
    config.write_text("access_log = false\nhttp2 = true\n")
    argv += ["--config", str(config)]
    argv = pinned(argv, SERVER_CORE) if pin else argv
    child = procs.start("edge", argv, cwd=REPO_ROOT)
    wait_http_ok(child, f"http://127.0.0.1:{port}/_edge/health")
    wait_log(child, "listening on")
    return Server(server, {"h2": port, "h1": port}, argv)


def start_tls_edge(procs: Processes, origin_port: int, workdir: Path, pin: bool) -> Server:
    """An edge on TLS (ALPN h2, http/1.1) with HTTP/3 on the same port over UDP."""
    # A certificate for TLS_NAME and 127.0.0.1 from edge's own local CA (the clients do
    # not verify it: this measures the node, not a PKI).
    cert, key = LocalCA(workdir / "tls").issue("bench", [TLS_NAME], ["127.0.0.1"])
    port = free_port()
    argv = edge_argv(
        port, f"http://127.0.0.1:{origin_port}", workdir / "edge-tls-cache", "bench-tls", "1G"
    )
    config = workdir / "edge-tls.toml"
    config.write_text("access_log = false\n")
    argv += ["--config", str(config), "--tls-cert", str(cert), "--tls-key", str(key), "--http3"]
    argv = pinned(argv, SERVER_CORE) if pin else argv
    child = procs.start("edge-tls", argv, cwd=REPO_ROOT)
    wait_tcp(child, port, timeout=60)
    wait_log(child, "listening on")
    return Server(TLS_SERVER, {"h2tls": port, "h3": port}, argv)


def warm_tls(port: int, size: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the benchmark's own self-signed certificate
    url = f"https://127.0.0.1:{port}{object_path(size)}"
    for _ in range(WARM_REQUESTS):
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:
            if resp.status != 200 or len(resp.read()) != size:
                raise ScenarioError(f"the TLS edge answered {url} with {resp.status}")


def run_h3_load(
    port: int, size: int, *, clients: int, streams: int, duration: int, pin: bool
) -> tuple[H2loadResult, float]:
    """The HTTP/3 result and the CPU seconds the load loop itself used (near its wall
    time would mean the client, not the node, set the rate)."""
    argv = [
        sys.executable,
        "-m",
        "scenarios.bench_h2",
        "--h3-load",
        f"{port},{object_path(size)},{clients},{streams},{duration}",
    ]
    argv = pinned(argv, LOAD_CORE) if pin else argv
    limit = duration + 60
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=limit,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        raise ScenarioError(f"the HTTP/3 load did not finish within {limit}s") from exc
    if done.returncode != 0:
        raise ScenarioError(f"the HTTP/3 load failed: {done.stderr.strip()[-300:]}")
    try:
        report = json.loads(done.stdout)
        return h3_load_result(report), float(report["cpu_s"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ScenarioError(f"the HTTP/3 load's report is not readable: {exc}") from exc


def h2load_argv(
    h2load: str, url: str, protocol: str, *, clients: int, streams: int, duration: int, log: Path
) -> list[str]:
    """h2c with prior knowledge (h2load's default for http://) or HTTP/1.1 (`--h1`, one
    request in flight per connection: no pipelining, as browsers and wrk)."""
    argv = [
        h2load,
        "-t1",
        f"-c{clients}",
        f"-D{duration}",
        "--warm-up-time=1",
        f"--log-file={log}",
    ]
    if protocol == "h1":
        argv += ["--h1", "-m1"]
    else:
        argv += [f"-m{streams}"]
    return [*argv, url]


def run_h2load(argv: list[str], log: Path, duration: int, pin: bool) -> H2loadResult:
    argv = pinned(argv, LOAD_CORE) if pin else argv
    limit = duration + 40
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise ScenarioError(f"h2load did not finish within {limit}s") from exc
    if done.returncode != 0:
        raise ScenarioError(f"h2load failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    try:
        return h2load_result(done.stdout, log.read_text())
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{exc}:\n{done.stdout}") from exc


@dataclass
class Row:
    server: str
    protocol: str
    size: int
    result: H2loadResult
    origin_requests: int

    def as_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "server": self.server,
            "protocol": self.protocol,
            "size": self.size,
            "requests_per_s": r.requests_per_s,
            "p50_ms": round(r.p50_ms, 3),
            "p99_ms": round(r.p99_ms, 3),
            "succeeded": r.succeeded,
            "seconds": r.seconds,
            "failed": r.failed,
            "errored": r.errored,
            "timeout": r.timeout,
            "non_2xx": r.non_2xx,
            "origin_requests": self.origin_requests,
        }


def ratios_of(rows: Sequence[Row]) -> dict[str, dict[str, float | None]]:
    """edge/nginx throughput and p99 per protocol and object size; and on the TLS edge,
    HTTP/3 against h2 over TLS on the same node."""
    out: dict[str, dict[str, float | None]] = {}
    by = {(r.server, r.protocol, r.size): r for r in rows}
    for (server, protocol, size), e in by.items():
        n = by.get(("nginx", protocol, size))
        if server == "edge" and n is not None:
            out[f"{PROTOCOL_NAMES[protocol]} {size_label(size)} edge/nginx"] = {
                "throughput": ratio(e.result.requests_per_s, n.result.requests_per_s),
                "p99": ratio(e.result.p99_ms, n.result.p99_ms),
            }
        h2 = by.get((TLS_SERVER, "h2tls", size))
        if server == TLS_SERVER and protocol == "h3" and h2 is not None:
            out[f"{size_label(size)} on the TLS edge, HTTP/3 / h2+TLS"] = {
                "throughput": ratio(e.result.requests_per_s, h2.result.requests_per_s),
                "p99": ratio(e.result.p99_ms, h2.result.p99_ms),
            }
    return out


def render(rows: Sequence[Row], ratios: dict[str, dict[str, float | None]]) -> str:
    head = (
        f"{'protocol':<10}{'object':<9}{'server':<10}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'non-2xx':>9}{'origin reqs':>13}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{PROTOCOL_NAMES[r.protocol]:<10}{size_label(r.size):<9}{r.server:<10}"
            f"{r.result.requests_per_s:>11,.0f}{r.result.p50_ms:>9.2f}{r.result.p99_ms:>9.2f}"
            f"{r.result.errors:>8}{r.result.non_2xx:>9}{r.origin_requests:>13}"
        )
    for label, rs in ratios.items():
        t, p = rs["throughput"], rs["p99"]
        lines.append(
            f"{label}: throughput {'n/a' if t is None else f'{t:.3f}'}, "
            f"p99 {'n/a' if p is None else f'{p:.3f}'}"
        )
    return "\n".join(lines)


def measure(
    h2load: str,
    server: str,
    protocol: str,
    size: int,
    url: str,
    tmp: Path,
    args: argparse.Namespace,
    pin: bool,
) -> Row:
    log = tmp / f"h2load-{server}-{protocol}-{size}.log"
    print(f"  h2load {server} {PROTOCOL_NAMES[protocol]} {size_label(size)} ...", flush=True)
    argv = h2load_argv(
        h2load,
        url,
        protocol,
        clients=args.clients,
        streams=args.streams,
        duration=args.duration,
        log=log,
    )
    return Row(server, protocol, size, run_h2load(argv, log, args.duration, pin), 0)


def run(args: argparse.Namespace) -> int:
    h2load = require_tool("h2load")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    for s in servers:
        if s not in SERVERS:
            raise ScenarioError(f"unknown server {s!r} (choose from {', '.join(SERVERS)})")
    for p in protocols:
        if p not in PROTOCOLS:
            raise ScenarioError(f"unknown protocol {p!r} (choose from {', '.join(PROTOCOLS)})")
    if "nginx" in servers:
        require_tool("nginx")
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as exc:
        raise ScenarioError(str(exc)) from exc
    if not sizes or not servers or not protocols:
        raise ScenarioError("nothing to measure: give --sizes, --servers and --protocols")
    if not 1 <= args.duration <= 120:
        raise ScenarioError("--duration must be 1..120 seconds")
    if not 1 <= args.clients <= 1000:
        raise ScenarioError("--clients must be 1..1000")
    if not 1 <= args.h3_clients <= 200:
        raise ScenarioError("--h3-clients must be 1..200")
    if not 1 <= args.streams <= 128:
        raise ScenarioError("--streams must be 1..128")

    pin = can_pin() and not args.no_pin
    if pin:
        os.sched_setaffinity(0, {LOAD_CORE})
    print(
        f"bench_h2: {', '.join(servers)}; {', '.join(PROTOCOL_NAMES[p] for p in protocols)}; "
        f"objects {', '.join(map(size_label, sizes))}; h2load {args.clients} connections "
        f"({args.streams} streams each on HTTP/2), {args.duration}s each; one worker per "
        "server; "
        + (f"server on core {SERVER_CORE}, h2load on core {LOAD_CORE}" if pin else "no pinning"),
        flush=True,
    )

    rows: list[Row] = []
    h3_cpu: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="edge-bench-h2-") as tmp,
        Processes(Path(tmp)) as procs,
        OriginThread() as origins,
    ):
        started: dict[str, Server] = {}
        plain = [p for p in protocols if p != "h3"]
        for server in servers if plain else []:
            origin_port = origins.add(server, sizes)
            started[server] = start_server(procs, server, origin_port, Path(tmp), pin)
        for server, s in started.items():
            for size in sizes:
                warm(Target(server, s.ports["h1"], s.command), size)
            print(f"  {server} on ports {sorted(set(s.ports.values()))}: warm", flush=True)

        runs = 0
        for protocol in plain:
            for size in sizes:
                # Alternate the order so neither server always runs first.
                order = servers if runs % 2 == 0 else list(reversed(servers))
                runs += 1
                for server in order:
                    port = started[server].ports[protocol]
                    url = f"http://127.0.0.1:{port}{object_path(size)}"
                    rows.append(measure(h2load, server, protocol, size, url, Path(tmp), args, pin))
        if "h3" in protocols:
            # One node, both protocols: the other servers are stopped first.
            procs.stop_all()
            origin_port = origins.add(TLS_SERVER, sizes)
            tls = start_tls_edge(procs, origin_port, Path(tmp), pin)
            started[TLS_SERVER] = tls
            for size in sizes:
                warm_tls(tls.ports["h2tls"], size)
            print(f"  {TLS_SERVER} on port {tls.ports['h3']} (TCP and UDP): warm", flush=True)
            for size in sizes:
                url = f"https://127.0.0.1:{tls.ports['h2tls']}{object_path(size)}"
                rows.append(measure(h2load, TLS_SERVER, "h2tls", size, url, Path(tmp), args, pin))
                print(f"  aioquic load {TLS_SERVER} HTTP/3 {size_label(size)} ...", flush=True)
                result, cpu = run_h3_load(
                    tls.ports["h3"],
                    size,
                    clients=args.h3_clients,
                    streams=args.streams,
                    duration=args.duration,
                    pin=pin,
                )
                rows.append(Row(TLS_SERVER, "h3", size, result, 0))
                h3_cpu[size_label(size)] = {"cpu_s": round(cpu, 2), "wall_s": result.seconds}
                print(f"    the load loop used {cpu:.1f} s of CPU in {result.seconds:.1f} s")
        for row in rows:
            row.origin_requests = origins.count(row.server, object_path(row.size))
        commands = {name: s.command for name, s in started.items()}

    ratios = ratios_of(rows)
    problems = []
    for r in rows:
        label = f"{r.server} {PROTOCOL_NAMES[r.protocol]} {size_label(r.size)}"
        if r.origin_requests > MAX_ORIGIN_REQUESTS:
            problems.append(f"{label}: origin saw {r.origin_requests} requests (not hits)")
        if r.result.non_2xx:
            problems.append(f"{label}: {r.result.non_2xx} non-2xx")
        if r.result.errors:
            problems.append(f"{label}: {r.result.errors} failed, errored or timed out")
        if not r.result.succeeded:
            problems.append(f"{label}: no request succeeded")

    print()
    print(render(rows, ratios))
    for p in problems:
        print(f"FAILED: {p}")
    report = {
        "cores": os.cpu_count(),
        "pinned": pin,
        "clients": args.clients,
        "streams": args.streams,
        "duration_s": args.duration,
        "commands": commands,
        "results": [r.as_json() for r in rows],
        "ratios": ratios,
        "h3_clients": args.h3_clients,
        "h3_client_cpu": h3_cpu,
        "problems": problems,
    }
    out = report_path(args.out, "bench_h2.json")
    write_report(out, report)
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.bench_h2",
        description="HTTP/2 and HTTP/1.1 cache-hit throughput of edge serve against nginx.",
    )
    parser.add_argument("--servers", default="edge,nginx", help="comma list of edge, nginx")
    parser.add_argument(
        "--protocols",
        default="h2,h1,h3",
        help="comma list of h2 (h2c), h1, h3 (a TLS edge: h2 over TLS and HTTP/3)",
    )
    parser.add_argument(
        "--h3-clients", type=int, default=10, help="QUIC connections of the HTTP/3 load"
    )
    parser.add_argument("--h3-load", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1k,100k", help="object sizes, e.g. 1k,100k")
    parser.add_argument("--duration", type=int, default=10, help="seconds per h2load run")
    parser.add_argument("--clients", type=int, default=50, help="h2load connections")
    parser.add_argument(
        "--streams", type=int, default=10, help="concurrent streams per HTTP/2 connection"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", help="report path (default scenarios/out/bench_h2.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.h3_load:
        # The child that drives HTTP/3: PORT,PATH,CLIENTS,STREAMS,SECONDS; JSON on stdout.
        port, path, clients, streams, seconds = args.h3_load.split(",")
        report = h3_load(int(port), path, int(clients), int(streams), float(seconds))
        print(json.dumps(report))
        return 0
    return run_main("bench_h2", run, args)


if __name__ == "__main__":
    sys.exit(main())
