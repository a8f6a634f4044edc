"""Purges on a cache node: bans checked at lookup, their durable record, the sweeper
that frees their space, and the subscription that brings them from the coordinator.

A purge is a ban: a predicate (urls, prefixes, tags, hosts, all) with the local time it
was applied. A stored entry is purged when it was requested before that time and
matches; applying a purge therefore costs the same however large the cache is, and the
lookup pays only for bans newer than the entry it looks at. The request time, not the
response time, is compared: a fill that asked its upstream before the purge may bring
the old object back after it, and must not survive.

  hard  the entry is removed at lookup (every variant of its key: Vary variants,
        encodings, slices) and fetched again
  soft  the entry is marked stale: it is revalidated, and may still stand in for an
        upstream that fails

The purge itself (its format and validation) is edge.purge.model's. A ban keys its URLs
and prefixes with edge.rfc.keys, the functions the pipeline keys requests with, under this
node's own key_query settings: a URL selects what a request for it stored, however
either was spelled.

The sweeper walks the store in the background and does to every entry what a lookup
would, so the space of hard-purged objects is freed without waiting for a request; once
a walk that started after a ban has finished, and no fill older than the ban is still
running, the ban is retired. The applied sequence number and the live bans are written
to `purge-state.json` in the cache directory (atomically, before an event is
acknowledged), so a restarted node resumes where it stopped and serves nothing cached
until it has caught up.

Every change to that file is made the same way, whether the node is one process or
several workers sharing it (edge.multiproc.coordination): under the state's lock
(`purge-state.lock` across workers), by reading it, changing it and writing it back,
so no ban one process applies is lost to another's write; the writer then moves the
purge stamp and the store's version, and every other process reloads the file at its
next lookup, or hot-tier hit, after that. Only the leading process subscribes to the
coordinator and sweeps; any process applies a purge made on the node directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp

from edge.config import CONFIG_ERROR_STATUS
from edge.purge.model import SELECTORS, Purge, PurgeError, widen
from edge.rfc.keys import KeyRules, authority_of, host_of, prefix_key, url_key
from edge.store.disk import Entry, Store

if TYPE_CHECKING:
    from edge.multiproc.coordination import Coordination

log = logging.getLogger("edge.purge.bans")

STATE_FILE = "purge-state.json"
LOCK_FILE = "purge-state.lock"
#: Seconds between heartbeats to the coordinator, and the longest reconnect back-off.
HEARTBEAT = 2.0
MAX_BACKOFF = 5.0
#: The coordinator's close code for a name another live node holds (origin.coordinator.service).
CLOSE_NAME_TAKEN = 4409


class NameTaken(Exception):
    """The coordinator refused this node's name: another live node has it."""


class Refusal:
    """Why the coordinator refused this process's node, if it did. The node then stops
    as on SIGTERM, and the process exits with CONFIG_ERROR_STATUS (cli.serve and
    edge.multiproc.workers read it once the node has stopped)."""

    reason: str = ""

    @classmethod
    def exit_status(cls) -> int | None:
        return CONFIG_ERROR_STATUS if cls.reason else None


@dataclass(frozen=True)
class Ban:
    """A purge as applied on this node: normalised selectors and the time applied."""

    seq: int  # the coordinator's sequence number; 0 for a purge made on this node
    at: float
    purge: Purge
    keys: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    hosts: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    @classmethod
    def of(cls, seq: int, at: float, purge: Purge, rules: KeyRules) -> Ban:
        """The ban of a (validated) purge on a node keying queries by `rules`: each URL
        is keyed as a request for it is (edge.rfc.keys), so it selects what is stored."""
        return cls(
            seq,
            at,
            purge,
            keys=frozenset(url_key(u, rules) for u in purge.urls),
            prefixes=tuple(prefix_key(p) for p in purge.prefixes),
            hosts=frozenset(h.lower().rstrip(".") for h in purge.hosts),
            tags=frozenset(purge.tags),
        )

    @property
    def soft(self) -> bool:
        return self.purge.soft

    def matches_key(self, key: str) -> bool:
        """Selects every entry of `key` whatever its tags (all, URL, prefix, host)."""
        if self.purge.all or key in self.keys:
            return True
        if any(key.startswith(p) for p in self.prefixes):
            return True
        if self.hosts:
            return host_of(key) in self.hosts or authority_of(key) in self.hosts
        return False

    def matches(self, entry: Entry) -> bool:
        return self.matches_key(entry.key) or bool(self.tags.intersection(entry.tags))


@dataclass
class Bans:
    """The live bans of a node, oldest first, and the last coordinator event applied."""

    bans: list[Ban] = field(default_factory=list)
    applied: int = 0

    def add(self, ban: Ban) -> None:
        self.bans.append(ban)
        if ban.seq > self.applied:
            self.applied = ban.seq

    def merge(self, bans: list[Ban]) -> None:
        """Add bans another copy of this state applied, each once, in time order
        (verdict stops at the first ban older than the entry)."""
        known = {(b.seq, b.at, b.purge) for b in self.bans}
        for ban in bans:
            if (ban.seq, ban.at, ban.purge) not in known:
                self.add(ban)
        self.bans.sort(key=lambda b: b.at)

    def verdict(self, entry: Entry) -> Ban | None:
        """The newest ban that purges `entry` (hard before soft), or None. Only bans
        applied after the entry was requested count."""
        found: Ban | None = None
        for ban in reversed(self.bans):
            if ban.at <= entry.request_time:
                break
            if ban.matches(entry):
                if not ban.soft:
                    return ban
                found = found or ban
        return found

    def matches_key_since(self, key: str, since: float) -> bool:
        """Whether a hard ban applied after `since` selects the whole key (a fill
        started before it must not be joined)."""
        return any(b.at > since and not b.soft and b.matches_key(key) for b in reversed(self.bans))

    # -- the durable record ---------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the state atomically and durably (the ack that follows promises it)."""
        data = {
            "applied": self.applied,
            "bans": [{"seq": b.seq, "at": b.at, "purge": b.purge.to_json()} for b in self.bans],
        }
        path = directory / STATE_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path, rules: KeyRules) -> Bans:
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
            bans = [
                Ban.of(int(b["seq"]), float(b["at"]), Purge.from_json(b["purge"]), rules)
                for b in data["bans"]
            ]
            return cls(bans, int(data["applied"]))
        except FileNotFoundError:
            return cls()
        except (ValueError, KeyError, TypeError) as exc:
            # A damaged record cannot say which purges were applied: start over with
            # an empty cache rather than serve something that was purged.
            log.error("purge state %s is damaged (%s): the cache will be dropped", path, exc)
            return cls(applied=-1)


@dataclass
class Purger:
    """Applies purges to one node's store and keeps its bans."""

    store: Store
    directory: Path
    #: How this node keys queries (its NodeConfig): bans key purge URLs by it.
    rules: KeyRules
    #: What the node's processes share (edge.multiproc.coordination): the state's lock and
    #: stamp, and the oldest fill in flight.
    coordination: Coordination
    bans: Bans = field(default_factory=Bans)
    #: False until the node has caught up with the coordinator: nothing cached is
    #: served before, since a purge may have been missed while the node was away.
    ready: bool = True
    sweep_interval: float = 5.0
    #: Called after every purge and reset (edge.pipeline.fastpath's hot tier empties itself).
    on_change: list[Callable[[], None]] = field(default_factory=list)
    #: When a ban is applied, on the clock entries' request times are taken by (the
    #: node's wall clock; a test's own): a ban selects what was requested before it.
    clock: Callable[[], float] = time.time
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stamp: int = 0  # the purge stamp of the state held
    _unsaved: list[Ban] = field(default_factory=list)  # applied, not yet written

    @classmethod
    def open(
        cls, store: Store, directory: Path, rules: KeyRules, coordination: Coordination, **kw: Any
    ) -> Purger:
        stamp = coordination.purge_stamp()
        bans = Bans.load(directory, rules)
        purger = cls(store, directory, rules, coordination, bans=bans, _stamp=stamp, **kw)
        if bans.applied < 0:
            store.clear()
            purger.bans = Bans()
            purger.bans.save(directory)
        return purger

    def apply(self, purge: Purge, seq: int = 0, *, save: bool = True) -> Ban:
        ban = Ban.of(seq, self.clock(), purge, self.rules)
        self.sync(notify=False)
        self.bans.add(ban)
        self._unsaved.append(ban)
        if save:
            self.save()
        self._wake.set()
        for listener in self.on_change:
            listener()
        log.info("purge %s applied: %s", seq or "(local)", _describe(purge))
        return ban

    def save(self) -> None:
        """Write the state: what this process applied added to the file as it is now
        (another process may have written it since), under the state's lock."""
        unsaved, applied = self._unsaved, self.bans.applied

        def change(on_disk: Bans) -> Bans:
            on_disk.merge(unsaved)
            on_disk.applied = max(on_disk.applied, applied)
            return on_disk

        self._rewrite(change)
        self._unsaved = []

    def _rewrite(self, change: Callable[[Bans], Bans]) -> None:
        """Read, change and write the state under its lock; announce it."""
        with self.coordination.purge_lock():
            # The stamp where this process left it: nobody wrote the file since this
            # process read or wrote it, so its copy (with what it applied since) is the
            # file's state; for a node alone, always. Else the file is read.
            fresh = self.coordination.purge_stamp() != self._stamp
            on_disk = Bans.load(self.directory, self.rules) if fresh else Bans(applied=-1)
            if on_disk.applied < 0:  # or damaged after start: this process's copy stands
                on_disk = Bans(list(self.bans.bans), self.bans.applied)
            bans = change(on_disk)
            bans.save(self.directory)
            self._stamp = self.coordination.purge_changed()
        self.bans = bans
        self.bans.merge(self._unsaved)

    def sync(self, *, notify: bool = True) -> bool:
        """Take up the state another process wrote since this one read it; True if it
        did (the listeners are told unless `notify` is False: the caller tells them
        when it is safe)."""
        stamp = self.coordination.purge_stamp()
        if stamp == self._stamp:
            return False
        bans = Bans.load(self.directory, self.rules)
        if bans.applied < 0:
            return False  # being replaced: read again next time
        # The stamp read before the file: a write since shows as a newer one.
        # (`_rewrite` trusts this process's copy while the stamp stays.)
        self._stamp = stamp
        bans.merge(self._unsaved)
        self.bans = bans
        if notify:
            for listener in self.on_change:
                listener()
        return True

    def reset(self, seq: int) -> None:
        """The coordinator no longer has the events this node missed: drop everything."""
        self.store.clear()
        for listener in self.on_change:
            listener()
        self._unsaved = []
        self._rewrite(lambda _: Bans(applied=seq))
        log.warning("purge log compacted past this node: cache dropped, resuming at %d", seq)

    def check(self, entry: Entry) -> str | None:
        """At lookup: "hard" (the entry's key was removed), "soft" (serve only after
        revalidation), or None."""
        self.sync()
        ban = self.bans.verdict(entry)
        if ban is None:
            return "soft" if entry.extra.get("stale_at", 0) > entry.request_time else None
        if ban.soft:
            return "soft"
        self.store.remove(entry.key)
        return "hard"

    # -- the sweeper -----------------------------------------------------------------

    async def sweep_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sweep_interval)
            self._wake.clear()
            if self.bans.bans:
                await self.sweep()

    async def sweep(self) -> None:
        """Walk every key once, doing what a lookup would; then retire the bans that
        no entry and no running fill can still be older than."""
        self.sync()
        started = self.clock()
        pending = list(self.bans.bans)
        removed = marked = 0
        for n, key in enumerate(list(self.store.keys())):
            if n % 200 == 199:
                await asyncio.sleep(0)  # let requests run between batches
            for entry in self.store.variants(key):
                if entry.derived_from:
                    continue
                ban = self.bans.verdict(entry)
                if ban is None:
                    continue
                if not ban.soft:
                    self.store.remove(key)
                    removed += 1
                    break
                if entry.extra.get("stale_at", 0) < ban.at:
                    self.store.update(replace(entry, extra={**entry.extra, "stale_at": ban.at}))
                    marked += 1
        oldest = self.coordination.oldest()
        horizon = started if oldest is None else min(started, oldest)
        if any(b.at < horizon for b in pending):
            retired = 0
            # Only bans this walk knew: another process may have applied one before
            # the walk began and written it only since.
            walked = {(b.seq, b.at, b.purge) for b in pending}

            def retire(bans: Bans) -> Bans:
                nonlocal retired
                kept = [
                    b
                    for b in bans.bans
                    if not (b.at < horizon and (b.seq, b.at, b.purge) in walked)
                ]
                retired, bans.bans = len(bans.bans) - len(kept), kept
                return bans

            self._rewrite(retire)
            log.info(
                "sweep: %d keys removed, %d marked stale, %d bans retired", removed, marked, retired
            )


def _describe(purge: Purge) -> str:
    parts = [f"{n}={len(getattr(purge, n))}" for n in SELECTORS if getattr(purge, n)]
    if purge.all:
        parts.append("all")
    if purge.soft:
        parts.append("soft")
    return " ".join(parts)


_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class Subscription:
    """The node's link to the coordinator: one WebSocket, events applied in order and
    acknowledged once saved, heartbeats, and reconnection with back-off. `coordinator`
    may list several URLs (comma-separated: coordinators sharing one log); a failure
    moves to the next, which resumes from the seq this node applied."""

    def __init__(
        self,
        purger: Purger,
        coordinator: str,
        token: str,
        *,
        name: str,
        role: str,
        region: str,
        address: str,
    ) -> None:
        self.purger = purger
        self.bases = [url.strip().rstrip("/") for url in coordinator.split(",") if url.strip()]
        self.base = self.bases[0]
        self.headers = {"Authorization": f"Bearer {token}"}
        # `instance` tells the coordinator a reconnect of this process from another
        # process under the same name.
        self.identity = {
            "name": name,
            "role": role,
            "region": region,
            "address": address,
            "instance": os.urandom(12).hex(),
        }
        self.caught_up = asyncio.Event()
        self.connected = False

    async def run(self) -> None:
        backoff = 0.2
        async with aiohttp.ClientSession(headers=self.headers) as session:
            while True:
                try:
                    await self._session(session)
                    backoff = 0.2
                except NameTaken as exc:
                    # Two nodes under one name is a configuration error: said once, and
                    # the node stops (status 2) rather than fight the other for the name.
                    log.error(
                        "coordinator %s refused this node: %s; give each node its own --name",
                        self.base,
                        exc,
                    )
                    await self._stop_node(str(exc))
                    return
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("coordinator %s: %s; retrying in %.1fs", self.base, exc, backoff)
                except ValueError as exc:  # a message we cannot use: do not apply, retry
                    log.error("coordinator %s sent something unusable: %s", self.base, exc)
                self.connected = False
                # The next coordinator, if there are several: they share one log.
                self.base = self.bases[(self.bases.index(self.base) + 1) % len(self.bases)]
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _session(self, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{self.base}/v1/health", timeout=aiohttp.ClientTimeout(5)) as r:
            target = int((await r.json())["seq"])
        bans = self.purger.bans
        query = urlencode({**self.identity, "after": max(bans.applied, 0)})
        async with session.ws_connect(f"{self.base}/v1/subscribe?{query}", heartbeat=10) as ws:
            self.connected = True
            log.info("subscribed to %s after event %d (latest %d)", self.base, bans.applied, target)
            if self.purger.bans.applied >= target:
                self._caught_up()
            beat = asyncio.create_task(self._heartbeat(ws))
            try:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_NAME_TAKEN:
                        raise NameTaken(msg.extra or "name taken")
                    if msg.type in _CLOSED:
                        break
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        if msg.type == aiohttp.WSMsgType.ERROR:
                            raise aiohttp.ClientError(str(ws.exception()))
                        continue
                    event = json.loads(msg.data)
                    seq = int(event["seq"])
                    if event.get("type") == "reset":
                        self.purger.reset(seq)
                    elif event.get("type") == "purge":
                        if seq <= self.purger.bans.applied:
                            continue  # already applied (a resend after reconnecting)
                        # While replaying, save once at the end rather than per event.
                        replaying = seq < target
                        self.purger.apply(self._purge_of(event, seq), seq, save=not replaying)
                        if replaying:
                            continue
                    else:
                        continue
                    if seq >= target and not self.caught_up.is_set():
                        self.purger.save()
                        self._caught_up()
                    await ws.send_json({"type": "ack", "seq": self.purger.bans.applied})
            finally:
                beat.cancel()

    @staticmethod
    def _purge_of(event: dict[str, Any], seq: int) -> Purge:
        try:
            return Purge.from_json(event["purge"])
        except PurgeError as exc:
            wider = widen(event["purge"])
            log.warning("purge %d: %s; applied wider, as %s", seq, exc, _describe(wider))
            return wider

    async def _stop_node(self, reason: str) -> None:
        """Stop the node the way SIGTERM does (its own handler: listeners closed, the
        store saved), once that handler is there: start-up is let through at once
        (nothing cached is served, the purges not being ready) rather than cancelled."""
        Refusal.reason = reason
        self.caught_up.set()
        for _ in range(100):
            if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                break
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    def _caught_up(self) -> None:
        self.purger.ready = True
        self.caught_up.set()

    @staticmethod
    async def _heartbeat(ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            await ws.send_json({"type": "heartbeat"})
