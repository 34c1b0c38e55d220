"""Durable accounting writer: group commit of accounting records to PostgreSQL.

Implements ``aaa.ports.AccountingRecorder``. Imports aaa, privacy and store;
never server or cli. ``record()`` returns only after the batch holding its
record has committed; personal fields are sealed before they leave the process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import asyncpg

from ispcare_radius.aaa.accounting import NO_SUBSCRIBER, AcctRecord, Attribution, Recorded
from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.privacy.crypto import FieldCipher
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire, is_unavailable, rows_affected
from ispcare_radius.store.events import event_aad
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys, live_subscriber_ciphers
from ispcare_radius.store.session_keys import (
    cookie_session_key,
    ip_blind,
    port_blind,
    session_blind,
    tuple_session_key,
)

_log = get_logger(__name__)

TABLE: Final = "acct_records"
KEYS_TABLE: Final = "acct_record_keys"
PENDING_TABLE: Final = "acct_pending"
_RECORD_DOMAIN: Final = b"ispcare-radius/acct-record/v1\x00"

# (column, SQL type) of acct_records, in the order rows are built.
_COLUMNS: Final = (
    ("time", "timestamptz"),
    ("id", "uuid"),
    ("subscriber_id", "bigint"),
    ("attribution", "text"),
    ("nas_id", "bigint"),
    ("status_type", "bigint"),
    ("session_blind", "bytea"),
    ("record_key", "bytea"),
    ("event_time", "timestamptz"),
    ("nas_event_time", "timestamptz"),
    ("delay_time", "bigint"),
    ("input_octets", "bigint"),
    ("output_octets", "bigint"),
    ("session_time", "bigint"),
    ("terminate_cause", "bigint"),
    ("nas_identifier", "text"),
    ("class", "bytea"),
    ("session_id_enc", "bytea"),
    ("user_name_enc", "bytea"),
    ("calling_station_id_enc", "bytea"),
    ("framed_ip_enc", "bytea"),
    ("nas_ip_enc", "bytea"),
    # For the session applier, which never decrypts (0007_sessions.sql).
    ("session_key", "bytea"),
    ("port_blind", "bytea"),
    ("framed_ip_blind", "bytea"),
    ("framed_ipv6_blind", "bytea"),
    ("nas_port_type", "bigint"),
    ("gigawords", "boolean"),
    ("has_cookie", "boolean"),
    ("framed_ipv6_enc", "bytea"),
)
_RECORD_KEY_INDEX: Final = 7
_NAMES: Final = ", ".join(name for name, _ in _COLUMNS)
_WINDOW_PARAM: Final = len(_COLUMNS) + 1

# One statement, so one round trip and one implicit transaction per batch:
# register each record key (a key already there counts as a duplicate unless
# its event time lies outside the window), then insert the rows whose key was
# new. When execute() returns, the statement has committed.
_INSERT: Final = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(_COLUMNS, 1))})
        AS t({_NAMES})
), fresh AS (
    INSERT INTO {KEYS_TABLE} AS k (record_key, subscriber_id, event_time, time)
    SELECT record_key, subscriber_id, event_time, time FROM input
    ON CONFLICT (record_key) DO UPDATE
        SET subscriber_id = EXCLUDED.subscriber_id,
            event_time = EXCLUDED.event_time,
            time = EXCLUDED.time
        WHERE abs(extract(epoch FROM EXCLUDED.event_time - k.event_time))::float8
            > ${_WINDOW_PARAM}::float8
    RETURNING k.record_key
), stored AS (
    INSERT INTO {TABLE} ({_NAMES})
    SELECT {", ".join(f"i.{name}" for name, _ in _COLUMNS)}
    FROM input i JOIN fresh f ON f.record_key = i.record_key
    RETURNING record_key, id, subscriber_id, time
), queued AS (
    INSERT INTO {PENDING_TABLE} (id, subscriber_id, time)
    SELECT id, subscriber_id, time FROM stored
)
SELECT record_key FROM stored
"""


def record_key(index: BlindIndex, nas_id: int, content_digest: bytes) -> bytes:
    """The idempotency key of an accounting event: keyed, since the content is personal."""
    return index.full(_RECORD_DOMAIN + nas_id.to_bytes(8, "big") + content_digest)


def record_aad(column: str, row_id: uuid.UUID, subscriber_id: int) -> bytes:
    """Associated data of a sealed acct_records field (``column`` without ``_enc``).

    Bound to the row id and the stored subscriber_id (0 for unattributed rows).
    """
    return event_aad(TABLE, column, row_id, subscriber_id)


@dataclass(slots=True)
class _Item:
    record: AcctRecord
    future: asyncio.Future[Recorded]


class AccountingWriter:
    """Group commit: one statement per batch of up to ``batch_size`` records,
    ``max_inflight`` batches at once; a record waits at most ``max_delay`` s
    for its batch to start unless every write slot is busy.

    At most ``max_pending`` records wait or are being written; beyond that
    ``record`` raises StoreUnavailable at once (the NAS retries). Records with
    the same key whose event times lie within ``duplicate_window`` seconds are
    one event. Counters: ``stored``, ``duplicates``, ``failed``, ``rejected``
    (over ``max_pending``), ``batches`` (statements that committed).
    """

    def __init__(
        self,
        pool: Pool,
        keys: SystemKeys,
        data_keys: DataKeyCache,
        *,
        batch_size: int = 500,
        max_delay: float = 0.005,
        max_inflight: int = 2,
        max_pending: int = 20_000,
        duplicate_window: float = 300.0,
    ) -> None:
        if batch_size < 1 or max_inflight < 1 or max_pending < 1:
            raise ValueError("batch_size, max_inflight and max_pending must be positive")
        if max_delay < 0 or duplicate_window < 0:
            raise ValueError("max_delay and duplicate_window must not be negative")
        self._pool = pool
        self._index = keys.blind_index
        self._epoch = keys.epoch
        self._data_keys = data_keys
        self._batch_size = batch_size
        self._max_delay = max_delay
        self._max_inflight = max_inflight
        self._max_pending = max_pending
        self._window = duplicate_window
        self._pending: deque[_Item] = deque()
        self._outstanding = 0
        self._inflight = 0
        self._due = False
        self._wakeup: asyncio.Handle | None = None
        self._soon = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stored = 0
        self.duplicates = 0
        self.failed = 0
        self.rejected = 0
        self.batches = 0
        # Called after each commit that stored something: wakes the session applier.
        self.on_commit: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"AccountingWriter(outstanding={self._outstanding}, inflight={self._inflight})"

    async def record(self, record: AcctRecord) -> Recorded:
        """Return once ``record`` is committed (or already was); StoreUnavailable otherwise."""
        if self._closed:
            raise StoreUnavailable("accounting writer closed")
        if self._outstanding >= self._max_pending:
            self.rejected += 1
            raise StoreUnavailable("accounting writer overloaded")
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(record, future))
        self._outstanding += 1
        self._schedule()
        # A cancelled caller cancels only its wait: the write goes on, and a
        # retransmission finds the record as a duplicate.
        return await future

    async def close(self) -> None:
        """Refuse new records, write every waiting one, and wait for all writes."""
        self._closed = True
        while self._pending or self._tasks:
            self._due = True
            self._schedule()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- batching ---------------------------------------------------------

    def _schedule(self) -> None:
        """Dispatch what is due; otherwise arm the wake-up that will make it due.

        Group commit: with no write in flight, the records that arrive during
        this turn of the event loop go at once; while a write is in flight,
        records collect for up to ``max_delay`` (or a full batch), and go as
        soon as a write finishes.
        """
        while (
            self._pending
            and self._inflight < self._max_inflight
            and (self._due or len(self._pending) >= self._batch_size)
        ):
            count = min(self._batch_size, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._pending:
            self._due = False
            self._cancel_wakeup()
        elif self._due:
            return  # every write slot is busy; the next finished write dispatches
        elif self._inflight == 0:
            if not self._soon:
                self._cancel_wakeup()
                self._wakeup = asyncio.get_running_loop().call_soon(self._on_wakeup)
                self._soon = True
        elif self._wakeup is None:
            self._wakeup = asyncio.get_running_loop().call_later(self._max_delay, self._on_wakeup)

    def _cancel_wakeup(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        self._soon = False

    def _on_wakeup(self) -> None:
        self._wakeup = None
        self._soon = False
        self._due = True
        self._schedule()

    async def _run(self, batch: list[_Item]) -> None:
        leftovers: list[_Item] = []
        try:
            leftovers = await self._write(batch)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, StoreUnavailable)
                else StoreUnavailable(f"accounting write failed ({type(exc).__name__})")
            )
            _log.warning("accounting_write_failed", error=type(exc).__name__, rows=len(batch))
            self.failed += len(batch)
            for item in batch:
                _settle(item, error)
        finally:
            # Same content outside the duplicate window: a later event, next batch.
            self._pending.extendleft(reversed(leftovers))
            self._outstanding -= len(batch) - len(leftovers)
            self._inflight -= 1
            self._schedule()

    async def _write(self, batch: list[_Item]) -> list[_Item]:
        """Write ``batch``, settle each future; return the items to retry in a later batch."""
        # One transaction: the subscribers' rows stay locked (FOR KEY SHARE)
        # from the liveness check to the commit, so an erasure cannot slip in
        # between; the futures are settled only after the commit.
        async with acquire(self._pool) as conn, conn.transaction():
            ciphers, _ = await live_subscriber_ciphers(
                conn, self._data_keys, (i.record.subscriber_id for i in batch)
            )
            first: dict[bytes, tuple[_Item, list[_Item]]] = {}
            leftovers: list[_Item] = []
            rows: list[tuple[Any, ...]] = []
            for item in batch:
                row = self._row(item.record, ciphers)
                key = row[_RECORD_KEY_INDEX]
                seen = first.get(key)
                if seen is None:
                    first[key] = (item, [])
                    rows.append(row)
                elif self._same_event(seen[0].record, item.record):
                    seen[1].append(item)
                else:
                    leftovers.append(item)
            results = await self._insert_isolating(conn, rows)
        self.batches += 1
        if self.on_commit is not None and any(r is Recorded.STORED for r in results.values()):
            self.on_commit()
        for key, (item, followers) in first.items():
            result = results[key]
            _settle(item, result)
            if isinstance(result, Recorded):
                self.stored += result is Recorded.STORED
                self.duplicates += (result is Recorded.DUPLICATE) + len(followers)
                result = Recorded.DUPLICATE
            else:
                self.failed += 1 + len(followers)
            for follower in followers:
                _settle(follower, result)
        return leftovers

    def _same_event(self, a: AcctRecord, b: AcctRecord) -> bool:
        return abs((a.event_time - b.event_time).total_seconds()) <= self._window

    async def _insert_isolating(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]]
    ) -> dict[bytes, Recorded | Exception]:
        """Insert ``rows``; a row the database refuses fails alone, found by halving the batch."""
        try:
            async with conn.transaction():  # a savepoint: a refused row undoes only this try
                fresh = await self._insert(conn, rows)
        except (asyncpg.PostgresError, asyncpg.DataError) as exc:
            if is_unavailable(exc):
                raise
            if len(rows) == 1:
                _log.error("accounting_row_refused", error=type(exc).__name__)
                refused = StoreUnavailable(f"accounting row refused ({type(exc).__name__})")
                return {rows[0][_RECORD_KEY_INDEX]: refused}
            half = len(rows) // 2
            results = await self._insert_isolating(conn, rows[:half])
            results.update(await self._insert_isolating(conn, rows[half:]))
            return results
        return {
            row[_RECORD_KEY_INDEX]: Recorded.STORED
            if row[_RECORD_KEY_INDEX] in fresh
            else Recorded.DUPLICATE
            for row in rows
        }

    async def _insert(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> set[bytes]:
        columns = [list(column) for column in zip(*rows, strict=True)]
        records = await conn.fetch(_INSERT, *columns, self._window)
        return {bytes(r["record_key"]) for r in records}

    # -- rows and keys ----------------------------------------------------

    def _row(self, record: AcctRecord, ciphers: dict[int, FieldCipher]) -> tuple[Any, ...]:
        sid = record.subscriber_id
        cipher = ciphers.get(sid) if sid != NO_SUBSCRIBER else None
        if sid != NO_SUBSCRIBER and cipher is None:
            # Erased (or its key unreadable) since the lookup: keep the record,
            # unattributed and under the epoch key, rather than lose it.
            record = replace(
                record, subscriber_id=NO_SUBSCRIBER, attribution=Attribution.LOOKUP_FAILED
            )
            sid = NO_SUBSCRIBER
        if cipher is None:
            cipher = self._epoch
        row_id = uuid.uuid4()

        def seal(column: str, value: bytes | None) -> bytes | None:
            if value is None:
                return None
            return cipher.seal(value, record_aad(column, row_id, sid))

        return (
            record.received_at,
            row_id,
            sid,
            record.attribution.value,
            record.nas_id,
            record.status,
            None
            if record.session_id is None
            else session_blind(self._index, record.nas_id, record.session_id),
            record_key(self._index, record.nas_id, record.content_digest),
            record.event_time,
            record.nas_event_time,
            record.delay_time,
            record.input_octets,
            record.output_octets,
            record.session_time,
            record.terminate_cause,
            record.nas_identifier,
            record.acct_class,
            seal("session_id", record.session_id),
            seal("user_name", record.user_name),
            seal("calling_station_id", record.calling_station_id),
            seal("framed_ip", None if record.framed_ip is None else record.framed_ip.encode()),
            seal("nas_ip", None if record.nas_ip is None else record.nas_ip.encode()),
            *self._session_columns(record),
            seal(
                "framed_ipv6", None if record.framed_ipv6 is None else record.framed_ipv6.encode()
            ),
        )

    def _session_columns(self, record: AcctRecord) -> tuple[Any, ...]:
        """session_key, port/IP blind indexes, NAS-Port-Type, gigawords and cookie flags."""
        index = self._index
        key = None
        if record.cookie is not None:
            key = cookie_session_key(index, record.cookie)
        elif record.session_id is not None:
            key = tuple_session_key(
                index,
                record.nas_id,
                record.session_id,
                record.nas_port,
                record.nas_port_id,
                record.user_name,
            )
        return (
            key,
            port_blind(index, record.nas_id, record.nas_port, record.nas_port_id),
            None if record.framed_ip is None else ip_blind(index, record.framed_ip),
            None if record.framed_ipv6 is None else ip_blind(index, record.framed_ipv6),
            record.nas_port_type,
            record.gigawords,
            record.cookie is not None,
        )


def _settle(item: _Item, result: Recorded | Exception) -> None:
    future = item.future
    if future.done():  # the caller stopped waiting
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


async def prune_record_keys(pool: Pool, *, before: datetime) -> int:
    """Forget idempotency keys of records that arrived before ``before``; return how many.

    A retransmission or replay of such a record afterwards is stored again,
    so keep keys at least as long as any NAS or spool may resend.
    """
    async with acquire(pool, timeout=30.0) as conn:
        status = await conn.execute(f"DELETE FROM {KEYS_TABLE} WHERE time < $1", before)
    return rows_affected(status)
