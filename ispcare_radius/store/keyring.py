"""System and epoch keys kept wrapped in PostgreSQL, and the cache of unwrapped
subscriber data keys (DESIGN.md section 5).

Imports privacy (crypto, blind, keys) and store.db; never server or cli.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from ispcare_radius.privacy.blind import BlindIndex, Pseudonymizer
from ispcare_radius.privacy.crypto import (
    KEY_BYTES,
    DecryptError,
    DecryptFailure,
    FieldCipher,
    key_version,
    new_data_key,
    unwrap_key,
    unwrap_payload,
    wrap_key,
    wrap_payload,
)
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire

_log = get_logger(__name__)

# A subscriber's first data key is version 1; each re-encryption adds one.
# The version is written in the header of every blob the key seals.
DATA_KEY_VERSION: Final = 1
# Epoch keys of earlier releases (one key, in system_keys) are the period
# 'legacy-v<version>' and keep the wrap purpose they were made with.
LEGACY_EPOCH_PREFIX: Final = "legacy-v"


class SystemKeyName(StrEnum):
    """The long-lived keys not tied to one subscriber, one row each in system_keys.

    Epoch keys are not here: they change every period (table epoch_keys).
    """

    BLIND_INDEX = "blind_index"
    PSEUDONYM = "pseudonym"
    NAS = "nas"


@dataclass(frozen=True, slots=True)
class EpochPeriod:
    """One calendar month (UTC) with its own epoch key; ``version`` is YYYYMM."""

    name: str
    version: int
    starts_at: datetime
    ends_at: datetime


def epoch_period(at: datetime) -> EpochPeriod:
    """The period holding ``at`` (a timezone-aware time)."""
    if at.tzinfo is None:
        raise ValueError("epoch periods need a timezone-aware time")
    utc = at.astimezone(UTC)
    start = datetime(utc.year, utc.month, 1, tzinfo=UTC)
    end = datetime(utc.year + utc.month // 12, utc.month % 12 + 1, 1, tzinfo=UTC)
    return EpochPeriod(f"{utc.year:04d}-{utc.month:02d}", utc.year * 100 + utc.month, start, end)


def epoch_key_purpose(period: str) -> str:
    """The wrap purpose of a period's epoch key; legacy keys keep their old one."""
    if period.startswith(LEGACY_EPOCH_PREFIX):
        return _purpose("epoch")
    return f"epoch:{period}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class EpochKey:
    """One unwrapped epoch key and the period it seals in."""

    starts_at: datetime
    ends_at: datetime
    cipher: FieldCipher

    def __repr__(self) -> str:
        return f"EpochKey(version={self.cipher.version})"


class EpochCipher(FieldCipher):
    """The epoch keys held by this process: seals under the current period's key,
    opens under whichever key the blob's header names.

    A ``FieldCipher`` to its callers, so writers keep calling ``seal`` and
    readers ``open``. The set of keys is replaced by ``refresh_epoch_keys``:
    the next period's key is loaded ahead, so a month boundary needs no
    database, and a destroyed key disappears at the next refresh.
    """

    __slots__ = ("_clock", "_keys", "_starts")

    def __init__(
        self,
        keys: Iterable[EpochKey],
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._clock = clock
        self._keys: dict[int, FieldCipher] = {}
        self._starts: list[EpochKey] = []
        self.replace_keys(keys)

    def replace_keys(self, keys: Iterable[EpochKey]) -> None:
        """Hold exactly ``keys`` from now on."""
        entries = sorted(keys, key=lambda entry: (entry.starts_at, entry.cipher.version))
        if not entries:
            raise ValueError("an epoch cipher needs at least one key")
        self._starts = entries
        self._keys = {entry.cipher.version: entry.cipher for entry in entries}

    def versions(self) -> list[int]:
        """The epoch key versions this process can open."""
        return sorted(self._keys)

    def _current(self) -> FieldCipher:
        now = self._clock()
        live = [e for e in self._starts if e.starts_at <= now < e.ends_at]
        if live:  # the legacy key may overlap the first month: the month wins
            return max(live, key=lambda e: e.cipher.version).cipher
        started = [e for e in self._starts if e.starts_at <= now]
        # Past every period (refresh overdue): the newest; before all: the first.
        return (started[-1] if started else self._starts[0]).cipher

    def __repr__(self) -> str:
        return f"EpochCipher(versions={self.versions()})"

    @property
    def version(self) -> int:
        """The version ``seal`` writes now."""
        return self._current().version

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Seal under the key of the current period."""
        return self._current().seal(plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Open under the key the blob names; ``DecryptError`` (key_version) if it is gone."""
        cipher = self._keys.get(key_version(blob))
        if cipher is None:
            raise DecryptError(DecryptFailure.KEY_VERSION)
        return cipher.open(blob, aad)


@dataclass(frozen=True, slots=True)
class SystemKeys:
    """Unwrapped system keys, ready to use; built once at start."""

    blind_index: BlindIndex
    pseudonymizer: Pseudonymizer
    nas: FieldCipher
    epoch: EpochCipher

    def __repr__(self) -> str:
        return "SystemKeys(***)"


def _purpose(name: str) -> str:
    return f"system:{name}"


def subscriber_key_purpose(subscriber_id: int) -> str:
    """The wrap purpose binding a data key to its subscriber."""
    return f"subscriber:{subscriber_id}"


_VERSION_SUFFIX: Final = struct.Struct(">I")


def wrap_data_key(masters: MasterKeys, subscriber_id: int, key: bytes, version: int) -> bytes:
    """A subscriber's data key wrapped under the primary KEK, with its version.

    Version 1 wraps the bare 32-byte key (as every key made before
    re-encryption existed); later versions append the version (uint32), so
    the wrapped blob alone says which version the key writes into its blobs
    and every reader of ``wrapped_key`` builds the right cipher.
    """
    if not 1 <= version <= 0xFFFFFFFF:
        raise ValueError("data key version out of range")
    payload = key if version == DATA_KEY_VERSION else key + _VERSION_SUFFIX.pack(version)
    return wrap_payload(masters, payload, purpose=subscriber_key_purpose(subscriber_id))


def unwrap_data_key(masters: MasterKeys, subscriber_id: int, wrapped: bytes) -> FieldCipher:
    """The cipher of a data key wrapped by ``wrap_data_key``."""
    payload = unwrap_payload(masters, wrapped, purpose=subscriber_key_purpose(subscriber_id))
    if len(payload) == KEY_BYTES:
        return FieldCipher(payload, DATA_KEY_VERSION)
    if len(payload) == KEY_BYTES + _VERSION_SUFFIX.size:
        (version,) = _VERSION_SUFFIX.unpack_from(payload, KEY_BYTES)
        if version > DATA_KEY_VERSION:
            return FieldCipher(payload[:KEY_BYTES], version)
    raise DecryptError(DecryptFailure.BAD_KEY_LENGTH)


def new_wrapped_data_key(
    masters: MasterKeys, subscriber_id: int, version: int = DATA_KEY_VERSION
) -> tuple[bytes, FieldCipher]:
    """A fresh data key of ``version``: (wrapped blob to store, cipher)."""
    key = new_data_key()
    return wrap_data_key(masters, subscriber_id, key, version), FieldCipher(key, version)


async def _current_wrapped(conn: Connection) -> dict[str, tuple[int, bytes]]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (name) name, version, wrapped FROM system_keys"
        " ORDER BY name, version DESC"
    )
    return {str(r["name"]): (int(r["version"]), bytes(r["wrapped"])) for r in rows}


async def load_system_keys(
    pool: Pool,
    masters: MasterKeys,
    *,
    clock: Callable[[], datetime] = _utc_now,
) -> SystemKeys:
    """Unwrap the newest version of each system key and every epoch key, creating
    missing ones (the epoch keys of the current and the next period).

    Creation is race-safe: every process inserts with ``ON CONFLICT DO
    NOTHING`` and then re-reads, so all of them end up with the same key.
    ``clock`` tells the epoch cipher which period it is in.
    """
    async with acquire(pool) as conn:
        epochs = await load_epoch_keys(conn, masters, now=clock())
        current = await _current_wrapped(conn)
        missing = [name for name in SystemKeyName if name.value not in current]
        for name in missing:
            wrapped = wrap_key(masters, new_data_key(), purpose=_purpose(name.value))
            await conn.execute(
                "INSERT INTO system_keys (name, version, wrapped) VALUES ($1, 1, $2)"
                " ON CONFLICT DO NOTHING",
                name.value,
                wrapped,
            )
        if missing:
            current = await _current_wrapped(conn)
    plain: dict[SystemKeyName, tuple[int, bytes]] = {}
    for name in SystemKeyName:
        version, wrapped = current[name.value]
        plain[name] = (version, unwrap_key(masters, wrapped, purpose=_purpose(name.value)))
    return SystemKeys(
        blind_index=BlindIndex(plain[SystemKeyName.BLIND_INDEX][1]),
        pseudonymizer=Pseudonymizer(plain[SystemKeyName.PSEUDONYM][1]),
        nas=FieldCipher(plain[SystemKeyName.NAS][1], plain[SystemKeyName.NAS][0]),
        epoch=EpochCipher(epochs, clock=clock),
    )


async def _ensure_epoch_key(conn: Connection, masters: MasterKeys, period: EpochPeriod) -> None:
    exists = await conn.fetchval("SELECT 1 FROM epoch_keys WHERE version = $1", period.version)
    if exists:
        return
    wrapped = wrap_key(masters, new_data_key(), purpose=epoch_key_purpose(period.name))
    await conn.execute(
        "INSERT INTO epoch_keys (version, period, starts_at, ends_at, wrapped)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        period.version,
        period.name,
        period.starts_at,
        period.ends_at,
        wrapped,
    )


async def load_epoch_keys(
    conn: Connection, masters: MasterKeys, *, now: datetime
) -> list[EpochKey]:
    """Every epoch key still stored, unwrapped; the keys of the period of ``now``
    and of the next one are created first if missing."""
    current = epoch_period(now)
    for period in (current, epoch_period(current.ends_at)):
        await _ensure_epoch_key(conn, masters, period)
    rows = await conn.fetch("SELECT version, period, starts_at, ends_at, wrapped FROM epoch_keys")
    keys: list[EpochKey] = []
    for row in rows:
        version, name = int(row["version"]), str(row["period"])
        key = unwrap_key(masters, bytes(row["wrapped"]), purpose=epoch_key_purpose(name))
        keys.append(EpochKey(row["starts_at"], row["ends_at"], FieldCipher(key, version)))
    return keys


async def refresh_epoch_keys(
    pool: Pool, masters: MasterKeys, epoch: EpochCipher, *, now: datetime
) -> list[int]:
    """Reload the epoch keys into ``epoch`` (creating the current and next period's
    keys if missing) and return the versions now held.

    A long-running server calls this periodically (hourly is plenty: the next
    period's key is created a whole period ahead); pass ``DataKeyCache.masters``
    so that a key file re-read after a KEK rotation is used.
    """
    async with acquire(pool) as conn:
        keys = await load_epoch_keys(conn, masters, now=now)
    epoch.replace_keys(keys)
    return epoch.versions()


async def destroy_expired_epoch_keys(pool: Pool, *, now: datetime, keep_days: int) -> list[str]:
    """Destroy the epoch keys whose period ended more than ``keep_days`` ago; return
    their period names.

    ``keep_days`` must cover the longest retention of epoch-sealed data: what
    those keys sealed becomes unreadable for good (crypto-shredding), in
    backups too once the KEK versions that wrapped them are retired. The
    current period's key never expires. Each destruction is audited.
    """
    if keep_days < 0:
        raise ValueError("keep_days must not be negative")
    cutoff = now - timedelta(days=keep_days)
    async with acquire(pool) as conn, conn.transaction():
        rows = await conn.fetch(
            "DELETE FROM epoch_keys WHERE ends_at <= $1 AND ends_at <= $2"
            " RETURNING period, version",
            cutoff,
            now,
        )
        periods = sorted(str(r["period"]) for r in rows)
        if periods:
            await conn.execute(
                "INSERT INTO audit_log (actor, action, detail) VALUES ('system', $1, $2)",
                "keys.epoch_destroy",
                {"periods": periods, "keep_days": keep_days},
            )
    for period in periods:
        _log.info("epoch_key_destroyed", period=period)
    return periods


class DataKeyCache:
    """Bounded LRU of unwrapped per-subscriber data keys, as ready ciphers.

    Entries are keyed by subscriber id and checked against the wrapped blob,
    so a re-wrapped or replaced key is never served stale. The wrapped blob
    also carries the data-key version (see ``wrap_data_key``), so the cipher
    always writes the version of the key it holds.

    KEK rotation: ``keys rotate`` adds the new master key version to the key
    file before it re-wraps anything. Given ``reload`` (a function reading the
    key file again), a cache that meets a wrapped key naming a master key
    version it has not loaded re-reads the file, at most once per
    ``reload_interval`` seconds, and carries on: a running server needs no
    restart around a rotation. Without ``reload`` it must be restarted after
    the new version is in the file and before the rotation re-wraps.
    """

    def __init__(
        self,
        masters: MasterKeys,
        max_entries: int = 100_000,
        *,
        reload: Callable[[], MasterKeys] | None = None,
        reload_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._masters = masters
        self._max = max_entries
        self._entries: OrderedDict[int, tuple[bytes, FieldCipher]] = OrderedDict()
        self._reload = reload
        self._reload_interval = reload_interval
        self._clock = clock
        self._reloaded_at: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DataKeyCache(entries={len(self._entries)}, max_entries={self._max})"

    @property
    def masters(self) -> MasterKeys:
        """The master keys in use now (re-read from the key file after a rotation)."""
        return self._masters

    def unwrap(self, subscriber_id: int, wrapped: bytes) -> FieldCipher:
        """Unwrap a subscriber's data key under the current master keys, re-reading
        them once if the blob names a version not loaded (see the class docstring)."""
        try:
            return unwrap_data_key(self._masters, subscriber_id, wrapped)
        except DecryptError as exc:
            if exc.reason is not DecryptFailure.KEY_VERSION or not self._try_reload():
                raise
        return unwrap_data_key(self._masters, subscriber_id, wrapped)

    def reload_masters(self) -> bool:
        """Re-read the master keys now (rate-limited like an on-demand reload);
        whether they were re-read.

        Call from a periodic job: until a process meets a key wrapped under a
        new version it keeps its old primary, and would wrap new keys (epoch
        keys, spool segments) under a version about to be retired.
        """
        return self._try_reload()

    def _try_reload(self) -> bool:
        if self._reload is None:
            return False
        now = self._clock()
        if self._reloaded_at is not None and now - self._reloaded_at < self._reload_interval:
            return False
        self._reloaded_at = now
        try:
            masters = self._reload()
        except Exception as exc:  # a broken key file must not take serving down
            _log.error("master_keys_reload_failed", error=type(exc).__name__)
            return False
        self._masters = masters
        _log.info("master_keys_reloaded", versions=sorted(masters.keys))
        return True

    def new_key(
        self, subscriber_id: int, version: int = DATA_KEY_VERSION
    ) -> tuple[bytes, FieldCipher]:
        """A fresh data key for ``subscriber_id``: (wrapped blob to store, cipher)."""
        wrapped, cipher = new_wrapped_data_key(self._masters, subscriber_id, version)
        self._put(subscriber_id, wrapped, cipher)
        return wrapped, cipher

    def cipher(self, subscriber_id: int, wrapped: bytes) -> FieldCipher:
        """The cipher for ``subscriber_id`` whose stored wrapped key is ``wrapped``."""
        entry = self._entries.get(subscriber_id)
        if entry is not None and entry[0] == wrapped:
            self._entries.move_to_end(subscriber_id)
            return entry[1]
        cipher = self.unwrap(subscriber_id, wrapped)
        self._put(subscriber_id, wrapped, cipher)
        return cipher

    def cached(self, subscriber_id: int) -> FieldCipher | None:
        """The cached cipher of ``subscriber_id``, if any, without unwrapping.

        It may be stale after a re-encryption: a writer sealing with it must
        check ``data_key_version`` (the cipher's ``version``) in its UPDATE.
        """
        entry = self._entries.get(subscriber_id)
        if entry is None:
            return None
        self._entries.move_to_end(subscriber_id)
        return entry[1]

    def discard(self, subscriber_id: int) -> None:
        """Forget the key of ``subscriber_id`` (after erasure)."""
        self._entries.pop(subscriber_id, None)

    def clear(self) -> None:
        """Forget every key (when erasure hints may have been missed)."""
        self._entries.clear()

    def _put(self, subscriber_id: int, wrapped: bytes, cipher: FieldCipher) -> None:
        self._entries[subscriber_id] = (wrapped, cipher)
        self._entries.move_to_end(subscriber_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


async def live_subscriber_ciphers(
    conn: Connection, data_keys: DataKeyCache, ids: Iterable[int | None]
) -> tuple[dict[int, FieldCipher], set[int]]:
    """Data-key ciphers of the subscribers in ``ids`` that still exist, and the
    ids whose key would not unwrap.

    A key still cached is no proof of life: an erasure made by another process
    leaves it in this one. Call inside the writing transaction: the rows are
    locked FOR KEY SHARE, so an erasure either commits before this check or
    waits for the write to commit and then deletes its rows too. The same
    lock orders the write with a data-key re-encryption (which locks the row
    FOR UPDATE): the write seals with the key the row holds when it commits.
    """
    wanted = sorted({sid for sid in ids if sid})
    ciphers: dict[int, FieldCipher] = {}
    unreadable: set[int] = set()
    if not wanted:
        return ciphers, unreadable
    rows = await conn.fetch(
        "SELECT id, wrapped_key FROM subscribers WHERE id = ANY($1::bigint[])"
        " ORDER BY id FOR KEY SHARE",
        wanted,
    )
    for row in rows:
        sid = int(row["id"])
        try:
            ciphers[sid] = data_keys.cipher(sid, bytes(row["wrapped_key"]))
        except (DecryptError, KeyError) as exc:
            _log.error("subscriber_key_unreadable", subscriber_id=sid, error=type(exc).__name__)
            unreadable.add(sid)
    return ciphers, unreadable
