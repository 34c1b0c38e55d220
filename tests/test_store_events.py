"""The auth-event writer against a real PostgreSQL: batching, encryption, the unknown-user table."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ispcare_radius.aaa.model import AuthEvent, AuthResult
from ispcare_radius.aaa.ports import AuthEventSink
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Pool
from ispcare_radius.store.events import AuthEventWriter, event_aad
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.partitions import drop_partitions_before, ensure_partitions
from ispcare_radius.store.subscribers import SubscriberRepository

T0 = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
CSI = "02-11-22-33-44-55"
NAS_IP = "198.51.100.23"


def event(
    sid: int | None, user: str, i: int = 0, result: AuthResult = AuthResult.ACCEPT
) -> AuthEvent:
    return AuthEvent(
        time=T0 + timedelta(seconds=i),
        subscriber_id=sid,
        nas_id=1,
        result=result,
        reason="ok" if result is AuthResult.ACCEPT else "unknown_user",
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
    writer: AuthEventWriter, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """An event whose subscriber was erased before the flush is dropped, not written."""
    sid = await repo.add("gone", "pw", plan=None)
    writer.submit(event(sid, "gone"))
    await repo.remove("gone")
    await writer.flush()
    assert (writer.written, writer.dropped) == (0, 1)
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


async def test_write_failures_are_retried_then_counted(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """With the database gone, a batch is kept for max_attempts flushes, then counted failed."""
    writer = AuthEventWriter(pg_pool, system_keys, data_keys, max_attempts=3)
    for i in range(4):
        writer.submit(event(None, "x", i, AuthResult.REJECT))
    pg_pool.terminate()
    await writer.flush()
    await writer.flush()
    assert (writer.failed, writer.write_errors, len(writer)) == (0, 2, 4)
    await writer.flush()
    assert (writer.failed, writer.write_errors, len(writer), writer.written) == (4, 3, 0, 0)


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


async def test_unreadable_key_fails_its_batch_only(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, repo: SubscriberRepository
) -> None:
    """A subscriber key that cannot be unwrapped fails its batch; later batches still write."""
    a = await repo.add("kim", "pw", plan=None)
    b = await repo.add("lee", "pw", plan=None)
    await pg_pool.execute(
        "UPDATE subscribers SET wrapped_key = (SELECT wrapped_key FROM subscribers WHERE id = $1)"
        " WHERE id = $2",
        a,
        b,
    )
    writer = AuthEventWriter(
        pg_pool, system_keys, DataKeyCache(master_keys), batch_size=1, max_attempts=1
    )
    writer.submit(event(b, "lee"))
    writer.submit(event(a, "kim"))
    await writer.flush()
    assert (writer.failed, writer.written, len(writer)) == (1, 1, 0)
