"""Reply-policy rules of the plan renderer: the Acct-Interim-Interval floor and Port-Limit."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispcare_radius.aaa.model import Nas, Plan, Subscriber, SubscriberStatus
from ispcare_radius.aaa.reply import MIN_INTERIM_INTERVAL, ReplyRenderer
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.attrtypes import AttrType
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, parse

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0  # a fixed wall-clock time, passed in
ACCT_INTERIM_INTERVAL = 85
PORT_LIMIT = 62
MIKROTIK = Nas(1, "bras-1", ipaddress.ip_network("192.0.2.1/32"), Secret(b"s"), vendor="mikrotik")
GENERIC = Nas(2, "ap-1", ipaddress.ip_network("192.0.2.2/32"), Secret(b"s"))


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


def _subscriber(plan: Plan, expires_at: datetime | None = None) -> Subscriber:
    return Subscriber(
        id=7,
        status=SubscriberStatus.ACTIVE,
        plan=plan,
        password=Secret(b"pw"),
        expires_at=expires_at,
    )


def _raw(attrs: bytes, type_: int) -> list[bytes]:
    """The raw values of every attribute ``type_`` in encoded reply attributes."""
    return parse(build_packet(2, 1, b"\x00" * 16, attrs)).get_all(type_)


@pytest.mark.parametrize(
    ("configured", "sent"),
    [(0, 60), (1, 60), (30, 60), (59, 60), (60, 60), (61, 61), (300, 300)],
)
@pytest.mark.parametrize("nas", [MIKROTIK, GENERIC], ids=["mikrotik", "generic"])
def test_interim_interval_is_never_sent_below_60_seconds(
    dictionary: Dictionary, configured: int, sent: int, nas: Nas
) -> None:
    """A plan interim interval under 60 s is sent as 60 (RFC 2869 5.16); larger ones as is."""
    plan = Plan(1, "p", interim_interval=configured)
    attrs = ReplyRenderer(dictionary).accept(_subscriber(plan), nas, now=NOW)
    assert _raw(attrs, ACCT_INTERIM_INTERVAL) == [sent.to_bytes(4)]


@pytest.mark.parametrize(
    "expires_at", [None, datetime.fromtimestamp(NOW + 100, UTC)], ids=["no-expiry", "expiring"]
)
def test_interim_floor_holds_with_a_session_timeout_and_an_expiry(
    dictionary: Dictionary, expires_at: datetime | None
) -> None:
    """The floor applies on the cached Session-Timeout path and the per-expiry path alike."""
    plan = Plan(1, "p", session_timeout=3600, interim_interval=10)
    attrs = ReplyRenderer(dictionary).accept(_subscriber(plan, expires_at), MIKROTIK, now=NOW)
    assert _raw(attrs, ACCT_INTERIM_INTERVAL) == [(60).to_bytes(4)]
    assert MIN_INTERIM_INTERVAL == 60


def test_check_plan_accepts_a_short_interim_interval(dictionary: Dictionary) -> None:
    """check_plan does not refuse interim_interval 5: it will simply be sent as 60."""
    renderer = ReplyRenderer(dictionary)
    plan = Plan(1, "p", interim_interval=5)
    renderer.check_plan(plan)
    attrs = renderer.accept(_subscriber(plan), GENERIC, now=NOW)
    assert _raw(attrs, ACCT_INTERIM_INTERVAL) == [(60).to_bytes(4)]


def test_no_interim_interval_is_sent_when_the_plan_has_none(dictionary: Dictionary) -> None:
    """The floor never invents an Acct-Interim-Interval for a plan without one."""
    attrs = ReplyRenderer(dictionary).accept(_subscriber(Plan(1, "p")), GENERIC, now=NOW)
    assert _raw(attrs, ACCT_INTERIM_INTERVAL) == []


def test_port_limit_is_in_the_shipped_rfc2865_dictionary(dictionary: Dictionary) -> None:
    """Port-Limit is attribute 62, an integer, as RFC 2865 section 5.42 defines it."""
    defn = dictionary.by_name("Port-Limit")
    assert (defn.vendor, defn.code, defn.type) == (0, PORT_LIMIT, AttrType.INTEGER)


@pytest.mark.parametrize("limit", [0, 1, 2, 64])
@pytest.mark.parametrize("nas", [MIKROTIK, GENERIC], ids=["mikrotik", "generic"])
def test_port_limit_carries_the_plans_simultaneous_use(
    dictionary: Dictionary, limit: int, nas: Nas
) -> None:
    """A plan with simultaneous_use N sends exactly one Port-Limit of N."""
    plan = Plan(1, "p", simultaneous_use=limit)
    attrs = ReplyRenderer(dictionary).accept(_subscriber(plan), nas, now=NOW)
    assert _raw(attrs, PORT_LIMIT) == [limit.to_bytes(4)]
    decoded = parse(build_packet(2, 1, b"\x00" * 16, attrs))
    names = {d.name: v for d, v, _ in dictionary.decode(decoded)}
    assert names["Port-Limit"] == limit


def test_no_port_limit_without_simultaneous_use(dictionary: Dictionary) -> None:
    """A plan that does not limit simultaneous use sends no Port-Limit."""
    plan = Plan(1, "p", session_timeout=600, interim_interval=300)
    attrs = ReplyRenderer(dictionary).accept(_subscriber(plan), MIKROTIK, now=NOW)
    assert _raw(attrs, PORT_LIMIT) == []
