"""The access log: one line per request, written in batches.

Owns the line's layout (`request_line`, the one place a request's line is formatted,
for the pipeline and the hit fast path alike) and its buffering. A line looks as the
logging module's `%(asctime)s %(name)s %(levelname)s %(message)s` would print it (the
node's other logs use that layout), but it is formatted here and written with the
lines around it: once the event loop has run what is ready now (under load, the
requests of one loop turn share one write), or once `FLUSH_BYTES` have gathered. A
logging record and a write per request cost as much as serving a cached hit, which is
why nginx buffers its access log too. The `edge.access` logger's level still decides
whether lines are written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

NAME = "edge.access"
FLUSH_BYTES = 64 << 10


def request_line(
    client: str,
    method: str,
    target: str,
    status: int,
    label: str,
    sent: int,
    took_ms: float,
    upstream_ms: float | None,
    walk: str,
    *,
    request_id: str = "",
    end: str = "",
    protocol: str = "",
) -> str:
    """One request's line (the message part): who asked what, the status and how the
    cache answered (edge.rfc.cachestatus label), body bytes sent, milliseconds in all and
    upstream ("-": not asked), the request id when one was given, the walk (the client
    machine's steps as its caller renders them, e.g. "recv>hash>lookup>hit>deliver", or
    "fast"), and how the exchange ended when not whole ("client-gone", "cut").
    `protocol` ("HTTP/1.1", "HTTP/2.0"), when given, is the `proto=` field.
    """
    upstream = "-" if upstream_ms is None else f"{upstream_ms:.1f}"
    req_id = f" id={request_id}" if request_id else ""
    tail = f" {end}" if end else ""
    proto = f" proto={protocol}" if protocol else ""
    return (
        f'{client} "{method} {target}" {status} {label} bytes={sent} time_ms={took_ms:.1f} '
        f"upstream_ms={upstream}{proto}{req_id} walk={walk}{tail}"
    )


class AccessLog:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled and logging.getLogger(NAME).isEnabledFor(logging.INFO)
        self._stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.Handle | None = None
        self._second = -1
        self._stamp = ""

    def line(self, message: str) -> None:
        """Add one line (the message part: request_line's)."""
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not per line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        text = f"{self._stamp},{int((now - second) * 1000):03d} {NAME} INFO {message}\n"
        self._lines.append(text)
        self._size += len(text)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data, self._lines, self._size = "".join(self._lines), [], 0
        stream = self._stream or sys.stderr
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log stream must not take requests down with it
