"""The Access-Request pipeline: credentials -> subscriber -> checks -> reply.

Each step (aaa/steps.py) is a small callable over one ``Attempt``; it
returns an ``Outcome`` to stop, or None to go on. How the password is proven (PAP, CHAP, MS-CHAP)
is a plug-in from ``aaa.methods``. The outcome becomes a reply code through
the fail-closed table in ``outcome``. Storage is reached only through the
ports; never imports asyncpg or ``store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ispcare_radius.aaa.cookie import new_cookie
from ispcare_radius.aaa.logininfo import NOWHERE, LoginProfile, LoginProfiler
from ispcare_radius.aaa.methods import DEFAULT_METHODS, configure, resolve
from ispcare_radius.aaa.methods.base import Attempt
from ispcare_radius.aaa.methods.mac import Mac, mac_of
from ispcare_radius.aaa.methods.pap import slow_check
from ispcare_radius.aaa.model import (
    AuthEvent,
    AuthResult,
    MacBinding,
    Subscriber,
)
from ispcare_radius.aaa.outcome import (
    Outcome,
    SimultaneousUsePolicy,
    StoreFailureAction,
    reply_codes,
)
from ispcare_radius.aaa.ports import (
    MISS,
    Admission,
    AuthEventSink,
    CachedDirectory,
    CachedMacDirectory,
    MacBinder,
    MacDirectory,
    Miss,
    SessionLimiter,
    StoreUnavailable,
    SubscriberDirectory,
)
from ispcare_radius.aaa.reply import ReplyRenderer, class_attribute
from ispcare_radius.aaa.request import NOT_READY, NotReady, Reply, Request
from ispcare_radius.aaa.steps import (
    DEFAULT_CHECKS,
    WALLED_GARDEN_OUTCOMES,
    Step,
    check_login_hours,
    check_mac_lock,
    check_password,
    check_status,
    check_walled_garden,
    read_credentials,
)
from ispcare_radius.detect.settings import Action as DetectAction
from ispcare_radius.detect.state import Detector
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.codes import Code

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

NAS_IP_ADDRESS = 4
CALLING_STATION_ID = 31
NAS_IPV6_ADDRESS = 95


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How Access-Requests are decided; ``methods`` names the enabled methods."""

    on_store_failure: StoreFailureAction = StoreFailureAction.REJECT
    methods: tuple[str, ...] = DEFAULT_METHODS
    simultaneous_use_policy: SimultaneousUsePolicy = SimultaneousUsePolicy.REJECT
    # Seconds an accepted login holds its Simultaneous-Use slot while its
    # Accounting Start has not arrived (a NAS that never starts the session).
    reservation_ttl: float = 120.0
    # The fixed password some NAS send for MAC auth (methods/mac.py).
    mac_auth_password: Secret | None = None

    def __post_init__(self) -> None:
        resolve(self.methods)  # ValueError naming an unknown method, at start
        if not self.reservation_ttl > 0:
            raise ValueError("reservation_ttl must be positive")


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
        limiter: SessionLimiter | None = None,
        profiler: LoginProfiler | None = None,
        detector: Detector | None = None,
    ) -> None:
        self._directory = directory
        # Location and device categories for the auth event (aaa/logininfo.py).
        self._profiler = profiler or LoginProfiler()
        # Suspicious-login detection (detect/state.py): its holds are asked
        # before each reply, and each decided login is shown to it.
        self._detector = detector
        self._last_profile: tuple[Request, LoginProfile] | None = None
        self._displaced: set[int] = set()  # id() of attempts admitted by displacing
        # Without a limiter, plans' Simultaneous-Use limits are not enforced.
        self._limiter = limiter
        self._limit_policy = settings.simultaneous_use_policy
        self._reservation_ttl = settings.reservation_ttl
        self._events = events
        self._renderer = renderer
        self._codes = reply_codes(settings.on_store_failure)
        self._methods = configure(
            resolve(settings.methods), mac_auth_password=settings.mac_auth_password
        )
        self._binder = directory if isinstance(directory, MacBinder) else None
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
                if found is None and self._session_limit(attempt) is not None:
                    # The limiter is a database transaction: not for this path.
                    return NOT_READY
                if found is None and _needs_task(attempt):
                    return NOT_READY
                outcome = found or self._held(attempt, now) or self._check(attempt, now)
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
        cookie = new_cookie()
        outcome, attributes = self._render(attempt, outcome, now, cookie)
        limit = self._session_limit(attempt) if outcome is Outcome.ACCEPT else None
        if limit is not None:
            # Last, once the accept is rendered: nothing after the limiter can
            # turn an admitted login into a reject and strand its reservation.
            outcome = await self._admit(attempt, limit, cookie, now)
            if outcome is not Outcome.ACCEPT:
                attributes = b""
        return self._finish(attempt, outcome, attributes, now)

    def _answer(self, attempt: Attempt, outcome: Outcome, now: float) -> Reply:
        outcome, attributes = self._render(attempt, outcome, now, new_cookie())
        return self._finish(attempt, outcome, attributes, now)

    def _render(
        self, attempt: Attempt, outcome: Outcome, now: float, cookie: bytes
    ) -> tuple[Outcome, bytes]:
        """The accept attributes for an accepting ``outcome`` (b"" otherwise);
        INTERNAL_ERROR if they cannot be rendered."""
        attributes = b""
        method = attempt.method
        if outcome is Outcome.ACCEPT and self._garden_held(attempt, now):
            outcome = Outcome.FLAGGED_WALLED_GARDEN
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
        if self._codes[outcome] == Code.ACCESS_ACCEPT:
            # Every Access-Accept names its session with a fresh Class cookie
            # (aaa/cookie.py), which accounting keys the session on.
            attributes += class_attribute(cookie)
        return outcome, attributes

    def _finish(self, attempt: Attempt, outcome: Outcome, attributes: bytes, now: float) -> Reply:
        method = attempt.method
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
        outcome = outcome or self._held(attempt, now)
        if outcome is None and (job := slow_check(attempt)) is not None:
            # A scrypt comparison is tens of milliseconds of CPU: not on the loop.
            attempt.slow_match = await asyncio.to_thread(job)
        outcome = outcome or self._check(attempt, now)
        if outcome is Outcome.ACCEPT and _first_login_pending(attempt.subscriber):
            outcome = await self._bind_first_mac(attempt)
        return outcome

    async def _bind_first_mac(self, attempt: Attempt) -> Outcome:
        """The first accepted login of a ``first_login`` subscriber locks its MAC.

        The binder writes only while no lock is set, so of two first logins
        from different MACs one binds and the other is a mismatch. A login
        without a usable Calling-Station-Id cannot bind and is refused.
        """
        assert attempt.subscriber is not None
        mac = mac_of(attempt.request.packet.get(CALLING_STATION_ID))
        if mac is None or self._binder is None:
            return Outcome.MAC_LOCK_MISMATCH
        try:
            bound = await self._binder.bind_first_mac(attempt.subscriber.id, mac)
        except StoreUnavailable:
            return Outcome.STORE_UNAVAILABLE
        return Outcome.ACCEPT if bound else Outcome.MAC_LOCK_MISMATCH

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

    def _session_limit(self, attempt: Attempt) -> int | None:
        """The plan's Simultaneous-Use limit when enforced, else None.

        None and 0 mean unlimited: such logins never reach the limiter, so
        they cost no database round trip.
        """
        if self._limiter is None or attempt.subscriber is None:
            return None
        plan = attempt.subscriber.plan
        if plan is None or not plan.simultaneous_use:
            return None
        return plan.simultaneous_use

    async def _admit(self, attempt: Attempt, limit: int, cookie: bytes, now: float) -> Outcome:
        """Ask the limiter whether this accepted login may start (reserving its slot)."""
        assert self._limiter is not None and attempt.subscriber is not None
        try:
            admission = await self._limiter.admit(
                subscriber_id=attempt.subscriber.id,
                limit=limit,
                cookie=cookie,
                nas_id=attempt.request.nas.id,
                policy=self._limit_policy,
                now=now,
                ttl=self._reservation_ttl,
            )
        except StoreUnavailable:
            return Outcome.STORE_UNAVAILABLE
        except Exception:  # a bug must not become an accept or a crash
            return Outcome.INTERNAL_ERROR
        if admission is Admission.DISPLACED and self._detector is not None:
            # Over the limit under disconnect_oldest: accepted, but the
            # concurrent-sessions rule fires (read back in ``_observe``).
            self._displaced.add(id(attempt))
        return Outcome.SIMULTANEOUS_USE if admission is Admission.REFUSED else Outcome.ACCEPT

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
        profile = self._login_profile(attempt)
        place, device = profile.location, profile.device
        reason = outcome.value
        signal = None
        if self._detector is not None:
            signal = self._observe(attempt, reason, result, now, profile, calling)
        self._events.submit(
            AuthEvent(
                time=datetime.fromtimestamp(now, UTC),
                subscriber_id=attempt.subscriber.id if attempt.subscriber else None,
                nas_id=attempt.request.nas.id,
                result=result,
                reason=reason,
                user_name=attempt.user_name or "",
                calling_station_id=calling.decode("utf-8", "replace") if calling else None,
                nas_ip=_nas_ip(packet.get(NAS_IP_ADDRESS), packet.get(NAS_IPV6_ADDRESS)),
                method=attempt.method.name if attempt.method is not None else "none",
                country=place.country if place else None,
                city=place.city if place else None,
                device_class=device.device_class,
                os_family=device.os_family,
                vendor=device.vendor,
                detect=signal,
            )
        )

    def _hold(self, attempt: Attempt, now: float) -> DetectAction | None:
        """The detector's live hold on this account, source or MAC, if any (cheap)."""
        if self._detector is None or not self._detector.holds:
            return None
        calling = attempt.request.packet.get(CALLING_STATION_ID)
        try:
            source = self._source(self._login_profile(attempt))
            return self._detector.hold(attempt.user_name, source, mac_of(calling), now)
        except Exception:  # detection must never cost an answer
            return None

    def _login_profile(self, attempt: Attempt) -> LoginProfile:
        """``_profile``, worked out once per request (the hold check and the record share it)."""
        cached = self._last_profile
        if cached is not None and cached[0] is attempt.request:
            return cached[1]
        profile = self._profile(attempt)
        self._last_profile = (attempt.request, profile)
        return profile

    @staticmethod
    def _source(profile: LoginProfile) -> str | None:
        """Where a login comes from, for the spray rule (aaa/logininfo.py): the
        Calling-Station-Id or the client IP in it; never the NAS, its pools or
        the tunnel endpoint (a LAC stands for thousands of subscribers)."""
        return profile.source

    def _held(self, attempt: Attempt, now: float) -> Outcome | None:
        """FLAGGED_COOLDOWN while a detection rule's reject holds this login."""
        return Outcome.FLAGGED_COOLDOWN if self._hold(attempt, now) is DetectAction.REJECT else None

    def _garden_held(self, attempt: Attempt, now: float) -> bool:
        """A walled-garden hold, and a plan with a walled garden to send the login to.

        Without one the login gets its normal service: the flag still stands.
        """
        sub = attempt.subscriber
        if sub is None or sub.plan is None or not sub.plan.walled_garden:
            return False
        return self._hold(attempt, now) is DetectAction.WALLED_GARDEN

    def _observe(
        self,
        attempt: Attempt,
        reason: str,
        result: AuthResult,
        now: float,
        profile: LoginProfile,
        calling: bytes | None,
    ) -> str | None:
        """Show the decided login to the detector; its keyed signal for the auth event.

        In memory and O(1): history, holds and flags (queued) are updated
        before the reply leaves, so the next request already sees a new hold.
        """
        over_limit = False
        if self._displaced:
            over_limit = id(attempt) in self._displaced
            self._displaced.discard(id(attempt))
        if self._detector is None or attempt.user_name is None:
            return None
        sub = attempt.subscriber
        try:
            return self._detector.see(  # positional: this runs for every request
                now,
                sub.id if sub is not None else None,
                result is AuthResult.ACCEPT,
                reason,
                attempt.user_name,
                profile.source,
                attempt.password,
                profile.location,
                over_limit,
                calling,
                mac_of,
            )
        except Exception:  # detection must never cost an answer
            return None

    def _profile(self, attempt: Attempt) -> LoginProfile:
        """The login's location and device categories; none rather than a failed answer."""
        try:
            return self._profiler.profile(attempt.request.packet, attempt.request.nas)
        except Exception:  # analytics must never cost an answer
            return NOWHERE


def _macs_to_screen(attempt: Attempt) -> tuple[bytes, ...]:
    """The MACs checked against the blocked list: Calling-Station-Id's, and the
    User-Name's for MAC auth."""
    found = [mac_of(attempt.request.packet.get(CALLING_STATION_ID))]
    if isinstance(attempt.method, Mac) and isinstance(attempt.credentials, bytes):
        found.append(attempt.credentials)
    return tuple(dict.fromkeys(m for m in found if m is not None))


def _first_login_pending(sub: Subscriber | None) -> bool:
    """A ``first_login`` subscriber whose MAC is not bound yet."""
    return sub is not None and sub.mac_binding is MacBinding.FIRST_LOGIN and sub.mac_lock is None


def _needs_task(attempt: Attempt) -> bool:
    """Work the synchronous path must not do: a scrypt comparison, a MAC bind."""
    return slow_check(attempt) is not None or _first_login_pending(attempt.subscriber)


def _nas_ip(v4: bytes | None, v6: bytes | None) -> str | None:
    if v4 is not None and len(v4) == 4:
        return f"{v4[0]}.{v4[1]}.{v4[2]}.{v4[3]}"
    if v6 is not None and len(v6) == 16:
        return str(ipaddress.IPv6Address(v6))
    return None
