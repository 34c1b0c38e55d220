"""Daily partitions of the time-partitioned tables: create ahead, drop for retention.

Each table is range-partitioned on one timestamptz column (``PARTITION_COLUMNS``)
and has a DEFAULT partition that catches rows for days without a partition.

Imports store.db only; never server or cli. Time is passed in (``now=``).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from ispcare_radius.store.db import Connection, Pool, acquire

# Table -> the column it is partitioned on (PARTITION BY RANGE in the migrations).
PARTITION_COLUMNS: Final[dict[str, str]] = {
    "auth_events": "time",
    "auth_rejects_unknown": "time",
    "acct_records": "time",
    # Closed sessions by when they ended: retention drops whole days of history.
    "sessions_closed": "stopped_at",
}
PARTITIONED_TABLES: Final = tuple(PARTITION_COLUMNS)
_LOCK_KEY: Final = 0x1597_CA7E_0002
_PARTITION_NAME: Final = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")


def partition_name(table: str, day: date) -> str:
    """``<table>_pYYYYMMDD``."""
    return f"{table}_p{day:%Y%m%d}"


def _bound(day: date) -> str:
    return datetime.combine(day, time(), tzinfo=UTC).isoformat()


def _time_column(table: str) -> str:
    """The partition column of ``table``; only known tables reach SQL text."""
    column = PARTITION_COLUMNS.get(table)
    if column is None:
        raise ValueError(f"not a partitioned table: {table}")
    return column


async def _create_day(conn: Connection, table: str, day: date) -> bool:
    name = partition_name(table, day)
    column = _time_column(table)
    if await conn.fetchval("SELECT to_regclass($1)", name) is not None:
        return False
    low, high = _bound(day), _bound(day + timedelta(days=1))
    await conn.execute(
        f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    # Rows of this day that already landed in the DEFAULT partition must move,
    # or PostgreSQL refuses to attach a partition overlapping them.
    await conn.execute(
        f"WITH moved AS (DELETE FROM {table}_default"
        f" WHERE {column} >= $1 AND {column} < $2 RETURNING *)"
        f" INSERT INTO {name} SELECT * FROM moved",
        datetime.fromisoformat(low),
        datetime.fromisoformat(high),
    )
    await conn.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{low}') TO ('{high}')"
    )
    return True


async def ensure_partitions(
    pool: Pool, *, now: datetime, days_ahead: int = 7, days_back: int = 0
) -> list[str]:
    """Create the daily partitions from ``now - days_back`` to ``now + days_ahead``.

    Days are UTC. Safe to run from several processes at once (advisory lock,
    existence re-checked inside it). Returns the partitions created.
    """
    if days_ahead < 0 or days_back < 0:
        raise ValueError("days_ahead and days_back must not be negative")
    today = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC).date()
    days = [today + timedelta(days=d) for d in range(-days_back, days_ahead + 1)]
    created: list[str] = []
    async with acquire(pool, timeout=30.0) as conn:
        for table in PARTITIONED_TABLES:
            for day in days:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                    if await _create_day(conn, table, day):
                        created.append(partition_name(table, day))
    return created


async def drop_partitions_before(pool: Pool, table: str, *, before: datetime) -> list[str]:
    """Drop the daily partitions of ``table`` that end at or before ``before``.

    Retention by partition: whole days go at once, no row-by-row delete.
    Rows still in the DEFAULT partition are deleted by time.
    """
    column = _time_column(table)
    cutoff = (before if before.tzinfo else before.replace(tzinfo=UTC)).astimezone(UTC)
    dropped: list[str] = []
    async with acquire(pool, timeout=30.0) as conn:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = $1::regclass",
            table,
        )
        for record in names:
            match = _PARTITION_NAME.match(str(record["relname"]))
            if match is None or match["table"] != table:
                continue
            day = datetime.strptime(match["day"], "%Y%m%d").replace(tzinfo=UTC)
            if day + timedelta(days=1) <= cutoff:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                    await conn.execute(f"DROP TABLE IF EXISTS {match.group(0)}")
                dropped.append(match.group(0))
        await conn.execute(f"DELETE FROM {table}_default WHERE {column} < $1", cutoff)
    return sorted(dropped)


async def apply_retention(
    pool: Pool,
    *,
    now: datetime,
    auth_events_days: int = 180,
    unknown_rejects_days: int = 7,
    closed_sessions_days: int = 400,
    acct_records_days: int | None = None,
) -> list[str]:
    """Drop what is older than its retention: auth events, unknown-user rejects, closed sessions.

    A partition goes once its whole day is older than ``now - days``; rows
    of that age still in a DEFAULT partition are deleted. Closed sessions
    are kept by when they ended, over a year by default: ISPs answer billing
    disputes and lawful requests from them. ``acct_records_days`` is the
    raw accounting log's (None keeps it; the config's default is 400): once
    applied, its records live on only as sessions and usage, and a record
    still queued for the session applier is dequeued unapplied. Returns the
    partitions dropped, sorted. Meant for a daily task.
    """
    days = [auth_events_days, unknown_rejects_days, closed_sessions_days]
    if min(days + ([] if acct_records_days is None else [acct_records_days])) < 1:
        raise ValueError("retention must be at least one day")
    moment = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    dropped = await drop_partitions_before(
        pool, "auth_events", before=moment - timedelta(days=auth_events_days)
    )
    dropped += await drop_partitions_before(
        pool, "auth_rejects_unknown", before=moment - timedelta(days=unknown_rejects_days)
    )
    dropped += await drop_partitions_before(
        pool, "sessions_closed", before=moment - timedelta(days=closed_sessions_days)
    )
    if acct_records_days is not None:
        dropped += await drop_partitions_before(
            pool, "acct_records", before=moment - timedelta(days=acct_records_days)
        )
    return sorted(dropped)
