"""Cold large objects: one download of a cold object through `edge serve` and through nginx
with `slice 4m`, by 16 parallel ranges (aria2c) and by one client (curl), in one run.

Owns: the nginx slice reference config, running aria2c and curl and reading what they
print, one fresh cache per download, the table, the ratios edge/nginx, and
`scenarios/out/cold_large.json`. The object, the origin (`edge origin`) and what the
origin saw (requests from its access log, bytes from `wchar` in /proc/PID/io, which
counts sendfile) are large_files'.

A module apart from large_files: that one measures a crowd, memory and warm throughput
over several minutes; this one is four single downloads, each from an empty cache (the
server restarted on a new cache folder), so a quick run (`--size 256M`) takes a minute.

    python -m scenarios.cold_large                  # 1 GiB: aria2c -x 16 -s 16 and curl
    python -m scenarios.cold_large --size 256M      # a quicker run
    python -m scenarios.cold_large --clients curl --servers edge

Downloads go to a tmpfs folder (/dev/shm) and are checked against the object's SHA-256
after the clock stops. MB is 10^6 bytes. Installs nothing: a missing nginx, curl or
aria2c is one line naming its apt package. Nothing is pinned: client, server and origin
share the machine's cores, as in large_files.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scenarios.harness import (
    Processes,
    ScenarioError,
    free_port,
    memory_folder,
    nginx_main,
    nginx_temp_paths,
    parse_size,
    report_path,
    require_tool,
    run_main,
    size_label,
    stop_process,
    wait_tcp,
    write_nginx_config_text,
    write_report,
)
from scenarios.large_files import (
    MB,
    BigObject,
    Origin,
    OriginTally,
    Server,
    check_origin_object,
    ensure_object,
    parse_curl_write_out,
    phase_timeout,
    ratio,
    start_edge,
    start_origin,
)

CLIENTS = ("aria2", "curl")
SERVERS = ("edge", "nginx")
SLICE = "4m"
# aria2c's smallest range: its default (20M) would cut a 256 MiB object in 12 ranges, not
# 16; 1M (its piece size) lets -s 16 make 16 ranges of any object of 16 MiB or more.
ARIA2_MIN_SPLIT = "1M"

# ---------------------------------------------------------------------------------------
# Pure parts (unit-tested in tests/unit/test_scenario_cold_large.py).


def nginx_slice_config(run_dir: Path, listen_port: int, upstream_port: int, size: int) -> str:
    """nginx's documented slice setup (one worker): `slice 4m`, the slice's range in the
    cache key and sent upstream, 200 and 206 cached; keep-alive upstream as every
    reference here has, sendfile, the cache sized for the object."""
    d = run_dir
    cache_mib = 2 * -(-size // (1 << 20)) + 64
    return f"""{nginx_main(d)}http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
{nginx_temp_paths(d)}
    proxy_cache_path {d}/cache levels=1:2 keys_zone=slices:8m max_size={cache_mib}m
                     inactive=600m use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            slice {SLICE};
            proxy_cache slices;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""


def aria2_argv(aria2c: str, url: str, folder: Path, name: str, connections: int) -> list[str]:
    """aria2c with `connections` parallel ranges of one URL (-x and -s), nothing read from
    the user's config, no preallocation, one summary at the end."""
    return [
        aria2c,
        "--no-conf=true",
        "-x",
        str(connections),
        "-s",
        str(connections),
        "-k",
        ARIA2_MIN_SPLIT,
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--enable-color=false",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--header=Accept-Encoding: identity",
        "--timeout=60",
        "-d",
        str(folder),
        "-o",
        name,
        url,
    ]


_SPEED_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_RESULT_ROW = re.compile(
    r"^(?P<gid>[0-9a-f]+)\|(?P<stat>[A-Z]+)\s*\|\s*(?P<speed>[\d.]+)(?P<unit>B|KiB|MiB|GiB)/s"
    r"\|(?P<path>.*)$",
    re.M,
)


@dataclass(frozen=True)
class Aria2Result:
    status: str  # OK, ERR, INPR, RM
    avg_bytes_per_s: float
    path: str
    errors: int  # [ERROR] lines (a range retried, a connection dropped)


def parse_aria2(output: str) -> Aria2Result:
    """The first row of aria2c's 'Download Results' table, and how many errors it logged."""
    m = _RESULT_ROW.search(output)
    if not m:
        raise ValueError("aria2c printed no download result")
    speed = float(m.group("speed")) * _SPEED_UNITS[m.group("unit")]
    return Aria2Result(
        status=m.group("stat"),
        avg_bytes_per_s=speed,
        path=m.group("path").strip(),
        errors=len(re.findall(r"\[ERROR\]", output)),
    )


@dataclass
class Download:
    client: str
    server: str
    size: int
    seconds: float | None = None
    origin: OriginTally = field(default_factory=OriginTally)
    error: str | None = None
    client_errors: int = 0  # aria2c's logged errors (it retries them)
    commands: dict[str, list[str]] = field(default_factory=dict)  # server, client

    @property
    def mb_per_s(self) -> float | None:
        return round(self.size / MB / self.seconds, 1) if self.seconds else None

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "size": self.size,
            "seconds": self.seconds,
            "mb_per_s": self.mb_per_s,
            "origin": asdict(self.origin),
            "error": self.error,
            "client_errors": self.client_errors,
            "commands": self.commands,
        }


def ratios(downloads: Sequence[Download]) -> dict[str, float | None]:
    """Per client: edge MB/s / nginx MB/s (above 1: edge faster)."""
    out: dict[str, float | None] = {}
    for client in dict.fromkeys(d.client for d in downloads):
        by = {d.server: d for d in downloads if d.client == client}
        if "edge" in by and "nginx" in by:
            out[client] = ratio(by["edge"].mb_per_s, by["nginx"].mb_per_s)
    return out


def client_label(client: str, connections: int) -> str:
    return f"aria2c -x {connections}" if client == "aria2" else client


def render(downloads: Sequence[Download], connections: int) -> str:
    head = (
        f"{'client':<14}{'server':<7}{'seconds':>9}{'MB/s':>9}{'origin reqs':>13}"
        f"{'origin bytes/size':>19}  status"
    )
    lines = [head]
    for d in downloads:
        seconds = "-" if d.seconds is None else f"{d.seconds:.2f}"
        rate = "-" if d.mb_per_s is None else f"{d.mb_per_s:,.1f}"
        lines.append(
            f"{client_label(d.client, connections):<14}{d.server:<7}{seconds:>9}{rate:>9}"
            f"{d.origin.requests:>13}{d.origin.object_factor:>19.3f}  {d.error or 'ok'}"
        )
    for client, value in ratios(downloads).items():
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(
            f"{client_label(client, connections)}: edge/nginx MB/s {shown} (goal: at least 1)"
        )
    return "\n".join(lines)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# One cold download.


def start_nginx(procs: Processes, run_dir: Path, origin: Origin, size: int) -> Server:
    port = free_port()
    argv = write_nginx_config_text(run_dir, nginx_slice_config(run_dir, port, origin.port, size))
    child = procs.start(f"nginx-{run_dir.name}", argv)
    wait_tcp(child, port)
    return Server("nginx", child, port, argv)


def edge_cache_size(size: int) -> str:
    """Room for the object twice over (slices of a fill, and its index), at least 4G."""
    return f"{max(4, 2 * math.ceil(size / (1 << 30)))}G"


def fetch(
    procs: Processes,
    tools: dict[str, str],
    client: str,
    server: Server,
    obj: BigObject,
    folder: Path,
    connections: int,
    label: str,
) -> tuple[float, str | None, int, list[str]]:
    """Run one client to the end: (seconds, error or None, client's logged errors, argv)."""
    target = folder / "download.bin"
    url = server.url(obj)
    limit = phase_timeout(obj.size)
    if client == "aria2":
        argv = aria2_argv(tools["aria2c"], url, folder, target.name, connections)
    else:
        argv = [
            tools["curl"],
            "-sS",
            "-o",
            str(target),
            "--max-time",
            f"{limit:.0f}",
            "-H",
            "Accept-Encoding: identity",
            "-w",
            "%{http_code} %{size_download} %{time_total} %{time_starttransfer}\\n",
            url,
        ]
    started = time.monotonic()
    child = procs.start(label, argv)
    try:
        code = child.proc.wait(timeout=limit + 30)
    except Exception:
        stop_process(child.proc)
        raise
    seconds = round(time.monotonic() - started, 3)
    output = child.log_path.read_text(errors="replace")
    error: str | None = None
    logged = 0
    if client == "aria2":
        try:
            result = parse_aria2(output)
            logged = result.errors
            if code != 0 or result.status != "OK":
                error = f"aria2c exit {code}, {result.status}"
        except ValueError as exc:
            error = f"aria2c exit {code}: {exc}"
    else:
        try:
            status, got, _, _ = parse_curl_write_out(output)
            if code != 0 or status != 200 or got != obj.size:
                error = f"curl exit {code}, status {status}, {got} bytes"
        except ValueError as exc:
            error = f"curl exit {code}: {exc}"
    if error is None:
        if not target.is_file() or target.stat().st_size != obj.size:
            error = "short file"
        elif sha256_file(target) != obj.sha256:
            error = "SHA-256 differs from the object's"
    return seconds, error, logged, argv


def cold_download(
    procs: Processes,
    tools: dict[str, str],
    client: str,
    server_name: str,
    origin: Origin,
    obj: BigObject,
    work: Path,
    scratch: Path,
    connections: int,
    n: int,
) -> Download:
    """A fresh server (empty cache), one download through it, what the origin sent."""
    label = f"{n}-{client}-{server_name}"
    cache = work / f"cache-{label}"
    if server_name == "edge":
        server = start_edge(procs, f"edge-{label}", origin, cache, edge_cache_size(obj.size))
    else:
        server = start_nginx(procs, cache, origin, obj.size)
    print(f"  {client_label(client, connections)} through {server_name} ...", end="", flush=True)
    download = Download(client, server_name, obj.size)
    folder = scratch / label
    folder.mkdir()
    try:
        mark = origin.mark()
        download.seconds, download.error, download.client_errors, argv = fetch(
            procs, tools, client, server, obj, folder, connections, f"client-{label}"
        )
        download.commands = {"server": server.argv, "client": argv}
        # After the client: a server still filling slices it no longer needs shows here.
        download.origin = origin.tally(mark, obj)
    finally:
        stop_process(server.child.proc)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    print(
        f" {download.seconds}s, {download.mb_per_s} MB/s, origin {download.origin.requests} "
        f"requests, {download.origin.object_factor}x the object"
        + (f"; {download.error}" if download.error else ""),
        flush=True,
    )
    return download


def run(args: argparse.Namespace) -> int:
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from exc
    if not 16 << 20 <= size <= 16 << 30:
        raise ScenarioError("--size must be between 16M and 16G")
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name, known, given in (("client", CLIENTS, clients), ("server", SERVERS, servers)):
        for value in given:
            if value not in known:
                raise ScenarioError(f"unknown {name} {value!r} (choose from {', '.join(known)})")
    if not clients or not servers:
        raise ScenarioError("nothing to measure: give --clients and --servers")
    if not 1 <= args.connections <= 16:
        raise ScenarioError("--connections must be 1..16 (aria2c's most per server)")
    tools = {"curl": require_tool("curl")}  # the origin check and the single client
    if "aria2" in clients:
        tools["aria2c"] = require_tool("aria2c")
    if "nginx" in servers:
        require_tool("nginx")

    print(
        f"cold_large: {size_label(size)} object, cold each time; "
        f"{', '.join(client_label(c, args.connections) for c in clients)}; "
        f"through {' and '.join(servers)}" + (f" (slice {SLICE})" if "nginx" in servers else ""),
        flush=True,
    )
    obj = ensure_object(size)
    started = time.monotonic()
    downloads: list[Download] = []
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-cold-") as tmp:
        work = Path(tmp)
        scratch = memory_folder(work, "edge-cold-")
        try:
            with Processes(work) as procs:
                origin = start_origin(procs)
                check_origin_object(origin, obj)
                n = 0
                for i, client in enumerate(clients):
                    # Alternate who goes first: page cache and CPU favour neither.
                    order = servers if i % 2 == 0 else list(reversed(servers))
                    for server in order:
                        n += 1
                        downloads.append(
                            cold_download(
                                procs,
                                tools,
                                client,
                                server,
                                origin,
                                obj,
                                work,
                                scratch,
                                args.connections,
                                n,
                            )
                        )
                commands["origin"] = list(origin.child.proc.args)  # type: ignore[arg-type]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    problems = [f"{d.client} through {d.server}: {d.error}" for d in downloads if d.error]
    print()
    print(render(downloads, args.connections))
    print("MB = 10^6 bytes; origin bytes from its wchar (sendfile included)")
    for p in problems:
        print(f"FAILED: {p}")
    report = {
        "size": size,
        "sha256": obj.sha256,
        "cores": os.cpu_count(),
        "connections": args.connections,
        "slice": SLICE,
        "commands": commands,
        "downloads": [d.as_json() for d in downloads],
        "ratios_edge_nginx": ratios(downloads),
        "problems": problems,
        "seconds": round(time.monotonic() - started, 1),
    }
    out = report_path(args.out, "cold_large.json")
    write_report(out, report, f" ({report['seconds']:.0f}s)")
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.cold_large",
        description="A cold large object by aria2c (16 parallel ranges) and by curl, through "
        "edge serve and nginx slice 4m, each from an empty cache.",
    )
    parser.add_argument("--size", default="1G", help="object size, e.g. 256M, 1G (default 1G)")
    parser.add_argument("--clients", default="aria2,curl", help="comma list of aria2, curl")
    parser.add_argument("--servers", default="edge,nginx", help="comma list of edge, nginx")
    parser.add_argument(
        "--connections", type=int, default=16, help="aria2c's parallel ranges (-x and -s)"
    )
    parser.add_argument("--out", help="report path (default scenarios/out/cold_large.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("cold_large", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
