"""Device categories of a login, for analytics: device class, OS family, hardware vendor.

Only coarse categories leave here, never an identifier: a MAC address goes in
and at most its registered manufacturer's name comes out. Sources, most
specific first: a user agent (ua-parser), the NAS's device fingerprint
(Aruba-Device-Type), the DHCP vendor class, then NAS-Port-Type. Pure: the IEEE
registry text is read by the caller (store/geoip.py) and parsed here.
Imports only the standard library and ua-parser.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import ua_parser


class DeviceClass(StrEnum):
    """What kind of device, or failing that, what kind of access line."""

    PHONE = "phone"
    TABLET = "tablet"
    COMPUTER = "computer"
    CONSOLE = "console"
    CPE = "cpe"  # a fixed line: the subscriber's router logs in
    WIFI = "wifi"  # some device on 802.11
    CELLULAR = "cellular"  # mobile broadband (UMTS, CDMA2000, WiMAX...)
    VPN = "vpn"
    DIALUP = "dialup"


class OsFamily(StrEnum):
    WINDOWS = "windows"
    MACOS = "macos"
    IOS = "ios"
    ANDROID = "android"
    LINUX = "linux"
    CHROMEOS = "chromeos"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Categories only; None where nothing in the request tells."""

    device_class: str | None
    os_family: str | None
    vendor: str | None


UNKNOWN: Final = DeviceInfo(None, None, None)
_BY_CLASS: Final[dict[DeviceClass | None, DeviceInfo]] = {
    None: UNKNOWN,
    **{c: DeviceInfo(c.value, None, None) for c in DeviceClass},
}

# NAS-Port-Type (RFC 2865 section 5.41; later values from the IANA registry
# "Values for RADIUS Attribute 61": RFC 3580, RFC 4603 and vendor requests).
_PORT_TYPES: Final[dict[int, DeviceClass]] = {
    **dict.fromkeys((0, 1, 2, 3, 4, 6, 7, 8, 9, 10), DeviceClass.DIALUP),
    5: DeviceClass.VPN,  # Virtual
    # SDSL, ADSL-CAP, ADSL-DMT, IDSL, Ethernet, xDSL, Cable
    **dict.fromkeys(range(11, 18), DeviceClass.CPE),
    18: DeviceClass.WIFI,  # Wireless - Other
    19: DeviceClass.WIFI,  # Wireless - IEEE 802.11
    20: DeviceClass.CPE,  # Token-Ring (RFC 3580)
    21: DeviceClass.CPE,  # FDDI (RFC 3580)
    22: DeviceClass.CELLULAR,  # Wireless - CDMA2000
    23: DeviceClass.CELLULAR,  # Wireless - UMTS
    24: DeviceClass.CELLULAR,  # Wireless - 1X-EV
    25: DeviceClass.WIFI,  # IAPP (IEEE 802.11F)
    26: DeviceClass.CPE,  # FTTP
    27: DeviceClass.CELLULAR,  # Wireless - IEEE 802.16
    28: DeviceClass.CELLULAR,  # Wireless - IEEE 802.20
    29: DeviceClass.CELLULAR,  # Wireless - IEEE 802.22
    # PPPoA, PPPoEoA, PPPoEoE, PPPoEoVLAN, PPPoEoQinQ (RFC 4603), xPON
    **dict.fromkeys(range(30, 36), DeviceClass.CPE),
    # Wireless - XGP, then the WiMAX interworking types
    **dict.fromkeys(range(36, 44), DeviceClass.CELLULAR),
}

# Device fingerprint names (Aruba-Device-Type, DHCP vendor classes), matched
# as lower-case substrings in this order: "windows phone" before "windows".
_FINGERPRINTS: Final[tuple[tuple[str, DeviceClass | None, OsFamily | None], ...]] = (
    ("iphone", DeviceClass.PHONE, OsFamily.IOS),
    ("ipod", DeviceClass.PHONE, OsFamily.IOS),
    ("ipad", DeviceClass.TABLET, OsFamily.IOS),
    ("windows phone", DeviceClass.PHONE, OsFamily.WINDOWS),
    ("android", DeviceClass.PHONE, OsFamily.ANDROID),
    ("chrome os", DeviceClass.COMPUTER, OsFamily.CHROMEOS),
    ("chromebook", DeviceClass.COMPUTER, OsFamily.CHROMEOS),
    ("msft", DeviceClass.COMPUTER, OsFamily.WINDOWS),  # DHCP "MSFT 5.0"
    ("darwin", DeviceClass.COMPUTER, OsFamily.MACOS),  # before "win"
    ("win", DeviceClass.COMPUTER, OsFamily.WINDOWS),
    ("os x", DeviceClass.COMPUTER, OsFamily.MACOS),
    ("macos", DeviceClass.COMPUTER, OsFamily.MACOS),
    ("mac", DeviceClass.COMPUTER, OsFamily.MACOS),
    ("playstation", DeviceClass.CONSOLE, None),
    ("xbox", DeviceClass.CONSOLE, None),
    ("nintendo", DeviceClass.CONSOLE, None),
    ("ubuntu", DeviceClass.COMPUTER, OsFamily.LINUX),
    ("linux", None, OsFamily.LINUX),
    ("dhcpcd", None, OsFamily.LINUX),
    ("udhcp", None, OsFamily.LINUX),
)

# ua-parser's OS families -> ours.
_UA_OS: Final[dict[str, OsFamily]] = {
    "ios": OsFamily.IOS,
    "ipados": OsFamily.IOS,
    "mac os x": OsFamily.MACOS,
    "macos": OsFamily.MACOS,
    "android": OsFamily.ANDROID,
    "chrome os": OsFamily.CHROMEOS,
    "linux": OsFamily.LINUX,
    "ubuntu": OsFamily.LINUX,
    "fedora": OsFamily.LINUX,
    "debian": OsFamily.LINUX,
}


def _fingerprint(text: str | None) -> tuple[DeviceClass | None, OsFamily | None]:
    if not text:
        return None, None
    lowered = text.lower()
    for needle, device_class, os_family in _FINGERPRINTS:
        if needle in lowered:
            return device_class, os_family
    return None, None


def _from_user_agent(user_agent: str | None) -> tuple[DeviceClass | None, OsFamily | None]:
    """Device class and OS family a browser's User-Agent tells."""
    if not user_agent:
        return None, None
    result = ua_parser.parse(user_agent)
    os_name = result.os.family.lower() if result.os is not None else ""
    os_family = _UA_OS.get(os_name)
    if os_family is None and os_name.startswith("windows"):
        os_family = OsFamily.WINDOWS
    device = result.device.family.lower() if result.device is not None else ""
    device_class: DeviceClass | None
    if "ipad" in device or "tablet" in device:
        device_class = DeviceClass.TABLET
    elif "iphone" in device or "ipod" in device:
        device_class = DeviceClass.PHONE
    elif os_family is OsFamily.ANDROID:
        # Android phones' browsers say "Mobile"; tablets' do not.
        device_class = DeviceClass.PHONE if "mobile" in user_agent.lower() else DeviceClass.TABLET
    elif os_family in (OsFamily.WINDOWS, OsFamily.MACOS, OsFamily.LINUX, OsFamily.CHROMEOS):
        device_class = DeviceClass.COMPUTER
    else:
        device_class = None
    return device_class, os_family


def prepare() -> None:
    """Load ua-parser's rules now (a fraction of a second) rather than on the first login
    that carries a user agent, which would hold up every request behind it."""
    ua_parser.parse("Mozilla/5.0 (X11; Linux x86_64)")


class OuiTable:
    """MAC prefix -> registered organisation, from the IEEE registry CSV files.

    Reads the format of IEEE's ``oui.csv`` (MA-L, 24-bit), ``mam.csv`` (MA-M,
    28-bit) and ``oui36.csv`` (MA-S, 36-bit), as Debian's ieee-data ships
    them: ``Registry,Assignment,Organization Name,Organization Address``.
    The longest registered prefix wins.
    """

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        # Prefix length in hex digits -> upper-case hex prefix -> organisation.
        self._by_length: dict[int, dict[str, str]] = {}
        for assignment, organisation in entries:
            self._add(assignment, organisation)
        self._lengths = sorted(self._by_length, reverse=True)

    def _add(self, assignment: str, organisation: str) -> None:
        prefix = assignment.strip().upper()
        name = " ".join(organisation.split())
        if len(prefix) not in (6, 7, 9) or not name:
            return
        try:
            int(prefix, 16)
        except ValueError:
            return
        self._by_length.setdefault(len(prefix), {})[prefix] = name

    @classmethod
    def parse(cls, lines: Iterable[str]) -> OuiTable:
        """The table from the lines of one or more registry CSV files (headers skipped)."""
        rows = csv.reader(lines)
        return cls((row[1], row[2]) for row in rows if len(row) >= 3 and row[0] != "Registry")

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_length.values())

    def vendor(self, mac: bytes) -> str | None:
        """The organisation registered for ``mac``'s prefix; None for local or unknown MACs."""
        if len(mac) != 6 or not is_universal(mac):
            return None
        digits = mac.hex().upper()
        for length in self._lengths:
            found = self._by_length[length].get(digits[:length])
            if found is not None:
                return found
        return None


def is_universal(mac: bytes) -> bool:
    """A globally unique unicast MAC: neither locally administered nor group.

    IEEE 802 bit 1 of the first octet (U/L) set means locally administered,
    as phones' randomised (private) MACs are; bit 0 (I/G) set means a group
    address. Neither has a registered manufacturer.
    """
    return len(mac) == 6 and not mac[0] & 0x03


def classify(
    *,
    nas_port_type: int | None = None,
    mac: bytes | None = None,
    user_agent: str | None = None,
    device_type: str | None = None,
    dhcp_class_id: str | None = None,
    oui: OuiTable | None = None,
) -> DeviceInfo:
    """The device categories of a login, from whatever the request carries.

    ``device_type`` is a NAS's own fingerprint (Aruba-Device-Type),
    ``dhcp_class_id`` the DHCP vendor class (option 60) a NAS reports,
    ``mac`` the 6-byte Calling-Station-Id MAC. Each category comes from the
    most specific source that tells it.
    """
    device_class: DeviceClass | None = None
    os_family: OsFamily | None = None
    if user_agent or device_type or dhcp_class_id:
        for found_class, found_os in (
            _from_user_agent(user_agent),
            _fingerprint(device_type),
            _fingerprint(dhcp_class_id),
        ):
            device_class = device_class or found_class
            os_family = os_family or found_os
    if device_class is None and nas_port_type is not None:
        device_class = _PORT_TYPES.get(nas_port_type)
    vendor = oui.vendor(mac) if oui is not None and mac is not None else None
    if os_family is None and vendor is None:
        # Most logins: the port type alone, one shared value per class.
        return _BY_CLASS[device_class]
    return DeviceInfo(
        device_class.value if device_class else None,
        os_family.value if os_family else None,
        vendor,
    )
