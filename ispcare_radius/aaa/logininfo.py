"""What an Access-Request tells about where a login comes from and what device makes it.

Reads the attributes (Calling-Station-Id, Tunnel-Client-Endpoint,
NAS-Port-Type, Aruba-Device-Type, Cisco-AVPair) and hands their values to the
pure detect/ functions. The result carries analytics categories for the auth
event and the location the detection rules use. Imports protocol and detect;
never store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from ispcare_radius.aaa.methods.mac import mac_of
from ispcare_radius.aaa.model import Nas
from ispcare_radius.detect.device import UNKNOWN, DeviceInfo, OuiTable, classify
from ispcare_radius.detect.location import Location, Locator, login_ip, login_source, strip_tag
from ispcare_radius.protocol.packet import VENDOR_SPECIFIC, Packet

CALLING_STATION_ID: Final = 31
NAS_PORT_TYPE: Final = 61
TUNNEL_CLIENT_ENDPOINT: Final = 66  # RFC 2868 section 3.3
ARUBA: Final = 14823
ARUBA_DEVICE_TYPE: Final = 12
CISCO: Final = 9
CISCO_AVPAIR: Final = 1
# DHCP option 60, Vendor Class Identifier (RFC 2132 section 9.13).
DHCP_CLASS_ID_OPTION: Final = 60


@dataclass(frozen=True, slots=True)
class LoginProfile:
    """Where a login comes from and its device categories.

    ``client_ip`` is the public client IP the location came from (VPN and
    hotspot NAS); ``source`` the subject the spray rule counts failures
    against (``detect.location.login_source``: never a NAS, a LAC or a
    pool address). Both personal, kept out of reprs, never stored in clear.
    """

    location: Location | None
    device: DeviceInfo
    client_ip: str | None = field(default=None, repr=False)
    source: str | None = field(default=None, repr=False)


NOWHERE: Final = LoginProfile(None, UNKNOWN)


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None


def _vendor_values(packet: Packet, vendor: int, vtype: int) -> Iterator[bytes]:
    """Every value of one vendor sub-attribute (RFC 2865 section 5.26 layout), in order.

    ``Packet.vsa`` gives the first only; a NAS sends Cisco-AVPair many times.
    """
    for t, v in packet.attributes:
        if t != VENDOR_SPECIFIC or len(v) < 6 or int.from_bytes(v[:4]) != vendor:
            continue
        pos = 4
        while pos + 2 <= len(v):
            length = v[pos + 1]
            if length < 2 or pos + length > len(v):
                break
            if v[pos] == vtype:
                yield v[pos + 2 : pos + length]
            pos += length


def _dhcp_option_tlv(value: bytes, option: int) -> bytes | None:
    """Option ``option`` of a Cisco device-sensor ``dhcp-option`` binary TLV.

    The TLV has a 2-octet type and a 2-octet length.
    """
    if len(value) < 4 or int.from_bytes(value[:2]) != option:
        return None
    length = int.from_bytes(value[2:4])
    return value[4 : 4 + length] if 4 + length <= len(value) else None


def cisco_hints(pairs: list[bytes]) -> tuple[str | None, str | None]:
    """(DHCP vendor class, HTTP User-Agent) from Cisco-AVPair values, where present.

    Cisco device sensor reports DHCP options as ``dhcp-option=<TLV>`` (binary,
    2-octet type and length) or, decoded, ``dhcp-option=dhcp-class-identifier=...``;
    HTTP headers as ``http-tlv=User-Agent=...``. A ``protocol:`` prefix
    ("subscriber:dhcp-class-identifier=...") is allowed.
    """
    dhcp_class: str | None = None
    user_agent: str | None = None
    for raw in pairs:
        name, sep, value = raw.partition(b"=")
        if not sep:
            continue
        name = name.rpartition(b":")[2].strip().lower()
        if name == b"dhcp-option":
            inner, sep, rest = value.partition(b"=")
            if sep and inner.strip().lower() == b"dhcp-class-identifier":
                dhcp_class = dhcp_class or _text(rest)
            elif (found := _dhcp_option_tlv(value, DHCP_CLASS_ID_OPTION)) is not None:
                dhcp_class = dhcp_class or _text(found)
        elif name in (b"dhcp-class-identifier", b"dhcp-class-id"):
            dhcp_class = dhcp_class or _text(value)
        elif name == b"http-tlv":
            header, sep, rest = value.partition(b"=")
            if sep and header.strip().lower() == b"user-agent":
                user_agent = user_agent or _text(rest)
        elif name == b"user-agent":
            user_agent = user_agent or _text(value)
    return dhcp_class, user_agent


class LoginProfiler:
    """Locates and classifies logins; built once with the GeoIP locator and MAC registry."""

    def __init__(self, locator: Locator | None = None, oui: OuiTable | None = None) -> None:
        self._locator = locator or Locator()
        self._oui = oui

    def profile(self, packet: Packet, nas: Nas) -> LoginProfile:
        """The location and device categories of the login ``packet`` through ``nas``."""
        calling = _text(packet.get(CALLING_STATION_ID))
        tunnel_attr = packet.get(TUNNEL_CLIENT_ENDPOINT)
        tunnel = _text(strip_tag(tunnel_attr)) if tunnel_attr is not None else None
        client_ip = login_ip(
            nas.nas_type, calling_station_id=calling, tunnel_client_endpoint=tunnel
        )
        source = login_source(nas, calling_station_id=calling, tunnel_client_endpoint=tunnel)
        location = self._locator.locate(client_ip, nas)
        port_type = packet.get(NAS_PORT_TYPE)
        dhcp_class = user_agent = device_type = None
        if packet.get(VENDOR_SPECIFIC) is not None:
            dhcp_class, user_agent = cisco_hints(list(_vendor_values(packet, CISCO, CISCO_AVPAIR)))
            device_type = _text(packet.vsa(ARUBA, ARUBA_DEVICE_TYPE))
        device = classify(
            nas_port_type=int.from_bytes(port_type) if port_type and len(port_type) == 4 else None,
            # The MAC is parsed only to look its maker up.
            mac=mac_of(packet.get(CALLING_STATION_ID)) if self._oui is not None else None,
            user_agent=user_agent,
            device_type=device_type,
            dhcp_class_id=dhcp_class,
            oui=self._oui,
        )
        return LoginProfile(location, device, client_ip, source)
