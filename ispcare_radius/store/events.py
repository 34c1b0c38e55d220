"""Auth-event writer: a bounded in-memory queue drained to PostgreSQL in COPY batches.

Implements ``aaa.ports.AuthEventSink``. Imports aaa, privacy and store; never
server or cli. Personal fields are sealed before they leave the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

from ispcare_radius.aaa.model import AuthEvent
from ispcare_radius.privacy.crypto import FieldCipher, field_aad
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys

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
class _Batch:
    items: list[tuple[uuid.UUID, AuthEvent]]
    attempts: int = 0


class AuthEventWriter:
    """Queues auth events without blocking and writes them in batches off the reply path.

    Counters: ``written`` rows stored, ``dropped`` events lost to a full queue
    (oldest first) or to an erased subscriber, ``failed`` events given up on
    after ``max_attempts`` write attempts, ``write_errors`` failed attempts.
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
        max_attempts: int = 5,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0 or max_attempts < 1:
            raise ValueError("queue, batch, interval and attempts must be positive")
        self._pool = pool
        self._epoch = keys.epoch
        self._data_keys = data_keys
        self._queue: deque[tuple[uuid.UUID, AuthEvent]] = deque(maxlen=max_queue)
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_attempts = max_attempts
        self._retry: _Batch | None = None
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
        return len(self._queue) + (len(self._retry.items) if self._retry else 0)

    def submit(self, event: AuthEvent) -> None:
        """Queue ``event``; never blocks. A full queue drops its oldest event."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((uuid.uuid4(), event))
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def start(self) -> None:
        """Start the background flusher (call inside the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the flusher after its current batch, then write what is left."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._wake.set()
            await task
            self._closing = False
        await self.flush()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # the flusher must outlive any one bad batch
                _log.error("auth_events_flusher_error", error=type(exc).__name__)

    async def flush(self) -> None:
        """Write every queued event now; after a failed write keep the batch for next time."""
        async with self._lock:
            while True:
                if self._retry is None:
                    if not self._queue:
                        return
                    count = min(self._batch_size, len(self._queue))
                    # Held in self._retry until written, so a cancelled or
                    # failed write loses nothing.
                    self._retry = _Batch([self._queue.popleft() for _ in range(count)])
                if not await self._attempt(self._retry):
                    return

    async def _attempt(self, batch: _Batch) -> bool:
        """One write of ``batch``; True when it is done with (written or given up)."""
        batch.attempts += 1
        try:
            async with acquire(self._pool) as conn, conn.transaction():
                known, unknown, orphans = await self._records(conn, batch.items)
                if known:
                    await conn.copy_records_to_table(
                        KNOWN_TABLE, records=known, columns=_KNOWN_COLUMNS
                    )
                if unknown:
                    await conn.copy_records_to_table(
                        UNKNOWN_TABLE, records=unknown, columns=_UNKNOWN_COLUMNS
                    )
        except Exception as exc:
            # StoreUnavailable and SQL errors, but also a key that cannot be
            # unwrapped: bounded retries, then the batch is counted as failed.
            self.write_errors += 1
            give_up = batch.attempts >= self._max_attempts
            _log.warning(
                "auth_events_write_failed",
                error=type(exc).__name__,
                rows=len(batch.items),
                attempt=batch.attempts,
                giving_up=give_up,
            )
            if give_up:
                self.failed += len(batch.items)
                self._retry = None
            return give_up
        self._retry = None
        self.written += len(known) + len(unknown)
        self.dropped += orphans
        async with self._progress:
            self._progress.notify_all()
        return True

    async def wait_for_written(self, count: int) -> None:
        """Return once at least ``count`` events have been written in total."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.written >= count)

    async def _records(
        self, conn: Connection, items: Sequence[tuple[uuid.UUID, AuthEvent]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
        ciphers = await self._ciphers(conn, {e.subscriber_id for _, e in items})
        known: list[tuple[Any, ...]] = []
        unknown: list[tuple[Any, ...]] = []
        orphans = 0
        for event_id, event in items:
            when = event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC)
            sid = event.subscriber_id
            if sid is None:
                sealed = _seal(self._epoch, UNKNOWN_TABLE, event_id, None, event)
                unknown.append((when, event_id, event.nas_id, event.reason, event.method, *sealed))
                continue
            cipher = ciphers.get(sid)
            if cipher is None:
                # The subscriber was erased meanwhile: its key is gone, so is the event.
                orphans += 1
                continue
            sealed = _seal(cipher, KNOWN_TABLE, event_id, sid, event)
            known.append(
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
                )
            )
        return known, unknown, orphans

    async def _ciphers(self, conn: Connection, ids: set[int | None]) -> dict[int, FieldCipher]:
        ciphers: dict[int, FieldCipher] = {}
        missing: list[int] = []
        for sid in ids:
            if sid is None:
                continue
            cipher = self._data_keys.cached(sid)
            if cipher is None:
                missing.append(sid)
            else:
                ciphers[sid] = cipher
        if missing:
            rows = await conn.fetch(
                "SELECT id, wrapped_key FROM subscribers WHERE id = ANY($1::bigint[])", missing
            )
            for row in rows:
                sid = int(row["id"])
                ciphers[sid] = self._data_keys.cipher(sid, bytes(row["wrapped_key"]))
        return ciphers
