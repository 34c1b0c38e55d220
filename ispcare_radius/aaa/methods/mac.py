"""MAC authentication: a device registered to a subscriber, named by its MAC address.

Hotspot, DHCP and 802.1X-bypass NAS (MikroTik ``mac-auth``, Cisco MAB) send
the device MAC as User-Name, and as User-Password too, or an empty password,
or none at all; some send one fixed password configured on the NAS instead
(MikroTik hotspot ``mac-auth-password``, Cisco's configurable MAB password),
which ``[auth] mac_auth_password`` names. Imports protocol, privacy and the
method contract only.

Precedence, deterministic and without a second lookup: a request is MAC auth
exactly when its User-Name is a MAC in one of the common notations AND

* it carries no credentials at all (no User-Password, CHAP-Password,
  MS-CHAP response or EAP-Message): ``claims`` takes it; or
* its User-Password, once unhidden by PAP, is empty, the same MAC in any
  notation, or the configured fixed MAC-auth password: ``takes_over`` moves
  it from PAP to this method.

Any other password is an ordinary PAP login, so a subscriber whose user name
looks like a MAC logs in with PAP as long as their password is not that MAC.
A MAC-authenticated request is looked up in the devices, never by user name.
"""

from __future__ import annotations

import hmac

from ispcare_radius.aaa.methods.base import MICROSOFT, Attempt
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.privacy.blind import normalize_mac
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.packet import Packet

USER_NAME = 1
USER_PASSWORD = 2
CHAP_PASSWORD = 3
EAP_MESSAGE = 79
MS_CHAP_CHALLENGE = 11


def mac_of(value: bytes | None) -> bytes | None:
    """The 6 bytes of a MAC written as ASCII text in ``value``, else None."""
    if not value or len(value) > 32:
        return None
    try:
        return normalize_mac(value.decode("ascii"))
    except UnicodeDecodeError:
        return None


class Mac:
    """MAC authentication; the MAC is the credential, the devices table the proof."""

    name = "mac"

    def __init__(self, fixed_password: Secret | None = None) -> None:
        # The NAS-wide MAC-auth password, if configured; a Secret, so never
        # in a repr or a log line.
        self._fixed = fixed_password if fixed_password else None

    def claims(self, packet: Packet) -> bool:
        """The User-Name is a MAC and the request carries no other credentials."""
        if mac_of(packet.get(USER_NAME)) is None:
            return False
        others = (USER_PASSWORD, CHAP_PASSWORD, EAP_MESSAGE)
        if any(packet.get(t) is not None for t in others):
            return False
        return packet.vsa(MICROSOFT, MS_CHAP_CHALLENGE) is None

    def takes_over(self, attempt: Attempt) -> bool:
        """After PAP: the User-Name is a MAC and the password is empty, that MAC,
        or the configured fixed MAC-auth password.

        The MAC comparison is of normalised MACs (public values, not secrets),
        but constant-time all the same so that no password comparison ever
        leaks timing.
        """
        mac = mac_of(attempt.request.packet.get(USER_NAME))
        password = attempt.password
        if mac is None or password is None:
            return False
        if password == b"":
            return True
        if self._fixed is not None and self._fixed.equals(password):
            return True
        given = mac_of(password)
        return given is not None and hmac.compare_digest(given, mac)

    def read(self, attempt: Attempt) -> Outcome | None:
        """The MAC from User-Name into ``attempt.credentials`` (6 bytes)."""
        mac = mac_of(attempt.request.packet.get(USER_NAME))
        if mac is None:
            return Outcome.MALFORMED_CREDENTIALS
        attempt.credentials = mac
        return None

    def verify(self, attempt: Attempt) -> Outcome | None:
        """A device was found for this MAC: that is the whole proof."""
        if attempt.subscriber is None or not isinstance(attempt.credentials, bytes):
            return Outcome.UNKNOWN_DEVICE
        return None

    def accept_attributes(self, attempt: Attempt) -> bytes:
        """MAC auth adds nothing; the owner's plan is rendered as usual."""
        return b""

    def reject_attributes(self, attempt: Attempt, outcome: Outcome) -> bytes:
        """MAC auth adds nothing."""
        return b""
