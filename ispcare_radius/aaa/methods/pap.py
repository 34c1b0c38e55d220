"""PAP (RFC 2865 section 5.2): the hidden User-Password against the stored one.

Imports protocol and the method contract only.
"""

from __future__ import annotations

from ispcare_radius.aaa.methods.base import Attempt
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.protocol.authenticator import unhide_password
from ispcare_radius.protocol.codes import DecodeError
from ispcare_radius.protocol.packet import Packet

USER_PASSWORD = 2


class Pap:
    """Password Authentication Protocol; adds nothing to the reply."""

    name = "pap"

    def claims(self, packet: Packet) -> bool:
        """A User-Password attribute is present."""
        return packet.get(USER_PASSWORD) is not None

    def read(self, attempt: Attempt) -> Outcome | None:
        """Unhide the password with the NAS secret and the Request Authenticator."""
        packet = attempt.request.packet
        hidden = packet.get(USER_PASSWORD)
        if hidden is None:
            return Outcome.NO_CREDENTIALS
        try:
            attempt.password = unhide_password(
                hidden, attempt.request.nas.secret.reveal(), packet.authenticator
            )
        except DecodeError:
            return Outcome.MALFORMED_PASSWORD
        return None

    def verify(self, attempt: Attempt) -> Outcome | None:
        """The cleartext password against the stored one, in constant time."""
        sub = attempt.subscriber
        if sub is None or attempt.password is None:
            return Outcome.BAD_PASSWORD
        if sub.password is None or not sub.password.equals(attempt.password):
            return Outcome.BAD_PASSWORD
        return None

    def accept_attributes(self, attempt: Attempt) -> bytes:
        """PAP adds nothing."""
        return b""

    def reject_attributes(self, attempt: Attempt, outcome: Outcome) -> bytes:
        """PAP adds nothing."""
        return b""
