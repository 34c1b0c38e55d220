"""MS-CHAPv1 (RFC 2433) and MS-CHAPv2 (RFC 2759) as RADIUS carries them (RFC 2548).

Imports protocol, the method contract and the MS-CHAP primitives only.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from types import MappingProxyType

from ispcare_radius.aaa.methods.base import (
    MICROSOFT,
    Attempt,
    credential_gap,
    credential_reply,
    stored_nt_hash,
    stored_password,
    vsa,
)
from ispcare_radius.aaa.methods.mscrypto import (
    authenticator_response,
    challenge_hash,
    challenge_response,
    hash_nt_password_hash,
    lm_password_hash,
    mppe_v2_keys,
)
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.protocol.authenticator import hide_password, hide_tunnel_password
from ispcare_radius.protocol.packet import Packet

# RFC 2548 Microsoft vendor attribute numbers.
MS_CHAP_RESPONSE = 1
MS_CHAP_ERROR = 2
MS_MPPE_ENCRYPTION_POLICY = 7
MS_MPPE_ENCRYPTION_TYPES = 8
MS_CHAP_CHALLENGE = 11
MS_CHAP_MPPE_KEYS = 12
MS_MPPE_SEND_KEY = 16
MS_MPPE_RECV_KEY = 17
MS_CHAP2_RESPONSE = 25
MS_CHAP2_SUCCESS = 26

# RFC 2548 sections 2.4.4 and 2.4.5, as FreeRADIUS sends them by default:
# encryption allowed (not required), RC4 with 40- or 128-bit keys.
ENCRYPTION_ALLOWED = 1
RC4_40_OR_128 = 6
_MPPE_POLICY = vsa(MICROSOFT, MS_MPPE_ENCRYPTION_POLICY, ENCRYPTION_ALLOWED.to_bytes(4))
_MPPE_TYPES = vsa(MICROSOFT, MS_MPPE_ENCRYPTION_TYPES, RC4_40_OR_128.to_bytes(4))

# Windows error numbers for the E= field of MS-CHAP-Error (RFC 2759 section 6):
# 646 restricted logon hours, 647 account disabled, 691 authentication failure.
# Every outcome not listed is 691, so a guesser learns nothing beyond
# "failed" (status and login hours are only checked after the password matched).
ERROR_RESTRICTED_LOGON_HOURS = 646
ERROR_ACCT_DISABLED = 647
ERROR_AUTHENTICATION_FAILURE = 691
_ERRORS = MappingProxyType(
    {
        Outcome.SUSPENDED: ERROR_ACCT_DISABLED,
        Outcome.EXPIRED: ERROR_ACCT_DISABLED,
        Outcome.DEACTIVATED: ERROR_ACCT_DISABLED,
        Outcome.OUTSIDE_LOGIN_HOURS: ERROR_RESTRICTED_LOGON_HOURS,
    }
)
_MESSAGES = MappingProxyType(
    {
        ERROR_RESTRICTED_LOGON_HOURS: "Restricted logon hours",
        ERROR_ACCT_DISABLED: "Account disabled",
        ERROR_AUTHENTICATION_FAILURE: "Authentication failed",
    }
)


def error_code(outcome: Outcome) -> int:
    """The MS-CHAP E= number sent for a rejected ``outcome``."""
    return _ERRORS.get(outcome, ERROR_AUTHENTICATION_FAILURE)


@dataclass(frozen=True, slots=True)
class V2Credentials:
    ident: int
    authenticator_challenge: bytes = field(repr=False)
    peer_challenge: bytes = field(repr=False)
    nt_response: bytes = field(repr=False)
    user_name: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class V2Proof:
    """What a successful v2 verification derived: the accept hook needs it."""

    password_hash_hash: bytes = field(repr=False)


class MsChapV2:
    """MS-CHAPv2: verifies the NT-Response, answers with S= and 128-bit MPPE keys."""

    name = "mschapv2"

    def claims(self, packet: Packet) -> bool:
        """An MS-CHAP2-Response is present."""
        return packet.vsa(MICROSOFT, MS_CHAP2_RESPONSE) is not None

    def read(self, attempt: Attempt) -> Outcome | None:
        """Parse MS-CHAP-Challenge (16 octets) and MS-CHAP2-Response (50 octets)."""
        packet = attempt.request.packet
        challenge = packet.vsa(MICROSOFT, MS_CHAP_CHALLENGE)
        response = packet.vsa(MICROSOFT, MS_CHAP2_RESPONSE)
        # RFC 2548 section 2.3.2: Ident (1), Flags (1), Peer-Challenge (16),
        # Reserved (8), Response (24); RFC 2759 section 3: a 16-octet challenge.
        if challenge is None or len(challenge) != 16 or response is None or len(response) != 50:
            return Outcome.MALFORMED_CREDENTIALS
        user = (attempt.user_name or "").encode("utf-8")
        # RFC 2759 section 8.2: "Only the user name (as presented by the peer
        # and excluding any prepended domain name) is used".
        user = user.rpartition(b"\\")[2]
        attempt.credentials = V2Credentials(
            ident=response[0],
            authenticator_challenge=challenge,
            peer_challenge=response[2:18],
            nt_response=response[26:50],
            user_name=user,
        )
        return None

    def verify(self, attempt: Attempt) -> Outcome | None:
        """The NT-Response against one computed from the stored (or derived) NT hash."""
        creds = attempt.credentials
        password_hash = stored_nt_hash(attempt)
        if not isinstance(creds, V2Credentials) or password_hash is None:
            return credential_gap(self.name, attempt) or Outcome.BAD_PASSWORD
        challenge = challenge_hash(
            creds.peer_challenge, creds.authenticator_challenge, creds.user_name
        )
        expected = challenge_response(challenge, password_hash)
        if not hmac.compare_digest(expected, creds.nt_response):
            return Outcome.BAD_PASSWORD
        attempt.verified = V2Proof(hash_nt_password_hash(password_hash))
        return None

    def accept_attributes(self, attempt: Attempt) -> bytes:
        """MS-CHAP2-Success (ident + S=...), MS-MPPE-Recv/Send-Key, policy and types."""
        creds, proof = attempt.credentials, attempt.verified
        if not isinstance(creds, V2Credentials) or not isinstance(proof, V2Proof):
            raise RuntimeError("mschapv2 accept without a verified response")
        success = authenticator_response(
            proof.password_hash_hash,
            creds.nt_response,
            creds.peer_challenge,
            creds.authenticator_challenge,
            creds.user_name,
        )
        send_key, recv_key = mppe_v2_keys(proof.password_hash_hash, creds.nt_response)
        secret = attempt.request.nas.secret.reveal()
        auth = attempt.request.packet.authenticator
        # RFC 2548 section 2.4.2: "The Salt field MUST be unique per key": two
        # keys in one packet get salts that differ in their last bit.
        salt = secrets.token_bytes(2)
        other = bytes((salt[0], salt[1] ^ 1))
        hidden_recv = hide_tunnel_password(recv_key, secret, auth, salt=salt)
        hidden_send = hide_tunnel_password(send_key, secret, auth, salt=other)
        return (
            vsa(MICROSOFT, MS_CHAP2_SUCCESS, bytes((creds.ident,)) + success)
            + vsa(MICROSOFT, MS_MPPE_RECV_KEY, hidden_recv)
            + vsa(MICROSOFT, MS_MPPE_SEND_KEY, hidden_send)
            + _MPPE_POLICY
            + _MPPE_TYPES
        )

    def reject_attributes(self, attempt: Attempt, outcome: Outcome) -> bytes:
        """MS-CHAP-Error: ident + ``E=<n> R=0 C=<new challenge> V=3 M=<text>``."""
        creds = attempt.credentials
        if not isinstance(creds, V2Credentials):
            return b""
        code = error_code(outcome)
        reason = credential_reply(self.name, attempt, outcome)
        # RFC 2759 section 6: "cccc...cccc is the ASCII representation of a
        # hexadecimal challenge value. This field MUST be exactly 32 octets
        # long and MUST be present." Retry is not offered (R=0); the value
        # is a fresh one, never the challenge just answered.
        text = f"E={code} R=0 C={secrets.token_hex(16).upper()} V=3 M={_MESSAGES[code]}"
        return reason + vsa(MICROSOFT, MS_CHAP_ERROR, bytes((creds.ident,)) + text.encode("ascii"))


@dataclass(frozen=True, slots=True)
class V1Credentials:
    ident: int
    challenge: bytes = field(repr=False)
    nt_response: bytes = field(repr=False)


class MsChapV1:
    """MS-CHAPv1: verifies the NT-Response, answers with MS-CHAP-MPPE-Keys."""

    name = "mschap"

    def claims(self, packet: Packet) -> bool:
        """An MS-CHAP-Response is present."""
        return packet.vsa(MICROSOFT, MS_CHAP_RESPONSE) is not None

    def read(self, attempt: Attempt) -> Outcome | None:
        """Parse MS-CHAP-Challenge (8 octets) and MS-CHAP-Response (50 octets)."""
        packet = attempt.request.packet
        challenge = packet.vsa(MICROSOFT, MS_CHAP_CHALLENGE)
        response = packet.vsa(MICROSOFT, MS_CHAP_RESPONSE)
        # RFC 2548 section 2.1.3: Ident (1), Flags (1), LM-Response (24),
        # NT-Response (24); RFC 2433 section 5: an 8-octet challenge.
        if challenge is None or len(challenge) != 8 or response is None or len(response) != 50:
            return Outcome.MALFORMED_CREDENTIALS
        # RFC 2548 section 2.1.3: Flags bit 0 set means "use the NT-Response";
        # clear means only the LAN Manager response is valid, which is too
        # weak to accept.
        if not response[1] & 1:
            return Outcome.UNSUPPORTED_METHOD
        attempt.credentials = V1Credentials(response[0], challenge, response[26:50])
        return None

    def verify(self, attempt: Attempt) -> Outcome | None:
        """The NT-Response against one computed from the stored (or derived) NT hash."""
        creds = attempt.credentials
        password_hash = stored_nt_hash(attempt)
        if not isinstance(creds, V1Credentials) or password_hash is None:
            return credential_gap(self.name, attempt) or Outcome.BAD_PASSWORD
        expected = challenge_response(creds.challenge, password_hash)
        if not hmac.compare_digest(expected, creds.nt_response):
            return Outcome.BAD_PASSWORD
        return None

    def accept_attributes(self, attempt: Attempt) -> bytes:
        """MS-CHAP-MPPE-Keys (LM key + NT hash-hash, hidden), policy and types."""
        password = stored_password(attempt)
        password_hash = stored_nt_hash(attempt)
        if password_hash is None:
            raise RuntimeError("mschap accept without a stored password or NT hash")
        # RFC 2548 section 2.4.1: the first 8 octets of the LAN Manager hash
        # and a 16-octet NT key. As FreeRADIUS and Windows servers do, the NT
        # key is the hash of the NT hash (RFC 3079 section 2.4 uses it too),
        # not the NT hash the RFC's text names. An account holding only an NT
        # hash has no LAN Manager hash: its 8 octets are zero, as FreeRADIUS
        # sends them without an LM-Password.
        lm_key = bytes(8) if password is None else lm_password_hash(password)[:8]
        keys = lm_key + hash_nt_password_hash(password_hash)
        secret = attempt.request.nas.secret.reveal()
        auth = attempt.request.packet.authenticator
        # RFC 2548 section 2.4.1: the Keys field is hidden "in the same manner
        # as ... the User-Password attribute", padded to 32 octets.
        hidden = hide_password(keys, secret, auth)
        return vsa(MICROSOFT, MS_CHAP_MPPE_KEYS, hidden) + _MPPE_POLICY + _MPPE_TYPES

    def reject_attributes(self, attempt: Attempt, outcome: Outcome) -> bytes:
        """MS-CHAP-Error: ident + ``E=<n> R=0``."""
        creds = attempt.credentials
        if not isinstance(creds, V1Credentials):
            return b""
        text = f"E={error_code(outcome)} R=0"
        reason = credential_reply(self.name, attempt, outcome)
        return reason + vsa(MICROSOFT, MS_CHAP_ERROR, bytes((creds.ident,)) + text.encode("ascii"))
