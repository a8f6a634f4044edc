"""The flash-crowd scenario: its parsers and counting on their own (Cache-Status chains,
access logs of the origin and of nginx, Prometheus counters, tier sums, percentiles, the
nginx config), then one small run with real processes: 3 edges x 50 clients on one cold
object through `edge shield`, judged from the JSON report; and the same run beside nginx
in the same two tiers (marked `system`: .ci/run's system stage installs nginx).

Here the parts that open no socket and start no process;
tests/integration/test_scenario_flash_crowd.py has the ones with real processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from scenarios import flash_crowd, harness
from scenarios.flash_crowd import CacheStatusEntry, Fetch

CHAIN = (
    "shield-1; fwd=uri-miss; fwd-status=200; stored; ttl=3599, "
    "edge-1; fwd=uri-miss; fwd-status=200; stored; collapsed; ttl=3599"
)

# --- Cache-Status chains ----------------------------------------------------------------


def test_parse_cache_status_reads_the_chain_shield_first() -> None:
    shield, edge = flash_crowd.parse_cache_status(CHAIN)
    assert shield.node == "shield-1"
    assert shield.fwd == "uri-miss"
    assert shield.get("fwd-status") == "200"
    assert shield.get("ttl") == "3599"
    assert shield.get("stored") is True
    assert not shield.collapsed and not shield.hit
    assert (shield.outcome(), shield.forwarded()) == ("miss", True)
    assert edge.node == "edge-1"
    assert edge.collapsed
    assert (edge.outcome(), edge.forwarded()) == ("collapsed", False)


def test_parse_cache_status_keeps_quoted_commas_and_semicolons() -> None:
    value = '"edge, eu; 1"; fwd=uri-miss; detail="upstream, timeout; 5s", shield-1; hit'
    first, second = flash_crowd.parse_cache_status(value)
    assert first.node == "edge, eu; 1"
    assert first.get("detail") == "upstream, timeout; 5s"
    assert (second.node, second.outcome(), second.forwarded()) == ("shield-1", "hit", False)


@pytest.mark.parametrize(
    ("value", "outcome", "forwarded"),
    [
        ("e; hit; ttl=10", "hit", False),
        ("e; hit; detail=stale-while-revalidate", "hit", False),
        ("e; fwd=vary-miss; fwd-status=200", "miss", True),
        ("e; fwd=stale; fwd-status=304", "other", True),
        ("e; fwd=request; fwd-status=200", "other", True),
        ("e; fwd=uri-miss; collapsed", "collapsed", False),
        ("e", "other", False),
        ("e; FWD=URI-MISS", "other", True),  # keys are lowercase (RFC 8941); values kept
    ],
)
def test_cache_status_outcome(value: str, outcome: str, forwarded: bool) -> None:
    (entry,) = flash_crowd.parse_cache_status(value)
    assert (entry.outcome(), entry.forwarded()) == (outcome, forwarded)


def test_parse_cache_status_skips_empty_members_and_none() -> None:
    assert flash_crowd.parse_cache_status(None) == []
    assert flash_crowd.parse_cache_status("") == []
    assert [e.node for e in flash_crowd.parse_cache_status("a; hit, , b")] == ["a", "b"]


def test_entry_for_takes_the_nodes_last_entry() -> None:
    chain = flash_crowd.parse_cache_status("edge-1; hit, shield-1; fwd=uri-miss, edge-1")
    assert flash_crowd.entry_for(chain, "edge-1") == CacheStatusEntry("edge-1")
    assert flash_crowd.entry_for(chain, "edge-2") is None


def test_condense_chain_drops_ttl_only() -> None:
    assert flash_crowd.condense_chain(CHAIN) == (
        "shield-1; fwd=uri-miss; fwd-status=200; stored, "
        "edge-1; fwd=uri-miss; fwd-status=200; stored; collapsed"
    )
    assert flash_crowd.condense_chain("e; hit; ttl=-3") == "e; hit"
    assert flash_crowd.condense_chain("") == "-"


# --- access logs ------------------------------------------------------------------------

ORIGIN_LOG = """\
edge origin: serving /tmp/root on http://127.0.0.1:4000 (responses 0.2s late)
2026-11-23 03:09:12,256 aiohttp.access INFO 127.0.0.1 [23/Nov/2026:03:09:12 +0000] \
"GET /edge/obj-1.bin HTTP/1.1" 200 356 "-" "Python/3.11 aiohttp/3.14.5"
2026-11-23 03:09:12,281 aiohttp.access INFO 127.0.0.1 [23/Nov/2026:03:09:12 +0000] \
"GET /edge/obj-1.bin?x=1 HTTP/1.1" 200 356 "-" "Python/3.11 aiohttp/3.14.5"
2026-11-23 03:09:12,282 aiohttp.access INFO 127.0.0.1 [23/Nov/2026:03:09:12 +0000] \
"HEAD /edge/obj-2.bin HTTP/1.1" 200 0 "-" "curl/7.88.1"
2026-11-23 03:09:12,300 origin.archive.server WARNING /edge/obj-3.bin shrank while being sent
"""


def test_origin_requests_counts_by_path_any_method_query_dropped() -> None:
    assert flash_crowd.origin_requests(ORIGIN_LOG) == Counter(
        {"/edge/obj-1.bin": 2, "/edge/obj-2.bin": 1}
    )
    assert flash_crowd.origin_requests("") == Counter()


def test_parse_nginx_log_reads_the_scenarios_format() -> None:
    text = (
        "flash /a/obj-1.bin 200 MISS 1048576\n"
        "flash /a/obj-1.bin?q 200 HIT 1048576\n"
        "flash /a/obj-2.bin 502 - 157\n"
        "something else nginx wrote\n"
    )
    lines = flash_crowd.parse_nginx_log(text)
    assert [(x.path, x.status, x.cache_status, x.bytes) for x in lines] == [
        ("/a/obj-1.bin", 200, "MISS", 1048576),
        ("/a/obj-1.bin", 200, "HIT", 1048576),
        ("/a/obj-2.bin", 502, "-", 157),
    ]
    assert [flash_crowd.nginx_outcome(s) for s in ("HIT", "MISS", "UPDATING", "-")] == [
        "hit",
        "miss",
        "other",
        "other",
    ]


def test_nginx_log_format_and_parser_agree() -> None:
    # The config's log_format, with nginx's variables filled in, must parse.
    line = (
        flash_crowd.NGINX_LOG_FORMAT.replace("$request_uri", "/p")
        .replace("$status", "200")
        .replace("$upstream_cache_status", "HIT")
        .replace("$body_bytes_sent", "10")
    )
    assert flash_crowd.parse_nginx_log(line)[0].cache_status == "HIT"


# --- counting ---------------------------------------------------------------------------


def test_tier_counts_and_add_tiers() -> None:
    a = flash_crowd.tier_counts(["hit", "miss", "collapsed", "fwd=x"], forwarded=2, detail="ab")
    assert {k: a[k] for k in ("requests", "hit", "miss", "collapsed", "other", "forwarded")} == {
        "requests": 4,
        "hit": 1,
        "miss": 1,
        "collapsed": 1,
        "other": 1,
        "forwarded": 2,
    }
    assert a["detail"] == {"a": 1, "b": 1}
    total = flash_crowd.add_tiers([a, flash_crowd.tier_counts(["hit"], forwarded=0, detail="a")])
    assert (total["requests"], total["hit"], total["forwarded"]) == (5, 2, 2)
    assert total["detail"] == {"a": 2, "b": 1}


METRICS = """\
# HELP edge_requests_total Client requests by cache status (hit, stale, uri-miss, ...)
# TYPE edge_requests_total counter
edge_requests_total{cache_status="uri-miss",code="200",node="shield-1"} 3.0
edge_requests_total{cache_status="hit",code="200",node="shield-1"} 2.0
edge_requests_total{cache_status="hit",code="304",node="shield-1"} 1.0
edge_requests_total{cache_status="hit",code="200",node="other"} 9.0
edge_requests_created{cache_status="hit",code="200",node="shield-1"} 1.7e+09
"""


def test_requests_by_status_sums_codes_of_one_node() -> None:
    assert flash_crowd.requests_by_status(METRICS, "shield-1") == Counter({"uri-miss": 3, "hit": 3})
    assert flash_crowd.counter_delta({"hit": 3, "uri-miss": 3}, {"hit": 1, "stale": 0}) == {
        "hit": 2,
        "uri-miss": 3,
    }


def test_prometheus_samples_reads_labels_and_skips_the_rest() -> None:
    samples = harness.prometheus_samples(
        METRICS + 'edge_requests_total{node="a\\"b\\\\c\\nd"} 1\nedge_requests_total garbage\n',
        "edge_requests_total",
    )
    assert len(samples) == 5
    assert samples[0] == ({"cache_status": "uri-miss", "code": "200", "node": "shield-1"}, 3.0)
    assert samples[-1] == ({"node": 'a"b\\c\nd'}, 1.0)


def fetches_through(edge: str, values: list[str]) -> list[Fetch]:
    return [Fetch(i, edge, status=200, cache_status=v) for i, v in enumerate(values)]


def test_count_edge_crowd_counts_one_shield_request_per_edge_fill() -> None:
    leader = "shield-1; fwd=uri-miss; stored; ttl=9, {edge}; fwd=uri-miss; stored; ttl=9"
    joined = "shield-1; fwd=uri-miss; stored; ttl=9, {edge}; fwd=uri-miss; collapsed; ttl=9"
    late = "shield-1; fwd=uri-miss; collapsed, {edge}; hit; ttl=9"
    fetches = [
        *fetches_through("edge-1", [leader.format(edge="edge-1")] * 1),
        *fetches_through("edge-1", [joined.format(edge="edge-1")] * 3),
        *fetches_through(
            "edge-2",
            [
                "shield-1; fwd=uri-miss; collapsed, edge-2; fwd=uri-miss; stored",
                late.format(edge="edge-2"),
            ],
        ),
        Fetch(9, "edge-2", error="ClientConnectorError: refused"),  # no answer: not counted
    ]
    before = {"shield-1": {"uri-miss": 4}, "edge-1": {}, "edge-2": {"hit": 1}}
    after = {
        "shield-1": {"uri-miss": 6},
        "edge-1": {"uri-miss": 4},
        "edge-2": {"hit": 2, "uri-miss": 1},
    }
    shield, edge, problems = flash_crowd.count_edge_crowd(
        ["shield-1"], ["edge-1", "edge-2"], fetches, before, after
    )
    assert problems == []
    assert (shield["requests"], shield["miss"], shield["collapsed"], shield["hit"]) == (2, 1, 1, 0)
    assert shield["forwarded"] == 1
    assert shield["by_node"] == {"shield-1": 2}
    assert (edge["requests"], edge["miss"], edge["collapsed"], edge["hit"]) == (6, 2, 3, 1)
    assert edge["forwarded"] == 2
    assert edge["by_node"] == {"edge-1": 4, "edge-2": 2}


def test_count_edge_crowd_says_when_metrics_and_chains_disagree() -> None:
    fetches = fetches_through("edge-1", ["shield-1; fwd=uri-miss, edge-1; fwd=uri-miss"])
    after = {"shield-1": {"uri-miss": 2}, "edge-1": {"uri-miss": 1}}
    _, _, problems = flash_crowd.count_edge_crowd(["shield-1"], ["edge-1"], fetches, {}, after)
    assert problems == [
        "shield metrics count 2 requests, the Cache-Status chains show 1 edge-to-shield requests"
    ]


def test_count_nginx_crowd_reads_each_tiers_logs() -> None:
    texts = {
        "shield-1": "flash /o 200 MISS 10\nflash /o 200 HIT 10\nflash /other 200 MISS 10\n",
        "edge-1": "flash /o 200 MISS 10\n" + "flash /o 200 HIT 10\n" * 4,
        "edge-2": "flash /o 200 MISS 10\nflash /o 200 UPDATING 10\n",
    }
    shield, edge, problems = flash_crowd.count_nginx_crowd(
        ["shield-1"], ["edge-1", "edge-2"], "/o", texts
    )
    assert problems == []
    assert (shield["requests"], shield["hit"], shield["miss"], shield["forwarded"]) == (2, 1, 1, 1)
    assert (edge["requests"], edge["hit"], edge["miss"], edge["other"]) == (7, 4, 2, 1)
    assert edge["by_node"] == {"edge-1": 5, "edge-2": 2}
    assert edge["detail"] == {"HIT": 4, "MISS": 2, "UPDATING": 1}
    texts["shield-1"] += "flash /o 200 MISS 10\n"
    _, _, problems = flash_crowd.count_nginx_crowd(["shield-1"], ["edge-1", "edge-2"], "/o", texts)
    assert problems == ["the shields logged 3 requests, the edges forwarded 2"]


def test_percentiles_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert flash_crowd.percentiles(values) == {"p50": 50.0, "p99": 99.0, "max": 100.0}
    assert flash_crowd.percentiles([0.5]) == {"p50": 0.5, "p99": 0.5, "max": 0.5}
    assert flash_crowd.percentiles([]) == {"p50": None, "p99": None, "max": None}
    assert flash_crowd.ratio(1, 150) == 0.0067
    assert flash_crowd.ratio(1, 0) is None


@pytest.mark.parametrize(("text", "size"), [("1M", 1 << 20), ("64k", 65536), ("512KiB", 1 << 19)])
def test_parse_size(text: str, size: int) -> None:
    assert flash_crowd.parse_size(text) == size
    with pytest.raises(ValueError):
        flash_crowd.parse_size("lots")


def test_nginx_tier_config(tmp_path: Path) -> None:
    on = flash_crowd.nginx_tier_config(tmp_path, 8080, [9001], lock=True, size=1 << 20, objects=5)
    assert "proxy_cache_lock on;" in on
    assert f"proxy_cache_lock_timeout {flash_crowd.NGINX_LOCK_TIMEOUT};" in on
    assert f"proxy_cache_lock_age {flash_crowd.NGINX_LOCK_TIMEOUT};" in on
    assert "hash $request_uri" not in on  # one upstream: nothing to choose
    assert "add_header X-Cache-Status $upstream_cache_status always;" in on
    assert "keepalive" in on and 'proxy_set_header Connection "";' in on
    for line in on.splitlines():
        for word in line.split():
            if word.startswith("/") and word != "/":  # `location /` is no path
                assert word.startswith(str(tmp_path)), line
    off = flash_crowd.nginx_tier_config(
        tmp_path, 8080, [9001, 9002], lock=False, size=1 << 20, objects=5
    )
    assert "proxy_cache_lock off;" in off and "proxy_cache_lock_timeout" not in off
    assert "hash $request_uri consistent;" in off
    assert "server 127.0.0.1:9001;" in off and "server 127.0.0.1:9002;" in off


def test_shield_and_shielded_edge_command_lines(tmp_path: Path) -> None:
    shield = harness.shield_argv(8001, "http://127.0.0.1:8000", tmp_path / "s", "shield-1")
    assert shield[-11:] == [
        "shield",
        "--listen",
        "127.0.0.1:8001",
        "--origin",
        "http://127.0.0.1:8000",
        "--cache-dir",
        str(tmp_path / "s"),
        "--name",
        "shield-1",
        "--trusted-proxy",  # its edges, on this machine
        "127.0.0.1",
    ]
    edge = harness.shielded_edge_argv(
        8002, ["http://127.0.0.1:8001", "http://127.0.0.1:8003"], "http://o", tmp_path, "edge-1"
    )
    assert edge[: len(shield) - 11] == shield[: len(shield) - 11]  # the same launcher
    assert edge[len(shield) - 11 :] == [
        "serve",
        "--listen",
        "127.0.0.1:8002",
        "--shield",
        "http://127.0.0.1:8001",
        "--shield",
        "http://127.0.0.1:8003",
        "--origin",
        "http://o",
        "--cache-dir",
        str(tmp_path),
        "--name",
        "edge-1",
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--edges", "0"], "--edges must be 1..16"),
        (["--clients", "501"], "--clients"),
        (["--size", "lots"], "bad size"),
        (["--size", "65M"], "--size"),
        (["--latency", "-1"], "--latency"),
        (["--latency", "nan"], "--latency"),
    ],
)
def test_bad_options_are_one_line(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert flash_crowd.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flash_crowd: ") and words in err[0], err


# --- a real run -------------------------------------------------------------------------
