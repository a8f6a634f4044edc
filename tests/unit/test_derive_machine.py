"""The derive machine (edge.fetch.derive): a derived encoding made from a stored body and
kept as a variant of it, step by step. Every move of its table is taken by a walk
driven against an in-memory store (tests/support/fakes.py); what every machine's table
must hold is tests/unit/test_steptable.py's. No socket, no process, no sleep."""

from __future__ import annotations

import gzip
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.fetch import derive
from edge.fetch.derive import MOVES, TABLE, Choice, Derive, DeriveStep, Job, find_derived
from edge.fetch.fill import Fill
from edge.fetch.slices import FileSource, Piece
from edge.steptable import IllegalMove
from edge.store.disk import Entry
from edge.upstream.pools import UpstreamError
from tests.support.fakes import Rig, rig, stored_entry

ROOT = Path(__file__).resolve().parents[2]
S = DeriveStep
TEXT = b"<p>edge keeps one encoding of each stored body, made once.</p>\n" * 200
GZIP = Choice("gzip", "encode", True)


@pytest.fixture
async def r() -> AsyncIterator[Rig]:
    made = rig()
    try:
        yield made
    finally:
        await made.close()


def stored(r: Rig, body: bytes = TEXT, **fields: str) -> Entry:
    headers = [("Cache-Control", "max-age=600"), ("Content-Type", "text/html"), *fields.items()]
    return r.store.put(stored_entry(r.key("/a"), headers, at=r.clock.time()), body)


def job(entry: Entry, choice: Choice = GZIP, source_coding: str = "identity") -> Job:
    return Job(
        key=entry.key,
        source_variant=entry.variant,
        vary=entry.vary,
        choice=choice,
        source_length=entry.size,
        source_coding=source_coding,
        complete=True,
        content_type="text/html",
    )


class Source:
    """A body source of the test's own: `pieces`, then `broken` raised, if given."""

    def __init__(self, pieces: list[bytes], broken: Exception | None = None) -> None:
        self._pieces = pieces
        self._broken = broken
        self.closed = False

    async def pieces(self, start: int, end: int | None) -> AsyncIterator[Piece]:
        for piece in self._pieces:
            yield piece
        if self._broken is not None:
            raise self._broken

    def close(self) -> None:
        self.closed = True


async def walked(r: Rig, what: Job, source: derive.BodySource) -> tuple[Derive, Fill]:
    """Start the derived body's fill through the one way in and run its walk to the end."""
    claim = await r.engine.inflight.join_or_start(what.name, local=True)
    assert claim.kind == "started" and claim.fill is not None
    walk = r.engine.deriver.start(what, claim.fill, source)
    await r.settle()
    assert r.engine.inflight.get(what.name) is None, "a walk that ended leaves the table"
    return walk, claim.fill


def body_of(fill: Fill) -> bytes:
    assert fill.writer is not None
    return fill.writer.path.read_bytes() if fill.writer.small is None else fill.writer.small


# -- the table -----------------------------------------------------------------------------


def test_a_walk_ends_done_or_failed_and_every_step_may_fail() -> None:
    assert TABLE.final == {S.DONE, S.ERROR}
    assert all(S.ERROR in nexts for step, nexts in MOVES.items() if step not in TABLE.final)


# -- codec -> pour -> keep -> done ----------------------------------------------------------


async def test_an_encoding_of_a_stored_body_is_made_and_kept_as_its_variant(r: Rig) -> None:
    source = stored(r)
    opened = r.store.open_body(source)
    assert opened is not None
    walk, fill = await walked(r, job(source), FileSource(opened))
    assert walk.walk == [S.CODEC, S.POUR, S.KEEP, S.DONE]
    made = find_derived(r.store, source, "gzip")
    assert made is not None and made.derived_from == source.variant
    kept = r.store.body(made)
    assert kept is not None and gzip.decompress(kept) == TEXT and len(kept) < len(TEXT)
    assert made.extra == {"level": "store", "quality": fill.head.result().level}
    assert fill.finished and fill.failed is None and fill.written == len(kept)
    assert opened.closed  # the walk closes its source


async def test_a_coding_a_client_refuses_is_decoded_into_a_variant(r: Rig) -> None:
    source = stored(r, gzip.compress(TEXT), **{"Content-Encoding": "gzip"})
    identity = Choice("identity", "decode", True)
    walk, fill = await walked(
        r,
        job(source, identity, "gzip"),
        Source([gzip.compress(TEXT)[:100], gzip.compress(TEXT)[100:]]),
    )
    assert walk.walk == [S.CODEC, S.POUR, S.KEEP, S.DONE]
    made = find_derived(r.store, source, "identity")
    assert made is not None and r.store.body(made) == TEXT
    assert fill.head.result().level is None  # a decoded body has no level


async def test_an_encoding_whose_source_went_meanwhile_is_made_but_not_kept(r: Rig) -> None:
    """Its readers get the whole body; nothing outlives the source it was made from."""
    source = stored(r)
    r.store.remove(source.key)
    walk, fill = await walked(r, job(source), Source([TEXT]))
    assert walk.walk == [S.CODEC, S.POUR, S.KEEP, S.DONE]
    assert r.store.variants(source.key) == []
    assert fill.finished and fill.failed is None and fill.written > 0


async def test_an_encoding_made_meanwhile_elsewhere_is_the_one_kept(r: Rig) -> None:
    source = stored(r)
    first, _ = await walked(r, job(source), Source([TEXT]))
    kept = find_derived(r.store, source, "gzip")
    assert first.walk[-1] is S.DONE and kept is not None
    again, fill = await walked(r, job(source), Source([TEXT]))
    assert again.walk == [S.CODEC, S.POUR, S.KEEP, S.DONE]
    assert find_derived(r.store, source, "gzip") == kept and fill.failed is None


# -- pour -> error, codec -> error --------------------------------------------------------


async def test_a_source_that_breaks_fails_the_readers_and_keeps_nothing(
    r: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    source = stored(r)
    body = Source([TEXT[:1000]], broken=UpstreamError("connection reset"))
    with caplog.at_level(logging.WARNING, logger="edge.fetch.derive"):
        walk, fill = await walked(r, job(source), body)
    assert walk.walk == [S.CODEC, S.POUR, S.ERROR]
    assert isinstance(fill.failed, UpstreamError)
    assert str(fill.failed) == "could not make the gzip variant: connection reset"
    assert find_derived(r.store, source, "gzip") is None
    assert fill.writer is not None and not fill.writer.path.exists()
    assert body.closed
    assert "could not make the gzip variant of http://site.test/a" in caplog.text
    assert "Traceback" not in caplog.text


async def test_a_body_that_is_not_in_its_coding_fails_its_decode(r: Rig) -> None:
    source = stored(r, b"not gzip at all" * 10, **{"Content-Encoding": "gzip"})
    identity = Choice("identity", "decode", True)
    walk, fill = await walked(r, job(source, identity, "gzip"), Source([b"not gzip at all" * 10]))
    assert walk.walk == [S.CODEC, S.POUR, S.ERROR]
    assert isinstance(fill.failed, UpstreamError)
    assert find_derived(r.store, source, "identity") is None


async def test_a_coding_edge_cannot_undo_fails_at_codec(r: Rig) -> None:
    source = stored(r, b"x" * 100, **{"Content-Encoding": "x-unknown"})
    identity = Choice("identity", "decode", True)
    walk, fill = await walked(r, job(source, identity, "x-unknown"), Source([b"x" * 100]))
    assert walk.walk == [S.CODEC, S.ERROR]
    assert (
        str(fill.failed) == "could not make the identity variant: edge does not decode 'x-unknown'"
    )
    assert fill.head.result().kind == "body" and fill.written == 0


async def test_a_move_the_table_does_not_list_is_refused_loudly(
    r: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def wrong(walk: Derive) -> DeriveStep:
        return S.KEEP  # codec may only go to pour (or fail)

    monkeypatch.setitem(derive._STEPS, S.CODEC, wrong)
    what = job(stored(r))
    claim = await r.engine.inflight.join_or_start(what.name, local=True)
    assert claim.fill is not None
    with pytest.raises(IllegalMove, match="codec -> keep is not a move of the derive machine"):
        await Derive(r.engine.deriver, what, _begun(r, claim.fill), Source([TEXT])).run()
    # Its readers still hear of it, and the key is free again.
    assert claim.fill.finished and isinstance(claim.fill.failed, UpstreamError)
    assert r.engine.inflight.get(what.name) is None


# -- the one way in: Deriver.fill ---------------------------------------------------------


async def test_a_second_reader_joins_the_encoding_under_way(
    r: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    source = stored(r)
    first_source, second_source = Source([TEXT]), Source([TEXT])
    with caplog.at_level(logging.DEBUG, logger="edge.fetch.derive"):
        first = await r.engine.deriver.fill(job(source), first_source)
        second = await r.engine.deriver.fill(job(source), second_source)
        await r.settle()
    assert second is first and second_source.closed  # a joiner's source is let go
    assert f"derive of {job(source).name}: codec>pour>keep>done" in caplog.text
    made = find_derived(r.store, source, "gzip")
    assert made is not None and gzip.decompress(body_of(first)) == TEXT


def _begun(r: Rig, fill: Fill) -> Fill:
    """A fill with its body file attached, as Deriver.start leaves it."""
    fill.attach_writer(r.store.begin())
    return fill
