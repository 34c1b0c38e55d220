"""The subscriber directory for authentication: a blind-index keyed cache over PostgreSQL.

Implements ``aaa.ports.SubscriberDirectory``. Imports aaa, privacy and store;
never server or cli. Only this edge reads a clock (injected as ``clock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from ispcare_radius.aaa.model import Subscriber
from ispcare_radius.aaa.ports import MISS, Device, Miss, StoreUnavailable
from ispcare_radius.privacy.blind import normalize_user_name
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store import fields
from ispcare_radius.store.db import Connection, Pool, acquire, unavailable_as_store_error
from ispcare_radius.store.devices import (
    DeviceCache,
    device_blind,
    device_select,
    load_blocked,
    open_device_mac,
)
from ispcare_radius.store.fields import Column, LookupKind
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.plans import plan_from_record, plan_select_list
from ispcare_radius.store.subscribers import CHANGE_CHANNEL, audit, notify_changed

_log = get_logger(__name__)

_SELECT: Final = (
    "SELECT now() AS read_at, s.xmin::text AS version, l.blind, s.id, s.status,"
    " s.expires_at, s.account_ref,"
    " s.wrapped_key, s.user_name_enc, s.password_enc, s.static_ipv4_enc, s.static_ipv6_enc,"
    " s.mac_lock_enc, "
    + fields.credential_select("s")
    + ", "
    + fields.policy_select("s")
    + ", "
    + plan_select_list("p", "plan_")
    + " FROM subscriber_lookup l JOIN subscribers s ON s.id = l.subscriber_id"
    " LEFT JOIN plans p ON p.id = s.plan_id WHERE l.kind = 'user_name'"
)
# The same subscriber columns, found through a device MAC (kind 'device_mac').
_SELECT_BY_DEVICE: Final = device_select(_SELECT)
# Changes made without a NOTIFY (the billing system writes subscribers too);
# every writer sets updated_at = now() (migration 0003).
# One round trip, and one row (id NULL) when nothing changed.
_POLL: Final = (
    "SELECT n.polled_at, s.id, s.updated_at, s.xmin::text AS version"
    " FROM (SELECT now() AS polled_at) n"
    " LEFT JOIN subscribers s ON s.updated_at > $1"
)
# updated_at is the writer's transaction start, which can precede its commit:
# each poll looks this far behind the previous one, so a transaction that
# commits within this time after it started is still seen.
_POLL_OVERLAP: Final = timedelta(seconds=30)
_RELISTEN_DELAYS: Final = (1.0, 2.0, 5.0, 10.0, 30.0)


class _LockTaken(Exception):
    """The MAC is another subscriber's lock: roll the first-login bind back."""


class CachedSubscriberDirectory:
    """Subscribers by user name, cached in process and invalidated by NOTIFY hints and polls.

    A hit costs one HMAC and a dict lookup, no database round trip. A miss
    costs one query. Unknown names live in their own small cache
    (``negative_max_entries``, ``negative_ttl`` seconds) so a flood of random
    names neither reaches the database each time nor evicts real subscribers.
    The TTL bounds staleness even when a change hint is lost; a poll every
    ``poll_interval`` seconds (None: never) sees changes made without one.
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
        negative_max_entries: int = 10_000,
        poll_interval: float | None = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or negative_ttl < 0 or max_entries < 1 or negative_max_entries < 1:
            raise ValueError("ttl must be positive, negative_ttl >= 0, cache sizes >= 1")
        if poll_interval is not None and poll_interval <= 0:
            raise ValueError("poll_interval must be positive (or None for no polling)")
        self._pool = pool
        self._index = keys.blind_index
        self._data_keys = data_keys
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._negative_max = negative_max_entries
        self._poll_interval = poll_interval
        self._clock = clock
        # blind index -> (expires at, subscriber), least recently used first
        self._entries: OrderedDict[bytes, tuple[float, Subscriber]] = OrderedDict()
        self._by_id: dict[int, bytes] = {}
        # blind index -> expires at, for "no such user"; oldest first
        self._negative: dict[bytes, float] = {}
        self._generation = 0
        # Database time from which the next poll looks for changes; None
        # while nothing read from the database is cached.
        self._poll_since: datetime | None = None
        self._poll_seen: dict[int, datetime] = {}
        # Row version (xmin) of each cached subscriber as read: a poll that
        # returns the same version has nothing new, however recent updated_at.
        self._versions: dict[int, str] = {}
        self._listen_conn: Connection | None = None
        self._relisten_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._progress = asyncio.Condition()
        self._devices = DeviceCache(
            max_entries=max_entries, negative_max_entries=negative_max_entries
        )
        self.hits = 0
        self.misses = 0
        self.notifications = 0
        self.polls = 0
        self.mismatches = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def unknown_cached(self) -> int:
        """How many "no such user" answers are cached."""
        return len(self._negative)

    def peek(self, user_name: str) -> Subscriber | Miss | None:
        """From memory only: the subscriber, None if known not to exist, or ``MISS``.

        Lets the pipeline answer a cached subscriber without a task or a
        database round trip; ``MISS`` means ask ``by_user_name``.
        """
        name = normalize_user_name(user_name)
        return self._cached(fields.blind(self._index, LookupKind.USER_NAME, name))

    def _cached(self, blind: bytes) -> Subscriber | Miss | None:
        now = self._clock()
        entry = self._entries.get(blind)
        if entry is not None:
            if entry[0] > now:
                self._entries.move_to_end(blind)
                self.hits += 1
                return entry[1]
            self._forget(blind)
        unknown_until = self._negative.get(blind)
        if unknown_until is not None:
            if unknown_until > now:
                self.hits += 1
                return None
            del self._negative[blind]
        return MISS

    async def by_user_name(self, user_name: str) -> Subscriber | None:
        """The subscriber named ``user_name`` (normalised), or None; StoreUnavailable on failure."""
        name = normalize_user_name(user_name)
        blind = fields.blind(self._index, LookupKind.USER_NAME, name)
        cached = self._cached(blind)
        if not isinstance(cached, Miss):
            return cached
        now = self._clock()
        self.misses += 1
        generation = self._generation
        async with acquire(self._pool) as conn:
            record = await conn.fetchrow(f"{_SELECT} AND l.blind = $1", blind)
        subscriber = None if record is None else self._decode(record, name)
        # A change hinted while the query ran may not be in its answer.
        if generation == self._generation:
            if subscriber is not None:
                assert record is not None
                self._store(
                    blind, subscriber, now + self._ttl, record["read_at"], record["version"]
                )
            elif self._negative_ttl > 0:
                self._store_unknown(blind, now + self._negative_ttl)
        return subscriber

    def _decode(self, record: asyncpg.Record, name: bytes | None) -> Subscriber | None:
        """The subscriber of ``record``; None when its stored name is not the one looked up.

        ``name`` is the normalised name looked up; None (prewarm) checks the
        stored name against the row's blind index instead.
        """
        sid = int(record["id"])
        try:
            cipher = self._data_keys.cipher(sid, bytes(record["wrapped_key"]))
            stored = fields.unseal(cipher, Column.USER_NAME, sid, record["user_name_enc"])
            subscriber = fields.subscriber_from_record(
                record, cipher, plan_from_record(record, "plan_")
            )
        except DecryptError as exc:
            # Tampered rows or a missing master key version: storage cannot
            # answer truthfully, so the pipeline takes its fail-closed path.
            _log.error("subscriber_decrypt_failed", subscriber_id=sid, reason=exc.reason.value)
            raise StoreUnavailable("stored subscriber data could not be decrypted") from exc
        assert stored is not None  # user_name_enc is NOT NULL
        # The lookup row is not sealed: one repointed to another subscriber
        # must not hand out that subscriber's row under this name.
        stored_name = normalize_user_name(stored.decode("utf-8"))
        if name is None:
            same = hmac.compare_digest(
                fields.blind(self._index, LookupKind.USER_NAME, stored_name),
                bytes(record["blind"]),
            )
        else:
            same = hmac.compare_digest(stored_name, name)
        if not same:
            self.mismatches += 1
            _log.warning("subscriber_lookup_mismatch", subscriber_id=sid)
            return None
        return subscriber

    def _store(
        self,
        blind: bytes,
        subscriber: Subscriber,
        expires: float,
        read_at: datetime,
        version: str,
    ) -> None:
        self._forget(blind)
        self._entries[blind] = (expires, subscriber)
        self._by_id[subscriber.id] = blind
        self._versions[subscriber.id] = version
        if self._poll_since is None:
            self._poll_since = read_at
        while len(self._entries) > self._max:
            old_blind, (_, old) = self._entries.popitem(last=False)
            if self._by_id.get(old.id) == old_blind:
                del self._by_id[old.id]
                self._versions.pop(old.id, None)

    def _store_unknown(self, blind: bytes, expires: float) -> None:
        self._negative.pop(blind, None)
        self._negative[blind] = expires
        if len(self._negative) > self._negative_max:
            del self._negative[next(iter(self._negative))]

    def _forget(self, blind: bytes) -> None:
        entry = self._entries.pop(blind, None)
        if entry is not None and self._by_id.get(entry[1].id) == blind:
            del self._by_id[entry[1].id]
            self._versions.pop(entry[1].id, None)

    def invalidate(self, subscriber_id: int) -> None:
        """Drop ``subscriber_id``, its data key and every cached "no such user" answer.

        Constant time: the entry is found through its id, and the unknown
        names go by swapping their dict for an empty one.
        """
        self._generation += 1
        blind = self._by_id.get(subscriber_id)
        if blind is not None:
            self._forget(blind)
        # An erased subscriber's key must not outlive the erasure in memory.
        self._data_keys.discard(subscriber_id)
        # A new or renamed subscriber may match a name cached as unknown.
        if self._negative:
            self._negative = {}
        self._devices.drop_subscriber(subscriber_id)

    def clear(self) -> None:
        """Drop every cached entry and data key."""
        self._generation += 1
        self._entries.clear()
        self._by_id.clear()
        self._negative = {}
        self._devices.clear()
        self._data_keys.clear()
        self._poll_since = None
        self._poll_seen.clear()
        self._versions.clear()

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
        loaded = 0
        for record in records:
            subscriber = self._decode(record, None)
            if subscriber is not None:
                self._store(
                    bytes(record["blind"]),
                    subscriber,
                    now + self._ttl,
                    record["read_at"],
                    record["version"],
                )
                loaded += 1
        return loaded

    # --- devices (MAC authentication) and the blocked-MAC list ---------------

    def peek_mac(self, mac: bytes) -> Device | Miss | None:
        """From memory only: the device with this MAC, None if known unknown, or ``MISS``."""
        return self._devices.get(device_blind(self._index, mac), self._clock())

    async def by_mac(self, mac: bytes) -> Device | None:
        """The device with this 6-byte MAC and its subscriber, or None; StoreUnavailable."""
        blind = device_blind(self._index, mac)
        cached = self._devices.get(blind, self._clock())
        if not isinstance(cached, Miss):
            return cached
        now = self._clock()
        generation = self._generation
        async with acquire(self._pool) as conn:
            record = await conn.fetchrow(f"{_SELECT_BY_DEVICE} AND l.blind = $1", blind)
        device = None if record is None else self._decode_device(record, mac)
        if generation == self._generation:
            if device is not None:
                self._devices.put(blind, device, now + self._ttl)
                if self._poll_since is None:
                    assert record is not None
                    self._poll_since = record["read_at"]
            elif self._negative_ttl > 0:
                self._devices.put_unknown(blind, now + self._negative_ttl)
        return device

    def _decode_device(self, record: asyncpg.Record, mac: bytes) -> Device | None:
        sid = int(record["id"])
        try:
            cipher = self._data_keys.cipher(sid, bytes(record["wrapped_key"]))
            subscriber = fields.subscriber_from_record(
                record, cipher, plan_from_record(record, "plan_")
            )
            stored, raw = open_device_mac(
                cipher, record["device_id"], sid, bytes(record["device_mac_enc"])
            )
        except (DecryptError, ValueError) as exc:
            _log.error("device_decrypt_failed", subscriber_id=sid, error=type(exc).__name__)
            raise StoreUnavailable("stored device data could not be decrypted") from exc
        # The lookup and blind columns are not sealed; the sealed MAC decides.
        if not hmac.compare_digest(stored, mac):
            self.mismatches += 1
            _log.warning("device_lookup_mismatch", subscriber_id=sid)
            return None
        return Device(id=record["device_id"], subscriber=subscriber, mac=stored, raw=raw)

    def peek_blocked(self, mac: bytes) -> bool | Miss:
        """From memory only: whether this MAC is blocked, or ``MISS``."""
        return self._devices.blocked(device_blind(self._index, mac), self._clock())

    async def is_blocked(self, mac: bytes) -> bool:
        """Whether this 6-byte MAC is blocked; reloads the list once it is ``ttl`` old."""
        blind = device_blind(self._index, mac)
        cached = self._devices.blocked(blind, self._clock())
        if not isinstance(cached, Miss):
            return cached
        now = self._clock()
        generation = self._generation
        async with acquire(self._pool) as conn:
            blocked = await load_blocked(conn)
        if generation == self._generation:
            self._devices.set_blocked(blocked, now + self._ttl)
        return blind in blocked

    # --- MAC binding on first login (aaa.ports.MacBinder) -------------------

    async def bind_first_mac(self, subscriber_id: int, mac: bytes) -> bool:
        """Make ``mac`` the lock of a ``first_login`` subscriber without one; see ``MacBinder``.

        The UPDATE's ``mac_lock_enc IS NULL`` condition is the race guard:
        PostgreSQL re-checks it after waiting for a concurrent binder's row
        lock, so only one first login binds. The lock's blind index goes into
        ``subscriber_lookup`` like an operator-set lock; a MAC that is already
        another subscriber's lock rolls the bind back. The cached entry is
        dropped at once (the NOTIFY tells other processes).
        """
        sid = subscriber_id
        blind = fields.blind(self._index, LookupKind.MAC_LOCK, mac)
        async with acquire(self._pool) as conn:
            # The stored key, not a cached one: a re-encryption may have replaced
            # it; the UPDATE below only binds if it is still the same key.
            wrapped = await conn.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
            if wrapped is None:
                return False
            cipher = self._data_keys.cipher(sid, bytes(wrapped))
            sealed = fields.seal(cipher, Column.MAC_LOCK, sid, mac)
            bound = False
            try:
                async with conn.transaction():
                    bound = (
                        await conn.fetchval(
                            "UPDATE subscribers SET mac_lock_enc = $2, updated_at = now()"
                            " WHERE id = $1 AND mac_binding = 'first_login'"
                            " AND mac_lock_enc IS NULL AND wrapped_key = $3 RETURNING true",
                            sid,
                            sealed,
                            bytes(wrapped),
                        )
                        or False
                    )
                    if bound:
                        indexed = await conn.fetchval(
                            "INSERT INTO subscriber_lookup (kind, blind, subscriber_id)"
                            " VALUES ('mac_lock', $1, $2) ON CONFLICT DO NOTHING RETURNING true",
                            blind,
                            sid,
                        )
                        if not indexed:
                            raise _LockTaken
                        await audit(conn, "radius", "subscriber.mac_bound", sid, {})
                        await notify_changed(conn, sid)
            except _LockTaken:
                _log.warning("mac_bind_refused_lock_in_use", subscriber_id=sid)
                return False
            if bound:
                self.invalidate(sid)
                _log.info("mac_bound_on_first_login", subscriber_id=sid)
                return True
            # Someone bound first (or the binding changed): compare with theirs.
            current = await conn.fetchval("SELECT mac_lock_enc FROM subscribers WHERE id = $1", sid)
        self.invalidate(sid)
        try:
            stored = fields.unseal(cipher, Column.MAC_LOCK, sid, current)
        except DecryptError as exc:
            raise StoreUnavailable("stored MAC lock could not be decrypted") from exc
        return stored is not None and hmac.compare_digest(stored, mac)

    # --- changes made without a hint ----------------------------------------

    async def poll_changes(self) -> int:
        """One poll for subscribers changed since the last one; return how many were dropped."""
        since = self._poll_since
        if since is None:
            return 0  # nothing read from the database is cached
        async with acquire(self._pool) as conn:
            rows = await conn.fetch(_POLL, since - _POLL_OVERLAP)
        polled_at: datetime = rows[0]["polled_at"]
        changed = 0
        for row in rows:
            if row["id"] is None:
                continue
            sid, updated = int(row["id"]), row["updated_at"]
            if self._versions.get(sid) == row["version"]:
                continue  # the cached copy is this very row version
            # The overlap returns recent rows again: drop each change once.
            if self._poll_seen.get(sid) != updated:
                self._poll_seen[sid] = updated
                self.invalidate(sid)
                changed += 1
        # clear() meanwhile means nothing older is cached: keep its reset.
        if self._poll_since is not None:
            self._poll_since = max(self._poll_since, polled_at)
            horizon = self._poll_since - _POLL_OVERLAP
            self._poll_seen = {k: v for k, v in self._poll_seen.items() if v > horizon}
        self.polls += 1
        await self._signal()
        return changed

    async def _poll_loop(self, interval: float) -> None:
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await self.poll_changes()
            except StoreUnavailable:
                _log.warning("directory_poll_failed", retry_in=interval)
            except Exception as exc:  # the loop must outlive one bad poll
                _log.error("directory_poll_error", error=type(exc).__name__)

    # --- change notifications (hints only) ---------------------------------

    async def start_listening(self) -> None:
        """LISTEN for change hints on a dedicated pooled connection, and start polling."""
        self._stopping = False
        await self._listen()
        if self._poll_interval is not None and self._poll_task is None:
            loop = asyncio.get_running_loop()
            self._poll_task = loop.create_task(self._poll_loop(self._poll_interval))

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
        async with self._progress:
            self._progress.notify_all()

    async def wait_for_notifications(self, count: int) -> None:
        """Return once at least ``count`` change hints have been applied."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.notifications >= count)

    async def wait_for_polls(self, count: int) -> None:
        """Return once at least ``count`` polls have completed."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.polls >= count)

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
        """Stop polling and listening, and give the connection back to the pool."""
        self._stopping = True
        for task in (self._relisten_task, self._poll_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._relisten_task = self._poll_task = None
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
