"""System keys kept wrapped in PostgreSQL, and the cache of unwrapped subscriber data keys.

Imports privacy (crypto, blind, keys) and store.db; never server or cli.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from ispcare_radius.privacy.blind import BlindIndex, Pseudonymizer
from ispcare_radius.privacy.crypto import (
    DecryptError,
    FieldCipher,
    new_data_key,
    unwrap_key,
    wrap_key,
)
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store.db import Connection, Pool, acquire

_log = get_logger(__name__)

# Data keys are versioned for a later data-key rotation; all start at 1.
DATA_KEY_VERSION = 1


class SystemKeyName(StrEnum):
    """The long-lived keys not tied to one subscriber, one row each in system_keys."""

    BLIND_INDEX = "blind_index"
    PSEUDONYM = "pseudonym"
    NAS = "nas"
    EPOCH = "epoch"


@dataclass(frozen=True, slots=True)
class SystemKeys:
    """Unwrapped system keys, ready to use; built once at start."""

    blind_index: BlindIndex
    pseudonymizer: Pseudonymizer
    nas: FieldCipher
    epoch: FieldCipher

    def __repr__(self) -> str:
        return "SystemKeys(***)"


def _purpose(name: str) -> str:
    return f"system:{name}"


def subscriber_key_purpose(subscriber_id: int) -> str:
    """The wrap purpose binding a data key to its subscriber."""
    return f"subscriber:{subscriber_id}"


async def _current_wrapped(conn: Connection) -> dict[str, tuple[int, bytes]]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (name) name, version, wrapped FROM system_keys"
        " ORDER BY name, version DESC"
    )
    return {str(r["name"]): (int(r["version"]), bytes(r["wrapped"])) for r in rows}


async def load_system_keys(pool: Pool, masters: MasterKeys) -> SystemKeys:
    """Unwrap the newest version of each system key, creating missing ones.

    Creation is race-safe: every process inserts with ``ON CONFLICT DO
    NOTHING`` and then re-reads, so all of them end up with the same key.
    """
    async with acquire(pool) as conn:
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
        epoch=FieldCipher(plain[SystemKeyName.EPOCH][1], plain[SystemKeyName.EPOCH][0]),
    )


class DataKeyCache:
    """Bounded LRU of unwrapped per-subscriber data keys, as ready ciphers.

    Entries are keyed by subscriber id and checked against the wrapped blob,
    so a re-wrapped or replaced key is never served stale.
    """

    def __init__(self, masters: MasterKeys, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._masters = masters
        self._max = max_entries
        self._entries: OrderedDict[int, tuple[bytes, FieldCipher]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DataKeyCache(entries={len(self._entries)}, max_entries={self._max})"

    def new_key(self, subscriber_id: int) -> tuple[bytes, FieldCipher]:
        """A fresh data key for ``subscriber_id``: (wrapped blob to store, cipher)."""
        key = new_data_key()
        wrapped = wrap_key(self._masters, key, purpose=subscriber_key_purpose(subscriber_id))
        cipher = FieldCipher(key, DATA_KEY_VERSION)
        self._put(subscriber_id, wrapped, cipher)
        return wrapped, cipher

    def cipher(self, subscriber_id: int, wrapped: bytes) -> FieldCipher:
        """The cipher for ``subscriber_id`` whose stored wrapped key is ``wrapped``."""
        entry = self._entries.get(subscriber_id)
        if entry is not None and entry[0] == wrapped:
            self._entries.move_to_end(subscriber_id)
            return entry[1]
        key = unwrap_key(self._masters, wrapped, purpose=subscriber_key_purpose(subscriber_id))
        cipher = FieldCipher(key, DATA_KEY_VERSION)
        self._put(subscriber_id, wrapped, cipher)
        return cipher

    def cached(self, subscriber_id: int) -> FieldCipher | None:
        """The cached cipher of ``subscriber_id``, if any, without unwrapping."""
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
    waits for the write to commit and then deletes its rows too.
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
