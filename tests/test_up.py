"""`edge up`: the CDN on this machine (demo origin, shield, edge) starts, serves through
both tiers, and stops with no process left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.procs import REPO


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_edge_up_serves_through_shield_and_edge_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "up",
            "--small",
            "--port",
            "0",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kids: list[int] = []
    try:
        lines = []
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        edge = re.search(r"edge\s+(http://\S+)", text)
        assert edge, text
        assert "shield" in text
        kids = children_of(proc.pid)
        assert len(kids) == 3  # origin, shield, edge
        statuses = []
        for _ in range(2):
            with urllib.request.urlopen(edge.group(1) + "/catalogue.json", timeout=10) as resp:
                assert resp.status == 200 and resp.read()
                statuses.append(resp.headers["Cache-Status"])
        assert statuses[0].startswith("shield-local; fwd=uri-miss")
        assert statuses[1].split(", ")[-1].startswith("edge-local; hit")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert "stopped" in proc.stdout.read()
    for pid in kids:  # none left running
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"child {pid} still running")
