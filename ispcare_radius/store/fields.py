"""Encoding, sealing and blind indexes of the personal columns of ``subscribers``.

Pure helpers shared by the subscriber repository and the directory. Imports
aaa.model and privacy; no database access here.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Any, Final

import asyncpg

from ispcare_radius.aaa.model import MacBinding, Overrides, Plan, Subscriber, SubscriberStatus
from ispcare_radius.privacy.blind import BlindIndex, normalize_mac, normalize_user_name
from ispcare_radius.privacy.crypto import FieldCipher, field_aad
from ispcare_radius.privacy.secret import Secret

TABLE: Final = "subscribers"


class LookupKind(StrEnum):
    """Globally unique values indexed in ``subscriber_lookup``."""

    USER_NAME = "user_name"
    MAC_LOCK = "mac_lock"
    STATIC_IPV4 = "static_ipv4"


class IndexKind(StrEnum):
    """Every kind of value that gets a blind index; its name is the HMAC domain."""

    USER_NAME = "user_name"
    MAC_LOCK = "mac_lock"
    STATIC_IPV4 = "static_ipv4"
    DEVICE_MAC = "device_mac"


class Column(StrEnum):
    """Encrypted columns of ``subscribers`` (stored as ``<name>_enc``)."""

    USER_NAME = "user_name"
    PASSWORD = "password"
    STATIC_IPV4 = "static_ipv4"
    STATIC_IPV6 = "static_ipv6"
    MAC_LOCK = "mac_lock"
    FRAMED_NETMASK = "framed_netmask"
    FRAMED_ROUTES = "framed_routes"
    DELEGATED_IPV6 = "delegated_ipv6"
    FRAMED_IPV6_ADDRESS = "framed_ipv6_address"
    NT_HASH = "nt_hash"
    SLOW_HASH = "slow_hash"


# Per-subscriber overrides of plan values: (Overrides field, column).
OVERRIDE_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("download_kbps", "override_download_kbps"),
    ("upload_kbps", "override_upload_kbps"),
    ("session_timeout", "override_session_timeout"),
    ("idle_timeout", "override_idle_timeout"),
)
# Columns added by migration 0006, read with every subscriber row.
POLICY_COLUMNS: Final[tuple[str, ...]] = (
    "framed_netmask_enc",
    "framed_routes_enc",
    "delegated_ipv6_enc",
    "framed_ipv6_address_enc",
    *(column for _, column in OVERRIDE_COLUMNS),
)


# Columns added by migration 0008, read with every subscriber row the
# directory decrypts: the credential forms besides password_enc, and how the
# MAC lock is bound.
CREDENTIAL_COLUMNS: Final[tuple[str, ...]] = ("nt_hash_enc", "slow_hash_enc", "mac_binding")


def credential_select(alias: str) -> str:
    """``alias.col, ...`` for the credential columns of ``subscribers``."""
    return ", ".join(f"{alias}.{col}" for col in CREDENTIAL_COLUMNS)


def parse_mac_binding(text: str) -> MacBinding:
    """A ``MacBinding`` from its name; ValueError listing the names otherwise."""
    try:
        return MacBinding(text.strip())
    except ValueError:
        names = ", ".join(m.value for m in MacBinding)
        raise ValueError(f"MAC binding must be one of {names}") from None


def policy_select(alias: str) -> str:
    """``alias.col, ...`` for the reply-policy columns of ``subscribers``."""
    return ", ".join(f"{alias}.{col}" for col in POLICY_COLUMNS)


def aad(column: Column, subscriber_id: int) -> bytes:
    """Associated data binding a subscriber field to its column and subscriber."""
    return field_aad(TABLE, column.value, subscriber_id, subscriber_id)


def seal(
    cipher: FieldCipher, column: Column, subscriber_id: int, value: bytes | None
) -> bytes | None:
    """``value`` sealed for (column, subscriber), or None for None."""
    if value is None:
        return None
    return cipher.seal(value, aad(column, subscriber_id))


def unseal(
    cipher: FieldCipher, column: Column, subscriber_id: int, blob: bytes | None
) -> bytes | None:
    """The plaintext of a sealed field, or None for a NULL column."""
    if blob is None:
        return None
    return cipher.open(bytes(blob), aad(column, subscriber_id))


def parse_mac(text: str) -> bytes:
    """Six MAC bytes from common notations; ValueError without the value otherwise."""
    mac = normalize_mac(text)
    if mac is None:
        raise ValueError("MAC lock is not a valid MAC address")
    return mac


def format_mac(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_ipv4(text: str) -> ipaddress.IPv4Address:
    """An IPv4 address; ValueError without the value otherwise."""
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ValueError("static IPv4 is not a valid IPv4 address") from None


def parse_ipv6_prefix(text: str) -> ipaddress.IPv6Network:
    """An IPv6 prefix; ValueError without the value otherwise."""
    try:
        return ipaddress.IPv6Network(text.strip(), strict=True)
    except ValueError:
        raise ValueError("static IPv6 prefix is not a valid IPv6 network") from None


def parse_netmask(text: str) -> ipaddress.IPv4Address:
    """A contiguous IPv4 netmask (``255.255.255.248`` or ``/29``); ValueError otherwise."""
    try:
        bits = text.strip().removeprefix("/")
        length = int(bits) if bits.isdigit() else ipaddress.IPv4Network(f"0.0.0.0/{bits}").prefixlen
        return ipaddress.IPv4Network(f"0.0.0.0/{length}").netmask
    except ValueError:
        raise ValueError("netmask is not a valid IPv4 netmask") from None


def parse_route(text: str) -> str:
    """A Framed-Route in its canonical text ``<prefix>/<len> <gateway> <metric>``.

    Accepts the prefix alone (gateway ``0.0.0.0``, meaning the subscriber's
    own address, and metric 1) or with gateway and metrics; ValueError
    without the value otherwise.
    """
    parts = text.split()
    try:
        if not 1 <= len(parts) <= 3:
            raise ValueError
        prefix = ipaddress.IPv4Network(parts[0], strict=True)
        gateway = ipaddress.IPv4Address(parts[1]) if len(parts) > 1 else None
        metric = int(parts[2]) if len(parts) > 2 else 1
        if not 0 <= metric <= 0xFFFF:
            raise ValueError
    except ValueError:
        raise ValueError("route is not '<prefix>/<len> [<gateway> [<metric>]]'") from None
    return f"{prefix} {gateway or '0.0.0.0'} {metric}"


def parse_ipv6_address(text: str) -> ipaddress.IPv6Address:
    """An IPv6 address; ValueError without the value otherwise."""
    try:
        return ipaddress.IPv6Address(text.strip())
    except ValueError:
        raise ValueError("IPv6 address is not valid") from None


def encode_routes(routes: tuple[str, ...]) -> bytes | None:
    """Canonical routes joined by newlines, or None for none."""
    return "\n".join(routes).encode("ascii") if routes else None


def _domain(kind: IndexKind | LookupKind, value: bytes) -> bytes:
    # Domain separation: the same bytes as a user name, a MAC lock, a static
    # IPv4 or a device MAC give unrelated indexes, so equal blinds in two
    # kinds reveal nothing. Kind names hold no NUL, so the encoding is
    # unambiguous.
    return kind.value.encode("ascii") + b"\x00" + value


def blind(index: BlindIndex, kind: IndexKind | LookupKind, value: bytes) -> bytes:
    """Full-length blind index of an already normalised ``value`` of ``kind``."""
    return index.full(_domain(kind, value))


def blind_prefix(index: BlindIndex, kind: IndexKind | LookupKind, value: bytes, bits: int) -> int:
    """Truncated blind index (search only, collides on purpose) of ``value`` of ``kind``."""
    return index.truncated(_domain(kind, value), bits)


def user_name_blind(index: BlindIndex, user_name: str) -> bytes:
    """Full-length blind index of the normalised user name (unique lookup)."""
    return blind(index, LookupKind.USER_NAME, normalize_user_name(user_name))


def device_mac_search(index: BlindIndex, mac: bytes, bits: int = 16) -> int:
    """The short search index of a device MAC (6 bytes): candidates, then decrypt."""
    return blind_prefix(index, IndexKind.DEVICE_MAC, mac, bits)


def subscriber_from_record(
    record: asyncpg.Record, cipher: FieldCipher, plan: Plan | None
) -> Subscriber:
    """Decrypt a subscribers row (id, status, ...,``*_enc``) into the AAA value."""
    sid = int(record["id"])
    password = unseal(cipher, Column.PASSWORD, sid, record["password_enc"])
    ipv4 = unseal(cipher, Column.STATIC_IPV4, sid, record["static_ipv4_enc"])
    ipv6 = unseal(cipher, Column.STATIC_IPV6, sid, record["static_ipv6_enc"])
    nt_hash = unseal(cipher, Column.NT_HASH, sid, record["nt_hash_enc"])
    slow_hash = unseal(cipher, Column.SLOW_HASH, sid, record["slow_hash_enc"])
    return Subscriber(
        id=sid,
        status=SubscriberStatus(record["status"]),
        plan=plan,
        password=None if password is None else Secret(password),
        account_ref=record["account_ref"],
        expires_at=record["expires_at"],
        static_ipv4=None if ipv4 is None else ipaddress.IPv4Address(ipv4),
        static_ipv6_prefix=None if ipv6 is None else ipaddress.IPv6Network(ipv6.decode("ascii")),
        mac_lock=unseal(cipher, Column.MAC_LOCK, sid, record["mac_lock_enc"]),
        nt_hash=None if nt_hash is None else Secret(nt_hash),
        slow_hash=None if slow_hash is None else Secret(slow_hash),
        mac_binding=MacBinding(record["mac_binding"]),
        **policy_from_record(record, cipher),
    )


def policy_from_record(record: asyncpg.Record, cipher: FieldCipher) -> dict[str, Any]:
    """The reply-policy fields of a subscribers row (POLICY_COLUMNS), decrypted.

    Keyed by the ``Subscriber`` field names they fill.
    """
    sid = int(record["id"])
    netmask = unseal(cipher, Column.FRAMED_NETMASK, sid, record["framed_netmask_enc"])
    routes = unseal(cipher, Column.FRAMED_ROUTES, sid, record["framed_routes_enc"])
    delegated = unseal(cipher, Column.DELEGATED_IPV6, sid, record["delegated_ipv6_enc"])
    v6addr = unseal(cipher, Column.FRAMED_IPV6_ADDRESS, sid, record["framed_ipv6_address_enc"])
    overrides = {f: record[col] for f, col in OVERRIDE_COLUMNS if record[col] is not None}
    return {
        "framed_netmask": None if netmask is None else ipaddress.IPv4Address(netmask),
        "framed_routes": () if routes is None else tuple(routes.decode("ascii").split("\n")),
        "delegated_ipv6_prefix": (
            None if delegated is None else ipaddress.IPv6Network(delegated.decode("ascii"))
        ),
        "framed_ipv6_address": None if v6addr is None else ipaddress.IPv6Address(v6addr),
        "overrides": Overrides(**overrides) if overrides else None,
    }
