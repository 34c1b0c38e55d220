"""Suspicious-login flags: the batched writer the detector emits to, the restart
rebuild, and the operator's queries (list, show, acknowledge, explain).

Implements ``detect.state.FlagSink``. Evidence is sealed before it leaves the
process: with the subscriber's data key for flags about an account (erasing
the subscriber shreds it), else with the epoch key. Imports aaa, detect,
privacy and store; never server or cli.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.detect.login import Flag, Signal
from ispcare_radius.detect.settings import Action
from ispcare_radius.detect.state import Detector, Keyer
from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.privacy.crypto import DecryptError, FieldCipher, field_aad
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.keyring import DataKeyCache, live_subscriber_ciphers
from ispcare_radius.store.subscribers import audit

_log = get_logger(__name__)

TABLE: Final = "flags"
OUTBOX_TOPIC: Final = "flag.raised"
_REBUILD_CHUNK: Final = 5000


def detect_keyer(blind: BlindIndex) -> Keyer:
    """The detector's keyed digests: keyed BLAKE2b under a key derived from the
    long-lived blind-index key.

    Stable across restarts (stored signals replay onto the same subjects) and
    unrelated to the lookup indexes, so a detection key never equals a
    ``subscriber_lookup`` entry. BLAKE2b in keyed mode is a PRF in one C
    call, about a third of an HMAC-SHA256 from Python: it runs three times
    per Access-Request. The domain (account, source, mac, password) is the
    personalisation string.
    """
    key = blind.full(b"ispcare-radius/detect-key/v1")
    # One keyed state per domain, copied for each value: the same digest as a
    # fresh ``blake2b(value, key=key, person=domain)``, without the set-up.
    keyed = {
        d: hashlib.blake2b(key=key, digest_size=16, person=d.encode("ascii"))
        for d in ("account", "source", "mac", "password")
    }

    def digest(domain: str, value: bytes) -> bytes:
        state = keyed.get(domain)
        if state is None:
            state = hashlib.blake2b(key=key, digest_size=16, person=domain.encode("ascii"))
        h = state.copy()
        h.update(value)
        return h.digest()

    return digest


def row_key(rule: str, subject_kind: str, subject: bytes, bucket: int) -> str:
    """The flag's natural key: what its sealed fields are bound to, and its idempotency key."""
    return f"{rule}/{subject_kind}/{subject.hex()}/{bucket}"


def _aad(column: str, key: str, subscriber_id: int) -> bytes:
    return field_aad(TABLE, column, key, subscriber_id or None)


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class FlagWriter:
    """Queues flags without blocking and writes them in batches off the reply path.

    ``log`` findings become one log line and no row; the others become a
    flags row (one per rule, subject and bucket: a duplicate is ignored), and
    ``notify`` also an outbox event in the same transaction. Replayed flags
    (after a restart) are written the same way but not logged again. A batch
    that finds the database down is retried at the next flush; the queue is
    bounded (a submit to a full queue drops its oldest flag, a batch put
    back after a failed write drops the newest; both counted in ``dropped``).
    """

    def __init__(
        self,
        pool: Pool,
        epoch: FieldCipher,
        data_keys: DataKeyCache,
        *,
        max_queue: int = 10_000,
        flush_interval: float = 0.2,
    ) -> None:
        if max_queue < 1 or flush_interval <= 0:
            raise ValueError("max_queue and flush_interval must be positive")
        self._pool = pool
        self._epoch = epoch
        self._data_keys = data_keys
        self._queue: deque[Flag] = deque(maxlen=max_queue)
        self._interval = flush_interval
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0  # rows inserted (duplicates not counted)
        self.handled = 0  # flags taken off the queue and done with
        self.dropped = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, flag: Flag) -> None:
        """Queue ``flag``; never blocks. A full queue drops its oldest flag."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(flag)
        if not flag.replayed:
            _log.warning(
                "suspicious_login",
                rule=flag.rule.value,
                severity=flag.severity.value,
                action=flag.action.value,
                subject=f"{flag.subject_kind}:{flag.subject.hex()[:10]}",
                subscriber_id=flag.subscriber_id,
            )
        self._wake.set()

    def start(self) -> None:
        """Start the background flusher (call inside the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the flusher and write what is left once more."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._wake.set()
            await task
            self._closing = False
        with contextlib.suppress(StoreUnavailable):
            await self.flush()
        if self._queue:
            _log.warning("flags_unwritten_at_stop", flags=len(self._queue))

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except StoreUnavailable:
                pass  # kept queued; the next flush tries again
            except Exception as exc:  # the flusher must outlive any one bad batch
                _log.error("flags_flusher_error", error=type(exc).__name__)

    async def flush(self) -> None:
        """Write every queued flag now. Raises StoreUnavailable (flags stay queued).

        The batch leaves the queue before the write: flags submitted while
        it is in flight (and whatever a full queue drops for them) never
        touch it. If the database is down the batch goes back in front.
        """
        async with self._lock:
            while self._queue:
                batch = list(self._queue)
                self._queue.clear()
                try:
                    async with acquire(self._pool) as conn, conn.transaction():
                        written, gone = await self._write(conn, batch)
                except StoreUnavailable:
                    self._requeue(batch)
                    raise
                except Exception as exc:
                    # Refused for its data (or a bug): the same batch would be
                    # refused again, and hold up every flag behind it.
                    _log.error("flags_batch_error", error=type(exc).__name__, flags=len(batch))
                    self.failed += len(batch)
                    written = gone = 0
                self.written += written
                self.dropped += gone
                self.handled += len(batch)

    def _requeue(self, batch: list[Flag]) -> None:
        """Put an unwritten ``batch`` back before the flags queued meanwhile.

        Over the cap, the newest flags are dropped (and counted), so what
        stays is the oldest run in the order it was raised, without gaps.
        """
        cap = self._queue.maxlen or len(batch) + len(self._queue)
        merged = [*batch, *self._queue]
        self.dropped += max(0, len(merged) - cap)
        self._queue.clear()
        self._queue.extend(merged[:cap])

    async def _write(self, conn: Connection, batch: list[Flag]) -> tuple[int, int]:
        stored = [f for f in batch if f.action is not Action.LOG]
        ciphers, unreadable = await live_subscriber_ciphers(
            conn, self._data_keys, (f.subscriber_id for f in stored)
        )
        written = gone = 0
        for flag in stored:
            sid = flag.subscriber_id or 0
            cipher = self._epoch if not sid else ciphers.get(sid)
            if cipher is None:
                # Erased meanwhile (gone), or its key would not open: either
                # way the evidence cannot be sealed for this subscriber.
                gone += 1
                if sid in unreadable:
                    self.failed += 1
                continue
            key = row_key(flag.rule.value, flag.subject_kind, flag.subject, flag.bucket)
            evidence = json.dumps(flag.evidence, default=str, sort_keys=True).encode("utf-8")
            flag_id = await conn.fetchval(
                "INSERT INTO flags (time, subscriber_id, rule, severity, score, action,"
                " subject_kind, subject, bucket, thresholds, evidence_enc)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                " ON CONFLICT (rule, subject_kind, subject, bucket) DO NOTHING RETURNING id",
                _when(flag.time),
                sid,
                flag.rule.value,
                flag.severity.value,
                flag.score,
                flag.action.value,
                flag.subject_kind,
                flag.subject,
                flag.bucket,
                flag.thresholds,
                cipher.seal(evidence, _aad("evidence", key, sid)),
            )
            if flag_id is None:
                continue  # this rule, subject and bucket already has its flag
            written += 1
            if flag.action is Action.NOTIFY:
                await conn.execute(
                    # The payload's subscriber_id is what the outbox keys
                    # delivery order and erasure on (migration 0015).
                    "INSERT INTO feed_outbox (topic, idempotency_key, payload) VALUES ($1, $2, $3)"
                    " ON CONFLICT (idempotency_key) DO NOTHING",
                    OUTBOX_TOPIC,
                    f"flag/{key}",
                    {
                        "flag_id": int(flag_id),
                        "rule": flag.rule.value,
                        "severity": flag.severity.value,
                        "score": flag.score,
                        "subscriber_id": sid,
                        "time": _when(flag.time).isoformat(),
                    },
                )
        return written, gone


async def rebuild(pool: Pool, detector: Detector, *, now: datetime) -> int:
    """Replay the stored signals of the last ``rebuild_hours`` into ``detector``, oldest first.

    Run once at start, before serving, so that the windows and the holds of
    the previous run are back. Returns the number of signals replayed.
    """
    since = now - timedelta(hours=detector.settings.rebuild_hours)
    count = 0
    async with acquire(pool, timeout=60.0) as conn, conn.transaction():
        cursor = conn.cursor(
            "SELECT time, subscriber_id, result, reason, detect FROM auth_events"
            " WHERE time >= $1 AND detect IS NOT NULL"
            " UNION ALL"
            " SELECT time, NULL, 'reject', reason, detect FROM auth_rejects_unknown"
            " WHERE time >= $1 AND detect IS NOT NULL"
            " ORDER BY time",
            since,
            prefetch=_REBUILD_CHUNK,
        )
        async for row in cursor:
            sig = Signal.decode(
                row["detect"],
                time=row["time"].timestamp(),
                subscriber_id=row["subscriber_id"],
                accepted=row["result"] == "accept",
                reason=str(row["reason"]),
            )
            if sig is not None:
                detector.apply(sig)
                count += 1
    return count


# --- the operator's side ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlagFilter:
    rule: str | None = None
    state: str | None = None
    subscriber_id: int | None = None
    since: datetime | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class FlagView:
    """One flag as the operator sees it; ``evidence`` only from ``explain``."""

    id: int
    time: datetime
    subscriber_id: int
    rule: str
    severity: str
    score: float
    action: str
    subject_kind: str
    subject: bytes
    bucket: int
    state: str
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    thresholds: dict[str, Any]
    evidence: dict[str, Any] | None = None
    note: str | None = None
    readable: bool = True  # False: the subscriber's key is gone (erased) or wrong


_COLUMNS: Final = (
    "id, time, subscriber_id, rule, severity, score, action, subject_kind, subject, bucket,"
    " state, acknowledged_by, acknowledged_at, thresholds, evidence_enc, note_enc"
)


def _view(row: Any) -> FlagView:
    return FlagView(
        id=int(row["id"]),
        time=row["time"],
        subscriber_id=int(row["subscriber_id"]),
        rule=str(row["rule"]),
        severity=str(row["severity"]),
        score=float(row["score"]),
        action=str(row["action"]),
        subject_kind=str(row["subject_kind"]),
        subject=bytes(row["subject"]),
        bucket=int(row["bucket"]),
        state=str(row["state"]),
        acknowledged_by=row["acknowledged_by"],
        acknowledged_at=row["acknowledged_at"],
        thresholds=dict(row["thresholds"] or {}),
    )


class FlagQuery:
    """List, show, acknowledge and explain flags; acknowledge and explain are audited."""

    def __init__(
        self, pool: Pool, data_keys: DataKeyCache, epoch: FieldCipher, *, actor: str
    ) -> None:
        self._pool = pool
        self._data_keys = data_keys
        self._epoch = epoch
        self._actor = actor

    async def search(self, f: FlagFilter) -> list[FlagView]:
        """Flags matching ``f``, newest first."""
        where: list[str] = []
        args: list[object] = []
        for column, value in (
            ("rule", f.rule),
            ("state", f.state),
            ("subscriber_id", f.subscriber_id),
        ):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if f.since is not None:
            args.append(f.since)
            where.append(f"time >= ${len(args)}")
        args.append(f.limit)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        async with acquire(self._pool) as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM flags{clause} ORDER BY time DESC, id DESC"
                f" LIMIT ${len(args)}",
                *args,
            )
        return [_view(r) for r in rows]

    async def get(self, flag_id: int) -> FlagView | None:
        """One flag without its evidence, or None."""
        async with acquire(self._pool) as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM flags WHERE id = $1", flag_id)
        return None if row is None else _view(row)

    async def ack(self, flag_id: int, *, note: str | None, now: datetime) -> FlagView | None:
        """Acknowledge a flag (again: the newer acknowledgement wins); None if no such flag."""
        async with acquire(self._pool) as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM flags WHERE id = $1 FOR UPDATE", flag_id
            )
            if row is None:
                return None
            view = _view(row)
            note_enc = None
            if note:
                cipher = await self._cipher(conn, view.subscriber_id)
                if cipher is not None:
                    key = row_key(view.rule, view.subject_kind, view.subject, view.bucket)
                    note_enc = cipher.seal(
                        note.encode("utf-8"), _aad("note", key, view.subscriber_id)
                    )
            await conn.execute(
                "UPDATE flags SET state = 'acknowledged', acknowledged_by = $2,"
                " acknowledged_at = $3, note_enc = COALESCE($4, note_enc)"
                " WHERE id = $1 AND subscriber_id = $5",
                flag_id,
                self._actor,
                now,
                note_enc,
                view.subscriber_id,
            )
            await audit(
                conn,
                self._actor,
                "flag.ack",
                view.subscriber_id or None,
                {"flag_id": flag_id, "rule": view.rule, "note": bool(note)},
            )
        return await self.get(flag_id)

    async def explain(self, flag_id: int, *, now: datetime) -> FlagView | None:
        """One flag with its evidence (and note) opened for the operator; audited."""
        async with acquire(self._pool) as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM flags WHERE id = $1", flag_id)
            if row is None:
                return None
            view = _view(row)
            await audit(
                conn,
                self._actor,
                "flag.explain",
                view.subscriber_id or None,
                {"flag_id": flag_id, "rule": view.rule, "at": now.isoformat()},
            )
            cipher = await self._cipher(conn, view.subscriber_id)
        key = row_key(view.rule, view.subject_kind, view.subject, view.bucket)
        evidence: dict[str, Any] | None = None
        note = None
        readable = cipher is not None
        if cipher is not None:
            try:
                plain = cipher.open(
                    bytes(row["evidence_enc"]), _aad("evidence", key, view.subscriber_id)
                )
                evidence = json.loads(plain)
                if row["note_enc"] is not None:
                    note = cipher.open(
                        bytes(row["note_enc"]), _aad("note", key, view.subscriber_id)
                    ).decode("utf-8")
            except DecryptError:
                readable = False
        return replace(view, evidence=evidence, note=note, readable=readable)

    async def _cipher(self, conn: Connection, subscriber_id: int) -> FieldCipher | None:
        if not subscriber_id:
            return self._epoch
        ciphers, _ = await live_subscriber_ciphers(conn, self._data_keys, (subscriber_id,))
        return ciphers.get(subscriber_id)
