"""The disk store on its own (edge.store.disk.DiskStore): where bodies live, what a reader
gets back, and what survives a restart. One process (edge.multiproc.coordination.Solo); the
workers' sharing is held by tests/test_coordination.py and tests/test_workers.py.
Here the parts that open no socket and start no process;
tests/integration/test_store.py has the ones with real processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import diskcache
import pytest

from edge.multiproc.coordination import Solo
from edge.store.disk import INLINE_MAX, DiskStore, Entry, new_variant_id


def entry(key: str, size: int) -> Entry:
    return Entry(
        key=key,
        variant=new_variant_id(),
        status=200,
        headers=(("Content-Type", "application/octet-stream"),),
        vary=(),
        request_time=1.0,
        response_time=2.0,
        size=size,
    )


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


def put(store: DiskStore, key: str, body: bytes) -> Entry:
    writer = store.begin()
    for start in range(0, len(body), 4096):
        writer.write(body[start : start + 4096])
    return store.commit(entry(key, len(body)), writer)


def read(store: DiskStore, stored: Entry) -> bytes:
    handle = store.open_body(stored)
    assert handle is not None
    with handle:
        # As delivery reads it: by descriptor, at an offset (edge.pipeline.transaction,
        # edge.fetch.derive).
        return os.pread(handle.fileno(), stored.size + 1, 0)


def test_a_small_body_makes_no_file_and_reads_back_whole(store: DiskStore) -> None:
    body = os.urandom(INLINE_MAX)
    stored = put(store, "http://a.test/small", body)
    assert files_under(store.objects) == []
    assert files_under(store.tmp) == []  # the arriving copy went at commit
    assert read(store, stored) == body
    assert store.variants("http://a.test/small") == [stored]


def test_a_body_over_the_inline_bound_is_a_file_of_its_own(store: DiskStore) -> None:
    body = os.urandom(INLINE_MAX + 1)
    stored = put(store, "http://a.test/large", body)
    (file,) = files_under(store.objects)
    # One level of directories: a young store does not make one per file.
    assert file.parent.parent == store.objects
    assert read(store, stored) == body


def test_a_body_declared_small_arrives_in_memory_and_readers_follow_it(
    store: DiskStore,
) -> None:
    """A miss of a small object makes no file at all, not even while it arrives (the
    temporary file and its directory entry were the largest cost of a small miss), nor
    a descriptor: its readers read its chunks, as they grow, and keep them after the
    body is stored."""
    body = os.urandom(1000)
    fds = len(os.listdir("/proc/self/fd"))
    writer = store.begin(len(body))
    assert writer.in_memory and files_under(store.tmp) == []
    reader = writer.reader()  # as a fill's reader does
    try:
        assert len(os.listdir("/proc/self/fd")) == fds
        writer.write(body[:400])
        assert reader.read(0, 2000) == body[:400]
        writer.write(body[400:])
        assert reader.read(300, 200) == body[300:500]
        stored = store.commit(entry("http://a.test/mem", len(body)), writer)
        assert reader.read(0, 2000) == body  # a reader keeps the body
    finally:
        reader.close()
    assert files_under(store.tmp) == [] and files_under(store.objects) == []
    assert read(store, stored) == body
    # Larger, or of no declared length: a file, as before.
    for expected in (INLINE_MAX + 1, None):
        big = store.begin(expected)
        assert not big.in_memory and files_under(store.tmp) == [big.path]
        big.discard()


def test_small_and_large_bodies_survive_a_restart(tmp_path: Path) -> None:
    first = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    small, large = os.urandom(1000), os.urandom(INLINE_MAX * 3)
    put(first, "http://a.test/s", small)
    put(first, "http://a.test/l", large)
    first.close()
    second = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    try:
        (s,) = second.variants("http://a.test/s")
        (big,) = second.variants("http://a.test/l")
        assert read(second, s) == small and read(second, big) == large
    finally:
        second.close()


def test_a_removed_small_body_is_gone_and_its_reader_says_so(store: DiskStore) -> None:
    stored = put(store, "http://a.test/gone", b"x" * 100)
    assert store.remove("http://a.test/gone") == 1
    assert store.open_body(stored) is None
    assert store.variants("http://a.test/gone") == []


def test_small_bodies_are_evicted_to_keep_the_bound(tmp_path: Path) -> None:
    """Inline bodies count towards the size bound (diskcache counts the database's
    pages), so eviction makes room for new ones and keeps the newest."""
    limit = 4 << 20
    bounded = DiskStore(tmp_path / "cache", limit, Solo())
    try:
        keys = [f"http://a.test/{n}" for n in range(200)]
        for key in keys:
            put(bounded, key, os.urandom(60 << 10))
        used, _ = bounded.stats()
        assert used <= limit
        assert bounded.variants(keys[-1]) != []
        assert bounded.variants(keys[0]) == []
    finally:
        bounded.close()


# -- commits batched per loop turn (one process alone) -----------------------------------


async def test_a_deferred_commit_is_read_back_at_once_and_written_by_the_turns_end(
    tmp_path: Path,
) -> None:
    store = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    other = DiskStore(tmp_path / "cache", 1 << 30, Solo())  # reads only what is written
    try:
        body = os.urandom(3000)
        stored = put(store, "http://a.test/soon", body)
        assert other.variants("http://a.test/soon") == []  # not written yet
        assert store.variants("http://a.test/soon") == [stored]  # but this process sees it
        assert read(store, stored) == body
        later = put(store, "http://a.test/later", body)
        await asyncio.sleep(0)  # the loop's turn ends: the batch is written
        assert other.variants("http://a.test/later") == [later]
    finally:
        store.close()
        other.close()


@pytest.mark.parametrize(
    "key",
    [
        ("m", "http://a.test/x?y=1"),
        ("b", "http://a.test/" + "é" * 50, new_variant_id()),
        ("s", "http://a.test/" + "k" * 3000, new_variant_id(), 12),
        ("s", "http://a.test/k", "v", 10**12),
    ],
)
def test_keys_are_written_as_diskcache_writes_them(store: DiskStore, key: tuple[object]) -> None:
    """The store's own key encoding is byte for byte diskcache's: entries written
    before it are found after it."""
    assert store.cache._disk.put(key) == diskcache.Disk.put(store.cache._disk, key)


async def test_a_batch_replaces_variants_as_commits_one_by_one_would(tmp_path: Path) -> None:
    """Commits of one key, in one batch and across batches (the second read from this
    process's memory of the key), leave the newest variant and its body only."""
    store = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    key = "http://a.test/again"

    def written() -> tuple[list[bytes], int]:
        """What a process opening the store now would find (memory of its own)."""
        fresh = DiskStore(tmp_path / "cache", 1 << 30, Solo())
        try:
            return [read(fresh, e) for e in fresh.variants(key)], fresh.stats()[1]
        finally:
            fresh.close()

    try:
        put(store, key, b"1" * 100)
        second = put(store, key, b"2" * 100)
        await asyncio.sleep(0)
        assert written() == ([b"2" * 100], 1)
        assert store.variants(key) == [second]  # remembered, for the next commit
        put(store, key, b"3" * 100)
        await asyncio.sleep(0)
        assert written() == ([b"3" * 100], 1)  # one entry, one body: replaced ones went
    finally:
        store.close()


async def test_a_batch_of_new_keys_writes_the_rows_diskcache_would(tmp_path: Path) -> None:
    """New keys' rows go in with one statement per batch: the same columns as
    diskcache's own `set` writes (a store that commits one by one, outside a loop, is
    the reference), the same count and size in its settings, read back after a
    restart."""
    batched = DiskStore(tmp_path / "batched", 1 << 30, Solo())
    single = DiskStore(tmp_path / "single", 1 << 30, Solo())
    bodies = {f"http://a.test/{n}": os.urandom(100 + n) for n in range(20)}
    entries = {}
    try:
        for key, body in bodies.items():
            entries[key] = put(batched, key, body)
            assert batched._pending  # deferred: written at the turn's end
        await asyncio.sleep(0)
        assert not batched._pending

        def one_by_one() -> None:
            for key, body in bodies.items():
                writer = single.begin()
                writer.write(body)
                single.commit(replace(entries[key], body_file=""), writer)

        await asyncio.to_thread(one_by_one)  # no loop in that thread: each written at once
        assert not single._pending
        columns = "key, raw, expire_time, access_count, tag, size, mode, filename, value"

        def rows(store: DiskStore) -> list[tuple[object, ...]]:
            return store.cache._sql(f"SELECT {columns} FROM Cache ORDER BY key, raw").fetchall()

        def settings(store: DiskStore) -> list[tuple[object, ...]]:
            return store.cache._sql(
                "SELECT key, value FROM Settings WHERE key IN ('count', 'size') ORDER BY key"
            ).fetchall()

        assert rows(batched) == rows(single) and len(rows(batched)) == 2 * len(bodies)
        assert settings(batched) == settings(single)
    finally:
        batched.close()
        single.close()
    reopened = DiskStore(tmp_path / "batched", 1 << 30, Solo())
    try:
        for key, body in bodies.items():
            (stored,) = reopened.variants(key)
            assert stored == entries[key] and read(reopened, stored) == body
    finally:
        reopened.close()


async def test_a_batch_mixing_new_and_known_keys_keeps_each_whole(tmp_path: Path) -> None:
    """A batch with a key already stored (its variant replaced, the old body dropped)
    and new keys (rows written at once) leaves exactly the newest entries."""
    store = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    try:
        put(store, "http://a.test/known", b"old" * 10)
        await asyncio.sleep(0)
        newer = put(store, "http://a.test/known", b"new" * 10)
        fresh = put(store, "http://a.test/fresh", b"f" * 10)
        await asyncio.sleep(0)
        assert store.stats()[1] == 2  # two keys, each one entry and one body
        assert store.variants("http://a.test/known") == [newer]
        assert read(store, newer) == b"new" * 10 and read(store, fresh) == b"f" * 10
    finally:
        store.close()


def test_commits_leave_the_wal_to_the_checkpoint_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit never copies the WAL back into the database itself (that is a page
    write and an fsync on the event loop): the store's own thread does, on its own
    connection, and stops with the store."""
    import edge.store.disk as disk

    monkeypatch.setattr(disk, "CHECKPOINT_INTERVAL", 3600.0)  # no round during the writes
    store = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    database = tmp_path / "cache" / "objects" / "cache.db"
    try:
        assert store.cache._sql("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        before = database.stat().st_size
        for n in range(400):  # well past SQLite's own threshold of 1,000 WAL pages
            put(store, f"http://a.test/{n}", os.urandom(8000))
        assert database.stat().st_size == before  # all of it still in the WAL
        store._checkpointer.checkpoint()
        assert database.stat().st_size > before
        assert all(store.variants(f"http://a.test/{n}") for n in range(400))
    finally:
        store.close()
    assert not store._checkpointer._thread.is_alive()


def test_the_checkpoint_thread_runs_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.store.disk as disk

    monkeypatch.setattr(disk, "CHECKPOINT_INTERVAL", 0.01)
    store = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    database = tmp_path / "cache" / "objects" / "cache.db"
    try:
        before = database.stat().st_size
        for n in range(50):
            put(store, f"http://a.test/{n}", os.urandom(8000))
        for _ in range(500):  # bounded: 5 s at most
            if database.stat().st_size > before:
                break
            time.sleep(0.01)
        assert database.stat().st_size > before
    finally:
        store.close()


@pytest.mark.parametrize("expected", [1000, None])
def test_a_reader_follows_its_body_and_outlives_the_writer(
    store: DiskStore, expected: int | None
) -> None:
    """reader(): in memory or a file, a reader sees each write at once and keeps the
    body after the writer closes; a file's has a read-only descriptor of its own."""
    writer = store.begin(expected)
    assert writer.in_memory == (expected is not None)
    reader = writer.reader()
    second = reader.dup()
    try:
        writer.write(b"a" * 600)
        assert reader.read(0, 2000) == b"a" * 600
        writer.write(b"b" * 400)
        writer.close()
        assert reader.read(0, 2000) == b"a" * 600 + b"b" * 400
        reader.close()
        assert second.read(590, 20) == b"a" * 10 + b"b" * 10  # a dup outlives its source
        if writer.in_memory:  # no path: nothing another worker could open
            with pytest.raises(ValueError):
                _ = writer.path
        else:
            assert writer.path.name  # another worker's way in
            with pytest.raises(OSError):
                os.write(second._fd, b"x")
    finally:
        reader.close()
        second.close()
        writer.discard()


async def test_a_100k_body_is_a_row_and_a_batch_is_bounded_in_bytes(tmp_path: Path) -> None:
    """Bodies up to INLINE_MAX (100 KiB objects among them) make no file; the bodies a
    batch holds in memory are bounded: it is written once they reach BATCH_BYTES."""
    import edge.store.disk as disk

    store = DiskStore(tmp_path / "cache", 1 << 30, Solo())
    try:
        body = os.urandom(100 << 10)
        first = put(store, "http://a.test/0", body)
        assert first.body_file == disk.INLINE
        per_batch = -(-disk.BATCH_BYTES // len(body))
        for n in range(1, per_batch):
            put(store, f"http://a.test/{n}", body)
        assert not store._pending  # written when the bound was reached, in this turn
        assert files_under(store.objects) == [] and files_under(store.tmp) == []
        assert read(store, first) == body
    finally:
        store.close()


def test_a_body_kept_in_a_row_is_one_the_hot_tier_would_keep() -> None:
    """A row's body is copied into memory to be served: only bodies the hot tier keeps
    (copied once per object) may be rows; larger ones leave their file by sendfile."""
    from edge.pipeline.fastpath import MAX_BODY

    assert INLINE_MAX <= MAX_BODY


def test_an_entry_stored_as_a_body_file_is_the_entry_replace_would_make() -> None:
    """stored_as is dataclasses.replace of body_file, without its cost on every miss."""
    made = entry("http://a.test/x", 10)
    assert made.stored_as("ab/cd.val") == replace(made, body_file="ab/cd.val")
    assert made.stored_as("ab/cd.val") is not made and made.body_file == ""


def test_bytes_put_in_a_body_file_by_descriptor_are_counted_and_committed_whole(
    store: DiskStore,
) -> None:
    """A body whose bytes go into its file without `write` (spliced from the upstream's
    socket: edge.upstream.h1client) is told of them by `wrote`; even a small one is then
    stored from its file, never from a partial copy in memory."""
    body = os.urandom(5000)
    writer = store.begin()
    writer.write(body[:1000])
    os.write(writer.fileno(), body[1000:])  # as a splice into the file would
    writer.wrote(len(body) - 1000)
    assert writer.written == len(body) and writer.small is None
    stored = store.commit(entry("http://a.test/spliced", len(body)), writer)
    assert read(store, stored) == body


def test_a_body_kept_in_memory_takes_bytes_only_by_write(store: DiskStore) -> None:
    writer = store.begin(100)
    assert writer.in_memory
    with pytest.raises(OSError, match="in memory"):
        writer.wrote(10)
    writer.discard()
