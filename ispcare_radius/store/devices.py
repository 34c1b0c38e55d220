"""Devices bound to subscribers and the blocked-MAC list: rows, sealing, the in-memory cache.

The repository serves the CLI; ``DeviceCache`` and ``device_select`` serve the
directory. Imports aaa (model, ports), privacy and store; never server or cli.
"""

from __future__ import annotations

import hmac
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import asyncpg

from ispcare_radius.aaa.ports import MISS, Device, Miss
from ispcare_radius.privacy.blind import BlindIndex, normalize_mac, normalize_user_name
from ispcare_radius.privacy.crypto import FieldCipher, field_aad
from ispcare_radius.store import fields
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.fields import Column, IndexKind
from ispcare_radius.store.keyring import DataKeyCache
from ispcare_radius.store.subscribers import CHANGE_CHANNEL, audit, notify_changed

TABLE: Final = "devices"
# NOTIFY payload telling caches the blocked list changed (not a subscriber id,
# so listeners drop everything: rare, and always safe).
BLOCKED_CHANGED: Final = "blocked_macs"


def parse_device_mac(text: str) -> bytes:
    """Six MAC bytes from any common notation; ValueError without the value otherwise."""
    mac = normalize_mac(text)
    if mac is None:
        raise ValueError("not a MAC address (use aa:bb:cc:dd:ee:ff, aa-bb-.., aabb.ccdd.eeff)")
    return mac


def device_blind(index: BlindIndex, mac: bytes) -> bytes:
    """Full-length blind index of a 6-byte device MAC (unique lookup, blocked list)."""
    return fields.blind(index, IndexKind.DEVICE_MAC, mac)


def device_aad(device_id: str, subscriber_id: int) -> bytes:
    """Associated data binding a sealed device MAC to its row and subscriber."""
    return field_aad(TABLE, "mac", device_id, subscriber_id)


def open_device_mac(
    cipher: FieldCipher, device_id: str, subscriber_id: int, blob: bytes
) -> tuple[bytes, str]:
    """The (normalised 6 bytes, raw text) of a sealed device MAC; DecryptError if tampered."""
    raw = cipher.open(bytes(blob), device_aad(device_id, subscriber_id)).decode("ascii")
    mac = normalize_mac(raw)
    if mac is None:  # only our own writes get here, and they are checked
        raise ValueError("stored device MAC is not a MAC")
    return mac, raw


_FROM: Final = " FROM subscriber_lookup l JOIN subscribers s ON s.id = l.subscriber_id"
_WHERE: Final = " WHERE l.kind = 'user_name'"


def device_select(subscriber_select: str) -> str:
    """The directory's subscriber query turned into one by device blind (``l.blind``).

    Derived rather than copied so that every subscriber column the directory
    reads is read here too. Adds ``device_id`` and ``device_mac_enc``.
    """
    if subscriber_select.count(_FROM) != 1 or subscriber_select.count(_WHERE) != 1:
        raise RuntimeError("the directory query no longer has the expected shape")
    return subscriber_select.replace(
        _FROM,
        ", d.id::text AS device_id, d.mac_enc AS device_mac_enc"
        " FROM subscriber_lookup l JOIN devices d"
        " ON d.subscriber_id = l.subscriber_id AND d.mac_blind = l.blind"
        " JOIN subscribers s ON s.id = d.subscriber_id",
    ).replace(_WHERE, " WHERE l.kind = 'device_mac'")


class DeviceCache:
    """Devices by blind index and the blocked-MAC set, with expiry times passed in.

    Unknown MACs have their own small cache, as unknown user names do. The
    blocked set is loaded whole (it is short) and answered until it expires.
    """

    def __init__(self, *, max_entries: int, negative_max_entries: int) -> None:
        self._max = max_entries
        self._negative_max = negative_max_entries
        self._entries: OrderedDict[bytes, tuple[float, Device]] = OrderedDict()
        self._by_subscriber: dict[int, set[bytes]] = {}
        self._negative: dict[bytes, float] = {}
        self._blocked: frozenset[bytes] = frozenset()
        self._blocked_until = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, blind: bytes, now: float) -> Device | Miss | None:
        """The cached device, None if known unknown, or ``MISS``."""
        entry = self._entries.get(blind)
        if entry is not None:
            if entry[0] > now:
                self._entries.move_to_end(blind)
                return entry[1]
            self._drop(blind)
        until = self._negative.get(blind)
        if until is not None:
            if until > now:
                return None
            del self._negative[blind]
        return MISS

    def put(self, blind: bytes, device: Device, expires: float) -> None:
        """Cache ``device`` under ``blind`` until ``expires``."""
        self._drop(blind)
        self._entries[blind] = (expires, device)
        self._by_subscriber.setdefault(device.subscriber.id, set()).add(blind)
        while len(self._entries) > self._max:
            self._drop(next(iter(self._entries)))

    def put_unknown(self, blind: bytes, expires: float) -> None:
        """Remember that no device has ``blind`` until ``expires``."""
        self._negative.pop(blind, None)
        self._negative[blind] = expires
        if len(self._negative) > self._negative_max:
            del self._negative[next(iter(self._negative))]

    def _drop(self, blind: bytes) -> None:
        entry = self._entries.pop(blind, None)
        if entry is not None:
            blinds = self._by_subscriber.get(entry[1].subscriber.id)
            if blinds is not None:
                blinds.discard(blind)
                if not blinds:
                    del self._by_subscriber[entry[1].subscriber.id]

    def drop_subscriber(self, subscriber_id: int) -> None:
        """Forget the subscriber's devices and every "unknown MAC" answer."""
        for blind in tuple(self._by_subscriber.get(subscriber_id, ())):
            self._drop(blind)
        if self._negative:
            self._negative = {}

    def blocked(self, blind: bytes, now: float) -> bool | Miss:
        """Whether ``blind`` is blocked, or ``MISS`` when the set has expired."""
        if self._blocked_until <= now:
            return MISS
        return blind in self._blocked

    def set_blocked(self, blinds: frozenset[bytes], until: float) -> None:
        """Replace the blocked set, valid until ``until``."""
        self._blocked = blinds
        self._blocked_until = until

    def clear(self) -> None:
        """Forget everything, the blocked set included."""
        self._entries.clear()
        self._by_subscriber.clear()
        self._negative = {}
        self._blocked = frozenset()
        self._blocked_until = float("-inf")


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device as an operator sees it (CLI ``device list``)."""

    id: str
    mac: str = field(repr=False)
    first_seen: datetime | None
    last_seen: datetime | None
    created_at: datetime


class DeviceRepository:
    """Register, list and remove devices; block and unblock MACs."""

    def __init__(
        self, pool: Pool, index: BlindIndex, data_keys: DataKeyCache, *, actor: str = "system"
    ) -> None:
        self._pool = pool
        self._index = index
        self._data_keys = data_keys
        self._actor = actor

    async def _subscriber(self, conn: Connection, user_name: str) -> tuple[int, FieldCipher]:
        record = await conn.fetchrow(
            "SELECT s.id, s.wrapped_key, s.user_name_enc FROM subscriber_lookup l"
            " JOIN subscribers s ON s.id = l.subscriber_id"
            " WHERE l.kind = 'user_name' AND l.blind = $1 FOR UPDATE OF s",
            fields.user_name_blind(self._index, user_name),
        )
        if record is None:
            raise LookupError("no such subscriber")
        sid = int(record["id"])
        cipher = self._data_keys.cipher(sid, bytes(record["wrapped_key"]))
        stored = fields.unseal(cipher, Column.USER_NAME, sid, record["user_name_enc"])
        # The lookup row is not sealed: one repointed elsewhere must not count.
        if stored is None or not hmac.compare_digest(
            normalize_user_name(stored.decode("utf-8")), normalize_user_name(user_name)
        ):
            raise LookupError("no such subscriber")
        return sid, cipher

    async def add(self, mac_text: str, *, subscriber: str) -> str:
        """Bind the MAC to the subscriber named ``subscriber``; the new device id.

        ValueError if the MAC is malformed or already bound; LookupError if
        there is no such subscriber. The MAC is kept sealed as written.
        """
        mac = parse_device_mac(mac_text)
        raw = mac_text.strip()
        blind = device_blind(self._index, mac)
        device_id = str(uuid.uuid4())
        async with acquire(self._pool) as conn, conn.transaction():
            sid, cipher = await self._subscriber(conn, subscriber)
            try:
                await conn.execute(
                    "INSERT INTO subscriber_lookup (kind, blind, subscriber_id)"
                    " VALUES ('device_mac', $1, $2)",
                    blind,
                    sid,
                )
            except asyncpg.UniqueViolationError:
                raise ValueError("MAC already bound to a subscriber") from None
            await conn.execute(
                "INSERT INTO devices (subscriber_id, id, mac_blind, mac_enc)"
                " VALUES ($1, $2::uuid, $3, $4)",
                sid,
                device_id,
                blind,
                cipher.seal(raw.encode("ascii"), device_aad(device_id, sid)),
            )
            await self._changed(conn, sid, "device.add")
        return device_id

    async def list(self, *, subscriber: str) -> list[DeviceView]:
        """The subscriber's devices, oldest first; LookupError if there is no such subscriber."""
        async with acquire(self._pool) as conn, conn.transaction():
            sid, cipher = await self._subscriber(conn, subscriber)
            records = await conn.fetch(
                "SELECT id::text AS id, mac_enc, first_seen, last_seen, created_at FROM devices"
                " WHERE subscriber_id = $1 ORDER BY created_at, id",
                sid,
            )
        views = []
        for r in records:
            mac, _ = open_device_mac(cipher, r["id"], sid, r["mac_enc"])
            views.append(
                DeviceView(
                    r["id"],
                    fields.format_mac(mac),
                    r["first_seen"],
                    r["last_seen"],
                    r["created_at"],
                )
            )
        return views

    async def remove(self, mac_text: str) -> bool:
        """Unbind the MAC from whoever holds it; False if no device has it."""
        blind = device_blind(self._index, parse_device_mac(mac_text))
        async with acquire(self._pool) as conn, conn.transaction():
            sid = await conn.fetchval(
                "DELETE FROM subscriber_lookup WHERE kind = 'device_mac' AND blind = $1"
                " RETURNING subscriber_id",
                blind,
            )
            if sid is None:
                return False
            await conn.execute(
                "DELETE FROM devices WHERE subscriber_id = $1 AND mac_blind = $2", sid, blind
            )
            await self._changed(conn, int(sid), "device.remove")
        return True

    async def _changed(self, conn: Connection, sid: int, action: str) -> None:
        # updated_at too, so that caches which only poll see the change.
        await conn.execute("UPDATE subscribers SET updated_at = now() WHERE id = $1", sid)
        await audit(conn, self._actor, action, sid, {})
        await notify_changed(conn, sid)

    async def block(self, mac_text: str, *, reason: str | None = None) -> bool:
        """Put the MAC on the blocked list; False if it was already there.

        ``reason`` is operator text and must not hold personal values.
        """
        blind = device_blind(self._index, parse_device_mac(mac_text))
        async with acquire(self._pool) as conn, conn.transaction():
            status = await conn.execute(
                "INSERT INTO blocked_macs (mac_blind, reason) VALUES ($1, $2)"
                " ON CONFLICT (mac_blind) DO NOTHING",
                blind,
                reason,
            )
            added = status.endswith(" 1")
            if added:
                await self._blocked_changed(conn, "mac.block")
        return added

    async def unblock(self, mac_text: str) -> bool:
        """Take the MAC off the blocked list; False if it was not there."""
        blind = device_blind(self._index, parse_device_mac(mac_text))
        async with acquire(self._pool) as conn, conn.transaction():
            status = await conn.execute("DELETE FROM blocked_macs WHERE mac_blind = $1", blind)
            removed = status.endswith(" 1")
            if removed:
                await self._blocked_changed(conn, "mac.unblock")
        return removed

    async def _blocked_changed(self, conn: Connection, action: str) -> None:
        await audit(conn, self._actor, action, None, {})
        await conn.execute("SELECT pg_notify($1, $2)", CHANGE_CHANNEL, BLOCKED_CHANGED)


async def load_blocked(conn: Connection) -> frozenset[bytes]:
    """Every blocked MAC's blind index."""
    rows = await conn.fetch("SELECT mac_blind FROM blocked_macs")
    return frozenset(bytes(r["mac_blind"]) for r in rows)
