"""Auth-event writer: a bounded in-memory queue drained to PostgreSQL in COPY batches.

Implements ``aaa.ports.AuthEventSink``. Imports aaa, privacy and store; never
server or cli. Personal fields are sealed before they leave the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Final

import asyncpg

from ispcare_radius.aaa.model import AuthEvent
from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.crypto import FieldCipher, field_aad
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire, is_unavailable
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys, live_subscriber_ciphers

_log = get_logger(__name__)

KNOWN_TABLE: Final = "auth_events"
UNKNOWN_TABLE: Final = "auth_rejects_unknown"
_KNOWN_COLUMNS: Final = (
    "time",
    "id",
    "subscriber_id",
    "nas_id",
    "result",
    "reason",
    "method",
    "flags",
    "user_name_enc",
    "calling_station_id_enc",
    "nas_ip_enc",
    # Analytics categories, in clear: none identifies anyone (migration 0013).
    "country",
    "city",
    "device_class",
    "os_family",
    "vendor",
    "detect",  # keyed digests only (migration 0014)
)
_UNKNOWN_COLUMNS: Final = (
    "time",
    "id",
    "nas_id",
    "reason",
    "method",
    "user_name_enc",
    "calling_station_id_enc",
    "nas_ip_enc",
    "detect",
)


def event_aad(table: str, column: str, event_id: uuid.UUID, subscriber_id: int | None) -> bytes:
    """Associated data of a personal auth-event field: bound to the event and subscriber."""
    return field_aad(table, column, str(event_id), subscriber_id)


def _seal(
    cipher: FieldCipher, table: str, event_id: uuid.UUID, sid: int | None, event: AuthEvent
) -> tuple[bytes, bytes | None, bytes | None]:
    def one(column: str, value: str | None) -> bytes | None:
        if value is None:
            return None
        return cipher.seal(value.encode("utf-8"), event_aad(table, column, event_id, sid))

    user_name = one("user_name", event.user_name)
    assert user_name is not None
    return (
        user_name,
        one("calling_station_id", event.calling_station_id),
        one("nas_ip", event.nas_ip),
    )


@dataclass(slots=True)
class _Pending:
    """A batch taken off the queue and held until written or given up on."""

    items: list[tuple[uuid.UUID, AuthEvent]]
    attempts: int = 0
    first_failure: float | None = None
    retry_at: float = 0.0


@dataclass(slots=True)
class _Rows:
    """The COPY records of a batch, and what could not become a record."""

    known: list[tuple[Any, ...]] = field(default_factory=list)
    unknown: list[tuple[Any, ...]] = field(default_factory=list)
    gone: int = 0  # the subscriber was erased: dropped
    unreadable: int = 0  # the subscriber's key could not be unwrapped: failed


class AuthEventWriter:
    """Queues auth events without blocking and writes them in batches off the reply path.

    While the database is unavailable a batch is retried with exponential
    backoff (from ``flush_interval`` up to ``max_backoff`` seconds) and given
    up on once ``give_up_after`` seconds have passed since its first failure;
    new events keep queueing meanwhile. A batch the database rejects for its
    data is written row by row, so one bad row cannot take the others along.

    Counters: ``written`` rows stored; ``dropped`` events lost to a full
    queue (oldest first) or to an erased subscriber; ``failed`` events given
    up on, rejected by the database, or whose subscriber key could not be
    unwrapped; ``write_errors`` batch attempts that failed as a whole (the
    database unavailable, or an unexpected error).
    """

    def __init__(
        self,
        pool: Pool,
        keys: SystemKeys,
        data_keys: DataKeyCache,
        *,
        max_queue: int = 100_000,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        give_up_after: float = 300.0,
        max_backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0 or max_backoff <= 0:
            raise ValueError("queue, batch, interval and backoff must be positive")
        if give_up_after < 0:
            raise ValueError("give_up_after must not be negative")
        self._pool = pool
        self._epoch = keys.epoch
        self._data_keys = data_keys
        self._queue: deque[tuple[uuid.UUID, AuthEvent]] = deque(maxlen=max_queue)
        self._batch_size = batch_size
        self._interval = flush_interval
        self._give_up_after = give_up_after
        self._max_backoff = max(max_backoff, flush_interval)
        self._clock = clock
        self._pending: _Pending | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._progress = asyncio.Condition()
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.write_errors = 0

    def __len__(self) -> int:
        return len(self._queue) + (len(self._pending.items) if self._pending else 0)

    @property
    def retry_at(self) -> float | None:
        """Clock time of the next attempt of a batch that found the database down, else None."""
        pending = self._pending
        if pending is None or pending.first_failure is None:
            return None
        return pending.retry_at

    def submit(self, event: AuthEvent) -> None:
        """Queue ``event``; never blocks. A full queue drops its oldest event."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((uuid.uuid4(), event))
        # While a batch waits out its backoff, a full queue must not spin the flusher.
        if len(self._queue) >= self._batch_size and self.retry_at is None:
            self._wake.set()

    def start(self) -> None:
        """Start the background flusher (call inside the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the flusher after its current batch, then try once more to write what is left."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._wake.set()
            await task
            self._closing = False
        await self._flush(force=True)
        if len(self):
            _log.warning("auth_events_unwritten_at_stop", events=len(self))

    async def _run(self) -> None:
        while not self._closing:
            retry_at = self.retry_at
            delay = self._interval if retry_at is None else retry_at - self._clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(delay, self._interval))
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # the flusher must outlive any one bad batch
                _log.error("auth_events_flusher_error", error=type(exc).__name__)

    async def flush(self) -> None:
        """Write queued events now, batch by batch; stop at a batch waiting for its retry time."""
        await self._flush(force=False)

    async def _flush(self, *, force: bool) -> None:
        async with self._lock:
            while True:
                if self._pending is None:
                    if not self._queue:
                        return
                    count = min(self._batch_size, len(self._queue))
                    # Held in self._pending until done with, so a cancelled
                    # or failed write loses nothing.
                    self._pending = _Pending([self._queue.popleft() for _ in range(count)])
                pending = self._pending
                now = self._clock()
                if not force and now < pending.retry_at:
                    return
                if not await self._attempt(pending, now):
                    return

    async def _attempt(self, pending: _Pending, now: float) -> bool:
        """One write of ``pending``; True when it is done with (written or counted)."""
        try:
            async with acquire(self._pool) as conn:
                written, gone, failed = await self._write(conn, pending.items)
        except StoreUnavailable as exc:
            self._unavailable(pending, now, exc)
            return False
        except Exception as exc:
            # Neither the database being down nor a row it refused: retrying
            # the same batch cannot help.
            self.write_errors += 1
            self.failed += len(pending.items)
            self._pending = None
            _log.error("auth_events_batch_error", error=type(exc).__name__, rows=len(pending.items))
            return True
        self._pending = None
        self.written += written
        self.dropped += gone
        self.failed += failed
        async with self._progress:
            self._progress.notify_all()
        return True

    def _unavailable(self, pending: _Pending, now: float, exc: Exception) -> None:
        self.write_errors += 1
        pending.attempts += 1
        if pending.first_failure is None:
            pending.first_failure = now
        give_up = now - pending.first_failure >= self._give_up_after
        if give_up:
            self.failed += len(pending.items)
            self._pending = None
        else:
            exponent = min(pending.attempts - 1, 32)
            pending.retry_at = now + min(self._interval * 2.0**exponent, self._max_backoff)
        _log.warning(
            "auth_events_write_failed",
            error=type(exc.__cause__ or exc).__name__,
            rows=len(pending.items),
            attempt=pending.attempts,
            giving_up=give_up,
        )

    async def wait_for_written(self, count: int) -> None:
        """Return once at least ``count`` events have been written in total."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.written >= count)

    async def _write(
        self, conn: Connection, items: Sequence[tuple[uuid.UUID, AuthEvent]]
    ) -> tuple[int, int, int]:
        """Write ``items`` in one transaction: (written, dropped, failed)."""
        async with conn.transaction():
            rows = await self._rows(conn, items)
            try:
                async with conn.transaction():  # a savepoint
                    if rows.known:
                        await conn.copy_records_to_table(
                            KNOWN_TABLE, records=rows.known, columns=_KNOWN_COLUMNS
                        )
                    if rows.unknown:
                        await conn.copy_records_to_table(
                            UNKNOWN_TABLE, records=rows.unknown, columns=_UNKNOWN_COLUMNS
                        )
                return len(rows.known) + len(rows.unknown), rows.gone, rows.unreadable
            except asyncpg.PostgresError as exc:
                if is_unavailable(exc):
                    raise
                _log.warning("auth_events_batch_refused", sqlstate=exc.sqlstate, rows=len(items))
            written = refused = 0
            singles: list[tuple[str, tuple[str, ...], tuple[Any, ...]]]
            singles = [(KNOWN_TABLE, _KNOWN_COLUMNS, r) for r in rows.known]
            singles += [(UNKNOWN_TABLE, _UNKNOWN_COLUMNS, r) for r in rows.unknown]
            for table, columns, record in singles:
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table(table, records=[record], columns=columns)
                    written += 1
                except asyncpg.PostgresError as exc:
                    if is_unavailable(exc):
                        raise
                    refused += 1
            if refused:
                _log.error("auth_events_rows_refused", rows=refused)
            return written, rows.gone, rows.unreadable + refused

    async def _rows(self, conn: Connection, items: Sequence[tuple[uuid.UUID, AuthEvent]]) -> _Rows:
        ciphers, unreadable = await live_subscriber_ciphers(
            conn, self._data_keys, (e.subscriber_id for _, e in items)
        )
        rows = _Rows()
        for event_id, event in items:
            when = event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC)
            sid = event.subscriber_id
            if sid is None:
                sealed = _seal(self._epoch, UNKNOWN_TABLE, event_id, None, event)
                rows.unknown.append(
                    (
                        when,
                        event_id,
                        event.nas_id,
                        event.reason,
                        event.method,
                        *sealed,
                        event.detect,
                    )
                )
                continue
            cipher = ciphers.get(sid)
            if cipher is None:
                if sid in unreadable:
                    rows.unreadable += 1
                else:
                    # The subscriber was erased meanwhile: so is the event.
                    rows.gone += 1
                continue
            sealed = _seal(cipher, KNOWN_TABLE, event_id, sid, event)
            rows.known.append(
                (
                    when,
                    event_id,
                    sid,
                    event.nas_id,
                    event.result.value,
                    event.reason,
                    event.method,
                    list(event.flags),
                    *sealed,
                    event.country,
                    event.city,
                    event.device_class,
                    event.os_family,
                    event.vendor,
                    event.detect,
                )
            )
        return rows
