"""Files the detection layer reads: a GeoIP database (MaxMind or DB-IP) and the IEEE MAC registry.

The I/O half of detect/location.py and detect/device.py: opens the files at
start, turns a bad one into a one-line ``GeoDataError``, and answers lookups
from the memory-mapped database. Imports detect; never server or cli.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

import geoip2.database
import geoip2.errors
import geoip2.models
import maxminddb

from ispcare_radius.detect.device import OuiTable
from ispcare_radius.detect.location import Location

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Where Debian's ieee-data package puts the IEEE registries.
DEBIAN_OUI_FILES = (
    Path("/usr/share/ieee-data/oui.csv"),
    Path("/usr/share/ieee-data/mam.csv"),
    Path("/usr/share/ieee-data/oui36.csv"),
)


class GeoDataError(Exception):
    """A configured data file is missing, unreadable or of the wrong kind; one line."""


class GeoKind(StrEnum):
    """Which record layout a database holds, read from its metadata."""

    ENTERPRISE = "enterprise"
    CITY = "city"
    COUNTRY = "country"


def kind_of(database_type: str) -> GeoKind | None:
    """The layout named by a database's ``database_type`` metadata, None if not a location one.

    MaxMind names them ``GeoIP2-City``, ``GeoLite2-Country``,
    ``GeoIP2-Enterprise``...; DB-IP ``DBIP-City-Lite``, ``DBIP-Country-Lite``,
    ``DBIP-Location (compat=City)``, ``DBIP-Location-ISP (compat=Enterprise)``.
    Enterprise and City records carry city and coordinates; Country ones only
    the country. Checked in that order, as geoip2's own readers match them.
    """
    for kind, marker in (
        (GeoKind.ENTERPRISE, "Enterprise"),
        (GeoKind.CITY, "City"),
        (GeoKind.COUNTRY, "Country"),
    ):
        if marker in database_type:
            return kind
    return None


class GeoIpReader:
    """A GeoIP2/GeoLite2 or DB-IP City/Country database (``detect.location.GeoLookup``)."""

    def __init__(self, reader: geoip2.database.Reader, kind: GeoKind, database_type: str) -> None:
        self._reader = reader
        self.kind = kind
        self.database_type = database_type

    @classmethod
    def open(cls, path: Path) -> GeoIpReader:
        """Open ``path``; ``GeoDataError`` for a missing, corrupt or non-location file."""
        try:
            reader = geoip2.database.Reader(str(path))
        except FileNotFoundError:
            raise GeoDataError(f"GeoIP database not found: {path}") from None
        except PermissionError:
            raise GeoDataError(f"GeoIP database not readable: {path}") from None
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
            raise GeoDataError(f"not a MaxMind DB file: {path} ({exc})") from None
        database_type = reader.metadata().database_type
        kind = kind_of(database_type)
        if kind is None:
            reader.close()
            raise GeoDataError(
                f"GeoIP database {path} is a {database_type!r} database;"
                " a City or Country one (MaxMind or DB-IP) is needed"
            )
        return cls(reader, kind, database_type)

    def lookup(self, ip: IPAddress) -> Location | None:
        """The place the database gives ``ip``; None when it has none."""
        try:
            if self.kind is GeoKind.COUNTRY:
                return _country_location(self._reader.country(ip))
            if self.kind is GeoKind.CITY:
                return _city_location(self._reader.city(ip))
            return _city_location(self._reader.enterprise(ip))
        except geoip2.errors.AddressNotFoundError:
            return None
        except ValueError:
            # An IPv6 address asked of an IPv4-only database.
            return None

    def close(self) -> None:
        self._reader.close()


def _country_location(record: geoip2.models.Country) -> Location | None:
    country = record.country.iso_code
    if country is None:
        return None
    return Location(country, None, None, None, None, "geoip")


def _city_location(record: geoip2.models.City) -> Location | None:
    country = record.country.iso_code
    city = record.city.name
    lat, lon = record.location.latitude, record.location.longitude
    if lat is None or lon is None:
        lat = lon = None
    if country is None and city is None and lat is None:
        return None
    radius = record.location.accuracy_radius
    accuracy = float(radius) if radius is not None and lat is not None else None
    return Location(country, city, lat, lon, accuracy, "geoip")


def load_oui(paths: Iterable[Path]) -> OuiTable:
    """The IEEE MAC registry from ``paths`` (oui.csv, mam.csv, oui36.csv).

    ``GeoDataError`` when a file cannot be read or holds no entries.
    """
    lines: list[str] = []
    for path in paths:
        try:
            lines.extend(path.read_text("utf-8", errors="replace").splitlines())
        except OSError as exc:
            raise GeoDataError(f"MAC vendor registry {path}: {exc.strerror or exc}") from None
    table = OuiTable.parse(lines)
    if not len(table):
        raise GeoDataError(
            "MAC vendor registry has no entries (expected the IEEE CSV format"
            " Registry,Assignment,Organization Name,...)"
        )
    return table


def default_oui_paths() -> tuple[Path, ...]:
    """Debian's ieee-data registries that exist on this host (none when not installed)."""
    return tuple(p for p in DEBIAN_OUI_FILES if p.is_file())
