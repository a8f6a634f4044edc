"""A fill's readers follow its growing file by spans (edge.fetch.fill.FillReader.spans):
each wait yields all that has arrived beyond the reader, bounded by the range asked for,
and delivery gets those spans as file segments of the growing file (edge.fetch.slices:
FillSource, as SlicedSource's followed slices), so it sends them as it sends a stored body.
In-memory fills over a file in a temporary folder; no sockets, no sleeps.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.fetch.fill import Fill, FillReader
from edge.fetch.slices import FileSegment, FillSource, Piece
from edge.store.disk import BodyWriter
from edge.upstream.pools import UpstreamError


def _fill(tmp_path: Path) -> Fill:
    fill = Fill("k", 0.0)
    fill.attach_writer(BodyWriter(tmp_path / "body"))
    return fill


def _arrive(fill: Fill, data: bytes) -> None:
    assert fill.writer is not None
    fill.writer.write(data)
    fill.advance(len(data))


async def _collect(spans: AsyncIterator[tuple[int, int]]) -> list[tuple[int, int]]:
    return [span async for span in spans]


async def _turns(n: int = 3) -> None:
    """Let the reader's task run up to its next wait."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_reader_gets_all_that_arrived_as_one_span_per_wait(tmp_path: Path) -> None:
    fill = _fill(tmp_path)
    _arrive(fill, b"a" * 1000)
    _arrive(fill, b"b" * 24)  # two writes before the reader looks: one span
    reader = fill.reader()
    task = asyncio.ensure_future(_collect(reader.spans(0, None)))
    await _turns()
    _arrive(fill, b"c" * 500)
    await _turns()
    fill.finish()
    assert await task == [(0, 1024), (1024, 500)]
    reader.close()


async def test_spans_stop_at_the_end_asked_for_and_start_anywhere(tmp_path: Path) -> None:
    fill = _fill(tmp_path)
    _arrive(fill, bytes(range(200)))
    reader = fill.reader()
    task = asyncio.ensure_future(_collect(reader.spans(150, 260)))
    await _turns()
    _arrive(fill, bytes(100))  # 200..300: only 200..260 is asked for
    assert await task == [(150, 50), (200, 60)]
    assert not fill.finished  # the span ended at the range, not with the body
    reader.close()


async def test_a_broken_fill_breaks_its_reader_after_what_arrived(tmp_path: Path) -> None:
    fill = _fill(tmp_path)
    _arrive(fill, b"x" * 10)
    reader = fill.reader()
    got: list[tuple[int, int]] = []

    async def follow() -> None:
        async for span in reader.spans(0, None):
            got.append(span)

    task = asyncio.ensure_future(follow())
    await _turns()
    fill.finish(UpstreamError("upstream body broke"))
    with pytest.raises(UpstreamError, match="broke"):
        await task
    assert got == [(0, 10)]
    reader.close()


async def test_read_range_reads_the_spans_in_bounded_pieces(tmp_path: Path) -> None:
    fill = _fill(tmp_path)
    body = os.urandom(10_000)
    _arrive(fill, body)
    fill.finish()
    reader = fill.reader()
    pieces = [piece async for piece in reader.read_range(100, 9_000, chunk=4096)]
    assert [len(p) for p in pieces] == [4096, 4096, 708]
    assert b"".join(pieces) == body[100:9_000]
    reader.close()


async def test_a_fill_source_yields_file_segments_of_the_growing_file(tmp_path: Path) -> None:
    fill = _fill(tmp_path)
    body = os.urandom(300_000)
    _arrive(fill, body[:100_000])
    source = FillSource(fill.reader())
    seen: list[Piece] = []
    sent = bytearray()

    async def deliver() -> None:
        async for piece in source.pieces(10, None):
            assert isinstance(piece, FileSegment)
            seen.append(piece)
            # What sendfile would send: the span of the reader's own descriptor.
            sent.extend(os.pread(piece.file.fileno(), piece.count, piece.offset))

    task = asyncio.ensure_future(deliver())
    await _turns()
    _arrive(fill, body[100_000:])
    await _turns()
    fill.finish()
    await task
    assert bytes(sent) == body[10:]
    assert len(seen) == 2  # one segment per arrival, not one per 64 KiB
    assert source.reader.file is not None
    reader_fd = source.reader.file.fileno()
    source.close()
    assert source.reader.body is None and fill.readers == 0
    with pytest.raises(OSError):
        os.fstat(reader_fd)  # the reader's descriptor went with it


async def test_a_reader_closed_before_it_read_leaves_the_fill_open(tmp_path: Path) -> None:
    fill = _fill(tmp_path)
    _arrive(fill, b"abc")
    first: FillReader = fill.reader()
    first.close()
    second = fill.reader()
    assert [p async for p in FillSource(second).pieces(0, 3)] == [FileSegment(second.file, 0, 3)]
    second.close()


async def test_a_body_kept_in_memory_is_followed_as_its_bytes() -> None:
    """A small body has no file (edge.store.disk keeps it in memory): its readers get
    its bytes, as they arrive, where a file's get segments to send."""
    fill = Fill("k", 0.0)
    fill.attach_writer(BodyWriter(None))
    _arrive(fill, b"abc")
    reader = fill.reader()
    assert reader.file is None and reader.ready(0, 3) == b"abc" and reader.ready(0, 4) is None
    task = asyncio.ensure_future(_pieces(FillSource(reader), 1, None))
    await _turns()
    _arrive(fill, b"def")
    await _turns()
    fill.finish()
    assert await task == [b"bc", b"def"]
    reader.close()
    assert fill.readers == 0


async def _pieces(source: FillSource, start: int, end: int | None) -> list[Piece]:
    return [piece async for piece in source.pieces(start, end)]
