"""A logged purge this node's validation refuses is applied wider, never skipped
(edge.purge.model.widen): the hosts it names when every selector names one, else all."""

from __future__ import annotations

from typing import Any

import pytest

from edge.purge.model import Purge, PurgeError, parse_purge, widen


@pytest.mark.parametrize(
    ("body", "wider"),
    [
        # A newer coordinator's selector: it may select anything.
        ({"urls": ["http://A.example/x"], "regex": ["x"]}, Purge(all=True)),
        # A URL today's rules refuse (a control character) still names its host.
        ({"urls": ["http://a.example/\x01"]}, Purge(hosts=("a.example",))),
        (
            {"prefixes": ["http://a.example/p/\x7f"], "hosts": ["C.example:8080"]},
            Purge(hosts=("a.example", "c.example")),
        ),
        ({"urls": ["http://a.example/\x01"], "soft": True}, Purge(hosts=("a.example",), soft=True)),
        # Tags name no host, nor does something that is not a URL: everything.
        ({"tags": ["two words"]}, Purge(all=True)),
        ({"urls": ["not a url"]}, Purge(all=True)),
        ({"urls": "http://a.example/"}, Purge(all=True)),
        ({"urls": [7]}, Purge(all=True)),
        ({"all": "yes"}, Purge(all=True)),
        ([], Purge(all=True)),
        ({}, Purge(all=True)),
    ],
)
def test_a_refused_purge_is_applied_wider(body: Any, wider: Purge) -> None:
    with pytest.raises(PurgeError):
        parse_purge(body)
    assert widen(body) == wider


def test_hosts_are_kept_when_only_a_value_is_refused() -> None:
    body = {"urls": ["http://a.example/\x01", "http://B.example:80/ok"], "hosts": ["c.example"]}
    with pytest.raises(PurgeError):
        parse_purge(body)
    # Without ports: a host ban matches the host on every port.
    assert widen(body) == Purge(hosts=("a.example", "b.example", "c.example"))


def test_a_wider_purge_always_selects_something() -> None:
    for body in ({}, {"urls": []}, {"soft": True}):
        got = widen(body)
        assert got.all or got.hosts
