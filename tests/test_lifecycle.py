"""Deactivation, erasure (crypto-shredding), legal hold and retention, on a real PostgreSQL.

Logins go through the real access pipeline over the cached directory and the
auth-event writer; sessions through the real accounting handler, writer and
session applier. Time is passed in: the erasure grace is crossed by giving
the job a later ``now``, never by waiting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from ispcare_radius.aaa.accounting import AccountingHandler, AcctStatus
from ispcare_radius.aaa.model import Nas, Subscriber, SubscriberStatus
from ispcare_radius.aaa.pipeline import AccessHandler
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.request import Request
from ispcare_radius.cli.config import ConfigError, load_config
from ispcare_radius.cli.config_sections import RetentionConfig
from ispcare_radius.cli.main import run
from ispcare_radius.cli.runtime import open_store
from ispcare_radius.cli.serve import _maintenance, epoch_keep_days
from ispcare_radius.privacy.crypto import unwrap_key
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.authenticator import (
    build_request,
    hide_password,
    random_authenticator,
)
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.packet import build_packet, encode_attributes, parse
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.applier import SessionApplier
from ispcare_radius.store.db import Pool
from ispcare_radius.store.devices import DeviceRepository
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.events import AuthEventWriter
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys, subscriber_key_purpose
from ispcare_radius.store.lifecycle import ERASURE_ACTOR, apply_row_retention, erase_due
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.partitions import apply_retention, ensure_partitions
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.sessions import SessionTracker
from ispcare_radius.store.subscribers import SubscriberRepository

ROOT = Path(__file__).resolve().parents[1]
SECRET = "lifecycle-secret-3"
USER_A, PASS_A = "erase-me-7", "pw-erase-7"
USER_B, PASS_B = "keep-me-8", "pw-keep-8"
MAC_A, MAC_B = "02-AA-BB-CC-DD-EE", "02-11-22-33-44-55"
STATIC_A = "100.64.77.7"
FRAMED_A, FRAMED_B = "100.64.9.9", "100.64.9.10"
REF_A = "billing-acct-A-77"
T0 = datetime(2030, 5, 6, 7, 0, 0, tzinfo=UTC)
GRACE = 30
SESSION_A1, SESSION_A2 = b"sessA-000001", b"sessA-000002"
HINTS_IN_A_DAY = 3


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class Line:
    """Where a session runs: the subscriber's MAC, framed address and NAS port."""

    mac: str
    framed_ip: str
    port: int


def acct_packet(
    status: AcctStatus,
    session: bytes,
    user: str,
    line: Line,
    *,
    at: datetime,
    octets: tuple[int, int] = (0, 0),
    seconds: int = 0,
) -> list[tuple[int, bytes]]:
    return [
        (40, u32(int(status))),
        (44, session),
        (1, user.encode()),
        (4, bytes((198, 51, 100, 1))),
        (5, u32(line.port)),
        (31, line.mac.encode()),
        (8, ipaddress.IPv4Address(line.framed_ip).packed),
        (42, u32(octets[0])),
        (43, u32(octets[1])),
        (46, u32(seconds)),
        (55, u32(int(at.timestamp()))),
    ]


@dataclass
class World:
    """The real stack over one test database."""

    pool: Pool
    masters: MasterKeys
    data_keys: DataKeyCache
    subscribers: SubscriberRepository
    directory: CachedSubscriberDirectory
    access: AccessHandler
    events: AuthEventWriter
    accounting: AccountingHandler
    applier: SessionApplier
    nas: Nas

    async def login(self, user: str, password: str, mac: str) -> int | None:
        """One PAP Access-Request through the pipeline; the reply code."""
        auth = random_authenticator()
        secret = self.nas.secret.reveal()
        body = encode_attributes(
            (
                (1, user.encode()),
                (2, hide_password(password.encode(), secret, auth)),
                (31, mac.encode()),
            )
        )
        request = Request(
            parse(build_packet(int(Code.ACCESS_REQUEST), 7, auth, body)),
            self.nas,
            ("127.0.0.1", 41000),
            0.0,
            None,
        )
        reply = await self.access.handle(request)
        await self.events.flush()
        return reply.code

    async def acct(self, attrs: list[tuple[int, bytes]]) -> None:
        data = build_request(
            int(Code.ACCOUNTING_REQUEST),
            9,
            encode_attributes(attrs),
            SECRET.encode(),
            message_authenticator=False,
        )
        reply = await self.accounting.handle(
            Request(parse(data), self.nas, ("127.0.0.1", 41000), 0.0, None)
        )
        assert reply.code == int(Code.ACCOUNTING_RESPONSE), reply.reason
        await self.applier.drain()


@pytest.fixture
async def world(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> AsyncIterator[World]:
    nas = await NasRepository(pg_pool, system_keys).add("life-nas", "127.0.0.1", SECRET)
    await PlanRepository(pg_pool).add(name="life-plan", download_kbps=1000, interim_interval=300)
    subscribers = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys, poll_interval=None)
    events = AuthEventWriter(pg_pool, system_keys, data_keys)
    dictionary, _ = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    access = AccessHandler(
        directory=directory,
        events=events,
        renderer=ReplyRenderer(dictionary),
        clock=lambda: T0.timestamp(),
    )
    writer = AccountingWriter(pg_pool, system_keys, DataKeyCache(master_keys))
    applier = SessionApplier(pg_pool, SessionTracker(system_keys.blind_index))
    accounting = AccountingHandler(
        recorder=writer, directory=directory, clock=lambda: T0.timestamp()
    )
    await directory.start_listening()
    yield World(
        pool=pg_pool,
        masters=master_keys,
        data_keys=data_keys,
        subscribers=subscribers,
        directory=directory,
        access=access,
        events=events,
        accounting=accounting,
        applier=applier,
        nas=nas,
    )
    await writer.close()
    await events.stop()
    await directory.stop()


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def a_day(world: World, system_keys: SystemKeys) -> tuple[int, int]:
    """Two subscribers with logins, a device, closed and active sessions; their ids."""
    a = await world.subscribers.add(
        USER_A, PASS_A, plan="life-plan", static_ipv4=STATIC_A, account_ref=REF_A
    )
    b = await world.subscribers.add(USER_B, PASS_B, plan="life-plan")
    devices = DeviceRepository(world.pool, system_keys.blind_index, world.data_keys)
    await devices.add(MAC_A, subscriber=USER_A)
    assert await world.login(USER_A, PASS_A, MAC_A) == int(Code.ACCESS_ACCEPT)
    assert await world.login(USER_B, PASS_B, MAC_B) == int(Code.ACCESS_ACCEPT)
    first = Line(MAC_A, FRAMED_A, 7)
    stop = T0 + timedelta(minutes=10)
    await world.acct(acct_packet(AcctStatus.START, SESSION_A1, USER_A, first, at=T0))
    await world.acct(
        acct_packet(
            AcctStatus.STOP, SESSION_A1, USER_A, first, at=stop, octets=(5000, 700), seconds=600
        )
    )
    second = Line(MAC_A, FRAMED_A, 8)
    await world.acct(acct_packet(AcctStatus.START, SESSION_A2, USER_A, second, at=T0))
    other = Line(MAC_B, FRAMED_B, 9)
    for status, at in ((AcctStatus.START, T0), (AcctStatus.STOP, T0 + timedelta(minutes=5))):
        await world.acct(acct_packet(status, b"sessB-000001", USER_B, other, at=at, seconds=300))
    # Change hints so far: two adds and a device; all applied before going on.
    await asyncio.wait_for(world.directory.wait_for_notifications(HINTS_IN_A_DAY), 10)
    return a, b


# -- scans over the whole database ------------------------------------------------


async def scanned_columns(db: asyncpg.Connection[asyncpg.Record]) -> list[tuple[str, str, str]]:
    """(table, column, type) of every text-like and bytea column of every table."""
    rows = await db.fetch(
        "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
        " AND c.data_type IN ('text', 'character varying', 'bytea', 'jsonb', 'json',"
        " 'ARRAY', 'inet', 'cidr')"
    )
    return [(r["table_name"], r["column_name"], r["data_type"]) for r in rows]


async def tables_containing(
    db: asyncpg.Connection[asyncpg.Record], texts: list[str], blobs: list[bytes]
) -> set[str]:
    """The tables where any of ``texts`` (case-insensitive) or ``blobs`` occurs in any column."""
    found: set[str] = set()
    for table, column, kind in await scanned_columns(db):
        if kind == "bytea":
            needles = [t.encode() for t in texts] + blobs
            for needle in needles:
                hit = await db.fetchval(
                    f'SELECT count(*) FROM "{table}" WHERE position($1::bytea in "{column}") > 0',
                    needle,
                )
                if hit:
                    found.add(table)
        else:
            for text in texts:
                hit = await db.fetchval(
                    f'SELECT count(*) FROM "{table}" WHERE strpos(lower("{column}"::text), $1) > 0',
                    text.lower(),
                )
                if hit:
                    found.add(table)
    return found


async def keys_that_unwrap(
    db: asyncpg.Connection[asyncpg.Record], masters: MasterKeys, subscriber_id: int
) -> int:
    """How many bytea values anywhere unwrap, under the master keys, as this subscriber's key."""
    purpose = subscriber_key_purpose(subscriber_id)
    opened = 0
    for table, column, kind in await scanned_columns(db):
        if kind != "bytea":
            continue
        for row in await db.fetch(
            f'SELECT "{column}" AS v FROM "{table}" WHERE "{column}" IS NOT NULL'
        ):
            try:
                unwrap_key(masters, bytes(row["v"]), purpose=purpose)
            except Exception:  # anything else than this subscriber's wrapped key
                continue
            opened += 1
    return opened


def personal_values_of_a() -> tuple[list[str], list[bytes]]:
    texts = [USER_A, PASS_A, MAC_A, MAC_A.replace("-", ":"), STATIC_A, FRAMED_A]
    texts += [SESSION_A1.decode(), SESSION_A2.decode()]
    blobs = [
        ipaddress.IPv4Address(STATIC_A).packed,
        ipaddress.IPv4Address(FRAMED_A).packed,
        bytes.fromhex(MAC_A.replace("-", "")),
    ]
    return texts, blobs


# -- deactivation -------------------------------------------------------------------


async def test_deactivation_rejects_the_next_login_and_requests_disconnects(
    world: World, system_keys: SystemKeys, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Deactivating evicts the cached subscriber at once, rejects, and asks live sessions to go."""
    a, _ = await a_day(world, system_keys)
    # Cached as active: only the change hint can evict it (the cache TTL is
    # an hour and polling is off).
    assert await world.login(USER_A, PASS_A, MAC_A) == int(Code.ACCESS_ACCEPT)
    cached = world.directory.peek(USER_A)
    assert isinstance(cached, Subscriber) and cached.status is SubscriberStatus.ACTIVE
    seen = world.directory.notifications
    assert await world.subscribers.deactivate(USER_A, reason="ticket-4411") == 1
    await asyncio.wait_for(world.directory.wait_for_notifications(seen + 1), 10)
    assert await world.login(USER_A, PASS_A, MAC_A) == int(Code.ACCESS_REJECT)
    assert await world.login(USER_B, PASS_B, MAC_B) == int(Code.ACCESS_ACCEPT)

    [active] = await db.fetch("SELECT session_key FROM sessions_active WHERE subscriber_id = $1", a)
    requests = await db.fetch("SELECT subscriber_id, session_key, reason FROM disconnect_requests")
    assert [(r["subscriber_id"], r["session_key"], r["reason"]) for r in requests] == [
        (a, active["session_key"], "deactivated")
    ]
    row = await db.fetchrow("SELECT status, deactivated_at FROM subscribers WHERE id = $1", a)
    assert row is not None
    assert row["status"] == "deactivated" and row["deactivated_at"] is not None
    [audit] = await db.fetch(
        "SELECT detail FROM audit_log WHERE action = 'subscriber.deactivate'"
        " AND subscriber_id = $1",
        a,
    )
    assert json.loads(audit["detail"]) == {"disconnect_requests": 1, "reason": "ticket-4411"}
    # Again: the pending request is not duplicated, the first time is kept.
    assert await world.subscribers.deactivate(USER_A) == 0
    again = await db.fetchval("SELECT deactivated_at FROM subscribers WHERE id = $1", a)
    assert again == row["deactivated_at"]
    assert await world.subscribers.deactivate("nobody-here") is None


async def test_status_deactivated_through_set_and_reactivation(
    world: World, system_keys: SystemKeys, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    """``set --status deactivated`` acts like ``deactivate``; another status clears the time."""
    a, _ = await a_day(world, system_keys)
    assert await world.subscribers.set(USER_A, status="deactivated")
    assert await db.fetchval("SELECT count(*) FROM disconnect_requests") == 1
    assert await db.fetchval("SELECT deactivated_at FROM subscribers WHERE id = $1", a) is not None
    assert await world.subscribers.set(USER_A, status="active")
    assert await db.fetchval("SELECT deactivated_at FROM subscribers WHERE id = $1", a) is None
    view = await world.subscribers.get(USER_A)
    assert view is not None and view.status is SubscriberStatus.ACTIVE
    # Reactivated: never erased, however late the job runs.
    far = datetime.now(UTC) + timedelta(days=10 * GRACE)
    report = await erase_due(world.pool, world.data_keys, now=far, grace_days=GRACE)
    assert report.erased == () and report.held == ()


# -- erasure -------------------------------------------------------------------------


async def test_erasure_waits_for_the_grace_then_shreds(
    world: World,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    db: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Before the grace nothing goes; after it, nothing personal of A is left and B is intact."""
    a, b = await a_day(world, system_keys)
    await world.subscribers.deactivate(USER_A, reason="closed account")
    since = await db.fetchval("SELECT deactivated_at FROM subscribers WHERE id = $1", a)
    # One auth event of A's written directly too, so that its deletion is
    # checked whatever the event writer's batching did with the logins.
    await db.execute(
        "INSERT INTO auth_events (time, id, subscriber_id, nas_id, result, reason, method)"
        " VALUES ($1, gen_random_uuid(), $2, $3, 'reject', 'deactivated', 'pap')",
        T0,
        a,
        world.nas.id,
    )
    events_before = await db.fetchval(
        "SELECT count(*) FROM auth_events WHERE subscriber_id = $1", a
    )
    usage_before = await db.fetch(
        "SELECT * FROM usage WHERE subscriber_id = $1 ORDER BY period, period_start", a
    )
    [closed_before] = await db.fetch("SELECT * FROM sessions_closed WHERE subscriber_id = $1", a)
    assert usage_before and closed_before["user_name_enc"] is not None
    texts, blobs = personal_values_of_a()
    # Controls: the scans find what they look for.
    assert await keys_that_unwrap(db, master_keys, a) == 1
    # (feed_outbox: billing's events carry its own account reference.)
    assert await tables_containing(db, [REF_A], []) == {"subscribers", "feed_outbox"}

    early = since + timedelta(days=GRACE) - timedelta(seconds=1)
    report = await erase_due(world.pool, world.data_keys, now=early, grace_days=GRACE)
    assert report.erased == ()
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", a) == 1

    dry = await erase_due(
        world.pool, world.data_keys, now=since + timedelta(days=GRACE), dry_run=True
    )
    assert dry.erased == (a,) and dry.dry_run
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", a) == 1

    report = await erase_due(
        world.pool, world.data_keys, now=since + timedelta(days=GRACE), grace_days=GRACE
    )
    assert report.erased == (a,)
    assert world.data_keys.cached(a) is None

    # No personal value of A anywhere, in clear; no key that opens A's ciphertext.
    assert await tables_containing(db, texts, blobs) == set()
    # The billing reference stays with the tombstone and with the usage and
    # quota events billing has not received yet (ids and counters only).
    assert await tables_containing(db, [REF_A], []) == {"erased_subscribers", "feed_outbox"}
    left = await db.fetch("SELECT DISTINCT topic FROM feed_outbox WHERE subscriber_id = $1", a)
    assert {r["topic"] for r in left} <= {"usage", "quota"}
    assert await keys_that_unwrap(db, master_keys, a) == 0
    for table in (
        "auth_events",
        "acct_records",
        "sessions_active",
        "devices",
        "subscriber_lookup",
        "disconnect_requests",
        "session_reservations",
        "acct_record_keys",
    ):
        count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE subscriber_id = $1", a)
        assert count == 0, table
    # Kept for billing: usage totals and closed-session counters, by id only.
    assert (
        await db.fetch(
            "SELECT * FROM usage WHERE subscriber_id = $1 ORDER BY period, period_start", a
        )
        == usage_before
    )
    [closed] = await db.fetch("SELECT * FROM sessions_closed WHERE subscriber_id = $1", a)
    for name in ("input_octets", "output_octets", "session_time", "started_at", "stopped_at"):
        assert closed[name] == closed_before[name]
    assert closed["session_key"] != closed_before["session_key"]
    for name in (
        "user_name_enc",
        "calling_station_id_enc",
        "framed_ip_enc",
        "session_id_enc",
        "nas_ip_enc",
        "framed_ip_blind",
        "session_blind",
        "port_blind",
    ):
        assert closed[name] is None, name
    tomb = await db.fetchrow("SELECT * FROM erased_subscribers WHERE subscriber_id = $1", a)
    assert tomb is not None
    assert tomb["account_ref"] == REF_A and tomb["deactivated_at"] == since
    [audit] = await db.fetch(
        "SELECT actor, detail FROM audit_log WHERE action = 'subscriber.erase'"
        " AND subscriber_id = $1",
        a,
    )
    assert audit["actor"] == ERASURE_ACTOR
    erased_rows = json.loads(audit["detail"])["rows"]
    assert erased_rows["devices"] == 1 and erased_rows["auth_events"] == events_before

    # B is untouched and still logs in; A is unknown now (once the hints of
    # the deactivation and the erasure have reached the cache).
    await asyncio.wait_for(world.directory.wait_for_notifications(HINTS_IN_A_DAY + 2), 10)
    assert await world.subscribers.get(USER_A) is None
    assert await world.login(USER_B, PASS_B, MAC_B) == int(Code.ACCESS_ACCEPT)
    assert await world.login(USER_A, PASS_A, MAC_A) == int(Code.ACCESS_REJECT)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM sessions_closed"
            " WHERE subscriber_id = $1 AND user_name_enc IS NOT NULL",
            b,
        )
        == 1
    )
    assert await keys_that_unwrap(db, master_keys, b) == 1
    # A second run has nothing left to do.
    again = await erase_due(
        world.pool, world.data_keys, now=since + timedelta(days=GRACE + 1), grace_days=GRACE
    )
    assert again.erased == ()


async def test_legal_hold_blocks_erasure_until_released(
    world: World, system_keys: SystemKeys, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    """A held subscriber is reported, not erased; releasing the hold restarts the grace."""
    a, b = await a_day(world, system_keys)
    await world.subscribers.deactivate(USER_A)
    assert await world.subscribers.set(USER_A, legal_hold=True)
    view = await world.subscribers.get(USER_A)
    assert view is not None and view.legal_hold
    await world.subscribers.deactivate(USER_B)
    late = datetime.now(UTC) + timedelta(days=GRACE + 5)
    # One per run: the held subscriber (the lower id) does not take B's turn.
    report = await erase_due(world.pool, world.data_keys, now=late, grace_days=GRACE, limit=1)
    assert report.erased == (b,) and report.held == (a,)
    assert await db.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", a) == 1
    details = await db.fetch(
        "SELECT detail FROM audit_log WHERE action = 'subscriber.set' AND subscriber_id = $1", a
    )
    assert [json.loads(d["detail"]) for d in details] == [
        {"fields": ["legal_hold"], "legal_hold": True}
    ]

    assert await world.subscribers.set(USER_A, legal_hold=False)
    released = await db.fetchval("SELECT updated_at FROM subscribers WHERE id = $1", a)
    just_before = released + timedelta(days=GRACE) - timedelta(seconds=1)
    assert (await erase_due(world.pool, world.data_keys, now=just_before)).erased == ()
    report = await erase_due(world.pool, world.data_keys, now=released + timedelta(days=GRACE))
    assert report.erased == (a,)


async def test_deactivation_by_another_writer_gets_the_full_grace(
    world: World, system_keys: SystemKeys, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Plain SQL that sets only status (and updated_at) still waits the grace from its change."""
    a, _ = await a_day(world, system_keys)
    await db.execute(
        "UPDATE subscribers SET status = 'deactivated', updated_at = now() WHERE id = $1", a
    )
    changed = await db.fetchval("SELECT updated_at FROM subscribers WHERE id = $1", a)
    early = changed + timedelta(days=GRACE) - timedelta(seconds=1)
    assert (await erase_due(world.pool, world.data_keys, now=early)).erased == ()
    report = await erase_due(world.pool, world.data_keys, now=changed + timedelta(days=GRACE))
    assert report.erased == (a,)


# -- retention by data class -----------------------------------------------------------


async def _one_row_per_class(pool: Pool, day: datetime) -> None:
    """One row dated ``day`` in each day-partitioned table (synthetic, no personal values)."""
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO auth_events (time, id, subscriber_id, nas_id, result, reason, method)"
            " VALUES ($1, gen_random_uuid(), 1, 1, 'reject', 'bad_password', 'pap')",
            day,
        )
        await conn.execute(
            "INSERT INTO auth_rejects_unknown (time, id, nas_id, reason, method)"
            " VALUES ($1, gen_random_uuid(), 1, 'unknown_user', 'pap')",
            day,
        )
        await conn.execute(
            "INSERT INTO acct_records (time, id, subscriber_id, attribution, nas_id,"
            " status_type, record_key, event_time)"
            " VALUES ($1, gen_random_uuid(), 1, 'subscriber', 1, 1,"
            " gen_random_uuid()::text::bytea, $1)",
            day,
        )
        await conn.execute(
            "INSERT INTO sessions_closed (id, subscriber_id, session_key, nas_id, started_at,"
            " updated_at, last_seen, start_seen, stopped_at, close_reason)"
            " VALUES (gen_random_uuid(), 1, '\\x01', 1, $1, $1, $1, true, $1, 'stop')",
            day,
        )


async def _count(pool: Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


@pytest.mark.parametrize(
    ("table", "days"),
    [
        ("auth_events", RetentionConfig().auth_events_days),
        ("auth_rejects_unknown", RetentionConfig().unknown_rejects_days),
        ("sessions_closed", RetentionConfig().closed_sessions_days),
        ("acct_records", RetentionConfig().acct_records_days),
    ],
)
async def test_each_partitioned_class_goes_after_its_days_and_not_before(
    pg_pool: Pool, table: str, days: int
) -> None:
    """With the default settings, a day's rows stay until the whole day is older than ``days``."""
    defaults = RetentionConfig()
    settings = {
        "auth_events_days": defaults.auth_events_days,
        "unknown_rejects_days": defaults.unknown_rejects_days,
        "closed_sessions_days": defaults.closed_sessions_days,
        "acct_records_days": defaults.acct_records_days,
    }
    await ensure_partitions(pg_pool, now=T0, days_ahead=0)
    await _one_row_per_class(pg_pool, T0)
    # The day T0 falls in ends at midnight; retention counts from there.
    day_end = T0.replace(hour=0) + timedelta(days=1)
    await apply_retention(
        pg_pool, now=day_end + timedelta(days=days) - timedelta(seconds=1), **settings
    )
    assert await _count(pg_pool, table) == 1
    dropped = await apply_retention(pg_pool, now=day_end + timedelta(days=days), **settings)
    assert f"{table}_p{T0:%Y%m%d}" in dropped
    assert await _count(pg_pool, table) == 0


async def test_acct_records_are_kept_when_no_retention_is_given(pg_pool: Pool) -> None:
    await ensure_partitions(pg_pool, now=T0, days_ahead=0)
    await _one_row_per_class(pg_pool, T0)
    await apply_retention(pg_pool, now=T0 + timedelta(days=5000))
    assert await _count(pg_pool, "acct_records") == 1
    with pytest.raises(ValueError):
        await apply_retention(pg_pool, now=T0, acct_records_days=0)


async def test_audit_log_rows_go_in_batches_after_their_days(pg_pool: Pool) -> None:
    """Rows older than audit_log_days are deleted, in batches smaller than their number."""
    days = RetentionConfig().audit_log_days
    async with pg_pool.acquire() as conn:
        for offset in range(5):
            await conn.execute(
                "INSERT INTO audit_log (time, actor, action) VALUES ($1, 'test', 'old')",
                T0 - timedelta(days=days, seconds=1 + offset),
            )
        await conn.execute(
            "INSERT INTO audit_log (time, actor, action) VALUES ($1, 'test', 'young')",
            T0 - timedelta(days=days) + timedelta(seconds=1),
        )
    deleted = await apply_row_retention(pg_pool, now=T0, audit_log_days=days, batch_size=2)
    assert deleted == {"flags": 0, "audit_log": 5}
    actions = await pg_pool.fetch("SELECT action FROM audit_log")
    assert [r["action"] for r in actions] == ["young"]


@pytest.mark.parametrize("partitioned", [False, True])
async def test_flags_retention_works_once_the_table_exists(
    pg_pool: Pool, partitioned: bool
) -> None:
    """No flags table: nothing to do. Plain or partitioned: rows past flags_days go."""
    days = RetentionConfig().flags_days
    # Whether or not a migration made it, this test's own flags table is used.
    await pg_pool.execute("DROP TABLE IF EXISTS flags")
    assert (await apply_row_retention(pg_pool, now=T0))["flags"] == 0
    async with pg_pool.acquire() as conn:
        if partitioned:
            await conn.execute(
                "CREATE TABLE flags (subscriber_id bigint, time timestamptz NOT NULL)"
                " PARTITION BY RANGE (time)"
            )
            bound = (T0 - timedelta(days=days + 10)).isoformat()
            await conn.execute(
                "CREATE TABLE flags_old PARTITION OF flags"
                f" FOR VALUES FROM (MINVALUE) TO ('{bound}')"
            )
            await conn.execute("CREATE TABLE flags_rest PARTITION OF flags DEFAULT")
        else:
            await conn.execute(
                "CREATE TABLE flags (subscriber_id bigint, time timestamptz NOT NULL)"
            )
        for at in (
            T0 - timedelta(days=days + 20),
            T0 - timedelta(days=days, seconds=1),
            T0 - timedelta(days=days - 1),
        ):
            await conn.execute("INSERT INTO flags VALUES (1, $1)", at)
    deleted = await apply_row_retention(pg_pool, now=T0, flags_days=days, batch_size=1)
    assert deleted["flags"] == 2
    assert await _count(pg_pool, "flags") == 1


async def test_erasure_deletes_flags_when_the_table_exists(
    world: World, system_keys: SystemKeys, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    a, b = await a_day(world, system_keys)
    await db.execute("DROP TABLE IF EXISTS flags")
    await db.execute(
        "CREATE TABLE flags (subscriber_id bigint NOT NULL, time timestamptz NOT NULL)"
    )
    await db.execute("INSERT INTO flags VALUES ($1, now()), ($2, now())", a, b)
    await world.subscribers.deactivate(USER_A)
    report = await erase_due(
        world.pool, world.data_keys, now=datetime.now(UTC) + timedelta(days=GRACE + 1)
    )
    assert report.rows[a]["flags"] == 1
    assert [r["subscriber_id"] for r in await db.fetch("SELECT subscriber_id FROM flags")] == [b]


# -- configuration and command line ----------------------------------------------------


def test_config_reads_privacy_and_retention(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[privacy]\nerasure_grace_days = 7\n"
        "[retention]\nacct_records_days = 90\nflags_days = 30\naudit_log_days = 1000\n"
    )
    config = load_config(path, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert config.privacy.erasure_grace_days == 7
    assert (config.retention.acct_records_days, config.retention.flags_days) == (90, 30)
    assert config.retention.audit_log_days == 1000
    defaults = load_config(None, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert defaults.privacy.erasure_grace_days == 30
    assert defaults.retention.audit_log_days == 730
    path.write_text("[privacy]\nerasure_grace_days = -1\n")
    with pytest.raises(ConfigError, match="erasure_grace_days"):
        load_config(path, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    path.write_text("[retention]\nflags_days = 0\n")
    with pytest.raises(ConfigError, match="flags_days"):
        load_config(path, env={"ISPCARE_STATE_DIR": str(tmp_path)})


async def test_cli_deactivate_hold_and_erase_due(
    pg_dsn: str,
    pg_pool: Pool,
    tmp_path: Path,
    master_keys: MasterKeys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The operator's path: deactivate, hold, dry run, release, erase (grace 0)."""
    config = tmp_path / "c.toml"
    config.write_text("[privacy]\nerasure_grace_days = 0\n")
    key_file = tmp_path / "keys" / "master.json"
    base = ["--config", str(config), "--dsn", pg_dsn, "--master-key-file", str(key_file)]

    async def cli(*args: str) -> str:
        code = await asyncio.to_thread(run, [*base, *args])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    await cli("plan", "add", "cli-plan", "--download", "10M")
    await cli("subscriber", "add", USER_A, "--password", PASS_A, "--plan", "cli-plan")
    assert "0 disconnect request" in await cli(
        "subscriber", "deactivate", USER_A, "--reason", "T-1"
    )
    await cli("subscriber", "set", USER_A, "--legal-hold", "on")
    assert "legal_hold: True" in await cli("subscriber", "show", USER_A)
    out = await cli("privacy", "erase-due", "--dry-run")
    assert "would erase 0" in out and "kept under legal hold: 1" in out
    await cli("subscriber", "set", USER_A, "--legal-hold", "off")
    out = await cli("privacy", "erase-due")
    assert "erased 1 subscriber" in out
    assert await pg_pool.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await pg_pool.fetchval("SELECT count(*) FROM erased_subscribers") == 1


async def test_remove_erases_at_once_like_the_job(
    world: World,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    db: asyncpg.Connection[asyncpg.Record],
) -> None:
    """``subscriber remove`` skips the grace but leaves no more than the erasure job."""
    a, _ = await a_day(world, system_keys)
    assert await world.subscribers.remove(USER_A)
    texts, blobs = personal_values_of_a()
    assert await tables_containing(db, texts, blobs) == set()
    assert await keys_that_unwrap(db, master_keys, a) == 0
    for table in ("sessions_active", "devices", "subscriber_lookup", "acct_records"):
        count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE subscriber_id = $1", a)
        assert count == 0, table
    assert (
        await db.fetchval(
            "SELECT count(*) FROM sessions_closed"
            " WHERE subscriber_id = $1 AND user_name_enc IS NULL",
            a,
        )
        == 1
    )


async def test_maintenance_runs_the_erasure_job(
    pg_dsn: str, pg_pool: Pool, master_keys: MasterKeys, tmp_path: Path
) -> None:
    """The server's maintenance pass erases with the configured grace (0 here)."""
    path = tmp_path / "c.toml"
    path.write_text("[privacy]\nerasure_grace_days = 0\n")
    config = load_config(
        path,
        env={"ISPCARE_STATE_DIR": str(tmp_path)},
        overrides={"dsn": pg_dsn, "master_key_file": str(tmp_path / "keys" / "master.json")},
    )
    async with open_store(config) as store:
        sid = await store.subscribers.add(USER_A, PASS_A, plan=None, account_ref=REF_A)
        await store.subscribers.add(USER_B, PASS_B, plan=None)
        await store.subscribers.deactivate(USER_A)
        await _maintenance(store, config)
    assert await pg_pool.fetchval("SELECT subscriber_id FROM erased_subscribers") == sid
    assert await pg_pool.fetchval("SELECT count(*) FROM subscribers") == 1


def test_epoch_keys_outlive_everything_they_seal() -> None:
    retention = RetentionConfig(unknown_rejects_days=7, acct_records_days=90, flags_days=500)
    assert epoch_keep_days(retention) == 500
    assert epoch_keep_days(RetentionConfig()) == RetentionConfig().acct_records_days
