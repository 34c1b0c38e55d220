"""Subscriber provisioning: encrypted rows, blind-index lookups, audit, change hints.

Imports aaa.model, privacy and store; never server or cli.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg

from ispcare_radius.aaa.methods.credentials import CredentialForm, methods_for
from ispcare_radius.aaa.model import MacBinding, SubscriberStatus
from ispcare_radius.privacy.blind import normalize_user_name
from ispcare_radius.privacy.crypto import key_version
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store import fields
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.deactivation import deactivation_changes, request_disconnects
from ispcare_radius.store.feeds import enqueue_status
from ispcare_radius.store.fields import Column, LookupKind
from ispcare_radius.store.importer import ImportRow, import_subscribers
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.subscriber_values import (
    UNSET,
    SubscriberView,
    Unset,
    credentials,
    policy_changes,
    resolve_mac_binding,
)

_log = get_logger(__name__)

# NOTIFY channel: a wake-up hint for caches, never needed for correctness.
CHANGE_CHANNEL: Final = "ispcare_subscriber_changed"

_DUPLICATE_MESSAGES: Final = {
    LookupKind.USER_NAME: "user name already exists",
    LookupKind.MAC_LOCK: "MAC lock already in use",
    LookupKind.STATIC_IPV4: "static IPv4 already in use",
}

_VIEW_SELECT: Final = (
    "SELECT s.id, s.status, s.expires_at, s.account_ref, s.wrapped_key, s.user_name_enc,"
    " s.password_enc IS NOT NULL AS has_password, s.static_ipv4_enc, s.static_ipv6_enc,"
    " s.nt_hash_enc IS NOT NULL AS has_nt_hash, s.slow_hash_enc IS NOT NULL AS has_slow_hash,"
    " s.mac_binding, s.mac_lock_enc, s.created_at, s.updated_at, p.name AS plan_name,"
    " s.legal_hold, s.deactivated_at, "
    + fields.policy_select("s")
    + " FROM subscribers s LEFT JOIN plans p ON p.id = s.plan_id"
)


async def _update(conn: Connection, sid: int, changes: dict[str, Any]) -> None:
    if changes:
        assignments = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
        await conn.execute(
            f"UPDATE subscribers SET {assignments}, updated_at = now() WHERE id = $1",
            sid,
            *changes.values(),
        )


async def notify_changed(conn: Connection, subscriber_id: int) -> None:
    """Queue the change hint for ``subscriber_id`` (sent when the transaction commits)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANGE_CHANNEL, str(subscriber_id))


async def audit(
    conn: Connection, actor: str, action: str, subscriber_id: int | None, detail: dict[str, Any]
) -> None:
    """Append to audit_log; ``detail`` must hold no personal values."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, subscriber_id, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subscriber_id,
        detail,
    )


async def plan_id_by_name(conn: Connection, name: str | None) -> int | None:
    """The id of plan ``name`` (None for None); ValueError if there is none."""
    if name is None:
        return None
    plan_id = await conn.fetchval("SELECT id FROM plans WHERE name = $1", name)
    if plan_id is None:
        raise ValueError("unknown plan")
    return int(plan_id)


class SubscriberRepository:
    """Add, read, change, list, remove and bulk-import subscribers."""

    def __init__(
        self,
        pool: Pool,
        keys: SystemKeys,
        masters: MasterKeys,
        data_keys: DataKeyCache,
        *,
        actor: str = "system",
    ) -> None:
        self._pool = pool
        self._keys = keys
        self._masters = masters
        self._data_keys = data_keys
        self._actor = actor

    def _blind(self, kind: LookupKind, value: bytes | str) -> bytes:
        if kind is LookupKind.USER_NAME:
            assert isinstance(value, str)
            return fields.user_name_blind(self._keys.blind_index, value)
        assert isinstance(value, bytes)
        return fields.blind(self._keys.blind_index, kind, value)

    async def _insert_lookup(
        self, conn: Connection, kind: LookupKind, value: bytes | str, subscriber_id: int
    ) -> None:
        try:
            await conn.execute(
                "INSERT INTO subscriber_lookup (kind, blind, subscriber_id) VALUES ($1, $2, $3)",
                kind.value,
                self._blind(kind, value),
                subscriber_id,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(_DUPLICATE_MESSAGES[kind]) from None

    def _is_named(self, record: asyncpg.Record, user_name: str) -> bool:
        # The lookup row is not sealed: one repointed to another subscriber
        # must not let a change or an erasure under this name reach it.
        sid = int(record["id"])
        cipher = self._data_keys.cipher(sid, bytes(record["wrapped_key"]))
        stored = fields.unseal(cipher, Column.USER_NAME, sid, record["user_name_enc"])
        assert stored is not None  # user_name_enc is NOT NULL
        same = hmac.compare_digest(
            normalize_user_name(stored.decode("utf-8")), normalize_user_name(user_name)
        )
        if not same:
            _log.warning("subscriber_lookup_mismatch", subscriber_id=sid)
        return same

    async def _locate(
        self, conn: Connection, user_name: str, *, lock: bool
    ) -> asyncpg.Record | None:
        suffix = " FOR UPDATE OF s" if lock else ""
        record = await conn.fetchrow(
            "SELECT s.id, s.wrapped_key, s.user_name_enc, s.mac_binding, s.status,"
            " s.mac_lock_enc IS NOT NULL AS has_lock,"
            " s.password_enc IS NOT NULL AS has_password,"
            " s.nt_hash_enc IS NOT NULL AS has_nt_hash,"
            " s.slow_hash_enc IS NOT NULL AS has_slow_hash FROM subscriber_lookup l"
            " JOIN subscribers s ON s.id = l.subscriber_id"
            f" WHERE l.kind = 'user_name' AND l.blind = $1{suffix}",
            self._blind(LookupKind.USER_NAME, user_name),
        )
        if record is None or not self._is_named(record, user_name):
            return None
        return record

    async def add(
        self,
        user_name: str,
        password: str | None,
        *,
        plan: str | None,
        status: str = "active",
        expires_at: datetime | None = None,
        static_ipv4: str | None = None,
        static_ipv6_prefix: str | None = None,
        mac_lock: str | None = None,
        account_ref: str | None = None,
        framed_netmask: str | None = None,
        framed_routes: Sequence[str] = (),
        delegated_ipv6_prefix: str | None = None,
        framed_ipv6_address: str | None = None,
        download_kbps: int | None = None,
        upload_kbps: int | None = None,
        session_timeout: int | None = None,
        idle_timeout: int | None = None,
        nt_hash: str | None = None,
        password_hash: str | None = None,
        mac_binding: str | None = None,
    ) -> int:
        """Create a subscriber and return its id; ValueError for a taken or bad value.

        ``download_kbps`` .. ``idle_timeout`` override the plan's values.
        ``password``, ``nt_hash`` (32 hex digits) and ``password_hash`` (a
        ``$scrypt$`` string) are the credential forms, each optional.
        ``mac_binding`` (off, lock, first_login) defaults to lock when
        ``mac_lock`` is given, else off.
        """
        policy = {
            "framed_netmask": framed_netmask,
            "framed_routes": tuple(framed_routes) or None,
            "delegated_ipv6_prefix": delegated_ipv6_prefix,
            "framed_ipv6_address": framed_ipv6_address,
            "download_kbps": download_kbps,
            "upload_kbps": upload_kbps,
            "session_timeout": session_timeout,
            "idle_timeout": idle_timeout,
        }

        if not user_name:
            raise ValueError("user name must not be empty")
        state = SubscriberStatus(status)
        ipv4 = None if static_ipv4 is None else fields.parse_ipv4(static_ipv4)
        ipv6 = None if static_ipv6_prefix is None else fields.parse_ipv6_prefix(static_ipv6_prefix)
        mac = None if mac_lock is None else fields.parse_mac(mac_lock)
        creds = credentials(password, nt_hash, password_hash)
        binding = resolve_mac_binding(
            mac_binding, current=MacBinding.OFF, has_lock=mac is not None, lock_given=True
        )
        async with acquire(self._pool) as conn:
            plan_id = await plan_id_by_name(conn, plan)
            # The id is reserved before encrypting: every sealed field binds it.
            sid = int(await conn.fetchval("SELECT nextval('subscriber_id_seq')"))
            wrapped, cipher = self._data_keys.new_key(sid)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO subscribers (id, account_ref, status, plan_id, expires_at,"
                        " wrapped_key, kek_version, user_name_enc, static_ipv4_enc,"
                        " static_ipv6_enc, mac_lock_enc, mac_binding)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                        sid,
                        account_ref,
                        state.value,
                        plan_id,
                        expires_at,
                        wrapped,
                        # The version that wrapped it: the key file may have been re-read.
                        key_version(wrapped),
                        fields.seal(cipher, Column.USER_NAME, sid, user_name.encode("utf-8")),
                        fields.seal(cipher, Column.STATIC_IPV4, sid, _packed(ipv4)),
                        fields.seal(cipher, Column.STATIC_IPV6, sid, _v6_text(ipv6)),
                        fields.seal(cipher, Column.MAC_LOCK, sid, mac),
                        binding.value,
                    )
                    await _update(conn, sid, creds.sealed(cipher, sid))
                    await self._insert_lookup(conn, LookupKind.USER_NAME, user_name, sid)
                    given = {k: v for k, v in policy.items() if v is not None}
                    await _update(conn, sid, policy_changes(cipher, sid, given))
                    if mac is not None:
                        await self._insert_lookup(conn, LookupKind.MAC_LOCK, mac, sid)
                    if ipv4 is not None:
                        await self._insert_lookup(conn, LookupKind.STATIC_IPV4, ipv4.packed, sid)
                    await audit(conn, self._actor, "subscriber.add", sid, {})
                    await notify_changed(conn, sid)
            except BaseException:
                self._data_keys.discard(sid)
                raise
        return sid

    async def get(self, user_name: str) -> SubscriberView | None:
        """The subscriber whose (normalised) user name matches, or None."""
        blind = self._blind(LookupKind.USER_NAME, user_name)
        async with acquire(self._pool) as conn:
            record = await conn.fetchrow(
                f"{_VIEW_SELECT} JOIN subscriber_lookup l ON l.subscriber_id = s.id"
                " WHERE l.kind = 'user_name' AND l.blind = $1",
                blind,
            )
        if record is None or not self._is_named(record, user_name):
            return None
        return self._view(record)

    async def list(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[SubscriberView]:
        """Subscribers by id, optionally only those with ``status``."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        state = None if status is None else SubscriberStatus(status).value
        async with acquire(self._pool) as conn:
            records = await conn.fetch(
                f"{_VIEW_SELECT} WHERE ($1::text IS NULL OR s.status = $1)"
                " ORDER BY s.id LIMIT $2 OFFSET $3",
                state,
                limit,
                offset,
            )
        return [self._view(r) for r in records]

    def _view(self, record: asyncpg.Record) -> SubscriberView:
        sid = int(record["id"])
        cipher = self._data_keys.cipher(sid, bytes(record["wrapped_key"]))
        name = fields.unseal(cipher, Column.USER_NAME, sid, record["user_name_enc"])
        ipv4 = fields.unseal(cipher, Column.STATIC_IPV4, sid, record["static_ipv4_enc"])
        ipv6 = fields.unseal(cipher, Column.STATIC_IPV6, sid, record["static_ipv6_enc"])
        mac = fields.unseal(cipher, Column.MAC_LOCK, sid, record["mac_lock_enc"])
        assert name is not None
        return SubscriberView(
            id=sid,
            user_name=name.decode("utf-8"),
            status=SubscriberStatus(record["status"]),
            plan=record["plan_name"],
            expires_at=record["expires_at"],
            static_ipv4=None if ipv4 is None else ipaddress.IPv4Address(ipv4),
            static_ipv6_prefix=None if ipv6 is None else ipaddress.IPv6Network(ipv6.decode()),
            mac_lock=None if mac is None else fields.format_mac(mac),
            account_ref=record["account_ref"],
            has_password=bool(record["has_password"]),
            created_at=record["created_at"],
            updated_at=record["updated_at"],
            has_nt_hash=bool(record["has_nt_hash"]),
            has_slow_hash=bool(record["has_slow_hash"]),
            mac_binding=MacBinding(record["mac_binding"]),
            legal_hold=bool(record["legal_hold"]),
            deactivated_at=record["deactivated_at"],
            methods=methods_for(
                form
                for form, held in (
                    (CredentialForm.PASSWORD, record["has_password"]),
                    (CredentialForm.NT_HASH, record["has_nt_hash"]),
                    (CredentialForm.SLOW_HASH, record["has_slow_hash"]),
                )
                if held
            ),
            # The same decoding as authentication uses.
            **fields.policy_from_record(record, cipher),
        )

    async def set(
        self,
        user_name: str,
        *,
        password: str | Literal[Unset.UNSET] | None = UNSET,
        plan: str | Literal[Unset.UNSET] | None = UNSET,
        status: str | Literal[Unset.UNSET] = UNSET,
        expires_at: datetime | Literal[Unset.UNSET] | None = UNSET,
        static_ipv4: str | Literal[Unset.UNSET] | None = UNSET,
        static_ipv6_prefix: str | Literal[Unset.UNSET] | None = UNSET,
        mac_lock: str | Literal[Unset.UNSET] | None = UNSET,
        account_ref: str | Literal[Unset.UNSET] | None = UNSET,
        framed_netmask: str | Literal[Unset.UNSET] | None = UNSET,
        framed_routes: Sequence[str] | Literal[Unset.UNSET] | None = UNSET,
        delegated_ipv6_prefix: str | Literal[Unset.UNSET] | None = UNSET,
        framed_ipv6_address: str | Literal[Unset.UNSET] | None = UNSET,
        download_kbps: int | Literal[Unset.UNSET] | None = UNSET,
        upload_kbps: int | Literal[Unset.UNSET] | None = UNSET,
        session_timeout: int | Literal[Unset.UNSET] | None = UNSET,
        idle_timeout: int | Literal[Unset.UNSET] | None = UNSET,
        nt_hash: str | Literal[Unset.UNSET] | None = UNSET,
        password_hash: str | Literal[Unset.UNSET] | None = UNSET,
        mac_binding: str | Literal[Unset.UNSET] = UNSET,
        legal_hold: bool | Literal[Unset.UNSET] = UNSET,
        subscriber_id: int | None = None,
    ) -> bool:
        """Change the given fields (None clears); False if there is no such user,
        or if ``subscriber_id`` is given and the name now names someone else.

        ``framed_routes`` replaces every route (None or empty clears them);
        ``download_kbps`` .. ``idle_timeout`` are overrides of the plan's values.
        Giving any of ``password``, ``nt_hash`` and ``password_hash`` replaces
        all three: a form not given is cleared, so no credential of an old
        password outlives a change. ``mac_binding`` follows
        ``resolve_mac_binding``; ``off`` clears the lock. ``status``
        deactivated does what ``deactivate`` does; another status clears the
        deactivation time. ``legal_hold`` True blocks erasure.

        After the change a NOTIFY on ``ispcare_subscriber_changed`` tells
        caches to drop the entry.
        """
        ipv4 = None if static_ipv4 in (UNSET, None) else fields.parse_ipv4(str(static_ipv4))
        ipv6 = (
            None
            if static_ipv6_prefix in (UNSET, None)
            else fields.parse_ipv6_prefix(str(static_ipv6_prefix))
        )
        mac = None if mac_lock in (UNSET, None) else fields.parse_mac(str(mac_lock))
        state = None if status is UNSET else SubscriberStatus(status)
        given = (password, nt_hash, password_hash)
        creds = None
        if any(v is not UNSET for v in given):
            creds = credentials(*(None if v is UNSET or v is None else str(v) for v in given))
        async with acquire(self._pool) as conn, conn.transaction():
            found = await self._locate(conn, user_name, lock=True)
            # A caller that found the subscriber by id: a rename since must
            # not carry the change to whoever holds the name now.
            if found is None or subscriber_id not in (None, int(found["id"])):
                return False
            sid = int(found["id"])
            cipher = self._data_keys.cipher(sid, bytes(found["wrapped_key"]))
            changes: dict[str, Any] = {}
            if creds is not None:
                # Forms not given are cleared; those already absent stay out
                # of the change (and of the audit record).
                changes.update(
                    (column, value)
                    for column, value in creds.sealed(cipher, sid).items()
                    if value is not None or found[f"has_{column.removesuffix('_enc')}"]
                )
            current = MacBinding(found["mac_binding"])
            binding = resolve_mac_binding(
                None if mac_binding is UNSET else mac_binding,
                current=current,
                has_lock=bool(found["has_lock"]) if mac_lock is UNSET else mac is not None,
                lock_given=mac_lock is not UNSET,
            )
            if binding is MacBinding.OFF and mac_lock is UNSET and found["has_lock"]:
                mac_lock = None  # turning binding off drops the lock
            if binding is not current:
                changes["mac_binding"] = binding.value
            if plan is not UNSET:
                changes["plan_id"] = await plan_id_by_name(conn, plan)
            if state is not None:
                changes["status"] = state.value
                changes.update(await deactivation_changes(conn, found["status"], state))
            if legal_hold is not UNSET:
                changes["legal_hold"] = bool(legal_hold)
            if expires_at is not UNSET:
                changes["expires_at"] = expires_at
            if account_ref is not UNSET:
                changes["account_ref"] = account_ref
            if static_ipv6_prefix is not UNSET:
                sealed = fields.seal(cipher, Column.STATIC_IPV6, sid, _v6_text(ipv6))
                changes["static_ipv6_enc"] = sealed
            if static_ipv4 is not UNSET:
                sealed = fields.seal(cipher, Column.STATIC_IPV4, sid, _packed(ipv4))
                changes["static_ipv4_enc"] = sealed
                await self._replace_lookup(
                    conn, LookupKind.STATIC_IPV4, None if ipv4 is None else ipv4.packed, sid
                )
            if mac_lock is not UNSET:
                changes["mac_lock_enc"] = fields.seal(cipher, Column.MAC_LOCK, sid, mac)
                await self._replace_lookup(conn, LookupKind.MAC_LOCK, mac, sid)
            routes = None if framed_routes is UNSET or not framed_routes else tuple(framed_routes)
            policy = {
                "framed_netmask": framed_netmask,
                "framed_routes": UNSET if framed_routes is UNSET else routes,
                "delegated_ipv6_prefix": delegated_ipv6_prefix,
                "framed_ipv6_address": framed_ipv6_address,
                "download_kbps": download_kbps,
                "upload_kbps": upload_kbps,
                "session_timeout": session_timeout,
                "idle_timeout": idle_timeout,
            }
            changes.update(policy_changes(cipher, sid, policy))
            if not changes:
                return True
            await _update(conn, sid, changes)
            if state is not None:  # billing hears of a status change (none if unchanged)
                await enqueue_status(conn, sid, found["status"])
            detail: dict[str, Any] = {
                "fields": sorted(c.removesuffix("_enc").removesuffix("_id") for c in changes)
            }
            if legal_hold is not UNSET:
                detail["legal_hold"] = bool(legal_hold)
            if state is SubscriberStatus.DEACTIVATED:
                detail["disconnect_requests"] = await request_disconnects(conn, sid)
            await audit(conn, self._actor, "subscriber.set", sid, detail)
            await notify_changed(conn, sid)
        return True

    async def deactivate(self, user_name: str, *, reason: str | None = None) -> int | None:
        """Deactivate a subscriber: access ends at once; None if there is no such user.

        In one transaction: status deactivated (the pipeline rejects it,
        outcome ``deactivated``), deactivated_at set unless already
        deactivated, a disconnect request for each live session (the count
        is returned), an audit row carrying ``reason`` (an operator's
        reference, never a personal value) and the change hint that evicts
        the subscriber from every process's cache as the transaction commits.
        """
        async with acquire(self._pool) as conn, conn.transaction():
            found = await self._locate(conn, user_name, lock=True)
            if found is None:
                return None
            sid = int(found["id"])
            state = SubscriberStatus.DEACTIVATED
            changes = {"status": state.value}
            changes.update(await deactivation_changes(conn, found["status"], state))
            await _update(conn, sid, changes)
            await enqueue_status(conn, sid, found["status"])
            requested = await request_disconnects(conn, sid)
            detail: dict[str, Any] = {"disconnect_requests": requested}
            if reason:
                detail["reason"] = reason
            await audit(conn, self._actor, "subscriber.deactivate", sid, detail)
            await notify_changed(conn, sid)
        return requested

    async def _replace_lookup(
        self, conn: Connection, kind: LookupKind, value: bytes | None, subscriber_id: int
    ) -> None:
        await conn.execute(
            "DELETE FROM subscriber_lookup WHERE kind = $1 AND subscriber_id = $2",
            kind.value,
            subscriber_id,
        )
        if value is not None:
            await self._insert_lookup(conn, kind, value, subscriber_id)

    async def remove(self, user_name: str) -> bool:
        """Erase a subscriber now: the same rows as the erasure job (store/lifecycle.py)
        go or are stripped, and the data key goes with the row; no grace, no tombstone.
        ValueError while the subscriber is under legal hold.
        """
        # Imported here: lifecycle builds on this module (audit, change hints).
        from ispcare_radius.store.lifecycle import erase_rows

        async with acquire(self._pool) as conn, conn.transaction():
            found = await self._locate(conn, user_name, lock=True)
            if found is None:
                return False
            sid = int(found["id"])
            # A legal hold blocks every erasure, the operator's included.
            if await conn.fetchval("SELECT legal_hold FROM subscribers WHERE id = $1", sid):
                raise ValueError("subscriber is under legal hold; release it first")
            await erase_rows(conn, sid)
            await conn.execute("DELETE FROM subscribers WHERE id = $1", sid)
            await audit(conn, self._actor, "subscriber.remove", sid, {})
            await notify_changed(conn, sid)
        self._data_keys.discard(sid)
        return True

    async def import_rows(
        self,
        rows: Iterable[ImportRow],
        *,
        progress: Callable[[int], None] | None = None,
        batch_size: int = 5000,
    ) -> int:
        """Bulk-create subscribers in one transaction; see ``importer.import_subscribers``."""
        return await import_subscribers(
            self._pool,
            self._keys,
            self._masters,
            self._data_keys,
            rows,
            progress=progress,
            batch_size=batch_size,
            actor=self._actor,
        )


def _packed(address: ipaddress.IPv4Address | None) -> bytes | None:
    return None if address is None else address.packed


def _v6_text(prefix: ipaddress.IPv6Network | None) -> bytes | None:
    return None if prefix is None else str(prefix).encode("ascii")
