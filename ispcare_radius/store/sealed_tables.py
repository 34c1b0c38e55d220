"""Where values sealed with a subscriber's data key live, and re-sealing them.

``SUBSCRIBER_TABLES`` names every table besides subscribers whose sealed
columns a data key covers, and how each value's associated data is made;
``OTHER_SEALED`` the sealed columns under other keys. ``reseal_table`` moves
one subscriber's rows of one table to a new data key inside the caller's
transaction (store/rotation.py holds the subscriber row).

Imports privacy and store; never server or cli.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ispcare_radius.privacy.crypto import FieldCipher, field_aad
from ispcare_radius.store.accounting import record_aad
from ispcare_radius.store.db import Connection
from ispcare_radius.store.devices import device_aad
from ispcare_radius.store.events import KNOWN_TABLE, event_aad
from ispcare_radius.store.session_keys import session_aad
from ispcare_radius.store.sessions import SEALED as SESSION_SEALED

_UPDATE_CHUNK: Final = 1000
# Rows of one table read per fetch while re-sealing one subscriber's values.
PAGE_ROWS: Final = 5000


@dataclass(frozen=True, slots=True)
class SealedTable:
    """A table whose ``<column>_enc`` values are sealed with the data key of the
    row's ``subscriber_id``; ``keys`` (name, SQL type) address one row of a
    subscriber, ``aad`` gives a value's associated data from (row, column,
    subscriber id)."""

    table: str
    keys: tuple[tuple[str, str], ...]
    columns: tuple[str, ...]
    aad: Callable[[Any, str, int], bytes]
    select: tuple[str, ...] = ()  # more columns the aad needs


def _flag_aad(row: Any, column: str, sid: int) -> bytes:
    # The flag's natural key (store.flags.row_key), imported here so that the
    # detection code loads only where flags exist.
    from ispcare_radius.store.flags import TABLE, row_key

    key = row_key(row["rule"], row["subject_kind"], bytes(row["subject"]), row["bucket"])
    return field_aad(TABLE, column, key, sid or None)


# Every table holding values sealed with a subscriber's data key, besides
# subscribers itself. tests/test_keys_rotation.py checks the schema against
# this list and OTHER_SEALED: a new sealed column must be added to one.
SUBSCRIBER_TABLES: Final[tuple[SealedTable, ...]] = (
    SealedTable(
        "devices",
        (("id", "uuid"),),
        ("mac",),
        lambda r, c, sid: device_aad(str(r["id"]), sid),
    ),
    SealedTable(
        KNOWN_TABLE,
        (("time", "timestamptz"), ("id", "uuid")),
        ("user_name", "calling_station_id", "nas_ip"),
        lambda r, c, sid: event_aad(KNOWN_TABLE, c, r["id"], sid),
    ),
    SealedTable(
        "acct_records",
        (("time", "timestamptz"), ("id", "uuid")),
        SESSION_SEALED,
        lambda r, c, sid: record_aad(c, r["id"], sid),
    ),
    # Copies of acct_records ciphertexts, bound to the record (session_aad).
    SealedTable(
        "sessions_active",
        (("session_key", "bytea"), ("id", "uuid")),
        SESSION_SEALED,
        lambda r, c, sid: session_aad(c, r["id"], sid),
    ),
    SealedTable(
        "sessions_closed",
        (("stopped_at", "timestamptz"), ("id", "uuid")),
        SESSION_SEALED,
        lambda r, c, sid: session_aad(c, r["id"], sid),
    ),
    SealedTable(
        "flags",
        (("id", "bigint"),),
        ("evidence", "note"),
        _flag_aad,
        select=("rule", "subject_kind", "subject", "bucket"),
    ),
)
# Sealed columns not under a subscriber's data key, and what seals them.
OTHER_SEALED: Final[dict[tuple[str, str], str]] = {
    ("nas", "secret_enc"): "system key 'nas'",
    ("auth_rejects_unknown", "user_name_enc"): "epoch keys",
    ("auth_rejects_unknown", "calling_station_id_enc"): "epoch keys",
    ("auth_rejects_unknown", "nas_ip_enc"): "epoch keys",
}


def reseal(old: FieldCipher, new: FieldCipher, blob: Any, aad: bytes) -> bytes | None:
    if blob is None:
        return None
    return new.seal(old.open(bytes(blob), aad), aad)


async def table_exists(conn: Connection, table: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


async def reseal_table(
    conn: Connection,
    spec: SealedTable,
    sid: int,
    old: FieldCipher,
    new: FieldCipher,
    *,
    chunk_rows: int = PAGE_ROWS,
) -> int:
    """Re-seal one subscriber's rows of ``spec.table``, ``chunk_rows`` at a time.

    Rows are paged by their key (keyset, each page locked ``FOR UPDATE``) so
    that a subscriber with a long accounting history never sits in memory
    whole. No page is missed or met twice: writers wait on the subscriber row
    this transaction holds, and re-sealing leaves the keys as they are.
    """
    names = [k for k, _ in spec.keys]
    wanted = list(dict.fromkeys([*names, *spec.select]))
    enc = [f"{c}_enc" for c in spec.columns]
    head = f"SELECT {', '.join(wanted + enc)} FROM {spec.table} WHERE subscriber_id = $1"
    order = f" ORDER BY {', '.join(names)} LIMIT $2 FOR UPDATE"
    marks = ", ".join(f"${i + 3}::{kind}" for i, (_, kind) in enumerate(spec.keys))
    after_clause = f" AND ({', '.join(names)}) > ({marks})"
    count = 0
    after: tuple[Any, ...] | None = None
    while True:
        if after is None:
            chunk = await conn.fetch(head + order, sid, chunk_rows)
        else:
            chunk = await conn.fetch(head + after_clause + order, sid, chunk_rows, *after)
        if not chunk:
            return count
        after = tuple(chunk[-1][k] for k in names)
        count += await _reseal_chunk(conn, spec, sid, old, new, chunk)
        if len(chunk) < chunk_rows:
            return count


async def _reseal_chunk(
    conn: Connection,
    spec: SealedTable,
    sid: int,
    old: FieldCipher,
    new: FieldCipher,
    rows: Sequence[Any],
) -> int:
    """Write one page of re-sealed values back, ``_UPDATE_CHUNK`` rows per statement."""
    names = [k for k, _ in spec.keys]
    enc = [f"{c}_enc" for c in spec.columns]
    count = 0
    for start in range(0, len(rows), _UPDATE_CHUNK):
        chunk = rows[start : start + _UPDATE_CHUNK]
        key_values = [[r[k] for r in chunk] for k in names]
        sealed: list[list[bytes | None]] = []
        for column in spec.columns:
            values = [reseal(old, new, r[f"{column}_enc"], spec.aad(r, column, sid)) for r in chunk]
            count += sum(v is not None for v in values)
            sealed.append(values)
        params = [*key_values, *sealed]
        arrays = ", ".join(
            f"${i + 2}::{kind}[]"
            for i, kind in enumerate([t for _, t in spec.keys] + ["bytea"] * len(enc))
        )
        alias = ", ".join([f"k_{k}" for k in names] + [f"v_{c}" for c in enc])
        sets = ", ".join(f"{c} = v.v_{c}" for c in enc)
        match = " AND ".join(f"t.{k} = v.k_{k}" for k in names)
        await conn.execute(
            f"UPDATE {spec.table} t SET {sets} FROM unnest({arrays}) AS v({alias})"
            f" WHERE t.subscriber_id = $1 AND {match}",
            sid,
            *params,
        )
    return count
