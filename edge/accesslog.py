"""The access log: one line per request, written in batches.

Owns the line's layout and its buffering. A line looks as the logging module's
`%(asctime)s %(name)s %(levelname)s %(message)s` would print it (the node's other
logs use that layout), but it is formatted here and written with the lines around
it: once the event loop has run what is ready now (under load, the requests of one
loop turn share one write), or once `FLUSH_BYTES` have gathered. A logging record and
a write per request cost as much as serving a cached hit, which is why nginx buffers
its access log too. The `edge.access` logger's level still decides whether lines are
written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

NAME = "edge.access"
FLUSH_BYTES = 64 << 10


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
        """Add one request's line (the message part)."""
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
