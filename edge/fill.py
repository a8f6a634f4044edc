"""Collapsed fetches and read-while-writer.

A Fill is one upstream fetch of a cache key whose body is being written to the store.
Every client of that key, the one that caused the fetch included, reads the body from
the growing file at its own pace, so a crowd on a cold object makes one upstream
request and starts at once. The fetch runs as its own task: a client that goes away
does not break the download for the others.

This module owns the in-flight table and the reader side (`FillReader`); the pipeline
decides what to fetch and whether the result is stored.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from edge.store import BodyWriter, Entry


@dataclass
class FillHead:
    """What a fill turned out to be, once the upstream answered.

    kind:
      "body"          a shared response whose body is arriving in `writer` (stored
                      at the end if `storable`)
      "not-modified"  a 304 refreshed the stored `entry`; serve it
      "private"       not shareable; only the fill's initiator may use `response`
      "error"         the upstream failed (`error`), or answered 5xx while a stale
                      copy may be served; waiters decide what to do
    """

    kind: str
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    vary: Any = ()
    length: int | None = None
    entry: Entry | None = None
    response: Any = None
    error: Exception | None = None
    storable: bool = False
    variant: str = ""  # the variant id the body is stored under


class Fill:
    """One upstream fetch in flight for one primary cache key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.head: asyncio.Future[FillHead] = asyncio.get_running_loop().create_future()
        self.writer: BodyWriter | None = None
        self._fd: int | None = None
        self.written = 0
        self.finished = False
        self.failed: Exception | None = None
        self.note = ""  # how the upstream was reached, for Cache-Status (edge.upstream)
        self.started = time.time()  # purges applied later must not be joined to it
        self.readers = 0
        self.readers_total = 0  # every reader that ever attached
        self._changed = asyncio.Event()

    # -- writer side (the fill task) ---------------------------------------------

    def attach_writer(self, writer: BodyWriter) -> None:
        self.writer = writer
        self._fd = os.open(writer.path, os.O_RDONLY)
        # Closed when the last holder of this fill (a client still about to read)
        # lets go, not at finish: a waiter may wake after the body is complete.
        weakref.finalize(self, os.close, self._fd)

    def advance(self, count: int) -> None:
        self.written += count
        self._notify()

    def finish(self, error: Exception | None = None) -> None:
        self.finished = True
        self.failed = error
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- reader side ----------------------------------------------------------------

    def reader(self) -> FillReader:
        """A reader with its own descriptor, valid even after the body is committed
        (renamed) or the fill has finished."""
        assert self._fd is not None, "reader() before the body started"
        self.readers += 1
        self.readers_total += 1
        return FillReader(self, os.dup(self._fd))

    async def wait_beyond(self, offset: int) -> None:
        while self.written <= offset and not self.finished:
            await self._changed.wait()


class FillReader:
    """Follows a fill's body from any offset: data written so far at once, the rest
    as it arrives. Raises the fill's error if the upstream broke."""

    def __init__(self, fill: Fill, fd: int) -> None:
        self.fill = fill
        self.fd = fd

    async def read_range(
        self, start: int, end: int | None, chunk: int = 1 << 16
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) (end None: to the end of the body). May be called again
        for another range (the parts of a multipart/byteranges response): the reader
        stays open until its owner closes it."""
        offset = start
        while end is None or offset < end:
            await self.fill.wait_beyond(offset)
            if self.fill.failed is not None:
                raise self.fill.failed
            available = self.fill.written - offset
            if available <= 0:
                if self.fill.finished:
                    return
                continue
            want = min(available, chunk, (end - offset) if end is not None else chunk)
            data = os.pread(self.fd, want, offset)
            if not data:
                return
            offset += len(data)
            yield data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.fill.readers -= 1


class InFlight:
    """The table of fills in progress on this node, by primary cache key."""

    def __init__(self) -> None:
        self._fills: dict[str, Fill] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    def start(self, key: str) -> Fill:
        fill = Fill(key)
        self._fills[key] = fill
        return fill

    def done(self, fill: Fill) -> None:
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]

    def oldest(self) -> float | None:
        """When the longest-running fill started (None when there is none)."""
        return min((f.started for f in self._fills.values()), default=None)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
