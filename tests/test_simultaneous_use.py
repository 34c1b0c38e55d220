"""Class cookies in every Access-Accept, and Simultaneous-Use enforced race-safely.

Pipeline tests use in-memory directories; the limiter runs on a real
PostgreSQL, and the race is also run end to end against the server process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ispcare_radius.aaa.cookie import find_cookie, is_cookie
from ispcare_radius.aaa.model import AuthEvent, Nas, Plan, Subscriber, SubscriberStatus
from ispcare_radius.aaa.outcome import Outcome, SimultaneousUsePolicy, StoreFailureAction
from ispcare_radius.aaa.pipeline import AccessHandler, AuthSettings
from ispcare_radius.aaa.ports import MISS, Admission, Miss, StoreUnavailable
from ispcare_radius.aaa.reply import ReplyRenderer, class_attribute
from ispcare_radius.aaa.request import NOT_READY, Reply, Request
from ispcare_radius.cli.config import ConfigError, load_config
from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import (
    build_request,
    hide_password,
    random_authenticator,
)
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import Packet, build_packet, encode_attributes, parse
from ispcare_radius.store.db import Pool, connect
from ispcare_radius.store.limits import SessionLimits, lock_key
from ispcare_radius.store.session_keys import cookie_session_key
from tests.support.server_proc import ServerProcess, create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"simuse-unit-secret"
NOW = 1_900_000_000.0
T0 = datetime.fromtimestamp(NOW, UTC)
NAS = Nas(3, "bras-3", ipaddress.ip_network("192.0.2.3/32"), Secret(SECRET), vendor="mikrotik")
CLASS = 25
REJECT = SimultaneousUsePolicy.REJECT
DISCONNECT = SimultaneousUsePolicy.DISCONNECT_OLDEST


def _plan(limit: int | None, **kw: Any) -> Plan:
    return Plan(
        id=1, name="p", download_kbps=10_000, upload_kbps=2_000, simultaneous_use=limit, **kw
    )


def _subscriber(limit: int | None = 1, sub_id: int = 41, **kw: object) -> Subscriber:
    base: dict[str, object] = {
        "id": sub_id,
        "status": SubscriberStatus.ACTIVE,
        "plan": _plan(limit),
        "password": Secret(b"right-pw"),
    }
    base.update(kw)
    return Subscriber(**base)  # type: ignore[arg-type]


def _request(password: bytes = b"right-pw", ident: int = 9) -> Request:
    auth = random_authenticator()
    attrs = encode_attributes([(1, b"su-user"), (2, hide_password(password, SECRET, auth))])
    return Request(parse(build_packet(1, ident, auth, attrs)), NAS, ("192.0.2.3", 1645), 0.0, None)


def _reply_packet(reply: Reply) -> Packet:
    return parse(build_packet(2, 1, bytes(16), reply.attributes))


def _cookies(reply: Reply) -> list[bytes]:
    return [v for v in _reply_packet(reply).get_all(CLASS) if is_cookie(v)]


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


class Directory:
    """An in-memory directory that can also answer from memory (``peek``)."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        return self.sub if user_name == "su-user" else None

    def peek(self, user_name: str) -> Subscriber | Miss | None:
        return self.sub if user_name == "su-user" else MISS


class Events:
    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


class ForbiddenLimiter:
    """A limiter that fails the test if the pipeline ever asks it."""

    async def admit(self, **kw: object) -> Admission:
        raise AssertionError("the limiter was asked for an unlimited login")


class FailingLimiter:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def admit(self, **kw: object) -> Admission:
        self.calls += 1
        raise self.error


def _handler(
    dictionary: Dictionary,
    sub: Subscriber,
    limiter: object | None,
    *,
    policy: SimultaneousUsePolicy = REJECT,
    on_store_failure: StoreFailureAction = StoreFailureAction.REJECT,
    events: Events | None = None,
    clock: float = NOW,
) -> AccessHandler:
    return AccessHandler(
        directory=Directory(sub),
        events=events or Events(),
        renderer=ReplyRenderer(dictionary),
        settings=AuthSettings(on_store_failure=on_store_failure, simultaneous_use_policy=policy),
        clock=lambda: clock,
        limiter=limiter,  # type: ignore[arg-type]
    )


# --- Class cookie ------------------------------------------------------------


async def test_every_accept_carries_exactly_one_fresh_cookie(dictionary: Dictionary) -> None:
    """Fast-path and async accepts each carry one cookie Class besides the plan's own
    Class, and no two accepts share a cookie; a reject carries none."""
    plan = _plan(None, extra_reply=(("Class", "0x0102"),))
    handler = _handler(dictionary, _subscriber(plan=plan), None)
    replies = [await handler.handle(_request()) for _ in range(3)]
    fast = handler.try_handle_now(_request())
    assert isinstance(fast, Reply)
    replies.append(fast)
    seen = []
    for reply in replies:
        assert reply.code == Code.ACCESS_ACCEPT
        classes = _reply_packet(reply).get_all(CLASS)
        assert b"\x01\x02" in classes
        (cookie,) = _cookies(reply)
        assert find_cookie(classes) == cookie
        seen.append(cookie)
    assert len(set(seen)) == len(seen)
    rejected = await handler.handle(_request(b"wrong-pw"))
    assert rejected.code == Code.ACCESS_REJECT and _reply_packet(rejected).get_all(CLASS) == []


async def test_walled_garden_accept_carries_a_cookie(dictionary: Dictionary) -> None:
    """An accept into the walled garden names its session too, and is not limited."""
    sub = _subscriber(
        limit=1, status=SubscriberStatus.SUSPENDED, plan=_plan(1, walled_garden="garden")
    )
    reply = await _handler(dictionary, sub, ForbiddenLimiter()).handle(_request())
    assert reply.code == Code.ACCESS_ACCEPT and reply.reason == "suspended_walled_garden"
    assert len(_cookies(reply)) == 1


def test_class_attribute_encodes_type_length_value() -> None:
    """Class is type 25 with a length that counts its two header octets."""
    assert class_attribute(b"abc") == b"\x19\x05abc"
    with pytest.raises(ValueError):
        class_attribute(b"")


# --- configuration -------------------------------------------------------------


def test_policy_and_reservation_ttl_are_read_from_the_auth_section(tmp_path: Path) -> None:
    """[auth] simultaneous_use_policy and reservation_ttl reach AuthSettings; defaults
    are reject and 120 s; a bad value is a one-line ConfigError naming the setting."""
    assert load_config(None, env={}).auth.simultaneous_use_policy is REJECT
    assert load_config(None, env={}).auth.reservation_ttl == 120.0
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nsimultaneous_use_policy = "disconnect_oldest"\nreservation_ttl = 30\n')
    auth = load_config(path, env={}).auth
    assert auth.simultaneous_use_policy is DISCONNECT and auth.reservation_ttl == 30.0
    for bad, setting in (
        ('simultaneous_use_policy = "kick"', "auth.simultaneous_use_policy"),
        ("reservation_ttl = 0", "auth.reservation_ttl"),
    ):
        path.write_text(f"[auth]\n{bad}\n")
        with pytest.raises(ConfigError, match=setting):
            load_config(path, env={})


# --- the pipeline and the limiter port -------------------------------------


@pytest.mark.parametrize("limit", [None, 0])
async def test_unlimited_plans_never_touch_the_limiter(
    dictionary: Dictionary, limit: int | None
) -> None:
    """No limit (None or 0) means no limiter call, and the fast path still answers."""
    handler = _handler(dictionary, _subscriber(limit), ForbiddenLimiter())
    assert (await handler.handle(_request())).code == Code.ACCESS_ACCEPT
    fast = handler.try_handle_now(_request())
    assert isinstance(fast, Reply) and fast.code == Code.ACCESS_ACCEPT


async def test_limited_subscribers_leave_the_fast_path_and_wrong_passwords_reserve_nothing(
    dictionary: Dictionary,
) -> None:
    """A limited subscriber goes to the async path; a wrong password never reaches
    the limiter."""
    limiter = FailingLimiter(AssertionError("asked"))
    handler = _handler(dictionary, _subscriber(1), limiter)
    assert handler.try_handle_now(_request()) is NOT_READY
    reply = await handler.handle(_request(b"wrong-pw"))
    assert reply.reason == "bad_password" and limiter.calls == 0


@pytest.mark.parametrize(
    ("action", "code"),
    [(StoreFailureAction.REJECT, Code.ACCESS_REJECT), (StoreFailureAction.NO_REPLY, None)],
)
async def test_limiter_storage_failure_follows_the_fail_closed_setting(
    dictionary: Dictionary, action: StoreFailureAction, code: Code | None
) -> None:
    """StoreUnavailable from the limiter is store_unavailable: reject or silence, by config."""
    events = Events()
    limiter = FailingLimiter(StoreUnavailable("down"))
    handler = _handler(dictionary, _subscriber(1), limiter, on_store_failure=action, events=events)
    reply = await handler.handle(_request())
    assert limiter.calls == 1
    assert reply.code == code and reply.reason == "store_unavailable"
    assert _reply_packet(reply).get_all(CLASS) == []
    assert events.events[0].reason == "store_unavailable"


async def test_a_limiter_bug_rejects(dictionary: Dictionary) -> None:
    """Any other limiter error is internal_error: a reject, never an accept."""
    handler = _handler(dictionary, _subscriber(1), FailingLimiter(RuntimeError("bug")))
    reply = await handler.handle(_request())
    assert reply.code == Code.ACCESS_REJECT and reply.reason == "internal_error"


# --- the PostgreSQL limiter ---------------------------------------------------


@pytest.fixture
def index() -> BlindIndex:
    return BlindIndex(secrets.token_bytes(32))


async def _add_active(
    pool: Pool, subscriber_id: int, key: bytes, started: float, nas_id: int = 3
) -> None:
    """An active session as accounting would write it; sealed fields stay NULL."""
    at = datetime.fromtimestamp(started, UTC)
    await pool.execute(
        "INSERT INTO sessions_active (id, subscriber_id, session_key, nas_id, started_at,"
        " updated_at, last_seen, start_seen) VALUES ($1, $2, $3, $4, $5, $5, $5, true)",
        uuid.uuid4(),
        subscriber_id,
        key,
        nas_id,
        at,
    )


async def _reservations(pool: Pool, subscriber_id: int) -> list[bytes]:
    rows = await pool.fetch(
        "SELECT session_key FROM session_reservations WHERE subscriber_id = $1", subscriber_id
    )
    return [bytes(r["session_key"]) for r in rows]


async def _disconnects(pool: Pool, subscriber_id: int) -> list[tuple[bytes, str]]:
    rows = await pool.fetch(
        "SELECT session_key, reason FROM disconnect_requests"
        " WHERE subscriber_id = $1 AND handled_at IS NULL ORDER BY id",
        subscriber_id,
    )
    return [(bytes(r["session_key"]), str(r["reason"])) for r in rows]


async def _admit(
    limits: SessionLimits,
    cookie: bytes,
    *,
    sub: int = 41,
    limit: int = 1,
    policy: SimultaneousUsePolicy = REJECT,
    now: float = NOW,
    ttl: float = 120.0,
) -> Admission:
    return await limits.admit(
        subscriber_id=sub, limit=limit, cookie=cookie, nas_id=3, policy=policy, now=now, ttl=ttl
    )


def _cookie() -> bytes:
    from ispcare_radius.aaa.cookie import new_cookie

    return new_cookie()


async def test_accept_reserves_the_key_of_its_own_cookie_and_the_next_login_is_rejected(
    dictionary: Dictionary, pg_pool: Pool, index: BlindIndex
) -> None:
    """With limit 1 the first login is accepted and reserves cookie_session_key of the
    cookie it carries; the second is rejected with reason simultaneous_use and a
    Reply-Message, and reserves nothing."""
    events = Events()
    handler = _handler(dictionary, _subscriber(1), SessionLimits(pg_pool, index), events=events)
    first = await handler.handle(_request())
    assert first.code == Code.ACCESS_ACCEPT
    (cookie,) = _cookies(first)
    assert await _reservations(pg_pool, 41) == [cookie_session_key(index, cookie)]
    second = await handler.handle(_request())
    assert second.code == Code.ACCESS_REJECT and second.reason == Outcome.SIMULTANEOUS_USE.value
    packet = _reply_packet(second)
    assert packet.get(18) == b"Too many sessions" and packet.get_all(CLASS) == []
    assert [e.reason for e in events.events] == ["accept", "simultaneous_use"]
    assert len(await _reservations(pg_pool, 41)) == 1


async def test_an_active_session_holds_the_slot(pg_pool: Pool, index: BlindIndex) -> None:
    """A row in sessions_active counts: the next login of a limit-1 subscriber is
    refused, another subscriber's login is not."""
    limits = SessionLimits(pg_pool, index)
    await _add_active(pg_pool, 41, b"k" * 32, NOW - 600)
    assert await _admit(limits, _cookie()) is Admission.REFUSED
    assert await _admit(limits, _cookie(), sub=42) is Admission.ADMITTED
    assert await _admit(limits, _cookie(), limit=2) is Admission.ADMITTED
    assert await _admit(limits, _cookie(), limit=2) is Admission.REFUSED


async def test_expired_reservations_free_the_slot(pg_pool: Pool, index: BlindIndex) -> None:
    """A reservation holds its slot until now + ttl, then is deleted and the slot is free."""
    limits = SessionLimits(pg_pool, index)
    first = _cookie()
    assert await _admit(limits, first, now=NOW, ttl=120) is Admission.ADMITTED
    assert await _admit(limits, _cookie(), now=NOW + 119.5) is Admission.REFUSED
    second = _cookie()
    assert await _admit(limits, second, now=NOW + 120) is Admission.ADMITTED
    assert await _reservations(pg_pool, 41) == [cookie_session_key(index, second)]


async def test_a_started_reservation_is_counted_once(pg_pool: Pool, index: BlindIndex) -> None:
    """A reservation whose session is already in sessions_active is one slot, not two."""
    limits = SessionLimits(pg_pool, index)
    cookie = _cookie()
    assert await _admit(limits, cookie, limit=2) is Admission.ADMITTED
    await _add_active(pg_pool, 41, cookie_session_key(index, cookie), NOW)
    assert await _admit(limits, _cookie(), limit=2) is Admission.ADMITTED
    assert await _admit(limits, _cookie(), limit=2) is Admission.REFUSED


async def test_disconnect_oldest_records_the_oldest_session(
    pg_pool: Pool, index: BlindIndex
) -> None:
    """At the limit, disconnect_oldest admits and records the oldest active session;
    the next login displaces the next oldest; when only fresh reservations hold the
    slots there is nothing to displace and the login is refused."""
    limits = SessionLimits(pg_pool, index)
    old, older, other = b"o" * 32, b"e" * 32, b"x" * 32
    await _add_active(pg_pool, 41, old, NOW - 100)
    await _add_active(pg_pool, 41, older, NOW - 5000)
    await _add_active(pg_pool, 42, other, NOW - 9000)  # another subscriber's
    assert await _admit(limits, _cookie(), limit=2, policy=DISCONNECT) is Admission.DISPLACED
    assert await _disconnects(pg_pool, 41) == [(older, "simultaneous_use")]
    assert await _admit(limits, _cookie(), limit=2, policy=DISCONNECT) is Admission.DISPLACED
    assert await _disconnects(pg_pool, 41) == [
        (older, "simultaneous_use"),
        (old, "simultaneous_use"),
    ]
    assert await _admit(limits, _cookie(), limit=2, policy=DISCONNECT) is Admission.REFUSED
    assert len(await _reservations(pg_pool, 41)) == 2
    assert await _disconnects(pg_pool, 42) == []


async def test_disconnect_oldest_accepts_through_the_pipeline(
    dictionary: Dictionary, pg_pool: Pool, index: BlindIndex
) -> None:
    """Under disconnect_oldest the handler answers Access-Accept (reason accept)."""
    await _add_active(pg_pool, 41, b"a" * 32, NOW - 60)
    handler = _handler(dictionary, _subscriber(1), SessionLimits(pg_pool, index), policy=DISCONNECT)
    reply = await handler.handle(_request())
    assert reply.code == Code.ACCESS_ACCEPT and reply.reason == "accept"
    assert await _disconnects(pg_pool, 41) == [(b"a" * 32, "simultaneous_use")]


async def test_two_pools_racing_admit_exactly_the_limit(
    pg_pool: Pool, pg_dsn: str, index: BlindIndex
) -> None:
    """40 concurrent logins through two independent pools (as two processes would)
    admit exactly the limit, for limits 1 and 3."""
    other = await connect(pg_dsn, min_size=10, max_size=10)
    try:
        pools = [SessionLimits(pg_pool, index), SessionLimits(other, index)]
        for sub, limit in ((51, 1), (52, 3)):
            results = await asyncio.gather(
                *(_admit(pools[i % 2], _cookie(), sub=sub, limit=limit) for i in range(40))
            )
            assert results.count(Admission.ADMITTED) == limit
            assert results.count(Admission.REFUSED) == 40 - limit
            assert len(await _reservations(pg_pool, sub)) == limit
    finally:
        await other.close()


async def test_limiter_reports_a_lost_database_as_store_unavailable(
    pg_pool: Pool, index: BlindIndex
) -> None:
    """A closed pool is StoreUnavailable, which the pipeline turns into its fail-closed outcome."""
    limits = SessionLimits(pg_pool, index)
    await pg_pool.close()
    with pytest.raises(StoreUnavailable):
        await _admit(limits, _cookie())


def test_lock_keys_are_signed_64_bit_and_per_subscriber() -> None:
    """pg_advisory_xact_lock takes a signed bigint; neighbours get different keys."""
    keys = {lock_key(i) for i in range(1000)}
    assert len(keys) == 1000
    assert all(-(2**63) <= k < 2**63 for k in keys)


# --- end to end: 20 concurrent Access-Requests against the server -----------

E2E_SECRET = "simuse-e2e-Secret7"
E2E_USER = "simuse-user-1"
E2E_PASSWORD = "simuse-pw-91x"


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path_factory.mktemp("simuse"), dsn, probe_secret=E2E_SECRET.encode())
    try:
        srv.setup()
        srv.cli("nas", "add", "bras-su", "127.0.0.1", "--secret", E2E_SECRET)
        srv.cli("plan", "add", "single", "--download", "10M", "--upload", "2M",
                "--simultaneous-use", "1")  # fmt: skip
        srv.cli("subscriber", "add", E2E_USER, "--plan", "single", "--password-stdin",
                input=E2E_PASSWORD + "\n")  # fmt: skip
        srv.start()
        yield srv
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def _send_burst(port: int, count: int, timeout: float = 10.0) -> dict[int, Packet]:
    """Send ``count`` Access-Requests at once from one socket (distinct identifiers)
    and collect the replies by identifier."""
    secret = E2E_SECRET.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for ident in range(count):
            auth = random_authenticator()
            attrs = encode_attributes(
                [
                    (1, E2E_USER.encode()),
                    (2, hide_password(E2E_PASSWORD.encode(), secret, auth)),
                    (4, bytes([127, 0, 0, 1])),
                ]
            )
            data = build_request(
                int(Code.ACCESS_REQUEST),
                ident,
                attrs,
                secret,
                message_authenticator=True,
                authenticator=auth,
            )
            sock.sendto(data, ("127.0.0.1", port))
        replies: dict[int, Packet] = {}
        while len(replies) < count:
            packet = parse(sock.recv(4096))
            replies[packet.identifier] = packet
    return replies


async def test_twenty_concurrent_logins_with_limit_one_get_exactly_one_accept(
    server: ServerProcess,
) -> None:
    """The issue's race test: 20 Access-Requests at once for a limit-1 subscriber,
    against the real server, yield exactly one Access-Accept (with a cookie) and 19
    Access-Rejects saying why; exactly one reservation is left."""
    replies = await asyncio.to_thread(_send_burst, server.auth_port, 20)
    accepts = [p for p in replies.values() if p.code == Code.ACCESS_ACCEPT]
    rejects = [p for p in replies.values() if p.code == Code.ACCESS_REJECT]
    assert len(accepts) == 1 and len(rejects) == 19
    assert find_cookie(accepts[0].get_all(CLASS)) is not None
    assert all(p.get(18) == b"Too many sessions" for p in rejects)
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM session_reservations") == 1
    finally:
        await conn.close()
