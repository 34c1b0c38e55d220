"""Daily partitions of the time-partitioned tables: create ahead, drop for retention.

Imports store.db only; never server or cli. Time is passed in (``now=``).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from ispcare_radius.store.db import Connection, Pool, acquire

PARTITIONED_TABLES: Final = ("auth_events", "auth_rejects_unknown", "acct_records")
_LOCK_KEY: Final = 0x1597_CA7E_0002
_PARTITION_NAME: Final = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")


def partition_name(table: str, day: date) -> str:
    """``<table>_pYYYYMMDD``."""
    return f"{table}_p{day:%Y%m%d}"


def _bound(day: date) -> str:
    return datetime.combine(day, time(), tzinfo=UTC).isoformat()


def _check_table(table: str) -> None:
    if table not in PARTITIONED_TABLES:
        raise ValueError(f"not a partitioned table: {table}")


async def _create_day(conn: Connection, table: str, day: date) -> bool:
    name = partition_name(table, day)
    if await conn.fetchval("SELECT to_regclass($1)", name) is not None:
        return False
    low, high = _bound(day), _bound(day + timedelta(days=1))
    await conn.execute(
        f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    # Rows of this day that already landed in the DEFAULT partition must move,
    # or PostgreSQL refuses to attach a partition overlapping them.
    await conn.execute(
        f"WITH moved AS (DELETE FROM {table}_default WHERE time >= $1 AND time < $2 RETURNING *)"
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
    _check_table(table)
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
        await conn.execute(f"DELETE FROM {table}_default WHERE time < $1", cutoff)
    return sorted(dropped)


async def apply_retention(
    pool: Pool, *, now: datetime, auth_events_days: int = 180, unknown_rejects_days: int = 7
) -> list[str]:
    """Drop what is older than its retention: auth events, then unknown-user rejects.

    A partition goes once its whole day is older than ``now - days``; rows
    of that age still in a DEFAULT partition are deleted. Returns the
    partitions dropped, sorted. Meant for a daily task.
    """
    if auth_events_days < 1 or unknown_rejects_days < 1:
        raise ValueError("retention must be at least one day")
    moment = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    dropped = await drop_partitions_before(
        pool, "auth_events", before=moment - timedelta(days=auth_events_days)
    )
    dropped += await drop_partitions_before(
        pool, "auth_rejects_unknown", before=moment - timedelta(days=unknown_rejects_days)
    )
    return sorted(dropped)
