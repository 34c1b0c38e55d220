"""CHAP (RFC 2865 section 5.3, RFC 1994): MD5(ident + password + challenge).

Imports protocol and the method contract only.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from ispcare_radius.aaa.methods.base import (
    Attempt,
    credential_gap,
    credential_reply,
    stored_password,
)
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.protocol.packet import Packet

CHAP_PASSWORD = 3
CHAP_CHALLENGE = 60


@dataclass(frozen=True, slots=True)
class ChapCredentials:
    ident: int
    response: bytes = field(repr=False)
    challenge: bytes = field(repr=False)


def chap_response(ident: int, password: bytes, challenge: bytes) -> bytes:
    """The 16-octet CHAP response (RFC 1994 section 4.1): MD5 of ident, secret, challenge."""
    return hashlib.md5(bytes((ident,)) + password + challenge, usedforsecurity=False).digest()


class Chap:
    """CHAP-MD5 as a NAS relays it in CHAP-Password; adds nothing to the reply."""

    name = "chap"

    def claims(self, packet: Packet) -> bool:
        """A CHAP-Password attribute is present."""
        return packet.get(CHAP_PASSWORD) is not None

    def read(self, attempt: Attempt) -> Outcome | None:
        """Split CHAP-Password into ident and response and pick the challenge."""
        packet = attempt.request.packet
        value = packet.get(CHAP_PASSWORD)
        # RFC 2865 section 5.3: "The Length field is 19": CHAP Ident (1 octet)
        # then the 16-octet CHAP Response.
        if value is None or len(value) != 17:
            return Outcome.MALFORMED_CREDENTIALS
        challenge = packet.get(CHAP_CHALLENGE)
        if challenge is None:
            # RFC 2865 section 5.3: "If the CHAP-Challenge attribute is not
            # present, the Request Authenticator is used as the challenge."
            challenge = packet.authenticator
        elif len(challenge) < 5:
            # RFC 2865 section 5.40: CHAP-Challenge "Length >= 7", so the
            # challenge itself is at least 5 octets.
            return Outcome.MALFORMED_CREDENTIALS
        attempt.credentials = ChapCredentials(value[0], value[1:], challenge)
        return None

    def verify(self, attempt: Attempt) -> Outcome | None:
        """The response against one computed from the stored password, in constant time."""
        creds = attempt.credentials
        password = stored_password(attempt)
        if not isinstance(creds, ChapCredentials) or password is None:
            # An NT or slow hash cannot give MD5 over the cleartext.
            return credential_gap(self.name, attempt) or Outcome.BAD_PASSWORD
        expected = chap_response(creds.ident, password, creds.challenge)
        if not hmac.compare_digest(expected, creds.response):
            return Outcome.BAD_PASSWORD
        return None

    def accept_attributes(self, attempt: Attempt) -> bytes:
        """CHAP adds nothing."""
        return b""

    def reject_attributes(self, attempt: Attempt, outcome: Outcome) -> bytes:
        """A Reply-Message when the account holds no password CHAP can use."""
        return credential_reply(self.name, attempt, outcome)
