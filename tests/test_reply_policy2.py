"""Reply policy: static addressing, overrides, login hours and walled gardens."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispcare_radius.aaa.hours import login_window, parse_login_hours
from ispcare_radius.aaa.methods.mschap import error_code
from ispcare_radius.aaa.model import (
    AuthEvent,
    AuthResult,
    Nas,
    Overrides,
    Plan,
    Subscriber,
    SubscriberStatus,
)
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.aaa.pipeline import AccessHandler, Attempt, check_login_hours, read_credentials
from ispcare_radius.aaa.reply import WALLED_GARDEN_SESSION_TIMEOUT, ReplyRenderer
from ispcare_radius.aaa.request import Request
from ispcare_radius.aaa.vendors import known_vendors
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import hide_password, random_authenticator
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, encode_attributes, parse

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"unit-secret"
# Monday 2027-01-11 10:00 UTC, passed in.
MONDAY_10 = datetime(2027, 1, 11, 10, 0, tzinfo=UTC).timestamp()
MIKROTIK = Nas(1, "bras-1", ipaddress.ip_network("192.0.2.1/32"), Secret(SECRET), vendor="mikrotik")
GENERIC = Nas(2, "ap-1", ipaddress.ip_network("192.0.2.2/32"), Secret(SECRET))
PLAN = Plan(1, "p", download_kbps=20_000, upload_kbps=5_000, session_timeout=86_400, ipv4_pool="a")
SESSION_TIMEOUT, FRAMED_IP_NETMASK, FRAMED_ROUTE, FILTER_ID, REPLY_MESSAGE = 27, 9, 22, 11, 18
FRAMED_POOL, DELEGATED_PREFIX, FRAMED_IPV6_ADDRESS, DNS_IPV6, STATEFUL_POOL = 88, 123, 168, 169, 172
CALLING_STATION_ID = 31


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


def _sub(**kw: object) -> Subscriber:
    base: dict[str, object] = {
        "id": 7,
        "status": SubscriberStatus.ACTIVE,
        "plan": PLAN,
        "password": Secret(b"right"),
    }
    base.update(kw)
    return Subscriber(**base)  # type: ignore[arg-type]


def _all(attrs: bytes, type_: int) -> list[bytes]:
    return parse(build_packet(2, 1, b"\x00" * 16, attrs)).get_all(type_)


# -- static addressing -------------------------------------------------------


def test_static_addressing_is_sent_per_subscriber(dictionary: Dictionary) -> None:
    """Netmask follows the static IPv4; routes, delegated prefix and IPv6 address are sent."""
    sub = _sub(
        static_ipv4=ipaddress.IPv4Address("203.0.113.10"),
        framed_netmask=ipaddress.IPv4Address("255.255.255.248"),
        framed_routes=("198.51.100.0/28 0.0.0.0 1", "198.51.100.64/27 203.0.113.10 5"),
        delegated_ipv6_prefix=ipaddress.IPv6Network("2001:db8:aa00::/56"),
        framed_ipv6_address=ipaddress.IPv6Address("2001:db8:1::77"),
    )
    attrs = ReplyRenderer(dictionary).accept(sub, GENERIC, now=MONDAY_10)
    assert _all(attrs, FRAMED_IP_NETMASK) == [bytes((255, 255, 255, 248))]
    assert _all(attrs, FRAMED_ROUTE) == [
        b"198.51.100.0/28 0.0.0.0 1",
        b"198.51.100.64/27 203.0.113.10 5",
    ]
    # RFC 4818 section 3: Reserved, Prefix-Length, then the prefix bytes.
    prefix = ipaddress.IPv6Network("2001:db8:aa00::/56").network_address.packed
    assert _all(attrs, DELEGATED_PREFIX) == [b"\x00\x38" + prefix]
    assert _all(attrs, FRAMED_IPV6_ADDRESS) == [ipaddress.IPv6Address("2001:db8:1::77").packed]


def test_netmask_without_a_static_address_is_not_sent(dictionary: Dictionary) -> None:
    """A netmask alone (pool addressing) says nothing and is left out."""
    sub = _sub(framed_netmask=ipaddress.IPv4Address("255.255.255.0"))
    attrs = ReplyRenderer(dictionary).accept(sub, GENERIC, now=MONDAY_10)
    assert _all(attrs, FRAMED_IP_NETMASK) == []


def test_plan_ipv6_dns_and_address_pool(dictionary: Dictionary) -> None:
    """DNS-Server-IPv6-Address repeats in order; Stateful-IPv6-Address-Pool names the pool."""
    plan = replace(
        PLAN,
        dns_ipv6=(ipaddress.IPv6Address("2001:db8::53"), ipaddress.IPv6Address("2001:db8::35")),
        ipv6_address_pool="dhcpv6-a",
    )
    attrs = ReplyRenderer(dictionary).accept(_sub(plan=plan), GENERIC, now=MONDAY_10)
    assert _all(attrs, DNS_IPV6) == [
        ipaddress.IPv6Address("2001:db8::53").packed,
        ipaddress.IPv6Address("2001:db8::35").packed,
    ]
    assert _all(attrs, STATEFUL_POOL) == [b"dhcpv6-a"]


# -- overrides ---------------------------------------------------------------


def test_override_replaces_plan_values_without_leaking_into_the_cache(
    dictionary: Dictionary,
) -> None:
    """An override subscriber gets its own speed and timeout; the next plain one the plan's."""
    renderer = ReplyRenderer(dictionary)
    special = _sub(overrides=Overrides(download_kbps=100_000, session_timeout=3600))
    first = renderer.accept(special, MIKROTIK, now=MONDAY_10)
    plain = renderer.accept(_sub(), MIKROTIK, now=MONDAY_10)
    again = renderer.accept(special, MIKROTIK, now=MONDAY_10)
    assert b"5000k/100000k" in first and b"5000k/20000k" not in first
    assert _all(first, SESSION_TIMEOUT) == [(3600).to_bytes(4)]
    assert b"5000k/20000k" in plain and b"100000k" not in plain
    assert _all(plain, SESSION_TIMEOUT) == [(86_400).to_bytes(4)]
    assert again == first


def test_override_equal_to_the_plan_reuses_the_plan() -> None:
    """Overrides.apply returns the plan itself when nothing differs, else a derived copy."""
    assert Overrides(download_kbps=20_000).apply(PLAN) is PLAN
    derived = Overrides(idle_timeout=60).apply(PLAN)
    assert derived.idle_timeout == 60 and derived.id == PLAN.id and PLAN.idle_timeout is None


# -- login hours -------------------------------------------------------------


def test_freeradius_and_readable_forms_agree() -> None:
    """``Wk0800-1800,Sa0900-1300`` and ``Mo-Fr 08:00-18:00, Sa 09:00-13:00`` are the same hours."""
    assert parse_login_hours("Wk0800-1800,Sa0900-1300") == parse_login_hours(
        "Mo-Fr 08:00-18:00, Sa 09:00-13:00"
    )
    assert parse_login_hours("SaSu") == parse_login_hours("Sa-Su 00:00-24:00")
    assert parse_login_hours("Any0800-1700") == parse_login_hours("Mo-Su0800-1700")


@pytest.mark.parametrize("text", ["", "Xy0800-1800", "Wk0860-0900", "Wk08-18", "Wk 2400-2500"])
def test_unreadable_login_hours_are_refused(text: str) -> None:
    """Unknown days, impossible times and short times are a ValueError."""
    with pytest.raises(ValueError):
        parse_login_hours(text)


@pytest.mark.parametrize(
    ("when", "allowed", "remaining"),
    [
        (datetime(2027, 1, 11, 10, 0, tzinfo=UTC), True, 8 * 3600),  # Monday
        (datetime(2027, 1, 11, 17, 59, 30, tzinfo=UTC), True, 30),
        (datetime(2027, 1, 11, 18, 0, tzinfo=UTC), False, None),
        (datetime(2027, 1, 11, 7, 59, tzinfo=UTC), False, None),
        (datetime(2027, 1, 16, 12, 0, tzinfo=UTC), True, 3600),  # Saturday
        (datetime(2027, 1, 17, 12, 0, tzinfo=UTC), False, None),  # Sunday
    ],
)
def test_login_window(when: datetime, allowed: bool, remaining: int | None) -> None:
    """Inside the hours the window tells the seconds left; outside it refuses."""
    window = login_window("Wk0800-1800,Sa0900-1300", None, now=when.timestamp())
    assert (window.allowed, window.remaining) == (allowed, remaining)


def test_window_past_midnight_and_across_the_week_end() -> None:
    """``Su2200-0200`` runs into Monday; a span to Sunday 24:00 joins one from Monday 00:00."""
    sunday_23 = datetime(2027, 1, 17, 23, 0, tzinfo=UTC).timestamp()
    assert login_window("Su2200-0200", None, now=sunday_23).remaining == 3 * 3600
    joined = login_window("Su2000-2400,Mo0000-0100", None, now=sunday_23)
    assert joined.remaining == 2 * 3600
    assert login_window("Any", None, now=sunday_23).remaining is None


def test_window_in_a_time_zone_counts_real_seconds_over_a_clock_change() -> None:
    """In Berlin on the spring-forward night, 00:00-06:00 local lasts 5 real hours."""
    midnight = datetime(2027, 3, 28, 0, 0, tzinfo=UTC).timestamp() - 3600  # 00:00 CET
    window = login_window("Su0000-0600", "Europe/Berlin", now=midnight)
    assert window.remaining == 5 * 3600
    # 08:30 UTC is 09:30 in Berlin in winter: inside Wk0900-1800 there, not in UTC.
    assert login_window("Wk0900-1800", "Europe/Berlin", now=MONDAY_10 - 5400).allowed
    assert not login_window("Wk0900-1800", None, now=MONDAY_10 - 5400).allowed


def _request(password: bytes = b"right", mac: bytes | None = None) -> Request:
    auth = random_authenticator()
    pairs = [(1, b"u1"), (2, hide_password(password, SECRET, auth))]
    if mac is not None:
        pairs.append((CALLING_STATION_ID, mac))
    raw = build_packet(1, 9, auth, encode_attributes(pairs))
    return Request(parse(raw), MIKROTIK, ("192.0.2.1", 1645), 0.0, None)


def test_check_login_hours_refuses_outside_the_window() -> None:
    """Outside the plan's hours the check ends with OUTSIDE_LOGIN_HOURS; inside it passes."""
    plan = replace(PLAN, login_hours="Wk0800-1800")
    attempt = Attempt(_request())
    assert read_credentials(attempt, MONDAY_10) is None
    attempt.subscriber = _sub(plan=plan)
    assert check_login_hours(attempt, MONDAY_10) is None
    sunday = datetime(2027, 1, 17, 10, 0, tzinfo=UTC).timestamp()
    assert check_login_hours(attempt, sunday) is Outcome.OUTSIDE_LOGIN_HOURS


@pytest.mark.parametrize(
    ("plan_timeout", "expires", "sent"),
    [
        (86_400, None, 8 * 3600),  # the window end is the smallest
        (3600, None, 3600),  # the plan's timeout is
        (86_400, datetime(2027, 1, 11, 11, 0, tzinfo=UTC), 3600),  # the expiry is
        (None, None, 8 * 3600),
    ],
)
def test_session_timeout_is_capped_at_the_window_end(
    dictionary: Dictionary, plan_timeout: int | None, expires: datetime | None, sent: int
) -> None:
    """Session-Timeout is the smallest of plan timeout, time to expiry and time to window end."""
    plan = replace(PLAN, session_timeout=plan_timeout, login_hours="Wk0800-1800")
    attrs = ReplyRenderer(dictionary).accept(
        _sub(plan=plan, expires_at=expires), GENERIC, now=MONDAY_10
    )
    assert _all(attrs, SESSION_TIMEOUT) == [sent.to_bytes(4)]


def test_mschap_reports_restricted_logon_hours() -> None:
    """Outside the login hours MS-CHAP answers Windows error 646."""
    assert error_code(Outcome.OUTSIDE_LOGIN_HOURS) == 646


# -- walled garden -----------------------------------------------------------


class Directory:
    """An in-memory SubscriberDirectory port."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        return self.sub if user_name == "u1" else None


class Events:
    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


async def _decide(
    dictionary: Dictionary, sub: Subscriber, request: Request, now: float = MONDAY_10
) -> tuple[int | None, bytes, AuthEvent]:
    events = Events()
    handler = AccessHandler(
        directory=Directory(sub),
        events=events,
        renderer=ReplyRenderer(dictionary),
        clock=lambda: now,
    )
    reply = await handler.handle(request)
    (event,) = events.events
    return reply.code, reply.attributes, event


GARDEN = replace(PLAN, walled_garden="unpaid", address_list="paying")


@pytest.mark.parametrize(
    ("sub", "reason", "message"),
    [
        (_sub(plan=GARDEN, status=SubscriberStatus.SUSPENDED), "suspended_walled_garden", b"sus"),
        (_sub(plan=GARDEN, status=SubscriberStatus.EXPIRED), "expired_walled_garden", b"exp"),
        (
            _sub(plan=GARDEN, expires_at=datetime(2027, 1, 1, tzinfo=UTC)),
            "expired_walled_garden",
            b"exp",
        ),
    ],
)
async def test_suspended_or_expired_go_to_the_walled_garden(
    dictionary: Dictionary, sub: Subscriber, reason: str, message: bytes
) -> None:
    """With a walled garden, the right password gets an accept into it, not the service."""
    code, attrs, event = await _decide(dictionary, sub, _request())
    assert code == Code.ACCESS_ACCEPT
    assert event.result is AuthResult.ACCEPT and event.reason == reason
    assert _all(attrs, SESSION_TIMEOUT) == [WALLED_GARDEN_SESSION_TIMEOUT.to_bytes(4)]
    (text,) = _all(attrs, REPLY_MESSAGE)
    assert text.lower().startswith(b"account " + message)
    assert b"unpaid" in attrs  # Mikrotik-Address-List
    assert b"paying" not in attrs and b"20000k" not in attrs
    assert _all(attrs, FRAMED_POOL) == []


@pytest.mark.parametrize(
    ("sub", "request_", "reason"),
    [
        (_sub(plan=GARDEN, status=SubscriberStatus.SUSPENDED), _request(b"wrong"), "bad_password"),
        (_sub(status=SubscriberStatus.SUSPENDED), _request(), "suspended"),
        (_sub(plan=GARDEN, status=SubscriberStatus.DEACTIVATED), _request(), "deactivated"),
        (
            _sub(plan=GARDEN, status=SubscriberStatus.SUSPENDED, mac_lock=bytes(range(1, 7))),
            _request(mac=b"02-00-00-00-00-09"),
            "mac_lock_mismatch",
        ),
    ],
)
async def test_walled_garden_is_not_a_way_around_other_checks(
    dictionary: Dictionary, sub: Subscriber, request_: Request, reason: str
) -> None:
    """Wrong password, no garden on the plan, deactivation or a wrong MAC still reject."""
    code, attrs, event = await _decide(dictionary, sub, request_)
    assert code == Code.ACCESS_REJECT and event.reason == reason
    assert b"unpaid" not in attrs


async def test_outside_login_hours_is_rejected_with_a_reason(dictionary: Dictionary) -> None:
    """Outside the hours: Access-Reject with Reply-Message "Login not allowed at this time"."""
    sub = _sub(plan=replace(PLAN, login_hours="Sa0900-1300"))
    code, attrs, event = await _decide(dictionary, sub, _request())
    assert code == Code.ACCESS_REJECT and event.reason == "outside_login_hours"
    assert _all(attrs, REPLY_MESSAGE) == [b"Login not allowed at this time"]


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        ("generic", (FILTER_ID, b"unpaid")),
        ("accel-ppp", (FRAMED_POOL, b"unpaid")),
        ("cisco-bng", (FRAMED_POOL, b"unpaid")),
    ],
)
def test_walled_garden_forms_per_vendor(
    dictionary: Dictionary, vendor: str, expected: tuple[int, bytes]
) -> None:
    """Generic NAS get Filter-Id; accel-ppp and IOS XR BNG a Framed-Pool with the profile name."""
    nas = replace(GENERIC, vendor=vendor)
    sub = _sub(plan=GARDEN, status=SubscriberStatus.SUSPENDED)
    attrs = ReplyRenderer(dictionary).walled_garden(sub, nas, Outcome.SUSPENDED_WALLED_GARDEN)
    type_, value = expected
    assert _all(attrs, type_) == [value]


@pytest.mark.parametrize("vendor", known_vendors())
def test_every_vendor_encodes_a_walled_garden(dictionary: Dictionary, vendor: str) -> None:
    """Every registered profile's walled-garden attributes encode with the shipped dictionaries."""
    nas = replace(GENERIC, vendor=vendor)
    sub = _sub(plan=GARDEN, status=SubscriberStatus.EXPIRED)
    attrs = ReplyRenderer(dictionary).walled_garden(sub, nas, Outcome.EXPIRED_WALLED_GARDEN)
    assert b"unpaid" in attrs
    assert _all(attrs, REPLY_MESSAGE) == [b"Account expired"]
