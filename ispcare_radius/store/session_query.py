"""Operator access to sessions: list, show, close, and "who had IP X at time T".

Sealed session fields are opened here with the subscriber's data key (the
epoch key for subscriber 0); an erased subscriber's fields stay closed. Every
operator close and every who-had query writes an audit row, with no personal
value in it. Imports privacy and store; never server or cli.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.privacy.crypto import DecryptError, FieldCipher
from ispcare_radius.store import fields
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.fields import Column
from ispcare_radius.store.keyring import DataKeyCache, live_subscriber_ciphers
from ispcare_radius.store.session_keys import ip_blind, session_aad
from ispcare_radius.store.sessions import CLOSED_EXTRA, COLUMNS, SEALED
from ispcare_radius.store.subscribers import audit

# An IPv6 address is looked up as its /128 (Framed-IPv6-Address) and as every
# prefix containing it down to /32: delegated and framed prefixes are commonly
# /64, /60, /56 or /48, and a blind index only matches the exact prefix text.
IPV6_PREFIX_LENGTHS: Final = tuple(range(128, 31, -1))
WHO_HAD: Final = "who_had"
CLOSE: Final = "session.close"

_NAMES: Final = ", ".join(f"s.{name}" for name, _ in COLUMNS)
_ACTIVE: Final = (
    f"SELECT {_NAMES}, NULL::timestamptz AS stopped_at, NULL::timestamptz AS closed_at,"
    " NULL::text AS close_reason, NULL::bigint AS terminate_cause, n.name AS nas_name"
    " FROM sessions_active s LEFT JOIN nas n ON n.id = s.nas_id"
)
_CLOSED: Final = (
    f"SELECT {_NAMES}, s.stopped_at, s.closed_at, s.close_reason, s.terminate_cause,"
    " n.name AS nas_name FROM sessions_closed s LEFT JOIN nas n ON n.id = s.nas_id"
)
# One statement, so the row is never in both tables or in neither: the
# operator's close is at the session's last event time, keeping its id and
# sealed columns (their associated data binds the id, not the table).
_CLOSE_ADMIN: Final = (
    "WITH moved AS (DELETE FROM sessions_active WHERE id = $1 RETURNING *)"
    f" INSERT INTO sessions_closed ({', '.join(n for n, _ in COLUMNS + CLOSED_EXTRA)})"
    f" SELECT {', '.join(n for n, _ in COLUMNS)}, updated_at, $2, 'admin', NULL FROM moved"
    " RETURNING subscriber_id, stopped_at"
)


class Readable(StrEnum):
    """Whether a session's sealed fields could be opened."""

    OK = "ok"
    ERASED = "erased"  # the subscriber and its data key are gone
    UNREADABLE = "unreadable"  # a key or blob that does not open


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session as an operator sees it; personal fields opened, kept out of repr."""

    id: uuid.UUID
    subscriber_id: int
    nas_id: int
    nas_name: str | None
    nas_port_type: int | None
    started_at: datetime
    updated_at: datetime
    last_seen: datetime
    start_seen: bool
    interim_interval: int | None
    input_octets: int
    output_octets: int
    input_wraps: int
    output_wraps: int
    session_time: int
    stopped_at: datetime | None
    closed_at: datetime | None
    close_reason: str | None
    terminate_cause: int | None
    readable: Readable
    opened: dict[str, str | None] = field(repr=False)

    @property
    def active(self) -> bool:
        return self.close_reason is None

    def personal(self, name: str) -> str | None:
        """An opened sealed field (a name in ``store.sessions.SEALED``)."""
        return self.opened.get(name)


@dataclass(frozen=True, slots=True)
class Holder:
    """One answer to "who had IP X at T": the session and its subscriber."""

    session: SessionView
    user_name: str | None = field(repr=False)
    account_ref: str | None


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """What ``sessions list`` asks for; ``since`` bounds start (active) or stop (closed)."""

    closed: bool = False
    nas_id: int | None = None
    subscriber_id: int | None = None
    since: datetime | None = None
    limit: int = 50


def ip_candidates(text: str) -> tuple[str, list[str]]:
    """("ipv4" or "ipv6", the canonical texts a session could have stored for ``text``).

    An IPv4 address is stored as itself; an IPv6 address inside a framed or
    delegated prefix, so every prefix length is a candidate. An IPv6 prefix
    given as such is looked up exactly. ValueError (without the value) otherwise.
    """
    text = text.strip()
    try:
        if "/" in text:
            net = ipaddress.IPv6Network(text, strict=False)
            return "ipv6", [str(net)]
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address (or IPv6 prefix)") from None
    if isinstance(address, ipaddress.IPv4Address):
        return "ipv4", [str(address)]
    return "ipv6", [
        f"{address}/128" if bits == 128 else str(ipaddress.IPv6Network((address, bits), False))
        for bits in IPV6_PREFIX_LENGTHS
    ]


def _text(value: bytes | None) -> str | None:
    # Attribute values are octets; shown as UTF-8 with anything else escaped.
    return None if value is None else value.decode("utf-8", "backslashreplace")


def open_fields(record: Any, cipher: FieldCipher | None) -> tuple[Readable, dict[str, str | None]]:
    """The sealed fields of a session row, opened with ``cipher`` (None: erased)."""
    if cipher is None:
        return Readable.ERASED, {}
    opened: dict[str, str | None] = {}
    row_id, sid = record["id"], record["subscriber_id"]
    try:
        for name in SEALED:
            blob = record[f"{name}_enc"]
            opened[name] = (
                None
                if blob is None
                else _text(cipher.open(bytes(blob), session_aad(name, row_id, sid)))
            )
    except DecryptError:
        return Readable.UNREADABLE, {}
    return Readable.OK, opened


def _view(record: Any, cipher: FieldCipher | None) -> SessionView:
    readable, opened = open_fields(record, cipher)
    return SessionView(
        id=record["id"],
        subscriber_id=record["subscriber_id"],
        nas_id=record["nas_id"],
        nas_name=record["nas_name"],
        nas_port_type=record["nas_port_type"],
        started_at=record["started_at"],
        updated_at=record["updated_at"],
        last_seen=record["last_seen"],
        start_seen=record["start_seen"],
        interim_interval=record["interim_interval"],
        input_octets=record["input_octets"],
        output_octets=record["output_octets"],
        input_wraps=record["input_wraps"],
        output_wraps=record["output_wraps"],
        session_time=record["session_time"],
        stopped_at=record["stopped_at"],
        closed_at=record["closed_at"],
        close_reason=record["close_reason"],
        terminate_cause=record["terminate_cause"],
        readable=readable,
        opened=opened,
    )


class SessionQuery:
    """Reads sessions for operators, closes them by hand, answers lawful IP requests."""

    def __init__(
        self,
        pool: Pool,
        index: BlindIndex,
        data_keys: DataKeyCache,
        epoch: FieldCipher,
        *,
        actor: str = "system",
    ) -> None:
        self._pool = pool
        self._index = index
        self._data_keys = data_keys
        self._epoch = epoch
        self._actor = actor

    async def _ciphers(self, conn: Connection, ids: set[int]) -> dict[int, FieldCipher]:
        ciphers, _ = await live_subscriber_ciphers(conn, self._data_keys, ids)
        ciphers[0] = self._epoch
        return ciphers

    async def _views(self, conn: Connection, records: Sequence[Any]) -> list[SessionView]:
        ciphers = await self._ciphers(conn, {r["subscriber_id"] for r in records})
        return [_view(r, ciphers.get(r["subscriber_id"])) for r in records]

    async def nas_id(self, name: str) -> int | None:
        """The id of the NAS called ``name``, or None."""
        async with acquire(self._pool) as conn:
            value = await conn.fetchval("SELECT id FROM nas WHERE name = $1", name)
        return None if value is None else int(value)

    async def search(self, wanted: SessionFilter) -> list[SessionView]:
        """Active (or closed) sessions, newest first, at most ``wanted.limit``."""
        if wanted.limit < 1:
            raise ValueError("limit must be positive")
        # Closed sessions are found by stop time: it is the partition key.
        when = "s.stopped_at" if wanted.closed else "s.started_at"
        clauses: list[str] = []
        params: list[Any] = []
        for sql, value in (
            ("s.nas_id = ${}", wanted.nas_id),
            ("s.subscriber_id = ${}", wanted.subscriber_id),
            (f"{when} >= ${{}}", wanted.since),
        ):
            if value is not None:
                params.append(value)
                clauses.append(sql.format(len(params)))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(wanted.limit)
        query = (
            f"{_CLOSED if wanted.closed else _ACTIVE}{where}"
            f" ORDER BY {when} DESC, s.id LIMIT ${len(params)}"
        )
        async with acquire(self._pool) as conn:
            records = await conn.fetch(query, *params)
            return await self._views(conn, records)

    async def get(self, session_id: uuid.UUID) -> SessionView | None:
        """One session, active or closed, or None.

        sessions_closed has no index on id alone: this scans its partitions,
        which is fine for an operator looking at one session.
        """
        async with acquire(self._pool) as conn:
            record = await conn.fetchrow(f"{_ACTIVE} WHERE s.id = $1", session_id)
            if record is None:
                record = await conn.fetchrow(f"{_CLOSED} WHERE s.id = $1", session_id)
            if record is None:
                return None
            [view] = await self._views(conn, [record])
        return view

    async def close(
        self, session_id: uuid.UUID, *, reason: str | None, now: datetime
    ) -> tuple[int, datetime] | None:
        """Close an active session as ``admin``; (subscriber id, stop time), or None if
        no active session has this id. ``reason`` is operator text, audited as given:
        it must hold no personal values."""
        async with acquire(self._pool) as conn, conn.transaction():
            row = await conn.fetchrow(_CLOSE_ADMIN, session_id, now)
            if row is None:
                return None
            sid, stopped = int(row["subscriber_id"]), row["stopped_at"]
            detail = {"session": str(session_id), "stopped_at": stopped.isoformat()}
            if reason:
                detail["reason"] = reason
            await audit(conn, self._actor, CLOSE, sid or None, detail)
        return sid, stopped

    async def who_had(
        self, address: str, at: datetime, *, reason: str, now: datetime
    ) -> list[Holder]:
        """Sessions that had ``address`` at ``at`` (started_at <= at <= stop, or now if
        still active), with their subscribers.

        The audit row (reason, time asked, number of matches, the address's
        blind index) is written in the same transaction as the read, so no
        answer leaves without it; it is written when nothing matches too.
        ValueError for a malformed address or an empty reason.
        """
        if not reason.strip():
            raise ValueError("a reason is required")
        family, candidates = ip_candidates(address)
        blinds = [ip_blind(self._index, c) for c in candidates]
        column = "framed_ip_blind" if family == "ipv4" else "framed_ipv6_blind"
        async with acquire(self._pool) as conn, conn.transaction():
            records = list(
                await conn.fetch(
                    f"{_ACTIVE} WHERE s.{column} = ANY($1::bytea[])"
                    " AND s.started_at <= $2 AND $2 <= $3::timestamptz",
                    blinds,
                    at,
                    now,
                )
            )
            records += await conn.fetch(
                f"{_CLOSED} WHERE s.{column} = ANY($1::bytea[])"
                " AND s.started_at <= $2 AND s.stopped_at >= $2",
                blinds,
                at,
            )
            records.sort(key=lambda r: (r["started_at"], r["id"]))
            views = await self._views(conn, records)
            subscribers = await self._subscribers(conn, {v.subscriber_id for v in views})
            matched = sorted({v.subscriber_id for v in views})
            await audit(
                conn,
                self._actor,
                WHO_HAD,
                matched[0] if len(matched) == 1 and matched[0] else None,
                {
                    "reason": reason,
                    "at": at.isoformat(),
                    "matches": len(views),
                    "subscriber_ids": matched,
                    "ip_blind": blinds[0].hex(),
                    "family": family,
                },
            )
        return [
            Holder(v, *subscribers.get(v.subscriber_id, (v.personal("user_name"), None)))
            for v in views
        ]

    async def _subscribers(
        self, conn: Connection, ids: set[int]
    ) -> dict[int, tuple[str | None, str | None]]:
        """(user name, account_ref) of the subscribers still there."""
        wanted = sorted(i for i in ids if i)
        if not wanted:
            return {}
        rows = await conn.fetch(
            "SELECT id, account_ref, wrapped_key, user_name_enc FROM subscribers"
            " WHERE id = ANY($1::bigint[])",
            wanted,
        )
        found: dict[int, tuple[str | None, str | None]] = {}
        for r in rows:
            sid = int(r["id"])
            try:
                cipher = self._data_keys.cipher(sid, bytes(r["wrapped_key"]))
                name = _text(fields.unseal(cipher, Column.USER_NAME, sid, r["user_name_enc"]))
            except (DecryptError, KeyError):
                name = None
            found[sid] = (name, r["account_ref"])
        return found
