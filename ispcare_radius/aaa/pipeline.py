"""The Access-Request pipeline: credentials -> subscriber -> checks -> reply.

Each step is a small callable over one ``Attempt``; it returns an ``Outcome``
to stop, or None to go on. How the password is proven (PAP, CHAP, MS-CHAP)
is a plug-in from ``aaa.methods``. The outcome becomes a reply code through
the fail-closed table in ``outcome``. Storage is reached only through the
ports; never imports asyncpg or ``store``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ispcare_radius.aaa.hours import login_window
from ispcare_radius.aaa.methods import DEFAULT_METHODS, REGISTRY, resolve
from ispcare_radius.aaa.methods.base import Attempt, Method
from ispcare_radius.aaa.methods.mac import Mac, mac_of
from ispcare_radius.aaa.model import AuthEvent, AuthResult, SubscriberStatus
from ispcare_radius.aaa.outcome import Outcome, StoreFailureAction, reply_codes
from ispcare_radius.aaa.ports import (
    MISS,
    AuthEventSink,
    CachedDirectory,
    CachedMacDirectory,
    MacDirectory,
    Miss,
    StoreUnavailable,
    SubscriberDirectory,
)
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import NOT_READY, NotReady, Reply, Request
from ispcare_radius.privacy.blind import normalize_mac
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import Packet

__all__ = [
    "DEFAULT_CHECKS",
    "AccessHandler",
    "Attempt",
    "AuthSettings",
    "Step",
    "check_login_hours",
    "check_mac_lock",
    "check_password",
    "check_status",
    "check_walled_garden",
    "read_credentials",
]

USER_NAME = 1
NAS_IP_ADDRESS = 4
CALLING_STATION_ID = 31
NAS_IPV6_ADDRESS = 95
EAP_MESSAGE = 79


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How Access-Requests are decided; ``methods`` names the enabled methods."""

    on_store_failure: StoreFailureAction = StoreFailureAction.REJECT
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self) -> None:
        resolve(self.methods)  # ValueError naming an unknown method, at start


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
    return method if method in enabled else Outcome.UNSUPPORTED_METHOD


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
    mac = REGISTRY.get("mac")
    if (
        outcome is None
        and found.name == "pap"
        and isinstance(mac, Mac)
        and mac in attempt.methods
        and mac.takes_over(attempt)
    ):
        # A PAP password that is empty or the User-Name's own MAC makes this
        # MAC auth (the precedence is documented in methods/mac.py).
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


WALLED_GARDEN_OUTCOMES = frozenset(_WALLED_GARDEN_OUTCOMES.values())
DEFAULT_CHECKS: tuple[Step, ...] = (
    check_password,
    check_walled_garden,
    check_status,
    check_mac_lock,
    check_login_hours,
)


class AccessHandler:
    """Answers Access-Requests; implements the server's ``Handler`` port."""

    def __init__(
        self,
        *,
        directory: SubscriberDirectory,
        events: AuthEventSink,
        renderer: ReplyRenderer,
        settings: AuthSettings = AuthSettings(),
        checks: Sequence[Step] = DEFAULT_CHECKS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._directory = directory
        self._events = events
        self._renderer = renderer
        self._codes = reply_codes(settings.on_store_failure)
        self._methods = resolve(settings.methods)
        self._checks = tuple(checks)
        self._clock = clock
        self._peek = directory.peek if isinstance(directory, CachedDirectory) else None
        # Devices and the blocked-MAC list, when the directory knows them.
        self._macs = directory if isinstance(directory, MacDirectory) else None
        self._peek_macs = directory if isinstance(directory, CachedMacDirectory) else None

    def try_handle_now(self, request: Request) -> Reply | NotReady:
        """Answer at once when the subscriber is in memory; else ``NOT_READY``.

        The same steps as ``handle``, without a task: most Access-Requests
        are for cached subscribers.
        """
        if self._peek is None:
            return NOT_READY
        now = self._clock()
        attempt = Attempt(request, self._methods)
        try:
            outcome = read_credentials(attempt, now)
            if outcome is None:
                found = self._peek_lookup(attempt)
                if isinstance(found, Miss):
                    return NOT_READY
                outcome = found or self._check(attempt, now)
        except Exception:  # a bug must not become an accept or a crash
            outcome = Outcome.INTERNAL_ERROR
        return self._answer(attempt, outcome, now)

    async def handle(self, request: Request) -> Reply:
        now = self._clock()
        attempt = Attempt(request, self._methods)
        try:
            outcome = await self._decide(attempt, now)
        except Exception:  # a bug must not become an accept or a crash
            outcome = Outcome.INTERNAL_ERROR
        return self._answer(attempt, outcome, now)

    def _answer(self, attempt: Attempt, outcome: Outcome, now: float) -> Reply:
        attributes = b""
        method = attempt.method
        if outcome is Outcome.ACCEPT:
            assert attempt.subscriber is not None
            try:
                attributes = self._renderer.accept(attempt.subscriber, attempt.request.nas, now=now)
                if method is not None:
                    attributes += method.accept_attributes(attempt)
            except Exception:
                outcome = Outcome.INTERNAL_ERROR
        elif outcome in WALLED_GARDEN_OUTCOMES:
            assert attempt.subscriber is not None
            try:
                sub, nas = attempt.subscriber, attempt.request.nas
                attributes = self._renderer.walled_garden(sub, nas, outcome)
                if method is not None:
                    # An MS-CHAPv2 peer needs MS-CHAP2-Success in any accept.
                    attributes += method.accept_attributes(attempt)
            except Exception:
                outcome = Outcome.INTERNAL_ERROR
        code = self._codes[outcome]
        if code is not None and code != Code.ACCESS_ACCEPT:
            attributes = self._renderer.reject(outcome)
            if method is not None:
                # On a failure the reject goes out without the method's extras.
                with contextlib.suppress(Exception):
                    attributes += method.reject_attributes(attempt, outcome)
        self._record(attempt, outcome, code, now)
        return Reply(code, attributes, reason=outcome.value, user_name=attempt.user_name)

    async def _decide(self, attempt: Attempt, now: float) -> Outcome:
        outcome = read_credentials(attempt, now)
        if outcome is not None:
            return outcome
        try:
            outcome = await self._lookup(attempt)
        except StoreUnavailable:
            return Outcome.STORE_UNAVAILABLE
        return outcome or self._check(attempt, now)

    async def _lookup(self, attempt: Attempt) -> Outcome | None:
        """Refuse blocked MACs, then find the subscriber: by device for MAC auth, else by name."""
        if self._macs is not None:
            for mac in _macs_to_screen(attempt):
                if await self._macs.is_blocked(mac):
                    return Outcome.MAC_BLOCKED
        if isinstance(attempt.method, Mac):
            assert isinstance(attempt.credentials, bytes)
            device = None if self._macs is None else await self._macs.by_mac(attempt.credentials)
            if device is None:
                return Outcome.UNKNOWN_DEVICE
            attempt.subscriber = device.subscriber
            return None
        assert attempt.user_name is not None
        attempt.subscriber = await self._directory.by_user_name(attempt.user_name)
        return None

    def _peek_lookup(self, attempt: Attempt) -> Outcome | Miss | None:
        """``_lookup`` from memory only; ``MISS`` when any answer needs storage."""
        assert self._peek is not None
        screen = _macs_to_screen(attempt) if self._macs is not None else ()
        macs = self._peek_macs
        if screen or isinstance(attempt.method, Mac):
            if macs is None:
                # MAC auth with a directory that knows no devices finds none.
                return MISS if self._macs is not None else Outcome.UNKNOWN_DEVICE
            for mac in screen:
                blocked = macs.peek_blocked(mac)
                if isinstance(blocked, Miss):
                    return blocked
                if blocked:
                    return Outcome.MAC_BLOCKED
        if isinstance(attempt.method, Mac):
            assert macs is not None and isinstance(attempt.credentials, bytes)
            device = macs.peek_mac(attempt.credentials)
            if device is None:
                return Outcome.UNKNOWN_DEVICE
            if isinstance(device, Miss):
                return device
            attempt.subscriber = device.subscriber
            return None
        assert attempt.user_name is not None
        found = self._peek(attempt.user_name)
        if isinstance(found, Miss):
            return found
        attempt.subscriber = found
        return None

    def _check(self, attempt: Attempt, now: float) -> Outcome:
        if attempt.subscriber is None:
            return Outcome.UNKNOWN_USER
        for check in self._checks:
            outcome = check(attempt, now)
            if outcome is not None:
                return outcome
        return Outcome.ACCEPT

    def _record(self, attempt: Attempt, outcome: Outcome, code: int | None, now: float) -> None:
        packet = attempt.request.packet
        if code == Code.ACCESS_ACCEPT:
            result = AuthResult.ACCEPT
        elif code is None:
            result = AuthResult.NO_REPLY
        else:
            result = AuthResult.REJECT
        calling = packet.get(CALLING_STATION_ID)
        self._events.submit(
            AuthEvent(
                time=datetime.fromtimestamp(now, UTC),
                subscriber_id=attempt.subscriber.id if attempt.subscriber else None,
                nas_id=attempt.request.nas.id,
                result=result,
                reason=outcome.value,
                user_name=attempt.user_name or "",
                calling_station_id=calling.decode("utf-8", "replace") if calling else None,
                nas_ip=_nas_ip(packet.get(NAS_IP_ADDRESS), packet.get(NAS_IPV6_ADDRESS)),
                method=attempt.method.name if attempt.method is not None else "none",
            )
        )


def _macs_to_screen(attempt: Attempt) -> tuple[bytes, ...]:
    """The MACs checked against the blocked list: Calling-Station-Id's, and the
    User-Name's for MAC auth."""
    found = [mac_of(attempt.request.packet.get(CALLING_STATION_ID))]
    if isinstance(attempt.method, Mac) and isinstance(attempt.credentials, bytes):
        found.append(attempt.credentials)
    return tuple(dict.fromkeys(m for m in found if m is not None))


def _nas_ip(v4: bytes | None, v6: bytes | None) -> str | None:
    if v4 is not None and len(v4) == 4:
        return f"{v4[0]}.{v4[1]}.{v4[2]}.{v4[3]}"
    if v6 is not None and len(v6) == 16:
        return str(ipaddress.IPv6Address(v6))
    return None
