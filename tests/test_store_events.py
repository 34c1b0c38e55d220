"""The auth-event writer against a real PostgreSQL: batching, encryption, the unknown-user table."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest

from ispcare_radius.aaa.model import AuthEvent, AuthResult
from ispcare_radius.aaa.ports import AuthEventSink
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Pool, connect
from ispcare_radius.store.events import AuthEventWriter, event_aad
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.partitions import (
    apply_retention,
    drop_partitions_before,
    ensure_partitions,
)
from ispcare_radius.store.subscribers import SubscriberRepository

T0 = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
CSI = "02-11-22-33-44-55"
NAS_IP = "198.51.100.23"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def event(
    sid: int | None,
    user: str,
    i: int = 0,
    result: AuthResult = AuthResult.ACCEPT,
    reason: str | None = None,
) -> AuthEvent:
    return AuthEvent(
        time=T0 + timedelta(seconds=i),
        subscriber_id=sid,
        nas_id=1,
        result=result,
        reason=reason or ("ok" if result is AuthResult.ACCEPT else "unknown_user"),
        user_name=user,
        calling_station_id=CSI,
        nas_ip=NAS_IP,
        flags=("new_country",) if i % 2 else (),
    )


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)


@pytest.fixture
def writer(pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys) -> AuthEventWriter:
    # Its own key cache: the writer must fetch and unwrap subscriber keys itself.
    return AuthEventWriter(pg_pool, system_keys, DataKeyCache(master_keys), batch_size=100)


def test_implements_the_port(writer: AuthEventWriter) -> None:
    """AuthEventWriter satisfies aaa.ports.AuthEventSink."""
    sink: AuthEventSink = writer
    assert sink is writer


async def test_events_written_in_batches_and_encrypted(
    writer: AuthEventWriter, repo: SubscriberRepository, pg_pool: Pool, master_keys: MasterKeys
) -> None:
    """N submitted events give N rows after flush(), personal columns sealed to their row."""
    sid = await repo.add("walter", "pw", plan=None)
    for i in range(250):
        writer.submit(event(sid, "Walter", i))
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_events") == 0  # nothing yet
    await writer.flush()
    assert (writer.written, writer.dropped, writer.failed) == (250, 0, 0)
    rows = await pg_pool.fetch("SELECT * FROM auth_events ORDER BY time")
    assert len(rows) == 250
    assert rows[1]["flags"] == ["new_country"] and rows[0]["flags"] == []
    assert rows[0]["result"] == "accept" and rows[0]["time"] == T0
    for row in rows[:3]:
        for column in ("user_name_enc", "calling_station_id_enc", "nas_ip_enc"):
            blob = row[column]
            assert b"Walter" not in blob and CSI.encode() not in blob
    # Readable with the subscriber's key and the event's own aad, not another row's.
    wrapped = await pg_pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
    cipher = DataKeyCache(master_keys).cipher(sid, wrapped)
    first = rows[0]
    aad = event_aad("auth_events", "nas_ip", first["id"], sid)
    assert cipher.open(first["nas_ip_enc"], aad) == NAS_IP.encode()
    with pytest.raises(DecryptError):
        cipher.open(first["nas_ip_enc"], event_aad("auth_events", "nas_ip", rows[1]["id"], sid))


async def test_unknown_user_rejects_go_to_their_own_table(
    writer: AuthEventWriter, system_keys: SystemKeys, pg_pool: Pool
) -> None:
    """Events without a subscriber land in auth_rejects_unknown, sealed under the epoch key."""
    for i in range(5):
        writer.submit(event(None, "nobody@example.test", i, AuthResult.REJECT))
    await writer.flush()
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_events") == 0
    rows = await pg_pool.fetch("SELECT * FROM auth_rejects_unknown")
    assert len(rows) == 5
    row = rows[0]
    assert row["reason"] == "unknown_user"
    assert b"nobody" not in row["user_name_enc"]
    aad = event_aad("auth_rejects_unknown", "user_name", row["id"], None)
    assert system_keys.epoch.open(row["user_name_enc"], aad) == b"nobody@example.test"


async def test_full_queue_drops_oldest(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """Beyond max_queue, submit() drops the oldest event and counts it, never blocking."""
    writer = AuthEventWriter(pg_pool, system_keys, data_keys, max_queue=10)
    for i in range(15):
        writer.submit(event(None, f"u{i}", i, AuthResult.REJECT))
    assert writer.dropped == 5 and len(writer) == 10
    await writer.flush()
    times = await pg_pool.fetch("SELECT time FROM auth_rejects_unknown ORDER BY time")
    assert [r["time"] for r in times] == [T0 + timedelta(seconds=i) for i in range(5, 15)]


async def test_events_of_an_erased_subscriber_are_dropped(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> None:
    """An event of a subscriber erased by another process is dropped though its key is cached."""
    # Two processes, two key caches: the CLI erases, the server writes events.
    cli_keys, server_keys = DataKeyCache(master_keys), DataKeyCache(master_keys)
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, cli_keys)
    writer = AuthEventWriter(pg_pool, system_keys, server_keys)
    sid = await repo.add("gone", "pw", plan=None)
    writer.submit(event(sid, "gone", 0))
    await writer.flush()
    assert writer.written == 1 and server_keys.cached(sid) is not None
    writer.submit(event(sid, "gone", 1))
    assert await repo.remove("gone") is True
    assert server_keys.cached(sid) is not None  # the erasure ran elsewhere
    await writer.flush()
    assert (writer.written, writer.dropped, writer.failed) == (1, 1, 0)
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_events") == 0


async def test_background_flusher_writes_and_stop_flushes_rest(
    writer: AuthEventWriter, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """start() writes a full batch in the background; stop() writes what is left."""
    sid = await repo.add("harry", "pw", plan=None)
    writer.start()
    try:
        for i in range(100):  # one full batch wakes the flusher
            writer.submit(event(sid, "harry", i))
        await asyncio.wait_for(writer.wait_for_written(100), timeout=10)
        assert writer.written == 100
        writer.submit(event(sid, "harry", 500))
    finally:
        await writer.stop()
    assert writer.written == 101
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_events") == 101


async def test_unavailable_database_is_retried_with_backoff_then_given_up(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """With the database gone, retry delays double up to max_backoff; give_up_after ends them."""
    clock = Clock()
    writer = AuthEventWriter(
        pg_pool,
        system_keys,
        data_keys,
        flush_interval=0.2,
        max_backoff=1.0,
        give_up_after=10.0,
        clock=clock,
    )
    for i in range(4):
        writer.submit(event(None, "x", i, AuthResult.REJECT))
    pg_pool.terminate()
    await writer.flush()
    assert writer.write_errors == 1
    schedule = []
    for _ in range(5):
        due = writer.retry_at
        assert due is not None
        errors = writer.write_errors
        clock.now = due - 0.01
        await writer.flush()  # not yet due: no attempt
        assert writer.write_errors == errors
        clock.now = due
        await writer.flush()
        assert writer.write_errors == errors + 1
        schedule.append(round(due, 6))
    assert schedule == [0.2, 0.6, 1.4, 2.4, 3.4]  # +0.4, +0.8, then capped at +1.0
    assert (writer.failed, len(writer)) == (0, 4)
    clock.now = 9.99  # an attempt just short of give_up_after keeps the batch
    await writer.flush()
    assert (writer.failed, len(writer)) == (0, 4)
    assert writer.retry_at is not None and round(writer.retry_at, 6) == 10.99
    clock.now = 10.99  # the first attempt past it gives up
    await writer.flush()
    assert (writer.failed, len(writer), writer.written) == (4, 0, 0)
    assert writer.retry_at is None


async def test_events_keep_queueing_while_a_batch_waits(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """While a batch waits for the database, new events queue up to max_queue, oldest dropped."""
    writer = AuthEventWriter(
        pg_pool, system_keys, data_keys, max_queue=10, batch_size=4, clock=Clock()
    )
    for i in range(4):
        writer.submit(event(None, "x", i, AuthResult.REJECT))
    pg_pool.terminate()
    await writer.flush()
    assert (writer.write_errors, len(writer)) == (1, 4)
    for i in range(15):
        writer.submit(event(None, "y", 100 + i, AuthResult.REJECT))
    assert (writer.dropped, len(writer)) == (5, 14)


async def test_batch_is_written_once_the_database_returns(
    pg_pool: Pool, pg_dsn: str, pg_admin_dsn: str, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """A batch that met a missing database is written at its retry time once it is back."""
    name = urlsplit(pg_dsn).path.lstrip("/")
    clock = Clock()
    pool = await connect(pg_dsn, min_size=0, max_size=2)
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        writer = AuthEventWriter(pool, system_keys, data_keys, flush_interval=0.2, clock=clock)
        for i in range(3):
            writer.submit(event(None, "x", i, AuthResult.REJECT))
        # Refuse new sessions (the fixture's pool reconnects), end the open
        # ones, then move the database out of the writer's way.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = $1",
            name,
        )
        await admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_away"')
        try:
            await writer.flush()
            assert (writer.write_errors, writer.written, len(writer)) == (1, 0, 3)
        finally:
            await admin.execute(f'ALTER DATABASE "{name}_away" RENAME TO "{name}"')
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        clock.now = 0.1
        await writer.flush()
        assert (writer.write_errors, writer.written) == (1, 0)  # waits for its retry time
        clock.now = 0.2
        await writer.flush()
        assert (writer.write_errors, writer.written, writer.failed, len(writer)) == (1, 3, 0, 0)
    finally:
        await admin.close()
        await pool.close()
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_rejects_unknown") == 3


async def test_a_refused_row_does_not_take_its_batch_along(
    writer: AuthEventWriter, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A row the database refuses (constraint violation) is counted failed; the rest are written."""
    await pg_pool.execute(
        "ALTER TABLE auth_rejects_unknown ADD CONSTRAINT no_poison CHECK (reason <> 'poison')"
    )
    sid = await repo.add("nora", "pw", plan=None)
    for i in range(5):
        reason = "poison" if i == 2 else None
        writer.submit(event(None, f"u{i}", i, AuthResult.REJECT, reason=reason))
    writer.submit(event(sid, "nora", 10))
    writer.submit(event(sid, "nora", 11))
    await writer.flush()
    assert (writer.written, writer.failed, writer.write_errors, len(writer)) == (6, 1, 0, 0)
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_rejects_unknown") == 4
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_events") == 2


async def test_partitions_created_ahead_take_the_rows(
    writer: AuthEventWriter, pg_pool: Pool
) -> None:
    """Rows first land in DEFAULT; ensure_partitions moves them to their day's partition."""
    writer.submit(event(None, "x", 0, AuthResult.REJECT))
    await writer.flush()
    created = await ensure_partitions(pg_pool, now=T0, days_ahead=1)
    assert "auth_events_p20300506" in created and "auth_rejects_unknown_p20300507" in created
    assert await ensure_partitions(pg_pool, now=T0, days_ahead=1) == []
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_rejects_unknown_default") == 0
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_rejects_unknown_p20300506") == 1
    writer.submit(event(None, "y", 86_400, AuthResult.REJECT))
    await writer.flush()
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_rejects_unknown_p20300507") == 1
    dropped = await drop_partitions_before(
        pg_pool, "auth_rejects_unknown", before=T0 + timedelta(days=1)
    )
    assert dropped == ["auth_rejects_unknown_p20300506"]
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_rejects_unknown") == 1


def test_event_aad_binds_event_and_subscriber() -> None:
    """The aad differs per event id, per column and per subscriber."""
    a, b = uuid.uuid4(), uuid.uuid4()
    base = event_aad("auth_events", "user_name", a, 1)
    assert base != event_aad("auth_events", "user_name", b, 1)
    assert base != event_aad("auth_events", "nas_ip", a, 1)
    assert base != event_aad("auth_events", "user_name", a, 2)
    assert base != event_aad("auth_rejects_unknown", "user_name", a, None)


async def test_unreadable_key_fails_its_events_only(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, repo: SubscriberRepository
) -> None:
    """Events of a subscriber whose key cannot be unwrapped fail; the rest is written."""
    a = await repo.add("kim", "pw", plan=None)
    b = await repo.add("lee", "pw", plan=None)
    await pg_pool.execute(
        "UPDATE subscribers SET wrapped_key = (SELECT wrapped_key FROM subscribers WHERE id = $1)"
        " WHERE id = $2",
        a,
        b,
    )
    writer = AuthEventWriter(pg_pool, system_keys, DataKeyCache(master_keys), batch_size=2)
    writer.submit(event(b, "lee"))
    writer.submit(event(a, "kim"))
    await writer.flush()
    assert (writer.failed, writer.written, writer.write_errors, len(writer)) == (1, 1, 0, 0)
    [row] = await pg_pool.fetch("SELECT subscriber_id FROM auth_events")
    assert row["subscriber_id"] == a


async def test_apply_retention_drops_old_days_per_table(pg_pool: Pool) -> None:
    """apply_retention drops auth-event days past 180 and unknown-user reject days past 7."""
    await ensure_partitions(pg_pool, now=T0, days_ahead=9)
    old = T0 - timedelta(days=3)  # no partition: lands in DEFAULT
    for table in ("auth_events", "auth_rejects_unknown"):
        extra = ", subscriber_id" if table == "auth_events" else ""
        value = ", 1" if table == "auth_events" else ""
        extra_result = ", result" if table == "auth_events" else ""
        result_value = ", 'reject'" if table == "auth_events" else ""
        for when in (old, T0 + timedelta(days=9)):
            await pg_pool.execute(
                f"INSERT INTO {table} (time, id, nas_id, reason, method{extra}{extra_result})"
                f" VALUES ($1, $2, 1, 'r', 'pap'{value}{result_value})",
                when,
                uuid.uuid4(),
            )
    now = T0 + timedelta(days=185)  # auth events before T0 + 5 days are past 180 days
    dropped = await apply_retention(pg_pool, now=now)
    expected_events = [f"auth_events_p{(T0 + timedelta(days=d)):%Y%m%d}" for d in range(5)]
    expected_rejects = [
        f"auth_rejects_unknown_p{(T0 + timedelta(days=d)):%Y%m%d}" for d in range(10)
    ]
    assert dropped == sorted(expected_events + expected_rejects)
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_events") == 1  # day 9 is kept
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_events_default") == 0
    assert await pg_pool.fetchval("SELECT count(*) FROM auth_rejects_unknown") == 0
    assert await apply_retention(pg_pool, now=now) == []
    custom = await apply_retention(pg_pool, now=T0 + timedelta(days=8), auth_events_days=1)
    assert custom == [f"auth_events_p{(T0 + timedelta(days=d)):%Y%m%d}" for d in range(5, 7)]
    with pytest.raises(ValueError):
        await apply_retention(pg_pool, now=now, unknown_rejects_days=0)
