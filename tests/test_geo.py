"""Login location and device categories: GeoIP databases built with mmdb-writer, NAS
locations, the login-IP choice per NAS type, classify(), and the auth_events categories."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from ispcare_radius.aaa.logininfo import LoginProfiler, cisco_hints
from ispcare_radius.aaa.model import AuthResult, Nas, Subscriber, SubscriberStatus
from ispcare_radius.aaa.pipeline import AccessHandler
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import Request
from ispcare_radius.cli.args import build_parser
from ispcare_radius.cli.config import ConfigError, load_config
from ispcare_radius.cli.config_sections import GeoConfig
from ispcare_radius.cli.serve import build_profiler
from ispcare_radius.detect.device import DeviceInfo, OuiTable, classify, is_universal
from ispcare_radius.detect.location import (
    Location,
    Locator,
    NasType,
    is_geolocatable,
    login_ip,
    nas_location,
    parse_ip_text,
    strip_tag,
)
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import hide_password, random_authenticator
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.packet import build_packet, encode_attributes, parse
from ispcare_radius.store.db import Pool
from ispcare_radius.store.events import AuthEventWriter
from ispcare_radius.store.geoip import GeoDataError, GeoIpReader, GeoKind, kind_of, load_oui
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.subscribers import SubscriberRepository

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"synthetic-geo-secret"

# Synthetic databases: these networks are placed where the test says, nothing more.
LONDON_NET = "81.2.69.0/24"
LONDON_IP = "81.2.69.142"
CHANGCHUN_NET = "175.16.199.0/24"
CHANGCHUN_IP = "175.16.199.7"
# Chelmsford, about 50 km north-east of central London.
TOWN_NET = "89.160.20.0/24"
TOWN_IP = "89.160.20.112"
LONDON_V6_NET = "2a02:c7c:d100::/40"
LONDON_V6_IP = "2a02:c7c:d123::5"
UNKNOWN_PUBLIC_IP = "8.8.4.4"
# Addresses that must never be geolocated, written into the database as London so
# that only the exclusion (not a database miss) can keep them out.
NEVER = ("10.0.0.0/8", "100.64.0.0/10", "192.168.0.0/16", "192.0.2.0/24", "198.18.0.0/15")

LONDON = {
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "city": {"names": {"en": "London"}},
    "location": {"latitude": 51.5142, "longitude": -0.0931, "accuracy_radius": 20},
}
CHANGCHUN = {
    "country": {"iso_code": "CN", "names": {"en": "China"}},
    "city": {"names": {"en": "Changchun"}},
    "location": {"latitude": 43.88, "longitude": 125.3228, "accuracy_radius": 100},
}
TOWN = {
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "city": {"names": {"en": "Chelmsford"}},
    "location": {"latitude": 51.7356, "longitude": 0.4685, "accuracy_radius": 10},
}

OUI_CSV = """Registry,Assignment,Organization Name,Organization Address
MA-L,00163E,Synthetic Phones Ltd,1 Test Street GB
MA-L,001BC5,IEEE Registration Authority,445 Hoes Lane US
MA-L,F0D1A9,"Example Routers, Inc.",2 Test Road DE
"""
MAM_CSV = """Registry,Assignment,Organization Name,Organization Address
MA-M,001BC50,Tiny Sensors GmbH,3 Test Way DE
"""


def _write(path: Path, database_type: str, records: list[tuple[str, dict[str, Any]]]) -> Path:
    ip_version = 6 if any(":" in net for net, _ in records) else 4
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description="synthetic test data",
        ipv4_compatible=ip_version == 6,
    )
    for net, record in records:
        writer.insert_network(IPSet([net]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("geo")
    city_records = [
        (LONDON_NET, LONDON),
        (CHANGCHUN_NET, CHANGCHUN),
        (TOWN_NET, TOWN),
        (LONDON_V6_NET, LONDON),
        *((net, LONDON) for net in NEVER),
    ]
    no_radius = {k: v for k, v in LONDON.items() if k != "location"}
    no_radius["location"] = {"latitude": 51.5142, "longitude": -0.0931}
    corrupt = base / "corrupt.mmdb"
    corrupt.write_bytes(b"\x00not a maxmind db" * 64)
    return {
        "city": _write(base / "city.mmdb", "GeoLite2-City", city_records),
        "country": _write(
            base / "country.mmdb",
            "GeoLite2-Country",
            [(LONDON_NET, {"country": LONDON["country"]})],
        ),
        "dbip": _write(base / "dbip.mmdb", "DBIP-City-Lite", [(LONDON_NET, no_radius)]),
        "asn": _write(
            base / "asn.mmdb",
            "GeoLite2-ASN",
            [(LONDON_NET, {"autonomous_system_number": 64500})],
        ),
        "corrupt": corrupt,
    }


@pytest.fixture(scope="module")
def city(dbs: dict[str, Path]) -> GeoIpReader:
    return GeoIpReader.open(dbs["city"])


def _nas(nas_type: NasType = NasType.PPPOE, **kw: Any) -> Nas:
    base: dict[str, Any] = {
        "id": 1,
        "name": "pop-1",
        "address": ipaddress.ip_network("203.0.113.0/28"),
        "secret": Secret(SECRET),
        "latitude": 51.5,
        "longitude": -0.12,
        "country": "GB",
        "city": "London",
        "nas_type": nas_type,
    }
    base.update(kw)
    return Nas(**base)


# -- database type detection ------------------------------------------------------------


@pytest.mark.parametrize(
    ("database_type", "kind"),
    [
        ("GeoLite2-City", GeoKind.CITY),
        ("GeoIP2-City", GeoKind.CITY),
        ("GeoLite2-Country", GeoKind.COUNTRY),
        ("GeoIP2-Country", GeoKind.COUNTRY),
        ("GeoIP2-Enterprise", GeoKind.ENTERPRISE),
        ("DBIP-City-Lite", GeoKind.CITY),
        ("DBIP-Country-Lite", GeoKind.COUNTRY),
        ("DBIP-Location (compat=City)", GeoKind.CITY),
        ("DBIP-Location-ISP (compat=Enterprise)", GeoKind.ENTERPRISE),
        ("GeoLite2-ASN", None),
        ("GeoIP2-Anonymous-IP", None),
    ],
)
def test_database_kind_from_metadata(database_type: str, kind: GeoKind | None) -> None:
    """The record layout is chosen from the file's database_type, MaxMind's or DB-IP's names."""
    assert kind_of(database_type) is kind


def test_city_database_gives_city_coordinates_and_accuracy(city: GeoIpReader) -> None:
    """A City database places an address at its city, with the accuracy radius in km."""
    assert (city.kind, city.database_type) == (GeoKind.CITY, "GeoLite2-City")
    found = city.lookup(ipaddress.ip_address(LONDON_IP))
    assert found == Location("GB", "London", 51.5142, -0.0931, 20.0, "geoip")
    assert city.lookup(ipaddress.ip_address(CHANGCHUN_IP)) == Location(
        "CN", "Changchun", 43.88, 125.3228, 100.0, "geoip"
    )
    v6 = city.lookup(ipaddress.ip_address(LONDON_V6_IP))
    assert v6 is not None and v6.city == "London"
    assert city.lookup(ipaddress.ip_address(UNKNOWN_PUBLIC_IP)) is None


def test_country_database_gives_country_only(dbs: dict[str, Path]) -> None:
    """A Country database yields the country and no city or coordinates."""
    reader = GeoIpReader.open(dbs["country"])
    assert reader.kind is GeoKind.COUNTRY
    assert reader.lookup(ipaddress.ip_address(LONDON_IP)) == Location(
        "GB", None, None, None, None, "geoip"
    )
    # An IPv6 address asked of an IPv4-only database is a miss, not an error.
    assert reader.lookup(ipaddress.ip_address(LONDON_V6_IP)) is None


def test_dbip_city_database_without_accuracy(dbs: dict[str, Path]) -> None:
    """DB-IP's City Lite metadata opens as a City database; no radius means accuracy None."""
    reader = GeoIpReader.open(dbs["dbip"])
    assert reader.kind is GeoKind.CITY
    found = reader.lookup(ipaddress.ip_address(LONDON_IP))
    assert found == Location("GB", "London", 51.5142, -0.0931, None, "geoip")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("asn", "'GeoLite2-ASN' database"),
        ("corrupt", "not a MaxMind DB file"),
        ("missing", "GeoIP database not found"),
    ],
)
def test_bad_database_is_a_one_line_error(dbs: dict[str, Path], name: str, message: str) -> None:
    """A non-location, corrupt or missing file fails at start with one line saying which."""
    path = dbs.get(name, dbs["city"].parent / "missing.mmdb")
    with pytest.raises(GeoDataError) as info:
        GeoIpReader.open(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError) as config_info:
        build_profiler(GeoConfig(geoip_db=path, oui_files=()))
    assert str(config_info.value).startswith("detect.geoip_db: ")
    assert "\n" not in str(config_info.value)


def test_config_reads_detect_data_files(tmp_path: Path, dbs: dict[str, Path]) -> None:
    """[detect] geoip_db and oui_file are read; a path that is no file is a config error."""
    oui = tmp_path / "oui.csv"
    oui.write_text(OUI_CSV)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[detect]\ngeoip_db = "{dbs["city"]}"\noui_file = "{oui}"\n')
    geo = load_config(cfg, env={}).geo
    assert geo == GeoConfig(geoip_db=dbs["city"], oui_files=(oui,))
    profiler = build_profiler(geo)
    assert isinstance(profiler, LoginProfiler)
    cfg.write_text(f'[detect]\ngeoip_db = "{tmp_path / "nope.mmdb"}"\n')
    with pytest.raises(ConfigError, match=r"^detect\.geoip_db: .* is not a file$"):
        load_config(cfg, env={})
    cfg.write_text('[detect]\noui_file = ""\n')
    assert load_config(cfg, env={}).geo == GeoConfig(geoip_db=None, oui_files=())
    assert load_config(None, env={}).geo == GeoConfig()


# -- addresses never geolocated ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # CGNAT, RFC 6598
        ("100.127.255.254", False),
        ("127.0.0.1", False),
        ("169.254.1.1", False),
        ("192.0.2.10", False),  # documentation
        ("198.51.100.10", False),
        ("203.0.113.10", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd12:3456::1", False),  # unique local
        ("2001:db8::1", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("100.63.255.255", True),  # just below CGNAT
        ("100.128.0.1", True),  # just above CGNAT
        (LONDON_IP, True),
        (LONDON_V6_IP, True),
        ("::ffff:81.2.69.142", True),
    ],
)
def test_is_geolocatable(ip: str, expected: bool) -> None:
    """Only global unicast addresses are looked up; CGNAT is excluded by name."""
    assert is_geolocatable(ipaddress.ip_address(ip)) is expected


def test_own_pools_are_never_geolocated() -> None:
    """An address in the NAS's own pools is the ISP's, not the client's."""
    ip = ipaddress.ip_address(LONDON_IP)
    assert is_geolocatable(ip, (ipaddress.ip_network("81.2.0.0/16"),)) is False
    assert is_geolocatable(ip, (ipaddress.ip_network("2a02::/16"),)) is True


@pytest.mark.parametrize("net", NEVER)
def test_private_and_cgnat_not_geolocated_even_when_the_database_has_them(
    city: GeoIpReader, net: str
) -> None:
    """Excluded addresses get the NAS location although the database would place them."""
    ip = str(next(iter(ipaddress.ip_network(net).hosts())))
    assert city.lookup(ipaddress.ip_address(ip)) is not None  # the database has it
    nas = _nas(NasType.VPN, city="Leeds", latitude=53.8, longitude=-1.55)
    place = Locator(city).locate(ip, nas)
    assert place == Location("GB", "Leeds", 53.8, -1.55, None, "nas")


def test_pool_address_is_not_geolocated(city: GeoIpReader) -> None:
    """A client IP inside the NAS's pools falls back to the NAS location."""
    nas = _nas(NasType.VPN, city="Leeds", pools=(ipaddress.ip_network(LONDON_NET),))
    place = Locator(city).locate(LONDON_IP, nas)
    assert place is not None and (place.city, place.source) == ("Leeds", "nas")


# -- NAS locations and the locator ------------------------------------------------------------


def test_nas_location_fallback_and_normalisation() -> None:
    """A NAS's own place; lower-case codes normalised, half coordinates dropped, none is None."""
    assert nas_location(_nas(country="gb")) == Location("GB", "London", 51.5, -0.12, None, "nas")
    assert nas_location(_nas(longitude=None)) == Location("GB", "London", None, None, None, "nas")
    bare = _nas(latitude=None, longitude=None, country=None, city=None)
    assert nas_location(bare) is None
    assert Locator().locate(LONDON_IP, bare) is None


def test_locator_gives_a_nas_place_one_place_object() -> None:
    """Logins through one NAS share one place object (the detector knows it
    again by identity), a NAS reloaded with the same place too; a NAS
    elsewhere gets its own."""
    locator = Locator()
    first = locator.locate(None, _nas())
    assert first is not None and locator.locate(None, _nas()) is first
    moved = locator.locate(None, _nas(city="Leeds", latitude=53.8, longitude=-1.55))
    assert moved is not None and moved.city == "Leeds" and moved is not first
    assert locator.locate(None, _nas()) is first
    assert locator.locate(None, _nas(latitude=None)) == nas_location(_nas(latitude=None))


def test_locator_per_nas_type(city: GeoIpReader) -> None:
    """Public VPN client IPs are geolocated; unknown ones give None; no database: NAS location."""
    vpn = _nas(NasType.VPN, city="Leeds", latitude=53.8, longitude=-1.55)
    locator = Locator(city)
    assert locator.has_geoip
    changchun = locator.locate(CHANGCHUN_IP, vpn)
    assert changchun is not None and (changchun.city, changchun.source) == ("Changchun", "geoip")
    town = locator.locate(TOWN_IP, vpn)
    assert town is not None and town.city == "Chelmsford" and town.accuracy_km == 10.0
    # A public address the database does not know: unknown, not the concentrator's place.
    assert locator.locate(UNKNOWN_PUBLIC_IP, vpn) is None
    # No client IP (fixed line, or a hotspot client known by MAC): the NAS location.
    fixed = locator.locate(None, _nas())
    assert fixed is not None and (fixed.city, fixed.source) == ("London", "nas")
    # Without a database every login is placed at its NAS.
    no_db = Locator().locate(CHANGCHUN_IP, vpn)
    assert no_db is not None and (no_db.city, no_db.source) == ("Leeds", "nas")


# -- which IP is the login IP ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("81.2.69.142", "81.2.69.142"),
        ("81.2.69.142:4500", "81.2.69.142"),
        ("81.2.69.142[4500]", "81.2.69.142"),  # strongSwan
        ("2a02:c7c:d123::5", "2a02:c7c:d123::5"),
        ("[2a02:c7c:d123::5]:443", "2a02:c7c:d123::5"),
        ("2a02:c7c:d123::5[4500]", "2a02:c7c:d123::5"),
        ("02-00-5E-10-00-01", None),  # a MAC
        ("02:00:5e:10:00:01", None),
        ("+441234567890", None),  # a telephone number
        ("", None),
        (None, None),
    ],
)
def test_parse_ip_text(text: str | None, expected: str | None) -> None:
    """The IP forms NAS write into Calling-Station-Id, and nothing else."""
    found = parse_ip_text(text)
    assert (str(found) if found is not None else None) == expected


def test_login_ip_per_nas_type() -> None:
    """PPPoE: none; VPN/hotspot: Tunnel-Client-Endpoint first, then an IP Calling-Station-Id."""
    assert login_ip(NasType.PPPOE, calling_station_id=LONDON_IP) is None
    assert login_ip(NasType.VPN, calling_station_id=LONDON_IP) == LONDON_IP
    assert login_ip(NasType.VPN, calling_station_id=f"{LONDON_IP}[4500]") == LONDON_IP
    assert (
        login_ip(NasType.VPN, calling_station_id=LONDON_IP, tunnel_client_endpoint=CHANGCHUN_IP)
        == CHANGCHUN_IP
    )
    assert login_ip(NasType.HOTSPOT, calling_station_id="02-00-5E-10-00-01") is None
    assert login_ip(NasType.HOTSPOT, calling_station_id=TOWN_IP) == TOWN_IP
    assert login_ip(NasType.VPN, calling_station_id=None, tunnel_client_endpoint="junk") is None


def test_strip_tag() -> None:
    """RFC 2868 section 3.3: a first octet up to 0x1F is a tag, anything else is text."""
    assert strip_tag(b"\x01" + LONDON_IP.encode()) == LONDON_IP.encode()
    assert strip_tag(b"\x00" + LONDON_IP.encode()) == LONDON_IP.encode()
    assert strip_tag(LONDON_IP.encode()) == LONDON_IP.encode()
    assert strip_tag(b"") == b""


# -- device classification -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def oui() -> OuiTable:
    return OuiTable.parse([*OUI_CSV.splitlines(), *MAM_CSV.splitlines()])


@pytest.mark.parametrize(
    ("port_type", "device_class"),
    [
        (15, "cpe"),  # Ethernet (PPPoE over it)
        (16, "cpe"),  # xDSL
        (17, "cpe"),  # Cable
        (33, "cpe"),  # PPPoEoVLAN, RFC 4603
        (19, "wifi"),  # Wireless - IEEE 802.11
        (18, "wifi"),
        (5, "vpn"),  # Virtual
        (23, "cellular"),  # Wireless - UMTS
        (0, "dialup"),  # Async
        (999, None),
        (None, None),
    ],
)
def test_classify_from_nas_port_type(port_type: int | None, device_class: str | None) -> None:
    """RFC 2865 section 5.41 NAS-Port-Type values map to access classes."""
    assert classify(nas_port_type=port_type).device_class == device_class


def test_oui_vendor_and_randomised_macs(oui: OuiTable) -> None:
    """Registered MACs name their maker (longest prefix); local and group MACs none."""
    assert len(oui) == 4
    assert oui.vendor(bytes.fromhex("00163e112233")) == "Synthetic Phones Ltd"
    assert oui.vendor(bytes.fromhex("f0d1a9000001")) == "Example Routers, Inc."
    # MA-M block inside the registration authority's MA-L: the MA-M holder wins.
    assert oui.vendor(bytes.fromhex("001bc5012345")) == "Tiny Sensors GmbH"
    assert oui.vendor(bytes.fromhex("001bc5f12345")) == "IEEE Registration Authority"
    assert oui.vendor(bytes.fromhex("aabbcc000001")) is None  # not registered
    randomised = bytes.fromhex("02163e112233")  # U/L bit set on a registered prefix
    assert not is_universal(randomised)
    assert oui.vendor(randomised) is None
    assert oui.vendor(bytes.fromhex("01163e112233")) is None  # group bit
    info = classify(nas_port_type=19, mac=randomised, oui=oui)
    assert info == DeviceInfo("wifi", None, None)
    info = classify(nas_port_type=15, mac=bytes.fromhex("f0d1a9000001"), oui=oui)
    assert info == DeviceInfo("cpe", None, "Example Routers, Inc.")


def test_load_oui_from_files(tmp_path: Path) -> None:
    """The registry files are read and merged; an empty or missing one is a one-line error."""
    (tmp_path / "oui.csv").write_text(OUI_CSV)
    (tmp_path / "mam.csv").write_text(MAM_CSV)
    table = load_oui([tmp_path / "oui.csv", tmp_path / "mam.csv"])
    assert table.vendor(bytes.fromhex("001bc5012345")) == "Tiny Sensors GmbH"
    (tmp_path / "empty.csv").write_text("Registry,Assignment,Organization Name\n")
    with pytest.raises(GeoDataError, match="no entries"):
        load_oui([tmp_path / "empty.csv"])
    with pytest.raises(GeoDataError, match=r"missing\.csv"):
        load_oui([tmp_path / "missing.csv"])


IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
ANDROID_PHONE_UA = (
    "Mozilla/5.0 (Linux; Android 14; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Mobile Safari/537.36"
)
ANDROID_TABLET_UA = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)
WINDOWS_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"user_agent": IPHONE_UA}, ("phone", "ios")),
        ({"user_agent": ANDROID_PHONE_UA}, ("phone", "android")),
        ({"user_agent": ANDROID_TABLET_UA}, ("tablet", "android")),
        ({"user_agent": WINDOWS_UA}, ("computer", "windows")),
        ({"device_type": "Win 10"}, ("computer", "windows")),
        ({"device_type": "iPad"}, ("tablet", "ios")),
        ({"device_type": "OS X"}, ("computer", "macos")),
        ({"device_type": "Xbox"}, ("console", None)),
        ({"dhcp_class_id": "MSFT 5.0"}, ("computer", "windows")),
        ({"dhcp_class_id": "android-dhcp-13"}, ("phone", "android")),
        ({"dhcp_class_id": "dhcpcd-9.4.1:Linux-6.1.0:armv7l"}, (None, "linux")),
        # The user agent outranks the port type; the port type fills in what nothing else says.
        ({"user_agent": IPHONE_UA, "nas_port_type": 15}, ("phone", "ios")),
        ({"dhcp_class_id": "udhcp 1.36.1", "nas_port_type": 19}, ("wifi", "linux")),
        ({"device_type": "something new"}, (None, None)),
    ],
)
def test_classify_sources(kwargs: dict[str, Any], expected: tuple[str | None, str | None]) -> None:
    """User agent, NAS fingerprint and DHCP class give device class and OS family."""
    info = classify(**kwargs)
    assert (info.device_class, info.os_family) == expected


def test_cisco_avpair_hints() -> None:
    """Device-sensor DHCP class (text or binary TLV) and HTTP User-Agent from Cisco-AVPair."""
    tlv = (60).to_bytes(2) + (8).to_bytes(2) + b"MSFT 5.0"
    assert cisco_hints([b"dhcp-option=" + tlv]) == ("MSFT 5.0", None)
    assert cisco_hints([b"dhcp-option=dhcp-class-identifier=android-dhcp-13"]) == (
        "android-dhcp-13",
        None,
    )
    assert cisco_hints([b"subscriber:dhcp-class-identifier=MSFT 5.0"]) == ("MSFT 5.0", None)
    pairs = [b"audit-session-id=0A0B", b"http-tlv=User-Agent=" + IPHONE_UA.encode()]
    assert cisco_hints(pairs) == (None, IPHONE_UA)
    assert cisco_hints([b"no equals sign", b"method=dot1x"]) == (None, None)


# -- end to end: requests -> profiler -> auth_events ------------------------------------------


def _vsa(vendor: int, vtype: int, value: bytes) -> tuple[int, bytes]:
    return 26, vendor.to_bytes(4) + bytes([vtype, len(value) + 2]) + value


def _request(nas: Nas, user: bytes, password: bytes, extra: list[tuple[int, bytes]]) -> Request:
    auth = random_authenticator()
    pairs = [(1, user), (2, hide_password(password, SECRET, auth)), *extra]
    raw = build_packet(1, 7, auth, encode_attributes(pairs))
    return Request(parse(raw), nas, ("203.0.113.1", 1645), 0.0, None)


def test_profiler_reads_request_attributes(city: GeoIpReader, oui: OuiTable) -> None:
    """A tagged Tunnel-Client-Endpoint is geolocated; Aruba-Device-Type and the MAC classify."""
    profiler = LoginProfiler(Locator(city), oui)
    vpn = _nas(NasType.VPN)
    request = _request(
        vpn,
        b"u",
        b"p",
        [
            (66, b"\x01" + CHANGCHUN_IP.encode()),  # Tunnel-Client-Endpoint, tag 1
            (31, b"00-16-3E-11-22-33"),
            (61, (5).to_bytes(4)),  # Virtual
            _vsa(14823, 12, b"iPhone"),  # Aruba-Device-Type
        ],
    )
    profile = profiler.profile(request.packet, vpn)
    assert profile.location is not None and profile.location.city == "Changchun"
    assert profile.device == DeviceInfo("phone", "ios", "Synthetic Phones Ltd")
    assert profile.client_ip == CHANGCHUN_IP and CHANGCHUN_IP not in repr(profile)
    # The same request through a fixed-line NAS is placed at the NAS.
    fixed = _nas()
    profile = profiler.profile(request.packet, fixed)
    assert profile.location is not None and profile.location.source == "nas"
    assert profile.client_ip is None


class _Directory:
    def __init__(self, subs: dict[str, Any]) -> None:
        self.subs = subs

    async def by_user_name(self, user_name: str) -> Any:
        return self.subs.get(user_name)


class _Events:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def submit(self, event: Any) -> None:
        self.events.append(event)


async def test_auth_events_carry_categories_and_nothing_personal(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
    city: GeoIpReader,
    oui: OuiTable,
) -> None:
    """An accepted VPN login stores country, city, device class, OS and vendor in clear,
    and no user name, IP or MAC outside the sealed columns."""
    subscribers = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    user, password = "geo-user-4711", "synthetic-pw-1"
    sid = await subscribers.add(user, password, plan=None)
    sub = Subscriber(sid, SubscriberStatus.ACTIVE, None, Secret(password.encode()))
    dictionary, _ = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    events = _Events()
    handler = AccessHandler(
        directory=_Directory({user: sub}),
        events=events,
        renderer=ReplyRenderer(dictionary),
        clock=lambda: 1_900_000_000.0,
        profiler=LoginProfiler(Locator(city), oui),
    )
    vpn = _nas(NasType.VPN)
    mac = "00-16-3E-11-22-33"
    request = _request(
        vpn,
        user.encode(),
        password.encode(),
        [(31, LONDON_IP.encode()), (61, (5).to_bytes(4))],
    )
    await handler.handle(request)
    # A fixed-line login: placed at the NAS, its MAC names the vendor.
    fixed = _nas()
    await handler.handle(
        _request(fixed, user.encode(), password.encode(), [(31, mac.encode()), (61, b"\0\0\0\x0f")])
    )
    [first, _] = events.events
    assert first.result is AuthResult.ACCEPT and first.subscriber_id == sid
    writer = AuthEventWriter(pg_pool, system_keys, data_keys)
    for event in events.events:
        writer.submit(event)
    await writer.flush()
    assert writer.written == 2
    rows = await pg_pool.fetch(
        "SELECT country, city, device_class, os_family, vendor, * FROM auth_events ORDER BY time"
    )
    categories = [tuple(r[c] for c in ("country", "city", "device_class", "vendor")) for r in rows]
    assert ("GB", "London", "vpn", None) in categories
    assert ("GB", "London", "cpe", "Synthetic Phones Ltd") in categories
    personal = (user, LONDON_IP, mac, mac.replace("-", ":"), "203.0.113.1")
    for row in rows:
        for column, value in dict(row).items():
            if column.endswith("_enc"):
                assert value is None or not any(p.encode() in value for p in personal)
            else:
                assert not any(p.lower() in str(value).lower() for p in personal), column


# -- NAS type and pools in the store and CLI --------------------------------------------------


async def test_nas_type_and_pools_round_trip(pg_pool: Pool, system_keys: SystemKeys) -> None:
    """nas_type and pools are stored and read back; bad values are refused with a clear message."""
    repo = NasRepository(pg_pool, system_keys)
    added = await repo.add(
        "vpn-1",
        "198.51.100.0/28",
        "synthetic-secret",
        country="gb",
        nas_type="vpn",
        pools=("100.64.0.0/22", "2001:db8:100::/48"),
    )
    [listed] = await repo.list()
    assert listed == added
    assert listed.nas_type is NasType.VPN and listed.country == "GB"
    assert listed.pools == (
        ipaddress.ip_network("100.64.0.0/22"),
        ipaddress.ip_network("2001:db8:100::/48"),
    )
    plain = await repo.add("bras-1", "198.51.100.16/28", "synthetic-secret")
    assert plain.nas_type is NasType.PPPOE and plain.pools == ()
    with pytest.raises(ValueError, match="NAS type must be one of: pppoe, hotspot, vpn"):
        await repo.add("x", "198.51.100.32/28", "s", nas_type="wimax")
    with pytest.raises(ValueError, match="ISO 3166-1 alpha-2"):
        await repo.add("x", "198.51.100.32/28", "s", country="United Kingdom")
    with pytest.raises(ValueError, match="NAS pool must be a CIDR"):
        await repo.add("x", "198.51.100.32/28", "s", pools=("100.64.0.1/22",))


def test_nas_add_cli_options() -> None:
    """`nas add --type vpn --pool A --pool B` parses; an unknown type is refused."""
    args = build_parser().parse_args(
        ["nas", "add", "vpn-1", "198.51.100.1", "--type", "vpn", "--pool", "100.64.0.0/22"]
    )
    assert (args.nas_type, args.pools) == ("vpn", ["100.64.0.0/22"])
    assert build_parser().parse_args(["nas", "add", "b", "198.51.100.2"]).nas_type == "pppoe"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["nas", "add", "b", "198.51.100.2", "--type", "wimax"])


@pytest.mark.parametrize(
    "text", ["00-1B-21-0A-0B-0C", "00:1b:21:0a:0b:0c", "001b.210a.0b0c", "001B210A0B0C"]
)
def test_macs_in_calling_station_id_are_not_ips(text: str) -> None:
    assert parse_ip_text(text) is None


def test_an_eight_group_ipv6_that_looks_like_hex_pairs_is_still_an_ip() -> None:
    assert str(parse_ip_text("aa:bb:cc:dd:ee:ff:00:11")) == "aa:bb:cc:dd:ee:ff:0:11"
