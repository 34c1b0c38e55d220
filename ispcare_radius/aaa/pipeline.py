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

from ispcare_radius.aaa.methods import DEFAULT_METHODS, REGISTRY, resolve
from ispcare_radius.aaa.methods.base import Attempt, Method
from ispcare_radius.aaa.model import AuthEvent, AuthResult, SubscriberStatus
from ispcare_radius.aaa.outcome import Outcome, StoreFailureAction, reply_codes
from ispcare_radius.aaa.ports import (
    AuthEventSink,
    CachedDirectory,
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
    "check_mac_lock",
    "check_password",
    "check_status",
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
    return found.read(attempt)


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


DEFAULT_CHECKS: tuple[Step, ...] = (check_password, check_status, check_mac_lock)


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
                assert attempt.user_name is not None
                found = self._peek(attempt.user_name)
                if isinstance(found, Miss):
                    return NOT_READY
                attempt.subscriber = found
                outcome = self._check(attempt, now)
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
        assert attempt.user_name is not None
        try:
            attempt.subscriber = await self._directory.by_user_name(attempt.user_name)
        except StoreUnavailable:
            return Outcome.STORE_UNAVAILABLE
        return self._check(attempt, now)

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


def _nas_ip(v4: bytes | None, v6: bytes | None) -> str | None:
    if v4 is not None and len(v4) == 4:
        return f"{v4[0]}.{v4[1]}.{v4[2]}.{v4[3]}"
    if v6 is not None and len(v6) == 16:
        return str(ipaddress.IPv6Address(v6))
    return None
