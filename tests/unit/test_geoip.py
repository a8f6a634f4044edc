"""origin.geodns.geoip and the Selector's placement by it, without sockets: records read
from real .mmdb files (written by mmdb-writer, read by maxminddb), countries and
continents listed on regions, coordinates, the topology's networks winning, the ECS scope
of a database answer, and a file swapped or broken under a watched database."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import pytest

from origin.deploy.topology import TopologyError, parse_topology
from origin.geodns.geoip import GeoDatabase, GeoError, GeoRecord, GeoTable, WatchedDatabase
from origin.geodns.select import Selector, narrowed_scope
from tests.support.mmdb import city, write_mmdb

RAW = {
    "zone": {"name": "cdn.example.", "names": ["www"], "answer_count": 1},
    "regions": [
        {
            "name": "eu",
            "lat": 50.1,
            "lon": 8.7,
            "networks": ["81.2.69.128/25"],
            "countries": ["de", "FR"],
            "continents": ["EU"],
        },
        {"name": "us", "lat": 40.7, "lon": -74.0, "countries": ["US"], "default": True},
        {"name": "ap", "lat": 35.7, "lon": 139.7, "continents": ["AS", "OC"]},
    ],
    "locations": [{"network": "81.2.70.0/24", "lat": 35.7, "lon": 139.7}],
    "edges": [
        {"name": "eu-1", "region": "eu", "ipv4": "127.1.0.1"},
        {"name": "us-1", "region": "us", "ipv4": "127.2.0.1", "ipv6": "fd00::2"},
        {"name": "ap-1", "region": "ap", "ipv4": "127.3.0.1", "ipv6": "fd00::3"},
    ],
}
TOPO = parse_topology(RAW)
RECORDS = {
    "81.2.0.0/16": city("GB", "EU", 51.5, -0.1),  # London: listed by continent only
    "2.16.0.0/13": city("DE", "EU"),  # a country record (no coordinates)
    "5.5.5.0/24": city("BR", "SA", -23.5, -46.6),  # Sao Paulo: nearest is us
    "6.6.0.0/16": city("ZA", "AF"),  # no region lists it, no coordinates
    "2001:db8::/32": city("JP", "AS", 35.7, 139.7),
}
ALL = lambda e: True  # noqa: E731 - every edge healthy


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.fixture
def database(tmp_path: Path) -> GeoDatabase:
    return GeoDatabase(write_mmdb(tmp_path / "GeoLite2-City.mmdb", RECORDS))


def test_a_record_says_its_network_country_continent_and_coordinates(
    database: GeoDatabase,
) -> None:
    assert database(ip("81.2.3.4")) == GeoRecord(
        ipaddress.ip_network("81.2.0.0/16"), "GB", "EU", (51.5, -0.1)
    )
    assert database(ip("2001:db8:7::1")) == GeoRecord(
        ipaddress.ip_network("2001:db8::/32"), "JP", "AS", (35.7, 139.7)
    )
    # An IPv4-mapped IPv6 address is its IPv4 address.
    assert database(ip("::ffff:81.2.3.4")) == database(ip("81.2.3.4"))
    assert database(ip("9.9.9.9")) is None


@pytest.mark.parametrize(
    "client, region, why",
    [
        ("2.17.0.1", "eu", "country DE listed on eu"),
        ("81.2.3.4", "eu", "continent EU listed on eu"),
        ("5.5.5.9", "us", "nearest region by coordinates"),
        ("6.6.1.1", "us", "no region lists it"),
        ("2001:db8::5", "ap", "continent AS listed on ap"),
        ("81.2.69.200", "eu", "network /25"),  # the topology's network wins
        ("81.2.70.9", "ap", "location /24"),  # and so does its [[locations]]
        ("9.9.9.9", "us", "default"),  # in no record
    ],
)
def test_placement_by_the_database(
    database: GeoDatabase, client: str, region: str, why: str
) -> None:
    d = Selector(TOPO, geo=database).decide(ip(client), 4, ALL, 24)
    assert d.region == region and why in d.why


def test_the_scope_is_the_database_networks_prefix(database: GeoDatabase) -> None:
    s = Selector(TOPO, geo=database)
    assert s.decide(ip("2.20.0.0"), 4, ALL, 24).scope == 13
    assert s.decide(ip("2001:db8::"), 6, ALL, 56).scope == 32
    assert s.decide(ip("9.9.9.0"), 4, ALL, 24).scope == 24  # in no record: its own subnet


def test_a_database_answer_never_covers_a_topology_network(database: GeoDatabase) -> None:
    # 81.2.0.0/16 is GB, but 81.2.69.128/25 and 81.2.70.0/24 are the topology's: the
    # answer for 81.2.3.0 must hold for a range that reaches neither.
    scope = Selector(TOPO, geo=database).decide(ip("81.2.3.0"), 4, ALL, 24).scope
    client_net = ipaddress.ip_network(f"81.2.3.0/{scope}", strict=False)
    assert scope > 16
    for own in ("81.2.69.128/25", "81.2.70.0/24"):
        assert not client_net.overlaps(ipaddress.ip_network(own))


def test_narrowed_scope_is_one_bit_past_the_common_prefix() -> None:
    nets = (ipaddress.ip_network("10.1.2.0/24"),)
    assert narrowed_scope(ip("10.1.3.0"), 8, nets) == 24  # 10.1.2 and 10.1.3 share 23 bits
    assert narrowed_scope(ip("10.200.0.0"), 8, nets) == 9
    assert narrowed_scope(ip("11.0.0.0"), 8, nets) == 8  # not inside the /8
    assert narrowed_scope(ip("10.1.3.0"), 8, (ipaddress.ip_network("fd00::/8"),)) == 8


def test_an_in_memory_table_is_the_same_interface() -> None:
    table = GeoTable([GeoRecord(ipaddress.ip_network("5.5.0.0/16"), "FR", "EU")])
    d = Selector(TOPO, geo=table).decide(ip("5.5.9.9"), 4, ALL, 24)
    assert d.region == "eu" and d.scope == 16


def test_next_nearest_follows_the_clients_coordinates(database: GeoDatabase) -> None:
    # Sao Paulo's region is us; with us down the next is eu (9,800 km), not ap (18,500).
    d = Selector(TOPO, geo=database).decide(ip("5.5.5.9"), 4, lambda e: e.region != "us", 24)
    assert d.region == "eu"


def test_a_missing_or_corrupt_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(GeoError, match="not found") as missing:
        GeoDatabase(tmp_path / "nothing.mmdb")
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"not a database\n" * 100)
    with pytest.raises(GeoError, match="not a MaxMind DB file") as corrupt:
        GeoDatabase(garbage)
    for exc in (missing.value, corrupt.value):
        assert "\n" not in str(exc)


def test_a_watched_file_is_reloaded_and_a_broken_one_keeps_the_old_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_mmdb(tmp_path / "db.mmdb", {"5.5.0.0/16": city("FR", "EU")})
    watched = WatchedDatabase(path)
    assert not watched.check()
    write_mmdb(path, {"5.5.0.0/16": city("US", "NA")})
    os.utime(path, ns=(1, 1))  # a new stamp even within one clock tick
    assert watched.check() and watched.version == 1
    assert (r := watched(ip("5.5.1.1"))) is not None and r.country == "US"
    path.write_bytes(b"\x00garbage" * 64)
    with caplog.at_level(logging.WARNING, logger="origin.geodns"):
        assert not watched.check()
    assert "keeping the data loaded" in caplog.text and watched.version == 1
    assert (r := watched(ip("5.5.1.1"))) is not None and r.country == "US"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"countries": ["Germany"]}, "'GERMANY' is not a code"),
        ({"continents": ["XX"]}, "'XX' is not a code"),
        ({"countries": "DE"}, "must be a list of codes"),
    ],
)
def test_bad_codes_are_one_line_errors(change: dict[str, object], message: str) -> None:
    raw = {**RAW, "regions": [{**RAW["regions"][0], **change}, *RAW["regions"][1:]]}  # type: ignore[list-item, dict-item]
    with pytest.raises(TopologyError, match=message):
        parse_topology(raw)


def test_a_country_on_two_regions_is_an_error() -> None:
    regions = [dict(r) for r in RAW["regions"]]  # type: ignore[union-attr, arg-type]
    regions[2]["countries"] = ["DE"]
    with pytest.raises(TopologyError, match="DE is in the countries of eu and ap"):
        parse_topology({**RAW, "regions": regions})


def test_a_relative_database_is_found_beside_the_topology_even_under_tls(tmp_path: Path) -> None:
    from cli.up import _tls_topology
    from origin.deploy.topology import load_topology, to_toml

    (tmp_path / "work").mkdir()
    path = tmp_path / "cdn.toml"
    path.write_text(to_toml({**RAW, "geoip": {"database": "geo/GeoLite2-City.mmdb"}}))
    want = str(tmp_path.resolve() / "geo" / "GeoLite2-City.mmdb")
    assert load_topology(path).geoip.database == want
    derived = _tls_topology(path, tmp_path / "work", ca_file="")
    assert load_topology(derived).geoip.database == want


@pytest.mark.parametrize(
    "geoip, message",
    [
        ({"database": 5}, r"\[geoip\] database must be the path of a .mmdb file"),
        ({"database": "x.mmdb", "reload": 0}, r"\[geoip\] reload must be a number"),
        ({"file": "x.mmdb"}, r"unknown setting in \[geoip\]: file"),
    ],
)
def test_geoip_mistakes_are_one_line_errors(geoip: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_topology({**RAW, "geoip": geoip})
