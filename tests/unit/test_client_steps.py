"""The client machine (edge.pipeline.transaction) step by step, on fakes: an in-memory
store, a scripted upstream and a manual clock (tests/support/fakes.py). No socket, no
process, no sleep.

Two halves:
- each step by itself: a Transaction is walked (as `run` walks it) to the step under
  test, the step's method is called, and the step it names and what it did are checked;
- every move of the table (edge.pipeline.steps.MOVES): each scenario below is a whole
  walk that makes the move it is registered for, checked by what reached the client
  (status, Cache-Status, body), what the upstream was asked and what the store holds;
  a move the table gains without a scenario fails `test_every_move_has_a_scenario`.
And the driver refuses a move the table does not list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from email.utils import formatdate
from pathlib import Path

import pytest

from edge.pipeline import steps
from edge.pipeline import transaction as pipeline
from edge.pipeline.steps import MOVES, IllegalMove, Step
from edge.pipeline.transaction import Transaction
from edge.purge.model import Purge
from edge.store.disk import Entry
from tests.support.fakes import (
    MemoryBody,
    MemoryChannel,
    MemoryStore,
    Reply,
    Rig,
    broken_body,
    down,
    rigged,
    stored_entry,
    timeout,
)

#: Nothing here waits on a real clock: a step that waits longer waits on a fill that
#: will never come (a regression), and fails here rather than at the suite's bound.
pytestmark = pytest.mark.timeout(10)

#: A response edge stores for a minute, with a validator.
FRESH = (("Cache-Control", "max-age=60"), ("ETag", '"v1"'), ("Content-Type", "text/plain"))


@pytest.fixture(autouse=True)
def no_waiting_and_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """What these tests promise, held: no pause on the real clock (a yield is fine)
    and no connection opened."""
    yield_only = asyncio.sleep

    async def sleep(delay: float, result: object = None) -> object:
        assert delay <= 0, f"slept {delay}s on the real clock"
        return await yield_only(0, result)

    async def no_connection(*args: object, **kw: object) -> None:
        raise AssertionError("a unit test opened a connection")

    monkeypatch.setattr(asyncio, "sleep", sleep)
    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", no_connection)


@pytest.fixture
async def r() -> AsyncIterator[Rig]:
    async with rigged() as made:
        yield made


def put(
    r: Rig,
    headers: Sequence[tuple[str, str]] = FRESH,
    body: bytes = b"stored body",
    *,
    target: str = "/a",
    age: float = 0.0,
    vary: tuple[tuple[str, str | None], ...] = (),
) -> Entry:
    """Store a response as a fill `age` seconds ago would have (Date included)."""
    at = r.clock.now - age
    fields = (*headers, ("Date", formatdate(at, usegmt=True)))
    return r.store.put(stored_entry(r.key(target), fields, at=at, vary=vary), body)


async def until(t: Transaction, stop: Step) -> None:
    """Walk `t` as `run` does, up to `stop`: moved into, not taken."""
    step = steps.FIRST
    while step is not stop:
        assert step not in steps.FINAL, f"the walk ended at {step.value}, before {stop.value}"
        steps.move(t.walk, step)
        step = await pipeline._STEPS[step](t)
    steps.move(t.walk, stop)


def moves(t: Transaction) -> list[tuple[Step, Step]]:
    return list(itertools.pairwise(t.walk))


def sent(t: Transaction) -> MemoryChannel:
    channel = t.channel
    assert isinstance(channel, MemoryChannel)
    return channel


def cache_status(channel: MemoryChannel) -> str:
    """This node's Cache-Status entry (the last one)."""
    return channel.headers["Cache-Status"].split(", ")[-1]


# -- recv --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("GET", Step.HASH),
        ("HEAD", Step.HASH),
        ("POST", Step.PASS),
        ("DELETE", Step.PASS),
        ("CONNECT", Step.SYNTH),
        ("TRACE", Step.SYNTH),
    ],
)
async def test_recv_routes_by_method(r: Rig, method: str, expected: Step) -> None:
    t = r.transaction(r.request(method=method))
    await until(t, Step.RECV)
    assert await t.st_recv() is expected
    if expected is Step.PASS:
        assert t.status.fwd == "method"
    if expected is Step.SYNTH:
        assert t.response is not None and t.response.status == 405
        assert "GET" in t.response.headers["Allow"]
        assert not sent(t).started  # synth's response leaves at the end of the walk


async def test_recv_takes_the_authority_of_an_absolute_target(r: Rig) -> None:
    t = r.transaction(r.request("http://Site.test/b?q=1", host="other.test"))
    await until(t, Step.RECV)
    assert await t.st_recv() is Step.HASH
    # RFC 9112 Section 3.2.2: the target's authority replaces Host.
    assert t.host.lower() == "site.test"
    assert t.target.path_qs == "/b?q=1"


@pytest.mark.parametrize(
    ("target", "headers", "status", "why"),
    [
        ("a-path-without-slash", (), 400, "path"),
        ("/a", (("CDN-Loop", "edge; node=e1"),), 508, "loop"),
        ("/a", (("Host", "elsewhere.test"),), 421, "no origin"),
        ("/a", (("Host", "site.test"), ("Host", "site.test")), 400, ""),
    ],
)
async def test_recv_refuses_what_it_must_not_serve(
    r: Rig, target: str, headers: tuple[tuple[str, str], ...], status: int, why: str
) -> None:
    t = r.transaction(r.request(target, headers=headers))
    await until(t, Step.RECV)
    assert await t.st_recv() is Step.SYNTH
    assert t.response is not None and t.response.status == status
    assert why.encode() in t.response.body
    assert t.response.headers["Cache-Control"] == "no-store"


async def test_recv_holds_a_client_over_its_rate_for_the_tarpit_on_the_engines_clock() -> None:
    async with rigged(rate_limit=1.0, rate_burst=1.0, rate_tarpit=2.5) as r:
        first = r.transaction()
        await until(first, Step.RECV)
        assert await first.st_recv() is Step.HASH
        second = r.transaction()
        await until(second, Step.RECV)
        assert await second.st_recv() is Step.SYNTH
        assert second.response is not None and second.response.status == 429
        assert second.response.headers["Retry-After"] == "1"
        assert r.clock.slept == [2.5]  # the tarpit, on the engine's pause
        # The pause moved the engine's clock 2.5 s on: at 1 a second, a token is back.
        third = r.transaction()
        await until(third, Step.RECV)
        assert await third.st_recv() is Step.HASH


# -- hash --------------------------------------------------------------------------------


async def test_hash_keys_by_scheme_authority_and_target(r: Rig) -> None:
    t = r.transaction(r.request("/a/b?x=1", host="Site.TEST"))
    await until(t, Step.HASH)
    assert await t.st_hash() is Step.LOOKUP
    assert t.key == "http://site.test/a/b?x=1"


# -- lookup ------------------------------------------------------------------------------


async def test_lookup_finds_a_fresh_response(r: Rig) -> None:
    put(r, age=10)
    t = r.transaction()
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.HIT
    assert t.reuse is not None and t.reuse.kind == "fresh"
    assert t.reuse.ttl == pytest.approx(50)


async def test_lookup_of_a_stale_response_that_allows_swr_serves_it_stale(r: Rig) -> None:
    put(r, (("Cache-Control", "max-age=60, stale-while-revalidate=30"),), age=75)
    t = r.transaction()
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.STALE
    r.clock.advance(20)  # past the window now: the same entry must be revalidated
    t = r.transaction()
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.MISS
    assert t.status.fwd == "stale"


@pytest.mark.parametrize(
    ("request_fields", "stored_vary", "fwd"),
    [
        ((), None, "uri-miss"),
        ((("Accept-Language", "fr"),), (("accept-language", "en"),), "vary-miss"),
        ((("Cache-Control", "no-cache"),), (), "request"),
        ((("Cache-Control", "max-age=5"),), (), "stale"),
    ],
)
async def test_lookup_misses_what_cannot_answer(
    r: Rig,
    request_fields: tuple[tuple[str, str], ...],
    stored_vary: tuple[tuple[str, str | None], ...] | None,
    fwd: str,
) -> None:
    if stored_vary is not None:
        put(r, (*FRESH, ("Vary", "Accept-Language")), age=10, vary=stored_vary)
    t = r.transaction(r.request(headers=request_fields))
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.MISS
    assert t.status.fwd == fwd


async def test_lookup_of_an_entry_whose_body_was_lost_drops_it_and_misses(r: Rig) -> None:
    r.store.lose(put(r, age=1))
    t = r.transaction()
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.MISS
    assert t.status.fwd == "uri-miss"
    assert r.stored() == []  # the metadata without a body went


async def test_lookup_passes_a_head_miss(r: Rig) -> None:
    t = r.transaction(r.request(method="HEAD"))
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.PASS


@pytest.mark.parametrize("stored_age", [None, 600.0])
async def test_lookup_answers_only_if_cached_itself(r: Rig, stored_age: float | None) -> None:
    if stored_age is not None:
        put(r, age=stored_age)
    t = r.transaction(r.request(headers=(("Cache-Control", "only-if-cached"),)))
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.SYNTH
    assert t.response is not None and t.response.status == 504


async def test_lookup_after_purges(tmp_path: Path) -> None:
    async with rigged(purges=tmp_path) as r:
        purger = r.engine.purger
        assert purger is not None
        put(r, age=1)
        purger.apply(Purge(urls=(r.key(),), soft=True))
        t = r.transaction()
        await until(t, Step.LOOKUP)
        assert await t.st_lookup() is Step.MISS  # revalidated before it is served again
        assert (t.status.fwd, t.status.detail) == ("stale", "soft-purged")
        purger.apply(Purge(urls=(r.key(),)))
        t = r.transaction()
        await until(t, Step.LOOKUP)
        assert await t.st_lookup() is Step.MISS
        assert t.status.detail == "purged"
        assert r.stored() == []
        put(r, age=1)
        purger.ready = False  # not caught up with the coordinator: nothing is served
        t = r.transaction()
        await until(t, Step.LOOKUP)
        assert await t.st_lookup() is Step.MISS
        assert t.status.detail == "purges-resuming"
        purger.ready = True
        r.clock.advance(1)
        put(r, age=0)  # stored after the purges (by the node's clock): they spare it
        t = r.transaction()
        await until(t, Step.LOOKUP)
        assert await t.st_lookup() is Step.HIT


async def test_a_fill_asked_before_a_purge_is_not_joined_after_it(tmp_path: Path) -> None:
    """A fill that asked its upstream before a purge may bring the old object back: a
    client arriving after the purge fetches its own (the fill's start and the ban's
    time are on the same injected clock)."""
    async with rigged(purges=tmp_path) as r:
        purger = r.engine.purger
        assert purger is not None
        hold = asyncio.Event()
        r.upstream.script("/a", Reply(200, FRESH, b"old", hold=hold))
        r.upstream.script("/a", Reply(200, FRESH, b"new"))
        first = asyncio.create_task(r.transaction().run())
        while not r.upstream.to("/a"):
            await asyncio.sleep(0)
        r.clock.advance(1)
        purger.apply(Purge(urls=(r.key(),)))
        second = r.transaction()
        later = asyncio.create_task(second.run())
        for _ in range(1000):  # the second asks upstream itself, without waiting
            if len(r.upstream.to("/a")) == 2:
                break
            await asyncio.sleep(0)
        assert len(r.upstream.to("/a")) == 2
        hold.set()
        await asyncio.gather(first, later)
        assert sent(second).body == b"new"


# -- hit, stale, miss --------------------------------------------------------------------


async def test_hit_says_hit_with_the_ttl_left(r: Rig) -> None:
    put(r, age=15)
    t = r.transaction()
    await until(t, Step.HIT)
    assert await t.st_hit() is Step.DELIVER
    assert t.status.render() == "e1; hit; ttl=45"


async def test_stale_delivers_and_refreshes_in_the_background_once(r: Rig) -> None:
    put(r, (("Cache-Control", "max-age=60, stale-while-revalidate=30"), ("ETag", '"v1"')), age=70)
    hold = asyncio.Event()
    r.upstream.script(
        "/a", Reply(304, (("ETag", '"v1"'), ("Cache-Control", "max-age=60")), hold=hold)
    )
    t = r.transaction()
    await until(t, Step.STALE)
    assert await t.st_stale() is Step.DELIVER
    assert t.status.render() == "e1; hit; ttl=-10; detail=stale-while-revalidate"
    # A second stale reader joins the refresh under way instead of starting another.
    other = r.transaction()
    await until(other, Step.STALE)
    assert await other.st_stale() is Step.DELIVER
    hold.set()
    await r.settle()
    (asked,) = r.upstream.to("/a")
    assert asked.headers["If-None-Match"] == '"v1"'
    (entry,) = r.stored()
    assert entry.response_time == r.clock.now  # refreshed by the 304


async def test_miss_goes_to_fetch(r: Rig) -> None:
    t = r.transaction()
    await until(t, Step.MISS)
    assert await t.st_miss() is Step.FETCH
    assert r.upstream.sent == []  # the miss decides; the fetch asks


# -- fetch -------------------------------------------------------------------------------


async def test_fetch_starts_a_fill_and_delivers_from_it(r: Rig) -> None:
    r.upstream.script("/a", Reply(200, FRESH, b"from origin"))
    t = r.transaction(
        r.request(
            headers=(
                ("If-None-Match", '"old"'),
                ("Accept-Encoding", "gzip"),
                ("Range", "bytes=0-3,6-9"),
            )
        )
    )
    await until(t, Step.FETCH)
    assert await t.st_fetch() is Step.DELIVER
    assert t.fill is not None and t.head is not None and t.head.kind == "body"
    assert t.status.fwd_status == 200 and t.status.stored and not t.status.collapsed
    (asked,) = r.upstream.sent
    # The fill asks for the whole representation, unconditionally, in no coding (several
    # ranges are not passed on: edge.rfc.ranges.forwardable).
    assert asked.method == "GET"
    for name in ("If-None-Match", "Range", "Accept-Encoding"):
        assert name not in asked.headers
    assert asked.headers["Via"] == "1.1 e1" and "e1" in asked.headers["CDN-Loop"]
    await r.settle()
    (entry,) = r.stored()
    assert r.store.body(entry) == b"from origin"


@pytest.mark.parametrize(
    ("fields", "passed"),
    [
        ((("Range", "bytes=-5"),), "bytes=-5"),
        ((("Range", "bytes=0-3"), ("If-Range", '"v0"')), None),  # might make it the whole
        ((("Range", "bytes=0-3, 5-6"),), None),
    ],
    ids=["one-range", "if-range", "two-ranges"],
)
async def test_a_cold_range_is_passed_on_when_its_206_can_be_kept(
    r: Rig, fields: tuple[tuple[str, str], ...], passed: str | None
) -> None:
    r.upstream.script("/a", Reply(200, FRESH, b"from origin"))
    t = r.transaction(r.request(headers=fields))
    await until(t, Step.FETCH)
    assert await t.st_fetch() is Step.DELIVER
    (asked,) = r.upstream.sent
    assert asked.headers.get("Range") == passed
    assert "If-Range" not in asked.headers


def put_part(r: Rig, first: int, end: int, size: int = 10, *, age: float = 0.0) -> Entry:
    """A stored part [first, end) of b"0123456789", as edge.fetch.machine keeps one."""
    at = r.clock.now - age
    fields = (*FRESH, ("Date", formatdate(at, usegmt=True)))
    entry = dataclasses.replace(
        stored_entry(r.key("/a"), fields, at=at), size=size, part=(first, end)
    )
    return r.store.put(entry, b"0123456789"[first:end])


@pytest.mark.parametrize(
    ("spec", "body"), [("bytes=6-8", b"678"), ("bytes=6-", b"6789"), ("bytes=-1", b"9")]
)
async def test_a_stored_part_answers_the_ranges_inside_it(r: Rig, spec: str, body: bytes) -> None:
    put_part(r, 4, 10, age=5)
    t, channel = await r.run(r.request(headers=(("Range", spec),)))
    assert channel.status == 206 and channel.body == body
    assert t.walk[-3:] == [Step.HIT, Step.DELIVER, Step.DONE]
    assert r.upstream.sent == []


@pytest.mark.parametrize(
    ("fields", "part", "asked"),
    [
        ((), (0, 5), "bytes=5-"),
        ((("Range", "bytes=3-6"),), (4, 10), "bytes=0-3"),
        ((("Range", "bytes=5-6"), ("If-Range", '"other"')), (4, 10), "bytes=0-3"),
    ],
    ids=["whole", "range-past-it", "if-range-fails"],
)
async def test_a_stored_part_lacking_bytes_is_a_miss_that_asks_for_them(
    r: Rig, fields: tuple[tuple[str, str], ...], part: tuple[int, int], asked: str
) -> None:
    put_part(r, *part, age=5)
    rest = b"0123456789"[: part[0]] if part[0] else b"0123456789"[part[1] :]
    first, last = (0, part[0] - 1) if part[0] else (part[1], 9)
    r.upstream.script(
        "/a", Reply(206, [*FRESH, ("Content-Range", f"bytes {first}-{last}/10")], rest)
    )
    t = r.transaction(r.request(headers=fields))
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.MISS
    assert t.status.fwd == "partial"
    assert await t.st_miss() is Step.FETCH
    assert await t.st_fetch() is Step.DELIVER
    (sent,) = r.upstream.sent
    assert sent.headers["Range"] == asked and sent.headers["If-Range"] == '"v1"'
    await r.settle()
    (whole,) = r.stored()
    assert whole.part is None and r.store.body(whole) == b"0123456789"


async def test_a_head_on_a_stored_part_is_passed(r: Rig) -> None:
    put_part(r, 0, 5, age=5)
    t = r.transaction(r.request(method="HEAD"))
    await until(t, Step.LOOKUP)
    assert await t.st_lookup() is Step.PASS


async def test_fetch_joins_the_fill_in_flight(r: Rig) -> None:
    hold = asyncio.Event()
    r.upstream.script("/a", Reply(200, FRESH, b"once", hold=hold))
    first, second = r.transaction(), r.transaction()
    await until(first, Step.FETCH)
    await until(second, Step.FETCH)
    steps_named = asyncio.gather(first.st_fetch(), second.st_fetch())
    await asyncio.sleep(0)
    hold.set()
    assert await steps_named == [Step.DELIVER, Step.DELIVER]
    assert len(r.upstream.sent) == 1
    assert not first.status.collapsed and second.status.collapsed
    assert first.fill is second.fill


async def test_fetch_revalidates_a_stale_entry_and_delivers_it_refreshed(r: Rig) -> None:
    put(r, age=100)
    r.upstream.script("/a", Reply(304, (("ETag", '"v1"'), ("Cache-Control", "max-age=60"))))
    t = r.transaction()
    await until(t, Step.FETCH)
    assert await t.st_fetch() is Step.DELIVER
    assert t.status.fwd_status == 304 and t.status.ttl == 60
    assert r.upstream.sent[0].headers["If-None-Match"] == '"v1"'


async def test_fetch_hands_a_private_response_to_its_initiator_only(r: Rig) -> None:
    hold = asyncio.Event()
    r.upstream.script("/a", Reply(200, (("Cache-Control", "private"),), b"mine", hold=hold))
    first, second = r.transaction(), r.transaction()
    await until(first, Step.FETCH)
    await until(second, Step.FETCH)
    steps_named = asyncio.gather(first.st_fetch(), second.st_fetch())
    await asyncio.sleep(0)
    hold.set()
    assert await steps_named == [Step.DELIVER, Step.PASS]
    assert first.upstream_response is not None and second.upstream_response is None
    assert not second.status.collapsed


async def test_fetch_looks_again_after_another_process_stored_the_key(r: Rig) -> None:
    t = r.transaction()
    await until(t, Step.FETCH)
    put(r, age=0)  # stored by another worker between this lookup and this fetch
    assert await t.st_fetch() is Step.LOOKUP
    assert r.upstream.sent == []
    steps.move(t.walk, Step.LOOKUP)
    assert await t.st_lookup() is Step.HIT


async def test_fetch_goes_alone_after_three_rounds(r: Rig) -> None:
    t = r.transaction()
    await until(t, Step.FETCH)
    for expected in (Step.LOOKUP, Step.LOOKUP, Step.FETCH):
        put(r, (("Cache-Control", "no-store"),))  # changed again, and not usable
        assert await t.st_fetch() is expected
    assert r.upstream.sent == []


@pytest.mark.parametrize(("reply", "status"), [(down(), 502), (timeout(), 504)])
async def test_fetch_turns_an_upstream_failure_into_a_synth(
    r: Rig, reply: Reply, status: int
) -> None:
    r.upstream.script("/a", reply)
    t = r.transaction()
    await until(t, Step.FETCH)
    assert await t.st_fetch() is Step.SYNTH
    assert t.response is not None and t.response.status == status
    assert b"origin unreachable" not in t.response.body  # upstream text stays in the log


async def test_fetch_serves_stale_if_error(r: Rig) -> None:
    put(r, (("Cache-Control", "max-age=60, stale-if-error=600"), ("ETag", '"v1"')), age=120)
    r.upstream.script("/a", down())
    t = r.transaction()
    await until(t, Step.FETCH)
    assert await t.st_fetch() is Step.DELIVER
    assert t.status.hit and t.status.fwd == "stale"
    assert t.status.detail == "stale-if-error upstream-unreachable"


# -- pass --------------------------------------------------------------------------------


async def test_pass_forwards_the_request_and_its_body(r: Rig) -> None:
    r.upstream.script("/form?x=1", Reply(201, (("Content-Type", "text/plain"),), b"made"))
    body = MemoryBody([b"k=", b"v"])
    t = r.transaction(
        r.request(
            "/form?x=1", "POST", (("Content-Length", "3"), ("Expect", "100-continue")), body=body
        )
    )
    await until(t, Step.PASS)
    assert await t.st_pass() is Step.DELIVER
    (asked,) = r.upstream.sent
    assert (asked.method, asked.path, asked.body) == ("POST", "/form?x=1", b"k=v")
    assert asked.headers["Host"] == "site.test" and asked.client == "192.0.2.10"
    assert sent(t).continues == 1  # RFC 9110 Section 10.1.1: edge asks for the body
    assert t.status.fwd_status == 201


async def test_pass_invalidates_what_an_unsafe_method_changed(r: Rig) -> None:
    put(r, age=1)
    put(r, target="/b", age=1)
    r.upstream.script("/a", Reply(204, (("Content-Location", "/b"),)))
    t = r.transaction(r.request(method="DELETE"))
    await until(t, Step.PASS)
    assert await t.st_pass() is Step.DELIVER
    # RFC 9111 Section 4.4: the target URI and the Content-Location's.
    assert r.stored("/a") == [] and r.stored("/b") == []


async def test_pass_refuses_a_body_it_would_not_take() -> None:
    async with rigged(max_body_size=10) as r:
        fields = (("Transfer-Encoding", "chunked"), ("Expect", "100-continue"))
        body = MemoryBody([b"x" * 6, b"y" * 6])
        t = r.transaction(r.request(method="POST", headers=fields, body=body))
        await until(t, Step.PASS)
        assert await t.st_pass() is Step.SYNTH
        assert t.response is not None and t.response.status == 413 and t.response.close
        # No length to judge by: the client is asked for the body, read up to the bound.
        assert sent(t).continues == 1 and r.upstream.sent == []


async def test_pass_refuses_a_body_too_slow_by_the_engines_clock(r: Rig) -> None:
    timeout_s = r.engine.config.body_timeout
    body = MemoryBody([b"a", b"b"], r.clock, each=timeout_s)
    t = r.transaction(r.request(method="POST", headers=(("Content-Length", "2"),), body=body))
    await until(t, Step.PASS)
    assert await t.st_pass() is Step.SYNTH
    assert t.response is not None and t.response.status == 408
    assert r.upstream.sent == []


async def test_pass_turns_an_upstream_failure_into_a_synth(r: Rig) -> None:
    r.upstream.script("/a", timeout())
    t = r.transaction(r.request(method="POST"))
    await until(t, Step.PASS)
    assert await t.st_pass() is Step.SYNTH
    assert t.response is not None and t.response.status == 504
    assert t.status.detail == "upstream-timeout"


# -- deliver -----------------------------------------------------------------------------


async def test_deliver_a_stored_response_with_its_age(r: Rig) -> None:
    put(r, body=b"0123456789", age=10)
    r.clock.advance(5)  # delivery reads the clock again
    t = r.transaction()
    await until(t, Step.DELIVER)
    assert await t.st_deliver() is Step.DONE
    channel = sent(t)
    assert (channel.status, channel.body, channel.ended) == (200, b"0123456789", True)
    assert channel.headers["Age"] == "15"
    assert channel.headers["ETag"] == '"v1"'
    assert t.sent == 10


@pytest.mark.parametrize(
    ("fields", "status", "body", "extra"),
    [
        ((("If-None-Match", '"v1"'),), 304, b"", {}),
        ((("If-Match", '"v2"'),), 412, b"", {}),
        ((("Range", "bytes=2-4"),), 206, b"234", {"Content-Range": "bytes 2-4/10"}),
        ((("Range", "bytes=20-"),), 416, b"", {"Content-Range": "bytes */10"}),
    ],
)
async def test_deliver_answers_conditionals_and_ranges(
    r: Rig,
    fields: tuple[tuple[str, str], ...],
    status: int,
    body: bytes,
    extra: dict[str, str],
) -> None:
    put(r, body=b"0123456789", age=1)
    t = r.transaction(r.request(headers=fields))
    await until(t, Step.DELIVER)
    assert await t.st_deliver() is Step.DONE
    channel = sent(t)
    assert (channel.status, channel.body) == (status, body)
    for name, value in extra.items():
        assert channel.headers[name] == value
    assert cache_status(channel) == "e1; hit; ttl=59"


async def test_deliver_notes_a_client_that_went_away(r: Rig) -> None:
    r.upstream.script("/a", Reply(200, FRESH, pieces=[b"x" * 100] * 5, content_length=False))
    t = r.transaction(channel=MemoryChannel(gone_after=150))
    await until(t, Step.DELIVER)
    assert await t.st_deliver() is Step.DONE
    assert t.client_gone and not sent(t).aborted
    await r.settle()
    (entry,) = r.stored()  # the fill carried on without its client
    assert r.store.body(entry) == b"x" * 500


async def test_deliver_answers_502_for_a_small_body_the_upstream_broke(r: Rig) -> None:
    """A small fill is gathered before its head leaves: broken before it is whole, the
    client hears a clean 502 rather than a cut connection."""
    r.upstream.script(
        "/a",
        Reply(200, (*FRESH, ("Content-Length", "300")), pieces=[b"y" * 100], broken=broken_body()),
    )
    t = r.transaction()
    await until(t, Step.DELIVER)
    assert await t.st_deliver() is Step.DONE
    channel = sent(t)
    assert not channel.aborted and channel.head is not None and channel.head.status == 502
    await r.settle()
    assert r.stored() == []


async def test_deliver_cuts_a_big_body_the_upstream_broke(r: Rig) -> None:
    big = 256 << 10  # past the size a fill is gathered whole at: streamed, then cut
    r.upstream.script(
        "/a",
        Reply(
            200,
            (*FRESH, ("Content-Length", str(2 * big))),
            pieces=[b"y" * big],
            broken=broken_body(),
        ),
    )
    t = r.transaction()
    await until(t, Step.DELIVER)
    assert await t.st_deliver() is Step.DONE
    channel = sent(t)
    assert channel.aborted and t.cut and channel.body == b"y" * big
    await r.settle()
    assert r.stored() == []  # RFC 9111 Section 3.3: an incomplete response is not stored


# -- every move of the table, each by a whole walk ---------------------------------------

Scenario = Callable[[], Awaitable[Transaction]]
#: The scenarios that make each move, registered with `makes`.
SCENARIOS: dict[tuple[Step, Step], list[Scenario]] = {}


def makes(here: Step, to: Step) -> Callable[[Scenario], Scenario]:
    def register(scenario: Scenario) -> Scenario:
        SCENARIOS.setdefault((here, to), []).append(scenario)
        return scenario

    return register


@makes(Step.RECV, Step.HASH)
@makes(Step.HASH, Step.LOOKUP)
@makes(Step.LOOKUP, Step.MISS)
@makes(Step.MISS, Step.FETCH)
@makes(Step.FETCH, Step.DELIVER)
@makes(Step.DELIVER, Step.DONE)
async def a_cold_get_is_fetched_stored_and_delivered() -> Transaction:
    async with rigged() as r:
        r.upstream.script("/a?b=1", Reply(200, FRESH, b"cold"))
        t, channel = await r.run(r.request("/a?b=1"))
        assert (channel.status, channel.body) == (200, b"cold")
        assert cache_status(channel) == "e1; fwd=uri-miss; fwd-status=200; stored"
        assert [s.path for s in r.upstream.sent] == ["/a?b=1"]
        (entry,) = r.stored("/a?b=1")
        assert r.store.body(entry) == b"cold"
        return t


@makes(Step.LOOKUP, Step.HIT)
@makes(Step.HIT, Step.DELIVER)
async def a_fresh_stored_response_is_a_hit() -> Transaction:
    async with rigged() as r:
        put(r, body=b"warm", age=10)
        t, channel = await r.run()
        assert (channel.status, channel.body) == (200, b"warm")
        assert channel.headers["Age"] == "10"
        assert cache_status(channel) == "e1; hit; ttl=50"
        assert r.upstream.sent == []
        return t


@makes(Step.HIT, Step.DELIVER)
async def a_hit_answers_a_conditional_with_304() -> Transaction:
    async with rigged() as r:
        put(r, age=1)
        t, channel = await r.run(r.request(headers=(("If-None-Match", 'W/"v1"'),)))
        assert (channel.status, channel.body) == (304, b"")
        assert channel.headers["ETag"] == '"v1"'
        assert r.upstream.sent == []
        return t


@makes(Step.LOOKUP, Step.STALE)
@makes(Step.STALE, Step.DELIVER)
async def a_stale_response_within_swr_is_served_and_refreshed() -> Transaction:
    async with rigged() as r:
        swr = (("Cache-Control", "max-age=60, stale-while-revalidate=60"), ("ETag", '"v1"'))
        put(r, swr, b"old", age=90)
        r.upstream.script("/a", Reply(200, (*swr[:1], ("ETag", '"v2"')), b"new"))
        t, channel = await r.run()
        assert (channel.status, channel.body) == (200, b"old")
        assert "detail=stale-while-revalidate" in cache_status(channel)
        (asked,) = r.upstream.sent
        assert asked.headers["If-None-Match"] == '"v1"'
        (entry,) = r.stored()
        assert r.store.body(entry) == b"new"  # the refresh stored what it got
        return t


@makes(Step.STALE, Step.DELIVER)
async def a_stale_response_is_served_when_its_refresh_fails() -> Transaction:
    async with rigged() as r:
        put(r, (("Cache-Control", "max-age=60, stale-while-revalidate=60"),), b"old", age=90)
        before = r.stored()
        r.upstream.script("/a", down())
        t, channel = await r.run()
        assert (channel.status, channel.body) == (200, b"old")
        assert r.stored() == before and len(r.upstream.sent) == 1
        return t


@makes(Step.LOOKUP, Step.MISS)
@makes(Step.FETCH, Step.DELIVER)
async def a_stale_response_is_revalidated_and_served_refreshed() -> Transaction:
    async with rigged() as r:
        put(r, body=b"kept", age=100)
        r.upstream.script("/a", Reply(304, (("ETag", '"v1"'), ("Cache-Control", "max-age=60"))))
        t, channel = await r.run()
        assert (channel.status, channel.body) == (200, b"kept")
        assert cache_status(channel) == "e1; fwd=stale; fwd-status=304; ttl=60"
        assert channel.headers["Age"] == "0"
        (entry,) = r.stored()
        assert entry.response_time == r.clock.now
        return t


@makes(Step.LOOKUP, Step.MISS)
async def a_request_for_another_variant_misses() -> Transaction:
    async with rigged() as r:
        put(
            r,
            (*FRESH, ("Vary", "Accept-Language")),
            b"en",
            age=1,
            vary=(("accept-language", "en"),),
        )
        r.upstream.script("/a", Reply(200, (*FRESH, ("Vary", "Accept-Language")), b"fr"))
        t, channel = await r.run(r.request(headers=(("Accept-Language", "fr"),)))
        assert (channel.status, channel.body) == (200, b"fr")
        assert "fwd=vary-miss" in cache_status(channel)
        assert r.upstream.sent[0].headers["Accept-Language"] == "fr"
        assert sorted(r.store.body(e) or b"" for e in r.stored()) == [b"en", b"fr"]
        return t


@makes(Step.LOOKUP, Step.PASS)
@makes(Step.PASS, Step.DELIVER)
async def a_head_miss_is_passed_not_filled() -> Transaction:
    async with rigged() as r:
        r.upstream.script("/a", Reply(200, FRESH, b""))
        t, channel = await r.run(r.request(method="HEAD"))
        assert channel.status == 200 and channel.body == b""
        assert [s.method for s in r.upstream.sent] == ["HEAD"]
        assert r.stored() == []
        return t


@makes(Step.LOOKUP, Step.SYNTH)
async def only_if_cached_with_nothing_stored_is_504() -> Transaction:
    async with rigged() as r:
        t, channel = await r.run(r.request(headers=(("Cache-Control", "only-if-cached"),)))
        assert channel.status == 504 and channel.whole
        assert r.upstream.sent == []
        return t


@makes(Step.RECV, Step.PASS)
@makes(Step.PASS, Step.DELIVER)
async def a_post_is_forwarded_and_invalidates_the_stored() -> Transaction:
    async with rigged() as r:
        put(r, age=1)
        r.upstream.script("/a", Reply(200, (("Content-Type", "text/plain"),), b"posted"))
        body = MemoryBody([b"form"])
        t, channel = await r.run(
            r.request(method="POST", headers=(("Content-Length", "4"),), body=body)
        )
        assert (channel.status, channel.body) == (200, b"posted")
        assert cache_status(channel) == "e1; fwd=method; fwd-status=200"
        assert [(s.method, s.body) for s in r.upstream.sent] == [("POST", b"form")]
        assert r.stored() == []
        return t


@makes(Step.PASS, Step.SYNTH)
async def a_pass_to_an_upstream_that_is_down_is_502() -> Transaction:
    async with rigged() as r:
        r.upstream.script("/a", down())
        t, channel = await r.run(r.request(method="POST"))
        assert channel.status == 502
        assert "detail=upstream-unreachable" in channel.headers["Cache-Status"]
        assert b"could not be reached" in channel.body
        return t


@makes(Step.PASS, Step.SYNTH)
async def a_pass_whose_body_trickles_past_its_deadline_is_408() -> Transaction:
    async with rigged(body_timeout=5.0, body_min_rate=0) as r:
        body = MemoryBody([b"a", b"b", b"c"], r.clock, each=2.0)
        fields = (("Content-Length", "3"),)
        t, channel = await r.run(r.request(method="PUT", headers=fields, body=body))
        assert channel.status == 408 and channel.head is not None and channel.head.close
        assert r.upstream.sent == []
        return t


@makes(Step.RECV, Step.SYNTH)
async def a_request_that_looped_is_508() -> Transaction:
    async with rigged() as r:
        t, channel = await r.run(r.request(headers=(("CDN-Loop", "other, edge; node=e1"),)))
        assert channel.status == 508 and r.upstream.sent == []
        return t


@makes(Step.RECV, Step.SYNTH)
async def a_host_with_no_route_is_421() -> Transaction:
    async with rigged() as r:
        t, channel = await r.run(r.request(host="nobody.test"))
        assert channel.status == 421 and r.upstream.sent == []
        return t


@makes(Step.RECV, Step.SYNTH)
async def a_guard_refusal_is_synth_and_closes() -> Transaction:
    async with rigged() as r:
        fields = (("Content-Length", "3"), ("Transfer-Encoding", "chunked"))
        t, channel = await r.run(r.request(method="POST", headers=fields))
        assert channel.status == 400 and channel.head is not None and channel.head.close
        assert "detail=refused" in channel.headers["Cache-Status"]
        assert r.upstream.sent == []
        return t


@makes(Step.FETCH, Step.SYNTH)
async def a_miss_with_the_upstream_down_is_502() -> Transaction:
    async with rigged() as r:
        r.upstream.script("/a", down())
        t, channel = await r.run()
        assert channel.status == 502 and r.stored() == []
        assert channel.headers["Cache-Control"] == "no-store"
        return t


@makes(Step.FETCH, Step.SYNTH)
async def a_miss_with_the_upstream_timing_out_is_504() -> Transaction:
    async with rigged() as r:
        r.upstream.script("/a", timeout())
        t, channel = await r.run()
        assert channel.status == 504 and b"did not answer in time" in channel.body
        return t


@makes(Step.FETCH, Step.DELIVER)
async def a_stale_copy_stands_in_for_an_upstream_that_is_down() -> Transaction:
    async with rigged() as r:
        put(r, (("Cache-Control", "max-age=60, stale-if-error=300"),), b"old", age=100)
        r.upstream.script("/a", down())
        t, channel = await r.run()
        assert (channel.status, channel.body) == (200, b"old")
        assert 'detail="stale-if-error upstream-unreachable"' in cache_status(channel)
        return t


@makes(Step.FETCH, Step.PASS)
async def a_request_that_joined_a_private_fill_goes_on_its_own() -> Transaction:
    async with rigged() as r:
        hold = asyncio.Event()
        private = (("Cache-Control", "private"),)
        r.upstream.script(
            "/a", Reply(200, private, b"first", hold=hold), Reply(200, private, b"second")
        )
        first = asyncio.ensure_future(r.run())
        for _ in range(50):  # until the first one's fill has asked
            await asyncio.sleep(0)
            if r.upstream.sent:
                break
        second = asyncio.ensure_future(r.run())
        for _ in range(10):  # until the second one waits on the same fill
            await asyncio.sleep(0)
        hold.set()
        (t1, c1), (t2, c2) = await first, await second
        assert (c1.body, c2.body) == (b"first", b"second")
        assert len(r.upstream.sent) == 2 and r.stored() == []
        assert (Step.FETCH, Step.DELIVER) in moves(t1)
        return t2


@makes(Step.FETCH, Step.LOOKUP)
@makes(Step.FETCH, Step.FETCH)
async def a_key_another_process_keeps_changing_is_fetched_alone() -> Transaction:
    """Each fetch finds the key changed since its lookup (another worker keeps
    replacing it): three lookups again, then a fetch of its own."""

    class Churning(MemoryStore):
        def variants(self, key: str) -> list[Entry]:
            return list(super().variants(key))  # a new list: the key changed

    async with rigged(store=Churning()) as r:
        r.upstream.script("/a", Reply(200, FRESH, b"at last"))
        t, channel = await r.run()
        assert steps.render_walk(t.walk) == (
            "recv>hash>lookup>miss>fetch>lookup>miss>fetch>lookup>miss>fetch>fetch>deliver"
        )
        assert (channel.status, channel.body) == (200, b"at last")
        assert len(r.upstream.sent) == 1
        return t


@makes(Step.DELIVER, Step.DONE)
async def a_range_of_a_miss_is_served_from_the_fill() -> Transaction:
    async with rigged() as r:
        # The range is passed on; the origin ignores it (RFC 9110 Section 14.2 lets it)
        # and sends the whole, which is stored and the range served from.
        r.upstream.script("/a", Reply(200, FRESH, b"0123456789"))
        t, channel = await r.run(r.request(headers=(("Range", "bytes=-3"),)))
        assert (channel.status, channel.body) == (206, b"789")
        assert channel.headers["Content-Range"] == "bytes 7-9/10"
        assert r.upstream.sent[0].headers["Range"] == "bytes=-3"
        (entry,) = r.stored()
        assert r.store.body(entry) == b"0123456789"
        return t


# -- the driver refuses a move the table does not list -----------------------------------


async def test_the_driver_refuses_an_illegal_move_loudly(
    r: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def skips_the_fetch(t: Transaction) -> Step:
        return Step.DELIVER  # a miss must fetch

    monkeypatch.setitem(pipeline._STEPS, Step.MISS, skips_the_fetch)
    t = r.transaction()
    with pytest.raises(IllegalMove, match="miss -> deliver"):
        await t.run()
    assert steps.render_walk(t.walk) == "recv>hash>lookup>miss"
    assert not sent(t).started and r.upstream.sent == []
    # The refused walk is still counted, as every request is.
    counted = {"node": "e1", "cache_status": "uri-miss", "code": "0"}
    assert r.engine.metrics.registry.get_sample_value("edge_requests_total", counted) == 1


@makes(Step.FETCH, Step.DELIVER)
async def a_big_object_is_stored_as_slices_and_served_from_them() -> Transaction:
    async with rigged(slice_size=64 << 10, slice_threshold=128 << 10) as r:
        body = bytes(range(256)) * 800  # 200 KiB: four slices
        pieces = [body[i : i + 50_000] for i in range(0, len(body), 50_000)]
        r.upstream.script(
            "/a",
            Reply(
                200,
                (
                    *FRESH[:2],
                    ("Content-Type", "video/mp4"),
                    ("Accept-Ranges", "bytes"),  # ranges served: slices can be asked for later
                    ("Content-Length", str(len(body))),
                ),
                pieces=pieces,
            ),
        )
        t, channel = await r.run()
        assert (channel.status, len(channel.body)) == (200, len(body))
        assert channel.body == body
        (manifest,) = r.stored()
        assert (manifest.slice_size, manifest.size, manifest.slice_count) == (
            64 << 10,
            len(body),
            4,
        )
        for index in range(4):
            handle = r.store.open_slice(manifest, index)
            assert handle is not None
            start, end = manifest.slice_span(index)
            with handle:
                assert handle.read() == body[start:end]
        # A later range is answered from the stored slices alone.
        again, ranged = await r.run(r.request(headers=(("Range", "bytes=70000-70009"),)))
        assert (ranged.status, ranged.body) == (206, body[70000:70010])
        assert cache_status(ranged).startswith("e1; hit")
        assert steps.render_walk(again.walk) == "recv>hash>lookup>hit>deliver"
        assert len(r.upstream.sent) == 1
        return t


@makes(Step.DELIVER, Step.DONE)
async def a_compressible_hit_is_encoded_once_and_the_encoding_kept() -> Transaction:
    import gzip

    async with rigged() as r:
        text = b"the quick brown fox jumps over the lazy dog\n" * 200
        put(r, (*FRESH[:2], ("Content-Type", "text/plain")), text, age=1)
        gz = (("Accept-Encoding", "gzip"),)
        t, channel = await r.run(r.request(headers=gz))
        assert channel.status == 200 and channel.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in channel.headers["Vary"]
        assert gzip.decompress(channel.body) == text
        assert sorted(e.coding for e in r.stored()) == ["", "gzip"]  # kept beside it
        _, plain = await r.run()
        assert plain.body == text and "Content-Encoding" not in plain.headers
        assert r.upstream.sent == []
        return t


# -- the scenarios, run (after every one is registered) ----------------------------------

ALL_SCENARIOS = [
    pytest.param(here, to, scenario, id=f"{here.value}-{to.value}:{scenario.__name__}")
    for (here, to), listed in SCENARIOS.items()
    for scenario in listed
]


@pytest.mark.parametrize(("here", "to", "scenario"), ALL_SCENARIOS)
async def test_a_scenario_makes_its_move(here: Step, to: Step, scenario: Scenario) -> None:
    t = await scenario()
    assert (here, to) in moves(t), steps.render_walk(t.walk)


def test_every_registered_scenario_is_run() -> None:
    assert len(ALL_SCENARIOS) == sum(map(len, SCENARIOS.values()))


def test_every_move_has_a_scenario() -> None:
    table = {(here, to) for here, nexts in MOVES.items() for to in nexts}
    assert set(SCENARIOS) - table == set(), "a scenario for a move the table does not have"
    missing = sorted(f"{a.value} -> {b.value}" for a, b in table - set(SCENARIOS))
    assert missing == [], f"moves with no scenario: {missing}"
