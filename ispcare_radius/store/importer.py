"""Bulk subscriber import: CSV parsing and batched, encrypted COPY into PostgreSQL.

Imports aaa.model, privacy and store (db, fields, keyring); never server or
cli. Errors name the line number, never the value.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, Final

import asyncpg

from ispcare_radius.aaa.methods.credentials import parse_nt_hash, parse_scrypt
from ispcare_radius.aaa.model import MacBinding, SubscriberStatus
from ispcare_radius.privacy.crypto import FieldCipher, key_version
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store import fields
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.fields import Column, LookupKind
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys

CSV_COLUMNS: Final = (
    "user_name",
    "password",
    "plan",
    "status",
    "expires_at",
    "static_ipv4",
    "mac_lock",
    "account_ref",
    # Credential forms besides the reversible password (hex; '$scrypt$...').
    "nt_hash",
    "password_hash",
    "mac_binding",
    "static_ipv6_prefix",
    "framed_netmask",
    # Framed-Route values separated by ';': "<prefix>/<len> [<gateway> [<metric>]]".
    "framed_routes",
    "delegated_ipv6_prefix",
    "framed_ipv6_address",
    # Overrides of the plan's values: kbit/s and seconds.
    "download_kbps",
    "upload_kbps",
    "session_timeout",
    "idle_timeout",
)
_CREDENTIAL_COLUMNS: Final = ("password", "nt_hash", "password_hash")
_INTEGER_COLUMNS: Final = ("download_kbps", "upload_kbps", "session_timeout", "idle_timeout")
_SUBSCRIBER_COLUMNS: Final = (
    "id",
    "account_ref",
    "status",
    "plan_id",
    "expires_at",
    "wrapped_key",
    "kek_version",
    "user_name_enc",
    "password_enc",
    "static_ipv4_enc",
    "mac_lock_enc",
    "nt_hash_enc",
    "slow_hash_enc",
    "mac_binding",
    "static_ipv6_enc",
    "framed_netmask_enc",
    "framed_routes_enc",
    "delegated_ipv6_enc",
    "framed_ipv6_address_enc",
    *(column for _, column in fields.OVERRIDE_COLUMNS),
)
_DUPLICATE: Final = {
    LookupKind.USER_NAME: "user name",
    LookupKind.MAC_LOCK: "MAC lock",
    LookupKind.STATIC_IPV4: "static IPv4",
}


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One subscriber to import; ``line`` is its line in the source (0 if none)."""

    user_name: str = field(repr=False)
    password: str | None = field(default=None, repr=False)
    plan: str | None = None
    status: str | None = None
    expires_at: datetime | None = None
    static_ipv4: str | None = field(default=None, repr=False)
    mac_lock: str | None = field(default=None, repr=False)
    account_ref: str | None = None
    line: int = 0
    nt_hash: str | None = field(default=None, repr=False)
    password_hash: str | None = field(default=None, repr=False)
    mac_binding: str | None = None
    static_ipv6_prefix: str | None = field(default=None, repr=False)
    framed_netmask: str | None = field(default=None, repr=False)
    framed_routes: tuple[str, ...] = field(default=(), repr=False)
    delegated_ipv6_prefix: str | None = field(default=None, repr=False)
    framed_ipv6_address: str | None = field(default=None, repr=False)
    download_kbps: int | None = None
    upload_kbps: int | None = None
    session_timeout: int | None = None
    idle_timeout: int | None = None


def parse_import_csv(path: Path) -> Iterator[ImportRow]:
    """Rows of a subscriber CSV with a header naming ``CSV_COLUMNS``.

    ``user_name`` is required, and at least one credential column
    (``password``, ``nt_hash``, ``password_hash``); the others are optional.

    Empty cells mean "not set". A bad line raises ValueError naming its line
    number, never its content.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError("line 1: missing header")
        names = [h.strip() for h in header]
        unknown = [n for n in names if n not in CSV_COLUMNS]
        if unknown:
            raise ValueError(f"line 1: unknown column(s) {', '.join(unknown)}")
        if len(set(names)) != len(names):
            raise ValueError("line 1: repeated column")
        if "user_name" not in names:
            raise ValueError("line 1: required column user_name is missing")
        if not any(c in names for c in _CREDENTIAL_COLUMNS):
            raise ValueError(
                "line 1: required column password is missing (or give nt_hash or password_hash)"
            )
        for record in reader:
            line = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if len(record) != len(names):
                raise ValueError(f"line {line}: expected {len(names)} fields, got {len(record)}")
            cells = {n: (v if v != "" else None) for n, v in zip(names, record, strict=True)}
            yield _row_from_cells(cells, line)


def _row_from_cells(cells: dict[str, str | None], line: int) -> ImportRow:
    user_name = cells.get("user_name")
    if not user_name:
        raise ValueError(f"line {line}: user_name is empty")
    expires: datetime | None = None
    text = cells.get("expires_at")
    if text is not None:
        try:
            expires = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"line {line}: expires_at is not an ISO 8601 date/time") from None
    numbers: dict[str, int | None] = {}
    for name in _INTEGER_COLUMNS:
        cell = cells.get(name)
        if cell is None:
            numbers[name] = None
            continue
        try:
            number = int(cell.strip())
        except ValueError:
            raise ValueError(f"line {line}: {name} is not a whole number") from None
        if number < 0:
            raise ValueError(f"line {line}: {name} must not be negative")
        numbers[name] = number
    routes = cells.get("framed_routes")
    return ImportRow(
        user_name=user_name,
        password=cells.get("password"),
        plan=cells.get("plan"),
        status=cells.get("status"),
        expires_at=expires,
        static_ipv4=cells.get("static_ipv4"),
        mac_lock=cells.get("mac_lock"),
        account_ref=cells.get("account_ref"),
        line=line,
        nt_hash=cells.get("nt_hash"),
        password_hash=cells.get("password_hash"),
        mac_binding=cells.get("mac_binding"),
        static_ipv6_prefix=cells.get("static_ipv6_prefix"),
        framed_netmask=cells.get("framed_netmask"),
        framed_routes=() if routes is None else tuple(r for r in routes.split(";") if r.strip()),
        delegated_ipv6_prefix=cells.get("delegated_ipv6_prefix"),
        framed_ipv6_address=cells.get("framed_ipv6_address"),
        **numbers,
    )


@dataclass(slots=True)
class _Batch:
    subscribers: list[tuple[Any, ...]] = field(default_factory=list)
    lookups: list[tuple[str, bytes, int]] = field(default_factory=list)
    lines: dict[tuple[str, bytes], int] = field(default_factory=dict)


class _Encoder:
    """Validates and encrypts rows; remembers every blind index seen in this import."""

    def __init__(
        self, keys: SystemKeys, masters: MasterKeys, data_keys: DataKeyCache, plans: dict[str, int]
    ) -> None:
        self._index = keys.blind_index
        self._data_keys = data_keys
        self._plans = plans
        self._seen: dict[tuple[str, bytes], int] = {}

    def add(self, batch: _Batch, row: ImportRow, ordinal: int, sid: int) -> None:
        line = row.line or ordinal
        try:
            status = SubscriberStatus(row.status or "active")
        except ValueError:
            raise ValueError(f"line {line}: unknown status") from None
        plan_id = None
        if row.plan is not None:
            if row.plan not in self._plans:
                raise ValueError(f"line {line}: unknown plan")
            plan_id = self._plans[row.plan]
        try:
            ipv4 = None if row.static_ipv4 is None else fields.parse_ipv4(row.static_ipv4)
            mac = None if row.mac_lock is None else fields.parse_mac(row.mac_lock)
            binding = _mac_binding(row.mac_binding, mac is not None)
            sealed = _Sealed.of(row)
        except ValueError as exc:
            raise ValueError(f"line {line}: {exc}") from None
        if not row.user_name:
            raise ValueError(f"line {line}: user_name is empty")
        expires = row.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        blinds = [(LookupKind.USER_NAME, fields.user_name_blind(self._index, row.user_name))]
        for kind, value in (
            (LookupKind.MAC_LOCK, mac),
            (LookupKind.STATIC_IPV4, None if ipv4 is None else ipv4.packed),
        ):
            if value is not None:
                blinds.append((kind, fields.blind(self._index, kind, value)))
        for kind, blind in blinds:
            first = self._seen.get((kind.value, blind))
            if first is not None:
                raise ValueError(f"line {line}: {_DUPLICATE[kind]} repeats line {first}")
        for kind, blind in blinds:
            self._seen[(kind.value, blind)] = line
            batch.lines[(kind.value, blind)] = line
            batch.lookups.append((kind.value, blind, sid))
        wrapped, cipher = self._data_keys.new_key(sid)
        password = None if row.password is None else row.password.encode("utf-8")
        batch.subscribers.append(
            (
                sid,
                row.account_ref,
                status.value,
                plan_id,
                expires,
                wrapped,
                # The version that wrapped it: the key file may have been re-read.
                key_version(wrapped),
                fields.seal(cipher, Column.USER_NAME, sid, row.user_name.encode("utf-8")),
                fields.seal(cipher, Column.PASSWORD, sid, password),
                fields.seal(cipher, Column.STATIC_IPV4, sid, None if ipv4 is None else ipv4.packed),
                fields.seal(cipher, Column.MAC_LOCK, sid, mac),
                *sealed.seal(cipher, sid),
                binding.value,
                *sealed.tail(cipher, sid),
                row.download_kbps,
                row.upload_kbps,
                row.session_timeout,
                row.idle_timeout,
            )
        )


def _mac_binding(text: str | None, has_lock: bool) -> MacBinding:
    """The row's MAC binding, consistent with its lock as migration 0008 requires."""
    if text is None:
        return MacBinding.LOCK if has_lock else MacBinding.OFF
    binding = fields.parse_mac_binding(text)
    if binding is MacBinding.LOCK and not has_lock:
        raise ValueError("mac_binding lock needs a mac_lock")
    if binding is MacBinding.OFF and has_lock:
        raise ValueError("mac_binding off keeps no mac_lock")
    return binding


@dataclass(frozen=True, slots=True)
class _Sealed:
    """A row's validated plaintexts of the columns sealed besides name, password, IPv4, MAC."""

    nt_hash: bytes | None = field(default=None, repr=False)
    slow_hash: bytes | None = field(default=None, repr=False)
    static_ipv6: bytes | None = field(default=None, repr=False)
    netmask: bytes | None = field(default=None, repr=False)
    routes: bytes | None = field(default=None, repr=False)
    delegated: bytes | None = field(default=None, repr=False)
    v6_address: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, row: ImportRow) -> _Sealed:
        """Parse and encode as ``subscribers`` stores them; ValueError without the value."""

        def text(value: str | None, parse: Callable[[str], object]) -> bytes | None:
            return None if value is None else str(parse(value)).encode("ascii")

        netmask = None if row.framed_netmask is None else fields.parse_netmask(row.framed_netmask)
        v6addr = row.framed_ipv6_address
        slow = row.password_hash
        return cls(
            nt_hash=None if row.nt_hash is None else parse_nt_hash(row.nt_hash),
            slow_hash=None if slow is None else parse_scrypt(slow).encode().encode("ascii"),
            static_ipv6=text(row.static_ipv6_prefix, fields.parse_ipv6_prefix),
            netmask=None if netmask is None else netmask.packed,
            routes=fields.encode_routes(tuple(fields.parse_route(r) for r in row.framed_routes)),
            delegated=text(row.delegated_ipv6_prefix, fields.parse_ipv6_prefix),
            v6_address=None if v6addr is None else fields.parse_ipv6_address(v6addr).packed,
        )

    def seal(self, cipher: FieldCipher, sid: int) -> tuple[bytes | None, bytes | None]:
        """nt_hash_enc, slow_hash_enc."""
        return (
            fields.seal(cipher, Column.NT_HASH, sid, self.nt_hash),
            fields.seal(cipher, Column.SLOW_HASH, sid, self.slow_hash),
        )

    def tail(self, cipher: FieldCipher, sid: int) -> tuple[bytes | None, ...]:
        """static_ipv6_enc and the sealed reply-policy columns, in _SUBSCRIBER_COLUMNS order."""
        return (
            fields.seal(cipher, Column.STATIC_IPV6, sid, self.static_ipv6),
            fields.seal(cipher, Column.FRAMED_NETMASK, sid, self.netmask),
            fields.seal(cipher, Column.FRAMED_ROUTES, sid, self.routes),
            fields.seal(cipher, Column.DELEGATED_IPV6, sid, self.delegated),
            fields.seal(cipher, Column.FRAMED_IPV6_ADDRESS, sid, self.v6_address),
        )


async def _reject_existing(conn: Connection, batch: _Batch) -> None:
    clash = await conn.fetchrow(
        "SELECT l.kind, l.blind FROM unnest($1::text[], $2::bytea[]) AS u(kind, blind)"
        " JOIN subscriber_lookup l ON l.kind = u.kind AND l.blind = u.blind LIMIT 1",
        [k for k, _, _ in batch.lookups],
        [b for _, b, _ in batch.lookups],
    )
    if clash is not None:
        kind = LookupKind(clash["kind"])
        line = batch.lines[(kind.value, bytes(clash["blind"]))]
        raise ValueError(f"line {line}: {_DUPLICATE[kind]} already exists")


async def import_subscribers(
    pool: Pool,
    keys: SystemKeys,
    masters: MasterKeys,
    data_keys: DataKeyCache,
    rows: Iterable[ImportRow],
    *,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 5000,
    actor: str = "system",
) -> int:
    """Import ``rows`` all or nothing; return how many were created.

    Per batch: one query reserves the ids, rows are validated and encrypted
    in Python, one query checks the blind indexes against existing
    subscribers, and two COPYs write subscribers and lookups. Duplicates
    inside the import or against existing subscribers raise ValueError
    naming the line only.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = 0
    created: list[int] = []
    iterator = iter(rows)
    async with acquire(pool, timeout=30.0) as conn:
        try:
            async with conn.transaction():
                plan_rows = await conn.fetch("SELECT name, id FROM plans")
                encoder = _Encoder(
                    keys, masters, data_keys, {str(r["name"]): int(r["id"]) for r in plan_rows}
                )
                while chunk := list(islice(iterator, batch_size)):
                    ids = await conn.fetch(
                        "SELECT nextval('subscriber_id_seq') AS id FROM generate_series(1, $1)",
                        len(chunk),
                    )
                    batch = _Batch()
                    for offset, (row, id_row) in enumerate(zip(chunk, ids, strict=True)):
                        sid = int(id_row["id"])
                        created.append(sid)
                        encoder.add(batch, row, total + offset + 1, sid)
                    await _reject_existing(conn, batch)
                    await conn.copy_records_to_table(
                        "subscribers", records=batch.subscribers, columns=_SUBSCRIBER_COLUMNS
                    )
                    try:
                        await conn.copy_records_to_table(
                            "subscriber_lookup",
                            records=batch.lookups,
                            columns=("kind", "blind", "subscriber_id"),
                        )
                    except asyncpg.UniqueViolationError:
                        # Only a concurrent writer can get here (both checks passed).
                        raise ValueError(
                            "a user name, MAC lock or static IPv4 was taken during the import"
                        ) from None
                    total += len(chunk)
                    if progress is not None:
                        progress(total)
                if total:
                    detail = {"count": total}
                    await conn.execute(
                        "INSERT INTO audit_log (actor, action, subscriber_id, detail)"
                        " VALUES ($1, 'subscriber.import', NULL, $2)",
                        actor,
                        detail,
                    )
        except BaseException:
            for sid in created:
                data_keys.discard(sid)
            raise
    return total
