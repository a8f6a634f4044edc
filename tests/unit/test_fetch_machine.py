"""The fetch machine (edge.fetch.machine), step by step: every move of its table is taken
by a fetch driven against an in-memory store, a scripted upstream and a manual clock
(tests/support/fakes.py); what every machine's table must hold is
tests/unit/test_steptable.py's. No socket, no process, no sleep."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from multidict import CIMultiDict

from edge.fetch import machine
from edge.fetch.fill import Fill
from edge.fetch.machine import (
    FINAL,
    MOVES,
    TABLE,
    Fetch,
    FetchRequest,
    FetchStep,
    UpstreamStatusError,
)
from edge.fetch.slices import slice_fill_key
from edge.pipeline.steps import Step
from edge.rfc.policy import CacheControl, parse_http_date, request_cache_control
from edge.steptable import IllegalMove
from edge.store.disk import Entry
from edge.upstream.pools import UpstreamError
from tests.support.fakes import (
    SLICE,
    SLICED,
    Reply,
    Rig,
    broken_body,
    down,
    rigged,
    stored_entry,
)

ROOT = Path(__file__).resolve().parents[2]
S = FetchStep

#: A big object's answers: ranges served, a strong validator (edge.fetch.machine.sliceable).
BIG_FIELDS = [("Cache-Control", "max-age=600"), ("Accept-Ranges", "bytes"), ("ETag", '"big"')]
BIG = bytes(range(256)) * (3 * SLICE // 256 + 8)  # three slices and a short fourth


@pytest.fixture
async def r() -> AsyncIterator[Rig]:
    async with rigged(**SLICED) as made:
        yield made


def ask(r: Rig, target: str = "/a", **kw: object) -> FetchRequest:
    """A fetch request as the client machine takes it for `target` on site.test."""
    fields = (("Host", "site.test"), ("Via", "1.1 e1"))
    return FetchRequest(
        key=r.key(target),
        target=target,
        fields=fields,
        client="192.0.2.10",
        cache_control=CacheControl(),
        **kw,  # type: ignore[arg-type]
    )


async def fetched(r: Rig, request: FetchRequest) -> tuple[Fetch, Fill]:
    """Start a fill of the request's key through the one way in, and run the machine."""
    claim = await r.engine.inflight.join_or_start(request.key, 0.0)
    assert claim.kind == "started" and claim.fill is not None
    fetch = Fetch(r.engine, request, claim.fill)
    await fetch.run()
    assert r.engine.inflight.get(request.key) is None, "a fetch that ended leaves the table"
    return fetch, claim.fill


def stored(r: Rig, target: str = "/a", **fields: str) -> Entry:
    headers = [("Cache-Control", "max-age=60"), ("ETag", '"v1"'), *fields.items()]
    return r.store.put(stored_entry(r.key(target), headers, at=r.clock.time() - 120), b"old body")


# -- the table -----------------------------------------------------------------------------


def test_a_fetch_ends_done_or_failed_and_every_step_may_fail() -> None:
    assert {S.DONE, S.ERROR, S.ABANDON} == FINAL
    # Every step may fail: waiters are never left without a head.
    assert all(S.ERROR in nexts for step, nexts in MOVES.items() if step not in FINAL)


def test_the_request_is_frozen() -> None:
    request = FetchRequest("http://site.test/a", "/a", (), "", CacheControl())
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.key = "http://site.test/b"  # type: ignore[misc]


# -- bereq -> headers -> beresp -> body -> store -> done ------------------------------------


async def test_a_whole_object_is_asked_for_kept_and_stored(
    r: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    r.upstream.script("/a", Reply(200, [("Cache-Control", "max-age=60")], b"hello", took=0.25))
    with caplog.at_level(logging.DEBUG, logger="edge.fetch.machine"):
        fetch, fill = await fetched(r, ask(r))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.BODY, S.STORE, S.DONE]
    assert "fetch of http://site.test/a: bereq>headers>beresp>body>store>done" in caplog.text
    (sent,) = r.upstream.sent
    assert (sent.method, sent.path, sent.client) == ("GET", "/a", "192.0.2.10")
    assert sent.headers["Host"] == "site.test" and "Range" not in sent.headers
    head = fill.head.result()
    assert (head.kind, head.status, head.length, head.storable) == ("body", 200, 5, True)
    (entry,) = r.stored()
    assert r.store.body(entry) == b"hello"
    assert entry.variant == head.variant
    # Times come from the upstream's answer, on the injected clock.
    assert entry.response_time - entry.request_time == 0.25
    assert (
        "Date",
        formatdate(entry.response_time, usegmt=True),
    ) in entry.headers  # RFC 9110 Section 6.6.1
    assert fill.finished and fill.failed is None and fill.written == 5
    assert r.upstream.bodies[0].released


async def test_the_store_drops_a_body_that_outgrew_the_limit(r: Rig) -> None:
    big = b"x" * ((1 << 20) + 1)  # no Content-Length: only the bytes tell
    r.upstream.script("/a", Reply(200, [("Cache-Control", "max-age=60")], pieces=[big]))
    fetch, fill = await fetched(r, ask(r))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.BODY, S.STORE, S.DONE]
    assert fill.head.result().storable is False
    assert r.stored() == [] and fill.written == len(big) and fill.failed is None


async def test_the_vary_key_is_taken_from_the_request_not_a_client(r: Rig) -> None:
    r.upstream.script(
        "/a", Reply(200, [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")], b"x")
    )
    request = dataclasses.replace(ask(r), fields=(("Host", "site.test"), ("Accept-Language", "fr")))
    await fetched(r, request)
    (entry,) = r.stored()
    assert entry.vary == (("accept-language", "fr;q=1"),)  # as normalised (RFC 9111 4.1)


# -- headers -> error ------------------------------------------------------------------------


async def test_an_upstream_that_fails_is_the_fills_error(r: Rig) -> None:
    r.upstream.script("/a", down())
    fetch, fill = await fetched(r, ask(r))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.ERROR]
    head = fill.head.result()
    assert head.kind == "error" and isinstance(head.error, UpstreamError)
    errors = r.engine.metrics.upstream_errors.labels("e1", "upstream-unreachable")
    assert errors._value.get() == 1
    assert r.stored() == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_is_an_error_when_stale_may_stand_in(r: Rig, status: int) -> None:
    r.upstream.script("/a", Reply(status, [], b"oops"))
    fetch, fill = await fetched(r, ask(r, stale_ok=True))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.ERROR]
    error = fill.head.result().error
    assert isinstance(error, UpstreamStatusError) and error.status == status
    assert r.upstream.bodies[0].released


async def test_a_5xx_goes_to_the_client_when_no_stale_may(r: Rig) -> None:
    r.upstream.script("/a", Reply(503, [], b"oops"))
    fetch, fill = await fetched(r, ask(r))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.PRIVATE, S.DONE]
    assert fill.head.result().status == 503


# -- headers -> freshen (a conditional fetch) ------------------------------------------------


async def test_a_304_freshens_the_entry_it_validated(r: Rig) -> None:
    entry = stored(r, **{"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})
    r.upstream.script("/a", Reply(304, [("Cache-Control", "max-age=300"), ("Set-Cookie", "a=1")]))
    request = ask(r, revalidate=entry, validators=(("If-None-Match", '"v1"'),))
    fetch, fill = await fetched(r, request)
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.FRESHEN, S.DONE]
    assert r.upstream.sent[0].headers["If-None-Match"] == '"v1"'
    head = fill.head.result()
    assert head.kind == "not-modified" and head.entry is not None
    (now,) = r.stored()
    assert now.variant == entry.variant and now.response_time == r.clock.time()
    fields = dict(now.headers)
    assert fields["Cache-Control"] == "max-age=300" and fields["ETag"] == '"v1"'
    assert "Set-Cookie" not in fields  # edge.rfc.policy.freshen_headers
    assert r.store.body(now) == b"old body"


async def test_a_304_without_date_dates_the_refreshed_entry_now(r: Rig) -> None:
    """RFC 9110 Section 6.6.1: a recipient with a clock dates a response that has no Date;
    the 304's date then replaces the stored one (RFC 9111 Section 4.3.4), so the
    entry just revalidated is not taken for two minutes old."""
    entry = stored(r, Date=formatdate(r.clock.time() - 120, usegmt=True))
    r.upstream.script("/a", Reply(304, [("Cache-Control", "max-age=300")], date=False))
    request = ask(r, revalidate=entry, validators=(("If-None-Match", '"v1"'),))
    await fetched(r, request)
    (now,) = r.stored()
    (date,) = [v for k, v in now.headers if k.lower() == "date"]
    assert parse_http_date(date) == int(r.clock.time())
    assert parse_http_date(dict(entry.headers)["Date"]) < int(r.clock.time()) - 60


async def test_a_response_without_date_is_stored_with_the_time_it_came(r: Rig) -> None:
    r.upstream.script("/a", Reply(200, [("Cache-Control", "max-age=60")], b"x", date=False))
    await fetched(r, ask(r))
    (now,) = r.stored()
    assert [parse_http_date(v) for k, v in now.headers if k.lower() == "date"] == [
        int(r.clock.time())
    ]


async def test_a_304_to_a_fetch_that_validated_nothing_is_not_a_freshen(r: Rig) -> None:
    r.upstream.script("/a", Reply(304, [], b""))
    fetch, fill = await fetched(r, ask(r))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.PRIVATE, S.DONE]
    assert fill.head.result().kind == "private"


# -- headers -> slice / refetch (a probe for one slice) ---------------------------------------


def _part(first: int, last: int, total: int = len(BIG), **more: str) -> Reply:
    fields = [*BIG_FIELDS, ("Content-Range", f"bytes {first}-{last}/{total}"), *more.items()]
    return Reply(206, fields, BIG[first : last + 1])


async def test_a_206_to_the_probe_is_kept_as_slices(r: Rig) -> None:
    r.upstream.script("/big", _part(2 * SLICE, 3 * SLICE - 1))
    fetch, fill = await fetched(r, ask(r, "/big", probe=2))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.SLICE, S.DONE]
    assert r.upstream.sent[0].headers["Range"] == f"bytes={2 * SLICE}-{3 * SLICE - 1}"
    head = fill.head.result()
    assert head.kind == "sliced" and head.status == 206 and head.entry is not None
    (manifest,) = r.stored("/big")
    assert (manifest.size, manifest.slice_size) == (len(BIG), SLICE)
    await r.settle()
    slice_file = r.store.open_slice(manifest, 2)
    assert slice_file is not None and slice_file.read() == BIG[2 * SLICE : 3 * SLICE]


@pytest.mark.parametrize(
    "answer",
    [
        _part(SLICE + 1, 2 * SLICE),  # not where a slice starts
        _part(SLICE, 2 * SLICE - 1, **{"Cache-Control": "no-store"}),  # not storable
        _part(SLICE, 2 * SLICE - 1, total=2 * SLICE),  # not big enough to slice
    ],
    ids=["unaligned", "no-store", "small"],
)
async def test_a_206_not_worth_slicing_is_refetched_whole(r: Rig, answer: Reply) -> None:
    whole = Reply(200, [("Cache-Control", "max-age=60")], b"whole")
    r.upstream.script("/big", answer, whole)
    fetch, _ = await fetched(r, ask(r, "/big", probe=1))
    assert fetch.walk == [
        *(S.BEREQ, S.HEADERS, S.SLICE, S.REFETCH),
        *(S.HEADERS, S.BERESP, S.BODY, S.STORE, S.DONE),
    ]
    assert r.upstream.bodies[0].closed
    assert "Range" not in r.upstream.sent[1].headers
    (entry,) = r.stored("/big")
    assert r.store.body(entry) == b"whole" and entry.slice_size == 0


async def test_a_probe_answered_otherwise_asks_again_without_range_or_validators(
    r: Rig,
) -> None:
    entry = stored(r, "/big")
    r.upstream.script(
        "/big", Reply(416, [("Content-Range", "bytes */10")]), Reply(200, [], b"short")
    )
    request = ask(r, "/big", probe=0, revalidate=entry, validators=(("If-None-Match", '"v1"'),))
    fetch, _ = await fetched(r, request)
    assert fetch.walk[:5] == [S.BEREQ, S.HEADERS, S.REFETCH, S.HEADERS, S.BERESP]
    first, second = r.upstream.sent
    assert "Range" in first.headers and "If-None-Match" in first.headers
    assert "Range" not in second.headers and "If-None-Match" not in second.headers
    assert second.headers["Host"] == "site.test"


async def test_a_5xx_to_the_probe_is_an_error_when_stale_may_stand_in(r: Rig) -> None:
    r.upstream.script("/big", Reply(503, []))
    fetch, fill = await fetched(r, ask(r, "/big", probe=0, stale_ok=True))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.ERROR]
    assert isinstance(fill.head.result().error, UpstreamStatusError)


# -- headers -> partial / combine (RFC 9111 Sections 3.3 and 3.4) ---------------------------

OBJECT = bytes(range(100))  # a small object's bytes: byte N is N


def _piece(first: int, last: int, total: int = 100, **more: str) -> Reply:
    """A 206 with bytes [first, last] of OBJECT (Content-Length from its body)."""
    fields = list({"Cache-Control": "max-age=600", "ETag": '"v1"', **more}.items())
    fields.append(("Content-Range", f"bytes {first}-{last}/{total}"))
    return Reply(206, fields, OBJECT[first : last + 1])


def stored_part(r: Rig, first: int, end: int, **fields: str) -> Entry:
    """A stored part [first, end) of OBJECT, as st_partial keeps one."""
    headers = [("Cache-Control", "max-age=600"), *fields.items()]
    entry = dataclasses.replace(
        stored_entry(r.key("/a"), headers, at=r.clock.time()), size=100, part=(first, end)
    )
    return r.store.put(entry, OBJECT[first:end])


async def test_a_206_to_the_clients_range_is_kept_as_the_part_it_is(r: Rig) -> None:
    r.upstream.script("/a", _piece(10, 19))
    fetch, fill = await fetched(r, ask(r, range="bytes=10-19"))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.PARTIAL, S.BODY, S.STORE, S.DONE]
    assert r.upstream.sent[0].headers["Range"] == "bytes=10-19"
    # Its initiator gets the 206 as it came.
    head = fill.head.result()
    assert (head.kind, head.status, head.length) == ("body", 206, 10)
    assert ("Content-Range", "bytes 10-19/100") in head.headers
    # Stored as what it is of the 200: its span, and the complete length.
    (entry,) = r.stored()
    assert (entry.status, entry.size, entry.part) == (200, 100, (10, 20))
    assert r.store.body(entry) == OBJECT[10:20]
    names = {name.lower() for name, _ in entry.headers}
    assert "content-range" not in names and "content-length" not in names


async def test_a_206_holding_every_byte_is_the_whole_response(r: Rig) -> None:
    r.upstream.script("/a", _piece(0, 99))
    fetch, fill = await fetched(r, ask(r, range="bytes=0-"))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.PARTIAL, S.BERESP, S.BODY, S.STORE, S.DONE]
    assert fill.head.result().status == 200
    (entry,) = r.stored()
    assert (entry.status, entry.size, entry.part) == (200, 100, None)
    assert r.store.body(entry) == OBJECT


async def test_a_206_holding_every_byte_of_a_big_object_is_cut_into_slices(r: Rig) -> None:
    fields = [*BIG_FIELDS, ("Content-Range", f"bytes 0-{len(BIG) - 1}/{len(BIG)}")]
    r.upstream.script("/big", Reply(206, fields, BIG))
    fetch, fill = await fetched(r, ask(r, "/big", range="bytes=0-"))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.PARTIAL, S.BERESP, S.STREAM, S.DONE]
    manifest = fill.head.result().entry
    assert manifest is not None
    r.engine.slicer.reading((manifest.key, manifest.variant), +1)  # a reader along
    await r.settle()
    got = b""
    for index in range(manifest.slice_count):  # every slice, not the first alone
        piece = r.store.open_slice(manifest, index)
        assert piece is not None
        got += piece.read()
    assert got == BIG


async def test_a_206_to_the_clients_range_of_a_big_object_starting_a_slice_is_that_slice(
    r: Rig,
) -> None:
    """A big object is kept as slices however its first request found it: a part of
    it that starts a slice and holds it is that slice (the rest come as needed)."""
    r.upstream.script("/big", _part(SLICE, len(BIG) - 1))
    fetch, fill = await fetched(r, ask(r, "/big", range=f"bytes={SLICE}-"))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.PARTIAL, S.SLICE, S.DONE]
    head = fill.head.result()
    assert head.kind == "sliced" and head.entry is not None
    await r.settle()
    kept = r.store.open_slice(head.entry, 1)
    assert kept is not None and kept.read() == BIG[SLICE : 2 * SLICE]
    assert r.store.open_slice(head.entry, 2) is None  # one slice, as a probe's
    assert r.upstream.bodies[0].closed


async def test_a_206_to_the_clients_range_of_a_big_object_elsewhere_asks_its_slice(
    r: Rig,
) -> None:
    """A part of a big object that does not hold the slice it starts in is not kept:
    that slice is asked for, as a seek past the threshold asks (a probe)."""
    r.upstream.script("/big", _part(SLICE + 100, SLICE + 199), _part(SLICE, 2 * SLICE - 1))
    fetch, fill = await fetched(r, ask(r, "/big", range=f"bytes={SLICE + 100}-{SLICE + 199}"))
    assert fetch.walk == [
        *(S.BEREQ, S.HEADERS, S.PARTIAL, S.REFETCH),
        *(S.HEADERS, S.SLICE, S.DONE),
    ]
    first, second = r.upstream.sent
    assert first.headers["Range"] == f"bytes={SLICE + 100}-{SLICE + 199}"
    assert second.headers["Range"] == f"bytes={SLICE}-{2 * SLICE - 1}"
    assert r.upstream.bodies[0].closed
    head = fill.head.result()
    assert head.kind == "sliced" and head.entry is not None
    await r.settle()
    kept = r.store.open_slice(head.entry, 1)
    assert kept is not None and kept.read() == BIG[SLICE : 2 * SLICE]


async def test_a_reprobe_answered_otherwise_fetches_the_whole(r: Rig) -> None:
    whole = Reply(200, [*BIG_FIELDS, ("Content-Length", str(len(BIG)))], BIG)
    r.upstream.script("/big", _part(SLICE + 100, SLICE + 199), _part(SLICE + 1, 2 * SLICE), whole)
    fetch, _ = await fetched(r, ask(r, "/big", range=f"bytes={SLICE + 100}-{SLICE + 199}"))
    assert fetch.walk == [
        *(S.BEREQ, S.HEADERS, S.PARTIAL, S.REFETCH, S.HEADERS, S.SLICE, S.REFETCH),
        *(S.HEADERS, S.BERESP, S.STREAM, S.DONE),
    ]
    assert "Range" not in r.upstream.sent[2].headers


@pytest.mark.parametrize(
    "answer",
    [
        # RFC 9110 Section 14.4: 4-9 is six bytes; five came. No byte has a known place.
        Reply(206, [("Cache-Control", "max-age=600"), ("Content-Range", "bytes 4-9/10")], b"01234"),
        _piece(10, 19, **{"Cache-Control": "no-store"}),
    ],
    ids=["span-not-body", "no-store"],
)
async def test_a_206_that_cannot_be_kept_goes_to_its_initiator_alone(r: Rig, answer: Reply) -> None:
    r.upstream.script("/a", answer)
    fetch, fill = await fetched(r, ask(r, range="bytes=-5"))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.PARTIAL, S.PRIVATE, S.DONE]
    assert fill.head.result().kind == "private" and r.stored() == []


async def test_a_206_that_names_no_span_is_refetched_whole(r: Rig) -> None:
    r.upstream.script(
        "/a",
        Reply(206, [("Cache-Control", "max-age=600")], b"what?"),
        Reply(200, [("Cache-Control", "max-age=600")], OBJECT),
    )
    fetch, _ = await fetched(r, ask(r, range="bytes=0-4"))
    assert fetch.walk[:5] == [S.BEREQ, S.HEADERS, S.PARTIAL, S.REFETCH, S.HEADERS]
    assert "Range" not in r.upstream.sent[1].headers
    (entry,) = r.stored()
    assert entry.part is None and r.store.body(entry) == OBJECT


@pytest.mark.parametrize(
    ("part", "asked"), [((0, 40), "bytes=40-"), ((60, 100), "bytes=0-59")], ids=["head", "tail"]
)
async def test_a_part_and_what_it_lacks_are_combined_into_the_whole(
    r: Rig, part: tuple[int, int], asked: str
) -> None:
    entry = stored_part(r, *part, ETag='"v1"')
    first, last = (40, 99) if part[0] == 0 else (0, 59)
    r.upstream.script("/a", _piece(first, last, **{"Cache-Control": "max-age=900"}))
    fetch, fill = await fetched(r, ask(r, complete=entry))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.COMBINE, S.BODY, S.STORE, S.DONE]
    sent = r.upstream.sent[0].headers
    assert sent["Range"] == asked and sent["If-Range"] == '"v1"'  # RFC 9110 13.1.5
    head = fill.head.result()
    assert (head.status, head.length) == (200, 100) and fill.written == 100
    (whole,) = r.stored()
    assert (whole.part, whole.size, whole.status) == (None, 100, 200)
    assert r.store.body(whole) == OBJECT
    # Section 3.4: the combined response has the new response's fields.
    assert ("Cache-Control", "max-age=900") in whole.headers


@pytest.mark.parametrize(
    ("stored_fields", "answer"),
    [
        ({"ETag": '"v1"'}, _piece(40, 99, ETag='"v2"')),  # another representation
        ({"ETag": '"v1"'}, _piece(40, 98)),  # not what the part lacks
        ({}, _piece(40, 99)),  # no strong validator: nothing says they belong together
        ({"ETag": 'W/"v1"'}, _piece(40, 99, ETag='W/"v1"')),  # a weak one does not either
    ],
    ids=["changed", "short", "no-validator", "weak"],
)
async def test_a_part_that_may_not_be_combined_is_fetched_whole(
    r: Rig, stored_fields: dict[str, str], answer: Reply
) -> None:
    entry = stored_part(r, 0, 40, **stored_fields)
    r.upstream.script("/a", answer, Reply(200, [("Cache-Control", "max-age=600")], OBJECT))
    fetch, _ = await fetched(r, ask(r, complete=entry))
    assert fetch.walk == [
        *(S.BEREQ, S.HEADERS, S.COMBINE, S.REFETCH),
        *(S.HEADERS, S.BERESP, S.BODY, S.STORE, S.DONE),
    ]
    assert "Range" not in r.upstream.sent[1].headers
    (whole,) = r.stored()
    assert whole.part is None and r.store.body(whole) == OBJECT


async def test_a_200_to_the_completion_is_the_new_whole(r: Rig) -> None:
    entry = stored_part(r, 0, 40, ETag='"v1"')
    r.upstream.script(
        "/a", Reply(200, [("Cache-Control", "max-age=600"), ("ETag", '"v2"')], b"new")
    )
    fetch, _ = await fetched(r, ask(r, complete=entry))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.BODY, S.STORE, S.DONE]
    (whole,) = r.stored()
    assert whole.part is None and r.store.body(whole) == b"new"


async def test_a_part_in_the_middle_is_completed_by_the_whole(r: Rig) -> None:
    entry = stored_part(r, 20, 40, ETag='"v1"')
    r.upstream.script("/a", Reply(200, [("Cache-Control", "max-age=600")], OBJECT))
    fetch, _ = await fetched(r, ask(r, complete=entry))
    assert "Range" not in r.upstream.sent[0].headers  # two ranges cost nearly the whole
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.BODY, S.STORE, S.DONE]


async def test_a_part_evicted_before_it_is_combined_breaks_the_fill(r: Rig) -> None:
    entry = stored_part(r, 0, 40, ETag='"v1"')
    r.store.lose(entry)
    r.upstream.script("/a", _piece(40, 99))
    fetch, fill = await fetched(r, ask(r, complete=entry))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.COMBINE, S.BODY, S.ABANDON]
    assert "stored part went" in str(fill.failed)


# -- beresp -> private / stream ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [[("Cache-Control", "no-store")], [("Cache-Control", "private")], [("Vary", "*")]],
    ids=["no-store", "private", "vary-star"],
)
async def test_what_may_not_be_stored_goes_to_the_initiator_alone(
    r: Rig, fields: list[tuple[str, str]]
) -> None:
    r.upstream.script("/a", Reply(200, fields, b"mine"))
    fetch, fill = await fetched(r, ask(r))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.PRIVATE, S.DONE]
    head = fill.head.result()
    assert head.kind == "private" and head.response is not None
    assert not r.upstream.bodies[0].closed  # handed on, not let go: the initiator relays it
    assert r.stored() == []


async def test_the_requests_own_no_store_is_the_fetchs(r: Rig) -> None:
    r.upstream.script("/a", Reply(200, [("Cache-Control", "max-age=60")], b"x"))
    no_store = request_cache_control(CIMultiDict([("Cache-Control", "no-store")]))
    fetch, _ = await fetched(r, dataclasses.replace(ask(r), cache_control=no_store))
    assert S.PRIVATE in fetch.walk and r.stored() == []


async def test_a_big_object_is_cut_into_slices_as_it_arrives(r: Rig) -> None:
    pieces = [BIG[i : i + 10_000] for i in range(0, len(BIG), 10_000)]
    r.upstream.script(
        "/big", Reply(200, [*BIG_FIELDS, ("Content-Length", str(len(BIG)))], pieces=pieces)
    )
    fetch, fill = await fetched(r, ask(r, "/big"))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.STREAM, S.DONE]
    head = fill.head.result()
    assert head.kind == "sliced" and head.status == 200 and head.entry is not None
    manifest = head.entry
    r.engine.slicer.reading((manifest.key, manifest.variant), +1)  # a reader along
    await r.settle()
    got = b""
    for index in range(manifest.slice_count):
        piece = r.store.open_slice(manifest, index)
        assert piece is not None
        got += piece.read()
    assert got == BIG


async def test_a_stream_stops_where_a_range_fill_already_brings_the_slice(r: Rig) -> None:
    """A parallel downloader's first request reads the object whole while its other
    ranges fetch slices further on: the stream stops at the first slice another fill
    brings rather than read (and drop) bytes the origin already sends, so each byte
    comes once. The bytes past that point are for their readers to fetch."""
    pieces = [BIG[i : i + 10_000] for i in range(0, len(BIG), 10_000)]
    r.upstream.script(
        "/big", Reply(200, [*BIG_FIELDS, ("Content-Length", str(len(BIG)))], pieces=pieces)
    )
    _, fill = await fetched(r, ask(r, "/big"))
    manifest = fill.head.result().entry
    assert manifest is not None
    # A reader ahead starts the range fill of slice 2 before the stream gets there.
    claim = await r.engine.inflight.join_or_start(slice_fill_key(manifest, 2))
    assert claim.kind == "started" and claim.fill is not None
    r.engine.slicer.reading((manifest.key, manifest.variant), +1)  # a reader along
    await r.settle()
    body = r.upstream.bodies[0]
    assert body.closed and not body.read_to_end
    for index in (0, 1):
        piece = r.store.open_slice(manifest, index)
        assert piece is not None
        assert piece.read() == BIG[index * SLICE : (index + 1) * SLICE]
    assert r.store.open_slice(manifest, 2) is None  # the range fill's to bring
    assert r.store.open_slice(manifest, 3) is None  # its reader's to fetch
    claim.fill.finish()
    r.engine.inflight.done(claim.fill)


async def test_an_object_over_the_limit_is_not_stored_even_if_sliceable(r: Rig) -> None:
    huge = [*BIG_FIELDS, ("Content-Length", str(2 << 20))]
    r.upstream.script("/big", Reply(200, huge, pieces=[b"x" * (2 << 20)]))
    fetch, _ = await fetched(r, ask(r, "/big"))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.PRIVATE, S.DONE]


# -- body -> abandon, and any step -> error ---------------------------------------------------


async def test_a_body_that_breaks_is_abandoned(r: Rig) -> None:
    reply = Reply(200, [("Cache-Control", "max-age=60")], pieces=[b"part"], broken=broken_body())
    r.upstream.script("/a", reply)
    fetch, fill = await fetched(r, ask(r))
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.BERESP, S.BODY, S.ABANDON]
    assert isinstance(fill.failed, UpstreamError) and fill.written == 4
    assert r.stored() == []
    assert fetch.writer is not None and not fetch.writer.path.exists()


async def test_a_body_shorter_than_its_length_is_abandoned(r: Rig) -> None:
    fields = [("Cache-Control", "max-age=60"), ("Content-Length", "10")]
    r.upstream.script("/a", Reply(200, fields, pieces=[b"12345"]))
    fetch, fill = await fetched(r, ask(r))
    assert fetch.walk[-1] is S.ABANDON
    assert "5 of 10 bytes" in str(fill.failed)


@pytest.mark.parametrize(
    ("broken", "script", "walk"),
    [
        ("commit", Reply(200, [("Cache-Control", "max-age=60")], b"x"), [S.BODY, S.STORE]),
        ("update", Reply(304, []), [S.FRESHEN]),
        (
            "commit_manifest",
            Reply(200, [*BIG_FIELDS, ("Content-Length", str(len(BIG)))], BIG),
            [S.BERESP, S.STREAM],
        ),
        ("begin", Reply(200, [("Cache-Control", "max-age=60")], b"x"), [S.BODY]),
    ],
)
async def test_a_step_that_raises_ends_in_error_and_nobody_waits_forever(
    r: Rig, broken: str, script: Reply, walk: list[FetchStep], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object) -> None:
        raise OSError(f"{broken} failed")

    monkeypatch.setattr(r.store, broken, fail)
    entry = stored(r)
    r.upstream.script("/a", script)
    fetch, fill = await fetched(r, ask(r, revalidate=entry))
    assert fetch.walk[-len(walk) - 1 :] == [*walk, S.ERROR]
    assert fill.head.done() and fill.finished
    assert str(fill.failed) == f"{broken} failed"
    if fill.head.result().kind == "error":  # no head was given yet: the error is the head
        assert "failed" in str(fill.head.result().error)


async def test_a_move_the_table_does_not_list_is_refused_loudly(
    r: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def wrong(fetch: Fetch) -> FetchStep:
        return S.STORE  # bereq may only go to headers (or fail)

    monkeypatch.setitem(machine._STEPS, S.BEREQ, wrong)
    request = ask(r)
    claim = await r.engine.inflight.join_or_start(request.key, 0.0)
    assert claim.fill is not None
    with pytest.raises(IllegalMove, match="bereq -> store is not a move of the fetch machine"):
        await Fetch(r.engine, request, claim.fill).run()
    # The clients waiting on the fill still hear of it, and the key is free again.
    assert claim.fill.head.result().kind == "error" and claim.fill.finished
    assert r.engine.inflight.get(request.key) is None
    assert r.upstream.sent == []


async def test_a_fetch_that_loops_is_stopped(r: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def again(fetch: Fetch) -> FetchStep:
        return S.REFETCH

    monkeypatch.setitem(machine._STEPS, S.HEADERS, again)
    request = ask(r)
    claim = await r.engine.inflight.join_or_start(request.key, 0.0)
    assert claim.fill is not None
    fetch = Fetch(r.engine, request, claim.fill)
    with pytest.raises(IllegalMove, match="longer than 12"):
        await fetch.run()
    assert len(fetch.walk) == TABLE.max_steps


async def test_a_fetch_stopped_with_the_node_gives_its_waiters_an_error(r: Rig) -> None:
    hold = asyncio.Event()
    r.upstream.script("/a", Reply(200, [], b"x", hold=hold))
    request = ask(r)
    claim = await r.engine.inflight.join_or_start(request.key, 0.0)
    assert claim.fill is not None
    machine.start(r.engine, claim.fill, request)
    await _until(lambda: bool(r.upstream.sent))
    await r.engine.inflight.close()
    assert claim.fill.head.result().kind == "error"
    assert r.engine.inflight.get(request.key) is None


# -- the client's side: what it hands over, and the one way in -------------------------------


async def test_the_fetch_reads_nothing_of_the_client_that_started_it(r: Rig) -> None:
    """The client's state may change while its fill runs (it looks again, it goes):
    the fetch acts on the request it was given."""
    hold = asyncio.Event()
    r.upstream.script("/a", Reply(200, [("Cache-Control", "max-age=60")], b"hello", hold=hold))
    t = r.transaction(r.request("/a", headers=[("Accept-Language", "fr")]))
    walk = asyncio.ensure_future(t.run())
    await _until(lambda: bool(r.upstream.sent))
    t.request_cc = CacheControl({"no-store": None})
    t.key, t.key_target = "http://elsewhere.test/b", "/b"
    hold.set()
    await walk
    await r.settle()
    (entry,) = r.stored("/a")
    assert r.store.body(entry) == b"hello"
    assert r.store.variants("http://elsewhere.test/b") == []


async def test_the_client_hands_over_its_fields_validators_and_probe(r: Rig) -> None:
    entry = stored(r, **{"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})
    r.upstream.script("/a", Reply(304, [("Cache-Control", "max-age=60")]))
    headers = [("If-None-Match", '"client"'), ("Range", "bytes=0-1"), ("Accept-Encoding", "br")]
    t, channel = await r.run(r.request("/a", headers=headers))
    (sent,) = r.upstream.sent
    # The client's own conditionals, ranges and codings are its own; ours are sent.
    assert sent.headers.getall("If-None-Match") == ['"v1"']
    assert sent.headers["If-Modified-Since"] == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert "Range" not in sent.headers and "Accept-Encoding" not in sent.headers
    assert sent.headers["Host"] == "site.test" and sent.client == "192.0.2.10"
    assert t.walk[-4:] == [Step.MISS, Step.FETCH, Step.DELIVER, Step.DONE]
    assert r.stored()[0].variant == entry.variant and channel.status in (200, 206)


async def test_a_stale_refresh_goes_through_the_fetch_machine(r: Rig) -> None:
    fields = [("Cache-Control", "max-age=1, stale-while-revalidate=600"), ("ETag", '"v1"')]
    r.store.put(stored_entry(r.key("/a"), fields, at=r.clock.time() - 60), b"old")
    r.upstream.script("/a", Reply(304, [("Cache-Control", "max-age=60")]))
    t, channel = await r.run()
    assert channel.body == b"old" and t.walk[-3:] == [Step.STALE, Step.DELIVER, Step.DONE]
    (sent,) = r.upstream.sent
    assert sent.headers["If-None-Match"] == '"v1"'
    assert r.stored()[0].response_time == r.clock.time()


async def test_a_crowd_makes_one_fetch(r: Rig) -> None:
    hold = asyncio.Event()
    r.upstream.script("/a", Reply(200, [("Cache-Control", "max-age=60")], b"one", hold=hold))
    walks = [asyncio.ensure_future(r.run()) for _ in range(5)]
    await _until(lambda: bool(r.upstream.sent))
    hold.set()
    done = await asyncio.gather(*walks)
    assert len(r.upstream.sent) == 1
    assert [channel.body for _, channel in done] == [b"one"] * 5
    assert sum(t.status.collapsed for t, _ in done) == 4


def test_fills_start_only_through_join_or_start() -> None:
    """No module but the fill table's own starts a fill behind its back: whole objects,
    stale refreshes, slices and derived bodies all come through join_or_start."""
    starts = []
    for path in sorted((ROOT / "edge").rglob("*.py")):
        if path.name == "fill.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            behind = (
                isinstance(node, ast.Attribute)
                and node.attr in ("start", "_fills", "join_or_start_now")
                and "inflight" in ast.unparse(node.value).lower()
            )
            made = isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Fill")
            if behind or made:
                starts.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert starts == []
    callers = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "edge").rglob("*.py")
        if ".join_or_start(" in path.read_text()
    }
    assert callers == {
        "edge/pipeline/transaction.py",
        "edge/fetch/slices.py",
        "edge/fetch/derive.py",
    }


# -- helpers ------------------------------------------------------------------------------


async def _until(ready: Callable[[], bool], turns: int = 200) -> None:
    """Let the loop turn until `ready()` (bounded: a test never hangs on it)."""
    for _ in range(turns):
        if ready():
            return
        await asyncio.sleep(0)
    raise AssertionError("never became ready")
