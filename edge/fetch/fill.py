"""Collapsed fetches and read-while-writer.

A Fill is one upstream fetch of a cache key whose body is being written to the store.
Every client of that key, the one that caused the fetch included, reads the body from
the growing file at its own pace, so a crowd on a cold object makes one upstream
request and starts at once. The fetch runs as its own task: a client that goes away
does not break the download for the others.

This module owns the in-flight table, the one way to join or start a fill
(`InFlight.join_or_start`: whole objects, stale refreshes, slices and derived bodies all
come through it) and the reader side (`FillReader`); the pipeline decides what to fetch
and whether the result is stored.

Across the processes of one node the same holds through the node's coordination
(edge.multiproc.coordination; across workers, the cache directory): the process that starts a
fill of a key takes that key's lock and keeps it until the fill ends; it publishes what
the fill turned out to be as soon as the head is known. A process that finds the key
locked waits (polling, never blocking its loop): a body on its way is followed from the
growing file by a local stand-in fill, which that process's own requests join as they
would a fill of their own; a response that may not be shared, or a failure, is handed
to them as a stand-in that already ended so, as a local fill's would be; a stored
result (the lock released) is looked up again. One upstream request per object for the
whole node.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO, Any

from edge.multiproc.coordination import Coordination, Record, alive
from edge.store.disk import BodyReader, BodyWriter, Entry
from edge.upstream.pools import UpstreamError

log = logging.getLogger("edge.fetch.fill")

#: How often a process waiting on another's fill looks again, in seconds.
POLL = 0.005


@dataclass
class FillHead:
    """What a fill turned out to be, once the upstream answered (edge.fetch.machine).

    kind:
      "body"          a shared response whose body is arriving in `writer` (stored
                      at the end if `storable`)
      "not-modified"  a 304 refreshed the stored `entry`; serve it
      "sliced"        a big object kept as slices: its manifest is `entry`, and its
                      slices come as their own fills (edge.fetch.slices)
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
    level: int | None = None  # a derived encoding's compression level (edge.fetch.derive)


class Fill:
    """One upstream fetch in flight for one primary cache key."""

    def __init__(self, key: str, started: float) -> None:
        self.key = key
        self.head: asyncio.Future[FillHead] = asyncio.get_running_loop().create_future()
        self.writer: BodyWriter | None = None
        self._body: BodyReader | None = None
        self.written = 0
        self.finished = False
        self.failed: Exception | None = None
        self.note = ""  # how the upstream was reached, for Cache-Status (edge.upstream.pools)
        self.started = started  # purges applied later must not be joined to it
        self.readers = 0
        self.readers_total = 0  # every reader that ever attached
        self._changed: asyncio.Event | None = None  # made when a reader first waits
        # Across processes (edge.multiproc.coordination): this fill holds its key's lock, and
        # has said what it became.
        self.locked = False
        self.published = False
        self.ident = os.urandom(16).hex()

    # -- writer side (the fill task) ---------------------------------------------

    def attach_writer(self, writer: BodyWriter) -> None:
        self.writer = writer
        self._hold(writer.reader())

    def follow(self, fd: int) -> None:
        """Read another worker's body file (open at `fd`, owned from now on)."""
        self._hold(BodyReader(fd))

    def _hold(self, body: BodyReader) -> None:
        self._body = body
        if body.fileno() is not None:
            # Closed when the last holder of this fill (a client still about to read)
            # lets go, not at finish: a waiter may wake after the body is complete.
            weakref.finalize(self, body.close)

    def advance(self, count: int) -> None:
        self.written += count
        self._notify()

    def finish(self, error: Exception | None = None) -> None:
        self.finished = True
        self.failed = error
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- reader side ----------------------------------------------------------------

    def reader(self) -> FillReader:
        """A reader of its own, valid even after the body is committed (renamed) or
        the fill has finished."""
        assert self._body is not None, "reader() before the body started"
        self.readers += 1
        self.readers_total += 1
        return FillReader(self, self._body.dup())

    async def wait_beyond(self, offset: int) -> None:
        while self.written <= offset and not self.finished:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()


class FillReader:
    """Follows a fill's body from any offset: data written so far at once, the rest
    as it arrives. Raises the fill's error if the upstream broke.

    A reader is told of whole spans of the growing file (`spans`), so delivery can
    sendfile them, without a read and a write per chunk in this process; `read_range`
    reads them for whoever needs the bytes."""

    def __init__(self, fill: Fill, body: BodyReader) -> None:
        self.fill = fill
        self.body: BodyReader | None = body
        self._file: IO[bytes] | None = None

    def ready(self, start: int, end: int) -> bytes | None:
        """Bytes [start, end) at once, if the fill already has them all (a small body
        arrives whole before its first reader looks); None: read them with read_range."""
        fill = self.fill
        if self.body is None or fill.failed is not None or fill.written < end:
            return None
        data = self.body.read(start, end - start)
        return data if len(data) == end - start else None

    def read(self, offset: int, count: int) -> bytes:
        """Up to `count` bytes at `offset`, as far as written (see `spans`)."""
        assert self.body is not None, "read after close"
        return self.body.read(offset, count)

    @property
    def file(self) -> IO[bytes] | None:
        """The body's file as a file object for sendfile (the descriptor stays the
        reader's: closed by `close`); None for a body kept in memory, which is `read`."""
        if self._file is None:
            fd = self.body.fileno() if self.body is not None else None
            if fd is None:
                return None
            self._file = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
        return self._file

    async def spans(self, start: int, end: int | None) -> AsyncIterator[tuple[int, int]]:
        """(offset, count) spans of the file covering [start, end) (end None: to the
        end of the body), each as much as is written when it is asked for: one wait
        and one span per arrival, however small the upstream's reads."""
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
            count = available if end is None else min(available, end - offset)
            yield offset, count
            offset += count

    async def read_range(
        self, start: int, end: int | None, chunk: int = 1 << 16
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) (end None: to the end of the body), in pieces of at most
        `chunk`. May be called again for another range (the parts of a
        multipart/byteranges response): the reader stays open until its owner closes it."""
        async for offset, count in self.spans(start, end):
            stop = offset + count
            while offset < stop:
                data = self.read(offset, min(chunk, stop - offset))
                if not data:
                    return
                offset += len(data)
                yield data

    def close(self) -> None:
        if self.body is not None:
            if self._file is not None:
                self._file.close()  # closefd=False: the descriptor is closed below
            self.body.close()
            self.body = None
            self.fill.readers -= 1


@dataclass
class Claim:
    """What `InFlight.join_or_start` found for a key:

    "joined"   `fill` brings it: a fill of this process, or a stand-in for another
               process's (following its body; or already ended as "private" or
               "error", so every joiner acts on it as on a local fill's outcome)
    "started"  `fill` was started for the caller, who runs it
    "again"    another process's fill of the key ended: look the store up again
    "busy"     another process brings it, and the caller would not wait (wait=None)
    """

    kind: str
    fill: Fill | None = None


class InFlight:
    """The table of fills in progress in this process, by fill key, and the one way
    in: `join_or_start`. Through `coordination` (edge.multiproc.coordination) the node's other
    processes see each fill's lock and record (see the module's docstring)."""

    def __init__(self, coordination: Coordination, clock: Callable[[], float] = time.time) -> None:
        self._fills: dict[str, Fill] = {}
        # The table's fills by start (`oldest`), and what was last said of the oldest.
        self._by_start: list[tuple[float, int, Fill]] = []
        self._seq = itertools.count()
        self._published_oldest: float | None = None
        # The wall clock fills are dated by (a ban compares a fill's start with its own
        # time): the node's purger's, injected so tests set it.
        self.clock = clock
        self.tasks: set[asyncio.Task[None]] = set()
        self.coordination = coordination

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    # -- join or start --------------------------------------------------------------

    async def join_or_start(
        self,
        key: str,
        wait: float | None = None,
        *,
        usable: Callable[[Fill], bool] | None = None,
        unchanged: Callable[[], bool] | None = None,
        local: bool = False,
    ) -> Claim:
        """Join the key's fill, wherever in the node it runs, or start one (see Claim).

        `wait`: how long to wait, when another process holds the key, for its record
        (polling, never blocking the loop) before starting a fill alone. None: the
        caller will not wait (a stale refresh, a stream's next slice): it hears "busy"
        instead, and the call never suspends, so what the caller does around it is one
        turn of the loop. `local`: only this process's table counts (a derived body is
        made from this process's source: each process makes its own).

        A fill that is not `usable` (it asked upstream before a purge) is not joined:
        a fill is started alone beside it. `unchanged()`, asked once the key's lock is
        taken, says whether the store still lacks what the caller looked up: another
        process may have stored it and let go of the lock in between ("again")."""
        if local:
            fill = self._fills.get(key)
            if fill is not None and (usable is None or usable(fill)):
                return Claim("joined", fill)
            return Claim("started", self.start(key))
        since = self.clock()
        if wait is None:
            claim = self._step(key, usable, unchanged, waited=False, since=since)
            return claim or Claim("busy")
        deadline = time.monotonic() + wait
        waited = False
        while True:
            claim = self._step(key, usable, unchanged, waited=waited, since=since)
            if claim is not None:
                return claim
            if time.monotonic() >= deadline:
                return Claim("started", self.start(key))  # alone: no lock, no record
            waited = True
            await asyncio.sleep(POLL)

    def _step(
        self,
        key: str,
        usable: Callable[[Fill], bool] | None,
        unchanged: Callable[[], bool] | None,
        *,
        waited: bool,
        since: float,
    ) -> Claim | None:
        """One look: a claim, or None while another process's fill says nothing yet."""
        fill = self._fills.get(key)
        if fill is None and self.coordination.try_lock(key):
            if not waited and (unchanged is None or unchanged()):
                return Claim("started", self.start(key, locked=True))
            self.coordination.unlock(key)
            # Another process's fill ended while this waited. What it could not store
            # (a failure, a response that may not be shared) is this caller's outcome
            # too, as a local fill's is for those who joined it; the rest is stored.
            record = self.coordination.read(key) if waited else None
            fill = None if record is None else self._from_record(key, record, since)
            if fill is None:
                return Claim("again")
        elif fill is None:
            record = self.coordination.read(key)
            fill = None if record is None else self._from_record(key, record, since)
            if fill is None:
                return None
        if usable is None or usable(fill):
            return Claim("joined", fill)
        # Its key's lock is the older fill's: this one goes alone.
        return Claim("started", self.start(key))

    def start(self, key: str, *, locked: bool = False) -> Fill:
        """A fill of `key` in the table; `locked`: it holds the key's lock (taken by
        `_step`) until `done`, and publishes its head."""
        fill = Fill(key, self.clock())
        self._track(fill)
        if locked:
            fill.locked = True
            self.coordination.forget(key)  # an older fill's record says nothing of this one
            fill.head.add_done_callback(lambda _: self._publish(fill))
        return fill

    def done(self, fill: Fill) -> None:
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]
        if fill.locked:
            self._publish(fill)
            if fill.published:
                self._publish_end(fill)
                self.coordination.forget_later(fill.key, fill.ident)
            fill.locked = False
            self.coordination.unlock(fill.key)
        self._oldest_changed()

    def _track(self, fill: Fill) -> None:
        """`fill` is the key's fill in the table from now on."""
        self._fills[fill.key] = fill
        heapq.heappush(self._by_start, (fill.started, next(self._seq), fill))
        self._oldest_changed()

    def oldest(self) -> float | None:
        """When the longest-running fill in the table started (None when there is
        none). A heap, pruned of fills that left the table as they reach its top: a
        miss costs O(log n), not a pass over every fill in flight."""
        heap = self._by_start
        while heap and self._fills.get(heap[0][2].key) is not heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _oldest_changed(self) -> None:
        oldest = self.oldest()
        if oldest != self._published_oldest:
            self._published_oldest = oldest
            self.coordination.set_oldest(oldest)

    # -- records for the other processes --------------------------------------------

    def _publish(self, fill: Fill) -> None:
        """Say what a locked fill became, once its head is known."""
        if fill.published or not fill.locked or not fill.head.done() or fill.head.cancelled():
            return
        head = fill.head.result()
        if head.kind == "body" and fill.writer is None:
            return  # nothing another process could follow
        fill.published = True
        self.coordination.publish(fill.key, _record(fill, head))

    def _publish_end(self, fill: Fill) -> None:
        record = self.coordination.read(fill.key)
        if record is None or record.get("id") != fill.ident or record.get("state") != "running":
            return
        record.update(state="failed" if fill.failed else "done", size=fill.written)
        self.coordination.publish(fill.key, record)

    def _from_record(self, key: str, record: Record, since: float) -> Fill | None:
        """A stand-in for another process's fill, from its record; None while the
        record says nothing (yet) of a fill this caller could use."""
        kind = record.get("kind")
        if kind == "body" and record.get("state") == "running":
            if not alive(record.get("pid")):
                return None  # died mid-body: its lock goes with it
            return self._follow(key, record)
        if not isinstance(record.get("at"), float) or record["at"] < since:
            return None  # an earlier fill's (the lock holder has not published yet)
        if kind == "private":
            head = FillHead("private", status=int(record.get("status", 0)))
        elif kind == "error":
            error = UpstreamError(str(record.get("message", "upstream failed")))
            error.status = int(record.get("status", 502))
            error.detail = str(record.get("detail", "upstream-error"))
            head = FillHead("error", error=error)
        else:
            return None  # stored or refreshed: the lock is about to go
        ended = Fill(key, self.clock())
        ended.started = float(record.get("started", ended.started))
        ended.head.set_result(head)
        ended.finish(head.error)
        return ended

    def _follow(self, key: str, record: Record) -> Fill | None:
        """A stand-in for another process's fill, following its body file (None for
        a body kept in memory: it is read from the store once stored)."""
        path = record.get("path")
        if not path:
            return None
        try:
            fd = os.open(str(path), os.O_RDONLY)
        except OSError:
            return None  # stored (renamed) or dropped already: the lock will say
        try:
            head = FillHead(
                "body",
                status=int(record["status"]),
                headers=[(str(k), str(v)) for k, v in record["headers"]],
                vary=tuple((str(n), v) for n, v in record["vary"]),
                length=record["length"],
                storable=bool(record["storable"]),
                variant=str(record["variant"]),
            )
        except (KeyError, TypeError, ValueError):
            os.close(fd)
            return None
        fill = Fill(key, self.clock())
        fill.follow(fd)
        fill.started = float(record.get("started", fill.started))
        fill.note = str(record.get("note", ""))
        fill.head.set_result(head)
        self._track(fill)
        self.spawn(self._mirror(fill, fd, record))
        return fill

    async def _mirror(self, fill: Fill, fd: int, record: Record) -> None:
        """Move a stand-in fill along as the other process's file grows (open at `fd`,
        which the fill owns), and end it as that fill ended."""
        length = record.get("length")
        error: Exception | None = None
        try:
            while True:
                size = os.fstat(fd).st_size
                if size > fill.written:
                    fill.advance(size - fill.written)
                else:
                    ended = self._ended(fill, record, length)
                    if ended is not None:
                        error = ended or None
                        break
                await asyncio.sleep(POLL)
        except asyncio.CancelledError:
            error = UpstreamError("node stopping")
            raise
        finally:
            fill.finish(error)
            self.done(fill)

    def _ended(self, fill: Fill, followed: Record, length: int | None) -> Exception | bool | None:
        """None while the followed fill runs; False when it ended whole; the error
        when it ended short."""
        record = self.coordination.read(fill.key)
        whole = length is not None and fill.written == length
        if record is None or record.get("id") != followed["id"]:
            # Its record was replaced by a later fill's: judge by the bytes.
            return False if whole else UpstreamError("another worker's fill ended short")
        state = record.get("state")
        if state == "done":
            return False if fill.written >= int(record.get("size", 0)) else None
        if state == "failed":
            return UpstreamError("another worker's fill broke")
        if not alive(record.get("pid")):
            return False if whole else UpstreamError("the worker bringing the body died")
        return None

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
        for fill in list(self._fills.values()):
            if fill.locked:
                self.done(fill)


def _record(fill: Fill, head: FillHead) -> Record:
    """What a fill became, for the processes that find its key locked."""
    record: Record = {
        "id": fill.ident,
        "pid": os.getpid(),
        "started": fill.started,
        "at": time.time(),
        "kind": head.kind,
        "state": "final",
    }
    if head.kind == "body":
        assert fill.writer is not None
        record.update(
            state="running",
            # A body kept in memory is not followed from another process: its /proc
            # path names a descriptor number, which the writer reuses for another
            # body once this one is stored, so a follower could open the wrong bytes.
            # Small as it is, the others wait for its end and read it from the store.
            path=None if fill.writer.in_memory else str(fill.writer.path),
            status=head.status,
            headers=head.headers,
            vary=head.vary,
            length=head.length,
            storable=head.storable,
            variant=head.variant,
            note=fill.note,
        )
    elif head.kind == "private":
        record.update(status=head.status)
    elif head.kind == "error":
        error = head.error or UpstreamError("upstream failed")
        record.update(
            status=getattr(error, "status", 502),
            detail=getattr(error, "detail", "upstream-error"),
            message=str(error),
        )
    return record
