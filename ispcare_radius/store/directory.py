"""The subscriber directory for authentication: a blind-index keyed cache over PostgreSQL.

Implements ``aaa.ports.SubscriberDirectory``. Imports aaa, privacy and store;
never server or cli. Only this edge reads a clock (injected as ``clock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import asyncpg

from ispcare_radius.aaa.model import Subscriber
from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store import fields
from ispcare_radius.store.db import Connection, Pool, acquire, unavailable_as_store_error
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.plans import plan_from_record, plan_select_list
from ispcare_radius.store.subscribers import CHANGE_CHANNEL

_log = get_logger(__name__)

_SELECT: Final = (
    "SELECT l.blind, s.id, s.status, s.expires_at, s.account_ref, s.wrapped_key,"
    " s.password_enc, s.static_ipv4_enc, s.static_ipv6_enc, s.mac_lock_enc, "
    + plan_select_list("p", "plan_")
    + " FROM subscriber_lookup l JOIN subscribers s ON s.id = l.subscriber_id"
    " LEFT JOIN plans p ON p.id = s.plan_id WHERE l.kind = 'user_name'"
)
_RELISTEN_DELAYS: Final = (1.0, 2.0, 5.0, 10.0, 30.0)


class CachedSubscriberDirectory:
    """Subscribers by user name, cached in process and invalidated by NOTIFY hints.

    A hit costs one HMAC and a dict lookup, no database round trip. A miss
    costs one query. Unknown names are cached for ``negative_ttl`` seconds
    so a flood of unknown users does not reach the database each time. The
    TTL bounds staleness even when a change notification is lost.
    """

    def __init__(
        self,
        pool: Pool,
        keys: SystemKeys,
        data_keys: DataKeyCache,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or negative_ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be positive, negative_ttl >= 0, max_entries >= 1")
        self._pool = pool
        self._index = keys.blind_index
        self._data_keys = data_keys
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._clock = clock
        # blind index -> (expires at, subscriber or None for "no such user")
        self._entries: OrderedDict[bytes, tuple[float, Subscriber | None]] = OrderedDict()
        self._by_id: dict[int, bytes] = {}
        self._generation = 0
        self._listen_conn: Connection | None = None
        self._relisten_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._notified = asyncio.Condition()
        self.hits = 0
        self.misses = 0
        self.notifications = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        """The subscriber named ``user_name`` (normalised), or None; StoreUnavailable on failure."""
        blind = fields.user_name_blind(self._index, user_name)
        now = self._clock()
        entry = self._entries.get(blind)
        if entry is not None:
            if entry[0] > now:
                self._entries.move_to_end(blind)
                self.hits += 1
                return entry[1]
            self._forget(blind)
        self.misses += 1
        generation = self._generation
        async with acquire(self._pool) as conn:
            record = await conn.fetchrow(f"{_SELECT} AND l.blind = $1", blind)
        subscriber = None if record is None else self._decode(record)
        # A change notified while the query ran may not be in its answer.
        if generation == self._generation:
            ttl = self._ttl if subscriber is not None else self._negative_ttl
            if ttl > 0:
                self._store(blind, subscriber, now + ttl)
        return subscriber

    def _decode(self, record: asyncpg.Record) -> Subscriber:
        sid = int(record["id"])
        try:
            cipher = self._data_keys.cipher(sid, bytes(record["wrapped_key"]))
            return fields.subscriber_from_record(record, cipher, plan_from_record(record, "plan_"))
        except DecryptError as exc:
            # Tampered rows or a missing master key version: storage cannot
            # answer truthfully, so the pipeline takes its fail-closed path.
            _log.error("subscriber_decrypt_failed", subscriber_id=sid, reason=exc.reason.value)
            raise StoreUnavailable("stored subscriber data could not be decrypted") from exc

    def _store(self, blind: bytes, subscriber: Subscriber | None, expires: float) -> None:
        self._forget(blind)
        self._entries[blind] = (expires, subscriber)
        if subscriber is not None:
            self._by_id[subscriber.id] = blind
        while len(self._entries) > self._max:
            old_blind, (_, old) = self._entries.popitem(last=False)
            if old is not None and self._by_id.get(old.id) == old_blind:
                del self._by_id[old.id]

    def _forget(self, blind: bytes) -> None:
        entry = self._entries.pop(blind, None)
        if entry is not None and entry[1] is not None and self._by_id.get(entry[1].id) == blind:
            del self._by_id[entry[1].id]

    def invalidate(self, subscriber_id: int) -> None:
        """Drop ``subscriber_id`` and every cached "no such user" answer."""
        self._generation += 1
        blind = self._by_id.get(subscriber_id)
        if blind is not None:
            self._forget(blind)
        # A new or renamed subscriber may match a name cached as unknown.
        for key in [k for k, (_, s) in self._entries.items() if s is None]:
            del self._entries[key]

    def clear(self) -> None:
        """Drop every cached entry."""
        self._generation += 1
        self._entries.clear()
        self._by_id.clear()

    async def prewarm(self, limit: int | None = None) -> int:
        """Load up to ``limit`` active subscribers in one query; return how many."""
        now = self._clock()
        generation = self._generation
        async with acquire(self._pool, timeout=30.0) as conn:
            records = await conn.fetch(
                f"{_SELECT} AND s.status = 'active' ORDER BY s.id LIMIT $1", limit, timeout=300.0
            )
        if generation != self._generation:
            return 0
        for record in records:
            self._store(bytes(record["blind"]), self._decode(record), now + self._ttl)
        return len(records)

    # --- change notifications (hints only) ---------------------------------

    async def start_listening(self) -> None:
        """LISTEN for change hints on a dedicated pooled connection."""
        self._stopping = False
        await self._listen()

    async def _listen(self) -> None:
        with unavailable_as_store_error(self._pool):
            conn: Connection = await self._pool.acquire(timeout=5.0)
            try:
                await conn.add_listener(CHANGE_CHANNEL, self._on_notify)
            except BaseException:
                await self._pool.release(conn)
                raise
        conn.add_termination_listener(self._on_terminated)
        self._listen_conn = conn
        # Changes made while not listening were missed: start from scratch.
        self.clear()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        try:
            self.invalidate(int(str(payload)))
        except ValueError:
            self.clear()
        self.notifications += 1
        asyncio.get_running_loop().create_task(self._signal())

    async def _signal(self) -> None:
        async with self._notified:
            self._notified.notify_all()

    async def wait_for_notifications(self, count: int) -> None:
        """Return once at least ``count`` change hints have been applied."""
        async with self._notified:
            await self._notified.wait_for(lambda: self.notifications >= count)

    def _on_terminated(self, conn: object) -> None:
        # Hints may be lost from now on: drop everything, then listen again.
        self.clear()
        dead, self._listen_conn = self._listen_conn, None
        if not self._stopping and self._relisten_task is None:
            loop = asyncio.get_running_loop()
            self._relisten_task = loop.create_task(self._relisten(dead))

    async def _relisten(self, dead: Connection | None) -> None:
        try:
            if dead is not None:
                await self._release(dead)
            for delay in itertools.chain(_RELISTEN_DELAYS, itertools.repeat(_RELISTEN_DELAYS[-1])):
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    await self._listen()
                except StoreUnavailable:
                    _log.warning("directory_relisten_failed", retry_in=delay)
                    continue
                _log.info("directory_listening_again")
                return
        finally:
            self._relisten_task = None

    async def _release(self, conn: Connection) -> None:
        try:
            await self._pool.release(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            _log.debug("directory_listen_release_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        """Stop listening and give the connection back to the pool."""
        self._stopping = True
        task, self._relisten_task = self._relisten_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._listen_conn = self._listen_conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._on_terminated)
        if not conn.is_closed():
            try:
                await conn.remove_listener(CHANGE_CHANNEL, self._on_notify)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                _log.debug("directory_unlisten_failed", error=type(exc).__name__)
        await self._release(conn)
