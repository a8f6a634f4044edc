"""Where an address is by a geolocation database: the MaxMind DB format (GeoLite2 and
GeoIP2 City or Country, DB-IP lite) behind one small interface, and the file watch that
reloads it.

Owns: the `GeoRecord` the Selector reads (the database network that holds the address,
its country, continent and coordinates), `Lookup` (any function address -> record or
None: `GeoTable` in memory, `GeoDatabase` for a .mmdb file read by `maxminddb`), and
`WatchedDatabase` (the file's stamp, a reload when it changes, the old data kept when the
new file does not open). Placing a client in a region is the Selector's, not this
module's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger("origin.geodns")


@dataclass(frozen=True)
class GeoRecord:
    """What a database says of the network holding an address."""

    network: Network  # the database network: every address in it gets this record
    country: str | None = None  # ISO 3166-1 alpha-2, upper case
    continent: str | None = None  # AF AN AS EU NA OC SA
    location: tuple[float, float] | None = None  # latitude, longitude

    def describe(self) -> str:
        parts = [f"country {self.country or '-'}", f"continent {self.continent or '-'}"]
        if self.location is not None:
            parts.append(f"at {self.location[0]:g},{self.location[1]:g}")
        return f"database {self.network} ({', '.join(parts)})"


#: An address -> the record of the database network holding it, or None (no record).
Lookup = Callable[[Address], GeoRecord | None]


#: Records kept per database object (past it the table starts over).
RECORDS_KEPT = 100_000
_UNSEEN = object()


class GeoError(ValueError):
    """A database file that cannot be used; the message is one line."""


def unmapped(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 2.5.5.2) is its IPv4
    address: databases file IPv4 networks under their IPv4 tree."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def record_of(data: Any, network: Network) -> GeoRecord | None:
    """A GeoRecord from a MaxMind-format record (GeoIP2/GeoLite2 City or Country, DB-IP
    lite: `country.iso_code`, else `registered_country.iso_code`; `continent.code`;
    `location.latitude` / `longitude`); None when it says none of these."""
    if not isinstance(data, dict):
        return None

    def field(table: str, key: str) -> Any:
        value = data.get(table)
        return value.get(key) if isinstance(value, dict) else None

    country = field("country", "iso_code") or field("registered_country", "iso_code")
    continent = field("continent", "code")
    lat, lon = field("location", "latitude"), field("location", "longitude")
    location = None
    numbers = isinstance(lat, int | float) and isinstance(lon, int | float)
    if numbers and -90 <= lat <= 90 and -180 <= lon <= 180:
        location = (float(lat), float(lon))
    if not country and not continent and location is None:
        return None
    return GeoRecord(
        network,
        str(country).upper() if country else None,
        str(continent).upper() if continent else None,
        location,
    )


class GeoTable:
    """An in-memory database: records by network, the longest match wins (for unit
    tests, and for anyone who has a handful of networks)."""

    def __init__(self, records: Iterable[GeoRecord]) -> None:
        self.records = sorted(records, key=lambda r: r.network.prefixlen, reverse=True)

    def __call__(self, address: Address) -> GeoRecord | None:
        address = unmapped(address)
        for record in self.records:
            if record.network.version == address.version and address in record.network:
                return record
        return None


class GeoDatabase:
    """One MaxMind DB file, read by `maxminddb` (its C extension when installed).

    The file is copied first and the copy opened: the reader maps its file into memory,
    and a database rewritten in place under a mapping would change (or vanish) under
    the lookups still using it. The copy is unlinked at once; the mapping keeps it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise GeoError(f"geoip database not found: {path}") from exc
        except OSError as exc:
            raise GeoError(f"cannot read geoip database {path}: {exc.strerror or exc}") from exc
        fd, copy = tempfile.mkstemp(prefix="edge-geoip-", suffix=".mmdb")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self.reader = maxminddb.open_database(copy)
            meta = self.reader.metadata()
            # A file whose metadata reads but whose tree does not fails here, not later.
            self.reader.get_with_prefix_len("1.1.1.1" if meta.ip_version == 4 else "::1")
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
            raise GeoError(f"geoip database {path} is not a MaxMind DB file: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(copy)
        self.ip_version = meta.ip_version
        self.kind = str(meta.database_type)
        self.built = int(meta.build_epoch)
        # Records by database network: every address of a network has the same one, and
        # making the network and record objects costs three times the tree walk.
        self.records: dict[tuple[int, int, int], GeoRecord | None] = {}

    def __call__(self, address: Address) -> GeoRecord | None:
        address = unmapped(address)
        if address.version == 6 and self.ip_version == 4:
            return None  # an IPv4-only database knows nothing of IPv6 clients
        try:
            data, prefix = self.reader.get_with_prefix_len(address)
        except (maxminddb.InvalidDatabaseError, ValueError) as exc:
            log.warning("geoip database %s: lookup of %s failed: %s", self.path, address, exc)
            return None
        if data is None:
            return None
        bits = address.max_prefixlen
        key = (address.version, int(address) >> (bits - prefix), prefix)
        record = self.records.get(key, _UNSEEN)
        if record is _UNSEEN:
            if len(self.records) >= RECORDS_KEPT:
                self.records = {}
            network = ipaddress.ip_network((address, prefix), strict=False)
            record = self.records[key] = record_of(data, network)
        return record  # type: ignore[return-value]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class WatchedDatabase:
    """A GeoDatabase that follows its file: `check()` (called on an interval) reloads it
    when the file's modification time or size changed. A file that does not open is
    logged once and the data already loaded kept. `version` counts the loads, so that
    whoever keeps placements made from the old data knows to forget them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.stamp = _stamp(self.path)
        self.current = GeoDatabase(self.path)  # GeoError at start: the caller's one line
        self.version = 0

    def __call__(self, address: Address) -> GeoRecord | None:
        return self.current(address)

    def check(self) -> bool:
        """Reload when the file changed; whether new data is in use."""
        stamp = _stamp(self.path)
        if stamp == self.stamp:
            return False
        self.stamp = stamp  # a bad file is reported once, not on every check
        if stamp is None:
            log.warning("geoip database %s is gone: keeping the data loaded", self.path)
            return False
        try:
            fresh = GeoDatabase(self.path)
        except GeoError as exc:
            log.warning("%s: keeping the data loaded", exc)
            return False
        self.current = fresh
        self.version += 1
        log.info("geoip database %s reloaded (%s)", self.path, fresh.kind)
        return True
