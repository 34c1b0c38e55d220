"""Sessions kept from accounting records: sessions_active and sessions_closed.

The accounting writer stores each record and queues it in acct_pending in
one statement; ``SessionApplier`` (store/applier.py) takes queued records,
applies them through ``SessionTracker`` and dequeues them in the same
transaction, so each stored record moves a session's counters once, off the
acknowledgement path. Rules live in ``aaa.sessions``; this module loads the
rows a batch touches, applies the records in event order, and writes the
result back in a few set-based statements; usage and quotas follow
(store/usage.py). It never decrypts: the writer
stored the blind indexes it needs, and a new session's sealed columns are
copies of its first record's.

Imports aaa, privacy and store; never server or cli.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from ispcare_radius.aaa.accounting import NO_SUBSCRIBER, AcctStatus
from ispcare_radius.aaa.sessions import (
    NAS_REBOOT,
    CloseReason,
    Counters,
    Reading,
    advance,
    started_at,
)
from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire, as_columns, rows_affected
from ispcare_radius.store.usage import PlanTerms, add_usage, hour_of, plan_terms

_log = get_logger(__name__)

# (column, SQL type) shared by sessions_active and sessions_closed, in order.
COLUMNS: Final = (
    ("id", "uuid"),
    ("subscriber_id", "bigint"),
    ("session_key", "bytea"),
    ("nas_id", "bigint"),
    ("session_blind", "bytea"),
    ("port_blind", "bytea"),
    ("framed_ip_blind", "bytea"),
    ("framed_ipv6_blind", "bytea"),
    ("nas_port_type", "bigint"),
    ("started_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("last_seen", "timestamptz"),
    ("start_seen", "boolean"),
    ("interim_interval", "integer"),
    ("input_octets", "bigint"),
    ("output_octets", "bigint"),
    ("input_wraps", "integer"),
    ("output_wraps", "integer"),
    ("session_time", "bigint"),
    ("counters_at", "timestamptz"),
    ("session_id_enc", "bytea"),
    ("user_name_enc", "bytea"),
    ("calling_station_id_enc", "bytea"),
    ("framed_ip_enc", "bytea"),
    ("framed_ipv6_enc", "bytea"),
    ("nas_ip_enc", "bytea"),
)
CLOSED_EXTRA: Final = (
    ("stopped_at", "timestamptz"),
    ("closed_at", "timestamptz"),
    ("close_reason", "text"),
    ("terminate_cause", "bigint"),
)
SEALED: Final = (
    "session_id",
    "user_name",
    "calling_station_id",
    "framed_ip",
    "framed_ipv6",
    "nas_ip",
)
_NAMES: Final = ", ".join(name for name, _ in COLUMNS)
_CLOSED_NAMES: Final = ", ".join(name for name, _ in COLUMNS + CLOSED_EXTRA)
# Loaded for state; sealed columns are written once and never read here.
_STATE: Final = ", ".join(name for name, _ in COLUMNS if not name.endswith("_enc"))

# Fixed advisory lock id, distinct from store/migrate.py's and store/partitions.py's.
APPLY_LOCK: Final = 0x1597_CA7E_0003
_SESSION_STATUSES: Final = frozenset({AcctStatus.START, AcctStatus.INTERIM_UPDATE, AcctStatus.STOP})
_NAS_WIDE: Final = frozenset({AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF})
# Same event time: Start before Interim before Stop.
_RANK: Final = {AcctStatus.START: 0, AcctStatus.INTERIM_UPDATE: 1, AcctStatus.STOP: 2}


def _unnest(columns: Sequence[tuple[str, str]], first: int = 1) -> str:
    return ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(columns, first))


_UPSERT_ACTIVE: Final = f"""
INSERT INTO sessions_active ({_NAMES})
SELECT * FROM unnest({_unnest(COLUMNS)})
ON CONFLICT (session_key) DO UPDATE SET
    updated_at = EXCLUDED.updated_at,
    last_seen = EXCLUDED.last_seen,
    start_seen = EXCLUDED.start_seen,
    started_at = EXCLUDED.started_at,
    input_octets = EXCLUDED.input_octets,
    output_octets = EXCLUDED.output_octets,
    input_wraps = EXCLUDED.input_wraps,
    output_wraps = EXCLUDED.output_wraps,
    session_time = EXCLUDED.session_time,
    counters_at = EXCLUDED.counters_at
"""
_INSERT_CLOSED: Final = f"""
INSERT INTO sessions_closed ({_CLOSED_NAMES})
SELECT * FROM unnest({_unnest(COLUMNS + CLOSED_EXTRA)})
"""
_MOVE_CLOSED: Final = f"""
WITH info AS (
    SELECT * FROM unnest($1::bytea[], $2::timestamptz[], $3::text[], $4::bigint[])
        AS t(key, stopped_at, close_reason, terminate_cause)
), moved AS (
    DELETE FROM sessions_active a USING info WHERE a.session_key = info.key
    RETURNING a.*, info.stopped_at, info.close_reason, info.terminate_cause
)
INSERT INTO sessions_closed ({_CLOSED_NAMES})
SELECT {_NAMES}, stopped_at, $5::timestamptz, close_reason, terminate_cause FROM moved
"""


def _move_to_closed(where: str, stopped_at: str, reason: str, cause: str) -> str:
    """One statement moving the active rows matching ``where`` to sessions_closed."""
    return (
        f"WITH moved AS (DELETE FROM sessions_active WHERE {where} RETURNING *)"
        f" INSERT INTO sessions_closed ({_CLOSED_NAMES})"
        f" SELECT {_NAMES}, {stopped_at}, $now_closed, {reason}, {cause} FROM moved"
    )


@dataclass(slots=True)
class _Session:
    """A session row in memory while a batch is applied."""

    id: uuid.UUID
    subscriber_id: int
    session_key: bytes
    nas_id: int
    session_blind: bytes | None
    port_blind: bytes | None
    framed_ip_blind: bytes | None
    framed_ipv6_blind: bytes | None
    nas_port_type: int | None
    started_at: datetime
    updated_at: datetime
    last_seen: datetime
    start_seen: bool
    interim_interval: int | None
    counters: Counters
    stored: bool  # already a row in sessions_active
    sealed: dict[str, bytes | None] = field(default_factory=dict)
    closed: tuple[datetime, CloseReason, int | None] | None = None
    changed: bool = False

    def row(self) -> tuple[Any, ...]:
        c = self.counters
        return (
            self.id,
            self.subscriber_id,
            self.session_key,
            self.nas_id,
            self.session_blind,
            self.port_blind,
            self.framed_ip_blind,
            self.framed_ipv6_blind,
            self.nas_port_type,
            self.started_at,
            self.updated_at,
            self.last_seen,
            self.start_seen,
            self.interim_interval,
            c.input_octets,
            c.output_octets,
            c.input_wraps,
            c.output_wraps,
            c.session_time,
            c.at,
            *(self.sealed.get(name) for name in SEALED),
        )


def _from_record(row: Any) -> _Session:
    return _Session(
        id=row["id"],
        subscriber_id=row["subscriber_id"],
        session_key=bytes(row["session_key"]),
        nas_id=row["nas_id"],
        session_blind=None if row["session_blind"] is None else bytes(row["session_blind"]),
        port_blind=None if row["port_blind"] is None else bytes(row["port_blind"]),
        framed_ip_blind=None if row["framed_ip_blind"] is None else bytes(row["framed_ip_blind"]),
        framed_ipv6_blind=None
        if row["framed_ipv6_blind"] is None
        else bytes(row["framed_ipv6_blind"]),
        nas_port_type=row["nas_port_type"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        last_seen=row["last_seen"],
        start_seen=row["start_seen"],
        interim_interval=row["interim_interval"],
        counters=Counters(
            input_octets=row["input_octets"],
            output_octets=row["output_octets"],
            input_wraps=row["input_wraps"],
            output_wraps=row["output_wraps"],
            session_time=row["session_time"],
            at=row["counters_at"],
        ),
        stored=True,
    )


@dataclass(slots=True)
class ApplyStats:
    """What one batch did to sessions: counts, for metrics and tests."""

    started: int = 0
    lost_starts: int = 0
    late: int = 0
    closed: int = 0
    superseded: int = 0
    nas_reboots: int = 0
    wraps: int = 0
    quota_events: int = 0


@dataclass(frozen=True, slots=True)
class Pending:
    """A queued accounting record, as the applier reads it back (nothing decrypted)."""

    id: uuid.UUID
    status: int
    nas_id: int
    subscriber_id: int
    received_at: datetime
    reading: Reading
    terminate_cause: int | None
    key: bytes | None
    session_blind: bytes | None
    port_blind: bytes | None
    framed_ip_blind: bytes | None
    framed_ipv6_blind: bytes | None
    nas_port_type: int | None
    has_cookie: bool
    sealed: dict[str, bytes | None]

    @property
    def event_time(self) -> datetime:
        return self.reading.event_time


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def pending_from_row(row: Any) -> Pending:
    return Pending(
        id=row["id"],
        status=row["status_type"],
        nas_id=row["nas_id"],
        subscriber_id=row["subscriber_id"],
        received_at=row["time"],
        reading=Reading(
            event_time=row["event_time"],
            input_octets=row["input_octets"],
            output_octets=row["output_octets"],
            session_time=row["session_time"],
            gigawords=row["gigawords"],
        ),
        terminate_cause=row["terminate_cause"],
        key=_bytes(row["session_key"]),
        session_blind=_bytes(row["session_blind"]),
        port_blind=_bytes(row["port_blind"]),
        framed_ip_blind=_bytes(row["framed_ip_blind"]),
        framed_ipv6_blind=_bytes(row["framed_ipv6_blind"]),
        nas_port_type=row["nas_port_type"],
        has_cookie=row["has_cookie"],
        sealed={name: _bytes(row[f"{name}_enc"]) for name in SEALED},
    )


# The record columns the applier reads, from the queue joined to acct_records.
CLAIM: Final = f"""
SELECT p.id AS pending_id, r.id, r.status_type, r.nas_id, r.subscriber_id, r.time, r.event_time,
       r.input_octets, r.output_octets, r.session_time, r.gigawords, r.terminate_cause,
       r.session_key, r.session_blind, r.port_blind, r.framed_ip_blind, r.framed_ipv6_blind,
       r.nas_port_type, r.has_cookie, {", ".join(f"r.{name}_enc" for name in SEALED)}
FROM acct_pending p
LEFT JOIN acct_records r
    ON r.subscriber_id = p.subscriber_id AND r.time = p.time AND r.id = p.id
ORDER BY p.time
LIMIT $1
FOR UPDATE OF p SKIP LOCKED
"""


class SessionTracker:
    """Applies stored accounting records to sessions_active/closed, usage and quota_events.

    ``late_window`` bounds how far back sessions_closed is searched for the
    session of a record that arrives after its Stop (a time range, so old
    partitions are pruned). Counters in ``stats`` add up over the tracker's life.
    """

    def __init__(
        self,
        index: BlindIndex,
        *,
        late_window: timedelta = timedelta(days=7),
        usage_events: bool = True,
    ) -> None:
        self._index = index
        self._late_window = late_window
        self._usage_events = usage_events
        self.stats = ApplyStats()

    async def apply(
        self,
        conn: Connection,
        records: Iterable[Pending],
        *,
        now: datetime,
    ) -> ApplyStats:
        """Apply queued ``records`` (each exactly once, in this transaction); return the counts."""
        stats = ApplyStats()
        session_records: list[Pending] = []
        nas_wide: list[Pending] = []
        for record in records:
            if record.status in _NAS_WIDE:
                nas_wide.append(record)
            elif record.status in _SESSION_STATUSES and record.key is not None:
                session_records.append(record)
        if not session_records and not nas_wide:
            return stats
        session_records.sort(key=_apply_order)

        keys = sorted({k.key for k in session_records if k.key is not None})
        # Appliers in several processes claim different records, but two
        # batches may hold records of one session not yet stored: they apply
        # one after the other. One lock per transaction (not one per session:
        # a batch of thousands would fill PostgreSQL's shared lock table).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", APPLY_LOCK)
        starts = [k for k in session_records if k.status == AcctStatus.START]
        start_blinds = [k.session_blind for k in starts]
        start_ports = [k.port_blind for k in starts if k.port_blind is not None]
        active: dict[bytes, _Session] = {}
        if keys or start_blinds:
            rows = await conn.fetch(
                f"SELECT {_STATE} FROM sessions_active"
                " WHERE session_key = ANY($1::bytea[]) OR session_blind = ANY($2::bytea[])"
                " OR port_blind = ANY($3::bytea[])"
                " ORDER BY session_key FOR UPDATE",
                keys,
                start_blinds,
                start_ports,
            )
            for row in rows:
                loaded = _from_record(row)
                active[loaded.session_key] = loaded
        closed_at: dict[bytes, datetime] = {}
        if keys:
            rows = await conn.fetch(
                "SELECT session_key, max(stopped_at) AS stopped_at FROM sessions_closed"
                " WHERE session_key = ANY($1::bytea[]) AND stopped_at >= $2"
                " GROUP BY session_key",
                keys,
                now - self._late_window,
            )
            closed_at = {bytes(r["session_key"]): r["stopped_at"] for r in rows}
        subscribers = {k.subscriber_id for k in session_records if k.subscriber_id != NO_SUBSCRIBER}
        terms = await plan_terms(conn, subscribers)

        by_session_blind: dict[bytes, _Session] = {}
        by_port: dict[bytes, _Session] = {}
        for loaded in active.values():
            if loaded.session_blind is not None:
                by_session_blind[loaded.session_blind] = loaded
            if loaded.port_blind is not None:
                by_port[loaded.port_blind] = loaded
        # (subscriber, UTC hour) -> [input, output, seconds, sessions started]
        usage: dict[tuple[int, datetime], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        retired: list[_Session] = []  # closed in this batch
        reservations: list[bytes] = []

        def close(session: _Session, at: datetime, reason: CloseReason, cause: int | None) -> None:
            session.closed = (at, reason, cause)
            active.pop(session.session_key, None)
            if by_session_blind.get(session.session_blind or b"") is session:
                del by_session_blind[session.session_blind or b""]
            if by_port.get(session.port_blind or b"") is session:
                del by_port[session.port_blind or b""]
            closed_at[session.session_key] = at
            retired.append(session)

        pending_reboots = sorted(nas_wide, key=lambda r: r.event_time, reverse=True)

        def reboot_until(when: datetime | None) -> None:
            # Accounting-On/Off up to ``when`` close the NAS's sessions that
            # began before them (the rows this batch did not load: below).
            while pending_reboots and (when is None or pending_reboots[-1].event_time <= when):
                reboot = pending_reboots.pop()
                for victim in list(active.values()):
                    if victim.nas_id == reboot.nas_id and victim.started_at <= reboot.event_time:
                        close(victim, reboot.event_time, CloseReason.NAS_REBOOT, NAS_REBOOT)
                        stats.nas_reboots += 1

        for record in session_records:
            assert record.key is not None
            reboot_until(record.event_time)
            session = active.get(record.key)
            status = AcctStatus(record.status)
            if session is None:
                previous_stop = closed_at.get(record.key)
                if previous_stop is not None and (
                    status != AcctStatus.START
                    or record.has_cookie
                    or record.event_time <= previous_stop
                ):
                    # After its Stop: a late Interim/Stop, or a replayed Start,
                    # never reopens the session. (A Start on a reused NAS
                    # session id after the Stop is a new session.)
                    stats.late += 1
                    continue
                if status == AcctStatus.START:
                    for older in (
                        by_session_blind.get(record.session_blind or b""),
                        by_port.get(record.port_blind or b""),
                    ):
                        # MikroTik and others: a new Start on a port or NAS
                        # session id means the older session ended unseen.
                        if older is not None and older.closed is None:
                            close(older, older.updated_at, CloseReason.SUPERSEDED, None)
                            stats.superseded += 1
                session = _new_session(record, record.key, terms)
                active[record.key] = session
                if session.session_blind is not None:
                    by_session_blind[session.session_blind] = session
                if session.port_blind is not None:
                    by_port[session.port_blind] = session
                if status == AcctStatus.START:
                    stats.started += 1
                else:
                    stats.lost_starts += 1
                if session.subscriber_id != NO_SUBSCRIBER:
                    usage[(session.subscriber_id, hour_of(session.started_at))][3] += 1
            elif status == AcctStatus.START and not session.start_seen:
                session.start_seen = True
                session.started_at = min(session.started_at, record.event_time)
                session.changed = True
            if record.has_cookie and status == AcctStatus.START:
                reservations.append(record.key)
            before = session.counters
            after, delta = advance(before, record.reading)
            stats.wraps += (after.input_wraps - before.input_wraps) + (
                after.output_wraps - before.output_wraps
            )
            session.counters = after
            session.updated_at = max(session.updated_at, record.event_time)
            session.last_seen = max(session.last_seen, record.received_at)
            session.changed = True
            if delta and session.subscriber_id != NO_SUBSCRIBER:
                bucket = usage[(session.subscriber_id, hour_of(record.event_time))]
                bucket[0] += delta.input_octets
                bucket[1] += delta.output_octets
                bucket[2] += delta.session_time
            if status == AcctStatus.STOP:
                close(session, record.event_time, CloseReason.STOP, record.terminate_cause)
                stats.closed += 1
        reboot_until(None)

        await self._write(conn, active.values(), retired, now)
        if reservations:
            await conn.execute(
                "DELETE FROM session_reservations WHERE session_key = ANY($1::bytea[])",
                reservations,
            )
        for reboot in nas_wide:
            # Sessions of the NAS not touched by this batch.
            moved = await conn.execute(
                _move_to_closed(
                    "nas_id = $1 AND started_at <= $2", "$2", "'nas_reboot'", str(NAS_REBOOT)
                ).replace("$now_closed", "$3"),
                reboot.nas_id,
                reboot.event_time,
                now,
            )
            stats.nas_reboots += rows_affected(moved)
        stats.quota_events = await add_usage(
            conn, usage, terms, now, usage_events=self._usage_events
        )
        self._add(stats)
        return stats

    def _add(self, stats: ApplyStats) -> None:
        total = self.stats
        for name in ApplyStats.__dataclass_fields__:
            setattr(total, name, getattr(total, name) + getattr(stats, name))

    async def _write(
        self, conn: Connection, active: Iterable[_Session], retired: list[_Session], now: datetime
    ) -> None:
        # Stored rows keep their sealed columns: their new counters are
        # written in place, and the closed ones then move in the database.
        moving = [s for s in retired if s.stored]
        changed = [s for s in active if s.changed] + moving
        if changed:
            await conn.execute(
                _UPSERT_ACTIVE, *as_columns([s.row() for s in changed], len(COLUMNS))
            )
        if moving:
            closes = [s.closed for s in moving]
            assert all(c is not None for c in closes)
            await conn.execute(
                _MOVE_CLOSED,
                [s.session_key for s in moving],
                [c[0] for c in closes if c is not None],
                [c[1].value for c in closes if c is not None],
                [c[2] for c in closes if c is not None],
                now,
            )
        fresh = [s for s in retired if not s.stored]
        if fresh:
            rows = []
            for s in fresh:
                assert s.closed is not None
                at, reason, cause = s.closed
                rows.append((*s.row(), at, now, reason.value, cause))
            await conn.execute(_INSERT_CLOSED, *as_columns(rows, len(COLUMNS) + len(CLOSED_EXTRA)))


def _new_session(record: Pending, key: bytes, terms: dict[int, PlanTerms]) -> _Session:
    """A session first seen in ``record``: its id and sealed columns are the record's."""
    plan = terms.get(record.subscriber_id)
    start = record.status == AcctStatus.START
    return _Session(
        id=record.id,
        subscriber_id=record.subscriber_id,
        session_key=key,
        nas_id=record.nas_id,
        session_blind=record.session_blind,
        port_blind=record.port_blind,
        framed_ip_blind=record.framed_ip_blind,
        framed_ipv6_blind=record.framed_ipv6_blind,
        nas_port_type=record.nas_port_type,
        started_at=record.event_time if start else started_at(record.reading),
        updated_at=record.event_time,
        last_seen=record.received_at,
        start_seen=start,
        interim_interval=None if plan is None else plan.interim_interval,
        counters=Counters(),
        stored=False,
        sealed=dict(record.sealed),
    )


def _apply_order(record: Pending) -> tuple[datetime, int]:
    return record.event_time, _RANK[AcctStatus(record.status)]


async def close_stale(pool: Pool, *, now: datetime, grace: int, default_interval: int) -> int:
    """Close sessions with no record for 2 x interim interval + ``grace`` seconds; return how many.

    Closed as ``stale`` at their last event time, never deleted: the usage
    they reported stays, and a record that arrives later is a late one.
    """
    where = (
        "last_seen < $1::timestamptz - make_interval(secs =>"
        " 2 * coalesce(interim_interval, $2::integer) + $3::integer)"
    )
    async with acquire(pool, timeout=30.0) as conn:
        status = await conn.execute(
            _move_to_closed(where, "updated_at", "'stale'", "NULL").replace("$now_closed", "$1"),
            now,
            default_interval,
            grace,
        )
    return rows_affected(status)
