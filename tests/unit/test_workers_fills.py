"""Fills across two real worker processes (forked here), through the coordination seam
(edge.multiproc.workers.Workers) and the one join-or-start path (edge.fetch.fill.InFlight): what one
worker's fill could not store reaches a reader waiting on it in another as it reaches
a reader in its own, with no upstream request of that reader's."""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path
from typing import Any, cast

import pytest

from edge.fetch.fill import Fill, FillHead, InFlight, _record
from edge.fetch.slices import Slicer
from edge.multiproc import shared as shared_map
from edge.multiproc.coordination import Solo
from edge.multiproc.workers import METRICS_DIR, Workers
from edge.store.disk import DiskStore, Entry
from edge.upstream.pools import UpstreamError, Upstreams

ENTRY = Entry(
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


class FailingUpstream:
    """Fails every request; with `gate`, only once a byte can be read from it."""

    def __init__(self, gate: int | None = None) -> None:
        self.requests = 0
        self.gate = gate

    async def request(self, method: str, path: str, headers: Any, **kw: Any) -> Any:
        self.requests += 1
        if self.gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, os.read, self.gate, 1)
        raise UpstreamError("origin down")


def _worker(directory: Path, index: int, upstream: FailingUpstream) -> tuple[Slicer, DiskStore]:
    workers = Workers.open(directory, index)
    store = DiskStore(directory, 1 << 30, workers)
    return Slicer(store, InFlight(workers), cast(Upstreams, upstream), claim_timeout=30.0), store


def _first_worker(directory: Path, gate: int, started: int) -> None:
    """Worker 0: starts the slice's fill, says so, fails when the gate opens."""

    async def run() -> None:
        slicer, store = _worker(directory, 0, FailingUpstream(gate))
        fill = await slicer.slice(ENTRY, 2, [])
        os.write(started, b"1")
        await asyncio.shield(fill.head)
        while slicer.inflight.tasks:  # until the fill task has let go of the key
            await asyncio.wait(slicer.inflight.tasks)
        store.close()

    asyncio.run(run())


def test_a_slice_fill_that_failed_in_one_worker_fails_its_readers_in_another(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cache"
    DiskStore.prepare(directory)
    shared_map.create(directory, 2)
    (directory / METRICS_DIR).mkdir()
    gate_r, gate_w = os.pipe()
    started_r, started_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the other worker
        code = 1
        try:
            _first_worker(directory, gate_r, started_w)
            code = 0
        finally:
            os._exit(code)
    try:
        assert select.select([started_r], [], [], 30)[0], "the first worker never started"
        os.read(started_r, 1)

        async def reader() -> tuple[Fill, int]:
            upstream = FailingUpstream()
            slicer, store = _worker(directory, 1, upstream)
            waiting = asyncio.ensure_future(slicer.slice(ENTRY, 2, []))
            for _ in range(3):  # until it waits on the fill the other worker holds
                await asyncio.sleep(0)
            assert not waiting.done()
            os.write(gate_w, b"1")  # that worker's upstream fails now
            got = await asyncio.wait_for(waiting, 30)
            assert isinstance(got, Fill)
            await got.head
            store.close()
            return got, upstream.requests

        got, requests = asyncio.run(reader())
        head = got.head.result()
        assert head.kind == "error" and str(head.error) == "origin down"
        assert requests == 0
    finally:
        _, status = os.waitpid(pid, 0)
        for fd in (gate_r, gate_w, started_r, started_w):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


async def test_a_body_kept_in_memory_is_published_without_a_path(tmp_path: Path) -> None:
    """A small body arrives in a memfd. Its /proc path would name a descriptor number
    the writer reuses for another body once this one is stored, so another worker
    following it could read the wrong bytes: the record carries no path, a record
    without one is not followed (the others read the body from the store once stored),
    and the writer has no path to give."""
    store = DiskStore(tmp_path / "c", 1 << 30, Solo())
    inflight = InFlight(Solo())
    head = FillHead("body", status=200, length=1000, storable=True)
    small, big = Fill("http://a.test/small", 0.0), Fill("http://a.test/big", 0.0)
    small.attach_writer(store.begin(1000))
    big.attach_writer(store.begin(None))
    try:
        record = _record(small, head)
        assert record["state"] == "running" and record["path"] is None
        assert inflight._follow(small.key, record) is None
        assert small.writer is not None and big.writer is not None
        with pytest.raises(ValueError):
            _ = small.writer.path
        assert _record(big, head)["path"] == str(big.writer.path)
    finally:
        for writer in (small.writer, big.writer):
            if writer is not None:
                writer.discard()
        store.close()


async def test_the_oldest_fill_is_said_as_fills_start_and_end_in_any_order() -> None:
    """What a purge waits for (edge.purge.bans): the start of the oldest fill in this
    process's table, told to the coordination each time it changes; a fill replaced
    in the table by a newer one of its key no longer counts."""
    coordination = Solo()
    clock = iter([10.0, 20.0, 30.0, 40.0]).__next__
    inflight = InFlight(coordination, clock=clock)
    first = inflight.start("a")  # 10
    second = inflight.start("b")  # 20
    assert coordination.oldest() == inflight.oldest() == 10.0
    third = inflight.start("c")  # 30
    inflight.done(second)  # not the oldest: the oldest stays
    assert coordination.oldest() == 10.0
    inflight.done(first)
    assert coordination.oldest() == 30.0
    alone = inflight.start("c")  # 40: replaces the table's fill of "c"
    assert coordination.oldest() == 40.0
    inflight.done(third)  # no longer the table's: nothing changes
    assert coordination.oldest() == 40.0
    inflight.done(alone)
    assert coordination.oldest() is None and inflight.oldest() is None
