"""Authenticators, Message-Authenticator and attribute hiding; stdlib crypto only, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from .codes import Code, DecodeError, DropReason
from .packet import (
    HEADER_LENGTH,
    MAX_PACKET_LENGTH,
    MESSAGE_AUTHENTICATOR,
    Packet,
)

__all__ = [
    "build_request",
    "build_response",
    "hide_password",
    "hide_tunnel_password",
    "message_authenticator_ok",
    "random_authenticator",
    "request_authenticator_ok",
    "response_authenticator",
    "unhide_password",
    "unhide_tunnel_password",
    "verify_response",
]

_ZERO16 = bytes(16)
_MA_PLACEHOLDER = bytes((MESSAGE_AUTHENTICATOR, 18)) + _ZERO16
PROXY_STATE = 33

# Requests whose Request Authenticator is an MD5 over the packet (RFC 2866
# section 3, RFC 5176 section 2.3) rather than a random nonce.
_HASHED_REQUESTS = frozenset({Code.ACCOUNTING_REQUEST, Code.COA_REQUEST, Code.DISCONNECT_REQUEST})
_RANDOM_REQUESTS = frozenset({Code.ACCESS_REQUEST, Code.STATUS_SERVER})
_REQUESTS = _HASHED_REQUESTS | _RANDOM_REQUESTS | {Code.STATUS_CLIENT}


def random_authenticator() -> bytes:
    """Return a fresh unpredictable 16-octet Request Authenticator.

    RFC 2865 section 3: "the Request Authenticator value ... SHOULD exhibit
    global and temporal uniqueness" and be unpredictable.
    """
    return secrets.token_bytes(16)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _xor16(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a) ^ int.from_bytes(b)).to_bytes(16)


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Hide a User-Password value (RFC 2865 section 5.2).

    The password is NUL-padded to a multiple of 16 octets (at most 128).
    """
    if len(password) > 128:
        raise ValueError("password longer than 128 octets")
    padded = password + bytes(-len(password) % 16 if password else 16)
    out = bytearray()
    prev = authenticator
    for i in range(0, len(padded), 16):
        block = _xor16(padded[i : i + 16], _md5(secret + prev))
        out += block
        prev = block
    return bytes(out)


def unhide_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Recover a User-Password value hidden per RFC 2865 section 5.2.

    Trailing NUL padding is stripped. Raises ``DecodeError(malformed_attribute)``
    when the length is not a multiple of 16 in 16..128.
    """
    n = len(hidden)
    if n < 16 or n > 128 or n % 16:
        raise DecodeError(DropReason.MALFORMED_ATTRIBUTE)
    out = bytearray()
    prev = authenticator
    for i in range(0, n, 16):
        block = hidden[i : i + 16]
        out += _xor16(block, _md5(secret + prev))
        prev = block
    return bytes(out).rstrip(b"\x00")


def hide_tunnel_password(
    password: bytes, secret: bytes, authenticator: bytes, *, salt: bytes | None = None
) -> bytes:
    """Salt-encrypt a Tunnel-Password (RFC 2868 section 3.5); returns salt + ciphertext.

    ``authenticator`` is the Request Authenticator of the request being answered.
    The Tag octet is not included. A random salt is drawn when none is given.
    """
    if len(password) > 239:
        raise ValueError("tunnel password longer than 239 octets")
    if salt is None:
        salt = secrets.token_bytes(2)
    if len(salt) != 2:
        raise ValueError("salt must be 2 octets")
    # RFC 2868 section 3.5: "The most significant bit (leftmost) of the Salt
    # field MUST be set (1)."
    salt = bytes((salt[0] | 0x80, salt[1]))
    plain = bytes((len(password),)) + password
    plain += bytes(-len(plain) % 16)
    out = bytearray(salt)
    prev = authenticator + salt
    for i in range(0, len(plain), 16):
        block = _xor16(plain[i : i + 16], _md5(secret + prev))
        out += block
        prev = block
    return bytes(out)


def unhide_tunnel_password(data: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Decrypt a salt-encrypted value (salt + ciphertext, no Tag) per RFC 2868 section 3.5.

    Raises ``DecodeError(malformed_attribute)`` on a bad length.
    """
    n = len(data) - 2
    if n < 16 or n % 16:
        raise DecodeError(DropReason.MALFORMED_ATTRIBUTE)
    salt = data[:2]
    out = bytearray()
    prev = authenticator + salt
    for i in range(2, n + 2, 16):
        block = data[i : i + 16]
        out += _xor16(block, _md5(secret + prev))
        prev = block
    size = out[0]
    if size > len(out) - 1:
        raise DecodeError(DropReason.MALFORMED_ATTRIBUTE)
    return bytes(out[1 : 1 + size])


def response_authenticator(
    code: int, identifier: int, request_authenticator: bytes, attributes: bytes, secret: bytes
) -> bytes:
    """Compute a Response Authenticator (RFC 2865 section 3).

    MD5(Code + ID + Length + RequestAuth + Attributes + Secret).
    """
    length = HEADER_LENGTH + len(attributes)
    header = bytes((code, identifier, length >> 8, length & 0xFF))
    return _md5(header + request_authenticator + attributes + secret)


def request_authenticator_ok(packet: Packet, secret: bytes) -> bool:
    """Check the Request Authenticator of a request.

    Accounting-Request (RFC 2866 section 3), CoA-Request and
    Disconnect-Request (RFC 5176 section 2.3) carry
    MD5(Code + ID + Length + 16 zero octets + Attributes + Secret).
    Access-Request and Status-Server carry a random nonce that cannot be
    checked: True is returned and the caller relies on Message-Authenticator.
    Any other code (a response) gives False.
    """
    code = packet.code
    if code in _RANDOM_REQUESTS:
        return True
    if code not in _HASHED_REQUESTS:
        return False
    raw = packet.raw
    expected = _md5(raw[:4] + _ZERO16 + raw[HEADER_LENGTH:] + secret)
    return hmac.compare_digest(expected, packet.authenticator)


def verify_response(response: Packet, request_authenticator: bytes, secret: bytes) -> bool:
    """Check the Response Authenticator of ``response`` against the request's authenticator."""
    raw = response.raw
    expected = _md5(raw[:4] + request_authenticator + raw[HEADER_LENGTH:] + secret)
    return hmac.compare_digest(expected, response.authenticator)


def _message_authenticator_offset(raw: bytes) -> int:
    """Return the offset of the only Message-Authenticator value, -1 if absent, -2 if repeated."""
    found = -1
    pos = HEADER_LENGTH
    end = len(raw)
    while pos + 2 <= end:
        alen = raw[pos + 1]
        if alen < 2:
            break
        if raw[pos] == MESSAGE_AUTHENTICATOR:
            if found != -1:
                return -2
            found = pos + 2
        pos += alen
    return found


def _ma_authenticator(packet: Packet, request_authenticator: bytes | None) -> bytes:
    if request_authenticator is not None:
        return request_authenticator
    if packet.code in _HASHED_REQUESTS:
        # RFC 5176 section 3.3: for CoA-Request and Disconnect-Request the
        # HMAC is computed with the Request Authenticator taken as sixteen
        # zero octets; accounting is treated the same way.
        return _ZERO16
    if packet.code not in _REQUESTS:
        raise ValueError("a response needs the request authenticator")
    return packet.authenticator


def message_authenticator_ok(
    packet: Packet, secret: bytes, request_authenticator: bytes | None = None
) -> bool | None:
    """Check Message-Authenticator (RFC 3579 section 3.2, RFC 2869 section 5.14).

    Returns None when the attribute is absent, False when it is wrong or
    present more than once. For a response pass the authenticator of the
    request it answers: RFC 3579 section 3.2 computes it "using the
    Request-Authenticator from the Access-Request this packet is in reply to".
    Accounting-Request, CoA-Request and Disconnect-Request are checked with
    the authenticator field taken as zeros (RFC 5176 section 3.3). An
    Accounting-Response is accepted when signed over either the request's
    authenticator (RFC 5997 section 3) or zeros (the common convention).
    """
    raw = packet.raw
    off = _message_authenticator_offset(raw)
    if off == -1:
        return None
    if off == -2:
        return False
    auth = _ma_authenticator(packet, request_authenticator)
    body = raw[HEADER_LENGTH:off] + _ZERO16 + raw[off + 16 :]
    received = raw[off : off + 16]
    if hmac.compare_digest(_hmac_md5(secret, raw[:4] + auth + body), received):
        return True
    if packet.code == Code.ACCOUNTING_RESPONSE and auth != _ZERO16:
        # RFC 5997 section 3 signs a reply to Status-Server with the request's
        # authenticator; for a reply to Accounting-Request, which no RFC
        # covers, common implementations use sixteen zero octets instead.
        return hmac.compare_digest(_hmac_md5(secret, raw[:4] + _ZERO16 + body), received)
    return False


def _hmac_md5(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.md5).digest()


def _header(code: int, identifier: int, length: int) -> bytes:
    if length > MAX_PACKET_LENGTH:
        raise ValueError("packet longer than 4096 octets")
    if not 0 <= code <= 255 or not 0 <= identifier <= 255:
        raise ValueError("code and identifier must fit in one octet")
    return bytes((code, identifier, length >> 8, length & 0xFF))


def _sign_message_authenticator(header: bytes, auth: bytes, body: bytes, secret: bytes) -> bytes:
    """Fill the Message-Authenticator placed first in ``body`` (value at body[2:18])."""
    return body[:2] + _hmac_md5(secret, header + auth + body) + body[18:]


def build_response(
    request: Packet,
    code: int,
    attributes: bytes,
    secret: bytes,
    *,
    message_authenticator: bool = True,
    proxy_states: Sequence[bytes] = (),
) -> bytes:
    """Build a signed reply to ``request``.

    The Message-Authenticator goes first, as the mitigation for the
    BlastRADIUS forgery recommends, so no attacker-chosen prefix precedes it.
    Proxy-State values are appended in request order; RFC 2865 section 5.33:
    they "MUST be copied unmodified and in order into the response packet".
    Pass ``request.get_all(33)`` as ``proxy_states``.
    """
    parts = [_MA_PLACEHOLDER] if message_authenticator else []
    parts.append(attributes)
    for ps in proxy_states:
        if len(ps) > 253:
            raise ValueError("Proxy-State longer than 253 octets")
        parts.append(bytes((PROXY_STATE, len(ps) + 2)) + ps)
    body = b"".join(parts)
    header = _header(code, request.identifier, HEADER_LENGTH + len(body))
    req_auth = request.authenticator
    if message_authenticator:
        ma_auth = req_auth
        if code == Code.ACCOUNTING_RESPONSE and request.code == Code.ACCOUNTING_REQUEST:
            ma_auth = _ZERO16  # the common convention; see message_authenticator_ok
        body = _sign_message_authenticator(header, ma_auth, body, secret)
    resp_auth = _md5(header + req_auth + body + secret)
    return header + resp_auth + body


def build_request(
    code: int,
    identifier: int,
    attributes: bytes,
    secret: bytes,
    *,
    message_authenticator: bool,
    authenticator: bytes | None = None,
) -> bytes:
    """Build a signed request as a client (NAS side or CoA/DM sender).

    Access-Request and Status-Server get ``authenticator`` or a random one
    (hide User-Password with the same authenticator you pass here).
    Accounting-Request, CoA-Request and Disconnect-Request get the hashed
    Request Authenticator (RFC 2866 section 3, RFC 5176 section 2.3); the
    Message-Authenticator is computed first, over zeros.
    """
    body = (_MA_PLACEHOLDER + attributes) if message_authenticator else attributes
    header = _header(code, identifier, HEADER_LENGTH + len(body))
    if code in _RANDOM_REQUESTS:
        auth = random_authenticator() if authenticator is None else authenticator
        if len(auth) != 16:
            raise ValueError("authenticator must be 16 octets")
        if message_authenticator:
            body = _sign_message_authenticator(header, auth, body, secret)
        return header + auth + body
    if code in _HASHED_REQUESTS:
        if authenticator is not None:
            raise ValueError("this request code has a computed authenticator")
        if message_authenticator:
            body = _sign_message_authenticator(header, _ZERO16, body, secret)
        return header + _md5(header + _ZERO16 + body + secret) + body
    raise ValueError("not a request code")
