"""Small MaxMind DB files for tests, written by mmdb-writer (the `test` extra) in the
GeoIP2/GeoLite2 City layout, for the real reader (`maxminddb`) to read."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet


def city(
    country: str, continent: str, lat: float | None = None, lon: float | None = None
) -> dict[str, object]:
    """A GeoLite2-City record; without coordinates, a GeoLite2-Country one."""
    record: dict[str, object] = {
        "country": {"iso_code": country},
        "continent": {"code": continent},
    }
    if lat is not None and lon is not None:
        record["location"] = {"latitude": MmdbF64(lat), "longitude": MmdbF64(lon)}
    return record


def write_mmdb(path: Path, records: dict[str, dict[str, object]]) -> Path:
    """A database of `records` by network (IPv4 and IPv6 in one tree), written to a
    temporary name and renamed over `path`, as a database update should be."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    partial = path.with_name(path.name + ".partial")
    writer.to_db_file(str(partial))
    partial.replace(path)
    return path
