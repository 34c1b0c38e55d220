"""Dictionary loading (snippets and Debian's tree) and packet-level encode/decode."""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ispcare_radius.protocol.attrtypes import AttrType
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, parse

DEBIAN = Path("/usr/share/freeradius/dictionary")
AUTH = bytes(range(16))
SECRET = b"dictionary-test"

BASE = """\
# comment line
ATTRIBUTE   User-Name           1   string
ATTRIBUTE   User-Password       2   string  encrypt=1
ATTRIBUTE   Service-Type        6   integer
ATTRIBUTE   Framed-IP-Address   8   ipaddr
ATTRIBUTE   Vendor-Specific     26  vsa
ATTRIBUTE   Tunnel-Type         64  integer has_tag
ATTRIBUTE   Tunnel-Password     69  string  has_tag,encrypt=2
ATTRIBUTE   EAP-Message         79  octets  concat
ATTRIBUTE   Extended-Attribute-1 241 extended
ATTRIBUTE   Extended-Attribute-5 245 long-extended
ATTRIBUTE   Frag-Status         241.1   integer
ATTRIBUTE   Long-Thing          245.7   octets
ATTRIBUTE   Extended-Vendor-Specific-5  245.26  evs
VALUE   Service-Type    Framed-User     2
VALUE   Tunnel-Type     VLAN            13
VENDOR      Mikrotik    14988
BEGIN-VENDOR    Mikrotik
ATTRIBUTE   Mikrotik-Rate-Limit 8   string
ATTRIBUTE   Mikrotik-Group      3   string  # trailing comment
END-VENDOR      Mikrotik
VENDOR      Wide        4242    format=2,2
BEGIN-VENDOR    Wide
ATTRIBUTE   Wide-Thing  300 integer
END-VENDOR      Wide
VENDOR      Ext         11344
BEGIN-VENDOR    Ext format=Extended-Vendor-Specific-5
ATTRIBUTE   Ext-Blob    9   octets
END-VENDOR      Ext
"""


def _load(tmp_path: Path, text: str, name: str = "dictionary") -> tuple[Dictionary, list[str]]:
    path = tmp_path / name
    path.write_text(text)
    return load_dictionary([path])


@pytest.fixture
def small(tmp_path: Path) -> Dictionary:
    d, warnings = _load(tmp_path, BASE)
    assert warnings == []
    return d


def test_snippet_definitions_resolve(small: Dictionary) -> None:
    """ATTRIBUTE, VALUE, VENDOR and BEGIN-VENDOR lines give the expected table entries."""
    assert small.by_name("user-name").code == 1
    assert small.by_name("User-Password").encrypt == 1
    tunnel = small.by_name("Tunnel-Password")
    assert (tunnel.has_tag, tunnel.encrypt) == (True, 2)
    assert small.by_name("EAP-Message").concat
    assert small.find(14988, 8) is small.by_name("Mikrotik-Rate-Limit")
    assert small.find(0, 6) is small.by_name("Service-Type")
    assert small.find(0, 99) is None
    assert small.vendor_id("mikrotik") == 14988
    assert small.value_of("Service-Type", "framed-user") == 2
    assert small.by_name("Frag-Status").parent == (241,)
    blob = small.by_name("Ext-Blob")
    assert (blob.vendor, blob.parent, blob.code) == (11344, (245, 26), 9)
    assert small.find_nested(11344, (245, 26, 9)) is blob
    with pytest.raises(KeyError):
        small.by_name("Nope")
    with pytest.raises(KeyError):
        small.value_of("Service-Type", "Nope")


def test_include_relative_optional_and_missing(tmp_path: Path) -> None:
    """$INCLUDE is relative to its file; $INCLUDE- may be missing; a missing $INCLUDE warns."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "dictionary.extra").write_text("ATTRIBUTE Extra-Attr 230 string\n")
    d, warnings = _load(
        tmp_path,
        "$INCLUDE sub/dictionary.extra\n$INCLUDE- sub/absent\n$INCLUDE sub/also-absent\n",
    )
    assert d.by_name("Extra-Attr").code == 230
    assert len(warnings) == 1
    assert "also-absent" in warnings[0]


def test_include_loop_is_reported_not_followed(tmp_path: Path) -> None:
    """A file including itself gives one warning and loads once."""
    d, warnings = _load(tmp_path, "ATTRIBUTE A 231 string\n$INCLUDE dictionary\n")
    assert d.by_name("A").code == 231
    assert len(warnings) == 1 and "loop" in warnings[0]


def test_unusable_lines_give_one_warning_each(tmp_path: Path) -> None:
    """Unknown types, flags, keywords, vendors and VALUE targets each give one warning."""
    text = """\
ATTRIBUTE Good 1 string
ATTRIBUTE Bad-Type 2 frobnicate
ATTRIBUTE Bad-Flag 3 string sparkly
ATTRIBUTE Bad-Number 4x string
ATTRIBUTE Short 5
VALUE Missing-Attr Thing 1
VALUE Good Oops notanumber
FLAGS internal
BEGIN-VENDOR Nobody
ATTRIBUTE Nobody-Attr 1 string
END-VENDOR Nobody
VENDOR Broken 99 format=3,1
"""
    d, warnings = _load(tmp_path, text)
    assert d.by_name("Good").code == 1
    assert len(warnings) == 10
    assert all(re.match(r".*dictionary:\d+: ", w) for w in warnings)
    for name in ("Bad-Type", "Bad-Flag", "Bad-Number", "Short", "Nobody-Attr"):
        with pytest.raises(KeyError):
            d.by_name(name)


def test_later_definitions_override_earlier_ones(tmp_path: Path) -> None:
    """A name or number defined again later in the load order wins."""
    d, _ = _load(
        tmp_path,
        "ATTRIBUTE Old-Name 4 ipaddr\nATTRIBUTE NAS-IP-Address 4 ipaddr\n"
        "ATTRIBUTE Thing 200 string\nATTRIBUTE Thing 201 integer\n",
    )
    assert d.find(0, 4) is d.by_name("NAS-IP-Address")
    assert d.by_name("Old-Name").code == 4
    assert d.by_name("Thing").code == 201


def test_tlv_blocks_and_foreign_protocols(tmp_path: Path) -> None:
    """BEGIN-TLV nests member numbers; non-RADIUS BEGIN-PROTOCOL blocks are skipped."""
    text = """\
ATTRIBUTE Outer 173 tlv
BEGIN-TLV Outer
ATTRIBUTE Inner 2 ipaddr
END-TLV Outer
ATTRIBUTE Dotted 173.3 integer
PROTOCOL DHCPv4 2
BEGIN-PROTOCOL DHCPv4
ATTRIBUTE DHCP-Only 1 string
END-PROTOCOL DHCPv4
"""
    d, warnings = _load(tmp_path, text)
    assert warnings == []
    assert d.by_name("Inner").parent == (173,)
    assert d.by_name("Dotted").parent == (173,)
    with pytest.raises(KeyError):
        d.by_name("DHCP-Only")


def _round_trip(d: Dictionary, *encoded: bytes, code: int = 2) -> list[tuple[str, object, object]]:
    packet = parse(build_packet(code, 1, AUTH, b"".join(encoded)))
    return [
        (defn.name, value, tag)
        for defn, value, tag in d.decode(packet, secret=SECRET, request_authenticator=AUTH)
    ]


def test_encode_decode_standard_vendor_and_tagged(small: Dictionary) -> None:
    """Standard, vendor, tagged and hidden attributes round-trip through encode and decode."""
    out = _round_trip(
        small,
        small.encode("User-Name", "alice"),
        small.encode("Service-Type", "Framed-User"),
        small.encode("Framed-IP-Address", "10.0.0.1"),
        small.encode("Mikrotik-Rate-Limit", "10M/20M"),
        small.encode("Tunnel-Type", "VLAN", tag=1),
        small.encode("Tunnel-Password", "t0p", tag=2, secret=SECRET, authenticator=AUTH),
        small.encode("Wide-Thing", 7),
    )
    assert out == [
        ("User-Name", "alice", None),
        ("Service-Type", 2, None),
        ("Framed-IP-Address", IPv4Address("10.0.0.1"), None),
        ("Mikrotik-Rate-Limit", "10M/20M", None),
        ("Tunnel-Type", 13, 1),
        ("Tunnel-Password", "t0p", 2),
        ("Wide-Thing", 7, None),
    ]


def test_vendor_attribute_wire_format(small: Dictionary) -> None:
    """A vendor attribute is wrapped in Vendor-Specific with the vendor's type/length sizes."""
    assert small.encode("Mikrotik-Rate-Limit", "1M") == bytes.fromhex("1a0a00003a8c0804314d")
    assert small.encode("Wide-Thing", 1) == bytes.fromhex("1a0e00001092012c000800000001")


def test_user_password_is_hidden_and_needs_a_secret(small: Dictionary) -> None:
    """User-Password is hidden on encode, unhidden on decode, and raw without a secret."""
    wire = small.encode("User-Password", "pw", secret=SECRET, authenticator=AUTH)
    assert b"pw" not in wire and len(wire) == 18
    packet = parse(build_packet(1, 1, AUTH, wire))
    assert small.decode(packet, secret=SECRET)[0][1] == "pw"
    assert small.decode(packet)[0][1] == wire[2:]
    with pytest.raises(ValueError):
        small.encode("User-Password", "pw")


def test_concat_attribute_splits_and_joins(small: Dictionary) -> None:
    """A concat value over 253 octets is split on encode and joined on decode."""
    blob = bytes(range(256)) * 3
    wire = small.encode("EAP-Message", blob)
    assert len(parse(build_packet(11, 1, AUTH, wire)).get_all(79)) == 4
    out = _round_trip(small, small.encode("User-Name", "u"), wire)
    assert out == [("User-Name", "u", None), ("EAP-Message", blob, None)]


def test_extended_long_extended_and_evs_round_trip(small: Dictionary) -> None:
    """RFC 6929 extended, fragmented long-extended and EVS values round-trip."""
    long_value = bytes(range(200)) * 3
    frag = small.encode("Long-Thing", long_value)
    assert [b[:2] for b in _split_raw(frag)] == [bytes((245, 255))] * 2 + [bytes((245, 102))]
    out = _round_trip(
        small,
        small.encode("Frag-Status", 2),
        frag,
        small.encode("Ext-Blob", b"\x01\x02"),
    )
    assert out == [
        ("Frag-Status", 2, None),
        ("Long-Thing", long_value, None),
        ("Ext-Blob", b"\x01\x02", None),
    ]
    assert small.encode("Frag-Status", 2) == bytes.fromhex("f1070100000002")


def _split_raw(wire: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(wire):
        out.append(wire[pos : pos + wire[pos + 1]])
        pos += wire[pos + 1]
    return out


def test_unknown_and_malformed_attributes_become_raw_octets(small: Dictionary) -> None:
    """Unknown attributes get synthetic names; a malformed known value falls back to raw octets."""
    unknown_vsa = (14988).to_bytes(4) + bytes((99, 4)) + b"hi"
    attrs = (
        bytes((250, 3))
        + b"x"
        + bytes((26, 2 + len(unknown_vsa)))
        + unknown_vsa
        + bytes((8, 5))
        + b"abc"
        + bytes((241, 4, 9))
        + b"z"
    )
    packet = parse(build_packet(2, 1, AUTH, attrs))
    out = [(d.name, d.type, v) for d, v, _ in small.decode(packet)]
    assert out == [
        ("Attr-250", AttrType.OCTETS, b"x"),
        ("Attr-26.14988.99", AttrType.OCTETS, b"hi"),
        ("Attr-8", AttrType.OCTETS, b"abc"),
        ("Attr-241.9", AttrType.OCTETS, b"z"),
    ]


def test_unwalkable_vendor_specific_is_kept_whole(small: Dictionary) -> None:
    """A Vendor-Specific value whose sub-attributes do not parse is returned whole as Attr-26."""
    bad = (14988).to_bytes(4) + bytes((8, 50)) + b"x"
    packet = parse(build_packet(2, 1, AUTH, bytes((26, 2 + len(bad))) + bad))
    [(defn, value, _)] = small.decode(packet)
    assert (defn.name, value) == ("Attr-26", bad)


def test_broken_long_extended_fragment_chain_is_raw(small: Dictionary) -> None:
    """A long-extended fragment with the More flag but no follower decodes as raw octets."""
    attrs = bytes((245, 6, 7, 0x80)) + b"ab" + bytes((1, 3)) + b"u"
    packet = parse(build_packet(2, 1, AUTH, attrs))
    out = [(d.name, v) for d, v, _ in small.decode(packet)]
    assert out == [("Attr-245.7", b"ab"), ("User-Name", "u")]


@pytest.fixture(scope="module")
def debian() -> tuple[Dictionary, list[str]]:
    if not DEBIAN.exists():
        pytest.skip("Debian FreeRADIUS dictionaries not installed")
    return load_dictionary([DEBIAN])


def test_debian_tree_loads_well_known_attributes(debian: tuple[Dictionary, list[str]]) -> None:
    """Debian's FreeRADIUS tree resolves well-known standard and vendor attributes."""
    d, _ = debian
    rate = d.by_name("Mikrotik-Rate-Limit")
    assert (rate.vendor, rate.code, rate.type) == (14988, 8, AttrType.STRING)
    avpair = d.by_name("Cisco-AVPair")
    assert (avpair.vendor, avpair.code) == (9, 1)
    eap = d.by_name("EAP-Message")
    assert (eap.vendor, eap.code, eap.concat) == (0, 79, True)
    assert d.by_name("Tunnel-Password").encrypt == 2
    assert d.by_name("Framed-IPv6-Prefix").type is AttrType.IPV6PREFIX
    assert d.find(0, 4) is d.by_name("NAS-IP-Address")
    assert d.value_of("Service-Type", "Framed-User") == 2
    assert d.by_name("Frag-Status").parent == (241,)


def test_debian_tree_loads_at_least_90_percent_of_attributes(
    debian: tuple[Dictionary, list[str]],
) -> None:
    """At least 90% of the ATTRIBUTE names in the included Debian files resolve."""
    d, warnings = debian
    files = [DEBIAN] + [
        DEBIAN.parent / m
        for m in re.findall(r"^\$INCLUDE\s+(\S+)", DEBIAN.read_text(), re.MULTILINE)
    ]
    names = [
        n
        for f in files
        if f.exists()
        for n in re.findall(r"^ATTRIBUTE\s+(\S+)", f.read_text(errors="replace"), re.MULTILINE)
    ]
    resolved = sum(1 for n in names if _resolves(d, n))
    print(
        f"Debian dictionary: {len(names)} ATTRIBUTE lines, {resolved} resolve, "
        f"{len(warnings)} warnings"
    )
    assert len(names) > 5000
    assert resolved >= 0.9 * len(names)


def _resolves(d: Dictionary, name: str) -> bool:
    try:
        d.by_name(name)
    except KeyError:
        return False
    return True
