"""Packet framing: build/parse round trips, accessors, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispcare_radius.protocol.codes import Code, DecodeError, DropReason
from ispcare_radius.protocol.packet import Packet, build_packet, encode_attributes, parse

# Types 80 (Message-Authenticator) and 2 (User-Password) have length rules
# checked by parse; they are covered by their own tests.
_FREE_TYPES = st.integers(0, 255).filter(lambda t: t not in (2, 80))
_ATTRIBUTES = st.lists(st.tuples(_FREE_TYPES, st.binary(max_size=253)), max_size=15).filter(
    lambda attrs: sum(len(v) + 2 for _, v in attrs) <= 4076
)


@settings(max_examples=300, deadline=None)
@given(
    code=st.sampled_from(list(Code)),
    identifier=st.integers(0, 255),
    authenticator=st.binary(min_size=16, max_size=16),
    attributes=_ATTRIBUTES,
)
def test_build_then_parse_returns_the_same_attributes(
    code: Code, identifier: int, authenticator: bytes, attributes: list[tuple[int, bytes]]
) -> None:
    """A random attribute list survives encode_attributes -> build_packet -> parse unchanged."""
    wire = build_packet(code, identifier, authenticator, encode_attributes(attributes))
    packet = parse(wire)
    assert packet.code == code
    assert packet.identifier == identifier
    assert packet.authenticator == authenticator
    assert list(packet.attributes) == attributes
    assert packet.raw == wire


def _sample() -> Packet:
    vsa = (14988).to_bytes(4) + bytes((8, 9)) + b"10M/10M" + bytes((1, 3)) + b"x"
    attrs = encode_attributes([(1, b"alice"), (33, b"one"), (26, vsa), (33, b"two")])
    return parse(build_packet(Code.ACCESS_REQUEST, 7, bytes(16), attrs))


def test_get_returns_first_and_get_all_returns_every_value_in_order() -> None:
    """get() returns the first value of a type, get_all() all of them in packet order."""
    packet = _sample()
    assert packet.get(33) == b"one"
    assert packet.get_all(33) == [b"one", b"two"]
    assert packet.get(99) is None
    assert packet.get_all(99) == []


def test_vsa_finds_a_vendor_sub_attribute() -> None:
    """vsa() walks the vendor's sub-attributes and misses other vendors and types."""
    packet = _sample()
    assert packet.vsa(14988, 8) == b"10M/10M"
    assert packet.vsa(14988, 1) == b"x"
    assert packet.vsa(14988, 9) is None
    assert packet.vsa(9, 8) is None


def test_vsa_skips_a_malformed_vendor_specific_value() -> None:
    """A Vendor-Specific value whose sub-attribute overruns yields None, not an error."""
    bad = (14988).to_bytes(4) + bytes((8, 40)) + b"short"
    packet = parse(build_packet(1, 1, bytes(16), encode_attributes([(26, bad)])))
    assert packet.vsa(14988, 8) is None


def test_repr_shows_no_attribute_values() -> None:
    """The repr of a packet names attribute types but never their (personal) values."""
    text = repr(_sample())
    assert "alice" not in text
    assert "attribute_types=[1,33,26,33]" in text


def test_too_many_attributes_is_dropped() -> None:
    """More attributes than max_attributes raises too_many_attributes."""
    wire = build_packet(1, 1, bytes(16), encode_attributes([(1, b"a")] * 11))
    assert len(parse(wire, max_attributes=11).attributes) == 11
    with pytest.raises(DecodeError) as info:
        parse(wire, max_attributes=10)
    assert info.value.reason is DropReason.TOO_MANY_ATTRIBUTES


def test_message_authenticator_must_be_16_octets() -> None:
    """A Message-Authenticator of any length but 16 is malformed_attribute."""
    for size in (0, 15, 17):
        wire = build_packet(12, 1, bytes(16), encode_attributes([(80, bytes(size))]))
        with pytest.raises(DecodeError) as info:
            parse(wire)
        assert info.value.reason is DropReason.MALFORMED_ATTRIBUTE
    assert parse(build_packet(12, 1, bytes(16), encode_attributes([(80, bytes(16))])))


def test_user_password_length_is_checked_only_in_access_request() -> None:
    """A hidden User-Password of 17 octets is malformed in an Access-Request only."""
    attrs = encode_attributes([(2, bytes(17))])
    with pytest.raises(DecodeError) as info:
        parse(build_packet(Code.ACCESS_REQUEST, 1, bytes(16), attrs))
    assert info.value.reason is DropReason.MALFORMED_ATTRIBUTE
    assert parse(build_packet(Code.ACCOUNTING_REQUEST, 1, bytes(16), attrs)).get(2) == bytes(17)


def test_parse_accepts_bytearray_and_memoryview() -> None:
    """parse() accepts any bytes-like input and stores bytes."""
    wire = build_packet(1, 1, bytes(16), encode_attributes([(1, b"a")]))
    for form in (bytearray(wire), memoryview(wire)):
        packet = parse(form)  # type: ignore[arg-type]
        assert packet.raw == wire
        assert type(packet.raw) is bytes


def test_encode_attributes_rejects_long_values_and_bad_types() -> None:
    """Values over 253 octets and types outside 0..255 raise ValueError."""
    assert encode_attributes([(1, bytes(253))])[:2] == bytes((1, 255))
    with pytest.raises(ValueError):
        encode_attributes([(1, bytes(254))])
    with pytest.raises(ValueError):
        encode_attributes([(256, b"")])


def test_build_packet_rejects_oversized_packets_and_bad_authenticators() -> None:
    """build_packet refuses packets over 4096 octets and authenticators not 16 octets long."""
    body = encode_attributes([(1, bytes(253))] * 15 + [(1, bytes(249))])
    assert len(build_packet(1, 1, bytes(16), body)) == 4096
    assert len(parse(build_packet(1, 1, bytes(16), body)).attributes) == 16
    with pytest.raises(ValueError):
        build_packet(1, 1, bytes(16), body + b"\x00")
    with pytest.raises(ValueError):
        build_packet(1, 1, bytes(15), b"")
    with pytest.raises(ValueError):
        build_packet(1, 256, bytes(16), b"")


def test_decode_error_pickles_with_its_reason() -> None:
    """DecodeError keeps its reason through pickling (e.g. across worker processes)."""
    import pickle

    err = pickle.loads(pickle.dumps(DecodeError(DropReason.TRUNCATED)))
    assert err.reason is DropReason.TRUNCATED
