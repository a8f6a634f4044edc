"""Segmented caching of big objects, and the body sources delivery reads from.

Above a size threshold an object is stored as fixed-size slices under one manifest
entry (its headers, size and validators). Each slice is stored, evicted and fetched on
its own, so a seek into a 5 GB file costs one slice from upstream, and revalidating
the manifest never re-fetches the file.

Slices arrive two ways:
  - a *stream*: one upstream response carrying the whole object (a client read it
    from the start) is cut into slices as it arrives, so a crowd reading a cold object
    front to back still makes one upstream request;
  - a *range fill*: one upstream range request for one slice, validated against the
    manifest (If-Match), when a reader needs a slice nobody is bringing, or will need
    it next (READ_AHEAD, within the range it asked for). It is a walk of the fetch
    machine (edge.fetch.machine: bereq, headers, match, slice_body) on a FetchRequest
    naming the slice (`SliceOf`, whose rules are here).
A stream stops at the first slice that is stored or another fill brings (a reader
ahead of it, such as one of a parallel downloader's ranges, fetched it by range): it
never reads bytes it would drop, so the origin sends each byte of the object once.
Either way a slice in progress is an ordinary Fill in the in-flight table, so readers
follow it byte by byte: its bytes go from the upstream's socket into the slice's file
in the kernel where the connection allows (splice), and readers send spans of that
file (sendfile), as they send a stored slice.

A slice fill is joined or started as a whole-object fill is (edge.fetch.fill.InFlight), so
across the processes of one node (edge.multiproc.coordination) a reader in another process
follows it rather than asking upstream again; a stream says which slice it has reached
(a record beside the fills'), so that a reader elsewhere just ahead of it waits for it
as a reader here would, and readers say they want the object, so that the stream
carries on for them.

This module owns slices and body sources; the fetch machine decides when an object is
segmented (`sliceable`) and builds the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO, Protocol

from multidict import CIMultiDict

from edge.config import NodeConfig
from edge.fetch import machine
from edge.fetch.fill import POLL, Fill, FillHead, FillReader, InFlight
from edge.multiproc.coordination import alive
from edge.observe.metrics import NodeMetrics
from edge.rfc import policy
from edge.rfc.ranges import combinable, parse_content_range
from edge.store.disk import Entry, Store
from edge.upstream.pools import UpstreamError, UpstreamResponse, Upstreams

log = logging.getLogger("edge.fetch.slices")

#: How many slices ahead of the stream a reader waits for it rather than fetching the
#: slice by range (a reader just behind a stream should not race it to the origin).
STREAM_LOOKAHEAD = 2
#: How many slices past the one it reads a reader has fetched, within the range it
#: asked for, when nobody brings them: the next slice's request and head overlap the
#: delivery of this one, so a reader moving from slice to slice (one of a parallel
#: downloader's ranges, a client resuming) does not wait a round trip at each.
READ_AHEAD = 1
#: How long a stream waits for its first reader before deciding nobody reads along.
_FIRST_READER_WAIT = 5.0


def slice_fill_key(entry: Entry, index: int) -> str:
    return f"{entry.key}#{entry.variant}#{index}"


def stream_key(entry: Entry) -> str:
    """Where a stream of the entry says how far it got (across workers)."""
    return f"{entry.key}#{entry.variant}#stream"


@dataclass(frozen=True)
class SliceOf:
    """One slice of a segmented entry, as a range fill asks for it and checks the answer
    (the fetch machine's slice walk carries it in its FetchRequest)."""

    entry: Entry  # the manifest: its key, representation's validators and complete size
    index: int

    @property
    def span(self) -> tuple[int, int]:
        """[start, end) of the slice in the object."""
        return self.entry.slice_span(self.index)

    @property
    def target(self) -> str:
        """The path and query the manifest's key names, as the fill asks upstream."""
        rest = self.entry.key.split("://", 1)[1]
        return rest[rest.find("/") :] if "/" in rest else "/"

    def fields(self) -> list[tuple[str, str]]:
        """The slice's Range, on the condition that the upstream's representation is still
        the manifest's: If-Match with its strong ETag, else If-Unmodified-Since (RFC 9110
        Sections 13.1.1 and 13.1.4), so a changed object answers 412, not other bytes."""
        start, end = self.span
        fields = [("Range", f"bytes={start}-{end - 1}")]
        stored = CIMultiDict(self.entry.headers)
        etag = stored.get("ETag")
        if etag and not etag.startswith("W/"):
            fields.append(("If-Match", etag))
        elif "Last-Modified" in stored:
            fields.append(("If-Unmodified-Since", stored["Last-Modified"]))
        return fields

    def answered_by(self, status: int, headers: policy.Headers) -> bool:
        """Whether an answer is this slice of the manifest's representation: a 206 for
        exactly its span of the same complete length, under the same validator (its
        strong ETag, else its Last-Modified date: RFC 9111 Section 3.4). Anything else
        (a 412, RFC 9110 Section 13.1.4; an origin that ignored If-Match) means the
        stored slices can no longer be put together."""
        start, end = self.span
        span = parse_content_range(headers.get("Content-Range"))
        return (
            status == 206
            and span == (start, end - 1, self.entry.size)
            and combinable(CIMultiDict(self.entry.headers), self.entry.size, headers)
        )


@dataclass(frozen=True)
class SliceNode:
    """What a range fill's walk of the fetch machine asks of its node: its config (its
    name) and metrics, and the Slicer's store, upstream and fill table."""

    config: NodeConfig
    metrics: NodeMetrics
    store: Store
    upstream: Upstreams
    inflight: InFlight
    slicer: Slicer


class _Stream:
    """One upstream response being cut into the slices of an entry."""

    def __init__(self) -> None:
        self.index = 0
        self.alive = True
        self.waiters = 0  # readers waiting for the stream to reach their slice
        # Set when a reader first delivers the entry: the client whose miss started the
        # stream may still be writing its head when the first slice is already whole.
        self.reader_came = asyncio.Event()
        self._moved = asyncio.Event()

    def advance(self, index: int) -> None:
        self.index = index
        self._moved.set()
        self._moved = asyncio.Event()

    def end(self) -> None:
        self.alive = False
        self._moved.set()

    async def moved(self) -> None:
        await self._moved.wait()


class Slicer:
    """Slices of segmented entries on one node: who brings each, and storing them."""

    def __init__(
        self,
        store: Store,
        inflight: InFlight,
        upstream: Upstreams,
        claim_timeout: float = 35.0,
        *,
        config: NodeConfig | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.store = store
        self.inflight = inflight
        # How long a reader waits for another worker's slice fill before asking alone.
        self.claim_timeout = claim_timeout
        # Range fills are walks of the fetch machine on this: the node's config and
        # metrics (a Slicer on its own, as a test builds one, has defaults of its own).
        config = config if config is not None else NodeConfig()
        metrics = metrics if metrics is not None else NodeMetrics(config.name, store.stats)
        self.node = SliceNode(config, metrics, store, upstream, inflight, self)
        self._streams: dict[tuple[str, str], _Stream] = {}
        # Readers currently delivering each segmented entry (SlicedSource.pieces).
        self.active: dict[tuple[str, str], int] = {}

    # -- streams --------------------------------------------------------------------

    async def start_stream(
        self, entry: Entry, response: UpstreamResponse, first: int, *, whole: bool = False
    ) -> Fill | None:
        """Cut `response` (whose body starts at slice `first`) into slices: to the
        object's end when it is the whole object (a 200, or a 206 holding every byte:
        `whole`), else the one slice a probe asked for. Returns the fill of the first
        slice, already registered, so readers can follow it at once (None when that
        slice is stored, or another fill brings it)."""
        stream = _Stream()
        stream.index = first
        self._streams[(entry.key, entry.variant)] = stream
        fill = await self._open_slice_fill(entry, first)
        last = entry.slice_count - 1 if whole or response.status == 200 else first
        self.inflight.spawn(self._run_stream(entry, response, first, last, fill, stream))
        return fill

    async def _run_stream(
        self,
        entry: Entry,
        response: UpstreamResponse,
        first: int,
        last: int,
        fill: Fill | None,
        stream: _Stream,
    ) -> None:
        previous: Fill | None = None
        coordination = self.inflight.coordination
        began = time.time()
        coordination.want(stream_key(entry), start=True)
        try:
            for index in range(first, last + 1):
                if index > first:
                    # Before advancing: while the stream waits here, a reader of the
                    # next slice sees it just behind and waits for it, rather than
                    # finding it at that slice with no fill yet and fetching it by range.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_FIRST_READER_WAIT):
                            await stream.reader_came.wait()
                # From here to the slice's fill being registered, nothing suspends.
                stream.advance(index)
                if index > first:
                    # Carry on only while someone reads along (or waits for a slice
                    # ahead): a client that went away does not pull the whole object.
                    read_along = previous is not None and previous.readers_total > 0
                    reading = self.active.get((entry.key, entry.variant), 0) > 0
                    elsewhere = coordination.wanted_since(stream_key(entry), began - 1.0)
                    if not (read_along or reading or stream.waiters > 0 or elsewhere):
                        break
                    fill = await self._open_slice_fill(entry, index)
                    if fill is None:
                        # Stored, or a range fill (a reader ahead, here or in another
                        # process) brings it: the stream stops rather than read bytes
                        # it would drop. What lies beyond is fetched by the readers
                        # that need it, so the origin sends each byte once.
                        break
                # Only now that this slice's fill holds its lock: a reader elsewhere
                # that sees the stream here finds the slice taken.
                began = time.time()
                coordination.publish(
                    stream_key(entry), {"index": index, "pid": os.getpid(), "at": began}
                )
                start, end = entry.slice_span(index)
                current = fill
                await self._pump(response, end - start, fill, entry, index)
                previous = current if current is not None else previous
                fill = None
        except (UpstreamError, OSError) as exc:
            if fill is not None:
                self._fail(fill, exc)
            log.warning("stream of %s broke: %s", entry.key, exc)
        finally:
            stream.end()
            self._streams.pop((entry.key, entry.variant), None)
            coordination.forget(stream_key(entry))
            coordination.want(stream_key(entry), stop=True)
            response.close()

    async def _pump(
        self,
        response: UpstreamResponse,
        want: int,
        fill: Fill | None,
        entry: Entry,
        index: int,
    ) -> None:
        """Move the next `want` bytes of `response` into `fill`'s file (or drop them
        when another fill brings this slice), never reading beyond them: the next
        slice's bytes stay with the response. They go from the socket to the file in
        the kernel where the connection allows (UpstreamResponse.into); readers are
        told of each step and send from the file."""
        writer = fill.writer if fill is not None else None
        fd = writer.fileno() if writer is not None else None
        got = 0
        while got < want:
            n = await response.into(fd, want - got)
            if not n:
                raise UpstreamError(f"upstream ended at {got} of {want} bytes of a slice")
            got += n
            if writer is not None and fill is not None:
                writer.wrote(n)
                fill.advance(n)
        if fill is not None and writer is not None:
            self.store.commit_slice(entry, index, writer)
            fill.finish()
            self.inflight.done(fill)

    def reading(self, ident: tuple[str, str], change: int) -> None:
        """A reader starts (+1) or stops (-1) delivering a segmented entry."""
        count = self.active.get(ident, 0) + change
        if count > 0:
            self.active[ident] = count
        else:
            self.active.pop(ident, None)
        stream = self._streams.get(ident)
        if change > 0 and stream is not None:
            stream.reader_came.set()

    # -- slice fills ------------------------------------------------------------------

    async def _open_slice_fill(self, entry: Entry, index: int) -> Fill | None:
        """A fill for the stream to write one slice into, unless the slice is stored
        or a fill (here or in another process) brings it. Never suspends."""
        if self._have(entry, index):
            return None
        claim = await self.inflight.join_or_start(slice_fill_key(entry, index))
        if claim.kind != "started" or claim.fill is None:
            return None  # a fill here or in another process brings it
        self.begin(claim.fill, SliceOf(entry, index))
        return claim.fill

    def begin(self, fill: Fill, of: SliceOf) -> None:
        """The slice's body starts: a file its readers follow, and the fill's head."""
        fill.attach_writer(self.store.begin())
        start, end = of.span
        fill.head.set_result(FillHead("body", status=206, length=end - start, storable=True))

    async def bring(self, fill: Fill, of: SliceOf, response: UpstreamResponse) -> None:
        """A range fill's answer (edge.fetch.machine, st_slice_body) into `fill`, stored
        as the slice once whole; raises as the stream does when it breaks."""
        start, end = of.span
        await self._pump(response, end - start, fill, of.entry, of.index)

    def _have(self, entry: Entry, index: int) -> bool:
        handle = self.store.open_slice(entry, index)
        if handle is None:
            return False
        handle.close()
        return True

    def _fail(self, fill: Fill, exc: Exception) -> None:
        if fill.writer is not None:
            fill.writer.discard()
        fill.finish(exc)
        self.inflight.done(fill)

    def coming(self, entry: Entry, index: int) -> bool | None:
        """Whether a slice must come from upstream: None when it is stored, True when
        a fetch already brings it (a fill in flight, or the stream about to reach
        it), False when a reader needs a fetch of its own."""
        if self._have(entry, index):
            return None
        if self.inflight.get(slice_fill_key(entry, index)) is not None:
            return True
        stream = self._streams.get((entry.key, entry.variant))
        return (
            stream is not None
            and stream.alive
            and stream.index <= index <= stream.index + STREAM_LOOKAHEAD
        )

    async def slice(
        self,
        entry: Entry,
        index: int,
        headers: list[tuple[str, str]],
        started: list[Fill] | None = None,
    ) -> IO[bytes] | Fill:
        """The stored slice, or the fill bringing it (started here if nobody is: then
        it is added to `started`)."""
        key = slice_fill_key(entry, index)
        coordination = self.inflight.coordination
        if (entry.key, entry.variant) not in self._streams:
            # A stream in another process: carry on for this reader. (One of this
            # process's counts by reading along: touching the mark here would keep it
            # going for a second after its last reader went.)
            coordination.want(stream_key(entry))
        while True:
            handle = self.store.open_slice(entry, index)
            if handle is not None:
                return handle
            fill = self.inflight.get(key)
            if fill is not None:
                return fill
            stream = self._streams.get((entry.key, entry.variant))
            if (
                stream is not None
                and stream.alive
                and stream.index < index <= (stream.index + STREAM_LOOKAHEAD)
            ):
                stream.waiters += 1
                try:
                    await stream.moved()  # it is about to bring this slice
                finally:
                    stream.waiters -= 1
                continue
            if self._stream_elsewhere(entry, index):
                coordination.want(stream_key(entry))
                await asyncio.sleep(POLL)  # it is about to bring this slice
                continue
            claim = await self.inflight.join_or_start(
                key, self.claim_timeout, unchanged=lambda: not self._have(entry, index)
            )
            if claim.kind == "again":
                continue  # stored now, or the process that had it gave up
            assert claim.fill is not None
            if claim.kind == "started":
                if started is not None:
                    started.append(claim.fill)
                machine.start_slice(self.node, claim.fill, SliceOf(entry, index), headers)
            # Joined: followed, or ended (its error is this reader's, as a local one's).
            return claim.fill

    async def ahead(self, entry: Entry, index: int, headers: list[tuple[str, str]]) -> None:
        """Start the fill of a slice a reader will need next, unless it is stored or
        something brings it (a fill here or in another process, a stream about to
        reach it). Never waits: a slice another process has locked is left to it."""
        if index >= entry.slice_count or self.coming(entry, index) is not False:
            return
        if self._stream_elsewhere(entry, index):
            return
        claim = await self.inflight.join_or_start(
            slice_fill_key(entry, index), None, unchanged=lambda: not self._have(entry, index)
        )
        if claim.kind == "started" and claim.fill is not None:
            machine.start_slice(self.node, claim.fill, SliceOf(entry, index), headers)

    def _stream_elsewhere(self, entry: Entry, index: int) -> bool:
        """A live stream in another process is just before this slice."""
        record = self.inflight.coordination.read(stream_key(entry))
        if record is None or record.get("pid") == os.getpid() or not alive(record.get("pid")):
            return False
        at = record.get("index")
        return isinstance(at, int) and at < index <= at + STREAM_LOOKAHEAD


# ------------------------------------------------------------------ body sources


@dataclass
class FileSegment:
    """Part of a file on disk, for sendfile."""

    file: IO[bytes]
    offset: int
    count: int


Piece = bytes | FileSegment


class BodySource(Protocol):
    """Where a response body comes from; delivery asks for [start, end)."""

    def pieces(self, start: int, end: int | None) -> AsyncIterator[Piece]: ...

    def close(self) -> None: ...


class FileSource:
    """A body stored in one file: the whole representation, or the part of it that
    starts at byte `offset` (a stored partial response, Entry.part)."""

    def __init__(self, file: IO[bytes], offset: int = 0) -> None:
        self.file = file
        self.offset = offset

    async def pieces(self, start: int, end: int | None) -> AsyncIterator[Piece]:
        assert end is not None
        if end > start:
            yield FileSegment(self.file, start - self.offset, end - start)

    def close(self) -> None:
        self.file.close()


class FillSource:
    """A body still arriving (read-while-writer): each span already written goes out
    as a file segment, by sendfile from the growing file, as a stored body does."""

    def __init__(self, reader: FillReader) -> None:
        self.reader = reader

    async def pieces(self, start: int, end: int | None) -> AsyncIterator[Piece]:
        async for piece in _followed(self.reader, start, end):
            yield piece

    def close(self) -> None:
        self.reader.close()


async def _followed(reader: FillReader, start: int, end: int | None) -> AsyncIterator[Piece]:
    """A fill's body [start, end) as file segments of its growing file, each as much as
    has arrived: delivery sends them as it sends a stored body (sendfile), rather than
    reading and writing each chunk here; a body kept in memory as its bytes."""
    file = reader.file
    async for offset, count in reader.spans(start, end):
        # A body kept in memory (small) has no file: its bytes themselves.
        yield reader.read(offset, count) if file is None else FileSegment(file, offset, count)


class SlicedSource:
    """A segmented body: each slice from disk if stored, else followed as it arrives.

    What a delivery costs upstream is said, not hidden: `plan` tells before the head
    is sent whether slices must come from upstream (RFC 9211: then the response is
    not a hit), and `upstream_s` is the time spent waiting for their heads. (Each
    slice fetch's own latency is the fetch machine's to count, as every fill's is.)"""

    def __init__(
        self,
        slicer: Slicer,
        entry: Entry,
        headers: list[tuple[str, str]],
    ) -> None:
        self.slicer = slicer
        self.entry = entry
        self.headers = headers
        self.upstream_s: float | None = None
        self._missing: set[int] = set()  # slices `plan` found not stored

    def plan(self, spans: Iterable[tuple[int, int]]) -> tuple[int, int]:
        """For byte spans [start, end): how many of the slices they need are not
        stored, and how many of those a fetch already under way brings."""
        entry, size = self.entry, self.entry.slice_size
        indexes: set[int] = set()
        for start, end in spans:
            if end > start:
                indexes.update(range(start // size, (min(end, entry.size) - 1) // size + 1))
        states = {index: self.slicer.coming(entry, index) for index in sorted(indexes)}
        self._missing = {index for index, state in states.items() if state is not None}
        return len(self._missing), sum(state is True for state in states.values())

    async def pieces(self, start: int, end: int | None) -> AsyncIterator[Piece]:
        entry = self.entry
        end = entry.size if end is None else end
        index = start // entry.slice_size
        ident = (entry.key, entry.variant)
        self.slicer.reading(ident, +1)
        try:
            async for piece in self._pieces(entry, start, end, index):
                yield piece
        finally:
            self.slicer.reading(ident, -1)

    async def _pieces(self, entry: Entry, start: int, end: int, index: int) -> AsyncIterator[Piece]:
        last = (min(end, entry.size) - 1) // entry.slice_size
        while start < end:
            s_start, s_end = entry.slice_span(index)
            lo, hi = start - s_start, min(end, s_end) - s_start
            waited = time.monotonic()
            got = await self.slicer.slice(entry, index, self.headers)
            for ahead in range(index + 1, min(index + READ_AHEAD, last) + 1):
                await self.slicer.ahead(entry, ahead, self.headers)
            if isinstance(got, Fill):
                await asyncio.shield(got.head)
            if isinstance(got, Fill) or index in self._missing:
                # Waiting for a fetch (its own, another's, or the stream's) is upstream time.
                self.upstream_s = (self.upstream_s or 0.0) + time.monotonic() - waited
            if isinstance(got, Fill):
                if got.failed is not None and got.writer is None:
                    raise got.failed
                head = got.head.result()
                if head.kind == "error":
                    raise head.error or UpstreamError("slice fetch failed")
                reader = got.reader()
                try:
                    async for piece in _followed(reader, lo, hi):
                        yield piece
                finally:
                    reader.close()
            else:
                # Closed as soon as it is sent: a 1 GB body is 256 slices, and holding
                # them all until the response ends runs a crowd out of descriptors.
                try:
                    yield FileSegment(got, lo, hi - lo)
                finally:
                    got.close()
            start = s_start + hi
            index += 1

    def close(self) -> None:
        """Each slice file is closed once sent; nothing is held between pieces."""
