"""The session applier: queued accounting records applied to sessions, in the background.

The accounting writer stores each record and queues it in ``acct_pending``
in one statement; this takes queued records in batches (``FOR UPDATE SKIP
LOCKED``, so several processes share the work), applies them through
``SessionTracker`` and dequeues them in the same transaction.

Imports aaa, privacy and store; never server or cli.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire, is_unavailable
from ispcare_radius.store.sessions import CLAIM, Pending, SessionTracker, pending_from_row

_log = get_logger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SessionApplier:
    """Applies queued accounting records to sessions, in the background.

    Woken by the writer after each commit (``wake``), and every ``poll``
    seconds for records queued by another process or left by a crash; up to
    ``batch_size`` records per transaction, so under load one transaction
    serves many requests. A batch that fails for any reason but the database
    being unavailable is retried one record at a time; a record that still
    fails is dequeued and counted in ``failed`` (its raw record stays, so its
    session can be rebuilt). ``applied`` counts dequeued records.
    """

    def __init__(
        self,
        pool: Pool,
        tracker: SessionTracker,
        *,
        batch_size: int = 1000,
        poll: float = 1.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if batch_size < 1 or poll <= 0:
            raise ValueError("batch_size and poll must be positive")
        self._pool = pool
        self.tracker = tracker
        self._batch_size = batch_size
        self._poll = poll
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.applied = 0
        self.failed = 0

    def wake(self) -> None:
        """Records were queued: apply them soon."""
        self._wakeup.set()

    def start(self) -> None:
        """Run the apply loop until ``close``."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop the loop, then apply what is queued (best effort: what is left stays queued)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(StoreUnavailable):
            await self.drain()

    async def drain(self) -> int:
        """Apply batches until the queue is empty (or only other processes' rows remain)."""
        total = 0
        while True:
            done = await self.run_once()
            total += done
            if done < self._batch_size:
                return total
            # Applying is CPU work on the event loop the acknowledgements
            # share: modest batches, and a turn for them between batches.
            await asyncio.sleep(0)

    async def run_once(self) -> int:
        """Apply one batch of queued records; return how many were dequeued."""
        async with acquire(self._pool, timeout=30.0) as conn, conn.transaction():
            rows = await conn.fetch(CLAIM, self._batch_size)
            if not rows:
                return 0
            # A record erased (or dropped by retention) while queued has
            # nothing left to apply: it is only dequeued.
            records = [pending_from_row(r) for r in rows if r["id"] is not None]
            now = self._clock()
            if records and not await self._try(conn, records, now):
                for record in records:  # isolate the record that fails
                    if not await self._try(conn, [record], now):
                        self.failed += 1
                        _log.error("session_apply_failed", status=record.status)
            await conn.execute(
                "DELETE FROM acct_pending WHERE id = ANY($1::uuid[])",
                [r["pending_id"] for r in rows],
            )
        self.applied += len(records)
        return len(rows)

    async def _try(self, conn: Connection, records: list[Pending], now: datetime) -> bool:
        try:
            async with conn.transaction():  # a savepoint: a failure undoes only this try
                await self.tracker.apply(conn, records, now=now)
        except (asyncpg.PostgresError, asyncpg.DataError, ValueError, KeyError) as exc:
            if is_unavailable(exc):
                raise
            if len(records) > 1:
                _log.warning("session_batch_failed", error=type(exc).__name__, rows=len(records))
            return False
        return True

    async def _loop(self) -> None:
        backoff = self._poll
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            if self._closing:
                return
            try:
                await self.drain()
                backoff = self._poll
            except StoreUnavailable:
                backoff = min(backoff * 2, 30.0)  # the database is down; records wait queued
            except Exception as exc:  # a bug must not stop the applier for good
                _log.error("session_applier_error", error=type(exc).__name__)
                backoff = min(backoff * 2, 30.0)
