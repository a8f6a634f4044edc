"""edge.upstream.balance: each strategy distributes as it claims, and health transitions
(active rise/fall, passive ejection, probation) happen exactly at their thresholds."""

from __future__ import annotations

from collections import Counter

import pytest

from edge.upstream.balance import (
    MAX_BACKOFF,
    STRATEGIES,
    Balancer,
    Health,
    Member,
    Thresholds,
    observe_latency,
    rendezvous_score,
)


def members(*weights: int) -> list[Member]:
    return [Member(f"http://10.0.0.{i + 1}:80", w) for i, w in enumerate(weights)]


def picks(balancer: Balancer, pool: list[Member], n: int, **kw: str) -> Counter[str]:
    return Counter(balancer.rank(pool, **kw)[0].url for _ in range(n))


# -- round-robin ---------------------------------------------------------------------


def test_round_robin_takes_each_member_in_turn() -> None:
    pool = members(1, 1, 1)
    b = Balancer("round-robin")
    order = [b.rank(pool)[0].url for _ in range(6)]
    assert order == [m.url for m in pool] * 2


def test_round_robin_ignores_weights() -> None:
    pool = members(5, 1)
    assert picks(Balancer("round-robin"), pool, 100) == {pool[0].url: 50, pool[1].url: 50}


def test_rank_lists_every_member_once_for_retries() -> None:
    pool = members(1, 2, 3, 4)
    for strategy in STRATEGIES:
        ranked = Balancer(strategy).rank(pool, key="/k", client="192.0.2.1")
        assert sorted(m.url for m in ranked) == sorted(m.url for m in pool), strategy


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown balancing strategy"):
        Balancer("random")


def test_empty_pool_ranks_nothing() -> None:
    assert Balancer("ewma").rank([]) == []


# -- weighted round-robin -------------------------------------------------------------


def test_weighted_round_robin_gives_each_member_exactly_its_weight_per_cycle() -> None:
    pool = members(5, 1, 1)
    b = Balancer("weighted-round-robin")
    for _ in range(3):  # three full cycles of sum(weights) picks
        got = picks(b, pool, 7)
        assert got == {pool[0].url: 5, pool[1].url: 1, pool[2].url: 1}


def test_weighted_round_robin_is_smooth() -> None:
    """nginx's example: weights 5, 1, 1 give a a b a c a a, never five a's in a row."""
    pool = members(5, 1, 1)
    b = Balancer("weighted-round-robin")
    names = {pool[0].url: "a", pool[1].url: "b", pool[2].url: "c"}
    seq = "".join(names[b.rank(pool)[0].url] for _ in range(7))
    assert seq == "aabacaa"


# -- least connections ---------------------------------------------------------------


def test_least_connections_prefers_the_member_with_fewest_in_flight() -> None:
    pool = members(1, 1, 1)
    pool[0].active, pool[1].active, pool[2].active = 4, 1, 2
    b = Balancer("least-connections")
    assert [m.url for m in b.rank(pool)] == [pool[1].url, pool[2].url, pool[0].url]


def test_least_connections_counts_per_unit_of_weight() -> None:
    pool = members(4, 1)
    pool[0].active, pool[1].active = 3, 1  # (3+1)/4 = 1 < (1+1)/1 = 2
    assert Balancer("least-connections").rank(pool)[0] is pool[0]


def test_least_connections_spreads_concurrent_requests_evenly() -> None:
    """Requests that stay in flight: each new one goes where fewest are."""
    pool = members(1, 1, 1)
    b = Balancer("least-connections")
    for _ in range(30):
        b.rank(pool)[0].active += 1
    assert [m.active for m in pool] == [10, 10, 10]


def test_least_connections_breaks_ties_round_robin() -> None:
    pool = members(1, 1, 1)
    b = Balancer("least-connections")
    assert picks(b, pool, 30) == {m.url: 10 for m in pool}


# -- consistent hash (rendezvous) ------------------------------------------------------


def test_consistent_hash_sends_a_key_to_the_same_member_every_time() -> None:
    pool = members(1, 1, 1)
    b = Balancer("consistent-hash")
    for i in range(50):
        first = b.rank(pool, key=f"http://a/{i}")[0]
        assert all(b.rank(pool, key=f"http://a/{i}")[0] is first for _ in range(5))


def test_consistent_hash_spreads_keys_evenly() -> None:
    pool = members(1, 1, 1, 1)
    got = picks_by_key(Balancer("consistent-hash"), pool, 4000)
    for count in got.values():
        assert 850 <= count <= 1150  # 1000 expected; 4.7 sigma either side


def test_consistent_hash_shares_follow_weights() -> None:
    pool = members(3, 1)
    got = picks_by_key(Balancer("consistent-hash"), pool, 4000)
    assert 2800 <= got[pool[0].url] <= 3200


def test_losing_a_member_moves_only_its_keys() -> None:
    pool = members(1, 1, 1, 1)
    b = Balancer("consistent-hash")
    keys = [f"http://archive.example/book/{i}" for i in range(2000)]
    before = {k: b.rank(pool, key=k)[0] for k in keys}
    gone = pool[2]
    rest = [m for m in pool if m is not gone]
    moved = 0
    for k in keys:
        after = b.rank(rest, key=k)[0]
        if before[k] is gone:
            moved += 1
            # It goes to its second choice, which it had all along.
            assert after is b.rank(pool, key=k)[1]
        else:
            assert after is before[k]
    assert 350 <= moved <= 650  # about a quarter


def test_a_returning_member_takes_back_exactly_its_keys() -> None:
    pool = members(1, 1, 1)
    b = Balancer("consistent-hash")
    keys = [f"/k/{i}" for i in range(600)]
    full = {k: b.rank(pool, key=k)[0] for k in keys}
    degraded = {k: b.rank(pool[:2], key=k)[0] for k in keys}
    changed = {k for k in keys if full[k] is not degraded[k]}
    assert changed == {k for k in keys if full[k] is pool[2]}


def test_rendezvous_score_is_positive_and_deterministic() -> None:
    m = Member("http://s1", 2)
    assert rendezvous_score(m, "x") == rendezvous_score(m, "x") > 0


# -- client IP hash --------------------------------------------------------------------


def test_client_ip_hash_keeps_a_client_on_one_member_whatever_it_asks() -> None:
    pool = members(1, 1, 1)
    b = Balancer("client-ip-hash")
    for client in ("192.0.2.1", "198.51.100.7", "2001:db8::1"):
        homes = {b.rank(pool, key=f"/{i}", client=client)[0].url for i in range(20)}
        assert len(homes) == 1


def test_client_ip_hash_spreads_clients() -> None:
    pool = members(1, 1)
    b = Balancer("client-ip-hash")
    got = Counter(b.rank(pool, client=f"10.1.{i // 256}.{i % 256}")[0].url for i in range(2000))
    assert all(850 <= c <= 1150 for c in got.values())


# -- EWMA ------------------------------------------------------------------------------


def test_ewma_tries_unmeasured_members_first() -> None:
    pool = members(1, 1)
    observe_latency(pool[0], 5.0)
    assert Balancer("ewma").rank(pool)[0] is pool[1]


def test_ewma_prefers_the_faster_member() -> None:
    pool = members(1, 1, 1)
    for m, ms in zip(pool, (40.0, 5.0, 20.0), strict=True):
        observe_latency(m, ms)
    assert [m.url for m in Balancer("ewma").rank(pool)] == [
        pool[1].url,
        pool[2].url,
        pool[0].url,
    ]


def test_ewma_weighs_load_in_flight() -> None:
    """A fast member with a queue loses to a slower idle one (peak-EWMA)."""
    pool = members(1, 1)
    observe_latency(pool[0], 10.0)
    observe_latency(pool[1], 25.0)
    pool[0].active = 3  # 10 * 4 = 40 > 25 * 1
    assert Balancer("ewma").rank(pool)[0] is pool[1]


def test_ewma_follows_a_member_that_slows_down() -> None:
    m = Member("http://s")
    observe_latency(m, 10.0)
    for _ in range(20):
        observe_latency(m, 100.0)
    assert m.ewma_ms is not None and 95 < m.ewma_ms <= 100


def test_ewma_sends_most_requests_to_the_fast_member_under_simulated_load() -> None:
    """Members answer in 5 ms and 50 ms: feeding back each pick's latency, the fast one
    ends up with the bulk of the traffic (but the slow one is still sampled)."""
    pool = members(1, 1)
    latency = {pool[0].url: 5.0, pool[1].url: 50.0}
    b = Balancer("ewma")
    got: Counter[str] = Counter()
    for _ in range(200):
        m = b.rank(pool)[0]
        got[m.url] += 1
        observe_latency(m, latency[m.url])
    assert got[pool[0].url] >= 190
    assert got[pool[1].url] >= 1


def picks_by_key(b: Balancer, pool: list[Member], n: int) -> Counter[str]:
    return Counter(b.rank(pool, key=f"http://archive.example/obj/{i}")[0].url for i in range(n))


# -- health ----------------------------------------------------------------------------


def test_active_checks_mark_down_after_fall_and_up_after_rise() -> None:
    h = Health(Thresholds(rise=2, fall=3, active=True))
    m = Member("http://s")
    for _ in range(2):
        h.on_probe(m, False, 0)
    assert m.up and h.usable(m, 0)
    h.on_probe(m, False, 0)
    assert not m.up and not h.usable(m, 0)
    h.on_probe(m, True, 0)
    assert not m.up
    h.on_probe(m, True, 0)
    assert m.up and h.usable(m, 0)


def test_a_good_probe_resets_the_failure_streak() -> None:
    h = Health(Thresholds(fall=2, active=True))
    m = Member("http://s")
    for ok in (False, True, False, True, False):
        h.on_probe(m, ok, 0)
    assert m.up


def test_consecutive_failures_eject_for_the_cooldown() -> None:
    h = Health(Thresholds(failures=3, cooldown=10))
    m = Member("http://s")
    assert not h.on_failure(m, 100)
    h.on_success(m)  # not consecutive any more
    assert not h.on_failure(m, 100)
    assert not h.on_failure(m, 100)
    assert h.on_failure(m, 100)
    assert not h.usable(m, 105)
    assert m.ejected_until == 110


def test_without_active_checks_an_ejected_member_returns_through_one_trial() -> None:
    h = Health(Thresholds(failures=1, cooldown=10))
    m = Member("http://s")
    h.on_failure(m, 0)
    assert not h.usable(m, 9.9)
    assert h.usable(m, 10)  # cool-down over: on probation
    h.begin(m, 10)
    assert not h.usable(m, 10)  # one trial at a time
    h.end(m)
    h.on_success(m)
    assert m.healthy and h.usable(m, 10)


def test_a_failed_trial_ejects_again_for_longer() -> None:
    h = Health(Thresholds(failures=1, cooldown=10))
    m = Member("http://s")
    h.on_failure(m, 0)
    h.begin(m, 10)
    assert h.on_failure(m, 10)
    assert m.ejected_until == 30  # twice the cool-down
    for t in (30, 70, 150, 310):
        h.begin(m, t)
        h.on_failure(m, t)
    assert m.backoff == MAX_BACKOFF
    assert m.ejected_until == 310 + 10 * MAX_BACKOFF


def test_with_active_checks_only_a_passing_probe_ends_probation() -> None:
    h = Health(Thresholds(failures=2, cooldown=5, active=True))
    m = Member("http://s")
    h.on_failure(m, 0)
    h.on_failure(m, 0)
    assert not h.usable(m, 100)  # cool-down long over, but not passed again
    h.on_probe(m, True, 2)  # passes during the cool-down: not yet
    assert not h.usable(m, 3)
    h.on_probe(m, True, 6)
    assert h.usable(m, 6) and m.healthy


def test_healthy_reports_ejection_and_probation() -> None:
    h = Health(Thresholds(failures=1, cooldown=1))
    m = Member("http://s")
    assert m.healthy
    h.on_failure(m, 0)
    assert not m.healthy


def test_in_flight_count_never_goes_negative() -> None:
    h = Health()
    m = Member("http://s")
    h.begin(m, 0)
    h.end(m)
    h.end(m)
    assert m.active == 0
