"""KEK rotation, data-key re-encryption and epoch re-encryption.

Imports privacy and store; never server or cli. DESIGN.md section 5: a KEK
rotation re-wraps every wrapped key under the primary master key (the data
stays as it is); a data-key re-encryption gives each subscriber a new data
key and re-seals every value sealed with the old one, in every table. Both
commit as they go (a re-wrap batch, one re-encrypted subscriber) and pick up
where a stopped run left off; the server keeps serving meanwhile.

The tables those values live in, and re-sealing one of them, are
store/sealed_tables.py's; key status and KEK retirement checks are
store/key_status.py's. cli/keys.py and the tests reach both through this
module, so ``__all__`` names them here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from ispcare_radius.privacy.crypto import DecryptError, unwrap_payload, wrap_payload
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store import fields
from ispcare_radius.store.db import Connection, Pool, acquire, rows_affected
from ispcare_radius.store.events import UNKNOWN_TABLE, event_aad
from ispcare_radius.store.key_status import audit_retire, kek_usage, key_status, wrapped_kek_version
from ispcare_radius.store.keyring import (
    EpochCipher,
    epoch_key_purpose,
    new_wrapped_data_key,
    subscriber_key_purpose,
    unwrap_data_key,
)
from ispcare_radius.store.sealed_tables import (
    OTHER_SEALED,
    PAGE_ROWS,
    SUBSCRIBER_TABLES,
    SealedTable,
    reseal,
    reseal_table,
    table_exists,
)
from ispcare_radius.store.subscribers import audit, notify_changed

_log = get_logger(__name__)

Progress = Callable[[int], None]

# A re-encryption waits at most this long for a row another transaction
# holds (an accounting batch, the session applier), then leaves the
# subscriber for a later pass instead of stalling behind it.
_LOCK_TIMEOUT: Final = "2s"


def _no_progress(_: int) -> None:
    return None


# --- KEK rotation: re-wrap ----------------------------------------------------


@dataclass(slots=True)
class RewrapReport:
    """What one re-wrap pass did; ``remaining`` wrapped keys still not under the primary."""

    primary: int
    system_keys: int = 0
    epoch_keys: int = 0
    subscribers: int = 0
    failed: list[int] = field(default_factory=list)
    remaining: int = 0


def _rewrap(masters: MasterKeys, wrapped: bytes, purpose: str) -> bytes:
    """``wrapped`` under the primary master key, its payload unchanged."""
    return wrap_payload(masters, unwrap_payload(masters, wrapped, purpose=purpose), purpose=purpose)


async def _rewrap_small_tables(conn: Connection, masters: MasterKeys) -> tuple[int, int]:
    primary = masters.primary_version
    async with conn.transaction():
        done_system = 0
        rows = await conn.fetch(
            "SELECT name, version, wrapped FROM system_keys WHERE kek_version <> $1 FOR UPDATE",
            primary,
        )
        for row in rows:
            wrapped = _rewrap(masters, bytes(row["wrapped"]), f"system:{row['name']}")
            await conn.execute(
                "UPDATE system_keys SET wrapped = $3 WHERE name = $1 AND version = $2",
                row["name"],
                row["version"],
                wrapped,
            )
            done_system += 1
        rows = await conn.fetch(
            "SELECT version, period, wrapped FROM epoch_keys WHERE kek_version <> $1 FOR UPDATE",
            primary,
        )
        for row in rows:
            purpose = epoch_key_purpose(str(row["period"]))
            wrapped = _rewrap(masters, bytes(row["wrapped"]), purpose)
            await conn.execute(
                "UPDATE epoch_keys SET wrapped = $2 WHERE version = $1", row["version"], wrapped
            )
        return done_system, len(rows)


async def rewrap_all(
    pool: Pool,
    masters: MasterKeys,
    *,
    batch_size: int = 1000,
    progress: Progress = _no_progress,
    actor: str = "system",
) -> RewrapReport:
    """Re-wrap every system, epoch and subscriber data key not yet under the primary
    master key, the subscribers in batches of ``batch_size`` (one commit each).

    The data keys themselves do not change, so values stay as they are and a
    server holding the old wrapping keeps sealing correctly. Rows are taken
    ``FOR NO KEY UPDATE SKIP LOCKED``: writers' ``FOR KEY SHARE`` does not
    wait, and two runs share the work. Stopped at any point, the next run
    carries on with the rows still under an older version. A key that will
    not unwrap is left as it is and reported (``failed``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    primary = masters.primary_version
    report = RewrapReport(primary=primary)
    async with acquire(pool) as conn:
        report.system_keys, report.epoch_keys = await _rewrap_small_tables(conn, masters)
        await audit(
            conn, actor, "keys.rotate_start", None, {"primary": primary, "batch": batch_size}
        )
        after = 0
        failed: set[int] = set()
        while True:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT id, wrapped_key FROM subscribers WHERE kek_version <> $1 AND id > $2"
                    " ORDER BY id LIMIT $3 FOR NO KEY UPDATE SKIP LOCKED",
                    primary,
                    after,
                    batch_size,
                )
                if not rows:
                    break
                after = int(rows[-1]["id"])
                ids: list[int] = []
                blobs: list[bytes] = []
                for row in rows:
                    sid = int(row["id"])
                    try:
                        blobs.append(
                            _rewrap(masters, bytes(row["wrapped_key"]), subscriber_key_purpose(sid))
                        )
                    except DecryptError as exc:
                        _log.error("rewrap_failed", subscriber_id=sid, reason=exc.reason.value)
                        failed.add(sid)
                        continue
                    ids.append(sid)
                # updated_at stays: no value changed, caches need not reload.
                await conn.execute(
                    "UPDATE subscribers s SET wrapped_key = v.wrapped, kek_version = $3"
                    " FROM unnest($1::bigint[], $2::bytea[]) AS v(id, wrapped) WHERE s.id = v.id",
                    ids,
                    blobs,
                    primary,
                )
            report.subscribers += len(ids)
            progress(len(ids))
        report.failed = sorted(failed)
        report.remaining = int(
            await conn.fetchval(
                "SELECT (SELECT count(*) FROM subscribers WHERE kek_version <> $1)"
                " + (SELECT count(*) FROM system_keys WHERE kek_version <> $1)"
                " + (SELECT count(*) FROM epoch_keys WHERE kek_version <> $1)",
                primary,
            )
        )
        await audit(
            conn,
            actor,
            "keys.rotate",
            None,
            {
                "primary": primary,
                "subscribers": report.subscribers,
                "system_keys": report.system_keys,
                "epoch_keys": report.epoch_keys,
                "failed": len(report.failed),
                "remaining": report.remaining,
            },
        )
    return report


async def unfinished_rotation(pool: Pool, primary: int) -> int:
    """How many wrapped keys in the database are not under ``primary``."""
    async with acquire(pool) as conn:
        return int(
            await conn.fetchval(
                "SELECT (SELECT count(*) FROM subscribers WHERE kek_version <> $1)"
                " + (SELECT count(*) FROM system_keys WHERE kek_version <> $1)"
                " + (SELECT count(*) FROM epoch_keys WHERE kek_version <> $1)",
                primary,
            )
        )


# --- data-key re-encryption ---------------------------------------------------


@dataclass(slots=True)
class ReencryptReport:
    """One re-encryption run: subscribers given a new key, values re-sealed,
    subscribers left for a later run (locked, or a value that would not open)."""

    subscribers: int = 0
    values: int = 0
    skipped: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    pending: int = 0


async def start_reencrypt(
    pool: Pool, *, subscriber_ids: Sequence[int] | None = None, actor: str = "system"
) -> tuple[int, bool]:
    """Mark subscribers for a new data key; (pending count, whether a run was resumed).

    With rows still marked from a run that stopped, the run is resumed: only
    ``subscriber_ids``, if given, are marked besides (an operator naming a
    subscriber expects that one done, whatever else is pending). Otherwise
    every subscriber (or ``subscriber_ids``) is marked. Subscribers added
    later get a fresh key anyway.
    """
    async with acquire(pool) as conn, conn.transaction():
        pending = int(
            await conn.fetchval("SELECT count(*) FROM subscribers WHERE reencrypt_pending")
        )
        if pending:
            if subscriber_ids:
                status = await conn.execute(
                    "UPDATE subscribers SET reencrypt_pending = true"
                    " WHERE id = ANY($1::bigint[]) AND NOT reencrypt_pending",
                    list(subscriber_ids),
                )
                added = rows_affected(status)
                if added:
                    await audit(
                        conn,
                        actor,
                        "keys.reencrypt_start",
                        None,
                        {"subscribers": added, "resumed": pending},
                    )
                pending += added
            return pending, True
        if subscriber_ids is None:
            status = await conn.execute(
                "UPDATE subscribers SET reencrypt_pending = true WHERE NOT reencrypt_pending"
            )
        else:
            status = await conn.execute(
                "UPDATE subscribers SET reencrypt_pending = true WHERE id = ANY($1::bigint[])",
                list(subscriber_ids),
            )
        marked = rows_affected(status)
        await audit(conn, actor, "keys.reencrypt_start", None, {"subscribers": marked})
        return marked, False


async def _reencrypt_one(
    conn: Connection,
    masters: MasterKeys,
    row: Any,
    tables: Sequence[SealedTable],
    *,
    chunk_rows: int = PAGE_ROWS,
) -> int:
    """Give one locked subscriber row a new data key and re-seal all their values.

    Runs inside the caller's transaction: the new wrapped key and every value
    re-sealed with it commit together, or none does.
    """
    sid = int(row["id"])
    old = unwrap_data_key(masters, sid, bytes(row["wrapped_key"]))
    wrapped, new = new_wrapped_data_key(masters, sid, int(row["data_key_version"]) + 1)
    # Queued records first, as erasure does: the session applier holds them
    # while it copies their ciphertexts into sessions, so once they are ours
    # every copy made from an old ciphertext is committed and re-sealed below.
    await conn.execute("SELECT 1 FROM acct_pending WHERE subscriber_id = $1 FOR UPDATE", sid)
    count = 0
    for spec in tables:
        count += await reseal_table(conn, spec, sid, old, new, chunk_rows=chunk_rows)
    enc = [f"{c.value}_enc" for c in fields.Column]
    values = [
        reseal(old, new, row[name], fields.aad(column, sid))
        for name, column in zip(enc, fields.Column, strict=True)
    ]
    count += sum(v is not None for v in values)
    sets = ", ".join(f"{name} = ${i + 5}" for i, name in enumerate(enc))
    await conn.execute(
        f"UPDATE subscribers SET wrapped_key = $2, kek_version = $3, data_key_version = $4,"
        # updated_at wakes the subscriber caches; a deactivated subscriber's
        # stays, since it starts the erasure grace period (store/lifecycle.py).
        f" {sets}, reencrypt_pending = false,"
        " updated_at = CASE WHEN status = 'deactivated' THEN updated_at ELSE now() END"
        " WHERE id = $1",
        sid,
        wrapped,
        masters.primary_version,
        new.version,
        *values,
    )
    await notify_changed(conn, sid)
    return count


async def reencrypt_pending(
    pool: Pool,
    masters: MasterKeys,
    *,
    batch_size: int = 20,
    limit: int | None = None,
    progress: Progress = _no_progress,
    actor: str = "system",
    chunk_rows: int = PAGE_ROWS,
) -> ReencryptReport:
    """Re-encrypt the subscribers marked by ``start_reencrypt``, one subscriber per
    transaction, at most ``limit`` of them (None: all); see the module docstring.

    Each subscriber row is locked ``FOR UPDATE``: accounting, auth-event and
    flag writers lock it ``FOR KEY SHARE`` (keyring.live_subscriber_ciphers)
    and operator changes ``FOR UPDATE``, so a write either commits before the
    re-encryption reads the rows (and is re-sealed) or waits and then seals
    with the new key. Committing after every subscriber keeps that wait to
    one subscriber's rows: an accounting batch replies only after its commit,
    and a lock held across many subscribers would make the NAS time out.
    Each table's rows are read ``chunk_rows`` at a time. A subscriber whose
    rows another transaction holds past the lock timeout, or with a value
    that will not open, stays marked and is reported; the next run retries it.

    ``batch_size`` only sets how many subscribers go to one ``progress`` call.
    """
    if batch_size < 1 or chunk_rows < 1:
        raise ValueError("batch_size and chunk_rows must be positive")
    report = ReencryptReport()
    enc = ", ".join(f"{c.value}_enc" for c in fields.Column)
    async with acquire(pool) as conn:
        tables = [t for t in SUBSCRIBER_TABLES if await table_exists(conn, t.table)]
        # Ids at or below ``after`` were tried in this run: a subscriber left
        # marked (skipped, failed) waits for the next run instead of looping.
        after = 0
        skipped: set[int] = set()
        failed: set[int] = set()
        unreported = 0
        while limit is None or report.subscribers < limit:
            async with conn.transaction():
                row = await conn.fetchrow(
                    f"SELECT id, wrapped_key, data_key_version, {enc} FROM subscribers"
                    " WHERE reencrypt_pending AND id > $1 ORDER BY id LIMIT 1"
                    " FOR UPDATE SKIP LOCKED",
                    after,
                )
                if row is None:
                    break
                sid = after = int(row["id"])
                await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
                try:
                    async with conn.transaction():  # savepoint: the row lock stays on failure
                        values = await _reencrypt_one(
                            conn, masters, row, tables, chunk_rows=chunk_rows
                        )
                except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
                    skipped.add(sid)
                    continue
                except DecryptError as exc:
                    _log.error("reencrypt_failed", subscriber_id=sid, reason=exc.reason.value)
                    failed.add(sid)
                    continue
            report.values += values
            report.subscribers += 1
            unreported += 1
            if unreported >= batch_size:
                progress(unreported)
                unreported = 0
        if unreported:
            progress(unreported)
        report.skipped = sorted(skipped)
        report.failed = sorted(failed)
        report.pending = int(
            await conn.fetchval("SELECT count(*) FROM subscribers WHERE reencrypt_pending")
        )
        await audit(
            conn,
            actor,
            "keys.reencrypt",
            None,
            {
                "subscribers": report.subscribers,
                "values": report.values,
                "skipped": len(report.skipped),
                "failed": len(report.failed),
                "pending": report.pending,
            },
        )
    return report


# --- epoch re-encryption --------------------------------------------------------

# Epoch-sealed rows: (table spec, the rows that hold epoch data). The aad gets
# subscriber id 0; auth_rejects_unknown binds None, as its writer does.
EPOCH_TABLES: Final[tuple[tuple[SealedTable, str], ...]] = (
    (
        SealedTable(
            UNKNOWN_TABLE,
            (("time", "timestamptz"), ("id", "uuid")),
            ("user_name", "calling_station_id", "nas_ip"),
            lambda r, c, _: event_aad(UNKNOWN_TABLE, c, r["id"], None),
        ),
        "true",
    ),
    *((spec, "subscriber_id = 0") for spec in SUBSCRIBER_TABLES if spec.table != "devices"),
)


@dataclass(slots=True)
class EpochReencryptReport:
    """Values moved to the current epoch key, and those whose key is gone."""

    version: int
    values: int = 0
    unreadable: int = 0


async def reencrypt_epoch_data(
    pool: Pool,
    epoch: EpochCipher,
    *,
    batch_size: int = 1000,
    progress: Progress = _no_progress,
    actor: str = "system",
) -> EpochReencryptReport:
    """Re-seal epoch-sealed values of older epoch versions under the current one
    (after an epoch key is suspected known), in batches that commit one by one.

    What moves to the current key lives as long as that key now: destroying
    an older key no longer shreds it; row retention still deletes it. Values
    whose key is already destroyed stay as they are (counted ``unreadable``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    current = epoch.version
    header = b"\x01" + current.to_bytes(4, "big")
    report = EpochReencryptReport(version=current)
    async with acquire(pool) as conn:
        for spec, where in EPOCH_TABLES:
            if not await table_exists(conn, spec.table):
                continue
            names = [k for k, _ in spec.keys]
            wanted = list(dict.fromkeys([*names, *spec.select]))
            enc = [f"{c}_enc" for c in spec.columns]
            stale = " OR ".join(f"substring({c} FROM 1 FOR 5) <> $1" for c in enc)
            after: tuple[Any, ...] | None = None
            while True:
                marks = ", ".join(f"${i + 3}" for i in range(len(names)))
                cursor = "" if after is None else f" AND ({', '.join(names)}) > ({marks})"
                async with conn.transaction():
                    rows = await conn.fetch(
                        f"SELECT {', '.join(wanted + enc)} FROM {spec.table}"
                        f" WHERE {where} AND ({stale}){cursor}"
                        f" ORDER BY {', '.join(names)} LIMIT $2 FOR UPDATE SKIP LOCKED",
                        header,
                        batch_size,
                        *(after or ()),
                    )
                    if not rows:
                        break
                    after = tuple(rows[-1][k] for k in names)
                    moved = 0
                    for row in rows:
                        sets: dict[str, bytes] = {}
                        for column, name in zip(spec.columns, enc, strict=True):
                            blob = row[name]
                            if blob is None or bytes(blob[:5]) == header:
                                continue
                            aad = spec.aad(row, column, 0)
                            try:
                                sets[name] = epoch.seal(epoch.open(bytes(blob), aad), aad)
                            except DecryptError:
                                report.unreadable += 1
                        if not sets:
                            continue
                        assign = ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(sets))
                        match = " AND ".join(
                            f"{k} = ${i + 1 + len(sets)}" for i, k in enumerate(names)
                        )
                        await conn.execute(
                            f"UPDATE {spec.table} SET {assign} WHERE {where} AND {match}",
                            *sets.values(),
                            *(row[k] for k in names),
                        )
                        moved += len(sets)
                report.values += moved
                progress(moved)
        await audit(
            conn,
            actor,
            "keys.reencrypt_epoch",
            None,
            {"version": current, "values": report.values, "unreadable": report.unreadable},
        )
    return report


__all__ = [
    "EPOCH_TABLES",
    "OTHER_SEALED",
    "SUBSCRIBER_TABLES",
    "EpochReencryptReport",
    "Progress",
    "ReencryptReport",
    "RewrapReport",
    "audit_retire",
    "kek_usage",
    "key_status",
    "reencrypt_epoch_data",
    "reencrypt_pending",
    "rewrap_all",
    "start_reencrypt",
    "unfinished_rotation",
    "wrapped_kek_version",
]
