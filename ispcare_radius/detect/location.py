"""Where a login comes from: the client's public IP through GeoIP, else the NAS's place.

Owns the ``Location`` value, the per-NAS access type, the choice of the login
IP and the addresses that are never geolocated. Pure: the GeoIP database is
reached through the ``GeoLookup`` port (store/geoip.py reads the file), and
the NAS through the ``NasSite`` protocol that ``aaa.model.Nas`` satisfies.
Imports only the standard library.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Location:
    """A coarse place: a category for analytics, coordinates for the detection rules."""

    country: str | None  # ISO 3166-1 alpha-2
    city: str | None
    latitude: float | None
    longitude: float | None
    accuracy_km: float | None  # GeoIP accuracy radius; None for NAS locations
    source: str  # "geoip" | "nas"


class NasType(StrEnum):
    """How subscribers reach a NAS, which decides whose IP the login comes from.

    A fixed line (PPPoE, IPoE) ends at the ISP's own NAS: the only IPs in the
    request are the ISP's, so the NAS location is the subscriber's. A hotspot
    or VPN concentrator may see the client's own public address.
    """

    PPPOE = "pppoe"
    HOTSPOT = "hotspot"
    VPN = "vpn"


class NasSite(Protocol):
    """What the locator reads of a NAS (``aaa.model.Nas`` has these fields)."""

    @property
    def address(self) -> IPNetwork: ...
    @property
    def latitude(self) -> float | None: ...
    @property
    def longitude(self) -> float | None: ...
    @property
    def country(self) -> str | None: ...
    @property
    def city(self) -> str | None: ...
    @property
    def nas_type(self) -> NasType: ...
    @property
    def pools(self) -> tuple[IPNetwork, ...]: ...


class GeoLookup(Protocol):
    """A GeoIP database: the place of a public address, or None when it has none."""

    def lookup(self, ip: IPAddress) -> Location | None: ...


# RFC 6598: shared address space for carrier-grade NAT. Named explicitly:
# ``ipaddress`` counts it neither private nor global.
CGNAT: Final = ipaddress.IPv4Network("100.64.0.0/10")
# Documentation prefixes (RFC 5737, RFC 3849, RFC 9637): never a real client.
_DOCUMENTATION: Final[tuple[IPNetwork, ...]] = (
    ipaddress.IPv4Network("192.0.2.0/24"),
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
    ipaddress.IPv6Network("2001:db8::/32"),
    ipaddress.IPv6Network("3fff::/20"),
)


def is_geolocatable(ip: IPAddress, own: Sequence[IPNetwork] = ()) -> bool:
    """Whether ``ip`` may be looked up in GeoIP: a global unicast address not in ``own``.

    Private (RFC 1918), CGNAT (RFC 6598), loopback, link-local, unique local
    (RFC 4193), multicast, reserved and documentation addresses name no
    place; the NAS's own address and pools place the ISP, not the subscriber.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.IPv6Network("fc00::/7"):
        return False
    return not any(ip.version == net.version and ip in net for net in (*_DOCUMENTATION, *own))


# MACs as NAS write them in Calling-Station-Id (colon, dash, dotted, bare);
# none of these spellings is a valid IPv4 or IPv6 address.
_MAC_FORM: Final = re.compile(
    r"[0-9A-Fa-f]{2}([-:])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
    r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}|[0-9A-Fa-f]{12}"
)


def parse_ip_text(text: str | None) -> IPAddress | None:
    """An IP address in the forms NAS put in Calling-Station-Id; None for anything else.

    Accepts ``192.0.2.1``, ``192.0.2.1:4500``, ``192.0.2.1[4500]`` (strongSwan),
    ``2001:db8::1``, ``[2001:db8::1]:4500`` and ``2001:db8::1[4500]``. A MAC
    address or a telephone number is not an IP and gives None.
    """
    if not text:
        return None
    value = text.strip()
    if _MAC_FORM.fullmatch(value):
        # The common case on PPPoE and hotspots, and no IP: skip the costly
        # failed parses (ipaddress tries IPv4, then IPv6, by exception).
        return None
    if value.endswith("]") and "[" in value and not value.startswith("["):
        value = value[: value.index("[")]  # "address[port]"
    elif value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1 and "." in value:
        value = value.partition(":")[0]  # "IPv4:port"
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def login_source(
    nas: NasSite,
    *,
    calling_station_id: str | None,
    tunnel_client_endpoint: str | None = None,
) -> str | None:
    """The source a password spray is counted against, and held by: one client, never a NAS.

    The Calling-Station-Id as the NAS wrote it (a MAC, a circuit or line
    id), or the client IP it holds, without its port (a new port per
    attempt is the same client). None, so no spray is counted, when that
    IP may stand for many subscribers: the Tunnel-Client-Endpoint (RFC 2868
    section 3.3, the tunnel's initiator: on an L2TP LNS, the LAC carrying
    thousands of sessions), the NAS's own address, or one of its pools.
    Tunnel-Client-Endpoint itself is never a source, for the same reason;
    DESIGN.md: a NAS is never throttled.
    """
    if calling_station_id is None or not calling_station_id.strip():
        return None
    ip = parse_ip_text(calling_station_id)
    if ip is None:
        return calling_station_id
    ip = _unmapped(ip)
    tunnel = parse_ip_text(tunnel_client_endpoint)
    if tunnel is not None and _unmapped(tunnel) == ip:
        return None
    if any(ip.version == net.version and ip in net for net in (nas.address, *nas.pools)):
        return None
    return str(ip)


def strip_tag(value: bytes) -> bytes:
    """A tagged string attribute's text without its tag octet.

    RFC 2868 section 3.3 (Tunnel-Client-Endpoint): "If the value of the Tag
    field is greater than 0x00 and less than or equal to 0x1F, it SHOULD be
    interpreted as indicating which tunnel ... this attribute pertains";
    otherwise the first octet is the string's own. A 0x00 first octet is a
    tag too (no tunnel named), as no text address starts with it.
    """
    if value and value[0] <= 0x1F:
        return value[1:]
    return value


def login_ip(
    nas_type: NasType,
    *,
    calling_station_id: str | None,
    tunnel_client_endpoint: str | None = None,
) -> str | None:
    """The client IP a login comes from, as text, when the NAS type can see one.

    Fixed lines (PPPoE) carry only the ISP's own addresses: None, so the NAS
    location is used. For VPN and hotspot NAS: Tunnel-Client-Endpoint (RFC
    2868 section 3.3, "the address of the initiator end of the tunnel", as
    Cisco ASA and L2TP concentrators send it), else Calling-Station-Id when it
    holds an IP (accel-ppp, MikroTik PPTP/L2TP/SSTP, strongSwan, OpenVPN,
    FortiGate). A hotspot's Calling-Station-Id is usually the client's MAC:
    no IP, and the hotspot's own location applies.
    """
    if nas_type is NasType.PPPOE:
        return None
    for candidate in (tunnel_client_endpoint, calling_station_id):
        ip = parse_ip_text(candidate)
        if ip is not None:
            return str(ip)
    return None


def country_code(text: str | None) -> str | None:
    """``text`` as an upper-case ISO 3166-1 alpha-2 code; None when it is not one."""
    if text is None:
        return None
    code = text.strip().upper()
    return code if len(code) == 2 and code.isascii() and code.isalpha() else None


def nas_location(nas: NasSite) -> Location | None:
    """The NAS's configured place; None when none of it is configured."""
    country = country_code(nas.country)
    lat, lon = nas.latitude, nas.longitude
    if lat is None or lon is None:
        lat = lon = None  # half a coordinate is no position
    if country is None and nas.city is None and lat is None:
        return None
    return Location(country, nas.city, lat, lon, None, "nas")


_NAS_PLACES: Final = 4096
NasPlace = tuple[str | None, str | None, float | None, float | None]
"""What ``nas_location`` reads of a NAS: country, city, latitude, longitude."""


class Locator:
    """Places a login: GeoIP for a public client IP, the NAS location otherwise.

    Without a GeoIP database every login gets its NAS location. With one, a
    public client IP that the database does not know gives None rather than
    the NAS location: a VPN concentrator's place is not its clients', and
    mixing the two would make distant logins out of one client.
    """

    def __init__(self, geoip: GeoLookup | None = None) -> None:
        self._geoip = geoip
        # The location of each NAS place asked for, by its configured values:
        # logins through one NAS share one place object, which the detector
        # knows again by identity. Holds no NAS (nor its secret); emptied if it
        # ever outgrows any NAS table.
        self._nas_places: dict[NasPlace, Location | None] = {}

    @property
    def has_geoip(self) -> bool:
        return self._geoip is not None

    def locate(self, login_ip: str | None, nas: NasSite) -> Location | None:
        """The place of a login from ``login_ip`` (see ``login_ip()``) through ``nas``."""
        ip = parse_ip_text(login_ip)
        if self._geoip is not None and ip is not None:
            own: tuple[IPNetwork, ...] = (nas.address, *nas.pools)
            if is_geolocatable(ip, own):
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                return self._geoip.lookup(ip)
        asked = (nas.country, nas.city, nas.latitude, nas.longitude)
        try:
            return self._nas_places[asked]
        except KeyError:
            pass
        if len(self._nas_places) >= _NAS_PLACES:
            self._nas_places.clear()
        place = self._nas_places[asked] = nas_location(nas)
        return place
