"""edge.rfc.forwarding: X-Forwarded-*, Forwarded (RFC 7239) with trusted proxies, and
CDN-Loop (RFC 8586) loop detection."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.rfc.forwarding import (
    DEFAULT_TRUSTED,
    cdn_loop_entry,
    client_address,
    forwarding_fields,
    is_loop,
    is_trusted,
    parse_networks,
)

TRUSTED = parse_networks(["10.0.0.0/8", "::1/128"])


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def fields(headers: CIMultiDict[str], **kw: object) -> dict[str, str]:
    args: dict[str, object] = {"peer": "192.0.2.7", "scheme": "http", "host": "files.example"}
    args.update(kw)
    args.setdefault("trusted", is_trusted(str(args["peer"]), TRUSTED))
    return dict(forwarding_fields(headers, **args))  # type: ignore[arg-type]


def test_untrusted_client_cannot_forge_x_forwarded_for() -> None:
    out = fields(h(("X-Forwarded-For", "1.2.3.4")))
    assert out["X-Forwarded-For"] == "192.0.2.7"


def test_trusted_proxy_list_is_kept_and_the_peer_appended() -> None:
    out = fields(h(("X-Forwarded-For", "198.51.100.1, 203.0.113.9")), peer="10.1.2.3")
    assert out["X-Forwarded-For"] == "198.51.100.1, 203.0.113.9, 10.1.2.3"


def test_several_x_forwarded_for_lines_are_joined() -> None:
    out = fields(
        h(("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.9")),
        peer="10.0.0.1",
    )
    assert out["X-Forwarded-For"] == "198.51.100.1, 203.0.113.9, 10.0.0.1"


def test_proto_comes_from_this_hop_unless_a_trusted_proxy_set_it() -> None:
    forged = h(("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"))
    out = fields(forged)
    assert out["X-Forwarded-Proto"] == "http"
    out = fields(forged, peer="10.0.0.5")
    assert out["X-Forwarded-Proto"] == "https"


def test_x_forwarded_host_is_the_keyed_host_whoever_sent_another() -> None:
    # The key names the Host; an origin reflecting X-Forwarded-Host must see the same.
    forged = h(("X-Forwarded-Host", "evil.example"))
    assert fields(forged)["X-Forwarded-Host"] == "files.example"
    assert fields(forged, peer="10.0.0.5")["X-Forwarded-Host"] == "files.example"


def test_forwarded_element_rfc7239() -> None:
    out = fields(h())
    assert out["Forwarded"] == "for=192.0.2.7;host=files.example;proto=http"


def test_forwarded_quotes_ipv6_and_odd_hosts() -> None:
    out = fields(h(), peer="2001:db8::7", host="files.example:8080")
    assert out["Forwarded"] == 'for="[2001:db8::7]";host="files.example:8080";proto=http'


def test_forwarded_from_a_trusted_proxy_is_extended_else_replaced() -> None:
    prior = h(("Forwarded", "for=198.51.100.1;proto=https"))
    assert fields(prior)["Forwarded"] == "for=192.0.2.7;host=files.example;proto=http"
    out = fields(prior, peer="::1")
    assert out["Forwarded"] == (
        'for=198.51.100.1;proto=https, for="[::1]";host=files.example;proto=http'
    )


def test_unknown_peer_is_written_as_unknown() -> None:
    assert fields(h(), peer="")["Forwarded"].startswith("for=unknown;")


def test_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    assert is_trusted("::ffff:10.2.3.4", TRUSTED)
    assert not is_trusted("::ffff:192.0.2.1", TRUSTED)


@pytest.mark.parametrize("peer", ["", "not-an-ip", "unix:/tmp/sock"])
def test_odd_peers_are_not_trusted(peer: str) -> None:
    assert not is_trusted(peer, TRUSTED)


def test_nobody_is_trusted_by_default() -> None:
    nets = parse_networks(DEFAULT_TRUSTED)
    assert not any(is_trusted(peer, nets) for peer in ("127.0.0.1", "::1", "192.168.1.1"))


def test_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        parse_networks(["10.0.0.0/33"])


def test_client_address_of_an_untrusted_peer_is_the_peer() -> None:
    assert client_address("192.0.2.7", h(("X-Forwarded-For", "1.1.1.1")), TRUSTED) == "192.0.2.7"


def test_client_address_behind_trusted_proxies_is_the_last_untrusted_hop() -> None:
    headers = h(("X-Forwarded-For", "6.6.6.6, 198.51.100.1, 10.0.0.9"))
    # 6.6.6.6 may be forged by 198.51.100.1; the first untrusted from the right counts.
    assert client_address("10.0.0.1", headers, TRUSTED) == "198.51.100.1"


def test_client_address_with_only_trusted_hops_is_the_first() -> None:
    assert client_address("10.0.0.1", h(("X-Forwarded-For", "10.0.0.2")), TRUSTED) == "10.0.0.2"
    assert client_address("10.0.0.1", h(), TRUSTED) == "10.0.0.1"


# -- CDN-Loop --------------------------------------------------------------------------


def test_cdn_loop_entry_names_the_cdn_and_the_node() -> None:
    assert cdn_loop_entry("edge", "edge-eu-1") == "edge; node=edge-eu-1"


def loop(value: str, *, node: str = "edge-eu-1", allowance: int = 0) -> bool:
    return is_loop(h(("CDN-Loop", value)), cdn_name="edge", node=node, allowance=allowance)


def test_a_client_facing_edge_refuses_any_request_that_passed_through_this_cdn() -> None:
    assert loop("edge; node=edge-us-1")
    assert loop("EDGE")


def test_a_shield_accepts_one_edge_hop_but_not_two() -> None:
    assert not loop("edge; node=edge-eu-1", node="shield-1", allowance=1)
    assert loop("edge; node=edge-eu-1, edge; node=shield-2", node="shield-1", allowance=1)


def test_this_node_seen_before_is_a_loop_whatever_the_allowance() -> None:
    assert loop("edge; node=shield-1", node="shield-1", allowance=5)
    assert loop('edge; node="shield-1"', node="shield-1", allowance=5)
    assert loop("shield-1", node="shield-1", allowance=5)  # a bare node name, too


def test_other_cdns_do_not_count() -> None:
    assert not loop("cloudflare; loops=1, fastly, akamai;v=1.0;c=3")
    assert not is_loop(h(), cdn_name="edge", node="edge-1", allowance=0)


def test_entries_across_field_lines_are_counted() -> None:
    headers = h(("CDN-Loop", "other"), ("CDN-Loop", "edge; node=a"), ("CDN-Loop", "edge; node=b"))
    assert is_loop(headers, cdn_name="edge", node="s", allowance=1)
