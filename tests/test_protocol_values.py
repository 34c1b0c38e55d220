"""Typed values: encode/decode round trips per type, tags, text parsing."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispcare_radius.protocol.attrtypes import AttrDef, AttrType
from ispcare_radius.protocol.codes import DecodeError, DropReason
from ispcare_radius.protocol.values import (
    DECODERS,
    Value,
    decode_tagged,
    decode_value,
    encode_value,
    parse_text_value,
)


def _def(type_: AttrType, **kw: object) -> AttrDef:
    return AttrDef(name=f"Test-{type_.value}", vendor=0, code=200, type=type_, **kw)  # type: ignore[arg-type]


_V4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
_V6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
_STRATEGIES: dict[AttrType, st.SearchStrategy[Value]] = {
    AttrType.STRING: st.text(max_size=60).filter(lambda s: len(s.encode()) <= 253),
    AttrType.OCTETS: st.binary(max_size=253),
    AttrType.ABINARY: st.binary(max_size=253),
    AttrType.TLV: st.binary(max_size=253),
    AttrType.VSA: st.binary(max_size=253),
    AttrType.EXTENDED: st.binary(max_size=253),
    AttrType.LONG_EXTENDED: st.binary(max_size=253),
    AttrType.EVS: st.binary(max_size=253),
    AttrType.IPADDR: _V4,
    AttrType.IPV6ADDR: _V6,
    AttrType.COMBO_IP: st.one_of(_V4, _V6),
    AttrType.IPV6PREFIX: st.builds(
        lambda a, n: IPv6Network((a, n), strict=False), _V6, st.integers(0, 128)
    ),
    AttrType.IPV4PREFIX: st.builds(
        lambda a, n: IPv4Network((a, n), strict=False), _V4, st.integers(0, 32)
    ),
    AttrType.INTEGER: st.integers(0, 2**32 - 1),
    AttrType.DATE: st.integers(0, 2**32 - 1),
    AttrType.INTEGER64: st.integers(0, 2**64 - 1),
    AttrType.BYTE: st.integers(0, 255),
    AttrType.SHORT: st.integers(0, 65535),
    AttrType.SIGNED: st.integers(-(2**31), 2**31 - 1),
    AttrType.ETHER: st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":")),
    AttrType.IFID: st.binary(min_size=8, max_size=8).map(lambda b: b.hex(":", 2)),
}


def test_every_type_has_a_decoder_and_a_test_strategy() -> None:
    """Each AttrType has a wire decoder and a round-trip strategy here."""
    assert set(DECODERS) == set(AttrType)
    assert set(_STRATEGIES) == set(AttrType)


@settings(max_examples=40, deadline=None)
@pytest.mark.parametrize("type_", list(AttrType))
@given(data=st.data())
def test_typed_value_round_trips(type_: AttrType, data: st.DataObject) -> None:
    """encode_value then decode_value returns the same value for every type."""
    defn = _def(type_)
    value = data.draw(_STRATEGIES[type_])
    assert decode_value(defn, encode_value(defn, value)) == value


@pytest.mark.parametrize(
    ("type_", "size"),
    [
        (AttrType.IPADDR, 3),
        (AttrType.IPV6ADDR, 4),
        (AttrType.INTEGER, 3),
        (AttrType.INTEGER64, 4),
        (AttrType.SHORT, 3),
        (AttrType.BYTE, 2),
        (AttrType.ETHER, 5),
        (AttrType.IFID, 6),
        (AttrType.COMBO_IP, 5),
        (AttrType.IPV6PREFIX, 1),
        (AttrType.IPV4PREFIX, 5),
        (AttrType.DATE, 0),
        (AttrType.SIGNED, 8),
    ],
)
def test_wrong_length_values_are_malformed(type_: AttrType, size: int) -> None:
    """A value whose length does not fit its type raises malformed_attribute."""
    with pytest.raises(DecodeError) as info:
        decode_value(_def(type_), bytes(size))
    assert info.value.reason is DropReason.MALFORMED_ATTRIBUTE


def test_ipv6_prefix_with_short_prefix_field_decodes() -> None:
    """An ipv6prefix may carry only the significant prefix octets (RFC 3162 section 2.3)."""
    defn = _def(AttrType.IPV6PREFIX)
    assert decode_value(defn, bytes((0, 32)) + bytes.fromhex("20010db8")) == IPv6Network(
        "2001:db8::/32"
    )
    with pytest.raises(DecodeError):
        decode_value(defn, bytes((0, 64)) + bytes.fromhex("20010db8"))


def test_non_utf8_string_decodes_to_bytes() -> None:
    """A string attribute that is not valid UTF-8 comes back as the raw bytes."""
    assert decode_value(_def(AttrType.STRING), b"\xff\xfe") == b"\xff\xfe"


_VALUES = MappingProxyType({"Framed-User": 2, "Login-User": 1})


def test_integer_value_names_encode() -> None:
    """An integer attribute accepts a VALUE name, matched case-insensitively."""
    defn = _def(AttrType.INTEGER, values=_VALUES)
    assert encode_value(defn, "Framed-User") == bytes((0, 0, 0, 2))
    assert encode_value(defn, "framed-user") == bytes((0, 0, 0, 2))
    with pytest.raises(ValueError):
        encode_value(defn, "No-Such-Value")


def test_tagged_integer_uses_the_first_octet_as_tag() -> None:
    """A has_tag integer is tag + 24-bit value (RFC 2868 section 3.1)."""
    defn = _def(AttrType.INTEGER, has_tag=True)
    assert encode_value(defn, 13, tag=1) == bytes((1, 0, 0, 13))
    assert decode_tagged(defn, bytes((1, 0, 0, 13))) == (13, 1)
    assert decode_tagged(defn, bytes((0, 0, 0, 13))) == (13, None)
    with pytest.raises(ValueError):
        encode_value(defn, 1 << 24, tag=1)


def test_tagged_string_tag_is_optional_and_protects_low_first_octets() -> None:
    """A has_tag string gets a tag octet when tagged or when its first octet is <= 0x1F."""
    defn = _def(AttrType.STRING, has_tag=True)
    assert encode_value(defn, "vlan100") == b"vlan100"
    assert encode_value(defn, "vlan100", tag=3) == b"\x03vlan100"
    assert decode_tagged(defn, b"\x03vlan100") == ("vlan100", 3)
    assert decode_tagged(defn, b"vlan100") == ("vlan100", None)
    assert encode_value(defn, "\x05x") == b"\x00\x05x"
    assert decode_tagged(defn, b"\x00\x05x") == ("\x05x", None)


def test_tags_are_refused_where_they_do_not_belong() -> None:
    """A tag on an untagged attribute or outside 0..31 raises ValueError."""
    with pytest.raises(ValueError):
        encode_value(_def(AttrType.INTEGER), 1, tag=1)
    with pytest.raises(ValueError):
        encode_value(_def(AttrType.STRING, has_tag=True), "x", tag=32)


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        (AttrType.IPADDR, "10.0.0.1", IPv4Address("10.0.0.1")),
        (AttrType.IPV6ADDR, "2001:db8::1", IPv6Address("2001:db8::1")),
        (AttrType.COMBO_IP, "2001:db8::1", IPv6Address("2001:db8::1")),
        (AttrType.IPV6PREFIX, "2001:db8::/48", IPv6Network("2001:db8::/48")),
        (AttrType.IPV4PREFIX, "10.1.0.0/16", IPv4Network("10.1.0.0/16")),
        (AttrType.OCTETS, "0x0102", b"\x01\x02"),
        (AttrType.OCTETS, "plain", b"plain"),
        (AttrType.STRING, "0x0102", "0x0102"),
        (AttrType.INTEGER, "3600", 3600),
        (AttrType.INTEGER, "0x10", 16),
        (AttrType.SIGNED, "-5", -5),
        (AttrType.DATE, "2024-01-01T00:00:00Z", 1704067200),
        (AttrType.DATE, "1704067200", 1704067200),
        (AttrType.ETHER, "00-11-22-AA-BB-CC", "00:11:22:aa:bb:cc"),
        (AttrType.ETHER, "0011.22aa.bbcc", "00:11:22:aa:bb:cc"),
        (AttrType.IFID, "0:0:0:1", "0000:0000:0000:0001"),
    ],
)
def test_parse_text_value(type_: AttrType, text: str, expected: Value) -> None:
    """Configuration text is read into the typed value."""
    assert parse_text_value(_def(type_), text) == expected


def test_parse_text_value_reads_value_names() -> None:
    """Text naming a VALUE gives its number."""
    assert parse_text_value(_def(AttrType.INTEGER, values=_VALUES), "Framed-User") == 2


@pytest.mark.parametrize(
    ("type_", "text"),
    [
        (AttrType.IPADDR, "10.0.0.256"),
        (AttrType.INTEGER, "4294967296"),
        (AttrType.BYTE, "256"),
        (AttrType.INTEGER, "ten"),
        (AttrType.IPV6PREFIX, "2001:db8::1/48"),
        (AttrType.ETHER, "00:11:22:33:44"),
        (AttrType.OCTETS, "0xzz"),
    ],
)
def test_bad_text_raises_value_error_without_echoing_it(type_: AttrType, text: str) -> None:
    """Unreadable text raises ValueError whose message does not contain the text."""
    with pytest.raises(ValueError) as info:
        parse_text_value(_def(type_), text)
    assert text not in str(info.value)


def test_encode_rejects_values_of_the_wrong_kind() -> None:
    """An IPv6 address for an ipaddr attribute or a negative integer raises ValueError."""
    with pytest.raises(ValueError):
        encode_value(_def(AttrType.IPADDR), IPv6Address("::1"))
    with pytest.raises(ValueError):
        encode_value(_def(AttrType.INTEGER), -1)
    with pytest.raises(ValueError):
        encode_value(_def(AttrType.ETHER), b"\x00")
