"""The personal-data lifecycle: erasure of deactivated subscribers, and row retention.

DESIGN.md section 2: data is kept while the subscriber is active; after
deactivation and a grace period the subscriber is erased by crypto-shredding.
What an erasure keeps, and nothing else:

- ``erased_subscribers``: id, account_ref (the billing system's own key for
  the customer), deactivated_at, erased_at;
- ``usage``: per-period byte and second totals, keyed by the id only;
- ``sessions_closed``: times, NAS, counters, close reason and terminate
  cause, with every sealed column and blind index nulled and the session key
  replaced by a digest of the row id (so nothing computed from a user name,
  session id, port or address is left);
- ``audit_log``: rows name the id only (never personal values).

Everything else tied to the subscriber by id is deleted, and the subscribers
row with its wrapped data key goes: ciphertext under that key anywhere (a missed
row, a backup) cannot be opened once the key is gone. A backup still holds
the wrapped key itself until the KEK version that wrapped it is retired
(``keys retire``): that is what makes backups unreadable too. Rows that name
no subscriber (unknown-user rejects, accounting that matched nobody) are
sealed under epoch keys and go with those keys' destruction.

Imports store (db, subscribers, keyring); never server or cli. Time is
passed in (``now=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire, rows_affected
from ispcare_radius.store.keyring import DataKeyCache
from ispcare_radius.store.subscribers import audit, notify_changed

_log = get_logger(__name__)

ERASURE_ACTOR: Final = "system:erasure"
DEFAULT_GRACE_DAYS: Final = 30

# The grace counts from the later of deactivated_at and updated_at: every
# writer of subscribers sets updated_at (migration 0003), so a deactivation
# written by another system without deactivated_at, or any later change,
# restarts it. Never earlier than the deactivation, so never too early.
_DUE: Final = """
status = 'deactivated' AND GREATEST(deactivated_at, updated_at) <= $1
"""
# Held subscribers are listed apart, so that many of them never crowd the
# others out of a run's limit.
_CANDIDATES: Final = f"""
SELECT id FROM subscribers WHERE {_DUE} AND legal_hold = $3 ORDER BY id LIMIT $2
"""
# Rechecked under the row lock: a reactivation or a hold set meanwhile wins.
_LOCK_DUE: Final = f"""
SELECT id, account_ref, deactivated_at FROM subscribers
 WHERE id = $2 AND NOT legal_hold AND {_DUE}
 FOR UPDATE
"""

# Deleted outright, in this order. Queued accounting records go first: the
# delete waits for a session applier holding them (FOR UPDATE), so whatever
# it wrote for them has committed before the session tables below are read.
# New records cannot arrive meanwhile: writers lock the subscribers row FOR
# KEY SHARE (keyring.live_subscriber_ciphers), which the erasure holds FOR
# UPDATE. devices would also go with the subscribers row (ON DELETE CASCADE).
# acct_record_keys are only resend detectors: a resend arriving after the
# erasure is stored again, unattributed, under the epoch key.
DELETED_TABLES: Final = (
    "acct_pending",
    "acct_records",
    "acct_record_keys",
    "auth_events",
    "sessions_active",
    "session_reservations",
    "disconnect_requests",
    "quota_events",
    "devices",
    "subscriber_lookup",
)
# Tables other parts add later; deleted when present (subscriber_id column).
OPTIONAL_DELETED_TABLES: Final = ("flags", "usage_hourly", "feed_outbox")

# Every value computed from a personal one goes; the counters stay.
_STRIP_CLOSED: Final = """
UPDATE sessions_closed SET
    session_key = sha256(uuid_send(id)),
    session_blind = NULL, port_blind = NULL,
    framed_ip_blind = NULL, framed_ipv6_blind = NULL,
    session_id_enc = NULL, user_name_enc = NULL, calling_station_id_enc = NULL,
    framed_ip_enc = NULL, framed_ipv6_enc = NULL, nas_ip_enc = NULL
WHERE subscriber_id = $1
"""
KEPT: Final = ("usage", "sessions_closed counters", "erased_subscribers", "audit_log")


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """One run of the erasure job: who was (or, on a dry run, would be) erased."""

    erased: tuple[int, ...]
    # Due by the grace period but under a legal hold.
    held: tuple[int, ...]
    dry_run: bool = False
    # Per erased subscriber: table -> rows deleted or stripped.
    rows: dict[int, dict[str, int]] = field(default_factory=dict)


def _utc(now: datetime) -> datetime:
    return (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)


async def _existing(conn: Connection, tables: Sequence[str]) -> list[str]:
    """The ``tables`` that exist and have a subscriber_id column."""
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND column_name = 'subscriber_id'"
        " AND table_name = ANY($1::text[])",
        list(tables),
    )
    found = {str(r["table_name"]) for r in rows}
    return [t for t in tables if t in found]


async def erase_rows(conn: Connection, subscriber_id: int) -> dict[str, int]:
    """Delete or strip every row of ``subscriber_id`` but the subscribers row.

    Call inside a transaction that holds the subscribers row FOR UPDATE (see
    ``DELETED_TABLES`` for why). Returns table -> rows affected.
    """
    affected: dict[str, int] = {}
    for table in (*DELETED_TABLES, *await _existing(conn, OPTIONAL_DELETED_TABLES)):
        # Table names come from the constants above, never from input. Usage
        # and quota events for billing (no personal values: ids and counters)
        # stay in the outbox until delivered and pruned, so erasure cannot
        # cost billing the subscriber's last usage.
        keep = " AND topic NOT IN ('usage', 'quota')" if table == "feed_outbox" else ""
        status = await conn.execute(
            f"DELETE FROM {table} WHERE subscriber_id = $1{keep}", subscriber_id
        )
        affected[table] = rows_affected(status)
    affected["sessions_closed"] = rows_affected(await conn.execute(_STRIP_CLOSED, subscriber_id))
    return affected


async def _erase_one(
    conn: Connection, subscriber_id: int, *, cutoff: datetime, now: datetime, actor: str
) -> dict[str, int] | None:
    """Erase one due subscriber in one transaction; None if no longer due."""
    async with conn.transaction():
        row = await conn.fetchrow(_LOCK_DUE, cutoff, subscriber_id)
        if row is None:
            return None
        affected = await erase_rows(conn, subscriber_id)
        await conn.execute(
            "INSERT INTO erased_subscribers (subscriber_id, account_ref, deactivated_at,"
            " erased_at) VALUES ($1, $2, $3, $4)",
            subscriber_id,
            row["account_ref"],
            row["deactivated_at"],
            now,
        )
        # The wrapped data key goes with the row: crypto-shredding.
        await conn.execute("DELETE FROM subscribers WHERE id = $1", subscriber_id)
        deactivated = row["deactivated_at"]
        detail = {
            "deactivated_at": None if deactivated is None else deactivated.isoformat(),
            "rows": affected,
            "kept": list(KEPT),
        }
        await audit(conn, actor, "subscriber.erase", subscriber_id, detail)
        await notify_changed(conn, subscriber_id)
    return affected


async def erase_due(
    pool: Pool,
    data_keys: DataKeyCache,
    *,
    now: datetime,
    grace_days: int = DEFAULT_GRACE_DAYS,
    dry_run: bool = False,
    actor: str = ERASURE_ACTOR,
    limit: int = 1000,
) -> ErasureReport:
    """Erase subscribers deactivated at least ``grace_days`` ago and not under legal hold.

    One transaction per subscriber, each rechecking under the row lock, so
    a concurrent reactivation or legal hold wins and a failure leaves the
    others done. At most ``limit`` candidates per call (a daily job catches
    up over runs). With ``dry_run`` nothing changes; the report says who
    would go. Logs counts and ids only.
    """
    if grace_days < 0:
        raise ValueError("erasure grace must not be negative")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    moment = _utc(now)
    cutoff = moment - timedelta(days=grace_days)
    async with acquire(pool, timeout=30.0) as conn:
        due = [int(r["id"]) for r in await conn.fetch(_CANDIDATES, cutoff, limit, False)]
        held = tuple(int(r["id"]) for r in await conn.fetch(_CANDIDATES, cutoff, limit, True))
        if dry_run:
            return ErasureReport(erased=tuple(due), held=held, dry_run=True)
        erased: list[int] = []
        rows: dict[int, dict[str, int]] = {}
        for sid in due:
            affected = await _erase_one(conn, sid, cutoff=cutoff, now=moment, actor=actor)
            if affected is None:
                continue
            # This process's copy of the key; other processes drop theirs on
            # the change hint, and no writer can use it (row gone).
            data_keys.discard(sid)
            erased.append(sid)
            rows[sid] = affected
    if erased or held:
        _log.info("subscribers_erased", erased=len(erased), held=len(held))
    return ErasureReport(erased=tuple(erased), held=held, rows=rows)


# -- retention of tables that are not partitioned by day ----------------------

ROW_RETENTION_COLUMNS: Final = {"flags": "time", "audit_log": "time"}


async def _leaves(conn: Connection, table: str) -> list[str]:
    """The tables holding ``table``'s rows: its leaf partitions, or itself."""
    rows = await conn.fetch(
        "SELECT relid::regclass::text AS name FROM pg_partition_tree($1::regclass)"
        " WHERE isleaf ORDER BY 1",
        table,
    )
    return [str(r["name"]) for r in rows] or [table]


async def delete_before(pool: Pool, table: str, *, before: datetime, batch_size: int = 5000) -> int:
    """Delete the rows of ``table`` older than ``before``, in batches; 0 if there is no table.

    Small transactions of ``batch_size`` rows (found by ctid in each leaf
    table) keep locks short and WAL bursts small on a table that is not
    partitioned by day. Returns the rows deleted.
    """
    column = ROW_RETENTION_COLUMNS.get(table)
    if column is None:
        raise ValueError(f"no row retention for table: {table}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = _utc(before)
    total = 0
    async with acquire(pool, timeout=30.0) as conn:
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            return 0  # not created yet (another part of the schema adds it)
        for leaf in await _leaves(conn, table):
            while True:
                status = await conn.execute(
                    f"DELETE FROM {leaf} WHERE ctid = ANY(ARRAY("
                    f"SELECT ctid FROM {leaf} WHERE {column} < $1 LIMIT $2))",
                    cutoff,
                    batch_size,
                )
                deleted = rows_affected(status)
                total += deleted
                if deleted < batch_size:
                    break
    return total


async def apply_row_retention(
    pool: Pool,
    *,
    now: datetime,
    flags_days: int = 365,
    audit_log_days: int = 730,
    batch_size: int = 5000,
) -> dict[str, int]:
    """Delete flags and audit rows older than their retention; table -> rows deleted.

    The audit log is kept longest by default (two years): it is the proof
    that exports, erasures and key changes happened as the policy says.
    """
    if min(flags_days, audit_log_days) < 1:
        raise ValueError("retention must be at least one day")
    moment = _utc(now)
    return {
        "flags": await delete_before(
            pool, "flags", before=moment - timedelta(days=flags_days), batch_size=batch_size
        ),
        "audit_log": await delete_before(
            pool,
            "audit_log",
            before=moment - timedelta(days=audit_log_days),
            batch_size=batch_size,
        ),
    }
