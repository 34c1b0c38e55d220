"""Usage per subscriber per hour, day and billing cycle, and quota crossings.

Called by ``store.sessions.SessionTracker`` inside the session applier's
transaction with the batch's deltas: one statement adds them to ``usage`` and
``usage_hourly`` (and, with a feed sink, queues each change in the outbox);
quotas are checked against the totals it returns.

Imports aaa and store.db; never server or cli.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final

from ispcare_radius.aaa.sessions import (
    Period,
    Quota,
    interim_interval,
    period_start,
    quota_crossed,
)
from ispcare_radius.store.db import Connection, as_columns

# Usage rows (day and cycle, then UTC hours) and, in the same statement, one
# outbox row per row changed (store/feeds.py): the version raised by the
# change makes the idempotency key unique per change, and the same if a
# rolled-back transaction is applied again.
_OUTBOX_USAGE: Final = """
INSERT INTO feed_outbox (topic, idempotency_key, account_key, payload)
SELECT 'usage',
       'usage:' || c.subscriber_id || ':' || c.period || ':' || c.start_text || ':' || c.version,
       coalesce(s.account_ref, 'subscriber:' || c.subscriber_id),
       jsonb_build_object('subscriber_id', c.subscriber_id, 'account_ref', s.account_ref,
                          'period', c.period, 'period_start', c.start_text,
                          'input_octets', c.input_octets, 'output_octets', c.output_octets,
                          'session_time', c.session_time, 'sessions', c.sessions,
                          'version', c.version)
FROM (
    SELECT subscriber_id, period,
           to_char(period_start::timestamp, 'YYYY-MM-DD"T00:00:00Z"') AS start_text,
           input_octets, output_octets, session_time, sessions, version FROM d
    UNION ALL
    SELECT subscriber_id, 'hour', to_char(hour_start AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24":00:00Z"'),
           input_octets, output_octets, session_time, sessions, version FROM h
) c
LEFT JOIN subscribers s ON s.id = c.subscriber_id
ORDER BY c.subscriber_id, c.period, c.start_text
ON CONFLICT (idempotency_key) DO NOTHING
"""
_ADD_USAGE: Final = """
WITH d AS (
    INSERT INTO usage AS u (subscriber_id, period, period_start, input_octets, output_octets,
                            session_time, sessions, updated_at)
    SELECT t.*, $8::timestamptz
    FROM unnest($1::bigint[], $2::text[], $3::date[], $4::bigint[], $5::bigint[],
                $6::bigint[], $7::bigint[]) AS t
    ON CONFLICT (subscriber_id, period, period_start) DO UPDATE SET
        input_octets = u.input_octets + EXCLUDED.input_octets,
        output_octets = u.output_octets + EXCLUDED.output_octets,
        session_time = u.session_time + EXCLUDED.session_time,
        sessions = u.sessions + EXCLUDED.sessions,
        version = u.version + 1,
        updated_at = EXCLUDED.updated_at
    RETURNING subscriber_id, period, period_start, input_octets, output_octets, session_time,
              sessions, version
), h AS (
    INSERT INTO usage_hourly AS u (subscriber_id, hour_start, input_octets, output_octets,
                                   session_time, sessions, updated_at)
    SELECT t.*, $8::timestamptz
    FROM unnest($9::bigint[], $10::timestamptz[], $11::bigint[], $12::bigint[],
                $13::bigint[], $14::bigint[]) AS t
    ON CONFLICT (subscriber_id, hour_start) DO UPDATE SET
        input_octets = u.input_octets + EXCLUDED.input_octets,
        output_octets = u.output_octets + EXCLUDED.output_octets,
        session_time = u.session_time + EXCLUDED.session_time,
        sessions = u.sessions + EXCLUDED.sessions,
        version = u.version + 1,
        updated_at = EXCLUDED.updated_at
    RETURNING subscriber_id, hour_start, input_octets, output_octets, session_time, sessions,
              version
){outbox}
SELECT subscriber_id, period, period_start, input_octets, output_octets, session_time FROM d
"""
# With usage events on (a feed sink is configured), each usage change also
# gets its outbox row in the same statement; without a sink they would only
# pile up: billing then reads the usage tables (feed_usage view) directly.
_ADD_USAGE_EVENTS: Final = _ADD_USAGE.replace("{outbox}", f", o AS ({_OUTBOX_USAGE})")
_ADD_USAGE_ONLY: Final = _ADD_USAGE.replace("{outbox}", "")
# Quota crossings, each with its outbox row; the count of crossings recorded.
_QUOTA_EVENT: Final = """
WITH q AS (
    INSERT INTO quota_events (subscriber_id, period, period_start, kind, time, used, quota)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::date[], $4::text[], $5::timestamptz[],
                         $6::bigint[], $7::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING *
), o AS (
    INSERT INTO feed_outbox (topic, idempotency_key, account_key, payload)
    SELECT 'quota', 'quota:' || q.subscriber_id || ':' || q.period || ':'
               || to_char(q.period_start::timestamp, 'YYYY-MM-DD') || ':' || q.kind,
           coalesce(s.account_ref, 'subscriber:' || q.subscriber_id),
           jsonb_build_object('subscriber_id', q.subscriber_id, 'account_ref', s.account_ref,
                              'period', q.period,
                              'period_start',
                              to_char(q.period_start::timestamp, 'YYYY-MM-DD"T00:00:00Z"'),
                              'kind', q.kind, 'used', q.used, 'quota', q.quota,
                              'time', to_char(q.time AT TIME ZONE 'UTC',
                                              'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
    FROM q LEFT JOIN subscribers s ON s.id = q.subscriber_id
    ORDER BY q.subscriber_id, q.period, q.kind
    ON CONFLICT (idempotency_key) DO NOTHING
)
SELECT count(*) FROM q
"""


@dataclass(frozen=True, slots=True)
class PlanTerms:
    """What a subscriber's plan says about sessions and usage."""

    interim_interval: int | None
    quota: Quota


async def plan_terms(conn: Connection, subscribers: set[int]) -> dict[int, PlanTerms]:
    """Each subscriber's plan terms (interim interval, quota), for those with a plan."""
    if not subscribers:
        return {}
    rows = await conn.fetch(
        "SELECT s.id, p.interim_interval, p.quota_bytes, p.quota_seconds, p.quota_period,"
        " p.billing_day FROM subscribers s JOIN plans p ON p.id = s.plan_id"
        " WHERE s.id = ANY($1::bigint[])",
        list(subscribers),
    )
    return {
        r["id"]: PlanTerms(
            interim_interval=interim_interval(r["interim_interval"]),
            quota=Quota(
                period=Period(r["quota_period"]),
                billing_day=r["billing_day"],
                bytes=r["quota_bytes"],
                seconds=r["quota_seconds"],
            ),
        )
        for r in rows
    }


def hour_of(at: datetime) -> datetime:
    """The UTC hour holding ``at``: the finest usage bucket."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def add_usage(
    conn: Connection,
    usage: dict[tuple[int, datetime], list[int]],
    terms: dict[int, PlanTerms],
    now: datetime,
    *,
    usage_events: bool = True,
) -> int:
    """Add the batch's deltas to the hour, day and billing-cycle rows, each change with
    its outbox row when ``usage_events``; record quota crossings (always with theirs)."""
    if not usage:
        return 0
    totals: dict[tuple[int, str, date], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (sid, hour), deltas in usage.items():
        plan = terms.get(sid)
        billing_day = 1 if plan is None else plan.quota.billing_day
        for period in Period:
            start = period_start(period, hour.date(), billing_day=billing_day)
            bucket = totals[(sid, period.value, start)]
            for i, value in enumerate(deltas):
                bucket[i] += value
    keys = sorted(totals)  # a fixed order: concurrent batches lock rows alike
    hours = sorted(usage)
    rows = await conn.fetch(
        _ADD_USAGE_EVENTS if usage_events else _ADD_USAGE_ONLY,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        *([totals[k][i] for k in keys] for i in range(4)),
        now,
        [k[0] for k in hours],
        [k[1] for k in hours],
        *([usage[k][i] for k in hours] for i in range(4)),
    )
    events: list[tuple[int, str, date, str, datetime, int, int]] = []
    for r in rows:
        plan = terms.get(r["subscriber_id"])
        if plan is None or plan.quota.period.value != r["period"]:
            continue
        for kind, used, quota in quota_crossed(
            plan.quota,
            octets=r["input_octets"] + r["output_octets"],
            seconds=r["session_time"],
        ):
            events.append(
                (r["subscriber_id"], r["period"], r["period_start"], kind, now, used, quota)
            )
    if events:
        return int(await conn.fetchval(_QUOTA_EVENT, *as_columns(events, 7)))
    return 0
