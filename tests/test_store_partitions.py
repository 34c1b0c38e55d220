"""Daily partitions of sessions_closed (partitioned on stopped_at) and their retention.

auth_events, auth_rejects_unknown and acct_records are covered with their
writers (tests/test_store_events.py, tests/test_accounting_store.py); these
tests cover the table partitioned on a column other than ``time``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ispcare_radius.store.db import Pool
from ispcare_radius.store.partitions import (
    PARTITION_COLUMNS,
    apply_retention,
    drop_partitions_before,
    ensure_partitions,
)
from ispcare_radius.store.sessions import close_stale

T0 = datetime(2030, 5, 6, 7, 0, 0, tzinfo=UTC)


async def add_closed(pool: Pool, stopped_at: datetime) -> uuid.UUID:
    """A closed session row (no personal fields) that ended at ``stopped_at``."""
    row_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO sessions_closed (id, subscriber_id, session_key, nas_id, started_at,"
        " updated_at, last_seen, start_seen, stopped_at, close_reason)"
        " VALUES ($1, 7, $2, 1, $3, $3, $3, true, $3, 'stop')",
        row_id,
        uuid.uuid4().bytes,
        stopped_at,
    )
    return row_id


async def count(pool: Pool, table: str) -> int:
    value = await pool.fetchval(f"SELECT count(*) FROM {table}")
    assert isinstance(value, int)
    return value


def test_each_partitioned_table_names_its_column() -> None:
    assert PARTITION_COLUMNS["sessions_closed"] == "stopped_at"
    assert PARTITION_COLUMNS["acct_records"] == "time"


async def test_closed_sessions_get_daily_partitions_and_leave_default(pg_pool: Pool) -> None:
    """Rows that landed in DEFAULT move to their day's partition when it is created."""
    early = await add_closed(pg_pool, T0)
    created = await ensure_partitions(pg_pool, now=T0, days_ahead=1)
    assert {"sessions_closed_p20300506", "sessions_closed_p20300507"} <= set(created)
    assert await ensure_partitions(pg_pool, now=T0, days_ahead=1) == []
    assert await count(pg_pool, "sessions_closed_default") == 0
    moved = await pg_pool.fetchval("SELECT id FROM sessions_closed_p20300506")
    assert moved == early
    await add_closed(pg_pool, T0 + timedelta(days=1))
    assert await count(pg_pool, "sessions_closed_p20300507") == 1
    # The partition carries the parent's primary key and indexes (ATTACH builds them).
    indexes = await pg_pool.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'sessions_closed_p20300506'"
    )
    assert indexes == 6


async def test_stale_close_lands_in_the_partition_of_its_last_event(pg_pool: Pool) -> None:
    """close_stale moves a silent session into the partition of the day it was last heard."""
    await ensure_partitions(pg_pool, now=T0, days_ahead=0, days_back=1)
    last = T0 - timedelta(days=1)
    await pg_pool.execute(
        "INSERT INTO sessions_active (id, subscriber_id, session_key, nas_id, started_at,"
        " updated_at, last_seen, start_seen) VALUES ($1, 7, $2, 1, $3, $3, $3, true)",
        uuid.uuid4(),
        b"k" * 32,
        last,
    )
    assert await close_stale(pg_pool, now=T0, grace=120, default_interval=600) == 1
    assert await count(pg_pool, "sessions_closed_p20300505") == 1
    assert await count(pg_pool, "sessions_closed_default") == 0


async def test_retention_keeps_closed_sessions_400_days_by_default(pg_pool: Pool) -> None:
    """Whole days past 400 go as partitions, older DEFAULT rows are deleted, the rest stay."""
    await ensure_partitions(pg_pool, now=T0, days_ahead=1)
    await add_closed(pg_pool, T0)  # partition of 2030-05-06
    await add_closed(pg_pool, T0 + timedelta(days=1))  # partition of 2030-05-07
    await add_closed(pg_pool, T0 - timedelta(days=30))  # DEFAULT, old
    future = await add_closed(pg_pool, T0 + timedelta(days=60))  # DEFAULT, not old
    # Auth-event retention (180 days) leaves session history alone.
    assert await apply_retention(pg_pool, now=T0 + timedelta(days=185)) == [
        f"auth_events_p{T0 + timedelta(days=d):%Y%m%d}" for d in range(2)
    ] + [f"auth_rejects_unknown_p{T0 + timedelta(days=d):%Y%m%d}" for d in range(2)]
    assert await count(pg_pool, "sessions_closed") == 4

    # 401 days on, the first day is wholly older than 400 days; the second is not.
    dropped = await apply_retention(pg_pool, now=T0 + timedelta(days=401))
    assert dropped == ["sessions_closed_p20300506"]
    assert await count(pg_pool, "sessions_closed_p20300507") == 1
    assert await pg_pool.fetchval("SELECT id FROM sessions_closed_default") == future
    assert await apply_retention(pg_pool, now=T0 + timedelta(days=401)) == []


async def test_closed_sessions_retention_is_configurable(pg_pool: Pool) -> None:
    await ensure_partitions(pg_pool, now=T0, days_ahead=2)
    dropped = await apply_retention(pg_pool, now=T0 + timedelta(days=3), closed_sessions_days=1)
    assert [d for d in dropped if d.startswith("sessions_closed")] == [
        "sessions_closed_p20300506",
        "sessions_closed_p20300507",
    ]
    with pytest.raises(ValueError):
        await apply_retention(pg_pool, now=T0, closed_sessions_days=0)


async def test_drop_before_refuses_an_unknown_table(pg_pool: Pool) -> None:
    with pytest.raises(ValueError, match="not a partitioned table"):
        await drop_partitions_before(pg_pool, "sessions_active", before=T0)
