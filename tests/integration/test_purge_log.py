"""The purge log's contract (origin.coordinator.log.PurgeLog), run against every backend:
the SQLite file and NATS JetStream (a real nats-server on loopback). Append gives seqs
from 1 up, read replays from a position, compaction drops a prefix and tells a reader
behind it, seqs are never reused, and confirmations and the node registry survive a
reopen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from origin.coordinator.log import Compacted, NodeRecord, PurgeLog, open_log
from tests.support.natscluster import Cluster
from tests.support.procs import Proc

Backend = Callable[[], PurgeLog]


# JetStream needs Debian's nats-server: a system test, run by .ci/run's system stage.
@pytest.fixture(params=["sqlite", pytest.param("jetstream", marks=pytest.mark.system)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, procs: list[Proc]) -> Backend:
    """A maker of fresh handles on one log (a reopen is a new handle)."""
    if request.param == "sqlite":
        spec = f"sqlite:{tmp_path / 'log.db'}"
        return lambda: open_log(spec)
    cluster = Cluster(tmp_path / "nats", procs, size=1).start()
    return lambda: open_log(cluster.url, replicas=1, keep=100)


def purge(n: int) -> dict[str, object]:
    return {"urls": [f"https://archive.example/{n}"], "soft": False}


async def test_append_read_compact_reopen(backend: Backend) -> None:
    log = backend()
    await log.open()
    try:
        empty = await log.load(keep=100)
        assert (empty.latest, empty.compacted, empty.events, empty.nodes) == (0, 0, [], [])
        assert [await log.append(purge(n), 1000.0 + n) for n in range(1, 6)] == [1, 2, 3, 4, 5]
        events = await log.read(0, 100)
        assert [(e.seq, e.created, e.purge) for e in events] == [
            (n, 1000.0 + n, purge(n)) for n in range(1, 6)
        ]
        assert [e.seq for e in await log.read(2, 2)] == [3, 4]
        assert await log.read(5, 10) == []

        assert await log.compact(2) == 2
        with pytest.raises(Compacted) as behind:
            await log.read(1, 10)
        assert behind.value.compacted == 2
        assert [e.seq for e in await log.read(2, 10)] == [3, 4, 5]
        # A seq is never reused, even once compacted away.
        assert await log.append(purge(6), 1006.0) == 6

        shield = NodeRecord("s1", "shield", "eu", "http://127.0.0.1:9", 1006.5, 6)
        edge = NodeRecord("e1", "edge", "", "", 1006.5, 4)
        await log.save_node(NodeRecord("gone", "edge"))
        await log.flush(
            [(3, "s1", 1003.5), (4, "s1", 1003.5), (5, "s1", 1005.5), (3, "e1", 1004.0)],
            [shield, edge],
        )
        await log.forget_node("gone")
    finally:
        await log.close()

    again = backend()
    await again.open()
    try:
        snapshot = await again.load(keep=100)
        assert (snapshot.latest, snapshot.compacted) == (6, 2)
        assert [e.seq for e in snapshot.events] == [3, 4, 5, 6]
        assert snapshot.events[0].purge == purge(3)
        assert snapshot.confirmations[3] == {"s1": 1003.5, "e1": 1004.0}
        assert snapshot.confirmations[5] == {"s1": 1005.5}
        assert snapshot.confirmations[6] == {}
        nodes = {n.name: n for n in snapshot.nodes}
        assert set(nodes) == {"s1", "e1"}
        assert (nodes["s1"].role, nodes["s1"].region, nodes["s1"].applied) == ("shield", "eu", 6)
        assert nodes["s1"].address == "http://127.0.0.1:9"
        assert nodes["e1"].applied == 4
    finally:
        await again.close()

    # A lower limit compacts at load.
    third = backend()
    await third.open()
    try:
        snapshot = await third.load(keep=2)
        assert (snapshot.latest, snapshot.compacted) == (6, 4)
        assert [e.seq for e in snapshot.events] == [5, 6]
        assert await third.append(purge(7), 1007.0) == 7
    finally:
        await third.close()
