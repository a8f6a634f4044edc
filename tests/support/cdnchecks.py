"""End-to-end checks of a running CDN, one set for both ways of starting it: `edge up`
(tests/integration/test_up.py) and docker compose (.ci/compose_checks.py, the compose stage of CI).

A check is given what differs between the two (where each edge is reached from here,
what a client in a region was answered by the GeoDNS authority, what a command printed)
and asserts what must hold whichever way the CDN runs. Each raises AssertionError with
a one-line reason, and returns nothing or the observations it made.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def fetch(base: str, path: str, host: str, timeout: float = 10.0) -> tuple[int, str]:
    """GET base+path with Host `host`: the status and the Cache-Status field. No answer,
    or an error status, fails the check with the URL in its one line."""
    req = urllib.request.Request(base + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status, resp.headers.get("Cache-Status", "")
    except OSError as exc:  # URLError, HTTPError, timeouts
        raise AssertionError(f"GET {base}{path} (Host: {host}): {exc}") from exc


def entries(cache_status: str) -> list[tuple[str, str]]:
    """Cache-Status as (cache, parameters), the one nearest the origin first
    (RFC 9211 Section 2)."""
    out = []
    for member in cache_status.split(","):
        name, _, params = member.strip().partition(";")
        if name:
            out.append((name.strip(), params.strip()))
    return out


def entry(cache_status: str, cache: str) -> str:
    """The parameters of one cache's entry; AssertionError when it has none."""
    found = [params for name, params in entries(cache_status) if name == cache]
    assert found, f"no {cache} entry in Cache-Status: {cache_status!r}"
    return found[-1]


def is_hit(params: str) -> bool:
    return params.split(";")[0].strip() == "hit"


def is_miss(params: str) -> bool:
    return any(p.strip() == "fwd=uri-miss" for p in params.split(";"))


def check_miss_then_hit(
    edges: Mapping[str, str],
    path: str,
    host: str,
    shield: str,
    get: Callable[[str, str, str], tuple[int, str]] = fetch,
) -> list[str]:
    """The first request for `path` misses at the first edge and at the shield; at
    every other edge it misses there and hits the shield (one copy for every edge,
    since all ask for the same URL); a second request hits at every edge. `edges`:
    name -> base URL reached from here. Returns the Cache-Status lines seen."""
    seen = []
    for i, (name, base) in enumerate(edges.items()):
        status, first = get(base, path, host)
        seen.append(f"{name} 1st: {first}")
        assert status == 200, f"{name}: {path} answered {status}"
        at_shield = entry(first, shield)
        if i == 0:
            assert is_miss(at_shield), f"{name}: first request not a miss at {shield}: {first!r}"
        else:
            assert is_hit(at_shield), (
                f"{name}: {shield} did not share its copy with this edge: {first!r}"
            )
        assert is_miss(entry(first, name)), f"{name}: first request not a miss: {first!r}"
        status, second = get(base, path, host)
        seen.append(f"{name} 2nd: {second}")
        assert status == 200 and entries(second)[-1][0] == name, (name, second)
        assert is_hit(entries(second)[-1][1]), f"{name}: second request not a hit: {second!r}"
    return seen


def check_hits(
    edges: Mapping[str, str],
    path: str,
    host: str,
    get: Callable[[str, str, str], tuple[int, str]] = fetch,
) -> None:
    """Every edge answers `path` from its own cache (kept across a restart)."""
    for name, base in edges.items():
        status, got = get(base, path, host)
        assert status == 200, f"{name}: {path} answered {status}"
        assert is_hit(entry(got, name)), f"{name}: {path} not served from its cache: {got!r}"


def check_misses_at(
    edges: Mapping[str, str],
    path: str,
    host: str,
    get: Callable[[str, str, str], tuple[int, str]] = fetch,
) -> None:
    """No edge serves `path` from its cache (it was purged)."""
    for name, base in edges.items():
        status, got = get(base, path, host)
        assert status == 200, f"{name}: {path} answered {status}"
        assert is_miss(entry(got, name)), f"{name}: served a purged {path}: {got!r}"


def check_steering(
    answers: Mapping[str, Iterable[str]], edges_by_region: Mapping[str, Iterable[str]]
) -> None:
    """A client in each region is answered with edges of its own region only."""
    for region, got in answers.items():
        got, own = set(got), set(edges_by_region[region])
        assert got, f"a client in {region} got no answer"
        assert got <= own, f"a client in {region} was sent to {sorted(got - own)}, not {own}"


def check_failover(
    region: str,
    answers: Iterable[str],
    down: Iterable[str],
    reached: Mapping[str, int | str],
) -> None:
    """With `down` (a region's edges) stopped, the region's client is answered with
    other edges only, and reaches every one of them (`reached`: address -> HTTP status,
    or the error)."""
    got = set(answers)
    assert got, f"a client in {region} got no answer with its edges down"
    assert not got & set(down), f"a client in {region} was still sent to {sorted(got & set(down))}"
    for address in sorted(got):
        result = reached.get(address)
        assert result == 200, (
            f"a client in {region} was sent to {address} and could not reach it: {result}"
        )


def check_purge_confirmed(output: str, nodes: int) -> None:
    """`edge purge` printed that every node confirmed."""
    assert f"confirmed by all {nodes} nodes" in output, output.strip()[-300:]


def status_nodes(status_json: str) -> dict[str, dict[str, Any]]:
    """`edge status --json`: node name -> its row."""
    return {n["name"]: n for n in json.loads(status_json)["nodes"]}


def check_registered_addresses(status_json: str, expected: Mapping[str, str]) -> None:
    """Every node registered the address others reach it at (name -> URL)."""
    nodes = status_nodes(status_json)
    for name, url in expected.items():
        assert name in nodes, f"{name} is not registered with the coordinator"
        got = nodes[name]["address"]
        assert got == url, f"{name} registered {got}, others reach it at {url}"


def check_applied(status_json: str, seq: int) -> None:
    """The coordinator's purge log is at `seq` and every node applied all of it."""
    answer = json.loads(status_json)
    assert answer["seq"] == seq, f"the purge log is at seq {answer['seq']}, not {seq}"
    for node in answer["nodes"]:
        assert node["applied"] == seq, f"{node['name']} applied {node['applied']} of {seq}"
