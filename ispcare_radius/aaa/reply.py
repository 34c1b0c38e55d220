"""Renders a subscriber's plan into encoded Access-Accept attributes.

The part that depends only on (plan, vendor) is encoded once and cached; the
per-subscriber part (Session-Timeout bounded by expiry and login hours, static
addresses and routes) is encoded per request. A subscriber's overrides are
applied to a derived Plan, cached under that value like any plan. Walled-garden
accepts are cached per (profile, vendor, outcome). Imports protocol and the
aaa model only.
"""

from __future__ import annotations

from ispcare_radius.aaa.cookie import CLASS
from ispcare_radius.aaa.hours import login_window
from ispcare_radius.aaa.model import Nas, Plan, Subscriber
from ispcare_radius.aaa.outcome import REPLY_MESSAGES, Outcome
from ispcare_radius.aaa.vendors import known_vendors, profile
from ispcare_radius.protocol.dictionary import Dictionary

# RFC 2869 section 5.16: the shortest Acct-Interim-Interval sent, in seconds.
MIN_INTERIM_INTERVAL = 60
# RFC 2865 attribute headers (type, length) of the per-subscriber values.
_SESSION_TIMEOUT = bytes((27, 6))
_FRAMED_IP_ADDRESS = bytes((8, 6))
_FRAMED_IP_NETMASK = bytes((9, 6))
# How long a walled-garden session lasts before the NAS asks again, so that a
# subscriber who pays is let out within minutes (RFC 2865 section 5.27).
WALLED_GARDEN_SESSION_TIMEOUT = 300
# (vendor, code) of attributes a plan may not set: User-Password, CHAP-Password,
# Proxy-State, EAP-Message, Message-Authenticator, State, and Microsoft's
# MS-CHAP-Response/Error/Challenge and MS-CHAP2-Response/Success.
_SERVER_OWNED = frozenset(
    {(0, 2), (0, 3), (0, 33), (0, 79), (0, 80), (0, 24)}
    | {(311, 1), (311, 2), (311, 11), (311, 25), (311, 26)}
)


def class_attribute(cookie: bytes) -> bytes:
    """The encoded Class attribute carrying ``cookie`` (see ``aaa.cookie``).

    RFC 2865 section 5.25: Class "is available to be sent by the server to
    the client in an Access-Accept"; its String is 1 or more octets, here the
    21-byte cookie. Encoded by hand: it is on every accept's path.
    """
    if not 1 <= len(cookie) <= 253:
        raise ValueError("a Class value is 1 to 253 octets")
    return bytes((CLASS, len(cookie) + 2)) + cookie


class ReplyRenderer:
    """Encodes reply attributes with the loaded dictionary."""

    def __init__(self, dictionary: Dictionary, *, max_cached_plans: int = 4096) -> None:
        self._dict = dictionary
        self._plan_cache: dict[tuple[Plan, str], bytes] = {}
        self._max_cached = max_cached_plans
        self._with_timeout: dict[tuple[Plan, str], bytes] = {}
        self._reject_cache: dict[Outcome, bytes] = {}
        self._garden_cache: dict[tuple[str, str, Outcome], bytes] = {}

    def accept(self, subscriber: Subscriber, nas: Nas, *, now: float) -> bytes:
        """Access-Accept attributes for ``subscriber`` on ``nas`` at wall time ``now``.

        Session-Timeout is the smallest of the plan's (or the subscriber's
        override), the time left before expiry and the time left in the
        plan's login hours.
        """
        plan = subscriber.plan
        if plan is not None and subscriber.overrides is not None:
            plan = subscriber.overrides.apply(plan)
        session_timeout = plan.session_timeout if plan is not None else None
        bound = _time_bound(subscriber, plan, now)
        if bound is None:
            # The common case needs no encoding at all: one cached byte string.
            out = self._static_part(plan, nas.vendor, session_timeout)
        else:
            if session_timeout is None or bound < session_timeout:
                session_timeout = bound
            out = _SESSION_TIMEOUT + session_timeout.to_bytes(4)
            out += self._static_part(plan, nas.vendor, None)
        if subscriber.static_ipv4 is not None:
            out += _FRAMED_IP_ADDRESS + subscriber.static_ipv4.packed
            if subscriber.framed_netmask is not None:
                out += _FRAMED_IP_NETMASK + subscriber.framed_netmask.packed
        return out + self._addressing(subscriber)

    def _addressing(self, subscriber: Subscriber) -> bytes:
        enc = self._dict.encode
        out = b""
        for route in subscriber.framed_routes:
            # RFC 2865 section 5.22: "a destination prefix in dotted quad form
            # optionally followed by a slash and a decimal length specifier
            # stating how many high order bits of the prefix to use.  That is
            # followed by a space, a gateway address in dotted quad form, a
            # space, and one or more metrics separated by spaces."
            out += enc("Framed-Route", route)
        if subscriber.static_ipv6_prefix is not None:
            out += enc("Framed-IPv6-Prefix", subscriber.static_ipv6_prefix)
        if subscriber.delegated_ipv6_prefix is not None:
            out += enc("Delegated-IPv6-Prefix", subscriber.delegated_ipv6_prefix)
        if subscriber.framed_ipv6_address is not None:
            out += enc("Framed-IPv6-Address", subscriber.framed_ipv6_address)
        return out

    def walled_garden(self, subscriber: Subscriber, nas: Nas, outcome: Outcome) -> bytes:
        """Access-Accept attributes confining ``subscriber`` to the plan's walled garden.

        Only the vendor's walled-garden form, a Reply-Message saying why and a
        short Session-Timeout: no rate limit, pool, static address or route of
        the normal service.
        """
        plan = subscriber.plan
        if plan is None or not plan.walled_garden:
            raise ValueError("the subscriber's plan has no walled garden")
        key = (plan.walled_garden, nas.vendor, outcome)
        cached = self._garden_cache.get(key)
        if cached is None:
            enc = self._dict.encode
            out = _SESSION_TIMEOUT + WALLED_GARDEN_SESSION_TIMEOUT.to_bytes(4)
            message = REPLY_MESSAGES.get(outcome)
            if message:
                out += enc("Reply-Message", message)
            for name, value in profile(nas.vendor).walled_garden(plan.walled_garden):
                out += enc(name, value)
            if len(self._garden_cache) >= self._max_cached:
                self._garden_cache.clear()
            cached = self._garden_cache[key] = out
        return cached

    def _static_part(self, plan: Plan | None, vendor: str, session_timeout: int | None) -> bytes:
        head = b"" if session_timeout is None else _SESSION_TIMEOUT + session_timeout.to_bytes(4)
        if plan is None:
            return head
        if session_timeout is None:
            return self._plan_part(plan, vendor)
        key = (plan, vendor)
        cached = self._with_timeout.get(key)
        if cached is None:
            if len(self._with_timeout) >= self._max_cached:
                self._with_timeout.clear()
            cached = self._with_timeout[key] = head + self._plan_part(plan, vendor)
        return cached

    def reject(self, outcome: Outcome) -> bytes:
        """Access-Reject attributes for ``outcome`` (a Reply-Message where one helps)."""
        cached = self._reject_cache.get(outcome)
        if cached is None:
            message = REPLY_MESSAGES.get(outcome)
            cached = self._dict.encode("Reply-Message", message) if message else b""
            self._reject_cache[outcome] = cached
        return cached

    def _plan_part(self, plan: Plan, vendor: str) -> bytes:
        key = (plan, vendor)
        cached = self._plan_cache.get(key)
        if cached is not None:
            return cached
        enc = self._dict.encode
        out = bytearray()
        if plan.idle_timeout is not None:
            out += enc("Idle-Timeout", plan.idle_timeout)
        if plan.interim_interval is not None:
            # RFC 2869 section 5.16: "This value SHOULD NOT be smaller than
            # 60."  A shorter plan value is raised to the floor, not refused.
            out += enc("Acct-Interim-Interval", max(plan.interim_interval, MIN_INTERIM_INTERVAL))
        if plan.simultaneous_use is not None:
            # RFC 2865 section 5.42: Port-Limit "sets the maximum number of
            # ports to be provided to the user by the NAS".
            out += enc("Port-Limit", plan.simultaneous_use)
        if plan.ipv4_pool:
            out += enc("Framed-Pool", plan.ipv4_pool)
        if plan.ipv6_pool:
            out += enc("Delegated-IPv6-Prefix-Pool", plan.ipv6_pool)
        if plan.ipv6_address_pool:
            out += enc("Stateful-IPv6-Address-Pool", plan.ipv6_address_pool)
        for server in plan.dns_ipv6:
            # RFC 6911 section 3.1: "the attribute MAY appear multiple times"
            # for several DNS servers, in order of preference.
            out += enc("DNS-Server-IPv6-Address", server)
        for name, value in profile(vendor).render(plan):
            out += enc(name, value)
        for name, text in plan.extra_reply:
            out += enc(name, text)
        if len(self._plan_cache) >= self._max_cached:
            self._plan_cache.clear()
        cached = self._plan_cache[key] = bytes(out)
        return cached

    def check_plan(self, plan: Plan) -> None:
        """Raise ValueError (one line, naming the attribute) if ``plan`` cannot be sent.

        Extra reply attributes must exist in the dictionary, parse as their
        type, and not be ones the server owns (Message-Authenticator,
        Proxy-State, EAP-Message) or that carry credentials.  An
        ``interim_interval`` under 60 s is accepted: it is sent as 60.
        """
        for name, text in plan.extra_reply:
            try:
                defn = self._dict.by_name(name)
            except KeyError:
                raise ValueError(f"unknown reply attribute {name!r}") from None
            if (defn.vendor, defn.code) in _SERVER_OWNED or defn.encrypt:
                raise ValueError(f"{defn.name} cannot be a plan reply attribute")
            try:
                self._dict.encode(defn.name, text)
            except (ValueError, TypeError, OverflowError):
                raise ValueError(f"bad value for {defn.name}") from None
        for vendor in known_vendors():
            self._plan_part(plan, vendor)
            if plan.walled_garden:
                for name, value in profile(vendor).walled_garden(plan.walled_garden):
                    self._dict.encode(name, value)


def _time_bound(subscriber: Subscriber, plan: Plan | None, now: float) -> int | None:
    """Seconds until the account expires or the login window closes, if either applies."""
    bound: int | None = None
    if subscriber.expires_at is not None:
        # RFC 2865 section 5.27: the session ends when the account does.
        remaining = int(subscriber.expires_at.timestamp() - now)
        if remaining > 0:
            bound = remaining
    if plan is not None and plan.login_hours:
        window = login_window(plan.login_hours, plan.time_zone, now=now)
        if window.remaining is not None and (bound is None or window.remaining < bound):
            bound = window.remaining
    return bound
