"""What the worker processes of one node (edge.workers) share in memory, through one
memory-mapped file in the cache directory (`workers.map`).

This module owns that file's layout:

- a change counter per worker: bumped by a worker after each change it made to the
  store's metadata or to the purge state; the counters' bytes are the store's version
  (edge.store.Store.version), read on every hot-tier hit, so reading it is one slice;
- a generation per cache key (hashed into a fixed table): a worker writes a new value
  after it changed a key's metadata, and the others' memory caches of that key check it
  (edge.store);
- each worker's pid and the start of its oldest fill in flight (edge.purge retires a
  ban only once no fill in any worker is older);
- stamps: "the purge state changed" (edge.purge reloads it) and "a scrape wants fresh
  counters" (edge.metrics);
- whether the node has caught up with the coordinator's purges (the lead worker, which
  alone subscribes, says; the others serve nothing cached until it has).

No lock is taken anywhere: a counter has one writer (its worker), and every other value
written is unique to its writer (the worker's index in the top byte, the worker's own
counter below), so a reader that compares for equality can never take a later write for
an earlier one, even when two workers write one slot at once.
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
_U64 = struct.Struct("=Q")
_F64 = struct.Struct("=d")
_I64 = struct.Struct("=q")

# Offsets in the file.
_COUNT = 8
_PURGE_STAMP = 16
_SCRAPE_STAMP = 24
_READY = 32
_COUNTERS = 64
_OLDEST = _COUNTERS + 8 * MAX_WORKERS
_PIDS = _OLDEST + 8 * MAX_WORKERS
_KEYS = 4096
#: Slots of the key-generation table; two keys in one slot only cost a re-read.
KEY_SLOTS = 1 << 16
SIZE = _KEYS + 8 * KEY_SLOTS


def create(directory: Path, workers: int) -> Path:
    """A fresh map for a node of `workers` processes (by the supervisor, before any
    worker starts)."""
    path = Path(directory) / FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.truncate(SIZE)
        out.write(MAGIC + _U64.pack(workers))
    os.replace(tmp, path)
    return path


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
        self.count = _U64.unpack_from(self._mm, _COUNT)[0]
        if not 0 <= index < self.count <= MAX_WORKERS:
            raise ValueError(f"worker {index} of {self.count}")
        self.index = index
        self._slot = _COUNTERS + 8 * index
        self._end = _COUNTERS + 8 * self.count
        # A restarted worker carries on from its slot: its values stay unique.
        self._counter = _U64.unpack_from(self._mm, self._slot)[0]
        self._tag = (index + 1) << 56

    def close(self) -> None:
        self._mm.close()

    # -- the change counters --------------------------------------------------------

    def version(self) -> bytes:
        """Every worker's change counter: equal while nobody changed anything."""
        return self._mm[_COUNTERS : self._end]

    def _next(self) -> int:
        """Bump this worker's counter; the value returned is unique to this write."""
        self._counter += 1
        _U64.pack_into(self._mm, self._slot, self._counter)
        return self._tag | (self._counter & _LOW)

    def changed(self, *keys: str) -> None:
        """After this worker committed a change to these keys' metadata."""
        value = self._next()
        for key in keys:
            _U64.pack_into(self._mm, _key_slot(key), value)

    def changed_all(self) -> None:
        """After this worker dropped the whole store."""
        value = self._next()
        self._mm[_KEYS:SIZE] = _U64.pack(value) * KEY_SLOTS

    def generation(self, key: str) -> int:
        """The key's metadata generation: it differs after any worker changed it."""
        return int(_U64.unpack_from(self._mm, _key_slot(key))[0])

    # -- stamps ---------------------------------------------------------------------

    def purge_stamp(self) -> int:
        return int(_U64.unpack_from(self._mm, _PURGE_STAMP)[0])

    def purge_changed(self) -> None:
        """After this worker saved the purge state (and so moved the version too)."""
        _U64.pack_into(self._mm, _PURGE_STAMP, self._next())

    def scrape_stamp(self) -> int:
        return int(_U64.unpack_from(self._mm, _SCRAPE_STAMP)[0])

    def request_scrape(self) -> None:
        # Not a change: the version stays. Two scrapes at once may see one stamp,
        # which only makes one of them wait its whole (short) time.
        _U64.pack_into(self._mm, _SCRAPE_STAMP, self._tag | (time.monotonic_ns() & _LOW))

    def ready(self) -> bool:
        return bool(_U64.unpack_from(self._mm, _READY)[0])

    def set_ready(self, ready: bool) -> None:
        _U64.pack_into(self._mm, _READY, int(ready))

    # -- per worker -----------------------------------------------------------------

    def set_oldest(self, started: float | None) -> None:
        """When this worker's oldest fill in flight started (None: it has none)."""
        _F64.pack_into(self._mm, _OLDEST + 8 * self.index, started or 0.0)

    def oldest(self) -> float | None:
        """The oldest fill in flight in any worker."""
        found = [_F64.unpack_from(self._mm, _OLDEST + 8 * i)[0] for i in range(self.count)]
        return min((t for t in found if t > 0), default=None)

    def pids(self) -> list[int]:
        return [_I64.unpack_from(self._mm, _PIDS + 8 * i)[0] for i in range(self.count)]


def _key_slot(key: str) -> int:
    return _KEYS + 8 * (zlib.crc32(key.encode("utf-8", "surrogatepass")) & (KEY_SLOTS - 1))


def set_ready(directory: Path, ready: bool) -> None:
    """The supervisor: the node's purges are (not) known to be caught up."""
    with open(Path(directory) / FILE, "r+b") as f, mmap.mmap(f.fileno(), SIZE) as mm:
        _U64.pack_into(mm, _READY, int(ready))


def set_worker(directory: Path, index: int, pid: int) -> None:
    """The supervisor records a worker it (re)started; a dead worker's fills are gone."""
    with open(Path(directory) / FILE, "r+b") as f, mmap.mmap(f.fileno(), SIZE) as mm:
        _I64.pack_into(mm, _PIDS + 8 * index, pid)
        _F64.pack_into(mm, _OLDEST + 8 * index, 0.0)
