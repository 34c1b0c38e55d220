"""The flag store on a real PostgreSQL: sealed evidence, one flag per bucket, the outbox,
operator queries, and the detector's rebuild from stored auth events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

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


class _InsertWatch:
    """The pool a FlagWriter is given, noting when the writer sends its flags INSERT.

    The test holds the flags table lock, so from that moment the batch is in
    flight: off the queue, its INSERT sent, and nothing written until the
    test lets go of the lock.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._sent = asyncio.Event()
        self.pid = 0  # the backend the INSERT went to

    def is_closing(self) -> bool:
        return self._pool.is_closing()

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[_WatchedConnection]:
        async with self._pool.acquire(timeout=timeout) as conn:
            yield _WatchedConnection(conn, self)

    def inserting(self, pid: int) -> None:
        self.pid = pid
        self._sent.set()

    async def blocked_insert(self, timeout: float = 10.0) -> int:
        """The backend pid of the writer's INSERT, once it is sent."""
        try:
            await asyncio.wait_for(self._sent.wait(), timeout)
        except TimeoutError:
            raise AssertionError("the flag writer never reached its INSERT") from None
        return self.pid


class _WatchedConnection:
    """A pooled connection that tells its ``_InsertWatch`` when a flags INSERT goes out."""

    def __init__(self, conn: Connection, watch: _InsertWatch) -> None:
        self._conn = conn
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetchval(self, query: str, *args: Any) -> Any:
        if query.startswith("INSERT INTO flags"):
            # The test resumes on a later turn of the event loop; asyncpg has
            # written the statement to the socket before this coroutine first
            # yields, so by then the INSERT has been sent.
            self._watch.inserting(self._conn.get_server_pid())
        return await self._conn.fetchval(query, *args)


async def _buckets(pool: Pool) -> list[int]:
    async with pool.acquire() as conn:
        return [int(r["bucket"]) for r in await conn.fetch("SELECT bucket FROM flags ORDER BY id")]


async def test_flags_raised_while_a_batch_is_written_are_not_lost(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """A batch in flight is off the queue: flags submitted meanwhile (overflowing the
    queue's old contents) are all written after it, none popped unwritten."""
    watch = _InsertWatch(pg_pool)
    writer = FlagWriter(cast(Pool, watch), system_keys.epoch, data_keys, max_queue=3)
    for bucket in (1, 2, 3):
        writer.submit(_flag(Action.FLAG, sid=None, bucket=bucket))
    async with pg_pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE flags IN ACCESS EXCLUSIVE MODE")
        flush = asyncio.create_task(writer.flush())
        await watch.blocked_insert()
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
    watch = _InsertWatch(pg_pool)
    writer = FlagWriter(cast(Pool, watch), system_keys.epoch, data_keys, max_queue=4)
    for bucket in (1, 2, 3):
        writer.submit(_flag(Action.FLAG, sid=None, bucket=bucket))
    async with pg_pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE flags IN ACCESS EXCLUSIVE MODE")
        flush = asyncio.create_task(writer.flush())
        pid = await watch.blocked_insert()
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
