"""Large objects: a multi-GB bundle through `edge serve`, with nginx proxy_cache beside it.

    python -m scenarios.large_files                  # 1 GiB object, crowd 100, 50 clients
    python -m scenarios.large_files --size 64M       # a quick run
    python -m scenarios.large_files --skip-nginx     # the edge alone
    python -m scenarios.large_files --nginx-crowd    # nginx's cold crowd too (slower)

What it measures, and how:

- **The object.** `--size` bytes under `.cache/large-files/bundles/` (made once, kept while
  its size matches): a 1 MiB random block repeated, with its absolute offset stamped every
  4 KiB, so the bytes do not compress and a slice delivered at the wrong place changes the
  SHA-256. Served by the project's demo origin, `edge origin` (strong ETag, ranges,
  sendfile, `Cache-Control: public, max-age=86400` for `/bundles/`).
- **Cold crowd.** `--crowd` aiohttp clients (one session, no connection limit) ask for the
  cold object at once through a fresh `edge serve` (with `--nginx-crowd`, then through
  nginx: another crowd x size of downloads, so not by default). Per client:
  time to the response head, to the first body byte and to the last one, from one common
  start; the longest pause between two body chunks; every body is read to the end and its
  length checked, and client 0 checks the SHA-256 of the whole body against the file's.
  Reported: the first client's time to first byte, the median and the last's (the
  slowest's, the 100th of 100).
- **Origin requests per phase.** The origin's access log (one line per request: method,
  path, status) read from where the phase began, and the bytes it wrote to sockets,
  from `wchar` in /proc/PID/io (sendfile counts there; the access log's byte count
  does not see sendfile). "One request per object" is 1 request and 1.0x the size; a
  segmented cache shows up as 206s, one per slice.
- **Peak RSS.** A thread reads VmRSS from /proc/PID/status of every process in the
  server's process group every 50 ms, sums it, keeps the peak and the per-second maximum;
  VmHWM of the main process is read when the phase ends (since the process started).
  Open file descriptors of the group are counted every 200 ms (a sliced object may hold
  one per slice per client).
  `--clients` downloads on a restarted edge with a fresh cache dir (cold), then again on
  the same edge (warm). Target: below 200 MB.
- **Warm throughput.** `--rounds` rounds of `--parallel` curl downloads of the warm object,
  edge and nginx alternating which goes first; MB/s per round is bytes over the round's
  wall time; the figure is the median round, and edge/nginx is the ratio of those.

MB is 10^6 bytes. Bounded: every client and curl has a timeout derived from the size,
every wait loop a deadline; all processes run in their own process groups and are stopped
on exit, Ctrl-C or SIGTERM. Prints a table, writes `scenarios/out/large_files.json` and
copies the origin's, edges' and nginx's logs to `scenarios/out/large_files-logs/`.
Exit status 1 when a download failed or was corrupt, when the edge's origin sent the object
more than once in a phase, or when the edge's peak RSS reached the target; a warning (no
failure) when the edge held half its open-files limit or a client waited 5 s for a byte.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from scenarios.harness import (
    OUT_DIR,
    REPO_ROOT,
    Child,
    Processes,
    ScenarioError,
    client_loop_factory,
    edge_argv,
    edge_command,
    fmt_seconds,
    free_port,
    nginx_main,
    nginx_temp_paths,
    parse_size,
    report_path,
    require_tool,
    run_main,
    size_label,
    stop_process,
    wait_http_ok,
    wait_tcp,
    write_nginx_config_text,
    write_report,
)

OBJECT_ROOT = REPO_ROOT / ".cache" / "large-files"
LOG_DIR = OUT_DIR / "large_files-logs"
BLOCK = 1 << 20
STAMP = 4096
SEED = 9111
CHUNK = 1 << 20
MB = 1_000_000
RSS_TARGET_MB = 200.0
SAMPLE_INTERVAL = 0.05
# Timeouts: no run is allowed to be slower than this aggregate rate (a hang, not a slow
# machine), and no connection may go this long without a byte.
MIN_RATE = 100 * MB
READ_TIMEOUT = 60.0
# "The object once": a cold phase may read a little more than the object from the origin
# (a slice fetched twice by a race); more than this means a second full fetch.
MAX_ORIGIN_FACTOR = 1.25
# Clients ask for the bytes as stored: the object is not compressible, and a coded
# variant would make the length and hash checks meaningless.
CLIENT_HEADERS = {"Accept-Encoding": "identity"}

# ---------------------------------------------------------------------------------------
# Pure parts (unit-tested in tests/unit/test_scenarios_static.py).


def stamped_block(base: bytes, offset: int) -> bytes:
    """`base` with its absolute file offset stamped (8 bytes, big-endian) every STAMP
    bytes: every 4 KiB of the object differs, so misplaced bytes change the hash."""
    block = bytearray(base)
    for at in range(0, len(block) - 7, STAMP):
        struct.pack_into(">Q", block, at, offset + at)
    return bytes(block)


def base_block() -> bytes:
    return random.Random(SEED).randbytes(BLOCK)


_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


@dataclass
class OriginTally:
    """What the origin saw in one phase."""

    requests: int = 0  # for the object's path
    by_status: dict[str, int] = field(default_factory=dict)
    other_requests: int = 0  # any other path
    bytes_sent: int = 0  # wchar delta: every byte the origin wrote, sendfile included
    object_factor: float = 0.0  # bytes_sent / object size


def parse_access_log(text: str, path: str) -> OriginTally:
    """Count aiohttp access-log lines ('"GET /p HTTP/1.1" 200 ...') for `path` by method
    and status; lines for other paths are counted apart, other log lines ignored."""
    tally = OriginTally()
    statuses: Counter[str] = Counter()
    for line in text.splitlines():
        m = _ACCESS.search(line)
        if not m:
            continue
        if m.group("target").split("?", 1)[0] == path:
            tally.requests += 1
            statuses[f"{m.group('method')} {m.group('status')}"] += 1
        else:
            tally.other_requests += 1
    tally.by_status = dict(sorted(statuses.items()))
    return tally


def proc_field(text: str, name: str) -> int | None:
    """A number from /proc/PID/status ('VmRSS:    1234 kB' -> 1234) or /proc/PID/io
    ('wchar: 5678' -> 5678)."""
    m = re.search(rf"^{re.escape(name)}:\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def stat_pgrp(text: str) -> int | None:
    """The process group from /proc/PID/stat (the comm field may hold spaces and ')')."""
    rest = text.rpartition(")")[2].split()
    return int(rest[2]) if len(rest) > 2 else None


def stat_cpu_ticks(text: str) -> int:
    """utime + stime (clock ticks) from /proc/PID/stat."""
    rest = text.rpartition(")")[2].split()
    return int(rest[11]) + int(rest[12]) if len(rest) > 12 else 0


def machine_cpu(text: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores from the `cpu` line of /proc/stat; idle and
    iowait count as not busy."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            # user nice system idle iowait irq softirq steal (guest is within user)
            ticks = [int(x) for x in line.split()[1:9]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            return sum(ticks) - idle, sum(ticks)
    return 0, 0


def fd_soft_limit(text: str) -> int | None:
    """The soft 'Max open files' limit from /proc/PID/limits."""
    m = re.search(r"^Max open files\s+(\d+|unlimited)", text, re.M)
    return int(m.group(1)) if m and m.group(1).isdigit() else None


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """First (smallest), median and last (largest) of some times, in seconds."""
    if not values:
        return {"first": None, "median": None, "last": None}
    return {
        "first": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "last": round(max(values), 4),
    }


def condense_cache_status(value: str | None) -> str:
    """Cache-Status without its per-response numbers (ttl=, fwd-status kept), so a crowd's
    answers can be counted by kind."""
    if not value:
        return "-"
    return re.sub(r";\s*ttl=-?\d+", "", value).strip()


def per_second_peaks(samples: Sequence[tuple[float, float]]) -> list[float]:
    """(seconds since start, MB) samples -> the largest value in each whole second."""
    peaks: dict[int, float] = {}
    for t, mb in samples:
        second = int(t)
        peaks[second] = max(mb, peaks.get(second, 0.0))
    if not peaks:
        return []
    last = max(peaks)
    out, carry = [], 0.0
    for second in range(last + 1):
        carry = peaks.get(second, carry)
        out.append(round(carry, 1))
    return out


def parse_curl_write_out(text: str) -> tuple[int, int, float, float]:
    """The last line of `-w '%{http_code} %{size_download} %{time_total}
    %{time_starttransfer}'` -> (status, bytes, total s, first byte s)."""
    for line in reversed(text.strip().splitlines()):
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
    raise ValueError(f"no curl write-out line in {text[-200:]!r}")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def nginx_large_config(run_dir: Path, listen_port: int, upstream_port: int, size: int) -> str:
    """One worker, proxy_cache sized to hold the object, set up for big files.

    proxy_cache_lock with long timeouts: the default lock timeout (5 s) is shorter than a
    1 GiB fill, after which every waiting client would go to the origin itself; an
    operator serving multi-GB bundles raises it. sendfile for hits; the temp file is
    written in the cache dir (use_temp_path=off) so storing is a rename."""
    d = run_dir
    cache_mib = 2 * -(-size // (1 << 20)) + 64
    return f"""{nginx_main(d)}http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
{nginx_temp_paths(d)}
    proxy_cache_path {d}/cache levels=1:2 keys_zone=large:8m max_size={cache_mib}m
                     inactive=600m use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache large;
            proxy_cache_revalidate on;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10m;
            proxy_cache_lock_age 10m;
            proxy_max_temp_file_size 0;
            proxy_buffer_size 64k;
            proxy_buffers 16 256k;
            proxy_busy_buffers_size 512k;
            proxy_read_timeout 120s;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""


def phase_timeout(total_bytes: int) -> float:
    return 60.0 + total_bytes / MIN_RATE


# ---------------------------------------------------------------------------------------
# The object file.


@dataclass(frozen=True)
class BigObject:
    file: Path
    url_path: str
    size: int
    sha256: str


def ensure_object(size: int) -> BigObject:
    """The object file for `size`, written once (atomically) and reused while its size and
    mtime match the hash recorded beside it."""
    folder = OBJECT_ROOT / "bundles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"large-{size}.bin"
    meta = folder / f"large-{size}.bin.json"
    url_path = f"/bundles/{path.name}"
    try:
        st = path.stat()
        known = json.loads(meta.read_text())
        if st.st_size == size == known["size"] and st.st_mtime_ns == known["mtime_ns"]:
            return BigObject(path, url_path, size, str(known["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(f"  writing the {size_label(size)} object to {path} ...", flush=True)
    base = base_block()
    digest = hashlib.sha256()
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:
        for offset in range(0, size, BLOCK):
            block = stamped_block(base, offset)[: size - offset]
            digest.update(block)
            out.write(block)
    partial.replace(path)
    st = path.stat()
    meta.write_text(
        json.dumps({"size": size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()})
    )
    return BigObject(path, url_path, size, digest.hexdigest())


# ---------------------------------------------------------------------------------------
# /proc readings: the origin's counters and servers' memory.


def read_proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and stat_pgrp(read_proc(int(entry.name), "stat")) == pgid:
            pids.append(int(entry.name))
    return pids


class RssSampler:
    """Samples the summed VmRSS of a process group every 50 ms in a thread (the client's
    event loop is busy; a thread is late by at most the GIL switch interval), and its open
    file descriptors every 200 ms (listing thousands of them costs the client's core)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pgid = os.getpgid(pid)
        self.samples: list[tuple[float, float]] = []
        self.peak_fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._started = 0.0

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pids = group_pids(self.pgid)
        n = 0
        while not self._stop.is_set():
            if n % 20 == 0:  # new workers or threads come and go; rescan once a second
                pids = group_pids(self.pgid) or [self.pid]
            kb = sum(proc_field(read_proc(p, "status"), "VmRSS") or 0 for p in pids)
            self.samples.append((time.monotonic() - self._started, kb * 1024 / MB))
            if n % 4 == 0:
                self.peak_fds = max(self.peak_fds, sum(open_fds(p) for p in pids))
            n += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def report(self) -> dict[str, Any]:
        hwm = proc_field(read_proc(self.pid, "status"), "VmHWM")
        now = proc_field(read_proc(self.pid, "status"), "VmRSS")
        return {
            "peak_mb": round(max((mb for _, mb in self.samples), default=0.0), 1),
            "samples": len(self.samples),
            "vmhwm_mb_since_start": None if hwm is None else round(hwm * 1024 / MB, 1),
            "after_mb": None if now is None else round(now * 1024 / MB, 1),
            "per_second_peak_mb": per_second_peaks(self.samples),
            "peak_open_fds": self.peak_fds,
            "open_fds_limit": fd_soft_limit(read_proc(self.pid, "limits")),
        }


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class CpuMeter:
    """CPU seconds used by a server's process group and by this client process during a
    phase, and how busy the whole machine was (anything else running shows up there)."""

    def __init__(self, pid: int) -> None:
        self.pgid = os.getpgid(pid)
        self.tick = os.sysconf("SC_CLK_TCK")
        self._start = self._read()

    def _read(self) -> tuple[int, float, int, int, float]:
        server = sum(stat_cpu_ticks(read_proc(p, "stat")) for p in group_pids(self.pgid))
        busy, total = machine_cpu(Path("/proc/stat").read_text())
        return server, time.process_time(), busy, total, time.monotonic()

    def report(self) -> dict[str, Any]:
        end = self._read()
        s0, c0, b0, t0, w0 = self._start
        s1, c1, b1, t1, w1 = end
        return {
            "server_cpu_s": round((s1 - s0) / self.tick, 2),
            "client_cpu_s": round(c1 - c0, 2),
            "wall_s": round(w1 - w0, 2),
            "machine_busy_pct": round(100 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else None,
        }


@dataclass
class Origin:
    child: Child
    port: int

    def mark(self) -> tuple[int, int]:
        """Where the access log and the socket-bytes counter are now."""
        return self.child.log_path.stat().st_size, self._wchar()

    def _wchar(self) -> int:
        return proc_field(read_proc(self.child.proc.pid, "io"), "wchar") or 0

    def tally(self, mark: tuple[int, int], obj: BigObject) -> OriginTally:
        """What the origin saw since `mark`, once its log and counters stop moving (a
        request is logged when its response ends, which may trail the client a bit)."""
        deadline = time.monotonic() + 10
        last = (-1, -1)
        while time.monotonic() < deadline:
            now = (self.child.log_path.stat().st_size, self._wchar())
            if now == last:
                break
            last = now
            time.sleep(0.5)
        with open(self.child.log_path, "rb") as f:
            f.seek(mark[0])
            text = f.read().decode(errors="replace")
        tally = parse_access_log(text, obj.url_path)
        tally.bytes_sent = self._wchar() - mark[1]
        tally.object_factor = round(tally.bytes_sent / obj.size, 3)
        return tally


# ---------------------------------------------------------------------------------------
# Clients.


@dataclass
class Download:
    index: int
    status: int = 0
    head_s: float | None = None
    first_byte_s: float | None = None
    done_s: float | None = None
    bytes: int = 0
    max_gap_s: float = 0.0
    cache_status: str = "-"
    sha256_ok: bool | None = None
    error: str | None = None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    index: int,
    t0: float,
    obj: BigObject,
    check_hash: bool,
) -> Download:
    d = Download(index)
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256() if check_hash else None
    try:
        async with session.get(url, headers=CLIENT_HEADERS) as resp:
            d.head_s = loop.time() - t0
            d.status = resp.status
            d.cache_status = condense_cache_status(
                resp.headers.get("Cache-Status") or resp.headers.get("X-Cache-Status")
            )
            if resp.status != 200:
                d.error = f"status {resp.status}"
                return d
            # The first piece as soon as any byte is there; then big reads, discarded.
            chunk = await resp.content.readany()
            last = loop.time()
            d.first_byte_s = last - t0
            while chunk:
                d.bytes += len(chunk)
                if digest is not None:
                    digest.update(chunk)
                chunk = await resp.content.read(CHUNK)
                now = loop.time()
                d.max_gap_s = max(d.max_gap_s, now - last)
                last = now
            d.done_s = loop.time() - t0
    except TimeoutError:
        d.error = "timeout"
    except aiohttp.ClientPayloadError:
        # The server closed the connection before Content-Length bytes; where it did so
        # is in `bytes` (summary: cut_at_bytes), so the message stays one kind.
        d.error = "body cut short (connection closed before Content-Length)"
    except aiohttp.ClientError as exc:
        d.error = f"{type(exc).__name__}: {exc}"[:200]
    if d.error is None and d.bytes != obj.size:
        d.error = f"short body: {d.bytes} of {obj.size} bytes"
    if digest is not None and d.error is None:
        d.sha256_ok = digest.hexdigest() == obj.sha256
        if not d.sha256_ok:
            d.error = "SHA-256 differs from the file's"
    return d


@dataclass
class CrowdResult:
    downloads: list[Download]
    wall_s: float

    def ok(self) -> list[Download]:
        return [d for d in self.downloads if d.error is None]

    def summary(self) -> dict[str, Any]:
        ok = self.ok()
        total = sum(d.bytes for d in self.downloads)
        errors = Counter(d.error for d in self.downloads if d.error)
        return {
            "clients": len(self.downloads),
            "complete": len(ok),
            "errors": dict(errors),
            "head_s": spread([d.head_s for d in self.downloads if d.head_s is not None]),
            "ttfb_s": spread(
                [d.first_byte_s for d in self.downloads if d.first_byte_s is not None]
            ),
            "done_s": spread([d.done_s for d in ok if d.done_s is not None]),
            "max_gap_s": round(max((d.max_gap_s for d in self.downloads), default=0.0), 3),
            "wall_s": round(self.wall_s, 3),
            "aggregate_mb_per_s": round(total / MB / self.wall_s, 1) if self.wall_s else None,
            "sha256_ok": next(
                (d.sha256_ok for d in self.downloads if d.sha256_ok is not None), None
            ),
            "cache_status": dict(Counter(d.cache_status for d in self.downloads)),
            "cut_at_bytes": sorted(d.bytes for d in self.downloads if d.error and d.bytes),
        }


async def crowd(url: str, clients: int, obj: BigObject) -> CrowdResult:
    """`clients` downloads of `url` started together; client 0 also checks the hash."""
    bound = phase_timeout(clients * obj.size)
    timeout = aiohttp.ClientTimeout(total=bound, sock_connect=10, sock_read=READ_TIMEOUT)
    # limit=0: every client its own connection at once, as a crowd would arrive.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, read_bufsize=CHUNK
    ) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = [
            asyncio.ensure_future(download(session, url, i, t0, obj, i == 0))
            for i in range(clients)
        ]
        try:
            await asyncio.wait(tasks, timeout=bound + 30)
        finally:
            # Past the bound, or interrupted (Ctrl-C cancels this task): stop every client
            # and let it unwind before the session closes under it.
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
        return CrowdResult([_outcome(i, t) for i, t in enumerate(tasks)], loop.time() - t0)


def _outcome(index: int, task: asyncio.Future[Download]) -> Download:
    if not task.done() or task.cancelled():
        return Download(index, error="phase timeout")
    exc = task.exception()
    if exc is not None:  # not an HTTP error download() knows: report it, do not crash
        return Download(index, error=f"{type(exc).__name__}: {exc}"[:200])
    return task.result()


# ---------------------------------------------------------------------------------------
# Servers.


@dataclass
class Server:
    name: str
    child: Child
    port: int
    argv: list[str]

    def url(self, obj: BigObject) -> str:
        return f"http://127.0.0.1:{self.port}{obj.url_path}"


def start_origin(procs: Processes) -> Origin:
    port = free_port()
    argv = edge_command("origin", "--root", str(OBJECT_ROOT), "--listen", f"127.0.0.1:{port}")
    child = procs.start("origin", argv, cwd=REPO_ROOT)
    wait_tcp(child, port)
    return Origin(child, port)


def start_edge(
    procs: Processes, label: str, origin: Origin, cache_dir: Path, cache_size: str = "4G"
) -> Server:
    port = free_port()
    argv = [
        *edge_argv(port, f"http://127.0.0.1:{origin.port}", cache_dir, "large", cache_size),
        # The whole cache for the one object (the default is an eighth of it).
        "--max-object-size",
        cache_size,
    ]
    child = procs.start(label, argv, cwd=REPO_ROOT)
    wait_http_ok(child, f"http://127.0.0.1:{port}/_edge/health")
    return Server("edge", child, port, argv)


def start_nginx(procs: Processes, workdir: Path, origin: Origin, size: int) -> Server:
    port = free_port()
    run_dir = workdir / "nginx"
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = write_nginx_config_text(run_dir, nginx_large_config(run_dir, port, origin.port, size))
    child = procs.start("nginx", argv)
    wait_tcp(child, port)
    return Server("nginx", child, port, argv)


def check_origin_object(origin: Origin, obj: BigObject) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{origin.port}{obj.url_path}", method="HEAD")
    with urllib.request.urlopen(req, timeout=10) as resp:
        length = int(resp.headers.get("Content-Length", "-1"))
    if length != obj.size:
        raise ScenarioError(f"origin says {length} bytes for {obj.url_path}, not {obj.size}")


def run_phase(
    runner: asyncio.Runner,
    name: str,
    server: Server,
    origin: Origin,
    obj: BigObject,
    clients: int,
) -> dict[str, Any]:
    print(f"  {name}: {server.name}, {clients} clients ...", end="", flush=True)
    mark = origin.mark()
    cpu = CpuMeter(server.child.proc.pid)
    with RssSampler(server.child.proc.pid) as rss:
        result = runner.run(crowd(server.url(obj), clients, obj))
    usage = cpu.report()
    report = {
        "phase": name,
        "server": server.name,
        **result.summary(),
        "cpu": usage,
        "origin": asdict(origin.tally(mark, obj)),
        "rss": rss.report(),
    }
    print(
        f" {report['wall_s']:.1f}s, {report['complete']}/{clients} complete, "
        f"origin {report['origin']['requests']} req ({report['origin']['object_factor']}x), "
        f"peak RSS {report['rss']['peak_mb']} MB, open fds {report['rss']['peak_open_fds']}; "
        f"CPU s server {usage['server_cpu_s']}, "
        f"client {usage['client_cpu_s']}, machine {usage['machine_busy_pct']}% busy",
        flush=True,
    )
    return report


def curl_round(
    procs: Processes, curl: str, server: Server, obj: BigObject, parallel: int, label: str
) -> dict[str, Any]:
    """`parallel` curls at once; MB/s is all their bytes over the round's wall time."""
    max_time = phase_timeout(parallel * obj.size)
    children = []
    started = time.monotonic()
    for i in range(parallel):
        argv = [
            curl,
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            f"{max_time:.0f}",
            "-H",
            "Accept-Encoding: identity",
            "-w",
            "%{http_code} %{size_download} %{time_total} %{time_starttransfer}\\n",
            server.url(obj),
        ]
        children.append(procs.start(f"curl-{label}-{i}", argv))
    for child in children:
        try:
            child.proc.wait(timeout=max_time + 10)
        except Exception:
            stop_process(child.proc)
            raise
    wall = time.monotonic() - started
    errors, total = [], 0
    for child in children:
        try:
            status, got, _, _ = parse_curl_write_out(child.log_path.read_text(errors="replace"))
        except ValueError as exc:
            errors.append(str(exc))
            continue
        total += got
        if status != 200 or got != obj.size:
            errors.append(f"status {status}, {got} bytes")
    return {"wall_s": round(wall, 3), "mb_per_s": round(total / MB / wall, 1), "errors": errors}


def fill_nginx(procs: Processes, nginx: Server, origin: Origin, obj: BigObject) -> dict[str, Any]:
    """One download through nginx so that its cache holds the object."""
    mark = origin.mark()
    got = curl_round(procs, require_tool("curl"), nginx, obj, 1, "nginx-fill")
    return {**got, "origin": asdict(origin.tally(mark, obj))}


def keep_logs(work: Path) -> list[str]:
    """Copy the origin's, the edges' and nginx's logs to LOG_DIR (emptied first)."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    kept = []
    for log in [*sorted(work.glob("*.log")), work / "nginx" / "error.log"]:
        if log.name.startswith("curl-") or not log.is_file():
            continue
        name = "nginx-error.log" if log.parent.name == "nginx" else log.name
        shutil.copyfile(log, LOG_DIR / name)
        kept.append(str((LOG_DIR / name).relative_to(REPO_ROOT)))
    return kept


def throughput(
    procs: Processes,
    servers: Sequence[Server],
    origin: Origin,
    obj: BigObject,
    rounds: int,
    parallel: int,
) -> dict[str, Any]:
    curl = require_tool("curl")
    out: dict[str, Any] = {s.name: {"rounds": []} for s in servers}
    mark = origin.mark()
    for r in range(rounds):
        # Alternate who goes first: the page cache and CPU caches favour neither.
        order = servers if r % 2 == 0 else list(reversed(servers))
        for server in order:
            got = curl_round(procs, curl, server, obj, parallel, f"{server.name}-{r}")
            out[server.name]["rounds"].append(got)
            print(
                f"  warm throughput round {r + 1}: {server.name} {got['mb_per_s']:,.0f} MB/s",
                flush=True,
            )
    for server in servers:
        rates = [x["mb_per_s"] for x in out[server.name]["rounds"]]
        out[server.name]["median_mb_per_s"] = statistics.median(rates)
    if len(servers) == 2:
        out["ratio_edge_nginx"] = ratio(
            out["edge"]["median_mb_per_s"], out["nginx"]["median_mb_per_s"]
        )
    out["origin"] = asdict(origin.tally(mark, obj))
    return out


# ---------------------------------------------------------------------------------------
# Report.


def render(phases: Sequence[dict[str, Any]], thr: dict[str, Any]) -> str:
    head = (
        f"{'phase':<18}{'server':<7}{'clients':>8}{'TTFB first':>11}{'median':>8}{'last':>8}"
        f"{'done med':>9}{'last':>8}{'MB/s':>8}{'origin req':>11}{'x size':>7}{'peak RSS':>9}"
    )
    lines = [head]
    for p in phases:
        t, d = p["ttfb_s"], p["done_s"]
        lines.append(
            f"{p['phase']:<18}{p['server']:<7}{p['clients']:>8}{fmt_seconds(t['first']):>11}"
            f"{fmt_seconds(t['median']):>8}{fmt_seconds(t['last']):>8}{fmt_seconds(d['median']):>9}{fmt_seconds(d['last']):>8}"
            f"{p['aggregate_mb_per_s'] or 0:>8,.0f}{p['origin']['requests']:>11}"
            f"{p['origin']['object_factor']:>7.2f}{p['rss']['peak_mb']:>9.1f}"
        )
    lines.append("times in seconds from the common start; MB = 10^6 bytes; RSS in MB")
    if thr:
        parts = [
            f"{name} {v['median_mb_per_s']:,.0f} MB/s"
            for name, v in thr.items()
            if isinstance(v, dict) and "median_mb_per_s" in v
        ]
        line = "warm throughput (median round): " + ", ".join(parts)
        if thr.get("ratio_edge_nginx") is not None:
            line += f"; edge/nginx {thr['ratio_edge_nginx']:.3f}"
        lines.append(line)
    return "\n".join(lines)


def find_problems(phases: Sequence[dict[str, Any]], thr: dict[str, Any]) -> list[str]:
    problems = []
    for p in phases:
        name = p["phase"]
        for error, count in p["errors"].items():
            problems.append(f"{name} ({p['server']}): {count} client(s): {error}")
        if p["sha256_ok"] is False:
            problems.append(f"{name} ({p['server']}): body differs from the file")
        if p["server"] != "edge":
            continue
        factor = p["origin"]["object_factor"]
        if name.endswith("cold") and factor > MAX_ORIGIN_FACTOR:
            problems.append(f"{name}: the origin sent {factor}x the object (expected ~1x)")
        if name.endswith("warm") and p["origin"]["requests"]:
            problems.append(f"{name}: {p['origin']['requests']} origin requests on a warm object")
        if name.startswith("clients") and p["rss"]["peak_mb"] >= RSS_TARGET_MB:
            problems.append(
                f"{name}: edge peak RSS {p['rss']['peak_mb']} MB (target < {RSS_TARGET_MB:g})"
            )
    for name, v in thr.items():
        if isinstance(v, dict) and "rounds" in v:
            for i, rnd in enumerate(v["rounds"]):
                problems.extend(f"throughput {name} round {i + 1}: {e}" for e in rnd["errors"])
    if thr and thr["origin"]["requests"]:
        problems.append(f"warm throughput: {thr['origin']['requests']} origin requests")
    fill = thr.get("nginx_fill")
    if fill:
        problems.extend(f"nginx fill: {e}" for e in fill["errors"])
    return problems


def find_warnings(phases: Sequence[dict[str, Any]]) -> list[str]:
    """Signs of trouble that did not (yet) break a download in this run."""
    warnings = []
    for p in phases:
        fds, limit = p["rss"]["peak_open_fds"], p["rss"]["open_fds_limit"]
        if limit and fds >= limit // 2:
            warnings.append(
                f"{p['phase']} ({p['server']}): {fds} open files at the peak, "
                f"limit {limit} ({p['clients']} clients)"
            )
        if p["max_gap_s"] >= 5:
            warnings.append(f"{p['phase']} ({p['server']}): a client waited {p['max_gap_s']}s")
    return warnings


# ---------------------------------------------------------------------------------------
# The run.


def run(args: argparse.Namespace) -> int:
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from exc
    if not 1 << 20 <= size <= 64 << 30:
        raise ScenarioError("--size must be between 1M and 64G")
    for opt in ("crowd", "clients", "parallel"):
        if not 1 <= getattr(args, opt) <= 1000:
            raise ScenarioError(f"--{opt} must be 1..1000")
    if not 1 <= args.rounds <= 20:
        raise ScenarioError("--rounds must be 1..20")
    require_tool("curl")
    if not args.skip_nginx:
        require_tool("nginx")

    servers = "edge" if args.skip_nginx else "edge and nginx"
    print(
        f"large_files: {size_label(size)} object; {servers}; crowd {args.crowd}, "
        f"clients {args.clients}, throughput {args.rounds} x {args.parallel} curl",
        flush=True,
    )
    obj = ensure_object(size)
    started = time.monotonic()
    phases: list[dict[str, Any]] = []
    thr: dict[str, Any] = {}
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-large-") as tmp:
        work = Path(tmp)
        try:
            with (
                Processes(work) as procs,
                asyncio.Runner(loop_factory=client_loop_factory()) as runner,
            ):
                origin = start_origin(procs)
                check_origin_object(origin, obj)
                commands["origin"] = list(origin.child.proc.args)  # type: ignore[arg-type]
                nginx = None if args.skip_nginx else start_nginx(procs, work, origin, size)

                # 1. Cold crowd on a fresh edge (and, if asked, on nginx).
                edge = start_edge(procs, "edge-crowd", origin, work / "cache-crowd")
                commands["edge"] = edge.argv
                phases.append(run_phase(runner, "crowd cold", edge, origin, obj, args.crowd))
                stop_process(edge.child.proc)
                shutil.rmtree(work / "cache-crowd", ignore_errors=True)
                if nginx is not None:
                    commands["nginx"] = nginx.argv
                    if args.nginx_crowd:
                        phases.append(
                            run_phase(runner, "crowd cold", nginx, origin, obj, args.crowd)
                        )

                # 2. Memory: a restarted edge with an empty cache, cold then warm.
                edge = start_edge(procs, "edge-clients", origin, work / "cache-clients")
                for name in ("clients cold", "clients warm"):
                    phases.append(run_phase(runner, name, edge, origin, obj, args.clients))

                # 3. Warm throughput, edge against nginx (filled by one download first
                # when its crowd did not run).
                if nginx is not None and not args.nginx_crowd:
                    thr["nginx_fill"] = fill_nginx(procs, nginx, origin, obj)
                targets = [edge] if nginx is None else [edge, nginx]
                thr.update(throughput(procs, targets, origin, obj, args.rounds, args.parallel))
        finally:
            # The children are stopped by now; keep their logs, the temp dir goes next.
            kept = keep_logs(work)

    problems = find_problems(phases, thr)
    print()
    print(render(phases, thr))
    by_name = {(p["phase"], p["server"]): p for p in phases}
    cold = by_name["clients cold", "edge"]["rss"]
    warm = by_name["clients warm", "edge"]["rss"]
    met = max(cold["peak_mb"], warm["peak_mb"]) < RSS_TARGET_MB
    print(
        f"edge peak RSS with {args.clients} clients: cold {cold['peak_mb']} MB, "
        f"warm {warm['peak_mb']} MB (VmHWM {warm['vmhwm_mb_since_start']} MB); "
        f"target < {RSS_TARGET_MB:g} MB: {'met' if met else 'NOT MET'}"
    )
    warnings = find_warnings(phases)
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"FAILED: {p}")

    report = {
        "size": size,
        "object": str(obj.file.relative_to(REPO_ROOT)),
        "sha256": obj.sha256,
        "cores": os.cpu_count(),
        "crowd": args.crowd,
        "clients": args.clients,
        "rss_target_mb": RSS_TARGET_MB,
        "rss_target_met": met,
        "commands": commands,
        "phases": phases,
        "throughput": thr,
        "problems": problems,
        "warnings": warnings,
        "logs": kept,
        "seconds": round(time.monotonic() - started, 1),
    }
    out = report_path(args.out, "large_files.json")
    write_report(out, report, f" and the servers' logs in {LOG_DIR} ({report['seconds']:.0f}s)")
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.large_files",
        description="A multi-GB object through edge serve (and nginx): cold-crowd time to "
        "first byte, origin requests, peak RSS, warm throughput.",
    )
    parser.add_argument("--size", default="1G", help="object size, e.g. 64M, 1G (default 1G)")
    parser.add_argument("--crowd", type=int, default=100, help="clients in the cold crowd")
    parser.add_argument("--clients", type=int, default=50, help="clients for the RSS phases")
    parser.add_argument("--rounds", type=int, default=3, help="warm throughput rounds")
    parser.add_argument("--parallel", type=int, default=4, help="curl downloads per round")
    parser.add_argument("--skip-nginx", action="store_true", help="measure the edge alone")
    parser.add_argument(
        "--nginx-crowd",
        action="store_true",
        help="run the cold crowd against nginx too (another crowd x size of downloads)",
    )
    parser.add_argument("--out", help="report path (default scenarios/out/large_files.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("large_files", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
