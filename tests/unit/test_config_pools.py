"""Pools, routes and tiers in the node's configuration: the forms that work and a
one-line error (exit 2) for each mistake, from `edge serve`/`edge shield` and TOML.

Here the parts that open no socket and start no process;
tests/integration/test_config_pools.py has the ones with real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config


def cfg(tmp_path: Path, text: str, **overrides: object):  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_config(path, overrides)


def test_simple_edge_form_makes_shields_with_the_origin_as_fallback(tmp_path: Path) -> None:
    c = load_config(None, {"shields": ("http://s1:80", "http://s2:80"), "origins": ("http://o",)})
    assert set(c.pool_configs) == {"shields", "origin"}
    shields = c.pool_configs["shields"]
    assert shields.strategy == "consistent-hash" and shields.health_path == "/_edge/health"
    (route,) = c.route_configs
    assert (route.host, route.pool, route.fallback) == ("*", "shields", "origin")
    assert c.loop_allowance == 0


def test_no_origin_direct_leaves_the_shields_alone(tmp_path: Path) -> None:
    c = load_config(
        None, {"shields": ("http://s1",), "origins": ("http://o",), "origin_direct": False}
    )
    assert c.route_configs[0].fallback == ""


def test_shield_role_allows_one_earlier_hop(tmp_path: Path) -> None:
    c = load_config(None, {"origins": ("http://o",), "role": "shield"})
    assert c.loop_allowance == 1
    assert c.route_configs[0].pool == "origin"


def test_full_form_pools_weights_and_routes(tmp_path: Path) -> None:
    c = cfg(
        tmp_path,
        """
[pools.files]
members = ["http://a:8080", {url = "http://b:8080", weight = 3}]
strategy = "weighted-round-robin"
health_path = "/healthz"
retry_statuses = [502, 503]
read_timeout = 5
[pools.docs]
members = ["http://c"]
[routes]
"Files.Example" = "files"
"*" = {pool = "docs", fallback = "files"}
""",
    )
    files = c.pool_configs["files"]
    assert [(m.url, m.weight) for m in files.members] == [
        ("http://a:8080", 1),
        ("http://b:8080", 3),
    ]
    assert files.retry_statuses == (502, 503) and files.read_timeout == 5
    assert [(r.host, r.pool, r.fallback) for r in c.route_configs] == [
        ("files.example", "files", ""),
        ("*", "docs", "files"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[pools.a]\nmembers = ["http://a"]\nstrategy = "random"\n', "unknown strategy 'random'"),
        ("[pools.a]\nmembers = []\n", "pool a needs members"),
        ('[pools.a]\nmembers = ["ftp://a"]\n', "upstream must be an http(s) URL"),
        ('[pools.a]\nmembers = [{url = "http://a", weight = 0}]\n', "weight of http://a"),
        ('[pools.a]\nmembers = ["http://a", "http://a"]\n', "names a member twice"),
        ('[pools.a]\nmembers = ["http://a"]\nrise = -1\n', "rise must be"),
        ('[pools.a]\nmembers = ["http://a"]\nhealth_path = "x"\n', "must start with '/'"),
        ('[pools.a]\nmembers = ["http://a"]\nbogus = 1\n', "unknown setting in pool a: bogus"),
        ('[pools.a]\nmembers = ["http://a"]\n[pools.b]\nmembers = ["http://b"]\n', "need [routes]"),
        ('[pools.a]\nmembers = ["http://a"]\n[routes]\n"x" = "b"\n', "unknown pool 'b'"),
        ('[pools.a]\nmembers = ["http://a"]\n[routes]\n"x" = 3\n', 'must be "POOL"'),
        ('upstream = "http://o"\n[routes]\n"x" = "a"\n', "[routes] need [pools]"),
        ('upstream = "http://o"\n[pools.a]\nmembers = ["http://a"]\n', "not both"),
        ('trusted_proxies = ["10.0.0.0/33"]\nupstream = "http://o"\n', "trusted_proxies"),
        ('cdn_name = "my cdn"\nupstream = "http://o"\n', "cdn_name must be a token"),
        ("", "no upstream"),
    ],
)
def test_config_mistakes_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(tmp_path, text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
