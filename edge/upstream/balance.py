"""Choosing a member of an upstream pool, and keeping track of each member's health.

Pure: no I/O and no clock of its own (`now` is passed in), so every strategy and every
health transition is tested exactly. `edge.upstream.pools` does the talking and feeds the
outcomes back here.

A strategy ranks the usable members for one request: the first is asked, the rest are
the order in which a retry moves on (never to a member already tried). Strategies:

  round-robin           each member in turn
  weighted-round-robin  nginx's smooth weighted round-robin (no bursts to one member)
  least-connections     fewest requests in flight per unit of weight
  consistent-hash       rendezvous (highest random weight) hashing on the cache key:
                        each key has one home, and losing a member moves only its keys
  client-ip-hash        rendezvous hashing on the client's address
  ewma                  lowest recent latency (EWMA of response-head time) times
                        requests in flight, per unit of weight (peak-EWMA style)

Health has two sources. Active checks (done by `edge.upstream.pools`) mark a member down after
`fall` failed probes and up after `rise` good ones. Passive: `failures` consecutive
failed requests eject it for `cooldown` seconds; after that it is on probation and
returns only once it passes again, by an active probe or, without active checks, by one
trial request at a time. A member that fails its trial is ejected again for twice as
long (up to 8x).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

STRATEGIES = (
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "consistent-hash",
    "client-ip-hash",
    "ewma",
)

#: Weight of the newest latency sample in the moving average.
EWMA_ALPHA = 0.3
#: Longest ejection, as a multiple of the configured cool-down.
MAX_BACKOFF = 8


@dataclass(frozen=True)
class Thresholds:
    """Health settings of one pool."""

    rise: int = 2  # good active probes before a down member is up again
    fall: int = 3  # failed active probes before an up member is down
    failures: int = 3  # consecutive failed requests that eject a member
    cooldown: float = 10.0  # seconds an ejected member gets no requests
    active: bool = False  # whether active probes run (they decide probation)


@dataclass(eq=False)
class Member:
    """One upstream server of a pool, with its live state."""

    url: str
    weight: int = 1
    # Active-check state: up until `fall` probes fail.
    up: bool = True
    probe_ok: int = 0
    probe_failed: int = 0
    # Passive state.
    failures: int = 0
    ejected_until: float = 0.0
    probation: bool = False
    backoff: int = 1
    trial: bool = False  # a probation trial request is in flight
    # Load state.
    active: int = 0
    ewma_ms: float | None = None
    current: int = 0  # smooth weighted round-robin's running weight

    @property
    def healthy(self) -> bool:
        """For health reports: up, not ejected and not on probation."""
        return self.up and not self.probation and self.ejected_until == 0.0


@dataclass
class Health:
    """Health transitions of the members of one pool."""

    thresholds: Thresholds = field(default_factory=Thresholds)

    def on_success(self, member: Member) -> None:
        member.failures = 0
        if member.probation:
            self._reinstate(member)

    def on_failure(self, member: Member, now: float) -> bool:
        """Count a failed request; True when it ejected the member."""
        t = self.thresholds
        member.failures += 1
        if member.probation:
            member.trial = False
            member.backoff = min(member.backoff * 2, MAX_BACKOFF)
            member.ejected_until = now + t.cooldown * member.backoff
            return True
        if member.failures >= t.failures:
            member.ejected_until = now + t.cooldown
            member.probation = True
            return True
        return False

    def on_probe(self, member: Member, ok: bool, now: float) -> None:
        """An active health probe's outcome."""
        t = self.thresholds
        if ok:
            member.probe_ok += 1
            member.probe_failed = 0
            if not member.up and member.probe_ok >= t.rise:
                member.up = True
            # A passing probe ends probation once the cool-down is over.
            if member.up and member.probation and now >= member.ejected_until:
                self._reinstate(member)
        else:
            member.probe_failed += 1
            member.probe_ok = 0
            if member.up and member.probe_failed >= t.fall:
                member.up = False

    def begin(self, member: Member, now: float) -> None:
        """A request is being sent to `member`."""
        member.active += 1
        if member.probation and now >= member.ejected_until and not self.thresholds.active:
            member.trial = True

    def end(self, member: Member) -> None:
        member.active = max(0, member.active - 1)

    @staticmethod
    def _reinstate(member: Member) -> None:
        member.probation = False
        member.trial = False
        member.failures = 0
        member.backoff = 1
        member.ejected_until = 0.0

    def usable(self, member: Member, now: float) -> bool:
        """May `member` get a request now?"""
        if not member.up or now < member.ejected_until:
            return False
        if member.probation:
            # With active checks only a passing probe ends probation; without them,
            # one trial request at a time.
            return not self.thresholds.active and not member.trial
        return True


def observe_latency(member: Member, ms: float) -> None:
    """Fold one response-head time into the member's moving average."""
    if member.ewma_ms is None:
        member.ewma_ms = ms
    else:
        member.ewma_ms += EWMA_ALPHA * (ms - member.ewma_ms)


def rendezvous_score(member: Member, key: str) -> float:
    """Weighted rendezvous hashing (Schindelhauer and Schomaker's logarithmic method):
    -w / ln(h) with h uniform in (0, 1) from a hash of member and key. The member with
    the highest score is the key's home; removing a member changes no other key's home,
    and each member's share is proportional to its weight."""
    digest = hashlib.blake2b(f"{member.url}\n{key}".encode(), digest_size=8).digest()
    h = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)  # strictly inside (0, 1)
    return -member.weight / math.log(h)


@dataclass
class Balancer:
    """Ranks a pool's members for one request by the pool's strategy."""

    strategy: str = "round-robin"
    _next: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown balancing strategy: {self.strategy}")

    def rank(self, members: Sequence[Member], *, key: str = "", client: str = "") -> list[Member]:
        """All of `members`, best first, for a request with this cache key and client."""
        if not members:
            return []
        s = self.strategy
        if s == "consistent-hash":
            return sorted(members, key=lambda m: rendezvous_score(m, key), reverse=True)
        if s == "client-ip-hash":
            return sorted(members, key=lambda m: rendezvous_score(m, client), reverse=True)
        if s == "weighted-round-robin":
            return self._smooth_weighted(members)
        rotated = self._rotation(members)
        if s == "least-connections":
            # Ties go round-robin: `sorted` keeps the rotated order among equals.
            return sorted(rotated, key=lambda m: (m.active + 1) / m.weight)
        if s == "ewma":
            # A member without a sample is tried first, so every member gets measured.
            return sorted(
                rotated,
                key=lambda m: 0.0 if m.ewma_ms is None else m.ewma_ms * (m.active + 1) / m.weight,
            )
        return rotated

    def _rotation(self, members: Sequence[Member]) -> list[Member]:
        start = self._next % len(members)
        self._next += 1
        return [*members[start:], *members[:start]]

    @staticmethod
    def _smooth_weighted(members: Sequence[Member]) -> list[Member]:
        """nginx's smooth weighted round-robin: every member gains its weight, the
        largest running total is chosen and pays back the sum of weights. Over each
        cycle of sum(weights) picks each member gets exactly its weight, interleaved."""
        total = 0
        best: Member | None = None
        for m in members:
            m.current += m.weight
            total += m.weight
            if best is None or m.current > best.current:
                best = m
        assert best is not None
        best.current -= total
        rest = sorted((m for m in members if m is not best), key=lambda m: -m.weight)
        return [best, *rest]
