"""Helpers for the guard's tests: a node TOML from keyword settings, and raw sockets
that send exact bytes and read what comes back (the guard is about bytes an HTTP
client library would never send)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, **settings: Any) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    return path


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything until the peer closes (True) or `timeout` passes (False)."""
    sock.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return out, True
            out += data
    except TimeoutError:
        return out, False
    except ConnectionResetError:
        return out, True
    return out, False


def exchange(
    port: int, data: bytes, timeout: float = 3.0, source: str = "127.0.0.1"
) -> tuple[bytes, bool]:
    """Send `data` on a fresh connection; what came back and whether it was closed."""
    with connect(port, source) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_all(sock, timeout)


def status_of(response: bytes) -> int:
    parts = response.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def statuses(response: bytes) -> list[int]:
    """The status codes of every response in a byte stream (pipelined answers)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", response)]
