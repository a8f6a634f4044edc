"""Prometheus metrics of one node, in a registry of its own (two nodes in one process
do not share counters). This module owns the metric names; the pipeline feeds them."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "NodeMetrics"]


class NodeMetrics:
    def __init__(self, node: str, store_stats: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["node"]
        self.requests = Counter(
            "edge_requests",
            "Client requests by cache status (hit, stale, uri-miss, vary-miss, ...)",
            [*labels, "cache_status", "code"],
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "edge_sent_bytes", "Body bytes sent to clients", labels, registry=self.registry
        )
        self.upstream_latency = Histogram(
            "edge_upstream_latency_seconds",
            "Time from sending an upstream request to its response head",
            labels,
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.upstream_errors = Counter(
            "edge_upstream_errors",
            "Upstream failures by kind",
            [*labels, "kind"],
            registry=self.registry,
        )
        self.member_up = Gauge(
            "edge_upstream_member_up",
            "1 while an upstream pool member is healthy (not down, ejected or on probation)",
            [*labels, "pool", "member"],
            registry=self.registry,
        )
        self.member_ejections = Counter(
            "edge_upstream_member_ejections",
            "Times a pool member was ejected after consecutive failures",
            [*labels, "pool", "member"],
            registry=self.registry,
        )
        self.refused = Counter(
            "edge_guard_refused",
            "Requests refused by the guard (limits, framing, rate, method, rules), by status",
            [*labels, "code"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "edge_guard_connections_refused",
            "Connections closed at once: the client address already held its maximum",
            labels,
            registry=self.registry,
        )
        self.store_bytes = Gauge(
            "edge_store_bytes", "Bytes used by the cache store", labels, registry=self.registry
        )
        self.store_objects = Gauge(
            "edge_store_objects", "Objects in the cache store", labels, registry=self.registry
        )
        self.node = node
        self._store_stats = store_stats
        # The hit fast path counts in plain integers (a labelled Counter's inc takes a
        # lock and costs as much as the rest of a hit); render() folds them in.
        self.fast_hits = 0
        self.fast_bytes = 0
        self._fast_hits = self.requests.labels(node, "hit", "200")
        self._fast_bytes = self.bytes_sent.labels(node)

    def fold_fast(self) -> None:
        """Move the fast path's counts into the exported counters."""
        hits, sent = self.fast_hits, self.fast_bytes
        self.fast_hits = self.fast_bytes = 0
        if hits:
            self._fast_hits.inc(hits)
        if sent:
            self._fast_bytes.inc(sent)

    def render(self) -> bytes:
        self.fold_fast()
        size, count = self._store_stats()
        self.store_bytes.labels(self.node).set(size)
        self.store_objects.labels(self.node).set(count)
        return generate_latest(self.registry)
