"""The coordination seam (edge.multiproc.coordination) held to one contract by both of its
implementations: `Solo` (one process; an injected clock) and `Workers` (edge.multiproc.workers:
the worker map, the fill locks and records in a cache directory under tmp_path).

Each test sees two views of one node, `here` and `there`. For Solo they are the one
process (the same object, and the same in-flight table); for workers they are two
`Workers` over one directory in this process, standing in for two workers: their fill
locks exclude each other as two processes' do. What the contract promises holds either
way, so a path that works alone works across workers. Then the one way to join or
start a fill (edge.fetch.fill.InFlight.join_or_start) on each, and the slices' use of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from edge.fetch.fill import Fill, FillHead, InFlight
from edge.fetch.slices import Slicer, stream_key
from edge.multiproc import shared as shared_map
from edge.multiproc.coordination import Coordination, Solo
from edge.multiproc.workers import METRICS_DIR, Workers
from edge.observe.metrics import NodeMetrics
from edge.purge.bans import Bans, Purger
from edge.purge.model import Purge
from edge.rfc.keys import QueryRules
from edge.store.disk import BodyWriter, DiskStore, Entry
from edge.upstream.pools import UpstreamError, Upstreams


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Pair:
    kind: str
    here: Coordination
    there: Coordination
    processes: list[Coordination]  # each process of the node once
    directory: Path
    clock: Clock | None  # Solo's; the workers' marks are files (the real clock)

    def now(self) -> float:
        import time

        return self.clock() if self.clock is not None else time.time()


def _metrics() -> NodeMetrics:
    return NodeMetrics("contract", lambda: (0, 0))


@pytest.fixture(params=["solo", "workers"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    directory = tmp_path / "cache"
    DiskStore.prepare(directory)
    if request.param == "solo":
        clock = Clock()
        solo = Solo(clock)
        yield Pair("solo", solo, solo, [solo], directory, clock)
        solo.close(_metrics())
        return
    # What the supervisor does before any worker starts (edge.multiproc.workers.prepare).
    shared_map.create(directory, 2)
    (directory / METRICS_DIR).mkdir()
    first, second = Workers.open(directory, 0), Workers.open(directory, 1)
    yield Pair("workers", first, second, [first, second], directory, None)
    for view in (first, second):
        view.close(_metrics())
        view.shared.close()


# -- the store's version -------------------------------------------------------------


def test_the_version_stands_still_while_nothing_changes(pair: Pair) -> None:
    before = pair.there.version()
    assert pair.there.version() == before
    pair.here.generation("k")
    pair.here.purge_stamp()
    assert pair.there.version() == before


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.changed("http://a.test/x"),
        lambda c: c.changed("http://a.test/x", "http://a.test/y"),
        lambda c: c.changed_all(),
        lambda c: c.purge_changed(),
    ],
    ids=["one key", "two keys", "all", "purge state"],
)
def test_any_change_by_one_process_moves_the_version_every_process_reads(
    pair: Pair, change: Any
) -> None:
    seen = [p.version() for p in pair.processes]
    change(pair.here)
    assert all(p.version() != old for p, old in zip(pair.processes, seen, strict=True))


# -- the purge state --------------------------------------------------------------------


def test_a_rewrite_of_the_purge_state_moves_the_stamp_every_process_reads(pair: Pair) -> None:
    before = pair.there.purge_stamp()
    with pair.here.purge_lock():
        written = pair.here.purge_changed()
    assert written != before
    assert pair.there.purge_stamp() == written == pair.here.purge_stamp()
    with pair.there.purge_lock():  # released: taken again
        assert pair.there.purge_changed() not in (before, written)


def test_exactly_one_process_of_the_node_leads(pair: Pair) -> None:
    assert sum(p.leads for p in pair.processes) == 1


@dataclass
class FakePurger:
    ready: bool


@pytest.mark.parametrize("caught_up", [True, False])
def test_every_process_takes_up_the_leads_word_on_readiness(pair: Pair, caught_up: bool) -> None:
    purgers = {id(p): FakePurger(caught_up if p.leads else not caught_up) for p in pair.processes}
    for p in sorted(pair.processes, key=lambda p: not p.leads):  # the lead first
        p.share_ready(cast(Any, purgers[id(p)]))
    assert {purger.ready for purger in purgers.values()} == {caught_up}


def test_the_oldest_fill_in_flight_is_seen_by_every_process(pair: Pair) -> None:
    assert pair.there.oldest() is None
    pair.here.set_oldest(1234.5)
    assert pair.there.oldest() == 1234.5
    pair.here.set_oldest(None)
    assert pair.there.oldest() is None


# -- fill locks, records and marks ------------------------------------------------------------


def test_a_fill_key_is_locked_once_in_the_node(pair: Pair) -> None:
    assert pair.here.try_lock("k")
    assert not pair.there.try_lock("k")
    assert not pair.here.try_lock("k")  # this process holds it: its fill is in the table
    assert pair.there.try_lock("other")  # keys are independent
    pair.here.unlock("k")
    assert pair.there.try_lock("k")
    pair.there.unlock("k")
    pair.there.unlock("other")
    assert pair.here.try_lock("k") and pair.here.try_lock("other")


def test_a_published_record_is_read_by_every_process_until_forgotten(pair: Pair) -> None:
    assert pair.there.read("k") is None
    pair.here.publish("k", {"id": "a", "kind": "body", "state": "running"})
    assert pair.there.read("k") == {"id": "a", "kind": "body", "state": "running"}
    pair.here.publish("k", {"id": "a", "kind": "body", "state": "done", "size": 3})
    assert pair.there.read("k") == {"id": "a", "kind": "body", "state": "done", "size": 3}
    assert pair.there.read("other") is None
    pair.there.forget("k")
    assert pair.here.read("k") is None


async def test_a_finished_fills_record_never_takes_a_later_fills_with_it(pair: Pair) -> None:
    pair.here.publish("k", {"id": "later", "kind": "error"})
    pair.here.forget_later("k", "earlier")
    assert pair.there.read("k") == {"id": "later", "kind": "error"}


def test_a_stream_is_wanted_only_once_a_reader_touched_its_mark(pair: Pair) -> None:
    since = pair.now() - 1.0
    assert not pair.there.wanted_since("s", since)
    pair.here.want("s", start=True)
    assert not pair.there.wanted_since("s", since)  # created: wanted by nobody yet
    pair.there.want("s")
    assert pair.here.wanted_since("s", since)
    pair.here.want("s", stop=True)
    assert not pair.there.wanted_since("s", since)
    pair.there.want("s")  # a reader after the stream ended makes no mark
    assert not pair.here.wanted_since("s", since)


async def test_the_exposition_holds_this_processs_counters(pair: Pair) -> None:
    metrics = _metrics()
    metrics.requests.labels("contract", "hit", "200").inc(7)
    text = (await pair.here.exposition(metrics)).decode()
    assert 'edge_requests_total{cache_status="hit",code="200",node="contract"} 7.0' in text


# -- the workers' own ----------------------------------------------------------------------


def test_only_the_node_alone_prepares_its_directory(tmp_path: Path) -> None:
    calls: list[str] = []
    Solo().prepare_directory(lambda: calls.append("solo"))
    directory = tmp_path / "cache"
    DiskStore.prepare(directory)
    shared_map.create(directory, 1)
    worker = Workers.open(directory, 0)
    worker.prepare_directory(lambda: calls.append("worker"))  # its supervisor did
    assert calls == ["solo"]
    assert worker.body_prefix.endswith("-") and Solo().body_prefix == ""
    worker.close(_metrics())
    worker.shared.close()


# -- join or start (edge.fetch.fill.InFlight) ---------------------------------------------------


@dataclass
class Tables:
    here: InFlight
    there: InFlight


@pytest.fixture
def tables(pair: Pair) -> Iterator[Tables]:
    here = InFlight(pair.here)
    yield Tables(here, here if pair.here is pair.there else InFlight(pair.there))


async def _settle(rounds: int = 3) -> None:
    """Let the tasks already scheduled run (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_a_request_joins_the_fill_in_flight_and_reads_its_body(
    pair: Pair, tables: Tables
) -> None:
    claim = await tables.here.join_or_start("k", 5.0)
    assert claim.kind == "started" and claim.fill is not None
    fill = claim.fill
    fill.attach_writer(BodyWriter(pair.directory / "incoming" / "body"))
    fill.head.set_result(FillHead("body", status=200, length=6, storable=True, variant="v"))
    await _settle()
    joined = await tables.there.join_or_start("k", 5.0)
    assert joined.kind == "joined" and joined.fill is not None
    head = await joined.fill.head
    assert (head.kind, head.status, head.length, head.variant) == ("body", 200, 6, "v")
    reader = joined.fill.reader()
    assert fill.writer is not None
    fill.writer.write(b"abc")
    fill.advance(3)
    fill.writer.write(b"def")
    fill.advance(3)
    fill.finish()
    tables.here.done(fill)
    got = b"".join([chunk async for chunk in reader.read_range(0, None)])
    reader.close()
    assert got == b"abcdef"


@pytest.mark.parametrize(
    "outcome",
    [
        FillHead("error", error=UpstreamError("origin down")),
        FillHead("private", status=200),
    ],
    ids=["error", "private"],
)
async def test_what_a_fill_could_not_store_is_the_outcome_of_every_request_waiting_on_it(
    pair: Pair, tables: Tables, outcome: FillHead
) -> None:
    """A failure, or a response that may not be shared, reaches those who waited on the
    fill in another process as it reaches those who joined it in its own: they do not
    ask upstream again."""
    claim = await tables.here.join_or_start("k", 5.0)
    assert claim.kind == "started" and claim.fill is not None
    waiting = asyncio.ensure_future(tables.there.join_or_start("k", 5.0))
    await _settle()
    claim.fill.head.set_result(outcome)
    claim.fill.finish(outcome.error)
    tables.here.done(claim.fill)
    joined = await waiting
    assert joined.kind == "joined" and joined.fill is not None
    head = await joined.fill.head
    assert head.kind == outcome.kind
    if outcome.error is not None:
        assert head.error is not None and str(head.error) == "origin down"
        assert getattr(head.error, "status", None) == 502


async def test_a_stored_result_is_looked_up_again_when_the_store_moved(
    pair: Pair, tables: Tables
) -> None:
    claim = await tables.here.join_or_start("k", 5.0, unchanged=lambda: False)
    assert claim.kind == "again" and claim.fill is None
    # The lock taken to ask went again: the next caller may start.
    again = await tables.there.join_or_start("k", 5.0)
    assert again.kind == "started"


async def test_a_fill_from_before_a_purge_is_not_joined(pair: Pair, tables: Tables) -> None:
    old = await tables.here.join_or_start("k", 5.0)
    assert old.fill is not None
    fresh = await tables.here.join_or_start("k", 5.0, usable=lambda fill: fill is not old.fill)
    assert fresh.kind == "started" and fresh.fill is not old.fill
    assert tables.here.get("k") is fresh.fill


async def test_a_caller_that_will_not_wait_never_starts_a_second_fill(
    pair: Pair, tables: Tables
) -> None:
    first = await tables.here.join_or_start("k")
    assert first.kind == "started"
    second = await tables.there.join_or_start("k")
    assert second.kind in ("joined", "busy")
    assert second.fill is None or second.fill is first.fill


async def test_a_key_held_without_word_past_the_wait_is_fetched_alone(
    pair: Pair, tables: Tables
) -> None:
    assert pair.there.try_lock("k")  # held, and nothing published
    claim = await tables.here.join_or_start("k", 0.0)
    assert claim.kind == "started" and claim.fill is not None
    assert not claim.fill.locked  # no lock: nobody is told of it
    pair.there.unlock("k")


async def test_a_derived_body_is_made_per_process(pair: Pair, tables: Tables) -> None:
    first = await tables.here.join_or_start("k#br", local=True)
    assert first.kind == "started"
    assert (await tables.here.join_or_start("k#br", local=True)).fill is first.fill


# -- slices through it ---------------------------------------------------------------------


class GatedUpstream:
    """An upstream that fails every request once the test opens the gate."""

    def __init__(self) -> None:
        self.requests = 0
        self.gate = asyncio.Event()

    async def request(self, method: str, path: str, headers: Any, **kw: Any) -> Any:
        self.requests += 1
        await self.gate.wait()
        raise UpstreamError("origin down")


async def test_a_slice_fill_that_failed_fails_every_reader_waiting_on_it(
    pair: Pair, tables: Tables
) -> None:
    """A reader of a slice that another process's fill was bringing gets that fill's
    failure, as a reader in that process does, rather than asking upstream again."""
    upstream = GatedUpstream()
    store = DiskStore(pair.directory, 1 << 30, pair.here)
    slicers = [
        Slicer(store, tables.here, cast(Upstreams, upstream), claim_timeout=30.0),
        Slicer(store, tables.there, cast(Upstreams, upstream), claim_timeout=30.0),
    ]
    entry = Entry(
        key="http://a.test/big",
        variant="v",
        status=200,
        headers=(("ETag", '"x"'),),
        vary=(),
        request_time=0.0,
        response_time=0.0,
        size=4 << 20,
        slice_size=1 << 20,
    )
    started: list[Fill] = []
    first = await slicers[0].slice(entry, 2, [], started)
    assert started == [first]
    waiting = asyncio.ensure_future(slicers[1].slice(entry, 2, []))
    await _settle()
    upstream.gate.set()
    got = await waiting
    assert isinstance(got, Fill)
    head = await got.head
    assert head.kind == "error" and str(head.error) == "origin down"
    assert upstream.requests == 1
    store.close()


class StalledResponse:
    """A whole-object response whose body never comes (the stream stays at its first
    slice)."""

    status = 200

    def __init__(self) -> None:
        self.closed = False

    async def into(self, fd: int | None, limit: int) -> int:
        await asyncio.Event().wait()
        return 0

    def close(self) -> None:
        self.closed = True


async def test_a_reader_beside_a_stream_in_its_own_process_does_not_mark_it_wanted(
    pair: Pair, tables: Tables
) -> None:
    """The mark is for readers in other processes: one in the stream's own is counted
    by reading along, and its touch would keep the stream going after it left."""
    store = DiskStore(pair.directory, 1 << 30, pair.here)
    slicer = Slicer(store, tables.here, cast(Upstreams, GatedUpstream()), claim_timeout=30.0)
    entry = Entry(
        key="http://a.test/big",
        variant="v",
        status=200,
        headers=(("ETag", '"x"'),),
        vary=(),
        request_time=0.0,
        response_time=0.0,
        size=8 << 20,
        slice_size=1 << 20,
    )
    response = StalledResponse()
    await slicer.start_stream(entry, cast(Any, response), 0)
    await _settle()
    got = await slicer.slice(entry, 6, [])  # far ahead of the stream: fetched by range
    assert isinstance(got, Fill)
    assert not pair.here.wanted_since(stream_key(entry), 1.0)
    await tables.here.close()
    assert response.closed
    store.close()


# -- the purge state through it (edge.purge.bans.Purger) --------------------------------------


async def test_purges_applied_by_any_process_are_all_kept_and_seen(pair: Pair) -> None:
    """Each process rewrites the state under the lock from the file as the others left
    it: no ban one applied is lost to another's write, and each takes up the others'."""
    rules = QueryRules()
    stores = {id(c): DiskStore(pair.directory, 1 << 30, c) for c in (pair.here, pair.there)}
    here = Purger.open(stores[id(pair.here)], pair.directory, rules, pair.here)
    there = Purger.open(stores[id(pair.there)], pair.directory, rules, pair.there)
    here.apply(Purge(hosts=("a.test",)), 1)
    there.apply(Purge(tags=("t",)), 2)  # after here's write, without a read of its own
    here.apply(Purge(urls=("http://b.test/x",)), 3)
    saved = Bans.load(pair.directory, rules)
    assert sorted(b.seq for b in saved.bans) == [1, 2, 3] and saved.applied == 3
    there.sync()
    here.sync()
    for purger in (here, there):
        assert sorted(b.seq for b in purger.bans.bans) == [1, 2, 3]
    for store in stores.values():
        store.close()
