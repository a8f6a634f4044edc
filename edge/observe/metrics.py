"""Prometheus metrics of one node, in a registry of its own (two nodes in one process
do not share counters). This module owns the metric names; the pipeline feeds them.

A node of several workers (edge.multiproc.workers) is one node to Prometheus: each worker's
counters and histograms are taken as a snapshot (`NodeMetrics.snapshot`), and the
worker that answers a scrape adds the others' snapshots to its own (`render`). Gauges
are the answering worker's own: the store's are the node's anyway, and upstream
health is each worker's view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

__all__ = ["CONTENT_TYPE_LATEST", "NodeMetrics"]

#: Metric types whose samples add up across workers, and their samples' suffixes.
SUMMED = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}

#: One sample of a snapshot: [name, labels, value].
Snapshot = Sequence[tuple[str, dict[str, str], float] | list[Any]]


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
            "Time from sending an upstream request to its response head; one sample per "
            "upstream fetch (whole objects, probes and slices alike)",
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
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency = self.upstream_latency.labels(node)

    def count_request(self, cache_status: str, code: int, sent: int) -> None:
        """One answered request: its Cache-Status label, status code and body bytes.
        The labelled children are kept: `labels()` costs a miss more than `inc`."""
        child = self._request_children.get((cache_status, code))
        if child is None:
            child = self.requests.labels(self.node, cache_status, str(code))
            self._request_children[(cache_status, code)] = child
        child.inc()
        self._fast_bytes.inc(sent)

    def upstream_answered(self, seconds: float) -> None:
        """One upstream response head, `seconds` after its request."""
        self._latency.observe(seconds)

    def fold_fast(self) -> None:
        """Move the fast path's counts into the exported counters."""
        hits, sent = self.fast_hits, self.fast_bytes
        self.fast_hits = self.fast_bytes = 0
        if hits:
            self._fast_hits.inc(hits)
        if sent:
            self._fast_bytes.inc(sent)

    def snapshot(self) -> list[tuple[str, dict[str, str], float]]:
        """This worker's counters and histograms, for another worker's `render`."""
        self.fold_fast()
        return [
            (sample.name, sample.labels, sample.value)
            for family in self.registry.collect()
            if family.type in SUMMED
            for sample in family.samples
            if sample.name.endswith(SUMMED[family.type])
        ]

    def render(self, others: Sequence[Snapshot] = ()) -> bytes:
        """The exposition; with `others` (the node's other workers' snapshots), their
        counters and histograms added to this worker's."""
        self.fold_fast()
        size, count = self._store_stats()
        self.store_bytes.labels(self.node).set(size)
        self.store_objects.labels(self.node).set(count)
        if not others:
            return generate_latest(self.registry)
        return generate_latest(_Summed(self.registry, others))  # type: ignore[arg-type]


class _Summed:
    """A registry's families with other workers' samples added (edge.multiproc.workers)."""

    def __init__(self, registry: CollectorRegistry, others: Sequence[Snapshot]) -> None:
        self.registry = registry
        self.others = others

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            suffixes = SUMMED.get(family.type)
            if suffixes is None:
                yield family
                continue
            names = {family.name + suffix for suffix in suffixes}
            values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            labels_of: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, str]] = {}
            order = []
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                values[key] = sample.value
                labels_of[key] = sample.labels
                order.append(key)
            for snapshot in self.others:
                for name, labels, value in snapshot:
                    if name not in names:
                        continue
                    key = (name, tuple(sorted(labels.items())))
                    if key not in values:
                        values[key] = 0.0
                        labels_of[key] = dict(labels)
                        order.append(key)
                    values[key] += float(value)
            summed = Metric(family.name, family.documentation, family.type, family.unit)
            for key in order:
                summed.add_sample(key[0], labels_of[key], values[key])
            yield summed
