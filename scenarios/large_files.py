"""Large objects at the edge: a cold crowd, memory under load, and warm throughput
against nginx proxy_cache, on one big file served by the demo origin.

    python -m scenarios.large_files [--size 1G] [--crowd 100] [--clients 50] [--skip-nginx]

1. Cold crowd: `--crowd` clients ask for the cold object at once and read its first
   16 MiB (one of them reads all of it and checks its SHA-256). Reports each client's
   time to first byte relative to the common start (first, median, last) and how many
   requests the origin saw for the object (from its access log).
2. Memory: `--clients` clients download the whole object at once, cold (fresh cache,
   edge restarted) and then warm; the edge's resident memory is sampled every 50 ms from
   /proc and its peak (and the kernel's VmHWM) reported.
3. Warm throughput: three sequential whole downloads through the edge and through nginx
   (one worker, proxy_cache, sendfile) in front of the same origin; MB/s and the ratio.

Writes scenarios/out/large_files.json. Every client has a timeout; every process is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from scenarios import harness

CACHE = harness.REPO_ROOT / ".cache" / "large-files"
MiB = 1 << 20
CROWD_READ = 16 * MiB


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_object(size: int) -> Path:
    """A file of `size` bytes, made once: distinct 1 MiB blocks (so no block repeats)."""
    path = CACHE / "objects" / f"object-{size}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as out:
        for i in range(0, size, MiB):
            out.write((i // MiB).to_bytes(8, "big") + block[8 : min(MiB, size - i)])
    tmp.rename(path)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


class RssSampler:
    """Samples a process's VmRSS every 50 ms in a thread; reports the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self, field: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, self._read("VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def hwm_mib(self) -> float:
        return self._read("VmHWM") / 1024


async def crowd(url: str, clients: int, expected_sha: str, size: int) -> dict[str, object]:
    """`clients` requests at once; each reads CROWD_READ bytes, one reads everything."""
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout, auto_decompress=False
    ) as session:

        async def one(i: int) -> tuple[float, int, str]:
            async with session.get(url) as resp:
                resp.raise_for_status()
                first: float | None = None
                got = 0
                digest = hashlib.sha256() if i == 0 else None
                async for chunk in resp.content.iter_chunked(MiB):
                    if first is None:
                        first = time.monotonic() - start
                    got += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    elif got >= CROWD_READ:
                        break
                return first or 0.0, got, digest.hexdigest() if digest else ""

        results = await asyncio.gather(*(one(i) for i in range(clients)))
    ttfb = sorted(r[0] for r in results)
    whole = results[0]
    if whole[1] != size or whole[2] != expected_sha:
        raise harness.ScenarioError("the full download through the edge did not match the file")
    return {
        "clients": clients,
        "ttfb_first_ms": round(ttfb[0] * 1000, 1),
        "ttfb_median_ms": round(statistics.median(ttfb) * 1000, 1),
        "ttfb_last_ms": round(ttfb[-1] * 1000, 1),
        "full_download_s": round(time.monotonic() - start, 2),
    }


async def download_all(url: str, clients: int, size: int) -> float:
    """`clients` whole downloads at once; returns the seconds taken."""
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout, auto_decompress=False
    ) as session:

        async def one() -> int:
            got = 0
            async with session.get(url) as resp:
                resp.raise_for_status()
                async for chunk in resp.content.iter_chunked(MiB):
                    got += len(chunk)
            return got

        sizes = await asyncio.gather(*(one() for _ in range(clients)))
    if any(s != size for s in sizes):
        raise harness.ScenarioError(f"short downloads: {sorted(set(sizes))}")
    return time.monotonic() - start


def origin_requests(origin_log: Path, path: str) -> int:
    text = origin_log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if f'"GET {path} ' in line)


def edge_cmd(port: int, origin: str, cache: Path) -> list[str]:
    argv = harness.edge_argv(port, origin, cache, "large", cache_size="8G")
    return [*argv, "--max-object-size", "16G", "--log-level", "warning"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--crowd", type=int, default=100)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--skip-nginx", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    obj = make_object(size)
    sha = sha256_file(obj)
    path = "/objects/" + obj.name
    report: dict[str, object] = {"size": size}
    with (
        tempfile.TemporaryDirectory(prefix="edge-large-") as tmp,
        harness.Processes(Path(tmp)) as procs,
    ):
        work = Path(tmp)
        origin_port = harness.free_port()
        script = Path(sys.executable).parent / "edge"
        base = [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]
        origin = procs.start(
            "origin",
            [*base, "origin", "--root", str(CACHE), "--listen", f"127.0.0.1:{origin_port}"],
        )
        harness.wait_http_ok(origin, f"http://127.0.0.1:{origin_port}/")
        upstream = f"http://127.0.0.1:{origin_port}"

        def start_edge(tag: str) -> tuple[harness.Child, str]:
            port = harness.free_port()
            child = procs.start(f"edge-{tag}", edge_cmd(port, upstream, work / f"cache-{tag}"))
            harness.wait_http_ok(child, f"http://127.0.0.1:{port}/_edge/health")
            return child, f"http://127.0.0.1:{port}{path}"

        # 1. cold crowd
        edge, url = start_edge("crowd")
        before = origin_requests(origin.log_path, path)
        print(f"large_files: {size / MiB:.0f} MiB object; cold crowd of {args.crowd} ...")
        result = asyncio.run(crowd(url, args.crowd, sha, size))
        result["origin_requests"] = origin_requests(origin.log_path, path) - before
        report["cold_crowd"] = result
        harness.stop_process(edge.proc)

        # 2. memory with many whole downloads, cold then warm
        edge, url = start_edge("memory")
        for phase in ("cold", "warm"):
            print(f"large_files: {args.clients} whole downloads, {phase} ...")
            before = origin_requests(origin.log_path, path)
            with RssSampler(edge.proc.pid) as rss:
                seconds = asyncio.run(download_all(url, args.clients, size))
            report[f"memory_{phase}"] = {
                "clients": args.clients,
                "peak_rss_mib": round(rss.peak_kib / 1024, 1),
                "vm_hwm_mib": round(rss.hwm_mib(), 1),
                "seconds": round(seconds, 1),
                "aggregate_mb_s": round(args.clients * size / 1e6 / seconds, 1),
                "origin_requests": origin_requests(origin.log_path, path) - before,
            }

        # 3. warm throughput, edge vs nginx
        runs: dict[str, float] = {}

        def throughput(target: str) -> float:
            asyncio.run(download_all(target, 1, size))  # warm
            seconds = sum(asyncio.run(download_all(target, 1, size)) for _ in range(3))
            return round(3 * size / 1e6 / seconds, 1)

        print("large_files: warm throughput ...")
        runs["edge"] = throughput(url)
        if not args.skip_nginx:
            nginx_port = harness.free_port()
            run_dir = work / "nginx"
            argv = harness.write_nginx_config(
                run_dir, nginx_port, origin_port, keepalive_upstream=True
            )
            conf = run_dir / "nginx.conf"
            text = conf.read_text().replace("max_size=1000m", "max_size=16g")
            text = text.replace(
                "http {", "http {\n    sendfile on;\n    proxy_max_temp_file_size 16384m;"
            )
            conf.write_text(text)
            nginx = procs.start("nginx", argv)
            harness.wait_tcp(nginx, nginx_port)
            runs["nginx"] = throughput(f"http://127.0.0.1:{nginx_port}{path}")
        report["warm_mb_s"] = runs
        if "nginx" in runs:
            report["warm_ratio_edge_nginx"] = round(runs["edge"] / runs["nginx"], 3)

    cold = report["cold_crowd"]
    print("\nphase          figure")
    print(
        f"cold crowd     TTFB first {cold['ttfb_first_ms']} ms, median {cold['ttfb_median_ms']} ms,"
        f" last {cold['ttfb_last_ms']} ms; origin requests {cold['origin_requests']}"
    )
    for phase in ("cold", "warm"):
        m = report[f"memory_{phase}"]
        print(
            f"memory {phase:5}   peak RSS {m['peak_rss_mib']} MiB (VmHWM {m['vm_hwm_mib']}),"
            f" {m['clients']} clients in {m['seconds']} s, {m['aggregate_mb_s']} MB/s,"
            f" origin requests {m['origin_requests']}"
        )
    line = f"warm           edge {runs['edge']} MB/s"
    if "nginx" in runs:
        line += f", nginx {runs['nginx']} MB/s, ratio {report['warm_ratio_edge_nginx']}"
    print(line)
    harness.OUT_DIR.mkdir(exist_ok=True)
    out = harness.OUT_DIR / "large_files.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except harness.ScenarioError as exc:
        print(f"large_files: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
