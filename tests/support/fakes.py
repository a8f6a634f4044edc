"""In-memory stand-ins for what the client machine (edge.pipeline.transaction) talks
to, for unit tests that open no socket, start no process and never sleep:

- `ManualClock`: the engine's clocks (wall and monotonic) and its pause, moved by hand;
- `MemoryStore`: the store interface (edge.store.disk.Store) on dictionaries;
- `ScriptedUpstream`: answers each upstream request as a test scripted it (a head, a
  body in pieces, a failure, a timeout, a body that breaks), and records every request
  it got;
- `MemoryChannel`: the exchange's Channel (edge.pipeline.exchange), keeping what was
  sent: the head, the body, interim responses, an abort;
- `Rig` / `rig()`: an Engine wired to them, and the requests and transactions a test
  drives through it.

Everything else an Engine holds is edge's own (InFlight on the single-process
coordination, Slicer, Deriver, the guard, the metrics), so a test exercises the
real rules around the fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any, cast

from multidict import CIMultiDict

from edge.config import NodeConfig, RouteConfig
from edge.fetch.derive import Deriver
from edge.fetch.fill import InFlight
from edge.fetch.slices import Slicer
from edge.multiproc.coordination import Solo
from edge.observe.metrics import NodeMetrics
from edge.pipeline.exchange import NO_BODY, Body, Request, Response, request_fields
from edge.pipeline.transaction import Engine, Transaction, guard_settings
from edge.purge.bans import Purger
from edge.store.disk import INLINE_MAX, BodyWriter, Entry, Store
from edge.upstream import h1client
from edge.upstream.pools import UpstreamError, UpstreamResponse, Upstreams, UpstreamTimeout

#: Where the manual clock starts: a fixed instant, so Dates and ages are the same on
#: every run.
EPOCH = 1_750_000_000.0


# -- the clock -------------------------------------------------------------------------


class ManualClock:
    """The wall and monotonic clocks, moved only by `advance` (and by `sleep`, which
    returns at once having moved them): a test decides what `now` is."""

    def __init__(self, start: float = EPOCH) -> None:
        self.now = start
        self.ticks = 1000.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.ticks += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)  # still a point where other tasks run


# -- the store -------------------------------------------------------------------------


def memory_file(data: bytes) -> IO[bytes]:
    """Bytes as an open file with a descriptor of its own and no name on disk, as
    delivery reads stored bodies (pread, sendfile)."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        handle: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - caller closes
    else:
        handle = open(memfd_create("fake-body", os.MFD_CLOEXEC), "wb+")  # noqa: SIM115
    handle.write(data)
    handle.flush()
    handle.seek(0)
    return handle


class MemoryStore(Store):
    """edge.store.disk.Store kept in dictionaries. A body arriving is written to a
    scratch file (fills' readers follow it by descriptor, edge.fetch.fill), read back
    at its commit and kept as bytes; stored bodies open as memory files.

    As the disk store does, `variants` hands back the very list it gave last while the
    key has not changed (the pipeline compares it by identity, edge.pipeline.transaction
    st_fetch), newest first; a commit replaces the variant with the same secondary key
    and what was derived from it."""

    def __init__(self) -> None:
        self._meta: dict[str, list[Entry]] = {}
        self._bodies: dict[tuple[str, str], bytes] = {}
        self._slices: dict[tuple[str, str, int], bytes] = {}
        self._scratch: Path | None = None
        self._version = 0
        self.opened: list[Entry] = []  # every body open_body handed out

    # -- helpers of the tests' own ----------------------------------------------------

    def put(self, entry: Entry, body: bytes = b"") -> Entry:
        """Store an entry with its body, as a completed fill would."""
        # A segmented entry's size or a part's complete length is not its body's.
        whole = not entry.slice_size and entry.part is None
        stored = replace(entry, size=len(body)) if whole else entry
        self._record(stored)
        if not stored.slice_size:
            self._bodies[(stored.key, stored.variant)] = body
        return stored

    def body(self, entry: Entry) -> bytes | None:
        return self._bodies.get((entry.key, entry.variant))

    def lose(self, entry: Entry) -> None:
        """The entry's body goes and its metadata stays (evicted under a reader)."""
        self._bodies.pop((entry.key, entry.variant), None)

    # -- the interface ---------------------------------------------------------------

    def variants(self, key: str) -> list[Entry]:
        return self._meta.setdefault(key, [])

    def open_body(self, entry: Entry) -> IO[bytes] | None:
        data = self._bodies.get((entry.key, entry.variant))
        if data is None:
            return None
        self.opened.append(entry)
        return memory_file(data)

    def begin(self, expected: int | None = None) -> BodyWriter:
        if expected is not None and expected <= INLINE_MAX:
            return BodyWriter(None)  # in memory, as the disk store keeps it
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="edge-fake-store-"))
        return BodyWriter(self._scratch / uuid.uuid4().hex)

    def commit(self, entry: Entry, body: BodyWriter) -> Entry:
        body.close()
        data = body.small
        if data is None:
            data = body.path.read_bytes()
        body.discard()  # its readers keep their descriptors
        if entry.derived_from and all(
            e.variant != entry.derived_from for e in self._meta.get(entry.key, [])
        ):
            return entry  # its source went meanwhile: nor is this kept
        entry = replace(entry, body_file=":memory")
        self._record(entry)
        self._bodies[(entry.key, entry.variant)] = data
        return entry

    def commit_manifest(self, entry: Entry) -> Entry:
        self._record(entry)
        return entry

    def commit_slice(self, entry: Entry, index: int, body: BodyWriter) -> None:
        body.close()
        data = body.small if body.small is not None else body.path.read_bytes()
        body.discard()
        if any(e.variant == entry.variant for e in self._meta.get(entry.key, [])):
            self._slices[(entry.key, entry.variant, index)] = data

    def open_slice(self, entry: Entry, index: int) -> IO[bytes] | None:
        data = self._slices.get((entry.key, entry.variant, index))
        return None if data is None else memory_file(data)

    def update(self, entry: Entry) -> None:
        current = self._meta.get(entry.key, [])
        if any(e.variant == entry.variant for e in current):
            self._replace_list(
                entry.key, [entry if e.variant == entry.variant else e for e in current]
            )

    def remove(self, key: str) -> int:
        gone = self._meta.pop(key, [])
        for entry in gone:
            self._drop_bodies(entry)
        if gone:
            self._version += 1
        return len(gone)

    def keys(self) -> Iterator[str]:
        return iter([key for key, entries in self._meta.items() if entries])

    def clear(self) -> None:
        self._meta.clear()
        self._bodies.clear()
        self._slices.clear()
        self._version += 1

    def stats(self) -> tuple[int, int]:
        return sum(map(len, self._bodies.values())) + sum(map(len, self._slices.values())), len(
            self._bodies
        )

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def version(self) -> int:
        return self._version

    # -- inside ------------------------------------------------------------------------

    def _record(self, entry: Entry) -> None:
        current = self._meta.get(entry.key, [])
        replaced = {e.variant for e in current if e.vary == entry.vary}
        kept = []
        for old in current:
            if old.variant in replaced or old.derived_from in replaced:
                self._drop_bodies(old)
            else:
                kept.append(old)
        self._replace_list(entry.key, sorted([entry, *kept], key=lambda e: -e.response_time))

    def _replace_list(self, key: str, entries: list[Entry]) -> None:
        # A new list object: a caller holding the old one sees that the key changed.
        self._meta[key] = entries
        self._version += 1

    def _drop_bodies(self, entry: Entry) -> None:
        self._bodies.pop((entry.key, entry.variant), None)
        for index in range(entry.slice_count):
            self._slices.pop((entry.key, entry.variant, index), None)


# -- the upstream ----------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer of the upstream.

    `fail`: raised instead of a head (the upstream down, or timing out);
    `pieces`: the body as it arrives; `broken`: raised after the pieces (the body cut
    short); `took`: seconds of the manual clock between request and head (an Age the
    response earned on its way); `hold`: the head waits until this is set;
    `interim`: 1xx responses (status, fields) sent before the head; `trailers`: the
    trailer section after the body; `answers_first`: a body deferred behind
    `Expect: 100-continue` is never asked for."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    pieces: Sequence[bytes] | None = None
    fail: UpstreamError | None = None
    broken: Exception | None = None
    took: float = 0.0
    note: str = ""
    hold: asyncio.Event | None = None
    content_length: bool = True  # send Content-Length for the body
    date: bool = True  # send Date, as an origin with a clock must (RFC 9110 Section 6.6.1)
    interim: Sequence[tuple[int, Sequence[tuple[str, str]]]] = ()
    trailers: Sequence[tuple[str, str]] = ()
    answers_first: bool = False  # to Expect: 100-continue, a final answer before the body

    def fields(self, now: float) -> CIMultiDict[str]:
        fields = CIMultiDict(self.headers)
        if self.date and "Date" not in fields:
            fields["Date"] = formatdate(now, usegmt=True)
        if self.content_length and "Content-Length" not in fields and self.pieces is None:
            fields["Content-Length"] = str(len(self.body))
        return fields


def down(message: str = "connect: connection refused") -> Reply:
    """The upstream cannot be reached: 502 to the client."""
    return Reply(fail=UpstreamError(f"origin unreachable: {message}"))


def timeout(message: str = "timed out") -> Reply:
    """The upstream did not answer in time: 504 to the client."""
    return Reply(fail=UpstreamTimeout(f"origin failed: {message}"))


@dataclass
class Sent:
    """One request the upstream got."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes | None
    key: str
    client: str


class ScriptedBody:
    """The raw side of an UpstreamResponse (the part edge.upstream.pools reads): the
    reply's pieces, then its break or its end; whether it was read to the end,
    released or closed."""

    def __init__(self, reply: Reply) -> None:
        pieces = reply.pieces if reply.pieces is not None else [reply.body]
        self._pieces = [p for p in pieces if p]
        self._broken = reply.broken
        self.trailers: CIMultiDict[str] = CIMultiDict(reply.trailers)
        self.released = False
        self.closed = False
        self.read_to_end = False

    async def read(self) -> bytes:
        await asyncio.sleep(0)  # a body arrives over loop turns, not all at once
        if self._pieces:
            return self._pieces.pop(0)
        if self._broken is not None:
            raise self._broken
        self.read_to_end = True
        return b""

    async def read_into(self, fd: int | None, limit: int) -> int:
        """As h1client's: the next piece, at most `limit` of it (the rest is the next
        piece), written to `fd` (None: dropped)."""
        piece = await self.read()
        if len(piece) > limit:
            self._pieces.insert(0, piece[limit:])
            piece = piece[:limit]
        if fd is not None:
            h1client.write_all(fd, piece)
        return len(piece)

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def broken_body(message: str = "connection reset") -> Exception:
    """What the upstream client raises when a body breaks mid-way."""
    return h1client.ClientError(message)


class ScriptedUpstream:
    """The node's upstream (edge.upstream.pools.Upstreams, as the pipeline asks it:
    `route_for` and `request`) answering from a script: each path (as requested,
    path and query) has its replies, given out in order; a request nobody scripted
    fails the fill or pass that made it (and stays in `unscripted` for the test to
    see). `hosts`: the authorities this node has a route for (None: every one)."""

    def __init__(self, clock: ManualClock, hosts: Iterable[str] | None = None) -> None:
        self.clock = clock
        self.hosts = None if hosts is None else {h.lower() for h in hosts}
        self.sent: list[Sent] = []
        self.unscripted: list[Sent] = []
        self.bodies: list[ScriptedBody] = []
        self._script: dict[str, list[Reply]] = {}

    def script(self, path: str, *replies: Reply) -> None:
        """Add replies for `path` (after those already scripted)."""
        self._script.setdefault(path, []).extend(replies)

    def pending(self, path: str) -> int:
        return len(self._script.get(path, []))

    def to(self, path: str) -> list[Sent]:
        """The requests that asked for `path`."""
        return [s for s in self.sent if s.path == path]

    def route_for(self, host: str) -> RouteConfig | None:
        name = host.lower().rsplit(":", 1)[0] if not host.startswith("[") else host.lower()
        if self.hosts is not None and name not in self.hosts:
            return None
        return RouteConfig("*", "origin")

    async def request(
        self,
        method: str,
        path_qs: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | h1client.Deferred | None = None,
        *,
        key: str,
        client: str = "",
        interim: h1client.InterimSink | None = None,
    ) -> UpstreamResponse:
        replies = self._script.get(path_qs)
        reply = replies[0] if replies else None
        if isinstance(body, h1client.Deferred):
            # Asked with Expect: 100-continue: the body comes once the upstream says
            # 100, never when it answers first.
            body = None if reply is not None and reply.answers_first else await body.supply()
        sent = Sent(method, path_qs, CIMultiDict(headers), body, key, client)
        self.sent.append(sent)
        if not replies or reply is None:
            self.unscripted.append(sent)
            raise UpstreamError(f"no reply scripted for {method} {path_qs}")
        replies.pop(0)
        request_time = self.clock.time()
        if reply.hold is not None:
            await reply.hold.wait()
        for status, fields in reply.interim:
            if interim is not None:
                interim(status, CIMultiDict(fields))
            await asyncio.sleep(0)  # each 1xx arrives on a loop turn of its own
        if reply.fail is not None:
            raise reply.fail
        self.clock.advance(reply.took)
        raw = ScriptedBody(reply)
        self.bodies.append(raw)
        return UpstreamResponse(
            reply.status,
            reply.fields(self.clock.time()),
            cast(h1client.Response, raw),
            request_time,
            self.clock.time(),
            member="http://origin.test",
            note=reply.note,
        )

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


# -- the channel -----------------------------------------------------------------------


class MemoryChannel:
    """edge.pipeline.exchange.Channel keeping what it was given. `gone_after`: the
    client goes away once that many body bytes were written (writes then raise
    ConnectionError, as a connection layer's do)."""

    def __init__(self, *, gone_after: int | None = None) -> None:
        self.head: Response | None = None
        self.chunks: list[bytes] = []
        self.continues = 0
        self.interims: list[tuple[int, list[tuple[str, str]]]] = []
        self.late_interims = 0  # told after the final head: dropped, as the contract says
        self.trailers: list[tuple[str, str]] = []
        self.ended = False
        self.aborted = False
        self.whole = False  # sent with respond(), head and body at once
        self.gone_after = gone_after

    @property
    def started(self) -> bool:
        return self.head is not None

    @property
    def status(self) -> int | None:
        return None if self.head is None else self.head.status

    @property
    def headers(self) -> CIMultiDict[str]:
        assert self.head is not None, "nothing was sent"
        return self.head.headers

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def send_continue(self) -> None:
        assert self.head is None, "100 Continue after the response"
        self.continues += 1

    async def send_interim(self, status: int, fields: Sequence[tuple[str, str]]) -> None:
        if self.head is not None:
            self.late_interims += 1
            return
        self.interims.append((status, list(fields)))

    async def respond(self, response: Response) -> list[tuple[str, str]]:
        assert self.head is None, "a second response"
        self.head, self.whole, self.ended = response, True, True
        self.chunks.append(response.body)
        return self._written(response, len(response.body))

    async def start(self, head: Response) -> list[tuple[str, str]]:
        assert self.head is None, "a second response"
        self.head = head
        return self._written(head, head.length)

    async def write(self, data: bytes) -> None:
        assert self.head is not None and not self.ended, "a write outside a body"
        if self.gone_after is not None and len(self.body) + len(data) > self.gone_after:
            raise ConnectionResetError("client went away")
        self.chunks.append(bytes(data))

    async def send_file(self, file: IO[bytes], offset: int, count: int) -> None:
        await self.write(os.pread(file.fileno(), count, offset))

    async def end(self, trailers: Sequence[tuple[str, str]] = ()) -> None:
        assert self.head is not None, "end without a head"
        self.ended = True
        self.trailers = list(trailers)

    def abort(self) -> None:
        self.aborted = True

    @staticmethod
    def _written(head: Response, length: int | None) -> list[tuple[str, str]]:
        fields = list(head.headers.items())
        if length is not None:
            fields.append(("Content-Length", str(length)))
        return fields


# -- request bodies --------------------------------------------------------------------


class MemoryBody:
    """A request body arriving in pieces; `each`: seconds of the manual clock each
    piece takes to arrive (a trickle the guard's body deadline sees)."""

    def __init__(
        self, pieces: Sequence[bytes], clock: ManualClock | None = None, each: float = 0.0
    ) -> None:
        self._pieces = list(pieces)
        self._clock = clock
        self._each = each

    async def readany(self) -> bytes:
        if self._clock is not None:
            self._clock.advance(self._each)
        return self._pieces.pop(0) if self._pieces else b""


# -- the engine ------------------------------------------------------------------------

ORIGIN = "http://origin.test"


def config(**options: Any) -> NodeConfig:
    """A validated edge config with an origin (which ScriptedUpstream stands for)."""
    options.setdefault("origins", (ORIGIN,))
    options.setdefault("name", "e1")
    options.setdefault("listen", "127.0.0.1:8080")
    return NodeConfig(**options).validate()


@dataclass
class Rig:
    """An Engine on fakes, and what a test drives through it."""

    engine: Engine
    store: MemoryStore
    upstream: ScriptedUpstream
    clock: ManualClock
    channels: list[MemoryChannel] = field(default_factory=list)

    def request(
        self,
        target: str = "/a",
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        *,
        host: str | None = "site.test",
        peer: str = "192.0.2.10",
        version: tuple[int, int] = (1, 1),
        body: Body = NO_BODY,
        scheme: str = "http",
    ) -> Request:
        """A request as a connection layer hands it over: Host first unless given
        (None: no Host field, as HTTP/1.0 may send)."""
        named = {name.lower() for name, _ in headers}
        fields = [*headers]
        if host is not None and "host" not in named:
            fields.insert(0, ("Host", host))
        raw = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in fields)
        length = next((int(v) for k, v in fields if k.lower() == "content-length"), None)
        chunked = any(k.lower() == "transfer-encoding" for k, _ in fields)
        return Request(
            method,
            target,
            version,
            request_fields(raw),
            raw,
            host or "site.test",
            peer,
            scheme,
            body,
            has_body=bool(length) or chunked,
            content_length=length,
        )

    def transaction(
        self, request: Request | None = None, channel: MemoryChannel | None = None
    ) -> Transaction:
        channel = channel if channel is not None else MemoryChannel()
        self.channels.append(channel)
        return Transaction(self.engine, request or self.request(), channel)

    async def run(
        self, request: Request | None = None, channel: MemoryChannel | None = None
    ) -> tuple[Transaction, MemoryChannel]:
        """A whole walk; returns once the fills it started ended too."""
        t = self.transaction(request, channel)
        await t.run()
        await self.settle()
        return t, cast(MemoryChannel, t.channel)

    async def settle(self) -> None:
        """Wait for the fills, slice streams and derived bodies under way to end."""
        for _ in range(100):
            tasks = list(self.engine.inflight.tasks)
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)
        raise AssertionError("background tasks kept starting")

    def stored(self, target: str = "/a", host: str = "site.test") -> list[Entry]:
        return self.store.variants(self.key(target, host))

    @staticmethod
    def key(target: str = "/a", host: str = "site.test") -> str:
        return f"http://{host}{target}"

    async def close(self) -> None:
        await self.engine.inflight.close()
        self.store.close()


def rig(
    *,
    hosts: Iterable[str] | None = ("site.test",),
    purges: Path | None = None,
    clock: ManualClock | None = None,
    store: MemoryStore | None = None,
    engine: dict[str, Any] | None = None,
    **options: Any,
) -> Rig:
    """An Engine whose store, upstream and clocks are the fakes above.

    `options`: node options (NodeConfig); `purges`: a directory for a Purger
    (edge.purge.bans, on the same clock); `store`: a MemoryStore of the test's own
    (e.g. one that plays another process); `engine`: Engine fields to set (e.g.
    `trusted`, `hidden`)."""
    clock = clock or ManualClock()
    cfg = config(**options)
    store = store if store is not None else MemoryStore()
    upstream = ScriptedUpstream(clock, hosts)
    coordination = Solo(clock.time)
    inflight = InFlight(coordination, clock.time)
    as_upstreams = cast(Upstreams, upstream)
    metrics = NodeMetrics(cfg.name, store.stats)
    built = Engine(
        config=cfg,
        store=store,
        upstream=as_upstreams,
        inflight=inflight,
        metrics=metrics,
        slicer=Slicer(
            store, inflight, as_upstreams, claim_timeout=0.0, config=cfg, metrics=metrics
        ),
        deriver=Deriver(store, inflight),
        purger=None
        if purges is None
        else Purger.open(store, purges, cfg, coordination, clock=clock.time),
        clock=clock.time,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
        **guard_settings(cfg),
        **(engine or {}),
    )
    return Rig(built, store, upstream, clock)


#: The smallest slice size a node accepts, and node options (for `rig`) under which an
#: object above two slices is kept as slices of it: the slice tests' node.
SLICE = 64 << 10
SLICED: dict[str, Any] = {
    "slice_size": SLICE,
    "slice_threshold": 2 * SLICE,
    "max_object_size": 1 << 20,
}


@contextlib.asynccontextmanager
async def rigged(**kw: Any) -> AsyncIterator[Rig]:
    made = rig(**kw)
    try:
        yield made
    finally:
        await made.close()


def stored_entry(
    key: str,
    headers: Sequence[tuple[str, str]],
    *,
    at: float,
    status: int = 200,
    vary: tuple[tuple[str, str | None], ...] = (),
    variant: str | None = None,
) -> Entry:
    """An entry as a fill at `at` would have stored it (request and response time)."""
    return Entry(
        key=key,
        variant=variant or uuid.uuid4().hex,
        status=status,
        headers=tuple(headers),
        vary=vary,
        request_time=at,
        response_time=at,
        size=0,
    )


def field_values(fields: Iterable[tuple[str, str]], name: str) -> list[str]:
    lower = name.lower()
    return [v for k, v in fields if k.lower() == lower]
