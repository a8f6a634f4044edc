"""The scenarios `edge scenario` knows: name and one line each. The modules themselves
are run as `python -m scenarios.NAME`; this list is what `edge scenario --list` shows."""

from __future__ import annotations

SCENARIOS: dict[str, str] = {
    "flash_crowd": "crowds on cold objects through edges and a shield: origin requests per "
    "object, hits per tier, latency; against nginx (cache lock on and off)",
    "purge_propagation": "1000 purges through the coordinator: p50/p99 time until every node "
    "confirmed",
    "large_files": "a multi-GB archive download: cold crowd time to first byte, origin "
    "requests, RSS, warm throughput against nginx",
    "origin_outage": "the origin killed: cached objects served (stale where allowed), "
    "never-cached ones a clear 502/504",
    "edge_failover": "an edge killed: GeoDNS moves its region's clients and brings them "
    "back; errors they saw",
    "geo_steering": "clients in each region resolve the CDN name and reach their region's edge",
    "dns_throughput": "the GeoDNS authority under dnsperf, against Knot DNS",
    "conformance": "the HTTP caching test suite (http-cache-tests) against an edge",
    "bench_hits": "cache-hit throughput and latency against nginx",
    "bench_h2": "HTTP/2 (h2c) and HTTP/1.1 cache hits under h2load against nginx "
    "(http2, proxy_cache): requests/s, p50/p99, edge/nginx per protocol; HTTP/3 beside h2 "
    "on one TLS edge",
    "bench_misses": "cache-miss throughput and latency against nginx (every request a new "
    "URL, same origin), edge serve or edge shield; the p99 a miss adds over the origin",
    "cold_large": "a cold large object (1 GiB) by aria2c -x 16 and by curl, through edge "
    "and nginx slice 4m: time, MB/s, origin bytes / object size",
    "compression": "bytes saved and CPU per MB for br, zstd and gzip on the demo texts",
    "guard_soak": "well-behaved clients beside slowloris, a flood, range bombs, oversize "
    "heads, smuggling and slow POSTs: their success and p99, what the abusers got",
}
