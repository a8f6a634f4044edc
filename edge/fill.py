"""Collapsed fetches and read-while-writer.

A Fill is one upstream fetch of a cache key whose body is being written to the store.
Every client of that key, the one that caused the fetch included, reads the body from
the growing file at its own pace, so a crowd on a cold object makes one upstream
request and starts at once. The fetch runs as its own task: a client that goes away
does not break the download for the others.

This module owns the in-flight table and the reader side (`FillReader`); the pipeline
decides what to fetch and whether the result is stored.

Across the workers of one node (edge.workers) the same holds through the cache
directory (`CrossFills`): the worker that starts a fill of a key takes that key's lock
(a byte of `fills.lock`, an fcntl record lock, which the kernel drops if the worker
dies) and keeps it until the fill ends; it publishes what the fill turned out to be in
`fills/` as soon as the head is known. A worker that finds the key locked waits
(polling, never blocking its loop): a body on its way is followed from the growing
file by a local stand-in fill, which that worker's own requests join as they would a
fill of their own; a response that may not be shared sends them upstream at once; a
stored result (the lock released) is looked up again. One upstream request per object
for the whole node.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.store import BodyWriter, Entry
from edge.upstream import UpstreamError

log = logging.getLogger("edge.fill")

#: How often a worker waiting on another's fill looks again, in seconds.
POLL = 0.005
#: How long a finished fill's record stays for the workers that followed it.
RECORD_LINGER = 10.0


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
    level: int | None = None  # a derived encoding's compression level (edge.derive)


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
        self.latency: float | None = None  # upstream request to response head, seconds
        self.started = time.time()  # purges applied later must not be joined to it
        self.readers = 0
        self.readers_total = 0  # every reader that ever attached
        self._changed = asyncio.Event()
        # Across workers (CrossFills): this fill holds its key's lock, and has said
        # what it became; or it stands in for another worker's fill.
        self.locked = False
        self.published = False
        self.ident = uuid.uuid4().hex

    # -- writer side (the fill task) ---------------------------------------------

    def attach_writer(self, writer: BodyWriter) -> None:
        self.writer = writer
        self._fd = os.open(writer.path, os.O_RDONLY)
        # Closed when the last holder of this fill (a client still about to read)
        # lets go, not at finish: a waiter may wake after the body is complete.
        weakref.finalize(self, os.close, self._fd)

    def follow(self, fd: int) -> None:
        """Read another worker's body file (open at `fd`, owned from now on)."""
        self._fd = fd
        weakref.finalize(self, os.close, fd)

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


class CrossFills:
    """Fills across the workers of one node: a lock and a record per cache key, in
    the cache directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.records = self.directory / "fills"
        self.records.mkdir(exist_ok=True)
        # One descriptor for the process's life: closing any descriptor of the file
        # would drop every record lock this process holds on it (POSIX).
        self._fd = os.open(self.directory / "fills.lock", os.O_RDWR | os.O_CREAT, 0o600)
        # Record locks are per process: a byte this process holds is counted here.
        self._held: dict[int, int] = {}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def try_lock(self, key: str) -> bool:
        """Take the key's lock if no process holds it; False if one does (this one
        included: its fill is in the in-flight table)."""
        offset = int(self._name(key)[:12], 16)  # 48 bits: keys do not share a byte
        if offset in self._held:
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            return False
        self._held[offset] = 1
        return True

    def unlock(self, key: str) -> None:
        offset = int(self._name(key)[:12], 16)
        if self._held.pop(offset, None) is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    def read(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.records / self._name(key)).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, key: str, record: dict[str, Any]) -> None:
        path = self.records / self._name(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def forget(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.records / self._name(key)).unlink()

    def want(self, key: str, *, start: bool = False, stop: bool = False) -> None:
        """Say that this worker wants `key` (edge.slices: readers of a segmented
        object in other workers keep its stream going). The worker bringing it
        creates the mark (`start`) and removes it (`stop`); the others only touch it."""
        path = self.records / f"{self._name(key)}.wanted"
        with contextlib.suppress(OSError):
            if stop:
                path.unlink()
            elif start:
                path.touch()
                os.utime(path, (0, 0))  # wanted by nobody yet
            else:
                os.utime(path)

    def wanted_since(self, key: str, since: float) -> bool:
        try:
            return (self.records / f"{self._name(key)}.wanted").stat().st_mtime >= since
        except OSError:
            return False

    def forget_later(self, key: str, ident: str) -> None:
        """Remove a finished fill's record once its followers are done with it."""
        with contextlib.suppress(RuntimeError):  # no loop: the next start empties fills/
            asyncio.get_running_loop().call_later(RECORD_LINGER, self._forget_if, key, ident)

    def _forget_if(self, key: str, ident: str) -> None:
        record = self.read(key)
        if record is None or record.get("id") != ident:
            return  # a later fill's
        if self.try_lock(key):  # no fill of the key running anywhere: nobody writes it
            try:
                self.forget(key)
            finally:
                self.unlock(key)


@dataclass
class Claim:
    """What a request that found no fill of its key in this worker should do:
    "own" (it holds the key's lock: start the fill), "join" (`fill`: this worker's, or
    a stand-in following another worker's body), "again" (another worker's fill ended:
    look the store up again), "pass" (another worker's response may not be shared),
    "error" (another worker's fill failed: `error`), "alone" (waited too long: fetch
    without the lock)."""

    kind: str
    fill: Fill | None = None
    error: Exception | None = None


class InFlight:
    """The table of fills in progress on this node, by primary cache key; with
    `cross`, shared with the node's other workers (see the module's docstring)."""

    def __init__(
        self,
        cross: CrossFills | None = None,
        on_oldest: Callable[[float | None], None] | None = None,
    ) -> None:
        self._fills: dict[str, Fill] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.cross = cross
        # Told when the oldest fill in flight changes (edge.shared, for edge.purge).
        self._on_oldest = on_oldest

    def get(self, key: str) -> Fill | None:
        return self._fills.get(key)

    def start(self, key: str, *, locked: bool = False) -> Fill:
        """A fill of `key`; `locked`: it holds the key's cross-worker lock (from
        `claim` or `try_own`) until `done`, and publishes its head."""
        fill = Fill(key)
        self._fills[key] = fill
        if locked:
            assert self.cross is not None
            fill.locked = True
            self.cross.forget(key)  # an older fill's record says nothing of this one
            fill.head.add_done_callback(lambda _: self._publish(fill))
        self._oldest_changed()
        return fill

    def try_own(self, key: str) -> bool:
        """Whether a fill of `key` may start now without waiting: alone, or the
        key's lock taken (then start it with `locked=True`)."""
        return self.cross is None or self.cross.try_lock(key)

    def done(self, fill: Fill) -> None:
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]
        if fill.locked:
            assert self.cross is not None
            self._publish(fill)
            if fill.published:
                self._publish_end(fill)
                self.cross.forget_later(fill.key, fill.ident)
            fill.locked = False
            self.cross.unlock(fill.key)
        self._oldest_changed()

    def oldest(self) -> float | None:
        """When the longest-running fill started (None when there is none)."""
        return min((f.started for f in self._fills.values()), default=None)

    def _oldest_changed(self) -> None:
        if self._on_oldest is not None:
            self._on_oldest(self.oldest())

    # -- across workers -----------------------------------------------------------

    def _publish(self, fill: Fill) -> None:
        """Say what a locked fill became, once its head is known."""
        if fill.published or not fill.locked or not fill.head.done() or fill.head.cancelled():
            return
        assert self.cross is not None
        head = fill.head.result()
        record: dict[str, Any] = {
            "id": fill.ident,
            "pid": os.getpid(),
            "started": fill.started,
            "at": time.time(),
            "kind": head.kind,
            "state": "final",
        }
        if head.kind == "body":
            if fill.writer is None:
                return  # nothing another worker could follow
            record.update(
                state="running",
                path=os.path.relpath(fill.writer.path, self.cross.directory),
                status=head.status,
                headers=head.headers,
                vary=head.vary,
                length=head.length,
                storable=head.storable,
                variant=head.variant,
                note=fill.note,
            )
        elif head.kind == "error":
            error = head.error or UpstreamError("upstream failed")
            record.update(
                status=getattr(error, "status", 502),
                detail=getattr(error, "detail", "upstream-error"),
                message=str(error),
            )
        fill.published = True
        try:
            self.cross.write(fill.key, record)
        except OSError as exc:
            log.warning("could not publish the fill of %s to other workers: %s", fill.key, exc)

    def _publish_end(self, fill: Fill) -> None:
        assert self.cross is not None
        record = self.cross.read(fill.key)
        if record is None or record.get("id") != fill.ident or record.get("state") != "running":
            return
        record.update(state="failed" if fill.failed else "done", size=fill.written)
        with contextlib.suppress(OSError):
            self.cross.write(fill.key, record)

    async def claim(
        self, key: str, timeout: float, unchanged: Callable[[], bool] | None = None
    ) -> Claim:
        """For a request that found no fill of `key` here: take the key's lock, or
        wait for the worker that holds it (see Claim). `unchanged()`, asked once the
        lock is taken, says whether the store still lacks what the caller looked up:
        another worker may have stored it and let go of the lock in between."""
        cross = self.cross
        assert cross is not None
        since = time.time()
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            local = self._fills.get(key)
            if local is not None:
                return Claim("join", local)
            if cross.try_lock(key):
                if not waited and (unchanged is None or unchanged()):
                    return Claim("own")
                # The other worker's fill ended (stored, or not): the store says.
                cross.unlock(key)
                return Claim("again")
            waited = True
            record = cross.read(key)
            if record is not None:
                found = self._from_record(key, record, since)
                if found is not None:
                    return found
            if time.monotonic() >= deadline:
                return Claim("alone")
            await asyncio.sleep(POLL)

    def _from_record(self, key: str, record: dict[str, Any], since: float) -> Claim | None:
        kind = record.get("kind")
        if kind == "body" and record.get("state") == "running":
            if not alive(record.get("pid")):
                return None  # died mid-body: its lock goes with it
            fill = self._follow(key, record)
            return None if fill is None else Claim("join", fill)
        if not isinstance(record.get("at"), float) or record["at"] < since:
            return None  # an earlier fill's (the lock holder has not published yet)
        if kind == "private":
            return Claim("pass")
        if kind == "error":
            error = UpstreamError(str(record.get("message", "upstream failed")))
            error.status = int(record.get("status", 502))
            error.detail = str(record.get("detail", "upstream-error"))
            return Claim("error", error=error)
        return None  # stored or refreshed: the lock is about to go

    def _follow(self, key: str, record: dict[str, Any]) -> Fill | None:
        """A stand-in for another worker's fill, following its body file."""
        assert self.cross is not None
        try:
            fd = os.open(self.cross.directory / str(record["path"]), os.O_RDONLY)
        except (OSError, KeyError):
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
        fill = Fill(key)
        fill.follow(fd)
        fill.started = float(record.get("started", fill.started))
        fill.note = str(record.get("note", ""))
        fill.head.set_result(head)
        self._fills[key] = fill
        self._oldest_changed()
        self.spawn(self._mirror(fill, record))
        return fill

    async def _mirror(self, fill: Fill, record: dict[str, Any]) -> None:
        """Move a stand-in fill along as the other worker's file grows, and end it as
        that fill ended."""
        assert fill._fd is not None
        fd, length = fill._fd, record.get("length")
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

    def _ended(
        self, fill: Fill, followed: dict[str, Any], length: int | None
    ) -> Exception | bool | None:
        """None while the followed fill runs; False when it ended whole; the error
        when it ended short."""
        assert self.cross is not None
        record = self.cross.read(fill.key)
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


def alive(pid: Any) -> bool:
    """Whether `pid` names a live process (a fill's worker, from its record)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
