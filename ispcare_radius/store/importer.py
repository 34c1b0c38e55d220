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

from ispcare_radius.aaa.model import SubscriberStatus
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
)
_REQUIRED: Final = CSV_COLUMNS[:2]
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


def parse_import_csv(path: Path) -> Iterator[ImportRow]:
    """Rows of a subscriber CSV with a header naming ``CSV_COLUMNS`` (first two required).

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
        for required in _REQUIRED:
            if required not in names:
                raise ValueError(f"line 1: required column {required} is missing")
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
        self._kek_version = masters.primary_version
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
                self._kek_version,
                fields.seal(cipher, Column.USER_NAME, sid, row.user_name.encode("utf-8")),
                fields.seal(cipher, Column.PASSWORD, sid, password),
                fields.seal(cipher, Column.STATIC_IPV4, sid, None if ipv4 is None else ipv4.packed),
                fields.seal(cipher, Column.MAC_LOCK, sid, mac),
            )
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
