"""Subscriber values as provisioning takes and shows them: checked, then sealed per column.

Credentials, the MAC binding and policy fields given by an operator are
validated here and sealed for their column; ``SubscriberView`` is what an
operator is shown. No database access. Imports aaa, privacy and
store.fields; never server or cli.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Final

from ispcare_radius.aaa.methods.credentials import parse_nt_hash, parse_scrypt
from ispcare_radius.aaa.model import MacBinding, Overrides, SubscriberStatus
from ispcare_radius.privacy.crypto import FieldCipher
from ispcare_radius.store import fields
from ispcare_radius.store.fields import Column


class Unset(Enum):
    """The type of ``UNSET``: an enum member, so that ``Literal`` can name it."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET
"""Marker for "leave this field unchanged" in ``SubscriberRepository.set``."""


@dataclass(frozen=True, slots=True)
class SubscriberView:
    """A subscriber as an operator sees it (CLI ``show``); never the password."""

    id: int
    user_name: str = field(repr=False)
    status: SubscriberStatus
    plan: str | None
    expires_at: datetime | None
    static_ipv4: ipaddress.IPv4Address | None = field(repr=False)
    static_ipv6_prefix: ipaddress.IPv6Network | None = field(repr=False)
    mac_lock: str | None = field(repr=False)
    account_ref: str | None
    has_password: bool
    created_at: datetime
    updated_at: datetime
    framed_netmask: ipaddress.IPv4Address | None = field(default=None, repr=False)
    framed_routes: tuple[str, ...] = field(default=(), repr=False)
    delegated_ipv6_prefix: ipaddress.IPv6Network | None = field(default=None, repr=False)
    framed_ipv6_address: ipaddress.IPv6Address | None = field(default=None, repr=False)
    overrides: Overrides | None = None
    has_nt_hash: bool = False
    has_slow_hash: bool = False
    mac_binding: MacBinding = MacBinding.OFF
    # The password methods that can work with the credentials held.
    methods: tuple[str, ...] = ()
    # Lifecycle (migration 0011): a legal hold blocks erasure after deactivation.
    legal_hold: bool = False
    deactivated_at: datetime | None = None


_SEALED: Final = {
    "framed_netmask": Column.FRAMED_NETMASK,
    "framed_routes": Column.FRAMED_ROUTES,
    "delegated_ipv6_prefix": Column.DELEGATED_IPV6,
    "framed_ipv6_address": Column.FRAMED_IPV6_ADDRESS,
}


def _encode_policy(name: str, value: Any) -> bytes | None:
    if name == "framed_netmask":
        return fields.parse_netmask(value).packed
    if name == "framed_routes":
        return fields.encode_routes(tuple(fields.parse_route(r) for r in value))
    if name == "delegated_ipv6_prefix":
        return str(fields.parse_ipv6_prefix(value)).encode("ascii")
    return fields.parse_ipv6_address(value).packed


def policy_changes(cipher: FieldCipher, sid: int, values: dict[str, Any]) -> dict[str, Any]:
    """Column -> stored value for the given policy fields (None clears; UNSET skips)."""
    overrides = dict(fields.OVERRIDE_COLUMNS)
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if value is UNSET:
            continue
        if name in _SEALED:
            column = _SEALED[name]
            plain = None if value is None else _encode_policy(name, value)
            changes[f"{column.value}_enc"] = fields.seal(cipher, column, sid, plain)
        else:
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"override {name} must be a non-negative integer")
            changes[overrides[name]] = value
    return changes


@dataclass(frozen=True, slots=True)
class _Credentials:
    """The three credential columns' plaintexts, validated."""

    password: bytes | None = field(default=None, repr=False)
    nt_hash: bytes | None = field(default=None, repr=False)
    slow_hash: bytes | None = field(default=None, repr=False)

    def sealed(self, cipher: FieldCipher, sid: int) -> dict[str, bytes | None]:
        return {
            "password_enc": fields.seal(cipher, Column.PASSWORD, sid, self.password),
            "nt_hash_enc": fields.seal(cipher, Column.NT_HASH, sid, self.nt_hash),
            "slow_hash_enc": fields.seal(cipher, Column.SLOW_HASH, sid, self.slow_hash),
        }


def credentials(
    password: str | None, nt_hash: str | None, password_hash: str | None
) -> _Credentials:
    """Validate a credential triple: the reversible password, NT hash hex, ``$scrypt$`` text.

    ValueError (without the value) for a malformed hash.
    """
    nt = None if nt_hash is None else parse_nt_hash(nt_hash)
    slow = None if password_hash is None else parse_scrypt(password_hash).encode().encode("ascii")
    return _Credentials(_utf8(password), nt, slow)


def resolve_mac_binding(
    given: str | None, *, current: MacBinding, has_lock: bool, lock_given: bool
) -> MacBinding:
    """The MAC binding after a change, kept consistent with the lock (migration 0008).

    Setting a lock on an ``off`` subscriber makes it ``lock``; clearing the
    lock of a ``lock`` subscriber makes it ``off``; ``first_login`` keeps its
    mode either way (a cleared lock binds again at the next login).
    """
    if given is not None:
        binding = fields.parse_mac_binding(given)
    elif lock_given and has_lock and current is MacBinding.OFF:
        binding = MacBinding.LOCK
    elif lock_given and not has_lock and current is MacBinding.LOCK:
        binding = MacBinding.OFF
    else:
        binding = current
    if binding is MacBinding.LOCK and not has_lock:
        raise ValueError("MAC binding 'lock' needs a MAC lock (give one with it)")
    if binding is MacBinding.OFF and has_lock and lock_given:
        raise ValueError("MAC binding 'off' keeps no MAC lock")
    return binding


def _utf8(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")
