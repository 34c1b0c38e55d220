"""The flag store on a real PostgreSQL: sealed evidence, one flag per bucket, the outbox,
operator queries, and the detector's rebuild from stored auth events."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.detect.login import Flag, Login
from ispcare_radius.detect.settings import Action, Mode, Rule, Severity, settings_from_toml
from ispcare_radius.detect.state import Detector
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Connection, Pool
from ispcare_radius.store.flags import FlagFilter, FlagQuery, FlagWriter, detect_keyer, rebuild
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.subscribers import SubscriberRepository

T0 = 1_900_000_000.0


def _flag(action: Action, *, sid: int | None, subject: bytes = b"s" * 8, bucket: int = 1) -> Flag:
    return Flag(
        time=T0,
        rule=Rule.BRUTE_FORCE,
        severity=Severity.HIGH,
        score=1.0,
        action=action,
        subject_kind="account" if sid else "source",
        subject=subject,
        bucket=bucket,
        subscriber_id=sid,
        evidence={"user_name": "alice-personal", "failures": 10},
        thresholds={"short_count": 10},
    )


async def test_flags_are_sealed_deduplicated_and_notify_billing(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache, master_keys: MasterKeys
) -> None:
    """One row per rule, subject and bucket; evidence only as ciphertext; notify writes
    one outbox event without personal values; log writes nothing; an unknown
    subscriber's flag is dropped."""
    subs = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    sid = await subs.add("alice", "pw", plan=None)
    writer = FlagWriter(pg_pool, system_keys.epoch, data_keys)
    writer.submit(_flag(Action.NOTIFY, sid=sid))
    writer.submit(_flag(Action.NOTIFY, sid=sid))  # the same bucket again
    writer.submit(_flag(Action.FLAG, sid=None, bucket=2))
    writer.submit(_flag(Action.LOG, sid=None, bucket=3))
    writer.submit(_flag(Action.FLAG, sid=sid + 999, subject=b"x" * 8))
    await writer.flush()
    assert (writer.written, writer.dropped, len(writer)) == (2, 1, 0)
    async with pg_pool.acquire() as conn:
        rows = await conn.fetch("SELECT subscriber_id, evidence_enc FROM flags ORDER BY id")
        outbox = await conn.fetch("SELECT topic, payload::text AS payload FROM feed_outbox")
    assert [r["subscriber_id"] for r in rows] == [sid, 0]
    assert all(b"alice-personal" not in bytes(r["evidence_enc"]) for r in rows)
    assert [r["topic"] for r in outbox] == ["flag.raised"]
    assert "alice" not in outbox[0]["payload"] and f'"subscriber_id": {sid}' in outbox[0]["payload"]

    query = FlagQuery(pg_pool, data_keys, system_keys.epoch, actor="cli:test")
    listed = await query.search(FlagFilter(subscriber_id=sid))
    assert len(listed) == 1 and listed[0].evidence is None
    explained = await query.explain(listed[0].id, now=datetime.now(UTC))
    assert explained is not None and explained.evidence is not None
    assert explained.evidence["user_name"] == "alice-personal"
    acked = await query.ack(listed[0].id, note="checked", now=datetime.now(UTC))
    assert acked is not None and acked.state == "acknowledged"
    assert await query.search(FlagFilter(state="open", subscriber_id=sid)) == []
    async with pg_pool.acquire() as conn:
        audit = await conn.fetch(
            "SELECT action, subscriber_id FROM audit_log WHERE action LIKE 'flag.%' ORDER BY time"
        )
    assert [(r["action"], r["subscriber_id"]) for r in audit] == [
        ("flag.explain", sid),
        ("flag.ack", sid),
    ]
    # Removing the subscriber takes their flags and outbox events along.
    await subs.remove("alice")
    assert await query.get(listed[0].id) is None
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM feed_outbox") == 0


async def test_rebuild_replays_stored_signals(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """Signals stored with auth events (known and unknown users) come back into a new
    detector: a brute-force hold and the spray window survive a restart."""
    settings = settings_from_toml(
        {"mode": Mode.ENFORCE.value, "password_spray": {"actions": {"high": "reject"}}}
    )
    keyer = detect_keyer(system_keys.blind_index)
    first = Detector(settings, keyer, FlagWriter(pg_pool, system_keys.epoch, data_keys))
    now = datetime.now(UTC).timestamp()
    rows_known, rows_unknown = [], []
    for i in range(10):
        t = now - 60 + i
        sig = first.observe(
            Login(t, 5, False, "bad_password", "bob", "02-00-00-00-00-07", None, b"g%d" % i)
        )
        rows_known.append((datetime.fromtimestamp(t, UTC), uuid.uuid4(), sig.encode()))
        sig = first.observe(Login(t, None, False, "unknown_user", f"spray{i}", "10.9.9.9"))
        rows_unknown.append((datetime.fromtimestamp(t, UTC), uuid.uuid4(), sig.encode()))
    async with pg_pool.acquire() as conn:
        for when, eid, text in rows_known:
            await conn.execute(
                "INSERT INTO auth_events (time, id, subscriber_id, nas_id, result, reason,"
                " method, detect) VALUES ($1, $2, 5, 1, 'reject', 'bad_password', 'pap', $3)",
                when,
                eid,
                text,
            )
        for when, eid, text in rows_unknown:
            await conn.execute(
                "INSERT INTO auth_rejects_unknown (time, id, nas_id, reason, method, detect)"
                " VALUES ($1, $2, 1, 'unknown_user', 'pap', $3)",
                when,
                eid,
                text,
            )
    sink = FlagWriter(pg_pool, system_keys.epoch, data_keys)
    fresh = Detector(settings, keyer, sink)
    assert await rebuild(pg_pool, fresh, now=datetime.now(UTC)) == 20
    assert fresh.hold("BOB", None, None, now) is Action.REJECT
    assert fresh.hold("carol", None, None, now) is None
    # Six more names from the sprayed source cross the threshold (16 > 15): the
    # ten replayed names were remembered.
    for i in range(10, 16):
        fresh.observe(Login(now + i, None, False, "unknown_user", f"spray{i}", "10.9.9.9"))
    assert fresh.hold("anyone", "10.9.9.9", None, now + 20) is Action.REJECT


async def _blocked_insert(conn: Connection, timeout: float = 10.0) -> int:
    """The backend pid of the writer's INSERT once it waits on the table lock."""
    deadline = time.monotonic() + timeout
    while True:
        # Inside the locking transaction the statistics would be one snapshot.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO flags%'"
        )
        if pid is not None:
            return int(pid)
        assert time.monotonic() < deadline, "the flag writer never reached its INSERT"
        await asyncio.sleep(0.01)


async def _buckets(pool: Pool) -> list[int]:
    async with pool.acquire() as conn:
        return [int(r["bucket"]) for r in await conn.fetch("SELECT bucket FROM flags ORDER BY id")]


async def test_flags_raised_while_a_batch_is_written_are_not_lost(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """A batch in flight is off the queue: flags submitted meanwhile (overflowing the
    queue's old contents) are all written after it, none popped unwritten."""
    writer = FlagWriter(pg_pool, system_keys.epoch, data_keys, max_queue=3)
    for bucket in (1, 2, 3):
        writer.submit(_flag(Action.FLAG, sid=None, bucket=bucket))
    async with pg_pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE flags IN ACCESS EXCLUSIVE MODE")
        flush = asyncio.create_task(writer.flush())
        await _blocked_insert(locker)
        assert len(writer) == 0
        for bucket in (4, 5):
            writer.submit(_flag(Action.FLAG, sid=None, bucket=bucket))
        await tx.commit()
    await asyncio.wait_for(flush, 10.0)
    assert await _buckets(pg_pool) == [1, 2, 3, 4, 5]
    assert (writer.written, writer.dropped, len(writer)) == (5, 0, 0)


async def test_a_batch_the_database_drops_goes_back_in_front(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """The write's connection is killed mid-batch (StoreUnavailable): the batch returns
    ahead of the flags raised meanwhile, the cap drops the newest (counted), and the
    next flush writes the rest in order."""
    writer = FlagWriter(pg_pool, system_keys.epoch, data_keys, max_queue=4)
    for bucket in (1, 2, 3):
        writer.submit(_flag(Action.FLAG, sid=None, bucket=bucket))
    async with pg_pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE flags IN ACCESS EXCLUSIVE MODE")
        flush = asyncio.create_task(writer.flush())
        pid = await _blocked_insert(locker)
        for bucket in (4, 5, 6):
            writer.submit(_flag(Action.FLAG, sid=None, bucket=bucket))
        assert await locker.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(flush, 10.0)
        await tx.rollback()
    assert (len(writer), writer.dropped) == (4, 2)
    await writer.flush()
    assert await _buckets(pg_pool) == [1, 2, 3, 4]
    assert (writer.written, len(writer)) == (4, 0)
