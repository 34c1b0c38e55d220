"""Authenticators, Message-Authenticator, password hiding and request/response building."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispcare_radius.protocol.authenticator import (
    build_request,
    build_response,
    hide_password,
    hide_tunnel_password,
    message_authenticator_ok,
    random_authenticator,
    request_authenticator_ok,
    response_authenticator,
    unhide_password,
    unhide_tunnel_password,
    verify_response,
)
from ispcare_radius.protocol.codes import Code, DecodeError, DropReason
from ispcare_radius.protocol.packet import encode_attributes, parse

SECRET = b"s3cret-for-tests"
AUTH = bytes(range(16))


@settings(max_examples=300, deadline=None)
@given(
    password=st.binary(min_size=1, max_size=128).filter(lambda p: not p.endswith(b"\x00")),
    secret=st.binary(min_size=1, max_size=64),
    authenticator=st.binary(min_size=16, max_size=16),
)
def test_hide_then_unhide_returns_the_password(
    password: bytes, secret: bytes, authenticator: bytes
) -> None:
    """Any password of 1..128 octets hides to a multiple of 16 octets and unhides to itself."""
    hidden = hide_password(password, secret, authenticator)
    assert len(hidden) % 16 == 0
    assert 16 <= len(hidden) <= 128
    assert unhide_password(hidden, secret, authenticator) == password


def test_hidden_password_depends_on_secret_and_authenticator() -> None:
    """The same password hides differently under another secret or authenticator."""
    base = hide_password(b"password", SECRET, AUTH)
    assert base != hide_password(b"password", SECRET + b"x", AUTH)
    assert base != hide_password(b"password", SECRET, bytes(16))
    assert unhide_password(base, SECRET + b"x", AUTH) != b"password"


def test_empty_password_hides_to_one_block_and_long_ones_are_refused() -> None:
    """An empty password hides to 16 octets; over 128 octets raises ValueError."""
    assert len(hide_password(b"", SECRET, AUTH)) == 16
    assert unhide_password(hide_password(b"", SECRET, AUTH), SECRET, AUTH) == b""
    with pytest.raises(ValueError):
        hide_password(bytes(129), SECRET, AUTH)


@pytest.mark.parametrize("size", [0, 15, 17, 144])
def test_unhide_rejects_bad_lengths(size: int) -> None:
    """A hidden value not a multiple of 16 in 16..128 is malformed_attribute."""
    with pytest.raises(DecodeError) as info:
        unhide_password(bytes(size), SECRET, AUTH)
    assert info.value.reason is DropReason.MALFORMED_ATTRIBUTE


@settings(max_examples=200, deadline=None)
@given(password=st.binary(min_size=0, max_size=239), salt=st.binary(min_size=2, max_size=2))
def test_tunnel_password_round_trips_with_high_bit_salt(password: bytes, salt: bytes) -> None:
    """Tunnel-Password salt encryption round-trips and always sets the salt's top bit."""
    data = hide_tunnel_password(password, SECRET, AUTH, salt=salt)
    assert data[0] & 0x80
    assert (len(data) - 2) % 16 == 0
    assert unhide_tunnel_password(data, SECRET, AUTH) == password


def test_tunnel_password_uses_a_fresh_salt_each_time() -> None:
    """Two hidings of one tunnel password differ because the salt is random."""
    a = hide_tunnel_password(b"tunnel", SECRET, AUTH)
    b = hide_tunnel_password(b"tunnel", SECRET, AUTH)
    assert a != b or a[:2] == b[:2]  # equal only if the 15 random salt bits collide
    assert unhide_tunnel_password(a, SECRET, AUTH) == b"tunnel"


def test_tunnel_password_bad_length_is_malformed() -> None:
    """A salt-encrypted value of a bad length or a lying length octet is malformed."""
    for data in (bytes(2), bytes(17), bytes(19)):
        with pytest.raises(DecodeError):
            unhide_tunnel_password(data, SECRET, AUTH)
    # Decrypting with the wrong secret gives a random length octet; > 15 is caught.
    bad = hide_tunnel_password(b"", SECRET, AUTH, salt=b"\x80\x01")
    results: set[object] = set()
    for i in range(64):
        try:
            results.add(unhide_tunnel_password(bad, bytes([i]), AUTH))
        except DecodeError as exc:
            results.add(exc.reason)
    assert DropReason.MALFORMED_ATTRIBUTE in results


@pytest.mark.parametrize("code", [Code.ACCESS_REQUEST, Code.STATUS_SERVER])
def test_random_authenticator_requests_sign_and_verify(code: Code) -> None:
    """Access-Request/Status-Server get a random authenticator and a valid Message-Authenticator."""
    wire = build_request(
        code, 9, encode_attributes([(1, b"u")]), SECRET, message_authenticator=True
    )
    packet = parse(wire)
    assert packet.attributes[0][0] == 80
    assert message_authenticator_ok(packet, SECRET) is True
    assert message_authenticator_ok(packet, b"other") is False
    assert request_authenticator_ok(packet, SECRET)
    assert parse(build_request(code, 9, b"", SECRET, message_authenticator=True)).authenticator != (
        packet.authenticator
    )


def test_access_request_keeps_a_given_authenticator() -> None:
    """build_request uses the caller's authenticator, so a password hidden with it unhides."""
    auth = random_authenticator()
    hidden = hide_password(b"pw", SECRET, auth)
    wire = build_request(
        Code.ACCESS_REQUEST,
        1,
        encode_attributes([(2, hidden)]),
        SECRET,
        message_authenticator=False,
        authenticator=auth,
    )
    packet = parse(wire)
    assert packet.authenticator == auth
    assert message_authenticator_ok(packet, SECRET) is None
    assert unhide_password(packet.get(2) or b"", SECRET, auth) == b"pw"


@pytest.mark.parametrize(
    "code", [Code.ACCOUNTING_REQUEST, Code.COA_REQUEST, Code.DISCONNECT_REQUEST]
)
@pytest.mark.parametrize("with_ma", [True, False])
def test_hashed_requests_verify_and_detect_tampering(code: Code, with_ma: bool) -> None:
    """Accounting/CoA/Disconnect requests carry an MD5 authenticator that a changed octet breaks."""
    attrs = encode_attributes([(1, b"user"), (40, bytes((0, 0, 0, 1)))])
    wire = build_request(code, 3, attrs, SECRET, message_authenticator=with_ma)
    packet = parse(wire)
    assert request_authenticator_ok(packet, SECRET)
    assert not request_authenticator_ok(packet, SECRET + b"!")
    assert message_authenticator_ok(packet, SECRET) is (True if with_ma else None)
    tampered = parse(wire[:-1] + bytes((wire[-1] ^ 1,)))
    assert not request_authenticator_ok(tampered, SECRET)
    if with_ma:
        assert message_authenticator_ok(tampered, SECRET) is False
    with pytest.raises(ValueError):
        build_request(code, 3, attrs, SECRET, message_authenticator=False, authenticator=AUTH)


def test_accounting_request_authenticator_matches_rfc2866_formula() -> None:
    """The Accounting-Request authenticator is MD5(header + 16 zeros + attributes + secret)."""
    attrs = encode_attributes([(40, bytes((0, 0, 0, 1)))])
    wire = build_request(Code.ACCOUNTING_REQUEST, 5, attrs, SECRET, message_authenticator=False)
    expected = hashlib.md5(wire[:4] + bytes(16) + attrs + SECRET).digest()
    assert wire[4:20] == expected


def test_request_authenticator_ok_is_false_for_responses() -> None:
    """request_authenticator_ok fails closed on a response code."""
    request = parse(build_request(1, 1, b"", SECRET, message_authenticator=True))
    reply = parse(build_response(request, Code.ACCESS_ACCEPT, b"", SECRET))
    assert request_authenticator_ok(reply, SECRET) is False


@pytest.mark.parametrize(
    ("request_code", "reply_code"),
    [
        (Code.ACCESS_REQUEST, Code.ACCESS_ACCEPT),
        (Code.ACCESS_REQUEST, Code.ACCESS_REJECT),
        (Code.ACCESS_REQUEST, Code.ACCESS_CHALLENGE),
        (Code.STATUS_SERVER, Code.ACCESS_ACCEPT),
        (Code.STATUS_SERVER, Code.ACCOUNTING_RESPONSE),
        (Code.ACCOUNTING_REQUEST, Code.ACCOUNTING_RESPONSE),
        (Code.COA_REQUEST, Code.COA_ACK),
        (Code.COA_REQUEST, Code.COA_NAK),
        (Code.DISCONNECT_REQUEST, Code.DISCONNECT_ACK),
        (Code.DISCONNECT_REQUEST, Code.DISCONNECT_NAK),
    ],
)
def test_response_is_signed_and_verifies_with_the_request_authenticator(
    request_code: Code, reply_code: Code
) -> None:
    """build_response puts the Message-Authenticator first and both authenticators verify."""
    request = parse(build_request(request_code, 77, b"", SECRET, message_authenticator=True))
    attrs = encode_attributes([(18, b"Welcome")])
    wire = build_response(request, reply_code, attrs, SECRET)
    reply = parse(wire)
    assert reply.identifier == 77
    assert reply.code == reply_code
    assert reply.attributes[0][0] == 80
    assert reply.attributes[1] == (18, b"Welcome")
    assert verify_response(reply, request.authenticator, SECRET)
    assert message_authenticator_ok(reply, SECRET, request.authenticator) is True
    other = bytes(range(1, 17))
    assert not verify_response(reply, other, SECRET)
    if request_code != Code.ACCOUNTING_REQUEST:
        # A reply to Accounting-Request is signed over zeros, not the request's authenticator.
        assert message_authenticator_ok(reply, SECRET, other) is False
    assert reply.authenticator == response_authenticator(
        reply_code, 77, request.authenticator, wire[20:], SECRET
    )
    with pytest.raises(ValueError):
        message_authenticator_ok(reply, SECRET)


def test_response_copies_proxy_states_in_order_after_the_attributes() -> None:
    """Proxy-State values are appended in the order given, after the reply attributes."""
    attrs = encode_attributes([(1, b"u"), (33, b"first"), (33, b"second")])
    request = parse(build_request(1, 1, attrs, SECRET, message_authenticator=True))
    reply = parse(
        build_response(request, Code.ACCESS_REJECT, b"", SECRET, proxy_states=request.get_all(33))
    )
    assert [t for t, _ in reply.attributes] == [80, 33, 33]
    assert reply.get_all(33) == [b"first", b"second"]
    assert message_authenticator_ok(reply, SECRET, request.authenticator) is True


def test_response_without_message_authenticator() -> None:
    """With message_authenticator=False the reply has none and still verifies."""
    request = parse(build_request(1, 1, b"", SECRET, message_authenticator=True))
    reply = parse(
        build_response(request, Code.ACCESS_ACCEPT, b"", SECRET, message_authenticator=False)
    )
    assert reply.attributes == ()
    assert message_authenticator_ok(reply, SECRET, request.authenticator) is None
    assert verify_response(reply, request.authenticator, SECRET)


def test_duplicate_message_authenticator_is_rejected() -> None:
    """A packet carrying two Message-Authenticators never verifies."""
    wire = build_request(
        12, 1, encode_attributes([(80, bytes(16))]), SECRET, message_authenticator=True
    )
    assert message_authenticator_ok(parse(wire), SECRET) is False


def test_oversized_response_is_refused() -> None:
    """A reply over 4096 octets raises ValueError instead of a broken Length."""
    request = parse(build_request(1, 1, b"", SECRET, message_authenticator=True))
    attrs = encode_attributes([(18, bytes(253))] * 16)
    with pytest.raises(ValueError):
        build_response(request, Code.ACCESS_ACCEPT, attrs, SECRET)


def test_build_request_refuses_response_codes() -> None:
    """build_request raises ValueError for a response code."""
    with pytest.raises(ValueError):
        build_request(Code.ACCESS_ACCEPT, 1, b"", SECRET, message_authenticator=True)
