"""Interop with pyrad as an independent RADIUS implementation, in both directions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispcare_radius.protocol.authenticator import (
    build_request,
    build_response,
    hide_password,
    message_authenticator_ok,
    random_authenticator,
    request_authenticator_ok,
    unhide_password,
    verify_response,
)
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import encode_attributes, parse

pyrad_dictionary = pytest.importorskip("pyrad.dictionary")
pyrad_packet = pytest.importorskip("pyrad.packet")

SECRET = b"interop-secret"
DICT_TEXT = """\
ATTRIBUTE User-Name 1 string
ATTRIBUTE User-Password 2 string encrypt=1
ATTRIBUTE NAS-IP-Address 4 ipaddr
ATTRIBUTE NAS-Port 5 integer
ATTRIBUTE Service-Type 6 integer
ATTRIBUTE Reply-Message 18 string
ATTRIBUTE Vendor-Specific 26 octets
ATTRIBUTE Proxy-State 33 octets
ATTRIBUTE Acct-Status-Type 40 integer
ATTRIBUTE Acct-Session-Id 44 string
ATTRIBUTE Message-Authenticator 80 octets
VALUE Service-Type Framed-User 2
VALUE Acct-Status-Type Start 1
VENDOR Mikrotik 14988
BEGIN-VENDOR Mikrotik
ATTRIBUTE Mikrotik-Rate-Limit 8 string
END-VENDOR Mikrotik
"""


@pytest.fixture
def dict_path(tmp_path: Path) -> Path:
    path = tmp_path / "dictionary"
    path.write_text(DICT_TEXT)
    return path


@pytest.fixture
def ours(dict_path: Path) -> Dictionary:
    d, warnings = load_dictionary([dict_path])
    assert warnings == []
    return d


@pytest.fixture
def theirs(dict_path: Path) -> object:
    return pyrad_dictionary.Dictionary(str(dict_path))


def test_our_access_request_decodes_and_verifies_in_pyrad(ours: Dictionary, theirs: object) -> None:
    """pyrad decodes our Access-Request, checks its Message-Authenticator, unhides the password."""
    auth = random_authenticator()
    attrs = b"".join(
        [
            ours.encode("User-Name", "alice"),
            ours.encode("User-Password", "s3cr3t-pw", secret=SECRET, authenticator=auth),
            ours.encode("NAS-IP-Address", "192.0.2.10"),
            ours.encode("Service-Type", "Framed-User"),
        ]
    )
    wire = build_request(
        Code.ACCESS_REQUEST, 17, attrs, SECRET, message_authenticator=True, authenticator=auth
    )
    pkt = pyrad_packet.AuthPacket(packet=wire, secret=SECRET, dict=theirs)
    assert pkt.code == Code.ACCESS_REQUEST
    assert pkt.id == 17
    assert pkt["User-Name"] == ["alice"]
    assert pkt["NAS-IP-Address"] == ["192.0.2.10"]
    assert pkt["Service-Type"] == ["Framed-User"]
    assert pkt.verify_message_authenticator() is True
    assert pkt.PwDecrypt(pkt["User-Password"][0]) == "s3cr3t-pw"
    wrong = pyrad_packet.AuthPacket(packet=wire, secret=b"other", dict=theirs)
    assert wrong.verify_message_authenticator() is False


def test_pyrad_access_request_parses_and_verifies_with_ours(
    ours: Dictionary, theirs: object
) -> None:
    """We parse a pyrad Access-Request, check its Message-Authenticator and unhide it."""
    req = pyrad_packet.AuthPacket(
        code=pyrad_packet.AccessRequest, id=33, secret=SECRET, dict=theirs
    )
    req.add_message_authenticator()
    req["User-Name"] = "bob"
    req["User-Password"] = req.PwCrypt("hunter2-long-password-over-16")
    req["NAS-Port"] = 42
    wire = req.RequestPacket()
    packet = parse(wire)
    assert message_authenticator_ok(packet, SECRET) is True
    assert message_authenticator_ok(packet, b"wrong") is False
    decoded = {d.name: v for d, v, _ in ours.decode(packet, secret=SECRET)}
    assert decoded["User-Name"] == "bob"
    assert decoded["User-Password"] == "hunter2-long-password-over-16"
    assert decoded["NAS-Port"] == 42
    hidden = packet.get(2)
    assert hidden is not None
    assert unhide_password(hidden, SECRET, packet.authenticator) == b"hunter2-long-password-over-16"


def test_our_reply_passes_pyrad_verify_reply(ours: Dictionary, theirs: object) -> None:
    """pyrad accepts our signed Access-Accept (authenticators and Proxy-State)."""
    req = pyrad_packet.AuthPacket(code=pyrad_packet.AccessRequest, id=5, secret=SECRET, dict=theirs)
    req.add_message_authenticator()
    req["User-Name"] = "carol"
    req["Proxy-State"] = [b"ps-one", b"ps-two"]
    wire = req.RequestPacket()
    request = parse(wire)
    reply_attrs = ours.encode("Reply-Message", "hello") + ours.encode(
        "Mikrotik-Rate-Limit", "10M/10M"
    )
    reply_wire = build_response(
        request, Code.ACCESS_ACCEPT, reply_attrs, SECRET, proxy_states=request.get_all(33)
    )
    reply = pyrad_packet.AuthPacket(packet=reply_wire, secret=SECRET, dict=theirs)
    assert req.VerifyReply(reply, reply_wire, enforce_ma=True) is True
    assert reply["Reply-Message"] == ["hello"]
    assert reply["Mikrotik-Rate-Limit"] == ["10M/10M"]
    forged = reply_wire[:-1] + bytes((reply_wire[-1] ^ 1,))
    assert req.VerifyReply(reply, forged) is False


def test_pyrad_reply_verifies_with_ours(theirs: object) -> None:
    """Our verify_response and message_authenticator_ok accept a pyrad-built Access-Accept."""
    auth = random_authenticator()
    wire = build_request(
        Code.ACCESS_REQUEST,
        9,
        encode_attributes([(1, b"dave"), (2, hide_password(b"pw", SECRET, auth))]),
        SECRET,
        message_authenticator=True,
        authenticator=auth,
    )
    req = pyrad_packet.AuthPacket(packet=wire, secret=SECRET, dict=theirs)
    reply = req.CreateReply()
    reply["Reply-Message"] = "welcome"
    reply_wire = reply.ReplyPacket()
    response = parse(reply_wire)
    assert response.code == Code.ACCESS_ACCEPT
    assert verify_response(response, auth, SECRET)
    assert message_authenticator_ok(response, SECRET, auth) is True
    assert not verify_response(response, auth, b"wrong")


def test_accounting_requests_verify_both_ways(ours: Dictionary, theirs: object) -> None:
    """Accounting-Request authenticators built by either side verify on the other."""
    attrs = ours.encode("Acct-Status-Type", "Start") + ours.encode("Acct-Session-Id", "0001")
    wire = build_request(Code.ACCOUNTING_REQUEST, 3, attrs, SECRET, message_authenticator=False)
    pkt = pyrad_packet.AcctPacket(packet=wire, secret=SECRET, dict=theirs)
    assert pkt.VerifyAcctRequest() is True
    assert pkt["Acct-Session-Id"] == ["0001"]

    acct = pyrad_packet.AcctPacket(id=4, secret=SECRET, dict=theirs)
    acct["Acct-Status-Type"] = "Start"
    acct["Acct-Session-Id"] = "0002"
    packet = parse(acct.RequestPacket())
    assert request_authenticator_ok(packet, SECRET)
    assert not request_authenticator_ok(packet, b"wrong")


def test_accounting_response_message_authenticator_matches_pyrad(theirs: object) -> None:
    """A signed Accounting-Response from either side verifies on the other."""
    acct = pyrad_packet.AcctPacket(id=8, secret=SECRET, dict=theirs)
    acct["Acct-Status-Type"] = "Start"
    request = parse(acct.RequestPacket())
    ours_wire = build_response(request, Code.ACCOUNTING_RESPONSE, b"", SECRET)
    reply = pyrad_packet.AcctPacket(packet=ours_wire, secret=SECRET, dict=theirs)
    assert acct.VerifyReply(reply, ours_wire) is True

    their_reply = acct.CreateReply()
    their_reply.add_message_authenticator()
    their_wire = their_reply.ReplyPacket()
    response = parse(their_wire)
    assert verify_response(response, request.authenticator, SECRET)
    assert message_authenticator_ok(response, SECRET, request.authenticator) is True
