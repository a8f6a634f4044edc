"""The purge coordinator: the durable log of purges and their fan-out to cache nodes.

This module owns the in-memory fan-out over WebSockets (`Coordinator`), the HTTP
API and the server's lifetime (`run`). The durable log and node registry are behind
origin.coordinator.log: one SQLite file (the default), or a replicated JetStream log that
several coordinators share. The purge format and its validation are the
nodes' own (edge.purge.model), as is the bearer-token check (edge.rfc.tokens): a body the
coordinator takes, every node takes. The command line is in cli/coordinator.py.

The protocol, in short. A node subscribes at /v1/subscribe with the last seq it applied
(`after`); the coordinator replays every event after it, in seq order, then sends new ones
as they are appended, or a `reset` when the events it missed were compacted away. The node
answers `{"type": "ack", "seq": N}` once it has applied (and persisted) everything up to N.
A name is one node's: a subscription under a name whose connection is live is closed
with code 4409 and the reason; the same process reconnecting (its `instance`) takes the
name back, as does anyone once the holder has been silent past the staleness bound.

Fan-out order: shields first. A shield is sent an event as soon as it is committed. Edges
are sent events up to the "edge frontier" only: the lowest seq every connected shield has
acked (everything, when no shield is connected), so an edge never refetches from a shield
the object it was just told to drop. The frontier only moves forward: a shield that joins
late holds back new events, never ones the edges already have.

Pending and complete: `pending` lists the nodes connected now that have not confirmed the
event (and have not applied it: `applied` is the node's own word at connect time), so a
node that connects later and is sent the event becomes pending, and one that disconnects
stops being so. `complete` means every node connected now has confirmed. `not_connected`
lists the nodes of the registry that are not connected and have neither confirmed nor
applied the event: they apply it when they reconnect, and until then a purge is not
confirmed by every node the coordinator knows (what `edge purge` reports).

Several coordinators on a shared log: any of them appends (the log gives the seq) and
publishes a purge when the log brings it back (at once, when its seq is the next one
here: nothing can come between), so each feeds its nodes the one order.
Node records and confirmations are shared through the log too, so "connected", pending
and the edge frontier count nodes connected to any coordinator: an edge here is sent N
only once every shield connected anywhere has confirmed N. A shield whose coordinator
stopped without a word holds edges back until its record is stale (HEALTHY_BEATS, plus
the time the log may hide a live coordinator while a member is lost: `quiet_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Handler

from edge.purge.model import SELECTORS, PurgeError, parse_purge_body
from edge.rfc.tokens import CHALLENGE, check_bearer
from origin.coordinator.log import Event, NodeRecord, PurgeLog, StoreError, open_log

log = logging.getLogger("origin.coordinator")

#: Seconds between WebSocket pings, and the heartbeat interval nodes are expected to keep;
#: a node not heard from within HEALTHY_BEATS intervals is stale.
HEARTBEAT = 5.0
HEALTHY_BEATS = 3
#: The longest long-poll on GET /v1/purge/{id}.
MAX_WAIT = 30.0
#: Acks are recorded in memory at once and written to SQLite in batches this much later,
#: so a burst of acks costs one commit; a crash loses at most this window's confirmation
#: times (the node's own `after` says what it applied when it reconnects).
FLUSH_DELAY = 0.05
#: On a shared log the batch is what other coordinators learn acks from (a shield's ack
#: lets their edges go on; an edge's completes a purge an operator waits for there), so
#: it is written at once: a few milliseconds gather an event's burst of acks.
SHARED_FLUSH_DELAY = 0.002
#: How long a request about a seq this coordinator has not followed yet waits for the
#: shared log to bring it (it may have been appended at another coordinator just now).
FOLLOW_GRACE = 2.0
#: A shared log's stream is compacted every this many events (at most).
COMPACT_EVERY = 100
#: A close code of the application range: this connection was replaced by a newer one.
CLOSE_REPLACED = 4000
#: Refused: another live node is connected under this name (the reason says which).
CLOSE_NAME_TAKEN = 4409
#: RFC 6455 Section 5.5: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON = 123

ROLES = ("edge", "shield")

_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


# ---------------------------------------------------------------- fan-out


class Link:
    """One node's WebSocket connection and how far it has been sent."""

    def __init__(
        self, ws: web.WebSocketResponse, node: NodeRecord, after: int, instance: str = ""
    ) -> None:
        self.ws = ws
        self.node = node
        self.instance = instance  # the node process's own id, to tell a reconnect
        self.role = node.role
        self.sent = after  # the highest seq sent (or covered by a reset)
        self.wake = asyncio.Event()
        self.closed = False


@dataclass
class CoordinatorSettings:
    db: Path | None  # the SQLite file (`--db`), when `backend` is not given
    token: str
    node_token: str
    keep: int = 10000
    heartbeat: float = HEARTBEAT
    backend: str = ""  # a `--backend` spec (origin.coordinator.log.open_log)
    replicas: int = 3  # copies of a replicated log's stream

    def log(self) -> PurgeLog:
        spec = self.backend or f"sqlite:{self.db}"
        return open_log(spec, replicas=self.replicas, keep=self.keep)


class Coordinator:
    """The log in memory (the kept events and their confirmations, mirrored from the
    store), the node registry, the connected links and the HTTP/WebSocket handlers."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.store = settings.log()
        # This process, as other coordinators on a shared log know it (NodeRecord.holder).
        self.id = os.urandom(8).hex()
        self.latest = 0
        self.compacted = 0  # every seq <= this was compacted away
        self.edge_frontier = 0  # edges may be sent every seq <= this
        self.events: dict[int, Event] = {}
        self.confirmations: dict[int, dict[str, float]] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.links: dict[str, Link] = {}
        self._changed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._unsaved: list[tuple[int, str, float]] = []
        self._unsaved_nodes: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._flushing: asyncio.Future[None] | None = None
        self._published = asyncio.Event()  # set (and replaced) when `latest` grows
        self._echo = time.time()  # when this coordinator's own beat last came back

    # -- lifetime

    async def open(self) -> None:
        await self.store.open()
        try:
            snapshot = await self.store.load(self.settings.keep)
        except BaseException:
            await self.store.close()
            raise
        self.latest, self.compacted = snapshot.latest, snapshot.compacted
        self.events = {e.seq: e for e in snapshot.events}
        self.confirmations = snapshot.confirmations
        self.nodes = {n.name: n for n in snapshot.nodes}
        # Nobody is connected here yet: edges that connect before any shield get
        # everything, unless shields connected to other coordinators hold them back.
        self.edge_frontier = 0
        self._advance_edges()
        self._background = [
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self.store.maintain()),
        ]
        if self.store.shared:
            self._background += [
                asyncio.create_task(self.store.follow(self)),
                asyncio.create_task(self._stale_loop()),
            ]

    async def disconnect(self) -> None:
        """Close every node's connection (going away: they reconnect with their `after`)."""
        links = list(self.links.values())
        for link in links:
            self._end(link)
        closing = [self._spawn(self._close_ws(s.ws, WSCloseCode.GOING_AWAY)) for s in links]
        if closing:
            await asyncio.wait(closing, timeout=2)

    async def close(self) -> None:
        """Write the last batch of acks and close the database."""
        await self.disconnect()
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._flushing is not None:
            with contextlib.suppress(StoreError):
                await self._flushing
        with contextlib.suppress(StoreError):
            await self._flush()
        for task in list(self._tasks):
            task.cancel()
        await self.store.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _close_ws(ws: web.WebSocketResponse, code: int, message: bytes = b"") -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=code, message=message)

    # -- state changes

    def _notify(self) -> None:
        """Wake every long-poll: confirmations or the set of connected nodes changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _elsewhere(self, node: NodeRecord) -> bool:
        """Whether `node` is connected to another coordinator of a shared log (by its
        record, which that coordinator keeps fresh while the node is heard from)."""
        if node.link is not None or node.holder in ("", self.id):
            return False
        # Stale only if this coordinator's own beat, written after the record's last
        # renewal was due, has come back since: the log delivers in order, so the
        # holder wrote nothing in that time. Measured on the clock of the wall alone, a
        # watch that is behind (a cluster member lost) would make live shields stale.
        bound = HEALTHY_BEATS * self.settings.heartbeat + self.store.quiet_for
        return self._echo - node.renewed <= bound

    def _connected(self, node: NodeRecord) -> bool:
        return node.link is not None or self._elsewhere(node)

    def _advance_edges(self) -> None:
        """Move the edge frontier to the lowest seq every connected shield has acked (the
        latest, when none is connected), and wake the edges if it moved. Shields of
        other coordinators count too: an edge here waits for them as for its own."""
        acked = [s.node.applied for s in self.links.values() if s.role == "shield"]
        acked += [
            n.applied for n in self.nodes.values() if n.role == "shield" and self._elsewhere(n)
        ]
        frontier = min(min(acked, default=self.latest), self.latest)
        if frontier > self.edge_frontier:
            self.edge_frontier = frontier
            for link in self.links.values():
                if link.role == "edge":
                    link.wake.set()

    async def append(self, purge: dict[str, Any]) -> Event:
        """Commit a purge, then publish it: shields are woken at once, edges when the
        frontier reaches it. On a shared log it is published when the log brings it
        back (`published`), in the log's order with other coordinators' purges."""
        if self.store.shared:
            created = time.time()
            seq = await self.store.append(purge, created)
            if seq == self.latest + 1:
                # The next in the log's order: nothing of another coordinator's comes
                # between, so it goes out now (the follower skips it when it arrives).
                self.published(Event(seq, created, purge))
            try:
                async with asyncio.timeout(MAX_WAIT):
                    while self.latest < seq:
                        await self._published.wait()
            except TimeoutError:
                # Committed all the same: acknowledged, and sent once the log brings it.
                log.warning("purge %d: committed, not yet brought back by the log", seq)
            return self.events.get(seq) or Event(seq, created, purge)
        async with self.store.lock:
            created = time.time()
            seq = await self.store.append(purge, created)
            event = Event(seq, created, purge)
            self._publish(event)
            # Compacted after the fan-out has started: it is not on the nodes' path.
            if seq - self.compacted > self.settings.keep:
                compacted = await self.store.compact(seq - self.settings.keep)
                self._drop_through(compacted)
        return event

    def _publish(self, event: Event) -> None:
        seq = event.seq
        self.latest = seq
        self.events[seq] = event
        self.confirmations[seq] = {}
        for link in self.links.values():
            if link.role == "shield":
                link.wake.set()
        self._advance_edges()
        self._published.set()
        self._published = asyncio.Event()

    def _drop_through(self, compacted: int) -> None:
        for old in range(self.compacted + 1, compacted + 1):
            self.events.pop(old, None)
            self.confirmations.pop(old, None)
        self.compacted = compacted

    # -- what other coordinators of a shared log did (origin.coordinator.log.Follower)

    def published(self, event: Event) -> None:
        if event.seq <= self.latest:
            return  # known already (a follower that started over)
        self._publish(event)
        keep = self.settings.keep
        if event.seq - self.compacted > keep:
            self._drop_through(event.seq - keep)
            # The stream is purged every so many events rather than at each (every
            # coordinator asks; repeats are no-ops): one coordinator reopening the log
            # finds a few more kept than `keep`, and compacts them itself.
            if (event.seq - keep) % max(1, min(COMPACT_EVERY, keep // 10)) == 0:
                self._spawn(self._compact_log(event.seq - keep))
        self._notify()

    async def _compact_log(self, through: int) -> None:
        try:
            await self.store.compact(through)
        except StoreError as exc:
            log.warning("cannot compact the purge log: %s", exc)

    def confirmed(self, node: str, first: int, last: int, at: float) -> None:
        for n in range(max(first, self.compacted + 1), last + 1):
            confirmed = self.confirmations.get(n)
            if confirmed is not None:
                confirmed.setdefault(node, at)
        record = self.nodes.get(node)
        if record is not None and record.link is None and last > record.applied:
            record.applied = last
            if record.role == "shield":
                self._advance_edges()
        self._notify()

    def node_changed(self, record: NodeRecord | None, name: str) -> None:
        """Another coordinator saved (or forgot, None) a node. A node connected here is
        this coordinator's to describe; its own word wins until it leaves. What a known
        node applied is learnt from its confirmations (`confirmed`), not from here: the
        two arrive by different streams, and a purge must not count as applied by a node
        before its confirmation is there to show."""
        mine = self.nodes.get(name)
        if mine is not None and mine.link is not None:
            return
        if record is None:
            self.nodes.pop(name, None)
        elif mine is None:
            self.nodes[name] = record
        else:
            mine.role, mine.region, mine.address = record.role, record.region, record.address
            mine.last_seen = max(mine.last_seen, record.last_seen)
            mine.holder, mine.renewed = record.holder, record.renewed
            mine.instance = record.instance
        self._advance_edges()
        self._notify()

    async def _stale_loop(self) -> None:
        """Every heartbeat: renew this coordinator's nodes' records and its own beat, and
        let a shield of another coordinator that fell silent (that coordinator stopped)
        hold edges back no longer once its record is stale, as a disconnected shield
        here would not. Renewals are written by themselves, not with the acks' batch: a
        batch held up by one stream must not make live nodes look stale elsewhere."""
        renewing: asyncio.Future[Any] | None = None
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            if renewing is None or renewing.done():
                renewing = self._spawn(self._renew())
            self._advance_edges()
            self._notify()

    async def _renew(self) -> None:
        nodes = [link.node for link in self.links.values()]
        try:
            await asyncio.gather(self.store.beat(self.id), *map(self.store.save_node, nodes))
        except StoreError as exc:
            log.warning("cannot renew node records: %s", exc)

    def heard(self, coordinator: str) -> None:
        """A coordinator's beat came back over the log; this one's own says how far the
        log has brought this coordinator what the others wrote (`_elsewhere`)."""
        if coordinator == self.id:
            self._echo = time.time()
            self._advance_edges()
            self._notify()

    def _ack(self, link: Link, seq: int) -> None:
        node = link.node
        # A node cannot have applied what it was not sent.
        seq = min(seq, link.sent)
        if seq <= node.applied:
            return
        now = time.time()
        for n in range(max(node.applied, self.compacted) + 1, seq + 1):
            confirmed = self.confirmations.get(n)
            if confirmed is not None and node.name not in confirmed:
                confirmed[node.name] = now
                self._unsaved.append((n, node.name, now))
        node.applied = seq
        self._unsaved_nodes.add(node.name)
        self._dirty.set()
        if link.role == "shield":
            self._advance_edges()
        self._notify()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(SHARED_FLUSH_DELAY if self.store.shared else FLUSH_DELAY)
            # Shielded: stopping the loop must not cut a batch off halfway (close()
            # waits for it, then writes what came after).
            self._flushing = asyncio.ensure_future(self._flush())
            try:
                await asyncio.shield(self._flushing)
            except StoreError as exc:
                log.error("cannot record confirmations: %s", exc)

    async def _flush(self) -> None:
        self._dirty.clear()
        rows, self._unsaved = self._unsaved, []
        names, self._unsaved_nodes = self._unsaved_nodes, set()
        nodes = [self.nodes[name] for name in names if name in self.nodes]
        if rows or nodes:
            await self.store.flush(rows, nodes)

    # -- sending

    async def _send_loop(self, link: Link) -> None:
        """Send a node, in seq order, every event it may have: everything for a shield,
        up to the edge frontier for an edge; a reset when what it misses is gone."""
        ws = link.ws
        try:
            while not link.closed:
                limit = self.latest if link.role == "shield" else self.edge_frontier
                if link.sent < self.compacted or link.sent > self.latest:
                    # What it misses was compacted away (or it is ahead of this log, which
                    # was then lost): it drops its whole cache instead.
                    target = max(limit, self.compacted)
                    link.sent = target
                    await ws.send_str(json.dumps({"type": "reset", "seq": target}))
                elif link.sent < limit:
                    # Counted as sent before the write, so an ack never races ahead of it.
                    link.sent += 1
                    await ws.send_str(self.events[link.sent].frame)
                else:
                    link.wake.clear()
                    await link.wake.wait()
        except (ConnectionError, RuntimeError) as exc:
            # The connection went away under the write: end it, the reader follows.
            log.info("node %s: cannot send (%s)", link.node.name, exc)
            await self._close_ws(ws, WSCloseCode.GOING_AWAY)

    # -- HTTP

    def _authorized(self, request: web.Request, token: str) -> web.Response | None:
        """None when the request carries `token` (edge.rfc.tokens), else the 401 to answer."""
        reason = check_bearer(request.headers.get("Authorization"), token)
        if reason is None:
            return None
        return _error(401, reason, headers={"WWW-Authenticate": CHALLENGE})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "seq": self.latest})

    async def post_purge(self, request: web.Request) -> web.Response:
        denied = self._authorized(request, self.settings.token)
        if denied is not None:
            return denied
        try:
            # The validation nodes apply to their own purge endpoint (edge.purge.model).
            purge = parse_purge_body(await request.read()).to_json()
        except PurgeError as exc:
            return _error(400, str(exc))
        # Shielded: once committed, a purge is published even if this request is cut.
        try:
            event = await asyncio.shield(self.append(purge))
        except StoreError as exc:
            log.error("purge not recorded: %s", exc)
            return _error(503, f"the purge log is unavailable: {exc}")
        log.info("purge %d: %s", event.seq, _summary(purge))
        return web.json_response(
            {
                "id": event.seq,
                "seq": event.seq,
                "created": event.created,
                "nodes": sorted(n.name for n in self.nodes.values() if self._connected(n)),
                "not_connected": self._not_connected(event.seq, {}),
            },
            status=202,
        )

    def _purge_view(self, event: Event) -> dict[str, Any]:
        confirmed = self.confirmations.get(event.seq, {})
        rows = []
        for name, at in sorted(confirmed.items(), key=lambda item: item[1]):
            node = self.nodes.get(name)
            rows.append(
                {
                    "node": name,
                    "role": node.role if node else "",
                    "region": node.region if node else "",
                    "at": at,
                    "ms": round((at - event.created) * 1000, 3),
                }
            )
        pending = sorted(
            node.name
            for node in self.nodes.values()
            if self._connected(node) and node.name not in confirmed and node.applied < event.seq
        )
        return {
            "id": event.seq,
            "created": event.created,
            "purge": event.purge,
            "confirmations": rows,
            "pending": pending,
            "complete": not pending,
            "not_connected": self._not_connected(event.seq, confirmed),
        }

    def _not_connected(self, seq: int, confirmed: dict[str, float]) -> list[str]:
        """Known nodes without a connection that still owe event `seq` a confirmation:
        they apply it when they reconnect (they resume from what they applied)."""
        return sorted(
            node.name
            for node in self.nodes.values()
            if not self._connected(node) and node.name not in confirmed and node.applied < seq
        )

    async def get_purge(self, request: web.Request) -> web.Response:
        denied = self._authorized(request, self.settings.token)
        if denied is not None:
            return denied
        raw_id = request.match_info["id"]
        if not re.fullmatch(r"[0-9]{1,18}", raw_id):
            return _error(400, f"purge id must be a whole number, got {raw_id!r}")
        seq = int(raw_id)
        try:
            wait = float(request.query.get("wait", "0"))
            seen = int(request.query.get("seen", "0"))
        except ValueError:
            return _error(400, "wait must be a number of seconds and seen a whole number")
        if not 0 <= wait <= MAX_WAIT:  # NaN too
            return _error(400, f"wait must be between 0 and {MAX_WAIT:g} seconds")
        if seen < 0:
            return _error(400, "seen must not be negative")
        deadline = time.monotonic() + wait
        if self.store.shared and seq > self.latest:
            # Made at another coordinator a moment ago, perhaps: wait for the log to
            # bring it here (at least a moment, even when not asked to wait).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, FOLLOW_GRACE)):
                    while seq > self.latest:
                        await self._published.wait()
        while True:
            event = self.events.get(seq)
            if event is None:
                return _error(404, f"no purge {seq} (unknown, or compacted away)")
            view = self._purge_view(event)
            remaining = deadline - time.monotonic()
            if len(view["confirmations"]) > seen or view["complete"] or remaining <= 0:
                return web.json_response(view)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()

    async def get_nodes(self, request: web.Request) -> web.Response:
        denied = self._authorized(request, self.settings.token)
        if denied is not None:
            return denied
        now = time.time()
        stale_after = HEALTHY_BEATS * self.settings.heartbeat
        rows = []
        for node in sorted(self.nodes.values(), key=lambda n: (n.role != "shield", n.name)):
            connected = self._connected(node)
            rows.append(
                {
                    "name": node.name,
                    "role": node.role,
                    "region": node.region,
                    "address": node.address,
                    "connected": connected,
                    "healthy": connected and now - node.last_seen <= stale_after,
                    "last_seen": node.last_seen,
                    "applied": node.applied,
                    "lag": max(self.latest - node.applied, 0),
                }
            )
        return web.json_response({"seq": self.latest, "nodes": rows})

    async def delete_node(self, request: web.Request) -> web.Response:
        """Forget a retired node: purges stop waiting for it and `edge status` stops
        listing it. A connected node is refused (it would register again at once)."""
        denied = self._authorized(request, self.settings.token)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        node = self.nodes.get(name)
        if node is None:
            return _error(404, f"no node named {name!r}")
        if self._connected(node):
            return _error(409, f"{name} is connected: stop it first, then forget it")
        # Out of memory first, so no later batch writes it back; then after any batch
        # already being written, out of the file.
        del self.nodes[name]
        self._unsaved_nodes.discard(name)
        if self._flushing is not None and not self._flushing.done():
            with contextlib.suppress(StoreError):
                await asyncio.shield(self._flushing)
        await self.store.forget_node(name)
        self._notify()
        log.info("forgot node %s (%s, applied %d)", name, node.role, node.applied)
        return web.json_response({"forgot": name})

    # -- WebSocket

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        denied = self._authorized(request, self.settings.node_token)
        if denied is not None:
            return denied
        try:
            name, role, region, address, after = _subscription(request.query)
            instance = _instance(request.query)
        except ValueError as exc:
            return _error(400, str(exc))
        ws = web.WebSocketResponse(heartbeat=self.settings.heartbeat, compress=False)
        await ws.prepare(request)
        taken = self._name_taken(name, instance)
        if taken:
            # Told over the WebSocket, which the node's client reads (an HTTP error
            # before the upgrade reaches it as a bare status).
            log.warning("node %s: refused a second connection: %s", name, taken)
            await self._close_ws(ws, CLOSE_NAME_TAKEN, taken.encode()[:MAX_CLOSE_REASON])
            return ws

        if self.store.shared and after > self.latest:
            # It applied more of the log than this coordinator has followed yet (it was
            # at another one): wait for the log rather than take it for one ahead of it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MAX_WAIT):
                    while after > self.latest:
                        await self._published.wait()
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = NodeRecord(name, role)
        node.role, node.region, node.address = role, region, address
        node.holder, node.instance = self.id, instance
        node.last_seen = time.time()
        # The node's own word on what it applied wins over the registry's; one ahead of
        # this log (which was then lost and begun again) has applied none of it.
        node.applied = after if after <= self.latest else 0
        link = Link(ws, node, after, instance)
        older = self.links.get(name)
        if older is not None:
            log.info("node %s: a new connection replaces the older one", name)
            self._end(older)
            self._spawn(self._close_ws(older.ws, CLOSE_REPLACED, b"replaced by a newer connection"))
        self.links[name] = link
        node.link = link
        log.info(
            "node %s (%s%s) connected, after %d; seq %d",
            name,
            role,
            f", {region}" if region else "",
            after,
            self.latest,
        )
        self._unsaved_nodes.discard(name)
        await self.store.save_node(node)
        self._advance_edges()
        self._notify()

        sender = asyncio.create_task(self._send_loop(link))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._receive(link, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            if not link.closed:
                self._end(link)
                log.info("node %s disconnected (applied %d)", name, node.applied)
            sender.cancel()
        return ws

    def _name_taken(self, name: str, instance: str) -> str:
        """Why a connection may not take `name` ("" if it may). A name is one node's: a
        second live node under it is refused rather than let the two replace each other.
        The same process reconnecting (its instance id) takes its name back, as does
        anyone once the connected one has been silent past the staleness bound (a
        connection that died without a word). On a shared log the same holds across
        coordinators: a node another one holds (its record fresh) keeps its name, and its
        own process moving here after that coordinator failed takes it back at once."""
        older = self.links.get(name)
        if older is None:
            known = self.nodes.get(name)
            if known is None or not self._elsewhere(known):
                return ""
            if instance and instance == known.instance:
                return ""
            where = f" at {known.address}" if known.address else ""
            return f"node name {name} is already connected ({known.role}{where}) elsewhere"
        if instance and instance == older.instance:
            return ""
        if time.time() - older.node.last_seen > HEALTHY_BEATS * self.settings.heartbeat:
            return ""
        where = f" at {older.node.address}" if older.node.address else ""
        return f"node name {name} is already connected ({older.node.role}{where})"

    def _end(self, link: Link) -> None:
        """Forget a connection: its sender stops, and when it was the node's current one,
        the node counts as disconnected (a shield no longer holds edges back)."""
        link.closed = True
        link.wake.set()
        node = link.node
        if self.links.get(node.name) is link:
            del self.links[node.name]
            node.link = None
            node.holder = ""
            self._unsaved_nodes.add(node.name)
            self._dirty.set()
            if link.role == "shield":
                self._advance_edges()
            self._notify()

    def _receive(self, link: Link, data: str) -> None:
        if link.closed:
            return
        link.node.last_seen = time.time()
        try:
            message = json.loads(data)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            log.warning("node %s: ignored a message that is not protocol JSON", link.node.name)
            return
        if kind == "ack":
            seq = message.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
                self._ack(link, seq)
            else:
                log.warning("node %s: ignored an ack without a whole seq", link.node.name)
        elif kind == "heartbeat":
            self._unsaved_nodes.add(link.node.name)
            self._dirty.set()
        else:
            log.warning("node %s: ignored a message of type %r", link.node.name, kind)

    def make_app(self) -> web.Application:
        # Room for the largest valid purge (1000 selectors of 2048 characters), so its
        # own limits are the ones a client hears about.
        app = web.Application(client_max_size=4 << 20, middlewares=[_json_errors])
        app.router.add_get("/v1/health", self.health)
        app.router.add_post("/v1/purge", self.post_purge)
        app.router.add_get("/v1/purge/{id}", self.get_purge)
        app.router.add_get("/v1/nodes", self.get_nodes)
        app.router.add_delete("/v1/nodes/{name}", self.delete_node)
        app.router.add_get("/v1/subscribe", self.subscribe)
        return app


def _subscription(query: Any) -> tuple[str, str, str, str, int]:
    """(name, role, region, address, after) from /v1/subscribe's query; ValueError."""
    name = query.get("name", "")
    if not _NAME.fullmatch(name):
        raise ValueError("name is required: letters, digits, '.', '_' or '-'")
    role = query.get("role", "")
    if role not in ROLES:
        raise ValueError("role must be edge or shield")
    region = query.get("region", "")
    if not re.fullmatch(r"[A-Za-z0-9._-]{0,64}", region):
        raise ValueError("region must be letters, digits, '.', '_' or '-'")
    address = query.get("address", "")
    if address:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(address) > 512:
            raise ValueError("address must be an http(s) URL")
    raw_after = query.get("after", "0")
    if not re.fullmatch(r"[0-9]{1,18}", raw_after):
        raise ValueError("after must be a whole number >= 0 (the last seq applied)")
    return name, role, region, address, int(raw_after)


def _instance(query: Any) -> str:
    """The subscribing process's id (optional): a reconnect of the same process."""
    instance = query.get("instance", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{0,64}", instance):
        raise ValueError("instance must be up to 64 letters, digits, '_' or '-'")
    return str(instance)


def _summary(purge: dict[str, Any]) -> str:
    parts = [f"{len(purge[k])} {k}" for k in SELECTORS if purge[k]]
    if purge["all"]:
        parts.insert(0, "all")
    return ", ".join(parts) + (" (soft)" if purge["soft"] else "")


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413, ...) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


# ---------------------------------------------------------------- lifetime


async def start(
    settings: CoordinatorSettings, host: str, port: int
) -> tuple[Coordinator, web.AppRunner]:
    """Open the store and listen on host:port; raises StoreError or OSError."""
    coordinator = Coordinator(settings)
    await coordinator.open()
    runner = web.AppRunner(coordinator.make_app(), handle_signals=False, shutdown_timeout=2)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        await coordinator.close()
        raise
    return coordinator, runner


async def stop(coordinator: Coordinator, runner: web.AppRunner) -> None:
    # Nodes first (they reconnect later, with their `after`); then no new requests, and
    # those in flight finish (long-polls are cut after 2 s); then the last acks are saved.
    await coordinator.disconnect()
    await runner.cleanup()
    await coordinator.close()


def run(
    settings: CoordinatorSettings,
    host: str,
    port: int,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; `on_ready(url, latest seq)` once listening. Raises
    StoreError or OSError."""

    async def serve() -> None:
        coordinator, runner = await start(settings, host, port)
        try:
            if on_ready is not None:
                bound_host, bound_port = runner.addresses[0][:2]
                shown = f"[{bound_host}]" if ":" in bound_host else bound_host
                on_ready(f"http://{shown}:{bound_port}", coordinator.latest)
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, done.set)
            await done.wait()
        finally:
            await stop(coordinator, runner)

    asyncio.run(serve())
