"""The replicated purge log: NATS JetStream (`JetStreamLog`), shared by several
coordinators. The contract is origin.coordinator.log's.

Three JetStream objects, each replicated `replicas` times (3: a cluster of three keeps
taking purges with one member down):
- stream EDGE_PURGES (subject edge.purges): the ordered log. Its stream sequence is the
  purge seq; a purge is `{"created": ..., "purge": ...}`. Published with a Nats-Msg-Id, so
  a publish retried after a lost reply is stored once (the duplicate window). Compaction
  is a purge of the stream up to a seq: its first sequence minus one is the compaction
  point every coordinator reads, and a node behind it is told to reset.
- stream EDGE_ACKS (subjects edge.acks.<node>): confirmations, one message per run of
  seqs a node confirmed at one time `{"node", "first", "last", "at"}`; at most `keep`
  kept per node (each covers at least one seq, so the kept events' are all there).
- KV bucket edge_nodes: the node registry, one key per node name (NodeRecord as JSON,
  with `holder`, the coordinator its connection is at), and each running coordinator's
  beat (`=ID`), rewritten every heartbeat.

Each coordinator reads all three with ordered consumers (`follow`): what any of them
appends or records reaches the others, in the stream's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from origin.coordinator.log import Compacted, Event, Follower, NodeRecord, Snapshot, StoreError

log = logging.getLogger("origin.coordinator")

STREAM = "EDGE_PURGES"
SUBJECT = "edge.purges"
ACKS = "EDGE_ACKS"
ACK_PREFIX = "edge.acks."
BUCKET = "edge_nodes"
#: Keys of coordinators' beats in the bucket: "=" is a key character no node name has.
BEAT = "="
#: How long a request (a publish, a read) may take before it is retried or given up.
REQUEST_TIMEOUT = 5.0
#: How long start-up and a purge keep retrying while the cluster elects a leader (a
#: member restarting, or the cluster just started).
RETRY_FOR = 30.0
#: How long one try of a registry write (a node record, a beat) may take. Other
#: coordinators judge a node's connection alive by its holder's renewals arriving: a put
#: lost with a member that died would otherwise be waited on for REQUEST_TIMEOUT, longer
#: than the staleness bound of a short heartbeat, and a live shield would stop holding
#: edges back. A put is idempotent, so a try cut short is simply made again.
REGISTRY_TRY = 1.0
#: Seconds between the client's pings: a member that hangs without closing its
#: connection is left after two go unanswered, as one that died is at once.
PING_EVERY = 2.0
#: How long a live coordinator may go unheard (PurgeLog.quiet_for): its member frozen
#: (two pings), then a leader elected (NATS's election takes a few seconds).
QUIET_FOR = 3 * PING_EVERY + 4.0
#: How long start-up tries to reach a server of the cluster.
CONNECT_FOR = 10.0
#: Seconds a publish is remembered by its Nats-Msg-Id (a retried one is stored once).
DUPLICATE_WINDOW = 120.0

#: A cluster busy electing a leader, a member gone, a reply lost or a connection being
#: re-established: tried again. Any other refusal of the API (a bad request) is final.
_BUSY = (nats.js.errors.ServiceUnavailableError, nats.js.errors.ServerError)
#: JetStream's "no suitable peers for placement" (JSClusterNoPeersErr): a cluster just
#: started has not yet met all its members, so a replicated stream cannot be placed.
_NO_PEERS_YET = 10005
_NOT_READY = (
    *_BUSY,
    nats.js.errors.NoStreamResponseError,
    nats.errors.Error,
    asyncio.TimeoutError,
    OSError,
)


def parse_servers(spec: str) -> list[str]:
    """`nats://h1:4222,h2:4222` (or each with its scheme) -> one URL per server."""
    servers = []
    for part in spec.split(","):
        part = part.strip()
        if "://" not in part:
            part = f"nats://{part}"
        url = urlsplit(part)
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme not in ("nats", "tls") or not url.hostname or port is None:
            raise ValueError(f"a NATS server is nats://HOST:PORT, got {part!r}")
        servers.append(f"{url.scheme}://{url.netloc}")
    return servers


class JetStreamLog:
    shared = True
    quiet_for = QUIET_FOR

    def __init__(self, servers: list[str], *, replicas: int = 3, keep: int = 10000) -> None:
        self.servers = servers
        self.replicas = replicas
        self.keep = keep
        self.lock = asyncio.Lock()  # unused by appends: the stream orders them
        self._nc: Any = None
        self._js: Any = None
        self._kv: KeyValue | None = None
        self._purges: Any = None  # ordered subscriptions, opened by load, read by follow
        self._acks: Any = None
        self._watch: Any = None
        self._compacted = 0  # the highest point this process asked the stream to drop
        self._beat = ""  # this process's beat key, removed at close

    # -- lifetime

    async def open(self) -> None:
        async def disconnected() -> None:
            if self._nc is not None and not self._nc.is_closed:  # not our own close
                log.warning("purge log: disconnected from NATS, reconnecting")

        async def error(exc: Exception) -> None:
            # Each failed try of each server: the disconnection said it once already.
            log.debug("purge log: NATS: %s", exc)

        try:
            # The client tries the servers over and over (it is what keeps it connected
            # later): bounded here, so an address that is wrong is one line at start.
            async with asyncio.timeout(CONNECT_FOR):
                self._nc = await nats.connect(
                    servers=self.servers,
                    connect_timeout=3,
                    reconnect_time_wait=0.25,
                    ping_interval=PING_EVERY,
                    max_outstanding_pings=2,
                    max_reconnect_attempts=-1,
                    disconnected_cb=disconnected,
                    error_cb=error,
                )
        except (OSError, *_NOT_READY) as exc:
            raise StoreError(
                f"cannot reach NATS at {','.join(self.servers)}: "
                f"{str(exc) or f'no answer within {CONNECT_FOR:g}s'}"
            ) from exc
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT)
        await self._retry("create the purge log", self._declare)

    async def _declare(self) -> None:
        js = self._js
        for config in (
            StreamConfig(
                name=STREAM,
                subjects=[SUBJECT],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=DUPLICATE_WINDOW,
            ),
            StreamConfig(
                name=ACKS,
                subjects=[f"{ACK_PREFIX}>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                max_msgs_per_subject=self.keep,
            ),
        ):
            try:
                await js.stream_info(config.name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)
        try:
            self._kv = await js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await js.create_key_value(
                bucket=BUCKET, history=1, replicas=self.replicas, storage=StorageType.FILE
            )

    async def _retry(self, what: str, action: Any, per_try: float | None = None) -> Any:
        """Run `action` until it works or RETRY_FOR has passed (a cluster electing a
        leader answers "unavailable" or not at all for a while); each try is cut off
        after `per_try` seconds when given."""
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                async with asyncio.timeout(per_try):
                    return await action()
            except nats.js.errors.APIError as exc:
                if not isinstance(exc, _BUSY) and exc.err_code != _NO_PEERS_YET:
                    raise StoreError(f"cannot {what}: {exc.description}") from exc
                error: Exception = exc
            except _NOT_READY as exc:
                error = exc
            if time.monotonic() > deadline:
                raise StoreError(f"cannot {what}: {str(error) or type(error).__name__}") from error
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        if self._beat and self._kv is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._kv.delete(self._beat)
        for name in ("_purges", "_acks", "_watch"):
            sub = getattr(self, name)
            setattr(self, name, None)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.stop() if name == "_watch" else await sub.unsubscribe()
        if self._nc is not None:
            nc, self._nc = self._nc, None  # first: the disconnect it causes is not news
            with contextlib.suppress(Exception):
                await nc.close()

    # -- the log

    async def _bounds(self) -> tuple[int, int]:
        """(latest, compacted) as the stream stands."""
        info = await self._retry("read the purge log", lambda: self._js.stream_info(STREAM))
        state = info.state
        latest = int(state.last_seq)
        compacted = latest if not state.messages else int(state.first_seq) - 1
        return latest, compacted

    async def load(self, keep: int) -> Snapshot:
        latest, compacted = await self._bounds()
        if latest - compacted > keep:
            compacted = await self.compact(latest - keep)
        # Ordered consumers from the first kept message: read up to what the stream
        # held just now, and `follow` goes on from there.
        self._purges = await self._js.subscribe(SUBJECT, ordered_consumer=True, idle_heartbeat=1.0)
        events: list[Event] = []
        while latest and (not events or events[-1].seq < latest):
            msg = await self._next(self._purges, "read the purge log")
            event = _event(msg)
            if event.seq > compacted:
                events.append(event)
        confirmations: dict[int, dict[str, float]] = {e.seq: {} for e in events}
        acks_info = await self._retry("read confirmations", lambda: self._js.stream_info(ACKS))
        last_ack = int(acks_info.state.last_seq)
        self._acks = await self._js.subscribe(
            f"{ACK_PREFIX}>", ordered_consumer=True, idle_heartbeat=1.0
        )
        seen = 0
        while acks_info.state.messages and seen < last_ack:
            msg = await self._next(self._acks, "read confirmations")
            seen = msg.metadata.sequence.stream
            node, first, last, at = _ack(msg)
            for n in range(max(first, compacted + 1), last + 1):
                if n in confirmations:
                    confirmations[n].setdefault(node, at)
        assert self._kv is not None
        self._watch = await self._kv.watchall()
        nodes: list[NodeRecord] = []
        async for entry in self._watch:
            if entry is None:  # the initial values are done
                break
            if entry.operation is None and entry.value and not entry.key.startswith(BEAT):
                nodes.append(_record(entry.value))
        return Snapshot(latest, compacted, events, confirmations, nodes)

    async def _next(self, sub: Any, what: str) -> Msg:
        try:
            return await sub.next_msg(timeout=RETRY_FOR)
        except nats.errors.TimeoutError as exc:
            raise StoreError(f"cannot {what}: no message within {RETRY_FOR:g}s") from exc

    async def append(self, purge: dict[str, Any], created: float) -> int:
        body = json.dumps({"created": created, "purge": purge}, separators=(",", ":"))
        # One id for every try: a publish stored whose reply was lost is not stored twice.
        headers = {"Nats-Msg-Id": os.urandom(12).hex()}

        async def publish() -> int:
            ack = await self._js.publish(SUBJECT, body.encode(), headers=headers)
            return int(ack.seq)

        return int(await self._retry("append to the purge log", publish))

    async def read(self, after: int, limit: int) -> list[Event]:
        latest, compacted = await self._bounds()
        if after < compacted:
            raise Compacted(compacted)
        events = []
        for seq in range(after + 1, min(latest, after + limit) + 1):
            try:
                raw = await self._retry(
                    "read the purge log", lambda seq=seq: self._js.get_msg(STREAM, seq)
                )
            except StoreError as exc:
                # Compacted away since the bounds were read.
                _, compacted = await self._bounds()
                if seq <= compacted:
                    raise Compacted(compacted) from exc
                raise
            data = json.loads(raw.data)
            events.append(Event(seq, float(data["created"]), data["purge"]))
        return events

    async def compact(self, through: int) -> int:
        if through > self._compacted:
            self._compacted = through
            await self._retry(
                "compact the purge log", lambda: self._js.purge_stream(STREAM, seq=through + 1)
            )
        return max(through, (await self._bounds())[1])

    # -- the registry and confirmations

    async def save_node(self, node: NodeRecord) -> None:
        await self._put(node)

    async def _put(self, node: NodeRecord) -> None:
        kv = self._kv
        assert kv is not None

        def value() -> bytes:
            return json.dumps({k: getattr(node, k) for k in _FIELDS}).encode()

        # Encoded at each try: a renewal whose try was cut off and made again after the
        # node left writes that it left, never the connection it had (which would keep
        # it "connected" at other coordinators until its record went stale).
        await self._retry("save a node", lambda: kv.put(node.name, value()), REGISTRY_TRY)

    async def beat(self, coordinator: str) -> None:
        kv = self._kv
        assert kv is not None
        self._beat = f"{BEAT}{coordinator}"
        await self._retry("beat", lambda: kv.put(self._beat, b"1"), REGISTRY_TRY)

    async def forget_node(self, name: str) -> None:
        kv = self._kv
        assert kv is not None
        await self._retry("forget a node", lambda: kv.delete(name), REGISTRY_TRY)

    async def flush(
        self, confirmations: list[tuple[int, str, float]], nodes: list[NodeRecord]
    ) -> None:
        # Runs of consecutive seqs one node confirmed at one time: one message each.
        runs: list[list[Any]] = []
        for seq, node, at in sorted(confirmations, key=lambda row: (row[1], row[0])):
            if runs and runs[-1][0] == node and runs[-1][2] == seq - 1 and runs[-1][3] == at:
                runs[-1][2] = seq
            else:
                runs.append([node, seq, seq, at])
        # Published side by side (the client pipelines them): one round trip, not one each.
        writes = []
        for node, first, last, at in runs:
            body = json.dumps({"node": node, "first": first, "last": last, "at": at}).encode()
            writes.append(
                self._retry(
                    "record confirmations",
                    lambda node=node, body=body: self._js.publish(f"{ACK_PREFIX}{node}", body),
                )
            )
        writes += [self._put(record) for record in nodes]
        await asyncio.gather(*writes)

    async def maintain(self) -> None:
        """Nothing: JetStream keeps its own files."""

    async def follow(self, follower: Follower) -> None:
        """Report purges, confirmations and node changes as they arrive, until cancelled."""
        await asyncio.gather(
            self._follow_purges(follower),
            self._follow_acks(follower),
            self._follow_nodes(follower),
        )

    @staticmethod
    async def _receive(sub: Any) -> Msg | None:
        """The next message of an ordered consumer (which starts itself over after a
        gap or a lost member); None after an error, said once, a moment later."""
        try:
            return await sub.next_msg(timeout=None)
        except nats.errors.Error as exc:
            log.warning("purge log: reading the stream: %s", exc or type(exc).__name__)
            await asyncio.sleep(0.25)
            return None

    async def _follow_purges(self, follower: Follower) -> None:
        while True:
            msg = await self._receive(self._purges)
            if msg is not None:
                follower.published(_event(msg))

    async def _follow_acks(self, follower: Follower) -> None:
        while True:
            msg = await self._receive(self._acks)
            if msg is None:
                continue
            try:
                follower.confirmed(*_ack(msg))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignored a confirmation record: %s", exc)

    async def _follow_nodes(self, follower: Follower) -> None:
        async for entry in self._watch:
            if entry is None:
                continue
            if entry.key.startswith(BEAT):
                if entry.operation is None:
                    follower.heard(entry.key[len(BEAT) :])
            elif entry.operation is None and entry.value:
                follower.node_changed(_record(entry.value), entry.key)
            else:
                follower.node_changed(None, entry.key)


def _event(msg: Msg) -> Event:
    data = json.loads(msg.data)
    return Event(int(msg.metadata.sequence.stream), float(data["created"]), data["purge"])


def _ack(msg: Msg) -> tuple[str, int, int, float]:
    data = json.loads(msg.data)
    return str(data["node"]), int(data["first"]), int(data["last"]), float(data["at"])


_FIELDS = ("name", "role", "region", "address", "last_seen", "applied", "holder", "instance")


def _record(value: bytes) -> NodeRecord:
    data = json.loads(value)
    record = NodeRecord(**{k: data[k] for k in _FIELDS if k in data})
    # When this coordinator last heard the holder vouch for the connection: its own
    # clock, so coordinators' clocks need not agree.
    record.renewed = time.time()
    return record
