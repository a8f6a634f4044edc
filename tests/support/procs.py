"""Starting and stopping real processes on free loopback ports, and waiting for them."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edge_cmd(*args: str) -> list[str]:
    """The `edge` console script as installed, run with this interpreter."""
    return [sys.executable, "-m", "cli.main", *args]


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20, ca: str = ""
) -> None:
    context = ssl.create_default_context(cafile=ca) if ca else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()}")


def start(
    cmd: list[str],
    port: int,
    log: Path,
    health_path: str = "/",
    env: dict[str, str] | None = None,
    ca: str = "",
) -> Proc:
    """Start `cmd` and wait until it answers on loopback (over https, trusting `ca`,
    when one is given)."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    out.close()
    scheme = "https" if ca else "http"
    wait_http(f"{scheme}://127.0.0.1:{port}{health_path}", popen, log, ca=ca)
    return Proc(popen, port, log)
