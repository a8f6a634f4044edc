"""The disk store on its own (edge.store.disk.DiskStore): where bodies live, what a reader
gets back, and what survives a restart. One process (edge.multiproc.coordination.Solo); the
workers' sharing is held by tests/test_coordination.py and tests/test_workers.py.
Here the parts with real processes or sockets; tests/unit/test_store.py has
the pure ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.multiproc.coordination import Solo
from edge.store.disk import DiskStore, Entry


def files_under(directory: Path) -> list[Path]:
    """The store's files other than its SQLite database."""
    return [
        Path(root) / name
        for root, _, names in os.walk(directory)
        for name in names
        if not name.startswith("cache.db")
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskStore]:
    opened = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    yield opened
    opened.close()


def read(store: DiskStore, stored: Entry) -> bytes:
    handle = store.open_body(stored)
    assert handle is not None
    with handle:
        # As delivery reads it: by descriptor, at an offset (edge.pipeline.transaction,
        # edge.fetch.derive).
        return os.pread(handle.fileno(), stored.size + 1, 0)


# -- commits batched per loop turn (one process alone) -----------------------------------


_CRASH = """
import asyncio, os, signal, sys
from pathlib import Path
from edge.multiproc.coordination import Solo
from edge.store.disk import DiskStore, Entry

def put(store, key, body):
    writer = store.begin()
    writer.write(body)
    entry = Entry(key=key, variant=key[-1], status=200, headers=(), vary=(),
                  request_time=1.0, response_time=2.0, size=len(body))
    store.commit(entry, writer)

async def main():
    store = DiskStore(Path(sys.argv[1]), 1 << 30, Solo())
    put(store, "http://a.test/a", b"a" * 5000)
    await asyncio.sleep(0)  # that turn's batch is written
    put(store, "http://a.test/b", b"b" * 5000)
    put(store, "http://a.test/c", b"c" * 5000)
    os.kill(os.getpid(), signal.SIGKILL)  # before this turn ends

asyncio.run(main())
"""


def test_a_batch_not_written_when_the_process_dies_is_absent_after_restart(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, str(directory)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = DiskStore(directory, 1 << 30, Solo())
    try:
        (a,) = store.variants("http://a.test/a")
        assert read(store, a) == b"a" * 5000
        assert store.variants("http://a.test/b") == []
        assert store.variants("http://a.test/c") == []
        assert store.stats()[1] == 1
        assert files_under(store.tmp) == []
    finally:
        store.close()
