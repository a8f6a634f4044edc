"""What the worker processes of one node (edge.multiproc.workers) share in memory, through one
memory-mapped file in the cache directory (`workers.map`).

This module owns that file's layout:

- a change counter per worker: bumped by a worker after each change it made to the
  store's metadata or to the purge state; the counters' bytes are the store's version
  (edge.store.disk.Store.version), read on every hot-tier hit, so reading it is one slice;
- a generation per cache key (hashed into a fixed table): a worker writes a new value
  after it changed a key's metadata, and the others' memory caches of that key check it
  (edge.store.disk);
- each worker's pid and the start of its oldest fill in flight (edge.purge.bans retires a
  ban only once no fill in any worker is older);
- stamps: "the purge state changed" (edge.purge.bans reloads it) and "a scrape wants fresh
  counters" (edge.observe.metrics);
- whether the node has caught up with the coordinator's purges (the lead worker, which
  alone subscribes, says; the others serve nothing cached until it has).

No lock is taken anywhere: a counter has one writer (its worker), and every other value
written is unique to its writer (the worker's index in the top byte, the worker's own
counter below), so a reader that compares for equality can never take a later write for
an earlier one, even when two workers write one slot at once. Every slot is read and
written as one aligned 8-byte word (a memoryview cast), never with struct.pack_into,
which zeroes its target before it writes: another process could read that zero.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from pathlib import Path

from edge.config import MAX_WORKERS

FILE = "workers.map"
MAGIC = b"edgemap1"

_LOW = (1 << 56) - 1

# Word indexes (8 bytes each) in the file.
_COUNT = 1
_PURGE_STAMP = 2
_SCRAPE_STAMP = 3
_READY = 4
_COUNTERS = 8
_OLDEST = _COUNTERS + MAX_WORKERS
_PIDS = _OLDEST + MAX_WORKERS
_KEYS = 512
#: Slots of the key-generation table; two keys in one slot only cost a re-read.
KEY_SLOTS = 1 << 16
SIZE = 8 * (_KEYS + KEY_SLOTS)


def create(directory: Path, workers: int) -> Path:
    """A fresh map for a node of `workers` processes (by the supervisor, before any
    worker starts)."""
    path = Path(directory) / FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.truncate(SIZE)
        out.write(MAGIC + struct.pack("=Q", workers))  # before any reader
    os.replace(tmp, path)
    return path


def _words(mm: mmap.mmap) -> tuple[memoryview, memoryview]:
    """The map as unsigned 8-byte words, and as doubles (the same memory)."""
    view = memoryview(mm)
    return view.cast("Q"), view.cast("d")


class Shared:
    """One worker's view of the map: `index` is its own slot."""

    def __init__(self, directory: Path, index: int) -> None:
        path = Path(directory) / FILE
        fd = os.open(path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        if self._mm[:8] != MAGIC:
            raise ValueError(f"{path} is not a worker map")
        self._q, self._d = _words(self._mm)
        self.count = int(self._q[_COUNT])
        if not 0 <= index < self.count <= MAX_WORKERS:
            raise ValueError(f"worker {index} of {self.count}")
        self.index = index
        self._slot = _COUNTERS + index
        self._start, self._end = 8 * _COUNTERS, 8 * (_COUNTERS + self.count)
        # A restarted worker carries on from its slot: its values stay unique.
        self._counter = int(self._q[self._slot])
        self._tag = (index + 1) << 56

    def close(self) -> None:
        self._q.release()
        self._d.release()
        self._mm.close()

    # -- the change counters --------------------------------------------------------

    def version(self) -> bytes:
        """Every worker's change counter: equal while nobody changed anything."""
        return self._mm[self._start : self._end]

    def _next(self) -> int:
        """Bump this worker's counter; the value returned is unique to this write."""
        self._counter += 1
        self._q[self._slot] = self._counter
        return self._tag | (self._counter & _LOW)

    def changed(self, *keys: str) -> None:
        """After this worker committed a change to these keys' metadata."""
        value = self._next()
        for key in keys:
            self._q[_key_slot(key)] = value

    def changed_all(self) -> None:
        """After this worker dropped the whole store (word by word: rare)."""
        value = self._next()
        q = self._q
        for slot in range(_KEYS, _KEYS + KEY_SLOTS):
            q[slot] = value

    def generation(self, key: str) -> int:
        """The key's metadata generation: it differs after any worker changed it."""
        return int(self._q[_key_slot(key)])

    # -- stamps ---------------------------------------------------------------------

    def purge_stamp(self) -> int:
        return int(self._q[_PURGE_STAMP])

    def purge_changed(self) -> int:
        """After this worker saved the purge state (and so moved the version too);
        returns the stamp written."""
        stamp = self._next()
        self._q[_PURGE_STAMP] = stamp
        return stamp

    def scrape_stamp(self) -> int:
        return int(self._q[_SCRAPE_STAMP])

    def request_scrape(self) -> None:
        # Not a change: the version stays. Two scrapes at once may see one stamp,
        # which only makes one of them wait its whole (short) time.
        self._q[_SCRAPE_STAMP] = self._tag | (time.monotonic_ns() & _LOW)

    def ready(self) -> bool:
        return bool(self._q[_READY])

    def set_ready(self, ready: bool) -> None:
        if bool(self._q[_READY]) != ready:
            self._q[_READY] = int(ready)

    # -- per worker -----------------------------------------------------------------

    def set_oldest(self, started: float | None) -> None:
        """When this worker's oldest fill in flight started (None: it has none)."""
        self._d[_OLDEST + self.index] = started or 0.0

    def oldest(self) -> float | None:
        """The oldest fill in flight in any worker."""
        found = [self._d[_OLDEST + i] for i in range(self.count)]
        return min((t for t in found if t > 0), default=None)

    def pids(self) -> list[int]:
        return [int(self._q[_PIDS + i]) for i in range(self.count)]


def _key_slot(key: str) -> int:
    return _KEYS + (zlib.crc32(key.encode("utf-8", "surrogatepass")) & (KEY_SLOTS - 1))


def _supervisor_write(directory: Path, words: dict[int, int], doubles: dict[int, float]) -> None:
    with open(Path(directory) / FILE, "r+b") as f, mmap.mmap(f.fileno(), SIZE) as mm:
        q, d = _words(mm)
        try:
            for index, value in words.items():
                q[index] = value
            for index, number in doubles.items():
                d[index] = number
        finally:
            q.release()
            d.release()


def set_ready(directory: Path, ready: bool) -> None:
    """The supervisor: the node's purges are (not) known to be caught up."""
    _supervisor_write(directory, {_READY: int(ready)}, {})


def set_worker(directory: Path, index: int, pid: int) -> None:
    """The supervisor records a worker it (re)started; a dead worker's fills are gone."""
    _supervisor_write(directory, {_PIDS + index: pid}, {_OLDEST + index: 0.0})
