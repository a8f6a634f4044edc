"""`edge up`: run a CDN on this machine as child processes.

For now the topology is the demo archive origin, an origin shield in front of it and
one edge in front of the shield (going to the origin directly if the shield fails); each
child is started with the same `edge` entry point, waited on until it answers, and
stopped (with everything else) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _edge_command() -> list[str]:
    return [sys.executable, "-m", "cli.main"]


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"did not answer {url} within {timeout:.0f}s")


def up(
    workdir: Annotated[
        Path, typer.Option(help="Folder for the demo archive, caches and logs.")
    ] = Path(".edge"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Edge port (0: pick a free one).")] = 8080,
    small: Annotated[bool, typer.Option(help="Small demo files (quick start).")] = False,
) -> None:
    """Start the demo origin, a shield and an edge; print what to try."""
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    origin_port = _free_port(host)
    shield_port = _free_port(host)
    edge_port = port or _free_port(host)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, args: list[str], health: str) -> None:
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen([*_edge_command(), *args], stdout=out, stderr=subprocess.STDOUT)
        children.append((name, proc))
        try:
            _wait_http(health, proc, timeout=120)
        except RuntimeError as exc:
            stop_all()
            fail(f"{name} failed to start ({exc}); see {logs / (name + '.log')}")

    def stop_all() -> None:
        for _, proc in reversed(children):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in children:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    origin_args = ["origin", "--root", str(workdir / "archive"), "--demo"]
    origin_args += ["--listen", f"{host}:{origin_port}"]
    if small:
        origin_args.append("--small")
    start("origin", origin_args, f"http://{host}:{origin_port}/")
    origin_url = f"http://{host}:{origin_port}"
    shield_url = f"http://{host}:{shield_port}"
    start(
        "shield",
        [
            "shield",
            "--listen",
            f"{host}:{shield_port}",
            "--origin",
            origin_url,
            "--cache-dir",
            str(workdir / "cache" / "shield"),
            "--name",
            "shield-local",
        ],
        f"{shield_url}/_edge/health",
    )
    start(
        "edge",
        [
            "serve",
            "--listen",
            f"{host}:{edge_port}",
            "--shield",
            shield_url,
            "--origin",
            origin_url,
            "--cache-dir",
            str(workdir / "cache" / "edge"),
            "--name",
            "edge-local",
        ],
        f"http://{host}:{edge_port}/_edge/health",
    )
    base = f"http://{host}:{edge_port}"
    print(
        "\n".join(
            [
                "edge is up:",
                f"  origin  http://{host}:{origin_port}   (demo archive in {workdir / 'archive'})",
                f"  shield  {shield_url}",
                f"  edge    {base}   (caches in {workdir / 'cache'})",
                f"  logs    {logs}",
                "",
                "Try:",
                f"  curl -si {base}/catalogue.json | head -20   # twice: the second is a hit",
                "      (Cache-Status: the shield's entry, then the edge's)",
                f"  curl -s {base}/_edge/metrics | grep edge_requests",
                "",
                "Ctrl-C stops everything.",
            ]
        ),
        flush=True,
    )
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"edge up: {name} exited with status {proc.returncode}", flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        stop_all()
        print("edge up: stopped", flush=True)
