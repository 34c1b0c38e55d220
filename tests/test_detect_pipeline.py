"""The detector in the Access-Request pipeline: holds asked before the reply, signals recorded.

In-memory directories and a fixed clock; the flag sink is a list.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from ispcare_radius.aaa.model import AuthEvent, Nas, Plan, Subscriber, SubscriberStatus
from ispcare_radius.aaa.pipeline import AccessHandler
from ispcare_radius.aaa.ports import MISS, Admission, Miss
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import Reply, Request
from ispcare_radius.detect.location import NasType, login_source
from ispcare_radius.detect.login import Flag
from ispcare_radius.detect.settings import settings_from_toml
from ispcare_radius.detect.state import Detector
from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import hide_password, random_authenticator
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, encode_attributes, parse
from ispcare_radius.store.flags import detect_keyer

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"detect-unit-secret"
NOW = 1_900_000_000.0
NAS = Nas(1, "bras-1", ipaddress.ip_network("192.0.2.1/32"), Secret(SECRET), vendor="mikrotik")
PLAN = Plan(id=1, name="p", download_kbps=20_000, upload_kbps=5_000)
GARDEN_PLAN = replace(PLAN, id=2, name="g", walled_garden="portal")
REPLY_MESSAGE = 18
CALLING_STATION_ID = 31


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, _ = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    return d


def _sub(sid: int, plan: Plan) -> Subscriber:
    return Subscriber(id=sid, status=SubscriberStatus.ACTIVE, plan=plan, password=Secret(b"right"))


class Directory:
    """Answers from memory (``peek``) and asynchronously alike."""

    def __init__(self, subs: dict[str, Subscriber]) -> None:
        self.subs = subs

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        return self.subs.get(user_name)

    def peek(self, user_name: str) -> Subscriber | Miss | None:
        return self.subs.get(user_name, MISS)


class Events:
    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


class Sink:
    def __init__(self) -> None:
        self.flags: list[Flag] = []

    def submit(self, flag: Flag) -> None:
        self.flags.append(flag)


def _keyer(domain: str, value: bytes) -> bytes:
    return hmac.digest(b"k" * 32, domain.encode() + b"\x00" + value, hashlib.sha256)


def _request(user: bytes, password: bytes, station: bytes = b"02-00-00-00-00-09") -> Request:
    auth = random_authenticator()
    pairs = [
        (1, user),
        (2, hide_password(password, SECRET, auth)),
        (CALLING_STATION_ID, station),
    ]
    raw = build_packet(1, 9, auth, encode_attributes(pairs))
    return Request(parse(raw), NAS, ("192.0.2.1", 1645), 0.0, None)


def _setup(
    dictionary: Dictionary, toml: dict[str, object]
) -> tuple[AccessHandler, Events, Sink, list[float]]:
    clock = [NOW]
    sink = Sink()
    detector = Detector(settings_from_toml(toml), _keyer, sink)
    events = Events()
    handler = AccessHandler(
        directory=Directory({"u1": _sub(1, PLAN), "g1": _sub(2, GARDEN_PLAN)}),
        events=events,
        renderer=ReplyRenderer(dictionary),
        clock=lambda: clock[0],
        detector=detector,
    )
    return handler, events, sink, clock


def _now(handler: AccessHandler, request: Request) -> Reply:
    reply = handler.try_handle_now(request)
    assert isinstance(reply, Reply)
    return reply


async def test_a_reject_hold_refuses_the_right_password_on_both_paths(
    dictionary: Dictionary,
) -> None:
    """After ten wrong passwords the right one is refused (flagged_cooldown), on the
    synchronous and the asynchronous path, until the cool-down ends."""
    handler, events, sink, clock = _setup(dictionary, {"mode": "enforce", "cooldown_minutes": 5})
    for i in range(10):
        clock[0] = NOW + i
        assert _now(handler, _request(b"u1", b"wrong-%d" % i)).reason == "bad_password"
    assert [f.rule.value for f in sink.flags] == ["brute_force"]
    clock[0] = NOW + 20
    reply = _now(handler, _request(b"u1", b"right"))
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "flagged_cooldown")
    reply = await handler.handle(_request(b"u1", b"right"))
    assert (reply.code, reply.reason) == (Code.ACCESS_REJECT, "flagged_cooldown")
    # The event keeps the subscriber: the refusal is in their login history.
    assert events.events[-1].subscriber_id == 1
    clock[0] = NOW + 9 + 300
    assert _now(handler, _request(b"u1", b"right")).code == Code.ACCESS_ACCEPT


def test_monitor_mode_only_flags(dictionary: Dictionary) -> None:
    """The same attack in monitor mode: a flag, and the right password still gets in."""
    handler, _, sink, clock = _setup(dictionary, {"mode": "monitor"})
    for i in range(10):
        clock[0] = NOW + i
        _now(handler, _request(b"u1", b"wrong-%d" % i))
    assert sink.flags[0].action.value == "flag"
    assert _now(handler, _request(b"u1", b"right")).code == Code.ACCESS_ACCEPT


def test_a_walled_garden_hold_sends_the_next_login_there(dictionary: Dictionary) -> None:
    """walled_garden: the next accepted login gets the plan's walled garden; a plan
    without one keeps its normal service (the flag still stands)."""
    toml: dict[str, object] = {
        "mode": "enforce",
        "brute_force": {"actions": {"high": "walled_garden"}},
    }
    handler, _, sink, clock = _setup(dictionary, toml)
    for user in (b"g1", b"u1"):
        for i in range(10):
            clock[0] += 1
            _now(handler, _request(user, b"wrong-%d" % i, station=b"02-00-00-00-00-" + user))
    assert [f.action.value for f in sink.flags] == ["walled_garden", "walled_garden"]
    garden = _now(handler, _request(b"g1", b"right"))
    assert (garden.code, garden.reason) == (Code.ACCESS_ACCEPT, "flagged_walled_garden")
    assert b"Account held for review" in garden.attributes
    assert REPLY_MESSAGE in {t for t, _ in _attributes(garden.attributes)}
    normal = _now(handler, _request(b"u1", b"right"))
    assert (normal.code, normal.reason) == (Code.ACCESS_ACCEPT, "accept")


def _attributes(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 2 <= len(data):
        t, length = data[pos], data[pos + 1]
        out.append((t, data[pos + 2 : pos + length]))
        pos += length
    return out


def test_every_event_carries_its_signal_without_personal_values(dictionary: Dictionary) -> None:
    """The auth event holds the keyed signal; the user name, MAC and password are not in it."""
    handler, events, _, _ = _setup(dictionary, {})
    _now(handler, _request(b"u1", b"secret-guess", station=b"00-1B-21-AA-BB-CC"))
    signal = events.events[-1].detect
    assert signal is not None and '"a":' in signal and '"p":' in signal
    for value in ("u1", "secret", "1B-21", "1b21", "aabbcc"):
        assert value not in signal.lower()


def test_without_a_detector_nothing_changes(dictionary: Dictionary) -> None:
    """No detector: no signal, no hold (detection is optional wiring)."""
    events = Events()
    handler = AccessHandler(
        directory=Directory({"u1": _sub(1, PLAN)}),
        events=events,
        renderer=ReplyRenderer(dictionary),
        clock=lambda: NOW,
    )
    for i in range(12):
        _now(handler, _request(b"u1", b"wrong-%d" % i))
    assert _now(handler, _request(b"u1", b"right")).code == Code.ACCESS_ACCEPT
    assert events.events[-1].detect is None


def test_the_production_keyer_separates_domains_and_lookup_indexes() -> None:
    """detect_keyer: stable for one key, different per domain and per key, and never
    equal to the blind index of the same value (which subscriber_lookup stores)."""
    blind = BlindIndex(bytes(range(32)))
    key = detect_keyer(blind)
    assert key("account", b"alice") == detect_keyer(BlindIndex(bytes(range(32))))(
        "account", b"alice"
    )
    assert key("account", b"alice") != key("source", b"alice")
    assert key("account", b"alice") != detect_keyer(BlindIndex(bytes(32)))("account", b"alice")
    assert key("account", b"alice")[:8] not in blind.full(b"alice")
    # The documented construction, so stored signals replay onto the same
    # subjects whatever the implementation: keyed BLAKE2b, domain as person.
    derived = blind.full(b"ispcare-radius/detect-key/v1")
    for domain in ("account", "mac", "password", "other"):
        for value in (b"", b"alice", b"x" * 300):
            expected = hashlib.blake2b(
                value, key=derived, digest_size=16, person=domain.encode()
            ).digest()
            assert key(domain, value) == expected


class Limiter:
    """A SessionLimiter port answering one fixed admission."""

    def __init__(self, answer: Admission) -> None:
        self.answer = answer

    async def admit(self, **kwargs: object) -> Admission:
        return self.answer


@pytest.mark.parametrize(
    ("answer", "code", "displaced"),
    [
        (Admission.REFUSED, Code.ACCESS_REJECT, False),
        (Admission.DISPLACED, Code.ACCESS_ACCEPT, True),
        (Admission.ADMITTED, Code.ACCESS_ACCEPT, None),
    ],
)
async def test_the_session_limit_firing_raises_a_concurrent_sessions_flag(
    dictionary: Dictionary, answer: Admission, code: Code, displaced: bool | None
) -> None:
    """Refused (policy reject) or displacing (disconnect_oldest): a concurrent-sessions
    flag; admitted below the limit: none."""
    sink = Sink()
    handler = AccessHandler(
        directory=Directory({"u1": _sub(1, replace(PLAN, simultaneous_use=1))}),
        events=Events(),
        renderer=ReplyRenderer(dictionary),
        clock=lambda: NOW,
        limiter=Limiter(answer),
        detector=Detector(settings_from_toml({}), _keyer, sink),
    )
    reply = await handler.handle(_request(b"u1", b"right"))
    assert reply.code == code
    rules = [(f.rule.value, f.evidence.get("displaced")) for f in sink.flags]
    assert rules == ([] if displaced is None else [("concurrent_sessions", displaced)])


# An L2TP LNS: its own address, a subscriber pool, and a LAC in front of it.
LNS = replace(
    NAS,
    id=2,
    name="lns-1",
    address=ipaddress.ip_network("192.0.2.10/32"),
    nas_type=NasType.VPN,
    pools=(ipaddress.ip_network("100.64.0.0/16"),),
)
LAC = b"203.0.113.5"
TUNNEL_CLIENT_ENDPOINT = 66


def _vpn_request(user: bytes, station: bytes | None, tunnel: bytes | None = LAC) -> Request:
    auth = random_authenticator()
    pairs = [(1, user), (2, hide_password(b"right", SECRET, auth))]
    if station is not None:
        pairs.append((CALLING_STATION_ID, station))
    if tunnel is not None:
        pairs.append((TUNNEL_CLIENT_ENDPOINT, b"\x01" + tunnel))  # tagged (RFC 2868 3.3)
    raw = build_packet(1, 9, auth, encode_attributes(pairs))
    return Request(parse(raw), LNS, ("192.0.2.10", 1645), 0.0, None)


@pytest.mark.parametrize(
    ("station", "tunnel"),
    [
        (None, LAC),
        (LAC, LAC),
        (b"100.64.3.4", None),
        (b"192.0.2.10", None),
        (b"[::ffff:192.0.2.10]:1701", None),
    ],
    ids=["tunnel-only", "station-is-tunnel", "pool", "nas-itself", "nas-itself-mapped"],
)
async def test_a_spray_through_an_lns_never_holds_the_lac_the_nas_or_a_pool(
    dictionary: Dictionary, station: bytes | None, tunnel: bytes | None
) -> None:
    """Twenty unknown names through an LNS seen only as the tunnel endpoint (the LAC),
    a pool address or the NAS itself: no spray is counted, even with reject configured,
    and a subscriber arriving the same way still gets in."""
    toml = {"mode": "enforce", "password_spray": {"actions": {"high": "reject"}}}
    handler, _, sink, clock = _setup(dictionary, toml)
    for i in range(20):
        clock[0] = NOW + i
        reply = await handler.handle(_vpn_request(b"sprayed-%d" % i, station, tunnel))
        assert reply.reason == "unknown_user"
    assert [f.rule.value for f in sink.flags if f.rule.value == "password_spray"] == []
    reply = await handler.handle(_vpn_request(b"u1", station, tunnel))
    assert reply.code == Code.ACCESS_ACCEPT


async def test_a_spray_from_one_client_behind_the_lac_holds_that_client(
    dictionary: Dictionary,
) -> None:
    """The client's own IP in Calling-Station-Id (port dropped) is the source: its spray
    is flagged, and with reject configured only that client is held."""
    toml = {"mode": "enforce", "password_spray": {"actions": {"high": "reject"}}}
    handler, _, sink, clock = _setup(dictionary, toml)
    for i in range(16):
        clock[0] = NOW + i
        await handler.handle(_vpn_request(b"sprayed-%d" % i, b"198.51.100.7:%d" % (1024 + i)))
    spray = [f for f in sink.flags if f.rule.value == "password_spray"]
    assert len(spray) == 1 and spray[0].subject_kind == "source"
    held = await handler.handle(_vpn_request(b"u1", b"198.51.100.7:4000"))
    assert (held.code, held.reason) == (Code.ACCESS_REJECT, "flagged_cooldown")
    other = await handler.handle(_vpn_request(b"u1", b"198.51.100.8"))
    assert other.code == Code.ACCESS_ACCEPT


def test_login_source_keeps_the_station_and_drops_ports() -> None:
    """A MAC or line id is kept as written; an IP loses its port; nothing is no source."""
    assert login_source(LNS, calling_station_id="02-00-00-00-00-09") == "02-00-00-00-00-09"
    assert login_source(LNS, calling_station_id="198.51.100.7[4500]") == "198.51.100.7"
    assert login_source(LNS, calling_station_id="  ") is None
    assert login_source(LNS, calling_station_id=None, tunnel_client_endpoint="203.0.113.5") is None
    assert login_source(NAS, calling_station_id="192.0.2.1") is None
