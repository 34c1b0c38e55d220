"""The AAA pipeline: each step alone, the fail-closed outcome table, reply rendering."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispcare_radius.aaa.model import (
    AuthEvent,
    AuthResult,
    Nas,
    Plan,
    Subscriber,
    SubscriberStatus,
)
from ispcare_radius.aaa.outcome import Outcome, StoreFailureAction, reply_codes
from ispcare_radius.aaa.pipeline import (
    AccessHandler,
    Attempt,
    AuthSettings,
    check_mac_lock,
    check_password,
    check_status,
    read_credentials,
)
from ispcare_radius.aaa.ports import MISS, Miss, StoreUnavailable
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import NOT_READY, Reply, Request
from ispcare_radius.aaa.vendors import Mikrotik, known_vendors, profile
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import hide_password, random_authenticator
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import Packet, build_packet, encode_attributes, parse

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"unit-secret"
NOW = 1_800_000_000.0  # a fixed wall-clock time, passed in
NAS = Nas(1, "bras-1", ipaddress.ip_network("192.0.2.1/32"), Secret(SECRET), vendor="mikrotik")
PLAN = Plan(
    id=1,
    name="p",
    download_kbps=20_000,
    upload_kbps=5_000,
    session_timeout=7200,
    idle_timeout=600,
    interim_interval=300,
)


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


def _subscriber(**kw: object) -> Subscriber:
    base: dict[str, object] = {
        "id": 7,
        "status": SubscriberStatus.ACTIVE,
        "plan": PLAN,
        "password": Secret(b"right"),
    }
    base.update(kw)
    return Subscriber(**base)  # type: ignore[arg-type]


def _request(
    *, user: bytes | None = b"u1", password: bytes | None = b"right", extra: tuple = ()
) -> Request:
    auth = random_authenticator()
    pairs: list[tuple[int, bytes]] = []
    if user is not None:
        pairs.append((1, user))
    if password is not None:
        pairs.append((2, hide_password(password, SECRET, auth)))
    pairs += list(extra)
    raw = build_packet(1, 9, auth, encode_attributes(pairs))
    return Request(parse(raw), NAS, ("192.0.2.1", 1645), 0.0, None)


def _attempt(request: Request, subscriber: Subscriber | None = None) -> Attempt:
    a = Attempt(request)
    assert read_credentials(a, NOW) is None
    a.subscriber = subscriber
    return a


def test_every_outcome_has_a_reply_code_under_both_failure_actions() -> None:
    """The outcome table is total; only ACCEPT and walled gardens accept; failure follows config."""
    accepting = {
        Outcome.ACCEPT,
        Outcome.SUSPENDED_WALLED_GARDEN,
        Outcome.EXPIRED_WALLED_GARDEN,
        Outcome.FLAGGED_WALLED_GARDEN,
    }
    for action in StoreFailureAction:
        table = reply_codes(action)
        assert set(table) == set(Outcome)
        for outcome, code in table.items():
            if outcome in accepting:
                assert code == Code.ACCESS_ACCEPT
            elif outcome is Outcome.STORE_UNAVAILABLE:
                expected = Code.ACCESS_REJECT if action is StoreFailureAction.REJECT else None
                assert code == expected
            else:
                assert code == Code.ACCESS_REJECT


@pytest.mark.parametrize(
    ("kwargs", "outcome"),
    [
        ({"user": None}, Outcome.NO_USER_NAME),
        ({"password": None}, Outcome.NO_CREDENTIALS),
        ({"password": None, "extra": ((3, b"\x01" + b"x" * 15),)}, Outcome.MALFORMED_CREDENTIALS),
        ({"password": None, "extra": ((79, b"\x02\x01\x00\x05\x01"),)}, Outcome.UNSUPPORTED_METHOD),
    ],
)
def test_read_credentials_refuses_what_it_cannot_use(kwargs: dict, outcome: Outcome) -> None:
    """Missing user name, missing password, malformed CHAP or a method not offered yet
    each have a reason."""
    assert read_credentials(Attempt(_request(**kwargs)), NOW) is outcome


def test_read_credentials_refuses_a_malformed_hidden_password() -> None:
    """A User-Password whose length is not a multiple of 16 is malformed (the codec
    already drops such packets; the step does not rely on that)."""
    auth = random_authenticator()
    attrs = ((1, b"u"), (2, b"x" * 17))
    raw = build_packet(1, 1, auth, encode_attributes(attrs))
    packet = Packet(code=1, identifier=1, authenticator=auth, attributes=attrs, raw=raw)
    attempt = Attempt(Request(packet, NAS, ("192.0.2.1", 1), 0.0, None))
    assert read_credentials(attempt, NOW) is Outcome.MALFORMED_PASSWORD


def test_read_credentials_unhides_the_password() -> None:
    """The PAP password is recovered with the NAS secret and the Request Authenticator."""
    attempt = Attempt(_request(password=b"p" * 20))
    assert read_credentials(attempt, NOW) is None
    assert attempt.password == b"p" * 20 and attempt.user_name == "u1"


def test_check_password() -> None:
    """Right password passes; a wrong one, or none stored, is BAD_PASSWORD."""
    assert check_password(_attempt(_request(), _subscriber()), NOW) is None
    wrong = _attempt(_request(password=b"wrong"), _subscriber())
    assert check_password(wrong, NOW) is Outcome.BAD_PASSWORD
    assert check_password(_attempt(_request(), _subscriber(password=None)), NOW) is (
        Outcome.BAD_PASSWORD
    )


@pytest.mark.parametrize(
    ("kwargs", "outcome"),
    [
        ({}, None),
        ({"status": SubscriberStatus.SUSPENDED}, Outcome.SUSPENDED),
        ({"status": SubscriberStatus.EXPIRED}, Outcome.EXPIRED),
        ({"status": SubscriberStatus.DEACTIVATED}, Outcome.DEACTIVATED),
        ({"expires_at": datetime.fromtimestamp(NOW - 1, UTC)}, Outcome.EXPIRED),
        ({"expires_at": datetime.fromtimestamp(NOW + 60, UTC)}, None),
    ],
)
def test_check_status(kwargs: dict, outcome: Outcome | None) -> None:
    """Only active subscribers whose expiry is after `now` pass."""
    assert check_status(_attempt(_request(), _subscriber(**kwargs)), NOW) is outcome


@pytest.mark.parametrize(
    ("calling", "outcome"),
    [
        (b"02-00-00-00-00-01", None),
        (b"02:00:00:00:00:01", None),
        (b"0200.0000.0001", None),
        (b"02-00-00-00-00-02", Outcome.MAC_LOCK_MISMATCH),
        (b"not a mac", Outcome.MAC_LOCK_MISMATCH),
        (None, Outcome.MAC_LOCK_MISMATCH),
    ],
)
def test_check_mac_lock(calling: bytes | None, outcome: Outcome | None) -> None:
    """A MAC-locked subscriber passes only from that MAC, in any common notation."""
    extra = ((31, calling),) if calling is not None else ()
    sub = _subscriber(mac_lock=bytes.fromhex("020000000001"))
    assert check_mac_lock(_attempt(_request(extra=extra), sub), NOW) is outcome


def test_mikrotik_rate_limit_is_rx_upload_tx_download_with_burst() -> None:
    """RouterOS reads rx/tx from the router's side: upload first."""
    assert Mikrotik().rate_limit(PLAN) == [("Mikrotik-Rate-Limit", "5000k/20000k")]
    burst = Plan(1, "b", 20_000, 5_000, 40_000, 10_000, 15_000, 4_000, 8)
    assert Mikrotik().rate_limit(burst) == [
        ("Mikrotik-Rate-Limit", "5000k/20000k 10000k/40000k 4000k/15000k 8/8")
    ]
    assert profile("generic").rate_limit(PLAN) == []
    assert profile("no-such-vendor").name == "generic"
    assert {"generic", "mikrotik"} <= set(known_vendors())


def _decoded(dictionary: Dictionary, attrs: bytes) -> dict[str, object]:
    packet = parse(build_packet(2, 1, b"\x00" * 16, attrs))
    return {d.name: v for d, v, _ in dictionary.decode(packet)}


def test_accept_renders_the_plan(dictionary: Dictionary) -> None:
    """Accept carries timeouts, interim interval, static IP and the vendor rate limit."""
    sub = _subscriber(static_ipv4=ipaddress.IPv4Address("198.51.100.9"))
    got = _decoded(dictionary, ReplyRenderer(dictionary).accept(sub, NAS, now=NOW))
    assert got == {
        "Session-Timeout": 7200,
        "Idle-Timeout": 600,
        "Acct-Interim-Interval": 300,
        "Mikrotik-Rate-Limit": "5000k/20000k",
        "Framed-IP-Address": ipaddress.IPv4Address("198.51.100.9"),
    }


def test_session_timeout_is_bounded_by_expiry(dictionary: Dictionary) -> None:
    """An account expiring in 100 s gets Session-Timeout 100, not the plan's 7200."""
    sub = _subscriber(expires_at=datetime.fromtimestamp(NOW + 100, UTC))
    got = _decoded(dictionary, ReplyRenderer(dictionary).accept(sub, NAS, now=NOW))
    assert got["Session-Timeout"] == 100


def test_generic_nas_gets_no_rate_limit_and_extra_attributes_are_sent(
    dictionary: Dictionary,
) -> None:
    """Plan extra reply attributes are encoded from text; no vendor attribute for generic."""
    plan = Plan(2, "x", 1000, 1000, extra_reply=(("Framed-Pool", "pool-a"), ("Class", "0x01")))
    nas = Nas(2, "g", NAS.address, NAS.secret)
    got = _decoded(
        dictionary, ReplyRenderer(dictionary).accept(_subscriber(plan=plan), nas, now=NOW)
    )
    assert got == {"Framed-Pool": "pool-a", "Class": b"\x01"}


def test_reject_message_only_where_it_helps(dictionary: Dictionary) -> None:
    """Suspended gets a Reply-Message; a wrong password or unknown user gets none."""
    renderer = ReplyRenderer(dictionary)
    assert _decoded(dictionary, renderer.reject(Outcome.SUSPENDED)) == {
        "Reply-Message": "Account suspended"
    }
    assert renderer.reject(Outcome.BAD_PASSWORD) == b""
    assert renderer.reject(Outcome.UNKNOWN_USER) == b""


class Directory:
    """An in-memory SubscriberDirectory port: a dict, or a failure to raise."""

    def __init__(self, subs: dict[str, Subscriber], error: Exception | None = None) -> None:
        self.subs = subs
        self.error = error

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        if self.error is not None:
            raise self.error
        return self.subs.get(user_name)


class Events:
    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


def _handler(
    dictionary: Dictionary,
    directory: Directory,
    events: Events,
    action: StoreFailureAction = StoreFailureAction.REJECT,
) -> AccessHandler:
    return AccessHandler(
        directory=directory,
        events=events,
        renderer=ReplyRenderer(dictionary),
        settings=AuthSettings(on_store_failure=action),
        clock=lambda: NOW,
    )


@pytest.mark.parametrize(
    ("password", "subs", "error", "code", "reason"),
    [
        (b"right", {"u1": _subscriber()}, None, Code.ACCESS_ACCEPT, "accept"),
        (b"wrong", {"u1": _subscriber()}, None, Code.ACCESS_REJECT, "bad_password"),
        (b"right", {}, None, Code.ACCESS_REJECT, "unknown_user"),
        (b"right", {}, StoreUnavailable("down"), Code.ACCESS_REJECT, "store_unavailable"),
        (b"right", {}, RuntimeError("bug"), Code.ACCESS_REJECT, "internal_error"),
    ],
)
async def test_handler_decides_and_records(
    dictionary: Dictionary,
    password: bytes,
    subs: dict[str, Subscriber],
    error: Exception | None,
    code: Code,
    reason: str,
) -> None:
    """Each decision becomes its reply code and exactly one auth event."""
    events = Events()
    handler = _handler(dictionary, Directory(subs, error), events)
    reply = await handler.handle(_request(password=password, extra=((4, bytes([10, 0, 0, 1])),)))
    assert reply.code == code and reply.reason == reason
    (event,) = events.events
    assert event.reason == reason and event.nas_id == NAS.id and event.nas_ip == "10.0.0.1"
    assert event.result == (AuthResult.ACCEPT if code == Code.ACCESS_ACCEPT else AuthResult.REJECT)
    assert event.time == datetime.fromtimestamp(NOW, UTC)


async def test_store_failure_can_mean_silence(dictionary: Dictionary) -> None:
    """With on_store_failure = no_reply the handler answers nothing and records no_reply."""
    events = Events()
    handler = _handler(
        dictionary, Directory({}, StoreUnavailable("down")), events, StoreFailureAction.NO_REPLY
    )
    reply = await handler.handle(_request())
    assert reply.code is None
    assert events.events[0].result is AuthResult.NO_REPLY


def test_packet_repr_shows_no_values() -> None:
    """A request's repr never shows attribute values (user names, hidden passwords)."""
    request = _request(user=b"very-personal-name")
    assert isinstance(request.packet, Packet)
    assert "very-personal-name" not in repr(request)


def test_model_reprs_hide_personal_values() -> None:
    """Reprs of subscribers, auth events and requests (as tracebacks or logs would
    show them) carry no IP, MAC or user name."""
    sub = _subscriber(
        static_ipv4=ipaddress.IPv4Address("198.51.100.77"),
        mac_lock=bytes.fromhex("0a1b2c3d4e5f"),
    )
    event = AuthEvent(
        time=datetime.fromtimestamp(NOW, UTC),
        subscriber_id=1,
        nas_id=1,
        result=AuthResult.REJECT,
        reason="bad_password",
        user_name="repr-user-x",
        calling_station_id="0A-1B-2C-3D-4E-5F",
        nas_ip="203.0.113.5",
    )
    text = repr(sub) + repr(event) + repr(_request(user=b"repr-user-x"))
    for value in (
        "198.51.100.77",
        "0a1b2c3d4e5f",
        "\\x0a\\x1b",
        "repr-user-x",
        "0A-1B-2C",
        "203.0.113.5",
        "192.0.2.1', 1645",
    ):
        assert value not in text


class PeekingDirectory(Directory):
    """A directory that can answer from memory: names in ``cached`` only."""

    def __init__(self, subs: dict[str, Subscriber], cached: set[str]) -> None:
        super().__init__(subs)
        self.cached = cached

    def peek(self, user_name: str) -> Subscriber | Miss | None:
        if user_name not in self.cached:
            return MISS
        return self.subs.get(user_name)


async def test_fast_path_answers_cached_subscribers_like_the_async_path(
    dictionary: Dictionary,
) -> None:
    """try_handle_now gives the same reply as handle for a cached subscriber, and
    NOT_READY for one that is not in memory."""
    events = Events()
    directory = PeekingDirectory({"u1": _subscriber()}, cached={"u1"})
    handler = _handler(dictionary, directory, events)
    request = _request()
    now_reply = handler.try_handle_now(request)
    assert isinstance(now_reply, Reply)
    async_reply = await handler.handle(request)
    # Equal but for each accept's own Class cookie, the last 23 octets.
    assert now_reply.attributes[-23:] != async_reply.attributes[-23:]
    now_rest = (now_reply.code, now_reply.reason, now_reply.attributes[:-23])
    assert now_rest == (async_reply.code, async_reply.reason, async_reply.attributes[:-23])
    assert now_reply.code == Code.ACCESS_ACCEPT
    wrong = handler.try_handle_now(_request(password=b"wrong"))
    assert isinstance(wrong, Reply) and wrong.reason == "bad_password"
    directory.cached.clear()
    assert handler.try_handle_now(_request()) is NOT_READY
    assert len(events.events) == 3  # NOT_READY records nothing; handle() will


def test_fast_path_is_off_for_directories_that_cannot_peek(dictionary: Dictionary) -> None:
    """A directory without peek always sends the pipeline down the async path."""
    handler = _handler(dictionary, Directory({"u1": _subscriber()}), Events())
    assert handler.try_handle_now(_request()) is NOT_READY
