"""Anonymised statistics: read a period's usage, roll it up, validate, release.

Imports privacy (the pure rollup and validator) and store.db; never cli or
server. The rollup rules live in privacy/anon.py, the release rules in
privacy/anon_check.py; this module only moves rows.

Attribution: a session counts, whole, in the period in which it ended
(``sessions_closed.stopped_at``). Closed sessions no longer change, so a
released period stays true and every session is counted in exactly one
period. Its categories come from the subscriber's accepted login that
opened it (the latest accepted auth event on or before the session start,
preferring the same NAS), else from the NAS location; plan and NAS group
from the subscriber's plan and the NAS. Sessions of unknown users
(subscriber 0) are not subscribers and are left out.

One granularity per day: a DAY release is refused once any hour of that day
is released, and an HOUR release once its day is. A day table minus its 24
hour tables would otherwise be exactly the subscribers the hour tables hid.
Refusing was chosen over building days from released hours: distinct
subscribers do not add up across hours, and a day's caps are not the sum of
24 hours' caps, so a summed day would be wrong where it is not leaky.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from ispcare_radius.privacy.anon import (
    Categories,
    Period,
    StatsSettings,
    Usage,
    bucket_end,
    bucket_label,
    bucket_start,
    cell_rows,
    rollup,
    totals,
)
from ispcare_radius.privacy.anon_check import Violation, check_release, summary
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.feeds import enqueue

TOPIC: Final = "stats"

# One row per subscriber and set of categories: the least the rollup needs.
_USAGE_SQL: Final = """
SELECT s.subscriber_id,
       COALESCE(c.country, n.country) AS country,
       CASE WHEN c.country IS NULL THEN n.city ELSE c.city END AS city,
       c.device_class,
       c.os_family,
       p.name AS plan,
       COALESCE(n.nas_group, n.vendor) AS nas_group,
       s.nas_port_type,
       count(*)::bigint AS sessions,
       sum(s.input_octets)::bigint AS bytes_in,
       sum(s.output_octets)::bigint AS bytes_out,
       sum(s.session_time)::bigint AS seconds
FROM sessions_closed s
LEFT JOIN nas n ON n.id = s.nas_id
LEFT JOIN subscribers sub ON sub.id = s.subscriber_id
LEFT JOIN plans p ON p.id = sub.plan_id
LEFT JOIN LATERAL (
    SELECT e.country, e.city, e.device_class, e.os_family
    FROM auth_events e
    WHERE e.subscriber_id = s.subscriber_id
      AND e.result = 'accept'
      AND e.time <= s.started_at + interval '5 minutes'
      AND e.time >= s.started_at - interval '1 day'
    ORDER BY (e.nas_id = s.nas_id) DESC, e.time DESC
    LIMIT 1
) c ON true
WHERE s.stopped_at >= $1 AND s.stopped_at < $2 AND s.subscriber_id <> 0
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


class ReleaseRefused(Exception):
    """The validator found the table unfit for release; nothing was written.

    The message names the broken rules and rows, never a value.
    """

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        super().__init__(summary(self.violations))


class PeriodNotOver(ValueError):
    """The period asked for has not ended yet: its sessions are still closing."""


class GranularityConflict(ValueError):
    """The day is already released at the other granularity (hours vs the whole day)."""


_OVERLAP_SQL: Final = """
SELECT 1 FROM stats_releases
WHERE period <> $1 AND bucket < $3 AND bucket + CASE period WHEN 'day' THEN interval '1 day'
      ELSE interval '1 hour' END > $2
LIMIT 1
"""


async def overlapping_release(
    conn: Connection, period: Period, start: datetime, end: datetime
) -> bool:
    """Whether a release of the other granularity overlaps [start, end)."""
    return bool(await conn.fetchval(_OVERLAP_SQL, period.value, start, end))


@dataclass(frozen=True, slots=True)
class Release:
    """What one ``release`` did: the rows released (empty when already released)."""

    period: Period
    bucket: datetime
    rows: tuple[dict[str, object], ...]
    suppressed: int
    already_released: bool


async def read_usage(conn: Connection, start: datetime, end: datetime) -> list[Usage]:
    """Each subscriber's usage per set of categories, for sessions ended in [start, end)."""
    rows = await conn.fetch(_USAGE_SQL, start, end)
    return [
        Usage(
            subscriber=int(r["subscriber_id"]),
            categories=Categories(
                country=r["country"],
                city=r["city"],
                device_class=r["device_class"],
                os_family=r["os_family"],
                plan=r["plan"],
                nas_group=r["nas_group"],
                nas_port_type=r["nas_port_type"],
            ),
            sessions=int(r["sessions"]),
            bytes_in=int(r["bytes_in"]),
            bytes_out=int(r["bytes_out"]),
            seconds=int(r["seconds"]),
        )
        for r in rows
    ]


def payload(
    period: Period, start: datetime, k: int, rows: Sequence[dict[str, object]]
) -> dict[str, Any]:
    """The outbox message of a release: the released cells and totals over them only."""
    return {
        "period": period.value,
        "bucket": bucket_label(period, start),
        "k": k,
        "cells": [{c: v for c, v in row.items() if c not in ("period", "bucket")} for row in rows],
        "totals": totals(rows),
    }


async def release(
    pool: Pool, settings: StatsSettings, *, period: Period, start: datetime, now: datetime
) -> Release:
    """Compute, validate and release one period, all in one transaction.

    A period is released once: a second call finds it in ``stats_releases``
    and returns ``already_released``. Raises ``PeriodNotOver`` for a period
    that has not ended by ``now``, ``GranularityConflict`` when the day is
    released at the other granularity, and ``ReleaseRefused`` when the
    validator rejects the table (nothing is written then).
    """
    end = bucket_end(period, start)
    if end > now:
        raise PeriodNotOver(f"the {period.value} {bucket_label(period, start)} has not ended yet")
    async with acquire(pool) as conn, conn.transaction():
        # All releases of one day serialise here (hours and the day alike), so the
        # granularity check below cannot race; the second sees the first's row.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('stats_release'), $1)",
            int(bucket_start(Period.DAY, start).timestamp()) // 86_400,
        )
        done = await conn.fetchval(
            "SELECT 1 FROM stats_releases WHERE period = $1 AND bucket = $2", period.value, start
        )
        if done:
            return Release(period, start, (), 0, already_released=True)
        if await overlapping_release(conn, period, start, end):
            other = "hours" if period is Period.DAY else "day"
            raise GranularityConflict(
                f"the {period.value} {bucket_label(period, start)} overlaps released {other};"
                " one granularity per day"
            )
        usage = await read_usage(conn, start, end)
        result = rollup(usage, settings=settings, period=period)
        rows = cell_rows(period, start, result.cells)
        problems = check_release(rows, k=settings.k, population=result.population)
        if problems:
            raise ReleaseRefused(problems)
        await conn.execute(
            "INSERT INTO stats_releases (period, bucket, k, cells, suppressed, released_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            period.value,
            start,
            settings.k,
            len(rows),
            result.suppressed,
            now,
        )
        await conn.executemany(
            "INSERT INTO stats_hourly (period, bucket, dimension, value, sessions, subscribers,"
            " bytes_in, bytes_out, seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                (
                    period.value,
                    start,
                    r["dimension"],
                    r["value"],
                    r["sessions"],
                    r["subscribers"],
                    r["bytes_in"],
                    r["bytes_out"],
                    r["seconds"],
                )
                for r in rows
            ],
        )
        key = f"{TOPIC}:{period.value}:{bucket_label(period, start)}"
        # No account: statistics belong to nobody, so they carry no ordering key.
        message = payload(period, start, settings.k, rows)
        await enqueue(conn, topic=TOPIC, key=key, account_key=None, payload=message)
    return Release(period, start, tuple(rows), result.suppressed, already_released=False)


async def released(
    pool: Pool,
    *,
    since: datetime | None = None,
    period: Period | None = None,
    dimensions: Sequence[str] = (),
) -> list[dict[str, object]]:
    """Released rows as the validator saw them (bucket as its label), oldest first."""
    async with acquire(pool) as conn:
        rows = await conn.fetch(
            "SELECT period, bucket, dimension, value, sessions, subscribers, bytes_in,"
            " bytes_out, seconds FROM stats_hourly"
            " WHERE ($1::timestamptz IS NULL OR bucket >= $1)"
            " AND ($2::text IS NULL OR period = $2)"
            " AND (cardinality($3::text[]) = 0 OR dimension = ANY($3))"
            " ORDER BY period, bucket, dimension, subscribers DESC, value",
            since,
            period.value if period else None,
            list(dimensions),
        )
    out = []
    for r in rows:
        row = dict(r)
        row["bucket"] = bucket_label(Period(r["period"]), r["bucket"])
        out.append(row)
    return out
