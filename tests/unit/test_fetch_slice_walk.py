"""The fetch machine's slice walk (edge.fetch.machine.start_slice): one slice of an object
already kept as slices, asked for by range under a precondition from its manifest
(edge.fetch.slices.SliceOf), checked against the manifest and stored as that slice; and
the read-ahead of a reader (edge.fetch.slices.SlicedSource): the next slice of its range
asked for while it reads this one, never past the range, never twice.
Driven against an in-memory store, a scripted upstream and a manual clock
(tests/support/fakes.py): no socket, no process, no sleep."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator

import pytest

from edge.fetch import machine
from edge.fetch.fill import Fill
from edge.fetch.machine import Fetch, FetchStep, ObjectChanged
from edge.fetch.slices import FileSegment, SlicedSource, SliceOf, slice_fill_key
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

BIG = bytes(range(256)) * (3 * SLICE // 256 + 8)  # three slices and a short fourth
S = FetchStep
#: The hop's own fields, as the client machine hands them to a slice (_slice_headers).
FIELDS = [("Host", "site.test"), ("Via", "1.1 e1")]


@pytest.fixture
async def r() -> AsyncIterator[Rig]:
    async with rigged(**SLICED) as made:
        yield made


def manifest(r: Rig, **fields: str) -> Entry:
    """A segmented entry of BIG under /big, fresh, with no slice stored yet."""
    headers = [("Cache-Control", "max-age=600"), ("Accept-Ranges", "bytes"), *fields.items()]
    entry = stored_entry(r.key("/big"), headers, at=r.clock.time())
    return r.store.put(dataclasses.replace(entry, size=len(BIG), slice_size=SLICE))


def part(
    first: int,
    last: int,
    total: int = len(BIG),
    status: int = 206,
    validator: dict[str, str] | None = None,
) -> Reply:
    """The upstream's answer with bytes [first, last] of BIG, under `validator`."""
    fields = {"Accept-Ranges": "bytes", **(validator or {"ETag": '"big"'})}
    fields["Content-Range"] = f"bytes {first}-{last}/{total}"
    return Reply(status, list(fields.items()), BIG[first : last + 1])


async def walked(r: Rig, entry: Entry, index: int) -> tuple[Fetch, Fill]:
    """Start the slice's fill through the one way in and run its walk to the end."""
    claim = await r.engine.inflight.join_or_start(slice_fill_key(entry, index), 0.0)
    assert claim.kind == "started" and claim.fill is not None
    fetch = machine.start_slice(r.engine.slicer.node, claim.fill, SliceOf(entry, index), FIELDS)
    await r.settle()
    assert r.engine.inflight.get(claim.fill.key) is None, "a walk that ended leaves the table"
    return fetch, claim.fill


def stored_slice(r: Rig, entry: Entry, index: int) -> bytes | None:
    handle = r.store.open_slice(entry, index)
    if handle is None:
        return None
    with handle:
        return handle.read()


def latency_samples(r: Rig) -> float | None:
    return r.engine.metrics.registry.get_sample_value(
        "edge_upstream_latency_seconds_count", {"node": "e1"}
    )


# -- bereq -> headers -> match -> slice_body -> done -------------------------------------------


@pytest.mark.parametrize(
    ("validator", "precondition"),
    [
        ({"ETag": '"big"'}, ("If-Match", '"big"')),
        (
            {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"},
            ("If-Unmodified-Since", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ),
    ],
    ids=["etag", "last-modified"],
)
async def test_a_slice_is_asked_by_range_under_the_manifests_validator_and_stored(
    r: Rig, validator: dict[str, str], precondition: tuple[str, str]
) -> None:
    entry = manifest(r, **validator)
    answer = part(SLICE, 2 * SLICE - 1, validator=validator)
    r.upstream.script("/big", dataclasses.replace(answer, took=0.5))
    fetch, fill = await walked(r, entry, 1)
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.MATCH, S.SLICE_BODY, S.DONE]
    (sent,) = r.upstream.sent
    assert (sent.method, sent.path, sent.key) == ("GET", "/big", entry.key)
    assert sent.headers["Range"] == f"bytes={SLICE}-{2 * SLICE - 1}"
    assert sent.headers[precondition[0]] == precondition[1]
    assert sent.headers["Host"] == "site.test" and sent.headers["Via"] == "1.1 e1"
    head = fill.head.result()
    assert (head.kind, head.status, head.length, head.storable) == ("body", 206, SLICE, True)
    assert fill.finished and fill.failed is None and fill.written == SLICE
    assert stored_slice(r, entry, 1) == BIG[SLICE : 2 * SLICE]
    assert r.stored("/big") == [entry]  # the manifest stands
    assert r.upstream.bodies[0].closed
    assert latency_samples(r) == 1  # every fetch's head latency, a slice's too


async def test_the_short_last_slice_is_asked_for_as_far_as_the_object_goes(r: Rig) -> None:
    entry = manifest(r, ETag='"big"')
    r.upstream.script("/big", part(3 * SLICE, len(BIG) - 1))
    fetch, _ = await walked(r, entry, 3)
    assert fetch.walk[-1] is S.DONE
    assert r.upstream.sent[0].headers["Range"] == f"bytes={3 * SLICE}-{len(BIG) - 1}"
    assert stored_slice(r, entry, 3) == BIG[3 * SLICE :]


# -- headers -> match -> error: the object changed --------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        Reply(412, [("ETag", '"new"')]),  # RFC 9110 Section 13.1.4: If-Match failed
        part(SLICE + 1, 2 * SLICE),  # another span
        part(SLICE, 2 * SLICE - 1, total=len(BIG) + 1),  # another complete length
        part(SLICE, 2 * SLICE - 1, validator={"ETag": '"new"'}),  # an origin that ignored If-Match
        part(0, len(BIG) - 1, status=200),  # the whole, Range ignored
    ],
    ids=["412", "span", "length", "etag", "200"],
)
async def test_an_answer_that_is_not_the_slice_drops_the_object(r: Rig, answer: Reply) -> None:
    entry = manifest(r, ETag='"big"')
    r.upstream.script("/big", answer)
    fetch, fill = await walked(r, entry, 1)
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.MATCH, S.ERROR]
    assert r.stored("/big") == []  # dropped: the next request fetches it afresh
    head = fill.head.result()
    assert head.kind == "error" and isinstance(head.error, ObjectChanged)
    assert f"upstream answered {answer.status} for a slice" in str(head.error)
    assert isinstance(fill.failed, ObjectChanged) and fill.finished
    assert stored_slice(r, entry, 1) is None
    assert r.upstream.bodies[0].closed


# -- headers -> error, slice_body -> abandon -----------------------------------------------


async def test_an_upstream_that_fails_fails_the_slice_and_keeps_the_object(r: Rig) -> None:
    entry = manifest(r, ETag='"big"')
    r.upstream.script("/big", down())
    fetch, fill = await walked(r, entry, 2)
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.ERROR]
    head = fill.head.result()
    assert head.kind == "error" and isinstance(head.error, UpstreamError)
    assert not isinstance(head.error, ObjectChanged)
    assert fill.finished and fill.failed is head.error
    assert r.stored("/big") == [entry]  # nothing says the object changed
    errors = r.engine.metrics.upstream_errors.labels("e1", "upstream-unreachable")
    assert errors._value.get() == 1


async def test_a_slice_body_that_breaks_is_abandoned_and_not_stored(r: Rig) -> None:
    entry = manifest(r, ETag='"big"')
    answer = part(SLICE, 2 * SLICE - 1)
    pieces = [BIG[SLICE : SLICE + 1000]]
    r.upstream.script("/big", dataclasses.replace(answer, pieces=pieces, broken=broken_body()))
    fetch, fill = await walked(r, entry, 1)
    assert fetch.walk == [S.BEREQ, S.HEADERS, S.MATCH, S.SLICE_BODY, S.ABANDON]
    assert fill.head.result().kind == "body" and fill.written == 1000
    assert isinstance(fill.failed, UpstreamError)
    assert stored_slice(r, entry, 1) is None
    assert fetch.writer is not None and not fetch.writer.path.exists()
    assert r.stored("/big") == [entry]


# -- the one way in: Slicer.slice -----------------------------------------------------------


async def test_a_reader_that_needs_a_slice_starts_its_walk_and_others_join_it(
    r: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    entry = manifest(r, ETag='"big"')
    r.upstream.script("/big", part(2 * SLICE, 3 * SLICE - 1))
    slicer = r.engine.slicer
    started: list[Fill] = []
    with caplog.at_level(logging.DEBUG, logger="edge.fetch.machine"):
        first = await slicer.slice(entry, 2, FIELDS, started)
        second = await slicer.slice(entry, 2, FIELDS, [])
        await r.settle()
    assert isinstance(first, Fill) and started == [first] and second is first
    assert f"fetch of {slice_fill_key(entry, 2)}: bereq>headers>match>slice_body>done" in (
        caplog.text
    )
    assert len(r.upstream.sent) == 1
    assert stored_slice(r, entry, 2) == BIG[2 * SLICE : 3 * SLICE]


async def test_a_client_reading_missing_slices_makes_one_sample_per_fetch(r: Rig) -> None:
    """Each slice fetch is counted once, by the walk that made it (not again by the
    reader that started it)."""
    entry = manifest(r, ETag='"big"')
    r.upstream.script("/big", part(SLICE, 2 * SLICE - 1), part(2 * SLICE, 3 * SLICE - 1))
    first, last = SLICE + 10, 2 * SLICE + 10
    _, channel = await r.run(r.request("/big", headers=[("Range", f"bytes={first}-{last}")]))
    assert channel.status == 206 and channel.body == BIG[first : last + 1]
    assert stored_slice(r, entry, 1) == BIG[SLICE : 2 * SLICE]
    assert stored_slice(r, entry, 2) == BIG[2 * SLICE : 3 * SLICE]
    assert [s.headers["Range"] for s in r.upstream.sent] == [
        f"bytes={SLICE}-{2 * SLICE - 1}",
        f"bytes={2 * SLICE}-{3 * SLICE - 1}",
    ]
    assert latency_samples(r) == 2


# -- read-ahead: the next slice of a reader's range is asked for as this one is read ----------


async def _read(source: SlicedSource, start: int, end: int) -> bytes:
    out = bytearray()
    async for piece in source.pieces(start, end):
        if isinstance(piece, FileSegment):
            out += os.pread(piece.file.fileno(), piece.count, piece.offset)
        else:
            out += piece
    return bytes(out)


async def test_a_reader_has_the_next_slice_of_its_range_asked_for_while_it_reads_this_one(
    r: Rig,
) -> None:
    entry = manifest(r, ETag='"big"')
    hold = asyncio.Event()  # slice 0's head waits: the reader is still on slice 0
    r.upstream.script("/big", dataclasses.replace(part(0, SLICE - 1), hold=hold))
    r.upstream.script("/big", part(SLICE, 2 * SLICE - 1))
    r.upstream.script("/big", part(2 * SLICE, 3 * SLICE - 1))
    source = SlicedSource(r.engine.slicer, entry, FIELDS)
    reading = asyncio.ensure_future(_read(source, 100, 2 * SLICE))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not reading.done()
    ranges = [sent.headers["Range"] for sent in r.upstream.sent]
    assert ranges == [f"bytes=0-{SLICE - 1}", f"bytes={SLICE}-{2 * SLICE - 1}"]
    hold.set()
    assert await reading == BIG[100 : 2 * SLICE]
    await r.settle()
    # Nothing past the range was asked for; each slice once; both stored.
    assert len(r.upstream.sent) == 2 and r.upstream.pending("/big") == 1
    assert stored_slice(r, entry, 0) == BIG[:SLICE]
    assert stored_slice(r, entry, 1) == BIG[SLICE : 2 * SLICE]


async def test_read_ahead_skips_a_slice_stored_or_already_coming(r: Rig) -> None:
    entry = manifest(r, ETag='"big"')
    r.upstream.script("/big", part(SLICE, 2 * SLICE - 1))
    await walked(r, entry, 1)  # slice 1 stored
    hold = asyncio.Event()
    r.upstream.script("/big", dataclasses.replace(part(2 * SLICE, 3 * SLICE - 1), hold=hold))
    claim = await r.engine.inflight.join_or_start(slice_fill_key(entry, 2), 0.0)
    assert claim.fill is not None  # slice 2 comes by a fill of its own
    machine.start_slice(r.engine.slicer.node, claim.fill, SliceOf(entry, 2), FIELDS)
    r.upstream.script("/big", part(0, SLICE - 1))
    source = SlicedSource(r.engine.slicer, entry, FIELDS)
    reading = asyncio.ensure_future(_read(source, 0, 3 * SLICE))
    for _ in range(20):
        await asyncio.sleep(0)
    hold.set()
    assert await reading == BIG[: 3 * SLICE]
    await r.settle()
    # Slice 0 was asked for once, by the reader; 1 and 2 never again.
    ranges = sorted(sent.headers["Range"] for sent in r.upstream.sent)
    assert ranges == sorted(f"bytes={i * SLICE}-{(i + 1) * SLICE - 1}" for i in range(3))
