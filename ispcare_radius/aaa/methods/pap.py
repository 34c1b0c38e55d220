"""PAP (RFC 2865 section 5.2): the hidden User-Password against the stored credential.

The stored credential is the reversible password, an NT hash (the offered
password is hashed the same way) or a scrypt hash (``slow_check`` hands the
pipeline that comparison to run off the event loop). Imports protocol and
the method contract only.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from ispcare_radius.aaa.methods.base import Attempt
from ispcare_radius.aaa.methods.credentials import parse_scrypt
from ispcare_radius.aaa.methods.mscrypto import nt_password_hash
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
        """The cleartext password against the stored credential, in constant time.

        The reversible password is preferred, then the scrypt hash, then the
        NT hash.
        """
        sub = attempt.subscriber
        offered = attempt.password
        if sub is None or offered is None:
            return Outcome.BAD_PASSWORD
        if sub.password is not None:
            return None if sub.password.equals(offered) else Outcome.BAD_PASSWORD
        if sub.slow_hash is not None:
            match = attempt.slow_match
            if match is None:  # not run off the loop beforehand: run it here
                match = _slow_compare(sub.slow_hash.reveal(), offered)()
            return None if match else Outcome.BAD_PASSWORD
        if sub.nt_hash is not None:
            try:
                given = nt_password_hash(offered.decode("utf-8"))
            except UnicodeDecodeError:
                return Outcome.BAD_PASSWORD
            if hmac.compare_digest(given, sub.nt_hash.reveal()):
                return None
            return Outcome.BAD_PASSWORD
        return Outcome.BAD_PASSWORD  # no credential at all: PAP serves every form

    def accept_attributes(self, attempt: Attempt) -> bytes:
        """PAP adds nothing."""
        return b""

    def reject_attributes(self, attempt: Attempt, outcome: Outcome) -> bytes:
        """PAP adds nothing."""
        return b""


def slow_check(attempt: Attempt) -> Callable[[], bool] | None:
    """The CPU-heavy comparison of a PAP password against a scrypt-only account, or None.

    The pipeline runs it in a worker thread and stores the result in
    ``attempt.slow_match`` before ``Pap.verify``; None means verification is
    cheap (or not PAP) and needs no thread.
    """
    sub = attempt.subscriber
    if not isinstance(attempt.method, Pap) or sub is None or attempt.password is None:
        return None
    if sub.password is not None or sub.slow_hash is None:
        return None
    return _slow_compare(sub.slow_hash.reveal(), attempt.password)


def _slow_compare(stored: bytes, offered: bytes) -> Callable[[], bool]:
    def compare() -> bool:
        try:
            parsed = parse_scrypt(stored.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return False  # only our own validated writes get here
        return parsed.matches(offered)

    return compare
