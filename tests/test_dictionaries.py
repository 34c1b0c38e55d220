"""The shipped FreeRADIUS-format dictionaries: complete, consistent, and loadable.

Independent readers check the tree under ``dictionaries/``: our own loader
(``ispcare_radius.protocol.dictionary.load_dictionary``), pyrad's dictionary
parser, FreeRADIUS's ``radclient`` (which encodes a request with it), and a
minimal line scanner in this file that knows only enough syntax to
cross-check the others.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ispcare_radius.protocol.dictionary import Dictionary

DICT_DIR = Path(__file__).resolve().parents[1] / "dictionaries"
TOP = DICT_DIR / "dictionary"

REQUIRED_FILES = (
    "dictionary.rfc2865",
    "dictionary.rfc2866",
    "dictionary.rfc2867",
    "dictionary.rfc2868",
    "dictionary.rfc2869",
    "dictionary.rfc3162",
    "dictionary.rfc3576",
    "dictionary.rfc3580",
    "dictionary.rfc4679",
    "dictionary.rfc4818",
    "dictionary.rfc5176",
    "dictionary.rfc5997",
    "dictionary.rfc6911",
    "dictionary.mikrotik",
    "dictionary.cisco",
    "dictionary.juniper",
    "dictionary.erx",
    "dictionary.huawei",
    "dictionary.microsoft",
    "dictionary.wispr",
    "dictionary.chillispot",
)

# Files that define VALUEs for attributes of another file must come after it.
INCLUDE_ORDER = (
    ("dictionary.rfc2865", "dictionary.rfc3576"),
    ("dictionary.rfc2865", "dictionary.rfc3580"),
    ("dictionary.rfc2865", "dictionary.rfc4603"),
    ("dictionary.rfc2866", "dictionary.rfc2867"),
    ("dictionary.rfc2866", "dictionary.rfc3580"),
    ("dictionary.rfc2868", "dictionary.rfc3580"),
    ("dictionary.rfc3576", "dictionary.rfc5176"),
)

INTEGER_TYPES = {"integer": 2**32, "byte": 2**8, "short": 2**16, "integer64": 2**64, "date": 2**32}


# ---------------------------------------------------------------------------
# A minimal, independent scanner of the dictionary syntax.


@dataclass(frozen=True, slots=True)
class ScannedAttr:
    """One ATTRIBUTE line as the scanner read it."""

    name: str
    vendor: int
    code: int
    type: str
    has_tag: bool
    encrypt: int
    concat: bool
    where: str


@dataclass(frozen=True, slots=True)
class ScannedValue:
    """One VALUE line as the scanner read it."""

    attr: str
    name: str
    number: int
    where: str


@dataclass(slots=True)
class Scan:
    """Everything the scanner collected, in load order."""

    files: list[str]
    vendors: dict[str, int]
    attrs: list[ScannedAttr]
    values: list[ScannedValue]
    lines: list[ScannedAttr | ScannedValue]


def _new_scan() -> Scan:
    return Scan(files=[], vendors={}, attrs=[], values=[], lines=[])


def _scan(path: Path, scan: Scan) -> None:
    scan.files.append(path.name)
    vendor = 0
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name}:{lineno}"
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        keyword = fields[0]
        if keyword == "$INCLUDE":
            _scan(path.parent / fields[1], scan)
        elif keyword == "VENDOR":
            scan.vendors[fields[1]] = int(fields[2])
        elif keyword == "BEGIN-VENDOR":
            vendor = scan.vendors[fields[1]]
        elif keyword == "END-VENDOR":
            assert scan.vendors[fields[1]] == vendor, where
            vendor = 0
        elif keyword == "ATTRIBUTE":
            flags = fields[4].split(",") if len(fields) > 4 else []
            encrypt = [int(f.split("=", 1)[1]) for f in flags if f.startswith("encrypt=")]
            attr = ScannedAttr(
                name=fields[1],
                vendor=vendor,
                code=int(fields[2]),
                type=fields[3].split("[", 1)[0],
                has_tag="has_tag" in flags,
                encrypt=encrypt[0] if encrypt else 0,
                concat="concat" in flags,
                where=where,
            )
            scan.attrs.append(attr)
            scan.lines.append(attr)
        elif keyword == "VALUE":
            value = ScannedValue(fields[1], fields[2], int(fields[3], 0), where)
            scan.values.append(value)
            scan.lines.append(value)
        else:
            raise AssertionError(f"{where}: unexpected keyword {keyword!r}")
    assert vendor == 0, f"{path.name}: BEGIN-VENDOR without END-VENDOR"


@pytest.fixture(scope="module")
def scan() -> Scan:
    """The whole tree, read by the minimal scanner from the top file."""
    result = _new_scan()
    _scan(TOP, result)
    return result


@pytest.fixture(scope="module")
def ours() -> tuple[Dictionary, list[str]]:
    """The whole tree, read by our own loader."""
    from ispcare_radius.protocol.dictfile import load_dictionary

    return load_dictionary([TOP])


@pytest.fixture(scope="module")
def pyrad_dict() -> Any:
    """The whole tree, read by pyrad's parser."""
    from pyrad.dictionary import Dictionary

    return Dictionary(str(TOP))


# ---------------------------------------------------------------------------
# Files and includes.


def test_every_required_file_exists_and_is_included_from_the_top_file(scan: Scan) -> None:
    """Each required dictionary file exists and the top file includes it."""
    for name in REQUIRED_FILES:
        assert (DICT_DIR / name).is_file(), name
        assert name in scan.files, f"{name} is not included from {TOP.name}"


def test_no_dictionary_file_is_left_out_of_the_top_file(scan: Scan) -> None:
    """Every dictionary.* file in the directory is reached from the top file, once."""
    on_disk = {p.name for p in DICT_DIR.glob("dictionary.*")}
    assert on_disk == set(scan.files) - {TOP.name}
    assert len(scan.files) == len(set(scan.files)), "a file is included twice"


def test_files_defining_values_are_included_after_the_attribute_files(scan: Scan) -> None:
    """A file adding VALUEs comes after the file that defines the attribute."""
    for first, later in INCLUDE_ORDER:
        assert scan.files.index(first) < scan.files.index(later), (first, later)


def test_every_file_opens_with_a_comment_naming_its_source() -> None:
    """Each file starts with a comment block that names its source document."""
    for path in sorted(DICT_DIR.glob("dictionary*")):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines and lines[0].startswith("#"), path.name
        header = []
        for line in lines:
            if not line.startswith("#"):
                break
            header.append(line)
        assert "Source:" in "\n".join(header), path.name


# ---------------------------------------------------------------------------
# Consistency, from the scanner's independent reading.


def test_every_value_refers_to_a_defined_integer_attribute(scan: Scan) -> None:
    """Each VALUE names an attribute defined earlier, of an integer type, in range."""
    defined: dict[str, ScannedAttr] = {}
    for item in scan.lines:
        if isinstance(item, ScannedAttr):
            defined[item.name] = item
            continue
        attr = defined.get(item.attr)
        assert attr is not None, f"{item.where}: VALUE for undefined attribute {item.attr}"
        assert attr.type in INTEGER_TYPES, f"{item.where}: VALUE on {attr.type} attribute"
        assert 0 <= item.number < INTEGER_TYPES[attr.type], item.where


def test_no_vendor_and_code_is_defined_twice_with_conflicting_types(scan: Scan) -> None:
    """No (vendor, code) pair is defined with two different types or flags."""
    seen: dict[tuple[int, int], ScannedAttr] = {}
    for attr in scan.attrs:
        first = seen.setdefault((attr.vendor, attr.code), attr)
        shape = (attr.type, attr.has_tag, attr.encrypt, attr.concat)
        first_shape = (first.type, first.has_tag, first.encrypt, first.concat)
        assert shape == first_shape, f"{attr.where} conflicts with {first.where}"


def test_no_attribute_name_is_defined_twice(scan: Scan) -> None:
    """Each attribute name is defined once, so no file silently overrides another."""
    where: dict[str, str] = {}
    for attr in scan.attrs:
        assert attr.name not in where, f"{attr.name}: {where.get(attr.name)} and {attr.where}"
        where[attr.name] = attr.where


def test_no_value_name_is_given_two_numbers(scan: Scan) -> None:
    """Within one attribute, a VALUE name maps to exactly one number."""
    numbers: dict[tuple[str, str], int] = {}
    for value in scan.values:
        key = (value.attr, value.name)
        assert numbers.setdefault(key, value.number) == value.number, value.where


def test_vendor_codes_fit_one_octet_and_standard_codes_are_not_vendor_specific(
    scan: Scan,
) -> None:
    """Every code fits the 1-octet type field; attribute 26 is only Vendor-Specific."""
    for attr in scan.attrs:
        assert 1 <= attr.code <= 255, attr.where
        if attr.vendor == 0 and attr.code == 26:
            assert attr.name == "Vendor-Specific", attr.where


def test_vendor_ids_match_the_iana_enterprise_numbers(scan: Scan) -> None:
    """Each vendor has the enterprise number its documentation gives."""
    assert scan.vendors == {
        "ADSL-Forum": 3561,
        "Cisco": 9,
        "ChilliSpot": 14559,
        "ERX": 4874,
        "Huawei": 2011,
        "Juniper": 2636,
        "Microsoft": 311,
        "Mikrotik": 14988,
        "WISPr": 14122,
    }


# ---------------------------------------------------------------------------
# Our loader.


def test_the_whole_tree_loads_through_our_loader_without_warnings(
    ours: tuple[Dictionary, list[str]],
) -> None:
    """Our loader reads every line of the shipped tree and warns about none."""
    _dictionary, warnings = ours
    assert warnings == []


# name, vendor, code, type, has_tag, encrypt, concat
WELL_KNOWN = [
    ("User-Name", 0, 1, "string", False, 0, False),
    ("User-Password", 0, 2, "string", False, 1, False),
    ("CHAP-Password", 0, 3, "octets", False, 0, False),
    ("NAS-IP-Address", 0, 4, "ipaddr", False, 0, False),
    ("Service-Type", 0, 6, "integer", False, 0, False),
    ("Framed-IP-Address", 0, 8, "ipaddr", False, 0, False),
    ("Class", 0, 25, "octets", False, 0, False),
    ("Session-Timeout", 0, 27, "integer", False, 0, False),
    ("Calling-Station-Id", 0, 31, "string", False, 0, False),
    ("NAS-Identifier", 0, 32, "string", False, 0, False),
    ("Acct-Status-Type", 0, 40, "integer", False, 0, False),
    ("Acct-Session-Id", 0, 44, "string", False, 0, False),
    ("Acct-Terminate-Cause", 0, 49, "integer", False, 0, False),
    ("Acct-Input-Gigawords", 0, 52, "integer", False, 0, False),
    ("Event-Timestamp", 0, 55, "date", False, 0, False),
    ("CHAP-Challenge", 0, 60, "octets", False, 0, False),
    ("NAS-Port-Type", 0, 61, "integer", False, 0, False),
    ("Tunnel-Type", 0, 64, "integer", True, 0, False),
    ("Tunnel-Medium-Type", 0, 65, "integer", True, 0, False),
    ("Acct-Tunnel-Connection", 0, 68, "string", False, 0, False),
    ("Tunnel-Password", 0, 69, "string", True, 2, False),
    ("EAP-Message", 0, 79, "octets", False, 0, True),
    ("Message-Authenticator", 0, 80, "octets", False, 0, False),
    ("Tunnel-Private-Group-Id", 0, 81, "string", True, 0, False),
    ("Acct-Interim-Interval", 0, 85, "integer", False, 0, False),
    ("NAS-Port-Id", 0, 87, "string", False, 0, False),
    ("Chargeable-User-Identity", 0, 89, "octets", False, 0, False),
    ("NAS-IPv6-Address", 0, 95, "ipv6addr", False, 0, False),
    ("Framed-Interface-Id", 0, 96, "ifid", False, 0, False),
    ("Framed-IPv6-Prefix", 0, 97, "ipv6prefix", False, 0, False),
    ("Error-Cause", 0, 101, "integer", False, 0, False),
    ("Delegated-IPv6-Prefix", 0, 123, "ipv6prefix", False, 0, False),
    ("Framed-IPv6-Address", 0, 168, "ipv6addr", False, 0, False),
    ("DNS-Server-IPv6-Address", 0, 169, "ipv6addr", False, 0, False),
    ("Route-IPv6-Information", 0, 170, "ipv6prefix", False, 0, False),
    ("Delegated-IPv6-Prefix-Pool", 0, 171, "string", False, 0, False),
    ("ADSL-Agent-Circuit-Id", 3561, 1, "string", False, 0, False),
    ("ADSL-Agent-Remote-Id", 3561, 2, "string", False, 0, False),
    ("Actual-Data-Rate-Downstream", 3561, 130, "integer", False, 0, False),
    ("Cisco-AVPair", 9, 1, "string", False, 0, False),
    ("Cisco-NAS-Port", 9, 2, "string", False, 0, False),
    ("Cisco-Command-Code", 9, 252, "string", False, 0, False),
    ("MS-CHAP-Challenge", 311, 11, "octets", False, 0, False),
    ("MS-CHAP2-Response", 311, 25, "octets", False, 0, False),
    ("MS-CHAP2-Success", 311, 26, "octets", False, 0, False),
    ("MS-MPPE-Send-Key", 311, 16, "octets", False, 2, False),
    ("MS-MPPE-Recv-Key", 311, 17, "octets", False, 2, False),
    ("MS-Primary-DNS-Server", 311, 28, "ipaddr", False, 0, False),
    ("Mikrotik-Recv-Limit", 14988, 1, "integer", False, 0, False),
    ("Mikrotik-Rate-Limit", 14988, 8, "string", False, 0, False),
    ("Mikrotik-Host-IP", 14988, 10, "ipaddr", False, 0, False),
    ("Mikrotik-Address-List", 14988, 19, "string", False, 0, False),
    ("ERX-Virtual-Router-Name", 4874, 1, "string", False, 0, False),
    ("ERX-Primary-Dns", 4874, 4, "ipaddr", False, 0, False),
    ("ERX-Qos-Profile-Name", 4874, 26, "string", False, 0, False),
    ("ERX-Ipv6-Primary-Dns", 4874, 47, "ipv6addr", False, 0, False),
    ("ERX-Service-Activate", 4874, 65, "string", True, 0, False),
    ("ERX-Service-Deactivate", 4874, 66, "string", False, 0, False),
    ("Huawei-Input-Average-Rate", 2011, 2, "integer", False, 0, False),
    ("Huawei-Output-Peak-Rate", 2011, 6, "integer", False, 0, False),
    ("Huawei-Domain-Name", 2011, 138, "string", False, 0, False),
    ("WISPr-Location-ID", 14122, 1, "string", False, 0, False),
    ("WISPr-Bandwidth-Max-Down", 14122, 8, "integer", False, 0, False),
    ("ChilliSpot-Bandwidth-Max-Up", 14559, 4, "integer", False, 0, False),
    ("ChilliSpot-Max-Total-Octets", 14559, 3, "integer", False, 0, False),
    ("Juniper-Local-User-Name", 2636, 1, "string", False, 0, False),
]


@pytest.mark.parametrize(
    ("name", "vendor", "code", "type_", "tag", "encrypt", "concat"), WELL_KNOWN
)
def test_well_known_attribute_resolves_as_its_rfc_or_vendor_document_says(
    ours: tuple[Dictionary, list[str]],
    name: str,
    vendor: int,
    code: int,
    type_: str,
    tag: bool,
    encrypt: int,
    concat: bool,
) -> None:
    """A well-known attribute has the vendor, code, type and flags of its source."""
    dictionary, _warnings = ours
    defn = dictionary.by_name(name)
    assert defn.name == name
    assert (defn.vendor, defn.code) == (vendor, code)
    assert defn.type == type_
    assert (bool(defn.has_tag), defn.encrypt, bool(defn.concat)) == (tag, encrypt, concat)


# attribute, value name, number
WELL_KNOWN_VALUES = [
    ("Service-Type", "Framed-User", 2),
    ("Service-Type", "Call-Check", 10),
    ("Service-Type", "Authorize-Only", 17),
    ("Framed-Protocol", "PPP", 1),
    ("NAS-Port-Type", "Ethernet", 15),
    ("NAS-Port-Type", "Wireless-802.11", 19),
    ("NAS-Port-Type", "PPPoEoVLAN", 33),
    ("Acct-Status-Type", "Start", 1),
    ("Acct-Status-Type", "Interim-Update", 3),
    ("Acct-Status-Type", "Accounting-On", 7),
    ("Acct-Status-Type", "Tunnel-Start", 9),
    ("Acct-Terminate-Cause", "Idle-Timeout", 4),
    ("Acct-Terminate-Cause", "Admin-Reset", 6),
    ("Acct-Terminate-Cause", "Supplicant-Restart", 19),
    ("Tunnel-Type", "L2TP", 3),
    ("Tunnel-Type", "VLAN", 13),
    ("Tunnel-Medium-Type", "IEEE-802", 6),
    ("Error-Cause", "Residual-Context-Removed", 201),
    ("Error-Cause", "Session-Context-Not-Found", 503),
    ("Error-Cause", "Invalid-Attribute-Value", 407),
    ("Error-Cause", "Multiple-Session-Selection-Unsupported", 508),
    ("Termination-Action", "RADIUS-Request", 1),
    ("MS-MPPE-Encryption-Policy", "Encryption-Required", 2),
    ("ERX-Service-Statistics", "Time-Volume", 2),
]


@pytest.mark.parametrize(("attr", "value_name", "number"), WELL_KNOWN_VALUES)
def test_well_known_value_name_maps_to_its_number(
    ours: tuple[Dictionary, list[str]], attr: str, value_name: str, number: int
) -> None:
    """A named value of a well-known attribute has the number of its source."""
    dictionary, _warnings = ours
    assert dictionary.by_name(attr).values[value_name] == number


def test_our_loader_agrees_with_every_attribute_line(
    ours: tuple[Dictionary, list[str]], scan: Scan
) -> None:
    """Our loader gives every ATTRIBUTE line of the tree its vendor, code, type and flags."""
    dictionary, _warnings = ours
    for attr in scan.attrs:
        defn = dictionary.by_name(attr.name)
        got = (defn.vendor, defn.code, str(defn.type), defn.has_tag, defn.encrypt, defn.concat)
        want = (attr.vendor, attr.code, attr.type, attr.has_tag, attr.encrypt, attr.concat)
        assert got == want, attr.where


def test_our_loader_keeps_every_value_line(ours: tuple[Dictionary, list[str]], scan: Scan) -> None:
    """Our loader attaches every VALUE line to its attribute with its number."""
    dictionary, _warnings = ours
    for value in scan.values:
        assert dictionary.by_name(value.attr).values[value.name] == value.number, value.where


# ---------------------------------------------------------------------------
# pyrad, as an independent check of the syntax.


def test_pyrad_reads_the_whole_tree_without_skipping_or_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pyrad parses the tree, skips no attribute and logs no warning."""
    from pyrad.dictionary import Dictionary

    with caplog.at_level(logging.DEBUG, logger="pyrad"):
        dictionary = Dictionary(str(TOP))
    assert dictionary.skipped_attributes == set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_pyrad_agrees_with_every_attribute_and_value_line(pyrad_dict: Any, scan: Scan) -> None:
    """pyrad gives every ATTRIBUTE its code, type, vendor and flags, and every VALUE its number."""
    vendor_ids = {0: ""} | {vid: name for name, vid in scan.vendors.items()}
    assert len(pyrad_dict.attributes) == len(scan.attrs)
    for attr in scan.attrs:
        got = pyrad_dict.attributes[attr.name]
        assert got.code == attr.code, attr.where
        assert got.type == attr.type, attr.where
        assert got.vendor == vendor_ids[attr.vendor], attr.where
        assert (bool(got.has_tag), got.encrypt) == (attr.has_tag, attr.encrypt), attr.where
    for value in scan.values:
        # pyrad keeps VALUE numbers already encoded in the attribute's wire form.
        encoded = pyrad_dict.attributes[value.attr].values.GetForward(value.name)
        assert int.from_bytes(encoded, "big") == value.number, value.where


def test_our_loader_warns_about_lines_like_the_ones_this_tree_must_not_have(
    tmp_path: Path,
) -> None:
    """The zero-warning check is meaningful: a broken snippet does produce warnings."""
    from ispcare_radius.protocol.dictfile import load_dictionary

    broken = tmp_path / "dictionary"
    broken.write_text(
        "ATTRIBUTE\tService-Type\t6\tinteger\n"
        "VALUE\tService-Typ\tFramed-User\t2\n"
        "ATTRIBUTE\tOdd-Thing\t250\tno-such-type\n"
    )
    _dictionary, warnings = load_dictionary([broken])
    assert len(warnings) == 2


def test_the_scanner_sees_every_vendor_and_the_standard_space(scan: Scan) -> None:
    """The scanner files vendor attributes under their vendor's id and others under 0."""
    by_name = {a.name: a for a in scan.attrs}
    assert by_name["Mikrotik-Rate-Limit"].vendor == 14988
    assert by_name["User-Name"].vendor == 0
    assert {a.vendor for a in scan.attrs} == {0, *scan.vendors.values()}


# ---------------------------------------------------------------------------
# FreeRADIUS's own client, as a third reader and encoder.

RADCLIENT_INPUT = (
    'User-Name = "synthetic-user-01", '
    'Mikrotik-Rate-Limit = "10M/20M", '
    "Tunnel-Type:1 = VLAN, "
    'ERX-Service-Activate:2 = "svc-a", '
    "Service-Type = Authorize-Only, "
    "NAS-Port-Type = PPPoEoVLAN, "
    "Framed-IPv6-Prefix = 2001:db8:7::/48, "
    "Event-Timestamp = 1700000000"
)


@pytest.mark.interop
def test_radclient_reads_the_tree_and_encodes_attributes_from_several_files(
    tmp_path: Path,
) -> None:
    """radclient loads our tree and sends the wire bytes our codes and types imply."""
    if shutil.which("radclient") is None:
        pytest.fail("radclient (freeradius-utils) is not installed")
    request = tmp_path / "request.txt"
    request.write_text(RADCLIENT_INPUT + "\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(10)
        port = sink.getsockname()[1]
        command = ["radclient", "-D", str(DICT_DIR), "-f", str(request), "-c", "1", "-r", "1"]
        command += ["-t", "2", f"127.0.0.1:{port}", "auth", "synthetic-secret"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            packet, _addr = sink.recvfrom(4096)
        except TimeoutError:
            _out, err = proc.communicate(timeout=30)
            pytest.fail(f"radclient sent nothing: {err.decode(errors='replace')}")
        # The packet is all this test needs; no server will ever answer it.
        proc.kill()
        _out, err = proc.communicate(timeout=30)
    assert b"dict_init" not in err, err.decode(errors="replace")
    assert packet[0] == 1  # Access-Request
    body = packet[20:]
    # Vendor-Specific(26), vendor 14988, Mikrotik-Rate-Limit(8).
    assert b"\x1a\x0f\x00\x00\x3a\x8c\x08\x09" + b"10M/20M" in body
    # Tunnel-Type(64), tag 1, VLAN(13) in the low three octets (RFC 2868 3.1).
    assert b"\x40\x06\x01\x00\x00\x0d" in body
    # Vendor 4874, ERX-Service-Activate(65), tagged string: tag octet 2 first.
    assert b"\x1a\x0e\x00\x00\x13\x0a\x41\x08\x02" + b"svc-a" in body
    # Service-Type(6) = Authorize-Only(17); NAS-Port-Type(61) = PPPoEoVLAN(33).
    assert b"\x06\x06\x00\x00\x00\x11" in body
    assert b"\x3d\x06\x00\x00\x00\x21" in body
    # Framed-IPv6-Prefix(97): reserved, /48, then the prefix; RFC 3162 section
    # 2.3 lets the sender pad it to the full 16 octets.
    at = body.index(b"\x00\x30\x20\x01\x0d\xb8\x00\x07")
    assert body[at - 2] == 97 and body[at - 1] in (10, 20)
    # Event-Timestamp(55) = 1700000000.
    assert b"\x37\x06" + (1700000000).to_bytes(4, "big") in body
