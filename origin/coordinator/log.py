"""The coordinator's storage seam: what a purge log and node registry must do, whichever
engine keeps them, and the records they keep.

A backend (`PurgeLog`) is an ordered, durable log of purges, each given a sequence number
by the log itself (append -> seq, increasing by one, never reused even once compacted
away), read back from a position, compacted up to a point (everything at or below it is
gone, and a reader behind it is told to reset), plus the confirmations nodes made and the
node registry. Two implement it: origin.coordinator.sqlite (one file, one coordinator: the
default) and origin.coordinator.jetstream (a replicated NATS JetStream stream and KV
bucket, shared by several coordinators). `open_log` picks one by its `--backend` spec.

A shared backend (`shared` true) has other writers: `follow` feeds the coordinator what
they did (purges appended anywhere, in log order; confirmations and node changes made at
other coordinators), and the coordinator publishes a purge it appended once `follow`
brings it back (or at once when its seq is the next one it has), so every coordinator
hands its nodes one order, the log's.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from origin.coordinator.service import Link


class StoreError(RuntimeError):
    """The log cannot be opened or used; its message is one line."""


@dataclass
class Event:
    seq: int
    created: float
    purge: dict[str, Any]
    frame: str = ""  # the JSON text frame sent to nodes, made once

    def __post_init__(self) -> None:
        if not self.frame:
            message = {"type": "purge", "seq": self.seq, "created": self.created}
            self.frame = json.dumps({**message, "purge": self.purge}, separators=(",", ":"))


@dataclass
class NodeRecord:
    """A node of the registry (durable), and its connection if it has one now."""

    name: str
    role: str
    region: str = ""
    address: str = ""
    last_seen: float = 0.0
    applied: int = 0
    link: Link | None = field(default=None, repr=False)
    # The coordinator (its process id) holding the node's connection, "" for none; only a
    # shared backend keeps it, so one coordinator knows another's nodes are connected.
    holder: str = ""
    instance: str = ""  # the connected process's own id (a shared backend keeps it too)
    # When this coordinator last heard the holder renew the record (its own clock).
    renewed: float = field(default=0.0, repr=False)


@dataclass
class Snapshot:
    """A log as it stands when a coordinator opens it."""

    latest: int  # the highest seq ever appended (0: none)
    compacted: int  # every seq <= this is gone
    events: list[Event]  # the kept ones, in seq order
    confirmations: dict[int, dict[str, float]]  # seq -> node -> when it confirmed
    nodes: list[NodeRecord]


class Follower(Protocol):
    """What a shared backend reports as other coordinators write (in the order it
    learns of it; purges in seq order)."""

    def published(self, event: Event) -> None: ...

    def confirmed(self, node: str, first: int, last: int, at: float) -> None: ...

    def node_changed(self, record: NodeRecord | None, name: str) -> None: ...

    def heard(self, coordinator: str) -> None:
        """A coordinator's beat (`PurgeLog.beat`) came back."""
        ...


class PurgeLog(Protocol):
    """The contract (tests/integration/test_purge_log.py runs it against each backend)."""

    #: Other coordinators write to this log too: `follow` reports what they do.
    shared: bool
    #: Seconds a live coordinator may go unheard on this log (a member of a replicated
    #: log lost: noticed, reconnected to another, a leader elected). Added to the
    #: staleness bound of what other coordinators hold: a live shield taken for gone
    #: would let edges have a purge before it, while one gone, kept a little longer,
    #: only delays them.
    quiet_for: float
    #: Held around append (and compact) where the backend orders appends by it (SQLite);
    #: a shared log orders them itself.
    lock: asyncio.Lock

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def load(self, keep: int) -> Snapshot:
        """The log as it stands, after compacting down to `keep` events."""
        ...

    async def append(self, purge: dict[str, Any], created: float) -> int:
        """Append one purge, durable when this returns; its seq."""
        ...

    async def read(self, after: int, limit: int) -> list[Event]:
        """Up to `limit` events after seq `after`, in order; none past the latest. Raises
        `Compacted` when the first of them is gone."""
        ...

    async def compact(self, through: int) -> int:
        """Drop every event <= `through` (and its confirmations); the compaction point."""
        ...

    async def save_node(self, node: NodeRecord) -> None: ...

    async def forget_node(self, name: str) -> None: ...

    async def flush(
        self, confirmations: list[tuple[int, str, float]], nodes: list[NodeRecord]
    ) -> None:
        """Record a batch of confirmations (seq, node, at) and node updates."""
        ...

    async def beat(self, coordinator: str) -> None:
        """Say that `coordinator` is alive (a shared log: `follow` reports it to all)."""
        ...

    async def maintain(self) -> None:
        """The backend's housekeeping, until cancelled (SQLite: WAL checkpoints)."""
        ...

    async def follow(self, follower: Follower) -> None:
        """Report other coordinators' writes until cancelled (a shared log only)."""
        ...


class Compacted(StoreError):
    """What a reader asked for was compacted away: it must reset."""

    def __init__(self, compacted: int) -> None:
        super().__init__(f"events up to {compacted} were compacted away")
        self.compacted = compacted


def open_log(spec: str, *, replicas: int = 3, keep: int = 10000) -> PurgeLog:
    """The backend a `--backend` spec names: `sqlite:PATH`, or `nats://HOST:PORT[,...]`
    (a JetStream cluster: a stream of `replicas` copies). ValueError: one line."""
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:") :]
        if not path:
            raise ValueError("sqlite: needs a file, as sqlite:PATH")
        from origin.coordinator.sqlite import PurgeStore

        return PurgeStore(Path(path))
    if spec.startswith(("nats://", "tls://")):
        from origin.coordinator.jetstream import JetStreamLog, parse_servers

        return JetStreamLog(parse_servers(spec), replicas=replicas, keep=keep)
    raise ValueError(f"backend must be sqlite:PATH or nats://HOST:PORT[,...], got {spec!r}")
