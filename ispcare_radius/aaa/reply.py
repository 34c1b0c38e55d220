"""Renders a subscriber's plan into encoded Access-Accept attributes.

The part that depends only on (plan, vendor) is encoded once and cached; the
per-subscriber part (Session-Timeout bounded by expiry, static addresses) is
encoded per request. Imports protocol and the aaa model only.
"""

from __future__ import annotations

from ispcare_radius.aaa.model import Nas, Plan, Subscriber
from ispcare_radius.aaa.outcome import REPLY_MESSAGES, Outcome
from ispcare_radius.aaa.vendors import known_vendors, profile
from ispcare_radius.protocol.dictionary import Dictionary

# RFC 2869 section 5.16: the shortest Acct-Interim-Interval sent, in seconds.
MIN_INTERIM_INTERVAL = 60
# RFC 2865 attribute headers (type, length) of the per-subscriber values.
_SESSION_TIMEOUT = bytes((27, 6))
_FRAMED_IP_ADDRESS = bytes((8, 6))
# (vendor, code) of attributes a plan may not set: User-Password, CHAP-Password,
# Proxy-State, EAP-Message, Message-Authenticator, State, and Microsoft's
# MS-CHAP-Response/Error/Challenge and MS-CHAP2-Response/Success.
_SERVER_OWNED = frozenset(
    {(0, 2), (0, 3), (0, 33), (0, 79), (0, 80), (0, 24)}
    | {(311, 1), (311, 2), (311, 11), (311, 25), (311, 26)}
)


class ReplyRenderer:
    """Encodes reply attributes with the loaded dictionary."""

    def __init__(self, dictionary: Dictionary, *, max_cached_plans: int = 4096) -> None:
        self._dict = dictionary
        self._plan_cache: dict[tuple[Plan, str], bytes] = {}
        self._max_cached = max_cached_plans
        self._with_timeout: dict[tuple[Plan, str], bytes] = {}
        self._reject_cache: dict[Outcome, bytes] = {}

    def accept(self, subscriber: Subscriber, nas: Nas, *, now: float) -> bytes:
        """Access-Accept attributes for ``subscriber`` on ``nas`` at wall time ``now``."""
        plan = subscriber.plan
        session_timeout = plan.session_timeout if plan is not None else None
        if subscriber.expires_at is None:
            # The common case needs no encoding at all: one cached byte string.
            out = self._static_part(plan, nas.vendor, session_timeout)
        else:
            # RFC 2865 section 5.27: the session ends when the account does.
            remaining = int(subscriber.expires_at.timestamp() - now)
            if remaining > 0 and (session_timeout is None or remaining < session_timeout):
                session_timeout = remaining
            out = self._static_part(plan, nas.vendor, None)
            if session_timeout is not None:
                out = _SESSION_TIMEOUT + session_timeout.to_bytes(4) + out
        if subscriber.static_ipv4 is not None:
            out += _FRAMED_IP_ADDRESS + subscriber.static_ipv4.packed
        if subscriber.static_ipv6_prefix is not None:
            out += self._dict.encode("Framed-IPv6-Prefix", subscriber.static_ipv6_prefix)
        return out

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
