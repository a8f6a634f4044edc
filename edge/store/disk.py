"""Storage of cached responses: a small interface and its diskcache implementation.

This module owns where entries and bodies live and how they survive restarts and
crashes. It knows nothing of HTTP caching rules (that is `edge.rfc.policy`): it keeps what
it is given and hands it back.

Several processes may share one store directory (the workers of one node): changes are
made in SQLite transactions, and each is announced through the node's coordination
(edge.multiproc.coordination) so that the other processes' memory caches drop what it made stale.

An entry is one stored response (a variant of a cache key): status, header fields,
the secondary key from Vary, request/response times, tags and the body size. Bodies
are written to a temporary file while they arrive (readers follow it) and become part
of the store only once complete, in the transaction that records their entry: a small
body (up to INLINE_MAX) is copied into its SQLite row, a larger one is *adopted* by a
rename. A partial body can never be found under a key, even after a crash mid-download.

Small bodies' commits are batched where the coordination allows (one process alone):
the entries a loop turn completes are written in one transaction at the end of that
turn. Until then they are this process's alone (a lookup of such a key writes the
batch first); a crash before the write loses the batch whole, never part of an entry.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import io
import logging
import os
import pickle
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN

if TYPE_CHECKING:
    from edge.multiproc.coordination import Coordination

log = logging.getLogger("edge.store.disk")

VaryKey = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class Entry:
    """A stored response. `headers` are the end-to-end fields as received (after the
    cache removed what it must not store); `vary` is the secondary key."""

    key: str
    variant: str
    status: int
    headers: tuple[tuple[str, str], ...]
    vary: VaryKey
    request_time: float
    response_time: float
    size: int
    tags: tuple[str, ...] = ()
    body_file: str = ""  # set by the store at commit
    # Segmented objects: the body is kept as slices of this size, each stored and
    # fetched on its own; 0 means one body file.
    slice_size: int = 0
    # A derived variant (e.g. the br encoding of a stored response) names the variant
    # it was made from and goes when that one goes; its headers are the source's.
    derived_from: str = ""
    coding: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # A partial response (RFC 9111 Section 3.3): the body holds bytes [first, end) of
    # a representation of `size` bytes, as a 206's Content-Range said; None: all.
    part: tuple[int, int] | None = None

    @property
    def slice_count(self) -> int:
        if not self.slice_size:
            return 0
        return max(1, -(-self.size // self.slice_size))

    def slice_span(self, index: int) -> tuple[int, int]:
        """[start, end) of slice `index` in the object."""
        start = index * self.slice_size
        return start, min(self.size, start + self.slice_size)

    def stored_as(self, body_file: str) -> Entry:
        """This entry with its body's place in the store: `replace` without its cost
        (it re-runs __init__ over every field), paid by every miss's commit."""
        entry = object.__new__(Entry)
        entry.__dict__.update(self.__dict__)
        entry.__dict__["body_file"] = body_file
        return entry

    def with_headers(
        self, headers: Sequence[tuple[str, str]], request_time: float, response_time: float
    ) -> Entry:
        return replace(
            self,
            headers=tuple(headers),
            request_time=request_time,
            response_time=response_time,
        )


#: Bodies up to this size are kept in their SQLite row rather than a file of their own:
#: a file and its directory cost a small miss more than the bytes do. Creating a file
#: costs 70-270 us on ext4 (measured on the benchmark machine), a 100 KiB row far less,
#: and a row rides in a batch (`DiskStore.flush`); so 100 KiB objects are rows too.
#: No bigger than what the hot tier keeps (edge.pipeline.fastpath.MAX_BODY): a row is
#: copied into memory to be served, which the hot tier does once per object, while a
#: bigger body leaves its own file by sendfile on every hit.
INLINE_MAX = 128 << 10


class BodyReader:
    """One reader's way into a body: bytes at any offset, as far as written so far.
    A file's reader has a descriptor of its own (valid after the writer closes, the
    file is adopted or unlinked); a body kept in memory is read from its chunks."""

    __slots__ = ("_chunks", "_fd", "_joined")

    def __init__(self, fd: int = -1, chunks: list[bytes] | None = None) -> None:
        self._fd = fd
        self._chunks = chunks
        self._joined: tuple[int, bytes] = (0, b"")  # (chunks joined, their bytes)

    def read(self, offset: int, count: int) -> bytes:
        chunks = self._chunks
        if chunks is None:
            return os.pread(self._fd, count, offset)
        if len(chunks) == 1:
            data = chunks[0]
        else:
            joined, data = self._joined
            if joined != len(chunks):
                data = b"".join(chunks)
                self._joined = (len(chunks), data)
        # A whole bytes object sliced whole is that object: no copy for the usual read.
        return data[offset : offset + count]

    def fileno(self) -> int | None:
        """The descriptor a file's reader preads (its own: sendfile may use it);
        None for a body kept in memory."""
        return self._fd if self._chunks is None else None

    def dup(self) -> BodyReader:
        if self._chunks is not None:
            return BodyReader(chunks=self._chunks)
        return BodyReader(os.dup(self._fd))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BodyWriter:
    """A body being received, that readers may follow (read-while-writer) and that
    becomes part of the store only via `Store.commit`.

    A body that may grow large is an append-only temporary file, written straight to
    the OS (no user-space buffer), so a reader told that N bytes exist can pread them
    at once. A body declared small enough to be stored inline is kept in memory
    only: no file, no directory entry, no descriptor; its readers read its chunks.
    While a file's body is small its bytes are kept too, so that a commit can store
    them inline without reading the file back.
    """

    def __init__(self, path: Path | None) -> None:
        """A file at `path`; or, with None, a body known to be small enough to be
        stored inline, kept in memory. Readers in this process read it as it grows
        (`reader`); other workers read it from the store once it is stored. A crash
        leaves nothing of it behind."""
        self.in_memory = path is None
        self._path = path
        self._fd = (
            -1 if path is None else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        )
        self.written = 0
        self._small: list[bytes] | None = []

    @property
    def path(self) -> Path:
        """The body's file; a body kept in memory has none."""
        if self._path is None:
            raise ValueError("a body kept in memory has no path")
        return self._path

    def reader(self) -> BodyReader:
        """A reader of the body as it grows, valid after the writer is done with it:
        a file opened again, read-only (its writer's descriptor is write-only), or
        the chunks kept in memory. Asked before `close`."""
        if self.in_memory:
            assert self._small is not None
            return BodyReader(chunks=self._small)
        return BodyReader(os.open(self.path, os.O_RDONLY))

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.in_memory:
            if self.written > INLINE_MAX:
                # Only a body declared small is kept in memory, and the upstream client
                # cuts an answer at its declared length: this is a bug, not input.
                raise OSError(f"a body kept in memory outgrew {INLINE_MAX} bytes")
            assert self._small is not None
            self._small.append(bytes(chunk))
            return
        view = memoryview(chunk)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self._small is not None:
            if self.written <= INLINE_MAX:
                self._small.append(bytes(chunk))
            else:
                self._small = None

    def fileno(self) -> int:
        """The body file's descriptor, for bytes put in it without `write` (spliced
        from the upstream's socket): each span so put in is then told to `wrote`."""
        return self._fd

    def wrote(self, count: int) -> None:
        """`count` bytes went into the file at `fileno()` by another way than `write`.
        They were never in memory, so the body is no longer kept for an inline commit;
        a body kept in memory only ever takes `write`."""
        if self.in_memory:
            raise OSError("a body kept in memory takes its bytes by write")
        self.written += count
        self._small = None

    @property
    def small(self) -> bytes | None:
        """The whole body, if it is small enough to be stored inline."""
        return b"".join(self._small) if self._small is not None else None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self.close()
        if self.in_memory:
            return  # its readers hold the chunks they read
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Store(abc.ABC):
    """What the cache engine needs from storage."""

    @abc.abstractmethod
    def variants(self, key: str) -> list[Entry]:
        """Every stored variant of a primary cache key, newest first."""

    @abc.abstractmethod
    def open_body(self, entry: Entry) -> IO[bytes] | None:
        """An open binary file of the entry's body, or None if it is gone."""

    @abc.abstractmethod
    def begin(self, expected: int | None = None) -> BodyWriter:
        """A writer for a body that is about to arrive; `expected`: its declared
        length, when known (a body that will be stored inline needs no file)."""

    @abc.abstractmethod
    def commit(self, entry: Entry, body: BodyWriter) -> Entry:
        """Adopt a complete body and record its entry, replacing any variant with the
        same secondary key; returns the entry as stored."""

    @abc.abstractmethod
    def commit_manifest(self, entry: Entry) -> Entry:
        """Record a segmented entry (no body of its own; slices come later), replacing
        any variant with the same secondary key."""

    @abc.abstractmethod
    def commit_slice(self, entry: Entry, index: int, body: BodyWriter) -> None:
        """Adopt one complete slice of a segmented entry."""

    @abc.abstractmethod
    def open_slice(self, entry: Entry, index: int) -> IO[bytes] | None:
        """An open file of one stored slice, or None if it is not (or no longer) here."""

    @abc.abstractmethod
    def update(self, entry: Entry) -> None:
        """Replace an entry's metadata (e.g. headers freshened by a 304)."""

    @abc.abstractmethod
    def remove(self, key: str) -> int:
        """Remove every variant of a key; returns how many were removed."""

    def drop_lost(self, entry: Entry) -> bool:
        """The entry's body could not be opened (evicted under its reader): drop its
        key and say True, or say False when the store has moved on since the entry was
        read (another process replaced or removed it: look it up again)."""
        self.remove(entry.key)
        return True

    @abc.abstractmethod
    def keys(self) -> Iterator[str]:
        """Every primary key with stored entries (for the purge sweeper)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Drop everything (a node that missed purges it can no longer learn)."""

    @abc.abstractmethod
    def stats(self) -> tuple[int, int]:
        """(bytes used, number of stored objects)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def version(self) -> Hashable:
        """A token that stays equal while no entry's metadata changed (a commit,
        update, removal, eviction or clear). Memory tiers above the store
        (edge.pipeline.fastpath) re-check what they hold only when it moves."""
        return None  # a store that cannot tell: always re-check


class _Adopt:
    """A marker value: store this finished file by renaming it (no copy)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size


#: Longer keys take diskcache's own path (a pickle this long may be framed otherwise).
_FAST_KEY_MAX = 32 << 10


class _AdoptingDisk(diskcache.Disk):
    """diskcache's Disk, taught to take ownership of an already-written file by
    renaming it into place. Copying a multi-GB body once more at commit time would
    double the disk traffic of every miss."""

    last_filename: str = ""

    def put(self, key: Any) -> tuple[Any, bool]:
        """The database form of a key, as diskcache's own (a pickle without unused
        memo opcodes), made in one pass: the store's keys are tuples of distinct
        strings and ints, which a memo-less pickler writes to those very bytes, where
        pickletools.optimize costs a miss more than its SQLite row does."""
        if type(key) is tuple and len({id(part) for part in key}) == len(key):
            out = io.BytesIO()
            pickler = pickle.Pickler(out, self.pickle_protocol)
            pickler.fast = True  # no memo: what optimize would strip is never written
            pickler.dump(key)
            data = out.getvalue()
            if len(data) < _FAST_KEY_MAX:
                return sqlite3.Binary(data), False
        return super().put(key)

    def filename(self, key: Any = UNKNOWN, value: Any = UNKNOWN) -> tuple[str, str]:
        """A new file's name: random, under one level of 256 directories (diskcache
        makes two levels, 65,536 directories: nearly every file of a young store then
        needs a directory of its own). The name is kept in the row, so files named
        either way are found."""
        hex_name = os.urandom(16).hex()
        filename = os.path.join(hex_name[:2], hex_name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, Any, Any]:
        if isinstance(value, _Adopt):
            filename, full_path = self.filename(key, value)
            for _ in range(3):
                # Its directory usually exists: one rename, and the directories only
                # when it does not (diskcache removes a directory it empties, so
                # another process may have removed it just after it was made).
                try:
                    os.replace(value.path, full_path)
                    break
                except FileNotFoundError:
                    if not value.path.exists():
                        raise
                    os.makedirs(os.path.dirname(full_path), exist_ok=True)
            else:
                raise OSError(f"could not adopt {value.path} as {full_path}")
            self.last_filename = filename
            return value.size, MODE_BINARY, filename, None
        return super().store(value, read, key)


#: A row as diskcache's `set` writes it (no expiry, no tag; its triggers keep the
#: store's count and size), in one statement per row. Only new keys' rows are written
#: this way; were a row there after all, it is replaced as `set` would.
_UPSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
    " tag, size, mode, filename, value) VALUES (?, ?, ?, NULL, ?, 0, NULL, ?, ?, ?, ?)"
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
    " expire_time = NULL, access_time = excluded.access_time, access_count = 0,"
    " tag = NULL, size = excluded.size, mode = excluded.mode,"
    " filename = excluded.filename, value = excluded.value"
)

#: `Entry.body_file` of a body kept in its row (INLINE_MAX).
INLINE = ":inline"

#: How many keys' metadata is kept in memory (it is small: headers and times).
META_CACHE_KEYS = 65536
#: How often recorded accesses are written back for the LRU order, in seconds.
TOUCH_INTERVAL = 1.0
#: A batch of deferred commits is written at once when it grows this long, or holds
#: this many bytes of bodies (they wait in memory).
BATCH_MAX = 256
BATCH_BYTES = 8 << 20
#: How often the WAL is checkpointed (`_Checkpointer`), in seconds: often enough that
#: it stays a few MB at thousands of misses per second.
CHECKPOINT_INTERVAL = 0.2


class DiskStore(Store):
    """Entries and bodies in a diskcache Cache: size-bounded, evicting the least
    recently used, durable across restarts (SQLite in WAL mode plus body files).

    Reads are served from memory where possible: metadata is cached per key, a body is
    opened by its file name (a small one read from its row), and accesses are written
    back to diskcache's access_time column in batches, so a hit costs no SQLite write.
    Small values (metadata, bodies up to INLINE_MAX) live in their rows: a miss of a
    small object creates no file of the store's own. This relies on diskcache's table
    layout (pinned to diskcache 5.x).

    The processes of one node share a store directory through `coordination`
    (edge.multiproc.coordination): each change to a key's metadata is one SQLite transaction (a
    read-modify-write of a key's variants cannot interleave with another process's),
    announced afterwards as the keys' new generations, which the memory cache of every
    process checks before it answers; `incoming/` is emptied (`prepare`) by the one
    process that may: the node's own, or its workers' supervisor before any starts.
    """

    def __init__(self, directory: Path, size_limit: int, coordination: Coordination) -> None:
        self.directory = Path(directory)
        self._coordination = coordination
        coordination.prepare_directory(lambda: self.prepare(self.directory))
        self.tmp = self.directory / "incoming"
        self.objects = self.directory / "objects"
        self.cache = diskcache.Cache(
            str(self.objects),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            disk=_AdoptingDisk,
            # Values smaller than this stay in their SQLite row (diskcache's rule):
            # metadata and small bodies; slices and larger bodies are adopted files.
            disk_min_file_size=INLINE_MAX + 1,
            # diskcache's own cull drops a fixed number of rows per write, which for
            # a small cache empties it; `_evict` removes whole objects instead, only
            # as many as the bound needs.
            cull_limit=0,
        )
        self.size_limit = size_limit
        # diskcache is thread-safe, but a read-modify-write of one key's variant map
        # must not interleave with another (other processes: the transaction).
        self._lock = threading.Lock()
        # Per key: its generation when read (edge.multiproc.coordination) and its variants,
        # newest first.
        self._meta_cache: dict[str, tuple[int, list[Entry]]] = {}
        self._touched: dict[tuple[str, ...], float] = {}
        self._last_flush = time.monotonic()
        # Bodies arriving in a worker are named after it, so that the supervisor can
        # remove a dead worker's (edge.multiproc.workers).
        self._prefix = coordination.body_prefix
        self.version = coordination.version  # type: ignore[method-assign]
        # Commits of small bodies waiting for the end of the loop's turn (`flush`),
        # by key, in order; only where no other process reads the store.
        self._defer = coordination.defers_commits
        self._pending: dict[str, list[tuple[Entry, bytes]]] = {}
        self._pending_count = 0
        self._pending_bytes = 0
        self._flush_scheduled = False
        # The WAL is copied back into the database (a checkpoint: page writes and an
        # fsync) by a thread of its own, not by whichever commit of this thread crosses
        # SQLite's threshold: that commit would hold the event loop for the fsync, and
        # every request in flight with it (the p99 of a miss).
        self.cache._sql("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = _Checkpointer(self.cache)

    @staticmethod
    def prepare(directory: Path) -> None:
        """Make the directory private and empty `incoming/`: before the store opens,
        once, by the only process that may (the node's, or its supervisor)."""
        directory = Path(directory)
        # Private to the node's user: stored responses can be personal (Authorization
        # with public, cookies an origin chose to share), and a local user must not
        # plant a body for the node to serve.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o077:
            directory.chmod(0o700)
        tmp = directory / "incoming"
        # Bodies that were still arriving when the process stopped are incomplete:
        # nothing refers to them, so they go.
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

    @contextlib.contextmanager
    def _changing(self) -> Iterator[list[str]]:
        """One change to the metadata: a transaction (other processes wait for it),
        and afterwards the keys it changed (appended to the list given) announced.
        Deferred commits are written first, so that changes land in their order."""
        if self._pending:
            self.flush()
        changed: list[str] = []
        with self._lock:
            with self.cache.transact():
                yield changed
            # Committed: only now may another process read the new state.
            if changed:
                for key in changed:
                    self._meta_cache.pop(key, None)
                self._coordination.changed(*changed)

    # -- metadata -----------------------------------------------------------------

    def _get(self, key: tuple[Any, ...], read: bool = False) -> Any:
        """A value by key, or None: a plain read. diskcache's own `get` writes the
        access time in a transaction of its own under an LRU policy; accesses are
        recorded in batches here instead (`flush_access`)."""
        db_key, raw = self.cache._disk.put(key)
        row = self.cache._sql(
            "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?", (db_key, raw)
        ).fetchone()
        if row is None:
            return None
        try:
            return self.cache._disk.fetch(*row, read)
        except OSError:
            return None  # its file went (evicted) between the row and the open

    def _meta(self, key: str) -> dict[str, Entry]:
        value = self._get(("m", key))
        return value if isinstance(value, dict) else {}

    def _put_meta(self, key: str, meta: dict[str, Entry], changed: list[str]) -> None:
        if meta:
            self.cache.set(("m", key), meta)
        else:
            self.cache.delete(("m", key))
        changed.append(key)

    def variants(self, key: str) -> list[Entry]:
        if key in self._pending:
            self.flush()
        # Read before the metadata: a change committed after this read shows as a
        # new generation next time.
        generation = self._coordination.generation(key)
        cached = self._meta_cache.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        entries = sorted(self._meta(key).values(), key=lambda e: -e.response_time)
        if cached is None and len(self._meta_cache) >= META_CACHE_KEYS:
            self._meta_cache.pop(next(iter(self._meta_cache)))
        self._meta_cache[key] = (generation, entries)
        return entries

    # -- bodies ---------------------------------------------------------------------

    def open_body(self, entry: Entry) -> IO[bytes] | None:
        if entry.key in self._pending:
            self.flush()
        if entry.body_file == INLINE:
            data = self._get(("b", entry.key, entry.variant))
            if not isinstance(data, bytes):
                return None  # evicted
            handle = _memory_file(data)
        else:
            try:
                handle = open(self.objects / entry.body_file, "rb")  # noqa: SIM115 - caller closes
            except (FileNotFoundError, IsADirectoryError):
                return None  # evicted
        now = time.time()
        self._touched[("b", entry.key, entry.variant)] = now
        self._touched[("m", entry.key)] = now
        if time.monotonic() - self._last_flush > TOUCH_INTERVAL:
            self.flush_access()
        return handle

    def flush_access(self) -> None:
        """Write recorded accesses to diskcache's access_time, which orders LRU
        eviction, in one transaction."""
        touched, self._touched = self._touched, {}
        self._last_flush = time.monotonic()
        if not touched:
            return
        put = self.cache._disk.put
        with self._lock, self.cache.transact():
            for key, when in touched.items():
                db_key, raw = put(key)
                self.cache._sql(
                    "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = ?",
                    (when, db_key, raw),
                )

    def begin(self, expected: int | None = None) -> BodyWriter:
        if expected is not None and expected <= INLINE_MAX:
            return BodyWriter(None)
        return BodyWriter(self.tmp / f"{self._prefix}{uuid.uuid4().hex}")

    def commit(self, entry: Entry, body: BodyWriter) -> Entry:
        body.close()
        small = body.small
        if small is not None and self._defer_now():
            entry = entry.stored_as(INLINE)
            self._pending.setdefault(entry.key, []).append((entry, small))
            self._pending_count += 1
            self._pending_bytes += len(small)
            # The version moves at once (edge.pipeline.fastpath compares it); the next lookup
            # of the key writes the batch first.
            self._coordination.changed(entry.key)
            body.discard()  # its readers keep their descriptors
            if self._pending_count >= BATCH_MAX or self._pending_bytes >= BATCH_BYTES:
                self.flush()
            return entry
        with self._changing() as changed:
            if entry.derived_from and entry.derived_from not in self._meta(entry.key):
                # Its source went (another process may have removed it): nor is this.
                body.discard()
                return entry
            if small is not None:
                # In the row, in this transaction: visible whole or not at all.
                self.cache.set(("b", entry.key, entry.variant), small)
                entry = entry.stored_as(INLINE)
            else:
                disk: _AdoptingDisk = self.cache.disk
                self.cache.set(("b", entry.key, entry.variant), _Adopt(body.path, body.written))
                entry = entry.stored_as(disk.last_filename)
            self._record(entry, changed)
        if small is not None:
            body.discard()  # its readers keep their descriptors
        return entry

    def _defer_now(self) -> bool:
        """Whether a commit may wait for the end of this loop turn; schedules the
        batch's write when it is the first to."""
        if not self._defer:
            return False
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False  # no loop to end a turn: written now
            loop.call_soon(self.flush)
            self._flush_scheduled = True
        return True

    def flush(self) -> None:
        """Write the deferred commits in one transaction: each entry with its body in
        its row, so a crash keeps an entry whole or loses it."""
        self._flush_scheduled = False
        if not self._pending:
            return
        pending, self._pending, self._pending_count = self._pending, {}, 0
        self._pending_bytes = 0
        changed: list[str] = []
        with self._lock:
            try:
                with self.cache.transact():
                    fresh: list[tuple[Any, ...]] = []
                    for key, commits in pending.items():
                        meta = self._known_meta(key)
                        if not meta and len(commits) == 1 and not commits[0][0].derived_from:
                            # A key new to the store (the common miss): its body row and
                            # its metadata row are new, nothing is replaced or dropped.
                            entry, data = commits[0]
                            fresh += self._new_rows(entry, data)
                            changed.append(key)
                            continue
                        for entry, data in commits:
                            if entry.derived_from and entry.derived_from not in meta:
                                continue  # its source went meanwhile: nor is this
                            self.cache.set(("b", key, entry.variant), data)
                            self._record(entry, changed, evict=False, meta=meta)
                    if fresh:
                        self.cache._con.executemany(_UPSERT, fresh)
                    self._evict("", changed)
            except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
                # Rolled back: the batch is not stored (fetched again when next asked),
                # as a commit that failed alone would not be.
                log.error("could not store %d new entries: %s", len(pending), exc)
            for key in {*pending, *changed}:
                self._meta_cache.pop(key, None)
            self._coordination.changed(*pending, *changed)

    def _new_rows(self, entry: Entry, data: bytes) -> list[tuple[Any, ...]]:
        """The rows diskcache's `set` would write for a new entry's body and for its
        key's metadata (encoded by diskcache's Disk, as `set` does), for one executemany:
        `set` costs each a SELECT, a transaction of its own and a cull check."""
        now = time.time()
        disk = self.cache._disk
        rows = []
        for key, value in (
            (("b", entry.key, entry.variant), data),
            (("m", entry.key), {entry.variant: entry}),
        ):
            db_key, raw = disk.put(key)
            size, mode, filename, db_value = disk.store(value, False, key=key)
            rows.append((db_key, raw, now, now, size, mode, filename, db_value))
        return rows

    def commit_manifest(self, entry: Entry) -> Entry:
        with self._changing() as changed:
            self._record(entry, changed)
        return entry

    def commit_slice(self, entry: Entry, index: int, body: BodyWriter) -> None:
        body.close()
        with self._changing() as changed:
            if entry.variant not in self._meta(entry.key):
                body.discard()  # purged or replaced while the slice was arriving
                return
            key = ("s", entry.key, entry.variant, index)
            self.cache.set(key, _Adopt(body.path, body.written))
            self._evict(entry.key, changed)

    def open_slice(self, entry: Entry, index: int) -> IO[bytes] | None:
        handle = self._get(("s", entry.key, entry.variant, index), read=True)
        if handle is not None:
            self._touched[("s", entry.key, entry.variant, index)] = time.time()
        return handle  # type: ignore[no-any-return]

    def _known_meta(self, key: str) -> dict[str, Entry]:
        """The key's metadata as this process last read it, if still current (a miss
        was looked up just before its commit), else as stored."""
        cached = self._meta_cache.get(key)
        if cached is not None and cached[0] == self._coordination.generation(key):
            return {entry.variant: entry for entry in cached[1]}
        return self._meta(key)

    def _record(
        self,
        entry: Entry,
        changed: list[str],
        evict: bool = True,
        meta: dict[str, Entry] | None = None,
    ) -> None:
        """Add a variant to its key's metadata (`meta`: as already read, and updated
        here), dropping the one it replaces."""
        if meta is None:
            meta = self._meta(entry.key)
        replaced = {v.variant for v in meta.values() if v.vary == entry.vary}
        for old in [
            v for v in meta.values() if v.variant in replaced or v.derived_from in replaced
        ]:
            del meta[old.variant]
            self._drop_bodies(old)
        meta[entry.variant] = entry
        self._put_meta(entry.key, meta, changed)
        if evict:
            self._evict(entry.key, changed)

    def _drop_bodies(self, entry: Entry) -> None:
        self.cache.delete(("b", entry.key, entry.variant))
        for index in range(entry.slice_count):
            self.cache.delete(("s", entry.key, entry.variant, index))

    def update(self, entry: Entry) -> None:
        with self._changing() as changed:
            meta = self._meta(entry.key)
            if entry.variant in meta:
                meta[entry.variant] = entry
                self._put_meta(entry.key, meta, changed)

    def remove(self, key: str) -> int:
        with self._changing() as changed:
            meta = self._meta(key)
            for entry in meta.values():
                self._drop_bodies(entry)
            self._put_meta(key, {}, changed)
            return len(meta)

    def drop_lost(self, entry: Entry) -> bool:
        # Checked in the transaction: another process may have replaced the entry.
        with self._changing() as changed:
            meta = self._meta(entry.key)
            current = meta.get(entry.variant)
            if current is None or self._has_body(current):
                return False  # replaced or removed by another worker since it was read
            for stale in meta.values():
                self._drop_bodies(stale)
            self._put_meta(entry.key, {}, changed)
            return True

    def _has_body(self, entry: Entry) -> bool:
        if entry.body_file == INLINE:
            return self._get(("b", entry.key, entry.variant)) is not None
        return (self.objects / entry.body_file).exists()

    def _evict(self, keep: str, changed: list[str]) -> None:
        """Remove least recently used objects (a variant's body or one slice, or a
        key's metadata with all its bodies) until the store is within its bound."""
        while self.cache.volume() > self.size_limit:
            rows = self.cache._sql(  # diskcache keeps access_time for its LRU policy
                "SELECT key, raw FROM Cache ORDER BY access_time LIMIT 4"
            ).fetchall()
            victims = [self.cache._disk.get(key, raw) for key, raw in rows]
            victims = [v for v in victims if v[1] != keep]
            if not victims:
                return
            for victim in victims:
                if victim[0] == "m":
                    for entry in self._meta(victim[1]).values():
                        self._drop_bodies(entry)
                    self.cache.delete(victim)
                    changed.append(victim[1])
                elif victim[0] == "s":
                    self.cache.delete(victim)  # a missing slice is fetched again
                else:
                    _, key, variant = victim
                    self.cache.delete(victim)
                    meta = self._meta(key)
                    if meta.pop(variant, None) is not None:
                        self._put_meta(key, meta, changed)

    def keys(self) -> Iterator[str]:
        self.flush()
        for key in self.cache.iterkeys():
            if isinstance(key, tuple) and key[0] == "m":
                yield key[1]

    def clear(self) -> None:
        self._pending.clear()
        self._pending_count = 0
        self._pending_bytes = 0
        with self._lock:
            self.cache.clear()
            self._meta_cache.clear()
            self._touched.clear()
            self._coordination.changed_all()

    def stats(self) -> tuple[int, int]:
        self.flush()
        return int(self.cache.volume()), len(self.cache) // 2

    def version(self) -> Hashable:
        # The coordination's (edge.multiproc.coordination), set in __init__.
        return self._coordination.version()

    def close(self) -> None:
        self.flush()
        self.flush_access()
        self._checkpointer.stop()
        self.cache.close()


class _Checkpointer:
    """Checkpoints a store's WAL from a thread of its own, every CHECKPOINT_INTERVAL.

    PASSIVE: it copies what no reader still needs and never waits for one, so neither
    this process's loop nor another process is held by it (SQLite releases the GIL
    while it works). The connection is the thread's own (diskcache keeps one per
    thread), closed when the thread stops; the last connection to close checkpoints
    whatever is left, as SQLite does.
    """

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                self.checkpoint()
        finally:
            self._cache.close()  # this thread's connection

    def checkpoint(self) -> None:
        """One round, on the calling thread's connection."""
        try:
            self._cache._sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            # Busy or locked: the next round tries again; meanwhile the WAL grows.
            log.debug("WAL checkpoint deferred: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _memory_file(data: bytes) -> IO[bytes]:
    """An inline body as an open file with a descriptor of its own (memfd, no disk):
    delivery reads stored bodies with pread and sends large ones with sendfile, which
    a descriptor-less io.BytesIO could not take."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:  # not Linux: an anonymous temporary file
        import tempfile

        handle: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - caller closes
        handle.write(data)
        handle.flush()
        handle.seek(0)
        return handle
    fd = memfd_create("edge-body", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    handle = open(fd, "rb", closefd=True)  # noqa: SIM115 - caller closes
    handle.seek(0)
    return handle


def new_variant_id() -> str:
    """128 random bits in hex (uuid4's length, without its cost on every miss)."""
    return os.urandom(16).hex()
