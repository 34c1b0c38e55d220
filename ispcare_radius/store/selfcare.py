"""Self-care: a subscriber reads, and changes some of, their own personal data.

The privacy policy says subscribers may update their personal data. Not all
of it is theirs to change: the user name is the billing system's key, static
addresses and plans are network configuration, status is the contract. What
is theirs: their password, and the device their line is locked to (replacing
a router must not need a phone call). Those are ``SELF_UPDATABLE``; anything
else is refused. Changes go through ``SubscriberRepository.set``, so they are
validated, sealed, indexed, hinted to caches and audited exactly like an
operator's, with the actor ``selfcare:<id>``.

Callers (the REST API) authenticate the subscriber and pass their id; this
module trusts that id. Imports aaa, privacy and store; never server or cli.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ispcare_radius.aaa.methods.credentials import ScryptCost, scrypt_hash
from ispcare_radius.aaa.methods.mscrypto import nt_password_hash
from ispcare_radius.aaa.model import MacBinding
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store import export, fields
from ispcare_radius.store.db import Pool, acquire
from ispcare_radius.store.fields import Column
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.subscribers import SubscriberRepository

SELF_UPDATABLE: Final = frozenset({"password", "mac_lock"})
MAX_PASSWORD_CHARS: Final = 128  # RFC 2865 section 5.2: User-Password is at most 128 octets
ACTOR_PREFIX: Final = "selfcare"


class SubjectChanged(RuntimeError):
    """The subscriber's user name changed (or the subscriber went) while a
    self-care update was prepared; nothing was changed, the caller may retry."""


def actor(subscriber_id: int) -> str:
    """The audit actor of a subscriber acting on their own data."""
    return f"{ACTOR_PREFIX}:{subscriber_id}"


async def read_own_data(
    pool: Pool, keys: SystemKeys, data_keys: DataKeyCache, subscriber_id: int
) -> dict[str, Any]:
    """Everything held on the subscriber, decrypted, JSON-ready (the export's sections).

    Not audited: the data subject reading their own data discloses nothing
    to anyone else. ``SubjectNotFound`` when there is no such subscriber.
    """
    del keys  # the subscriber is found by id; kept for a uniform signature
    async with acquire(pool) as conn, conn.transaction(isolation="repeatable_read"):
        subject = await export.find_by_id(conn, subscriber_id)
        cipher = data_keys.cipher(subject.id, subject.wrapped_key)
        sections = await export.collect(conn, subject, cipher)
    return dict(export.jsonable(sections))


def _check(changes: Mapping[str, Any]) -> None:
    refused = sorted(set(changes) - SELF_UPDATABLE)
    if refused:
        raise PermissionError(f"not changeable by the subscriber: {', '.join(refused)}")
    if not changes:
        raise ValueError("nothing to change")
    if "password" in changes:
        password = changes["password"]
        if not isinstance(password, str) or not password:
            raise ValueError("the new password must not be empty")
        if len(password.encode("utf-8")) > MAX_PASSWORD_CHARS:
            raise ValueError(f"the new password is longer than {MAX_PASSWORD_CHARS} bytes")
    mac = changes.get("mac_lock")
    if mac is not None:
        if not isinstance(mac, str):
            raise ValueError("the MAC lock must be text")
        fields.parse_mac(mac)  # ValueError without the value


def _credential_args(
    password: str, held: Mapping[str, bool], cost: ScryptCost
) -> dict[str, str | None]:
    """The new password in every form the subscriber held before, so no
    authentication method they used stops working and no weaker form appears
    (a scrypt-only subscriber stays scrypt-only)."""
    args: dict[str, str | None] = {"password": None, "nt_hash": None, "password_hash": None}
    if held["password"] or not any(held.values()):
        args["password"] = password
    if held["nt_hash"]:
        args["nt_hash"] = nt_password_hash(password).hex()
    if held["slow_hash"]:
        args["password_hash"] = scrypt_hash(password.encode("utf-8"), cost)
    return args


async def update_own_data(
    pool: Pool,
    keys: SystemKeys,
    masters: MasterKeys,
    data_keys: DataKeyCache,
    subscriber_id: int,
    *,
    changes: Mapping[str, Any],
    scrypt_cost: ScryptCost | None = None,
) -> list[str]:
    """Apply the subscriber's own ``changes``; the names changed, sorted.

    ``changes`` keys: ``password`` (new password, replacing every stored form
    with the same forms derived from it) and ``mac_lock`` (a MAC, or None to
    let the next login bind again). The MAC lock can be changed only when the
    line is MAC-bound: a subscriber cannot turn the binding off, and cannot
    clear an operator's ``lock`` (only replace it). PermissionError for a
    field not theirs to change; ValueError (without the value) for a bad one;
    ``SubjectNotFound`` when there is no such subscriber; ``SubjectChanged``
    when the user name read here no longer names this subscriber by the time
    the change is made (a rename in between), so nothing lands on another.
    """
    _check(changes)
    async with acquire(pool) as conn:
        row = await conn.fetchrow(
            "SELECT id, wrapped_key, user_name_enc, mac_binding,"
            " password_enc IS NOT NULL AS password, nt_hash_enc IS NOT NULL AS nt_hash,"
            " slow_hash_enc IS NOT NULL AS slow_hash FROM subscribers WHERE id = $1",
            subscriber_id,
        )
    if row is None:
        raise export.SubjectNotFound("no such subscriber")
    sid = int(row["id"])
    cipher = data_keys.cipher(sid, bytes(row["wrapped_key"]))
    name = fields.unseal(cipher, Column.USER_NAME, sid, row["user_name_enc"])
    assert name is not None  # user_name_enc is NOT NULL
    args: dict[str, Any] = {}
    if "password" in changes:
        held = {k: bool(row[k]) for k in ("password", "nt_hash", "slow_hash")}
        args.update(_credential_args(changes["password"], held, scrypt_cost or ScryptCost()))
    if "mac_lock" in changes:
        binding = MacBinding(row["mac_binding"])
        if binding is MacBinding.OFF:
            raise PermissionError("this line is not bound to a device")
        if changes["mac_lock"] is None and binding is MacBinding.LOCK:
            raise PermissionError("a device lock set by the provider can be replaced, not removed")
        args["mac_lock"] = changes["mac_lock"]
    repo = SubscriberRepository(pool, keys, masters, data_keys, actor=actor(sid))
    if not await repo.set(name.decode("utf-8"), subscriber_id=sid, **args):
        raise SubjectChanged("the account changed meanwhile; nothing was changed")
    return sorted(changes)
