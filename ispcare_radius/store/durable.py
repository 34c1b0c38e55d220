"""An ``AccountingRecorder`` that falls back to the local spool and replays it later.

Wraps the database writer: a record is durable once PostgreSQL commits it, or,
when PostgreSQL fails or is slower than ``spool_after``, once the spool has
fsynced it. Imports aaa and store; never server or cli.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final

from ispcare_radius.aaa.accounting import AcctRecord, Recorded
from ispcare_radius.aaa.ports import AccountingRecorder, StoreUnavailable
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.spool import Spool

_log = get_logger(__name__)

_DONE: Final = (Recorded.STORED, Recorded.DUPLICATE)


def replayed_prefix(results: Sequence[Recorded | BaseException]) -> int:
    """How many leading replayed records are in the database: the offset may pass only those."""
    for i, result in enumerate(results):
        if result not in _DONE:
            return i
    return len(results)


class SpoolingRecorder:
    """Database first, spool when it fails or is slow, replay in order when it is back.

    While the spool holds records every new record is spooled too, so the
    database sees them in arrival order; once the replay catches up, records
    go to the database again. The replay probes with one record and backs off
    (``probe_initial`` doubling up to ``probe_max`` seconds) while PostgreSQL
    fails, then replays in batches of ``batch_size`` concurrent writes.
    Counters: ``spooled``, ``replayed``; ``spool_bytes`` and ``spool_pending``
    read the spool.
    """

    def __init__(
        self,
        writer: AccountingRecorder,
        spool: Spool,
        *,
        spool_after: float = 2.0,
        batch_size: int = 500,
        probe_initial: float = 0.5,
        probe_max: float = 30.0,
    ) -> None:
        if spool_after <= 0 or batch_size < 1 or probe_initial <= 0 or probe_max < probe_initial:
            raise ValueError("spool_after, batch_size and probe delays must be positive")
        self._writer = writer
        self._spool = spool
        self._spool_after = spool_after
        self._batch_size = batch_size
        self._probe_initial = probe_initial
        self._probe_max = probe_max
        self._wake = asyncio.Event()
        self._replayer: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[Recorded]] = set()
        self._closed = False
        self.spooled = 0
        self.replayed = 0

    def __repr__(self) -> str:
        return f"SpoolingRecorder(spooled={self.spooled}, replayed={self.replayed})"

    @property
    def spool_bytes(self) -> int:
        return self._spool.size

    @property
    def spool_pending(self) -> int:
        return self._spool.pending

    def start(self) -> None:
        """Start the replay task; a spool left non-empty by an earlier run replays at once."""
        if self._replayer is None:
            self._replayer = asyncio.get_running_loop().create_task(self._replay_loop())
            self._wake.set()

    async def record(self, record: AcctRecord) -> Recorded:
        """Committed by PostgreSQL within ``spool_after`` s, else fsynced to the spool."""
        if self._closed:
            raise StoreUnavailable("accounting recorder closed")
        if self._spool.busy:
            return await self._to_spool(record)
        write = asyncio.ensure_future(self._writer.record(record))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        write.add_done_callback(_consume)
        try:
            # Shielded: past the bound the write goes on; if it commits as
            # well, the replay finds the record already stored.
            return await asyncio.wait_for(asyncio.shield(write), self._spool_after)
        except StoreUnavailable:
            return await self._to_spool(record)
        except TimeoutError:
            _log.warning("accounting_write_slow", bound=self._spool_after)
            return await self._to_spool(record)

    async def _to_spool(self, record: AcctRecord) -> Recorded:
        if not self._spool.busy:
            _log.warning("accounting_spooling_started")
        await self._spool.append(record)
        self.spooled += 1
        self._wake.set()
        return Recorded.SPOOLED

    async def close(self) -> None:
        """Stop the replay, wait for the spool's last fsync; the writer is closed by its owner."""
        self._closed = True
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        await self._spool.close()

    # -- replay -----------------------------------------------------------

    async def _replay_loop(self) -> None:
        delay = self._probe_initial
        probing = True  # until the database answers, send one record at a time
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._spool.pending:
                try:
                    ok = await self._replay_batch(1 if probing else self._batch_size)
                except Exception as exc:
                    _log.error("spool_replay_failed", error=type(exc).__name__)
                    ok = False
                if ok is None:
                    break  # counted but not readable yet: the next append wakes us
                if ok:
                    if probing and delay > self._probe_initial:
                        _log.info("spool_replay_resumed", pending=self._spool.pending)
                    probing = False
                    delay = self._probe_initial
                    continue
                if delay == self._probe_initial:
                    _log.warning("spool_replay_waiting", pending=self._spool.pending)
                probing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._probe_max)
            if self.replayed:
                _log.info("spool_drained", replayed_total=self.replayed)

    async def _replay_batch(self, limit: int) -> bool | None:
        """Replay up to ``limit`` records; True if every one of them reached the database,
        None if there was nothing to read."""
        entries = await self._spool.read(limit)
        if not entries:
            return None
        results: list[Recorded | BaseException] = await asyncio.gather(
            *(self._writer.record(e.record) for e in entries), return_exceptions=True
        )
        done = replayed_prefix(results)
        if done:
            await self._spool.advance(entries[done - 1])
            self.replayed += done
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, StoreUnavailable):
                _log.error("spool_replay_write_error", error=type(result).__name__)
                break
        return done == len(entries)


def _consume(future: asyncio.Future[Recorded]) -> None:
    # A write that outlived its caller's bound: fetch its outcome so a failure
    # is not reported as never retrieved; the spooled copy covers it.
    if not future.cancelled():
        future.exception()
