"""The steps of an Access-Request before the reply: read the credentials, then the checks.

Each step is a small callable over one ``Attempt`` and the time; it returns
an ``Outcome`` to stop, or None to go on (aaa/pipeline.py runs them). Pure:
no I/O, no clock of their own.
"""

from __future__ import annotations

from collections.abc import Callable

from ispcare_radius.aaa.hours import login_window
from ispcare_radius.aaa.methods import REGISTRY
from ispcare_radius.aaa.methods.base import Attempt, Method
from ispcare_radius.aaa.methods.mac import Mac
from ispcare_radius.aaa.model import SubscriberStatus
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.privacy.blind import normalize_mac
from ispcare_radius.protocol.packet import Packet

USER_NAME = 1
CALLING_STATION_ID = 31
EAP_MESSAGE = 79

Step = Callable[[Attempt, float], Outcome | None]


def _claimant(packet: Packet, enabled: tuple[Method, ...]) -> Method | Outcome:
    claims = [m for m in REGISTRY.values() if m.claims(packet)]
    if len(claims) > 1:
        # RFC 2865 section 4.1: "An Access-Request MUST NOT contain both a
        # User-Password and a CHAP-Password." Two proofs of one password are
        # refused alike, whichever methods they belong to.
        return Outcome.CONFLICTING_CREDENTIALS
    if not claims:
        if packet.get(EAP_MESSAGE) is not None:
            return Outcome.UNSUPPORTED_METHOD
        return Outcome.NO_CREDENTIALS
    method = claims[0]
    # The enabled instance carries its settings (see ``methods.configure``).
    return next((m for m in enabled if m.name == method.name), Outcome.UNSUPPORTED_METHOD)


def read_credentials(attempt: Attempt, now: float) -> Outcome | None:
    """User-Name, then the enabled method that claims the request reads its credentials."""
    packet = attempt.request.packet
    raw_name = packet.get(USER_NAME)
    if not raw_name:
        return Outcome.NO_USER_NAME
    try:
        # RFC 2865 section 5.1: the User-Name is UTF-8 text (RFC 3629). Bytes
        # that are not would all collapse into one replacement-character name.
        attempt.user_name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        return Outcome.MALFORMED_USER_NAME
    found = _claimant(packet, attempt.methods)
    if isinstance(found, Outcome):
        return found
    attempt.method = found
    outcome = found.read(attempt)
    mac = next((m for m in attempt.methods if isinstance(m, Mac)), None)
    if outcome is None and found.name == "pap" and mac is not None and mac.takes_over(attempt):
        # A PAP password that is empty, the User-Name's own MAC or the fixed
        # MAC-auth password makes this MAC auth (methods/mac.py).
        attempt.method = mac
        outcome = mac.read(attempt)
    return outcome


def check_password(attempt: Attempt, now: float) -> Outcome | None:
    """The claiming method verifies the credentials against the stored password.

    Checked before the account status, so that only someone who knows the
    password learns that an account is suspended or expired.
    """
    method = attempt.method
    if method is None or attempt.subscriber is None:
        return Outcome.BAD_PASSWORD
    return method.verify(attempt)


_STATUS_OUTCOMES = {
    SubscriberStatus.SUSPENDED: Outcome.SUSPENDED,
    SubscriberStatus.EXPIRED: Outcome.EXPIRED,
    SubscriberStatus.DEACTIVATED: Outcome.DEACTIVATED,
}


def check_status(attempt: Attempt, now: float) -> Outcome | None:
    """Only active, unexpired subscribers get in."""
    sub = attempt.subscriber
    assert sub is not None
    outcome = _STATUS_OUTCOMES.get(sub.status)
    if outcome is not None:
        return outcome
    if sub.expires_at is not None and sub.expires_at.timestamp() <= now:
        return Outcome.EXPIRED
    return None


def check_mac_lock(attempt: Attempt, now: float) -> Outcome | None:
    """A subscriber locked to a MAC may log in only from that Calling-Station-Id."""
    sub = attempt.subscriber
    assert sub is not None
    if sub.mac_lock is None:
        return None
    raw = attempt.request.packet.get(CALLING_STATION_ID)
    mac = normalize_mac(raw.decode("ascii", "replace")) if raw else None
    if mac is None or mac != sub.mac_lock:
        return Outcome.MAC_LOCK_MISMATCH
    return None


_WALLED_GARDEN_OUTCOMES = {
    Outcome.SUSPENDED: Outcome.SUSPENDED_WALLED_GARDEN,
    Outcome.EXPIRED: Outcome.EXPIRED_WALLED_GARDEN,
}


def check_walled_garden(attempt: Attempt, now: float) -> Outcome | None:
    """A suspended or expired subscriber whose plan names a walled garden is let into it.

    The MAC lock still applies: a locked account is not let into its walled
    garden from another device. Other subscribers go on to ``check_status``.
    """
    sub = attempt.subscriber
    assert sub is not None
    if sub.plan is None or not sub.plan.walled_garden:
        return None
    garden = _WALLED_GARDEN_OUTCOMES.get(check_status(attempt, now) or Outcome.ACCEPT)
    if garden is None:
        return None
    return check_mac_lock(attempt, now) or garden


def check_login_hours(attempt: Attempt, now: float) -> Outcome | None:
    """A plan with login hours lets its subscribers in only inside them."""
    sub = attempt.subscriber
    assert sub is not None
    plan = sub.plan
    if plan is None or not plan.login_hours:
        return None
    if not login_window(plan.login_hours, plan.time_zone, now=now).allowed:
        return Outcome.OUTSIDE_LOGIN_HOURS
    return None


WALLED_GARDEN_OUTCOMES = frozenset(
    (*_WALLED_GARDEN_OUTCOMES.values(), Outcome.FLAGGED_WALLED_GARDEN)
)
DEFAULT_CHECKS: tuple[Step, ...] = (
    check_password,
    check_walled_garden,
    check_status,
    check_mac_lock,
    check_login_hours,
)
