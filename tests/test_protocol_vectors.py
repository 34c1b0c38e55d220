"""Golden vectors (RFC examples and malformed datagrams), truncation and corruption fuzzing."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ispcare_radius.protocol.attrtypes import AttrType
from ispcare_radius.protocol.authenticator import (
    message_authenticator_ok,
    request_authenticator_ok,
    unhide_password,
    verify_response,
)
from ispcare_radius.protocol.codes import DecodeError, DropReason
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import parse
from ispcare_radius.protocol.values import parse_text_value

VECTORS = Path(__file__).parent / "vectors"
DEBIAN_DICTIONARY = Path("/usr/share/freeradius/dictionary")


def _read(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(VECTORS / name, encoding="utf-8")
    return parser


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


RFC = _read("rfc_examples.ini")
MALFORMED = _read("malformed.ini")
VALID_PACKETS = {name: _hex(RFC[name]["packet"]) for name in RFC.sections()}


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    if not DEBIAN_DICTIONARY.exists():
        pytest.skip("Debian FreeRADIUS dictionaries not installed")
    return load_dictionary([DEBIAN_DICTIONARY])[0]


def test_vector_files_are_not_empty() -> None:
    """The vector files hold the RFC examples and the malformed cases."""
    assert len(RFC.sections()) == 8
    assert len(MALFORMED.sections()) >= 10


@pytest.mark.parametrize("name", RFC.sections())
def test_rfc_example_decodes_to_expected_fields(name: str, dictionary: Dictionary) -> None:
    """Each RFC example parses to the documented code, identifier and attribute values."""
    section = RFC[name]
    packet = parse(VALID_PACKETS[name])
    secret = section["secret"].encode()
    assert packet.code == int(section["code"])
    assert packet.identifier == int(section["identifier"])
    request_auth = None
    if "request" in section:
        request_auth = parse(VALID_PACKETS[section["request"]]).authenticator
    decoded = {
        d.name: v
        for d, v, _ in dictionary.decode(packet, secret=secret, request_authenticator=request_auth)
    }
    expected = {k[5:]: v for k, v in section.items() if k.startswith("attr.")}
    assert set(decoded) == set(expected) | ({"Message-Authenticator"} & set(decoded))
    for attr_name, text in expected.items():
        defn = dictionary.by_name(attr_name)
        if defn.type is AttrType.STRING:
            want: object = text
        else:
            want = parse_text_value(defn, text)
        assert decoded[attr_name] == want, attr_name


@pytest.mark.parametrize("name", [n for n in RFC.sections() if "request" in RFC[n]])
def test_rfc_example_response_authenticator_verifies(name: str) -> None:
    """Each RFC example response has a correct Response Authenticator; a wrong secret fails."""
    response = parse(VALID_PACKETS[name])
    request = parse(VALID_PACKETS[RFC[name]["request"]])
    secret = RFC[name]["secret"].encode()
    assert verify_response(response, request.authenticator, secret)
    assert not verify_response(response, request.authenticator, secret + b"x")
    assert not verify_response(response, bytes(16), secret)


@pytest.mark.parametrize("name", [n for n in RFC.sections() if "request" not in RFC[n]])
def test_rfc_example_request_message_authenticator(name: str) -> None:
    """Requests with a Message-Authenticator verify; those without report None."""
    packet = parse(VALID_PACKETS[name])
    secret = RFC[name]["secret"].encode()
    result = message_authenticator_ok(packet, secret)
    if RFC[name].get("message_authenticator") == "ok":
        assert result is True
        assert message_authenticator_ok(packet, b"wrong") is False
    else:
        assert result is None
    assert request_authenticator_ok(packet, secret)


def test_rfc2865_7_1_password_unhides_to_arctangent() -> None:
    """The hidden User-Password of RFC 2865 section 7.1 unhides to "arctangent"."""
    packet = parse(VALID_PACKETS["rfc2865-7.1-request"])
    hidden = packet.get(2)
    assert hidden is not None
    assert unhide_password(hidden, b"xyzzy5461", packet.authenticator) == b"arctangent"


@pytest.mark.parametrize("name", MALFORMED.sections())
def test_malformed_vector_is_dropped_with_reason(name: str) -> None:
    """Each malformed datagram raises DecodeError with the documented reason."""
    with pytest.raises(DecodeError) as info:
        parse(_hex(MALFORMED[name]["packet"]))
    assert info.value.reason is DropReason(MALFORMED[name]["error"])
    assert str(info.value) == MALFORMED[name]["error"]


@pytest.mark.parametrize("name", sorted(VALID_PACKETS))
def test_every_prefix_of_a_valid_packet_is_a_decode_error(name: str) -> None:
    """Every proper prefix of a valid packet raises DecodeError (too_short or truncated)."""
    data = VALID_PACKETS[name]
    for cut in range(len(data)):
        with pytest.raises(DecodeError) as info:
            parse(data[:cut])
        expected = DropReason.TOO_SHORT if cut < 20 else DropReason.TRUNCATED
        assert info.value.reason is expected, cut


@pytest.mark.parametrize("name", sorted(VALID_PACKETS))
def test_octets_beyond_length_are_ignored(name: str) -> None:
    """Trailing octets after the Length field are padding and do not change the parse."""
    data = VALID_PACKETS[name]
    assert parse(data + b"\x00\xff" * 5) == parse(data)


_SEEDS = sorted(VALID_PACKETS.values())


@settings(max_examples=1500, deadline=None)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 4200), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 4200),
)
@example(seed=_SEEDS[0], edits=[(21, 0)], cut=4200)
@example(seed=_SEEDS[0], edits=[(2, 0x10), (3, 0x01)], cut=4200)
def test_corrupted_packets_raise_only_decode_error(
    seed: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    """Corrupting and truncating a valid packet never raises anything but DecodeError."""
    data = bytearray(seed)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    try:
        packet = parse(bytes(data[:cut]))
    except DecodeError as exc:
        assert isinstance(exc.reason, DropReason)
        return
    assert packet.raw == bytes(data[: len(packet.raw)])


@settings(max_examples=500, deadline=None)
@given(data=st.binary(min_size=0, max_size=300))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    """Arbitrary bytes either parse or raise DecodeError, never another exception."""
    try:
        packet = parse(data)
    except DecodeError as exc:
        assert isinstance(exc.reason, DropReason)
        return
    assert len(packet.raw) == (data[2] << 8 | data[3])


@settings(max_examples=300, deadline=None)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(20, 200), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_dictionary_decode_of_corrupted_packets_never_raises(
    seed: bytes, edits: list[tuple[int, int]], dictionary: Dictionary
) -> None:
    """Decoding attribute values of any structurally valid packet never raises."""
    data = bytearray(seed)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    try:
        packet = parse(bytes(data))
    except DecodeError:
        return
    decoded = dictionary.decode(packet, secret=b"xyzzy5461")
    assert len(decoded) >= 1 or not packet.attributes
