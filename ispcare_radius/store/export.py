"""Everything held on one subscriber, decrypted, as one JSON-ready document.

The privacy policy says personal data is "disclosed only by due lawful
process": ``privacy export`` builds this document for such a request, and the
self-care library (``store.selfcare``) shows subscribers their own. Every
section is read in one REPEATABLE READ transaction, so the document is one
consistent picture, and the audit row of an export is written in that same
transaction: no document leaves without it. The audit row holds the reason
and section counts, never a personal value.

Credentials (password, NT hash, scrypt hash) are reported as held or not,
never exported: they are secrets for authentication, not information about
the subject, and a document that may be mailed or printed must not carry them.

Imports privacy and store; never server or cli.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, Final

from ispcare_radius.privacy.blind import normalize_user_name
from ispcare_radius.privacy.crypto import DecryptError, FieldCipher, field_aad
from ispcare_radius.store import fields
from ispcare_radius.store.accounting import record_aad
from ispcare_radius.store.db import Connection, Pool, acquire
from ispcare_radius.store.devices import open_device_mac
from ispcare_radius.store.events import KNOWN_TABLE, event_aad
from ispcare_radius.store.fields import Column
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.session_query import open_fields
from ispcare_radius.store.sessions import COLUMNS as SESSION_COLUMNS
from ispcare_radius.store.subscribers import audit

EXPORT_ACTION: Final = "privacy.export"
FORMAT: Final = "ispcare-radius/subject-export/v1"
# Sealed columns of acct_records, without the _enc suffix (0002, 0007).
RECORD_SEALED: Final = (
    "session_id",
    "user_name",
    "calling_station_id",
    "framed_ip",
    "framed_ipv6",
    "nas_ip",
)
EVENT_SEALED: Final = ("user_name", "calling_station_id", "nas_ip")
FLAGS_TABLE: Final = "flags"
_LOGIN_CATEGORIES: Final = ("country", "city", "device_class", "os_family", "vendor")


class SubjectNotFound(LookupError):
    """No subscriber matches the subject (or several match an account ref)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Subject:
    """The subscriber an export is about: id and wrapped data key."""

    id: int
    wrapped_key: bytes = dataclasses.field(repr=False)


def jsonable(value: Any) -> Any:
    """``value`` with times, ids, addresses and bytes turned into JSON types."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(
        value,
        ipaddress.IPv4Address
        | ipaddress.IPv6Address
        | ipaddress.IPv4Network
        | ipaddress.IPv6Network,
    ):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def _names(record: Any) -> set[str]:
    """The column names of a row (records are not mappings for ``in``)."""
    return set(record.keys())


def _text(value: bytes | None) -> str | None:
    # Attribute values are octets; shown as UTF-8 with anything else escaped.
    return None if value is None else value.decode("utf-8", "backslashreplace")


async def find_by_user_name(
    conn: Connection, keys: SystemKeys, data_keys: DataKeyCache, user_name: str
) -> Subject:
    """The subscriber named ``user_name``; SubjectNotFound otherwise.

    The lookup row is only a blind index: the sealed name is opened and
    compared, so a lookup row pointed at another subscriber finds nobody.
    """
    row = await conn.fetchrow(
        "SELECT s.id, s.wrapped_key, s.user_name_enc FROM subscriber_lookup l"
        " JOIN subscribers s ON s.id = l.subscriber_id"
        " WHERE l.kind = 'user_name' AND l.blind = $1",
        fields.user_name_blind(keys.blind_index, user_name),
    )
    if row is None:
        raise SubjectNotFound("no such subscriber")
    sid = int(row["id"])
    cipher = data_keys.cipher(sid, bytes(row["wrapped_key"]))
    stored = fields.unseal(cipher, Column.USER_NAME, sid, row["user_name_enc"])
    if stored is None or not hmac.compare_digest(
        normalize_user_name(stored.decode("utf-8")), normalize_user_name(user_name)
    ):
        raise SubjectNotFound("no such subscriber")
    return Subject(sid, bytes(row["wrapped_key"]))


async def find_by_id(conn: Connection, subscriber_id: int) -> Subject:
    """The subscriber with ``subscriber_id``; SubjectNotFound otherwise."""
    row = await conn.fetchrow(
        "SELECT id, wrapped_key FROM subscribers WHERE id = $1", subscriber_id
    )
    if row is None:
        raise SubjectNotFound("no such subscriber")
    return Subject(int(row["id"]), bytes(row["wrapped_key"]))


async def find_by_account_ref(conn: Connection, account_ref: str) -> Subject:
    """The one subscriber with ``account_ref``; SubjectNotFound for none or several."""
    rows = await conn.fetch(
        "SELECT id, wrapped_key FROM subscribers WHERE account_ref = $1 LIMIT 2", account_ref
    )
    if len(rows) != 1:
        raise SubjectNotFound(
            "no subscriber has this account ref"
            if not rows
            else "several subscribers have this account ref"
        )
    return Subject(int(rows[0]["id"]), bytes(rows[0]["wrapped_key"]))


# --- sections -------------------------------------------------------------


async def profile(conn: Connection, subject: Subject, cipher: FieldCipher) -> dict[str, Any]:
    """The subscriber row, decrypted; credentials only as held / not held."""
    row = await conn.fetchrow(
        "SELECT s.*, p.name AS plan_name FROM subscribers s"
        " LEFT JOIN plans p ON p.id = s.plan_id WHERE s.id = $1",
        subject.id,
    )
    if row is None:
        raise SubjectNotFound("no such subscriber")
    sid = subject.id
    name = fields.unseal(cipher, Column.USER_NAME, sid, row["user_name_enc"])
    ipv4 = fields.unseal(cipher, Column.STATIC_IPV4, sid, row["static_ipv4_enc"])
    ipv6 = fields.unseal(cipher, Column.STATIC_IPV6, sid, row["static_ipv6_enc"])
    mac = fields.unseal(cipher, Column.MAC_LOCK, sid, row["mac_lock_enc"])
    policy = fields.policy_from_record(row, cipher)
    overrides = policy.pop("overrides")
    return {
        "subscriber_id": sid,
        "user_name": _text(name),
        "account_ref": row["account_ref"],
        "status": row["status"],
        "plan": row["plan_name"],
        "expires_at": row["expires_at"],
        "static_ipv4": None if ipv4 is None else ipaddress.IPv4Address(ipv4),
        "static_ipv6_prefix": _text(ipv6),
        "mac_lock": None if mac is None else fields.format_mac(mac),
        "mac_binding": row["mac_binding"],
        **policy,
        "overrides": overrides,
        "credentials": {
            "password": row["password_enc"] is not None,
            "nt_hash": row["nt_hash_enc"] is not None,
            "scrypt_hash": row["slow_hash_enc"] is not None,
        },
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        # Lifecycle columns (migration 0011), when present.
        **{k: row[k] for k in ("deactivated_at", "legal_hold") if k in _names(row)},
    }


async def devices(conn: Connection, subject: Subject, cipher: FieldCipher) -> list[dict[str, Any]]:
    """Devices bound for MAC authentication: the MAC as registered and normalised."""
    rows = await conn.fetch(
        "SELECT id::text AS id, mac_enc, first_seen, last_seen, created_at FROM devices"
        " WHERE subscriber_id = $1 ORDER BY created_at, id",
        subject.id,
    )
    out: list[dict[str, Any]] = []
    for r in rows:
        mac, raw = open_device_mac(cipher, r["id"], subject.id, r["mac_enc"])
        out.append(
            {
                "id": r["id"],
                "mac": fields.format_mac(mac),
                "mac_as_registered": raw,
                "first_seen": r["first_seen"],
                "last_seen": r["last_seen"],
                "created_at": r["created_at"],
            }
        )
    return out


def _open_many(
    cipher: FieldCipher, names: Sequence[str], record: Any, aad: Any
) -> dict[str, str | None]:
    opened: dict[str, str | None] = {}
    for name in names:
        blob = record[f"{name}_enc"]
        opened[name] = None if blob is None else _text(cipher.open(bytes(blob), aad(name)))
    return opened


async def login_history(
    conn: Connection, subject: Subject, cipher: FieldCipher
) -> list[dict[str, Any]]:
    """Every auth event of the subscriber, oldest first, personal fields opened."""
    rows = await conn.fetch(
        "SELECT e.*, n.name AS nas_name FROM auth_events e LEFT JOIN nas n ON n.id = e.nas_id"
        " WHERE e.subscriber_id = $1 ORDER BY e.time, e.id",
        subject.id,
    )
    out: list[dict[str, Any]] = []
    for r in rows:
        opened = _open_many(
            cipher,
            EVENT_SEALED,
            r,
            lambda col, r=r: event_aad(KNOWN_TABLE, col, r["id"], subject.id),
        )
        out.append(
            {
                "time": r["time"],
                "id": r["id"],
                "result": r["result"],
                "reason": r["reason"],
                "method": r["method"],
                "flags": list(r["flags"]),
                "nas": r["nas_name"],
                # Analytics categories derived at login (migration 0013), when present.
                **{k: r[k] for k in _LOGIN_CATEGORIES if k in _names(r)},
                **opened,
            }
        )
    return out


_SESSION_PLAIN: Final = tuple(
    name
    for name, _ in SESSION_COLUMNS
    if not name.endswith(("_enc", "_blind")) and name not in ("session_key", "subscriber_id")
)


async def sessions(conn: Connection, subject: Subject, cipher: FieldCipher) -> list[dict[str, Any]]:
    """Active and closed sessions, oldest first, with usage counters and opened fields."""
    cols = ", ".join(f"s.{name}" for name, _ in SESSION_COLUMNS)
    active = await conn.fetch(
        f"SELECT {cols}, NULL::timestamptz AS stopped_at, NULL::text AS close_reason,"
        " NULL::bigint AS terminate_cause, n.name AS nas_name FROM sessions_active s"
        " LEFT JOIN nas n ON n.id = s.nas_id WHERE s.subscriber_id = $1",
        subject.id,
    )
    closed = await conn.fetch(
        f"SELECT {cols}, s.stopped_at, s.close_reason, s.terminate_cause, n.name AS nas_name"
        " FROM sessions_closed s LEFT JOIN nas n ON n.id = s.nas_id WHERE s.subscriber_id = $1",
        subject.id,
    )
    out: list[dict[str, Any]] = []
    for r in sorted([*active, *closed], key=lambda r: (r["started_at"], r["id"])):
        readable, opened = open_fields(r, cipher)
        out.append(
            {
                "state": "active" if r["close_reason"] is None else "closed",
                **{name: r[name] for name in _SESSION_PLAIN},
                "nas": r["nas_name"],
                "stopped_at": r["stopped_at"],
                "close_reason": r["close_reason"],
                "terminate_cause": r["terminate_cause"],
                "readable": readable.value,
                **opened,
            }
        )
    return out


async def accounting_records(
    conn: Connection, subject: Subject, cipher: FieldCipher
) -> list[dict[str, Any]]:
    """Every stored Accounting-Request attributed to the subscriber, oldest first."""
    rows = await conn.fetch(
        "SELECT r.*, n.name AS nas_name FROM acct_records r LEFT JOIN nas n ON n.id = r.nas_id"
        " WHERE r.subscriber_id = $1 ORDER BY r.time, r.id",
        subject.id,
    )
    out: list[dict[str, Any]] = []
    for r in rows:
        opened = _open_many(
            cipher, RECORD_SEALED, r, lambda col, r=r: record_aad(col, r["id"], subject.id)
        )
        out.append(
            {
                "time": r["time"],
                "id": r["id"],
                "status_type": r["status_type"],
                "event_time": r["event_time"],
                "nas": r["nas_name"],
                "nas_identifier": r["nas_identifier"],
                "input_octets": r["input_octets"],
                "output_octets": r["output_octets"],
                "session_time": r["session_time"],
                "terminate_cause": r["terminate_cause"],
                **opened,
            }
        )
    return out


async def _plain_rows(conn: Connection, sql: str, sid: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(sql, sid)]


async def flag_rows(
    conn: Connection, subject: Subject, cipher: FieldCipher
) -> list[dict[str, Any]] | None:
    """Suspicious-login flags raised on the subscriber, evidence and note opened, or
    None when this database has no flags table (detection not installed)."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", FLAGS_TABLE)
    if not exists:
        return None
    from ispcare_radius.store.flags import row_key

    rows = await conn.fetch(
        f"SELECT * FROM {FLAGS_TABLE} WHERE subscriber_id = $1 ORDER BY time, id", subject.id
    )
    out: list[dict[str, Any]] = []
    for r in rows:
        key = row_key(r["rule"], r["subject_kind"], bytes(r["subject"]), r["bucket"])
        item = {k: v for k, v in dict(r).items() if not k.endswith("_enc") and k != "subject"}
        for column in ("evidence", "note"):
            blob = r[f"{column}_enc"]
            aad = field_aad(FLAGS_TABLE, column, key, subject.id)
            item[column] = None if blob is None else _text(cipher.open(bytes(blob), aad))
        if item["evidence"] is not None:
            item["evidence"] = json.loads(item["evidence"])
        out.append(item)
    return out


async def collect(conn: Connection, subject: Subject, cipher: FieldCipher) -> dict[str, Any]:
    """Every section of the document for ``subject``, as Python values."""
    sid = subject.id
    doc: dict[str, Any] = {
        "profile": await profile(conn, subject, cipher),
        "devices": await devices(conn, subject, cipher),
        "login_history": await login_history(conn, subject, cipher),
        "sessions": await sessions(conn, subject, cipher),
        "usage": await _plain_rows(
            conn,
            "SELECT period, period_start, input_octets, output_octets, session_time, updated_at"
            " FROM usage WHERE subscriber_id = $1 ORDER BY period, period_start",
            sid,
        ),
        "quota_events": await _plain_rows(
            conn,
            "SELECT period, period_start, kind, time, used, quota, handled_at"
            " FROM quota_events WHERE subscriber_id = $1 ORDER BY time",
            sid,
        ),
        "accounting_records": await accounting_records(conn, subject, cipher),
        "disconnect_requests": await _plain_rows(
            conn,
            "SELECT reason, requested_at, handled_at FROM disconnect_requests"
            " WHERE subscriber_id = $1 ORDER BY requested_at",
            sid,
        ),
        "audit_log": await _plain_rows(
            conn,
            "SELECT time, actor, action, detail FROM audit_log"
            " WHERE subscriber_id = $1 ORDER BY time, id",
            sid,
        ),
    }
    found_flags = await flag_rows(conn, subject, cipher)
    if found_flags is not None:
        doc["flags"] = found_flags
    return doc


def counts(doc: Mapping[str, Any]) -> dict[str, int]:
    """Rows per list section: what the audit row records instead of the values."""
    return {name: len(value) for name, value in doc.items() if isinstance(value, list)}


async def export_subject(
    pool: Pool,
    data_keys: DataKeyCache,
    find: Callable[[Connection], Awaitable[Subject]],
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """The export document of the subscriber ``find(conn)`` returns, audited.

    ``find`` is an async callable taking a connection and returning a
    ``Subject`` (``find_by_user_name`` etc. bound with their arguments), so
    the lookup runs in the export's own transaction. ValueError for an empty
    reason; SubjectNotFound when nobody matches; DecryptError when a sealed
    value does not open (nothing is then returned, and nothing audited).
    """
    if not reason.strip():
        raise ValueError("a reason is required")
    async with acquire(pool) as conn, conn.transaction(isolation="repeatable_read"):
        subject = await find(conn)
        cipher = data_keys.cipher(subject.id, subject.wrapped_key)
        sections = await collect(conn, subject, cipher)
        tally = counts(sections)
        await audit(
            conn,
            actor,
            EXPORT_ACTION,
            subject.id,
            {"reason": reason, "counts": tally, "generated_at": now.isoformat()},
        )
    doc = {
        "format": FORMAT,
        "generated_at": now,
        "reason": reason,
        "subscriber_id": subject.id,
        **sections,
    }
    return dict(jsonable(doc))


__all__ = [
    "EXPORT_ACTION",
    "DecryptError",
    "Subject",
    "SubjectNotFound",
    "collect",
    "counts",
    "export_subject",
    "find_by_account_ref",
    "find_by_id",
    "find_by_user_name",
    "jsonable",
]
