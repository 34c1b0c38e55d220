"""CHAP, MS-CHAPv1 and MS-CHAPv2 through the Access-Request pipeline, in memory.

Requests are built with our own codec; replies are decoded with the
dictionary (and the MPPE keys also with pyrad, as an independent peer).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from pyrad.packet import Packet as PyradPacket

from ispcare_radius.aaa.methods import REGISTRY, resolve
from ispcare_radius.aaa.methods.chap import chap_response
from ispcare_radius.aaa.methods.md4 import md4
from ispcare_radius.aaa.methods.mscrypto import generate_nt_response, nt_password_hash
from ispcare_radius.aaa.model import AuthEvent, Nas, Plan, Subscriber, SubscriberStatus
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.aaa.pipeline import AccessHandler, Attempt, AuthSettings, read_credentials
from ispcare_radius.aaa.ports import Miss
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import Reply, Request
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import hide_password, random_authenticator
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, encode_attributes, parse

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"methods-unit-secret"
NOW = 1_800_000_000.0
NAS = Nas(3, "bras-m", ipaddress.ip_network("192.0.2.3/32"), Secret(SECRET))
PLAN = Plan(id=1, name="p", session_timeout=3600)
H = bytes.fromhex

# RFC 2759 section 9.2 / RFC 3079 section 3.5 example values.
V2_USER = "User"
V2_PASSWORD = "clientPass"
AUTH_CHALLENGE = H("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = H("21402324255E262A28295F2B3A337C7E")
NT_RESPONSE = H("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
# RFC 2433 appendix B.2.
V1_PASSWORD = "MyPw"
V1_CHALLENGE = H("102DB5DF085D3041")
V1_NT_RESPONSE = H("4e9d3c8f9cfd385d5bf4d3246791956ca4c351ab409a3d61")

MS_ERROR = re.compile(r"^E=(\d+) R=0 C=([0-9A-F]{32}) V=3 M=(.+)$")


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


def _sub(password: str, **kw: object) -> Subscriber:
    base: dict[str, object] = {
        "id": 11,
        "status": SubscriberStatus.ACTIVE,
        "plan": PLAN,
        "password": Secret(password),
    }
    base.update(kw)
    return Subscriber(**base)  # type: ignore[arg-type]


class Directory:
    """An in-memory directory port that can also answer from memory."""

    def __init__(self, subs: dict[str, Subscriber]) -> None:
        self.subs = subs

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        return self.subs.get(user_name)

    def peek(self, user_name: str) -> Subscriber | Miss | None:
        return self.subs.get(user_name)


class Events:
    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


def _handler(
    dictionary: Dictionary,
    subs: dict[str, Subscriber],
    events: Events | None = None,
    methods: tuple[str, ...] | None = None,
) -> AccessHandler:
    settings = AuthSettings() if methods is None else AuthSettings(methods=methods)
    return AccessHandler(
        directory=Directory(subs),
        events=events or Events(),
        renderer=ReplyRenderer(dictionary),
        settings=settings,
        clock=lambda: NOW,
    )


def _request(
    dictionary: Dictionary,
    user: str,
    attrs: list[tuple[str, bytes]],
    *,
    authenticator: bytes | None = None,
    raw: tuple[tuple[int, bytes], ...] = (),
) -> Request:
    auth = authenticator or random_authenticator()
    body = encode_attributes(((1, user.encode()), *raw))
    body += b"".join(dictionary.encode(name, value) for name, value in attrs)
    return Request(parse(build_packet(1, 42, auth, body)), NAS, ("192.0.2.3", 1812), 0.0, None)


def _decode(dictionary: Dictionary, request: Request, reply: Reply) -> dict[str, list[object]]:
    packet = parse(build_packet(2, 42, bytes(16), reply.attributes))
    out: dict[str, list[object]] = {}
    for defn, value, _ in dictionary.decode(
        packet, secret=SECRET, request_authenticator=request.packet.authenticator
    ):
        out.setdefault(defn.name, []).append(value)
    return out


def _chap(dictionary: Dictionary, password: bytes, *, with_challenge: bool = True) -> Request:
    auth = random_authenticator()
    challenge = b"chap-challenge-16" if with_challenge else auth
    value = bytes((9,)) + chap_response(9, password, challenge)
    attrs = [("CHAP-Password", value)]
    if with_challenge:
        attrs.append(("CHAP-Challenge", challenge))
    return _request(dictionary, "chap-user", attrs, authenticator=auth)


def _v2(dictionary: Dictionary, nt_response: bytes = NT_RESPONSE, user: str = V2_USER) -> Request:
    response = bytes((0x2A, 0)) + PEER_CHALLENGE + bytes(8) + nt_response
    attrs = [("MS-CHAP-Challenge", AUTH_CHALLENGE), ("MS-CHAP2-Response", response)]
    return _request(dictionary, user, attrs)


def _v1(dictionary: Dictionary, nt_response: bytes = V1_NT_RESPONSE, flags: int = 1) -> Request:
    response = bytes((0x17, flags)) + bytes(24) + nt_response
    attrs = [("MS-CHAP-Challenge", V1_CHALLENGE), ("MS-CHAP-Response", response)]
    return _request(dictionary, "v1-user", attrs)


# -- CHAP ---------------------------------------------------------------------


@pytest.mark.parametrize("with_challenge", [True, False])
async def test_chap_accepts_the_right_password(
    dictionary: Dictionary, with_challenge: bool
) -> None:
    """CHAP with CHAP-Challenge, or with the Request Authenticator as challenge, accepts."""
    events = Events()
    handler = _handler(dictionary, {"chap-user": _sub("chap-pw")}, events)
    reply = await handler.handle(_chap(dictionary, b"chap-pw", with_challenge=with_challenge))
    assert reply.code == Code.ACCESS_ACCEPT, reply.reason
    assert events.events[0].method == "chap"


async def test_chap_rejects_a_wrong_password(dictionary: Dictionary) -> None:
    """A CHAP response computed from another password is BAD_PASSWORD."""
    handler = _handler(dictionary, {"chap-user": _sub("chap-pw")})
    reply = await handler.handle(_chap(dictionary, b"chap-pX"))
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "bad_password")


async def test_chap_response_for_another_challenge_is_rejected(dictionary: Dictionary) -> None:
    """A response valid for the Request Authenticator fails when a CHAP-Challenge is sent."""
    auth = random_authenticator()
    value = bytes((9,)) + chap_response(9, b"chap-pw", auth)
    request = _request(
        dictionary,
        "chap-user",
        [("CHAP-Password", value), ("CHAP-Challenge", b"other-challenge!")],
        authenticator=auth,
    )
    reply = await _handler(dictionary, {"chap-user": _sub("chap-pw")}).handle(request)
    assert reply.reason == "bad_password"


@pytest.mark.parametrize("length", [0, 1, 16, 18, 40])
def test_chap_password_of_wrong_length_is_malformed(dictionary: Dictionary, length: int) -> None:
    """CHAP-Password must be exactly 17 octets (ident + 16)."""
    request = _request(dictionary, "u", [], raw=((3, b"\x01" * length),))
    assert read_credentials(Attempt(request), NOW) is Outcome.MALFORMED_CREDENTIALS


def test_short_chap_challenge_is_malformed(dictionary: Dictionary) -> None:
    """A CHAP-Challenge under 5 octets is refused before any lookup."""
    request = _request(
        dictionary, "u", [("CHAP-Password", b"\x01" * 17), ("CHAP-Challenge", b"abcd")]
    )
    assert read_credentials(Attempt(request), NOW) is Outcome.MALFORMED_CREDENTIALS


async def test_disabled_method_is_unsupported(dictionary: Dictionary) -> None:
    """With only PAP enabled, a correct CHAP request is UNSUPPORTED_METHOD."""
    handler = _handler(dictionary, {"chap-user": _sub("chap-pw")}, methods=("pap",))
    reply = await handler.handle(_chap(dictionary, b"chap-pw"))
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "unsupported_method")


def test_user_password_and_chap_password_together_conflict(dictionary: Dictionary) -> None:
    """RFC 2865 section 4.1: both User-Password and CHAP-Password is refused."""
    auth = random_authenticator()
    request = _request(
        dictionary,
        "u",
        [("CHAP-Password", b"\x01" * 17)],
        authenticator=auth,
        raw=((2, hide_password(b"pw", SECRET, auth)),),
    )
    assert read_credentials(Attempt(request), NOW) is Outcome.CONFLICTING_CREDENTIALS


# -- MS-CHAPv2 ----------------------------------------------------------------


async def test_mschapv2_accept_carries_success_and_the_rfc3079_keys(
    dictionary: Dictionary,
) -> None:
    """The RFC 2759 example accepts with S=407A..., and the MPPE keys of RFC 3079
    (server send = 8B7C..., receive = D5F0...), policy allowed, types 40/128."""
    events = Events()
    handler = _handler(dictionary, {V2_USER: _sub(V2_PASSWORD)}, events)
    request = _v2(dictionary)
    reply = await handler.handle(request)
    assert reply.code == Code.ACCESS_ACCEPT, reply.reason
    got = _decode(dictionary, request, reply)
    assert got["MS-CHAP2-Success"] == [b"\x2aS=407A5589115FD0D6209F510FE9C04566932CDA56"]
    assert got["MS-MPPE-Send-Key"] == [H("8B7CDC149B993A1BA118CB153F56DCCB")]
    assert got["MS-MPPE-Recv-Key"] == [H("D5F0E9521E3EA9589645E86051C82226")]
    assert got["MS-MPPE-Encryption-Policy"] == [1]
    assert got["MS-MPPE-Encryption-Types"] == [6]
    assert got["Session-Timeout"] == [3600]  # the plan is still there
    assert events.events[0].method == "mschapv2"


async def test_mschapv2_keys_decrypt_with_pyrad_and_use_distinct_salts(
    dictionary: Dictionary,
) -> None:
    """pyrad's RFC 2868 salt decryption recovers the same keys; the two salts differ
    and have their top bit set (RFC 2548 section 2.4.2)."""
    handler = _handler(dictionary, {V2_USER: _sub(V2_PASSWORD)})
    request = _v2(dictionary)
    reply = await handler.handle(request)
    peer = PyradPacket(secret=SECRET)
    peer.request_authenticator = request.packet.authenticator
    packet = parse(build_packet(2, 42, bytes(16), reply.attributes))
    hidden = {t: packet.vsa(311, t) for t in (16, 17)}
    assert hidden[16] is not None and hidden[17] is not None
    assert peer.SaltDecrypt(hidden[16]) == H("8B7CDC149B993A1BA118CB153F56DCCB")
    assert peer.SaltDecrypt(hidden[17]) == H("D5F0E9521E3EA9589645E86051C82226")
    assert len(hidden[16]) == 34 and hidden[16][:2] != hidden[17][:2]
    assert hidden[16][0] & 0x80 and hidden[17][0] & 0x80


async def test_mschapv2_wrong_password_gets_ms_chap_error_691(dictionary: Dictionary) -> None:
    """A wrong password is rejected with MS-CHAP-Error ident + E=691 R=0 C=<32 hex> V=3."""
    handler = _handler(dictionary, {V2_USER: _sub("not-clientPass")})
    request = _v2(dictionary)
    reply = await handler.handle(request)
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "bad_password")
    (error,) = _decode(dictionary, request, reply)["MS-CHAP-Error"]
    assert isinstance(error, str) and error[0] == "\x2a"
    m = MS_ERROR.match(error[1:])
    assert m is not None, error
    assert m.group(1) == "691" and m.group(3) == "Authentication failed"
    assert H(m.group(2)) != AUTH_CHALLENGE


@pytest.mark.parametrize(
    ("subs", "code", "reason"),
    [
        ({V2_USER: _sub(V2_PASSWORD, status=SubscriberStatus.SUSPENDED)}, "647", "suspended"),
        ({V2_USER: _sub(V2_PASSWORD, status=SubscriberStatus.DEACTIVATED)}, "647", "deactivated"),
        ({V2_USER: _sub(V2_PASSWORD, status=SubscriberStatus.EXPIRED)}, "647", "expired"),
        ({}, "691", "unknown_user"),
        ({V2_USER: _sub(V2_PASSWORD, mac_lock=b"\x02" * 6)}, "691", "mac_lock_mismatch"),
    ],
)
async def test_mschapv2_error_numbers_follow_the_outcome(
    dictionary: Dictionary, subs: dict[str, Subscriber], code: str, reason: str
) -> None:
    """Disabled accounts (after a right password) get E=647; the rest E=691."""
    request = _v2(dictionary)
    reply = await _handler(dictionary, subs).handle(request)
    assert reply.reason == reason
    (error,) = _decode(dictionary, request, reply)["MS-CHAP-Error"]
    assert isinstance(error, str)
    m = MS_ERROR.match(error[1:])
    assert m is not None and m.group(1) == code


async def test_mschapv2_challenge_hash_uses_the_name_without_domain(
    dictionary: Dictionary,
) -> None:
    """RFC 2759 section 8.2: a "DOMAIN\\User" login hashes only "User"."""
    subs = {"CORP\\User": _sub(V2_PASSWORD)}
    reply = await _handler(dictionary, subs).handle(_v2(dictionary, user="CORP\\User"))
    assert reply.code == Code.ACCESS_ACCEPT, reply.reason


async def test_mschapv2_non_ascii_password(dictionary: Dictionary) -> None:
    """The NT hash is over UTF-16LE, so a non-ASCII password works end to end."""
    password = "pässwörd-€"
    nt = generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, b"User", password)
    reply = await _handler(dictionary, {V2_USER: _sub(password)}).handle(_v2(dictionary, nt))
    assert reply.code == Code.ACCESS_ACCEPT, reply.reason


@pytest.mark.parametrize("cut", [0, 1, 17, 26, 49])
def test_truncated_mschapv2_response_is_malformed(dictionary: Dictionary, cut: int) -> None:
    """An MS-CHAP2-Response shorter than 50 octets is refused before any lookup."""
    response = (bytes((1, 0)) + PEER_CHALLENGE + bytes(8) + NT_RESPONSE)[:cut]
    attrs = [("MS-CHAP-Challenge", AUTH_CHALLENGE), ("MS-CHAP2-Response", response)]
    attempt = Attempt(_request(dictionary, "u", attrs))
    assert read_credentials(attempt, NOW) is Outcome.MALFORMED_CREDENTIALS


def test_mschapv2_without_challenge_is_malformed(dictionary: Dictionary) -> None:
    """An MS-CHAP2-Response with no MS-CHAP-Challenge is malformed."""
    response = bytes((1, 0)) + PEER_CHALLENGE + bytes(8) + NT_RESPONSE
    attempt = Attempt(_request(dictionary, "u", [("MS-CHAP2-Response", response)]))
    assert read_credentials(attempt, NOW) is Outcome.MALFORMED_CREDENTIALS


# -- MS-CHAPv1 ----------------------------------------------------------------


async def test_mschapv1_accept_carries_mppe_keys(dictionary: Dictionary) -> None:
    """The RFC 2433 example accepts; MS-CHAP-MPPE-Keys unhides to the first 8 octets
    of the LM hash then the NT hash-hash, padded to 32 octets."""
    events = Events()
    handler = _handler(dictionary, {"v1-user": _sub(V1_PASSWORD)}, events)
    request = _v1(dictionary)
    reply = await handler.handle(request)
    assert reply.code == Code.ACCESS_ACCEPT, reply.reason
    got = _decode(dictionary, request, reply)
    (keys,) = got["MS-CHAP-MPPE-Keys"]
    assert keys == H("75ba30198e6d1975") + md4(nt_password_hash(V1_PASSWORD))
    assert got["MS-MPPE-Encryption-Policy"] == [1]
    assert got["MS-MPPE-Encryption-Types"] == [6]
    assert events.events[0].method == "mschap"
    hidden = parse(build_packet(2, 1, bytes(16), reply.attributes)).vsa(311, 12)
    assert hidden is not None and len(hidden) == 32


async def test_mschapv1_wrong_password_gets_ms_chap_error(dictionary: Dictionary) -> None:
    """A wrong v1 password is rejected with MS-CHAP-Error ident + "E=691 R=0"."""
    request = _v1(dictionary)
    reply = await _handler(dictionary, {"v1-user": _sub("MyPx")}).handle(request)
    assert reply.reason == "bad_password"
    assert _decode(dictionary, request, reply)["MS-CHAP-Error"] == ["\x17E=691 R=0"]


def test_mschapv1_lm_only_response_is_unsupported(dictionary: Dictionary) -> None:
    """Flags without the use-NT bit (LAN Manager response only) are not accepted."""
    assert read_credentials(Attempt(_v1(dictionary, flags=0)), NOW) is Outcome.UNSUPPORTED_METHOD


def test_mschapv1_with_a_v2_sized_challenge_is_malformed(dictionary: Dictionary) -> None:
    """MS-CHAPv1 needs an 8-octet challenge."""
    response = bytes((1, 1)) + bytes(24) + V1_NT_RESPONSE
    attrs = [("MS-CHAP-Challenge", AUTH_CHALLENGE), ("MS-CHAP-Response", response)]
    attempt = Attempt(_request(dictionary, "u", attrs))
    assert read_credentials(attempt, NOW) is Outcome.MALFORMED_CREDENTIALS


# -- fast path, registry, privacy -------------------------------------------------


@pytest.mark.parametrize("kind", ["chap", "mschap", "mschapv2"])
async def test_fast_path_decides_like_the_async_path(dictionary: Dictionary, kind: str) -> None:
    """try_handle_now gives the same decision and the same decoded attributes as handle
    (hidden values differ only by their random salts)."""
    subs = {"chap-user": _sub("chap-pw"), "v1-user": _sub(V1_PASSWORD), V2_USER: _sub(V2_PASSWORD)}
    handler = _handler(dictionary, subs)
    request = {
        "chap": lambda: _chap(dictionary, b"chap-pw"),
        "mschap": lambda: _v1(dictionary),
        "mschapv2": lambda: _v2(dictionary),
    }[kind]()
    now = handler.try_handle_now(request)
    assert isinstance(now, Reply) and now.code == Code.ACCESS_ACCEPT
    later = await handler.handle(request)
    decoded_now = _decode(dictionary, request, now)
    decoded_later = _decode(dictionary, request, later)
    # Each accept carries its own Class cookie.
    assert decoded_now.pop("Class") != decoded_later.pop("Class")
    assert decoded_now == decoded_later


def test_registry_and_settings_refuse_unknown_names() -> None:
    """Unknown method names fail at start, with the name in the message."""
    assert set(REGISTRY) == {"pap", "chap", "mschap", "mschapv2", "mac"}
    assert [m.name for m in resolve(["mschapv2", "pap"])] == ["pap", "mschapv2"]
    with pytest.raises(ValueError, match="eap-gtc"):
        resolve(["pap", "eap-gtc"])
    with pytest.raises(ValueError, match="nope"):
        AuthSettings(methods=("nope",))


def test_credential_reprs_hide_responses_and_challenges(dictionary: Dictionary) -> None:
    """Parsed credentials show no challenge, response or user name in their repr."""
    for request in (_chap(dictionary, b"pw"), _v1(dictionary), _v2(dictionary)):
        attempt = Attempt(request)
        assert read_credentials(attempt, NOW) is None
        text = repr(attempt.credentials)
        for secret_part in (NT_RESPONSE, V1_NT_RESPONSE, AUTH_CHALLENGE, b"chap-challenge"):
            assert secret_part.hex() not in text and repr(secret_part)[2:-1] not in text
        assert "User" not in text.replace("Credentials", "")
