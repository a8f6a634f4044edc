"""The seam between one node's processes: everything they must agree on, behind one
interface, so that no other module asks whether it runs alone or as one worker of
several (edge.multiproc.workers).

This module owns the interface (`Coordination`) and its single-process implementation
(`Solo`); the workers' implementation is edge.multiproc.workers.Workers. A node's entry point
builds one of them and hands it to the store, the in-flight table, the purger and the
node; they call it the same way either way.

What goes through it:

- this process's duties: whether it does the node-wide work (the coordinator's
  subscription, the purge sweeper), its listeners' SO_REUSEPORT, preparing the cache
  directory, naming the bodies it writes;
- the store's version: announcing changed keys, each key's generation, the version
  token the hot tier compares (edge.store.disk, edge.pipeline.fastpath);
- the purge state: its lock, its stamp (moved by whoever rewrote it), whether the node
  has caught up with the coordinator, the start of the oldest fill in flight (a ban is
  retired only once no fill can be older: edge.purge.bans);
- fills: a lock per fill key, held by whoever brings the key; the record of what that
  fill turned out to be, for the others to follow (edge.fetch.fill); the marks that readers
  want a stream to go on (edge.fetch.slices);
- metrics: the node's exposition (every process's counters) and the snapshot a process
  leaves when it stops.

`Solo` is one process's: state in memory, and the supervisor's work done by the node
itself. It implements the same contract (tests/unit/test_coordination.py holds both to it),
so that a path that works alone works unchanged across workers.
"""

from __future__ import annotations

import abc
import contextlib
import os
import time
from collections.abc import Callable, Coroutine, Hashable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.observe.metrics import NodeMetrics
    from edge.purge.bans import Purger

#: A record published for a fill: what it became, for the node's other processes.
Record = dict[str, Any]

#: How long a finished fill's record stays for the processes that followed it.
RECORD_LINGER = 10.0


class Coordination(abc.ABC):
    """What the processes of one node share (see the module's docstring)."""

    # -- this process's duties ------------------------------------------------------

    @property
    @abc.abstractmethod
    def leads(self) -> bool:
        """Whether this process subscribes to the coordinator and sweeps purges."""

    @property
    @abc.abstractmethod
    def reuse_port(self) -> bool:
        """Whether listeners bind with SO_REUSEPORT (several processes, one port)."""

    @abc.abstractmethod
    def prepare_directory(self, prepare: Callable[[], None]) -> None:
        """Run `prepare` (make the cache directory private, empty `incoming/`) when
        this process is the one that may: not a worker (its supervisor did, once)."""

    @property
    @abc.abstractmethod
    def body_prefix(self) -> str:
        """How bodies this process writes begin their names (a dead worker's are
        removed by its supervisor)."""

    @property
    @abc.abstractmethod
    def defers_commits(self) -> bool:
        """Whether the store may hold new entries until the end of the event loop's
        turn and write them in one transaction: only when no other process reads the
        store (another would look for an entry as soon as its fill lets go)."""

    # -- the store's version ----------------------------------------------------------

    @abc.abstractmethod
    def changed(self, *keys: str) -> None:
        """After this process committed a change to these keys' metadata."""

    @abc.abstractmethod
    def changed_all(self) -> None:
        """After this process dropped the whole store."""

    @abc.abstractmethod
    def generation(self, key: str) -> int:
        """The key's metadata generation: differs after another process changed it
        (this process drops its own memory copy itself)."""

    @abc.abstractmethod
    def version(self) -> Hashable:
        """Equal while no process changed the store (or the purge state)."""

    # -- the purge state ----------------------------------------------------------------

    @abc.abstractmethod
    def purge_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while the purge state is read, changed and written back."""

    @abc.abstractmethod
    def purge_stamp(self) -> int:
        """Moves whenever any process rewrote the purge state."""

    @abc.abstractmethod
    def purge_changed(self) -> int:
        """After this process rewrote the purge state (under `purge_lock`): moves the
        stamp and the version; returns the new stamp."""

    @abc.abstractmethod
    def share_ready(self, purger: Purger) -> None:
        """Whether the node has caught up with the coordinator: the leading process
        says (from its purger), the others take it up (into theirs)."""

    @abc.abstractmethod
    def set_oldest(self, started: float | None) -> None:
        """When this process's oldest fill in flight started (None: it has none)."""

    @abc.abstractmethod
    def oldest(self) -> float | None:
        """When the oldest fill in flight in any process started."""

    # -- fills across processes ---------------------------------------------------------

    @abc.abstractmethod
    def try_lock(self, key: str) -> bool:
        """Take the fill key's lock, unless some fill (this process's included) holds it."""

    @abc.abstractmethod
    def unlock(self, key: str) -> None:
        """Let go of a lock this process took (a no-op for one it does not hold)."""

    @abc.abstractmethod
    def publish(self, key: str, record: Record) -> None:
        """Make the record of the key's fill readable by the others."""

    @abc.abstractmethod
    def read(self, key: str) -> Record | None:
        """The key's latest record, or None."""

    @abc.abstractmethod
    def forget(self, key: str) -> None:
        """Remove the key's record (an older fill's says nothing of a new one)."""

    @abc.abstractmethod
    def forget_later(self, key: str, ident: str) -> None:
        """Remove a finished fill's record once its followers are done with it, unless
        a later fill (another `ident`) wrote its own meanwhile."""

    @abc.abstractmethod
    def want(self, key: str, *, start: bool = False, stop: bool = False) -> None:
        """Say that a reader wants `key` to go on (edge.fetch.slices' streams). The one
        bringing it creates the mark (`start`, wanted by nobody yet) and removes it
        (`stop`); readers only touch it."""

    @abc.abstractmethod
    def wanted_since(self, key: str, since: float) -> bool:
        """Whether a reader touched the key's mark at or after `since` (epoch seconds)."""

    # -- metrics and lifetime ------------------------------------------------------------

    @abc.abstractmethod
    async def exposition(self, metrics: NodeMetrics) -> bytes:
        """The node's metrics: this process's counters and every other's."""

    @abc.abstractmethod
    def duties(self, purger: Purger, metrics: NodeMetrics) -> list[Coroutine[Any, Any, None]]:
        """Background work the node runs for as long as it serves."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """This process's part of /_edge/health (empty: nothing to say)."""

    @abc.abstractmethod
    def close(self, metrics: NodeMetrics) -> None:
        """The node stops: leave what the others need (its last counters), let go."""


class Solo(Coordination):
    """One process alone: what would be shared lives in memory, read by nobody else.

    Locks, records and marks are still kept (cheaply), so the callers' paths are the
    same as across workers and the contract tests hold for both; the clock is
    injectable for those tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._changes = 0
        self._purge_stamp = 0
        self._oldest: float | None = None
        self._held: set[str] = set()
        self._records: dict[str, Record] = {}
        self._wanted: dict[str, float] = {}

    @property
    def leads(self) -> bool:
        return True

    @property
    def reuse_port(self) -> bool:
        return False

    def prepare_directory(self, prepare: Callable[[], None]) -> None:
        prepare()

    @property
    def body_prefix(self) -> str:
        return ""

    @property
    def defers_commits(self) -> bool:
        return True

    def changed(self, *keys: str) -> None:
        self._changes += 1

    def changed_all(self) -> None:
        self._changes += 1

    def generation(self, key: str) -> int:
        return 0  # nobody else changes a key behind this process's back

    def version(self) -> Hashable:
        return self._changes

    @contextlib.contextmanager
    def _unlocked(self) -> Iterator[None]:
        yield  # one process, one thread: the state is rewritten without an await

    def purge_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._unlocked()

    def purge_stamp(self) -> int:
        return self._purge_stamp

    def purge_changed(self) -> int:
        self._changes += 1
        self._purge_stamp += 1
        return self._purge_stamp

    def share_ready(self, purger: Purger) -> None:
        return None  # the purger's own word is the node's

    def set_oldest(self, started: float | None) -> None:
        self._oldest = started

    def oldest(self) -> float | None:
        return self._oldest

    def try_lock(self, key: str) -> bool:
        if key in self._held:
            return False
        self._held.add(key)
        return True

    def unlock(self, key: str) -> None:
        self._held.discard(key)

    def publish(self, key: str, record: Record) -> None:
        self._records[key] = record

    def read(self, key: str) -> Record | None:
        return self._records.get(key)

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def forget_later(self, key: str, ident: str) -> None:
        # At once: in one process nothing follows a fill once it has left the table.
        if self._records.get(key, {}).get("id") == ident:
            del self._records[key]

    def want(self, key: str, *, start: bool = False, stop: bool = False) -> None:
        if stop:
            self._wanted.pop(key, None)
        elif start:
            self._wanted[key] = 0.0  # wanted by nobody yet
        elif key in self._wanted:
            self._wanted[key] = self._clock()

    def wanted_since(self, key: str, since: float) -> bool:
        return self._wanted.get(key, -1.0) >= since

    async def exposition(self, metrics: NodeMetrics) -> bytes:
        return metrics.render()

    def duties(self, purger: Purger, metrics: NodeMetrics) -> list[Coroutine[Any, Any, None]]:
        return []

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self, metrics: NodeMetrics) -> None:
        self._held.clear()


def alive(pid: Any) -> bool:
    """Whether `pid` names a live process (a fill's, from its record)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
