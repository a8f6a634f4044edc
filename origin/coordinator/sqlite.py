"""The SQLite purge log (`PurgeStore`): one file holding purges, confirmations, the node
registry and the compaction point, for one coordinator. The default backend
(`--backend sqlite:PATH`, or `--db PATH`); the contract is origin.coordinator.log's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

from origin.coordinator.log import (
    Compacted,
    Event,
    Follower,
    NodeRecord,
    Snapshot,
    StoreError,
)

log = logging.getLogger("origin.coordinator")

#: The WAL is checkpointed this long after a write, so each checkpoint copies little.
CHECKPOINT_DELAY = 1.0
#: A WAL larger than this is truncated at the next checkpoint (SQLite's default size).
WAL_LIMIT = 4 << 20


_SCHEMA = """
CREATE TABLE IF NOT EXISTS purges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmations (
    seq INTEGER NOT NULL,
    node TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (seq, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    region TEXT NOT NULL,
    address TEXT NOT NULL,
    last_seen REAL NOT NULL,
    applied INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class PurgeStore:
    """The SQLite file: purges (seq = an AUTOINCREMENT key, so never reused, even once
    compacted away), confirmations, the node registry and the compaction point.

    Two connections: one for every read and write (its transactions serialised by an
    asyncio lock, as aiosqlite shares it between tasks), and one that only checkpoints
    the WAL into the database file. SQLite would otherwise checkpoint inside whichever
    commit crosses 1000 WAL pages, and that commit (a purge waiting to be acknowledged)
    would take as long as copying and fsyncing them all. A second coordinator on the
    same file is refused at start (an flock held while open), rather than handing out
    the same seqs."""

    shared = False  # one coordinator per file: the flock below
    quiet_for = 0.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._holder: int | None = None  # the descriptor holding the flock
        self._lock = asyncio.Lock()
        self.written = asyncio.Event()  # set by every write: the WAL has new frames

    async def open(self) -> None:
        try:
            self._holder = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            await self.close()
            raise StoreError(f"database {self.path} is in use by another process") from exc
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None, timeout=5)
            db = self._db
            mode = await self._one("PRAGMA journal_mode=WAL")
            if mode != "wal":
                raise StoreError(f"database {self.path} cannot use a WAL journal (got {mode})")
            # WAL with synchronous=FULL fsyncs the WAL at every commit, so a purge that
            # was acknowledged survives a power loss or an OS crash, not only a crash of
            # this process (NORMAL would fsync only at checkpoints). It costs one fsync
            # per purge (under a millisecond here); acks are batched and skip it (flush).
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
            await db.executescript(_SCHEMA)
            self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None, timeout=5)
            await self._checkpointer.execute("PRAGMA synchronous=FULL")
            await self._checkpointer.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot use database {self.path}: {exc}") from exc
        except StoreError:
            await self.close()
            raise

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "store not open"
        return self._db

    async def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, beside the writer: PASSIVE
        waits for no one, and the next commit after a complete one starts the WAL over.
        Under a steady stream of writes a checkpoint rarely completes before the next
        commit, so past WAL_LIMIT the rest (little: the bulk was just copied) is copied
        between two writes, holding the lock, and the WAL truncated."""
        if self._checkpointer is None or self._db is None:
            return
        await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size > WAL_LIMIT:
            async with self._lock:
                await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        for name in ("_checkpointer", "_db"):
            connection = getattr(self, name)
            if connection is not None:
                setattr(self, name, None)
                with contextlib.suppress(sqlite3.Error):
                    await connection.close()
        # Released last: closing any descriptor of the file would drop SQLite's own
        # (POSIX) locks while a connection is open.
        if self._holder is not None:
            holder, self._holder = self._holder, None
            os.close(holder)

    async def _one(self, sql: str, *args: Any) -> Any:
        async with self.db.execute(sql, args) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def load(self, keep: int) -> Snapshot:
        """The log after compacting down to `keep` events (the limit may have been
        lowered)."""
        async with self._lock:
            latest = await self._one("SELECT seq FROM sqlite_sequence WHERE name = 'purges'")
            latest = int(latest or 0)
            compacted = int(await self._one("SELECT value FROM meta WHERE key = 'compacted'") or 0)
            if latest - compacted > keep:
                compacted = await self._compact(latest - keep)
            events = []
            async with self.db.execute(
                "SELECT seq, created, body FROM purges ORDER BY seq"
            ) as cursor:
                async for seq, created, body in cursor:
                    events.append(Event(seq, created, json.loads(body)))
            confirmations: dict[int, dict[str, float]] = {e.seq: {} for e in events}
            async with self.db.execute("SELECT seq, node, at FROM confirmations") as cursor:
                async for seq, node, at in cursor:
                    if seq in confirmations:
                        confirmations[seq][node] = at
            nodes = []
            async with self.db.execute(
                "SELECT name, role, region, address, last_seen, applied FROM nodes"
            ) as cursor:
                async for row in cursor:
                    nodes.append(NodeRecord(*row))
        return Snapshot(latest, compacted, events, confirmations, nodes)

    async def read(self, after: int, limit: int) -> list[Event]:
        async with self._lock:
            compacted = int(await self._one("SELECT value FROM meta WHERE key = 'compacted'") or 0)
            if after < compacted:
                raise Compacted(compacted)
            async with self.db.execute(
                "SELECT seq, created, body FROM purges WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ) as cursor:
                return [Event(seq, at, json.loads(body)) async for seq, at, body in cursor]

    async def _compact(self, through: int) -> int:
        """Delete every purge (and its confirmations) up to `through` and record the
        compaction point, in one transaction and one trip to the database thread."""
        n = int(through)  # a whole number formatted into the script, nothing else
        await self.db.executescript(
            f"""
            BEGIN;
            DELETE FROM purges WHERE seq <= {n};
            DELETE FROM confirmations WHERE seq <= {n};
            INSERT INTO meta (key, value) VALUES ('compacted', {n})
                ON CONFLICT (key) DO UPDATE SET value = excluded.value;
            COMMIT;
            """
        )
        self.written.set()
        return n

    async def compact(self, through: int) -> int:
        """As `_compact`; the caller holds `lock`. A crash before it runs is harmless:
        `load` compacts again."""
        return await self._compact(through)

    async def append(self, purge: dict[str, Any], created: float) -> int:
        """Append one purge, committed (and fsynced) before this returns; its seq. One
        statement in autocommit mode: its own transaction, in one trip to the database
        thread. The caller holds `lock`, so seqs are published in the order given."""
        cursor = await self.db.execute(
            "INSERT INTO purges (created, body) VALUES (?, ?)",
            (created, json.dumps(purge, separators=(",", ":"))),
        )
        seq = cursor.lastrowid
        assert seq is not None
        self.written.set()
        return seq

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    async def save_node(self, node: NodeRecord) -> None:
        async with self._lock:
            await self._save_nodes([node])

    async def _save_nodes(self, nodes: list[NodeRecord]) -> None:
        await self.db.executemany(
            "INSERT INTO nodes (name, role, region, address, last_seen, applied) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "role = excluded.role, region = excluded.region, address = excluded.address, "
            "last_seen = excluded.last_seen, applied = excluded.applied",
            [(n.name, n.role, n.region, n.address, n.last_seen, n.applied) for n in nodes],
        )
        self.written.set()

    async def forget_node(self, name: str) -> None:
        """Remove a node from the registry (the confirmations it made stay: history)."""
        async with self._lock:
            await self.db.execute("DELETE FROM nodes WHERE name = ?", (name,))
        self.written.set()

    async def flush(
        self, confirmations: list[tuple[int, str, float]], nodes: list[NodeRecord]
    ) -> None:
        try:
            await self._flush(confirmations, nodes)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    async def _flush(
        self, confirmations: list[tuple[int, str, float]], nodes: list[NodeRecord]
    ) -> None:
        """Write a batch of confirmations and node updates in one transaction, without
        an fsync of its own: with WAL and synchronous=NORMAL the commit survives a crash
        of this process, and the next purge's commit (FULL) makes it durable on disk too.
        Confirmation times are allowed to be lost; purges are not."""
        async with self._lock:
            db = self.db
            await db.execute("PRAGMA synchronous=NORMAL")
            try:
                await db.execute("BEGIN")
                try:
                    await db.executemany(
                        "INSERT OR IGNORE INTO confirmations (seq, node, at) VALUES (?, ?, ?)",
                        confirmations,
                    )
                    await self._save_nodes(nodes)
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                    raise
            finally:
                await db.execute("PRAGMA synchronous=FULL")

    async def maintain(self) -> None:
        """Checkpoint the WAL a little after each burst of writes (see `checkpoint`)."""
        written = self.written
        while True:
            await written.wait()
            await asyncio.sleep(CHECKPOINT_DELAY)
            written.clear()
            try:
                await self.checkpoint()
            except sqlite3.Error as exc:
                log.warning("cannot checkpoint the WAL: %s", exc)

    async def beat(self, coordinator: str) -> None:
        """Nothing: no other coordinator reads this file."""

    async def follow(self, follower: Follower) -> None:
        """Nothing to follow: this coordinator is the file's only writer."""
