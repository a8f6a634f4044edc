"""What a coordinator on a shared log makes of other coordinators' writes (the Follower
side of origin.coordinator.service.Coordinator), with no log behind it: shields
connected elsewhere hold this coordinator's edges back until they confirm or go stale,
and a purge counts as confirmed by a node only once its confirmation is there."""

from __future__ import annotations

import time

from origin.coordinator.log import Event, NodeRecord
from origin.coordinator.service import HEALTHY_BEATS, Coordinator, CoordinatorSettings

HEARTBEAT = 1.0


def coordinator() -> Coordinator:
    # A SQLite handle is made, never opened: nothing here touches a file.
    settings = CoordinatorSettings(
        db=None, token="t", node_token="n", heartbeat=HEARTBEAT, backend="sqlite:/unused"
    )
    return Coordinator(settings)


def elsewhere(name: str, role: str, applied: int = 0, *, age: float = 0.0) -> NodeRecord:
    """A node another coordinator ("B") holds, its record renewed `age` seconds ago."""
    record = NodeRecord(name, role, applied=applied, holder="B")
    record.renewed = time.time() - age
    return record


def publish(c: Coordinator, *seqs: int) -> None:
    for seq in seqs:
        c.published(Event(seq, 1000.0 + seq, {"urls": [f"http://a.example/{seq}"]}))


def test_a_shield_at_another_coordinator_holds_edges_here_until_it_confirms() -> None:
    c = coordinator()
    c.node_changed(elsewhere("s1", "shield"), "s1")
    publish(c, 1, 2, 3)
    assert c.edge_frontier == 0
    c.confirmed("s1", 1, 2, 1005.0)
    assert c.edge_frontier == 2
    c.confirmed("s1", 3, 3, 1006.0)
    assert c.edge_frontier == 3


def test_a_stale_shield_elsewhere_holds_nothing_back() -> None:
    c = coordinator()
    publish(c, 1, 2)
    c.node_changed(elsewhere("s1", "shield", age=HEALTHY_BEATS * HEARTBEAT + 1), "s1")
    publish(c, 3)
    # Not heard of within the staleness bound: as a disconnected shield.
    assert c.edge_frontier == 3
    assert c._purge_view(c.events[3])["not_connected"] == ["s1"]


def test_the_frontier_never_moves_back_for_a_shield_that_appears_late() -> None:
    c = coordinator()
    publish(c, 1, 2)
    assert c.edge_frontier == 2  # nobody connected: edges may have everything
    c.node_changed(elsewhere("s1", "shield"), "s1")
    publish(c, 3)
    assert c.edge_frontier == 2


def test_a_node_record_ahead_of_its_confirmations_does_not_complete_a_purge() -> None:
    c = coordinator()
    publish(c, 1, 2, 3)
    c.node_changed(elsewhere("e1", "edge"), "e1")
    # The registry says it applied 3 before the confirmation stream says so.
    c.node_changed(elsewhere("e1", "edge", applied=3), "e1")
    view = c._purge_view(c.events[3])
    assert (view["pending"], view["complete"], view["confirmations"]) == (["e1"], False, [])
    c.confirmed("e1", 1, 3, 1004.0)
    view = c._purge_view(c.events[3])
    assert (view["pending"], view["complete"]) == ([], True)
    assert [(row["node"], row["at"]) for row in view["confirmations"]] == [("e1", 1004.0)]


def test_a_forgotten_node_leaves_and_a_repeat_of_a_known_purge_is_ignored() -> None:
    c = coordinator()
    publish(c, 1)
    c.node_changed(elsewhere("e1", "edge"), "e1")
    c.node_changed(None, "e1")
    assert "e1" not in c.nodes
    first = c.events[1]
    publish(c, 1)  # a follower that started over
    assert c.events[1] is first and c.latest == 1


def test_a_name_held_at_another_coordinator_is_refused_but_to_its_own_process() -> None:
    c = coordinator()
    held = elsewhere("e1", "edge")
    held.instance, held.address = "proc-1", "http://127.0.0.1:8080"
    c.node_changed(held, "e1")
    refused = c._name_taken("e1", "proc-2")
    assert refused == (
        "node name e1 is already connected (edge at http://127.0.0.1:8080) elsewhere"
    )
    assert c._name_taken("e1", "") == refused
    # Its own process, moving here (its coordinator failed), takes it back at once.
    assert c._name_taken("e1", "proc-1") == ""
    # Anyone, once the record is stale (that coordinator stopped without a word).
    c.node_changed(elsewhere("e1", "edge", age=HEALTHY_BEATS * HEARTBEAT + 1), "e1")
    assert c._name_taken("e1", "proc-2") == ""


def test_a_shield_is_stale_only_once_this_coordinators_own_beat_came_back_since() -> None:
    """The record's last renewal arrived 10 s ago, but so did this coordinator's own beat:
    the watch is behind (a cluster member lost), not the shield's coordinator gone."""
    c = coordinator()
    c._echo = time.time() - 10
    c.node_changed(elsewhere("s1", "shield", age=10), "s1")
    publish(c, 1, 2)
    assert c.edge_frontier == 0
    c.heard("another-coordinator")  # someone else's beat says nothing of this watch
    assert c.edge_frontier == 0
    c.heard(c.id)  # this one's own beat is back: the holder wrote nothing since
    assert c.edge_frontier == 2


def test_a_log_that_may_hide_a_live_coordinator_keeps_its_shields_longer() -> None:
    """On a replicated log a live coordinator can go unheard while a member is lost (its
    renewals wait for a reconnection and an election): its shields keep holding edges
    back for that long past the beats, and are let go only after it."""
    c = coordinator()
    c.store.quiet_for = 10.0  # as JetStreamLog says of itself
    bound = HEALTHY_BEATS * HEARTBEAT
    c.node_changed(elsewhere("s1", "shield", age=bound + 5), "s1")
    publish(c, 1, 2)
    assert c.edge_frontier == 0
    c.node_changed(elsewhere("s1", "shield", age=bound + 10 + 1), "s1")
    assert c.edge_frontier == 2
