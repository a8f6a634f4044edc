"""Moving a purge log to another backend, keeping its sequence numbers
(`edge coordinator migrate --from sqlite:PATH --to nats://...`).

Nodes keep the seq they applied across the move: the new log must give every kept event
the seq it had, and start compacted where the old one was compacted, so a node resumes
exactly where it was (and one behind the compaction point is told to reset, as before).
Only an empty replicated log is a target: appending to one that has purges would give
them other seqs. The node registry and the kept events' confirmations come along, so
`edge status` and `edge purge` know the same nodes after the move.
"""

from __future__ import annotations

from dataclasses import dataclass

from origin.coordinator.log import PurgeLog, StoreError

#: `load` compacts down to its `keep`: a migration keeps everything there is.
EVERYTHING = 1 << 62


@dataclass
class Moved:
    events: int
    compacted: int
    latest: int
    nodes: int


async def migrate(source: PurgeLog, target: PurgeLog) -> Moved:
    """Copy `source` into the empty `target` (both opened and closed here)."""
    if not target.shared:
        raise StoreError("the target must be a replicated log (nats://...)")
    await source.open()
    try:
        await target.open()
        try:
            return await _copy(source, target)
        finally:
            await target.close()
    finally:
        await source.close()


async def _copy(source: PurgeLog, target: PurgeLog) -> Moved:
    old = await source.load(EVERYTHING)
    new = await target.load(EVERYTHING)
    if new.latest or new.nodes:
        raise StoreError(
            f"the target log is not empty (seq {new.latest}, {len(new.nodes)} nodes): "
            "migrate into a new one"
        )
    # Start where the old log was compacted: the next append gets compacted + 1.
    if old.compacted:
        await target.compact(old.compacted)
    for event in old.events:
        seq = await target.append(event.purge, event.created)
        if seq != event.seq:
            raise StoreError(f"purge {event.seq} got seq {seq} in the target: stopped")
    if old.latest > (old.events[-1].seq if old.events else old.compacted):
        await target.compact(old.latest)  # nothing kept past the last event: skip to it
    rows = [
        (seq, node, at)
        for seq, confirmed in sorted(old.confirmations.items())
        for node, at in confirmed.items()
    ]
    for node in old.nodes:
        node.holder = ""  # nobody is connected to the new log yet
    await target.flush(rows, old.nodes)
    return Moved(len(old.events), old.compacted, old.latest, len(old.nodes))
