"""The data inventory: every column of every table, what it holds and how it is protected.

The privacy policy promises that personal data is stored only encrypted and
kept only as long as allowed. This registry is the code's own statement of
that promise, table by table and column by column; ``privacy inventory``
prints it and a test compares it with the live schema after migrations, so a
column added without a declaration fails the build. Sealed columns are
derived from the same constants the repositories seal with (``fields.Column``,
``sessions.SEALED``), so the two cannot drift apart.

Imports store modules for their column constants; no database access except
``live_columns``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from ispcare_radius.store.db import Connection
from ispcare_radius.store.fields import Column as SubscriberColumn
from ispcare_radius.store.plans import PLAN_COLUMNS
from ispcare_radius.store.sessions import SEALED as SESSION_SEALED


class Classification(StrEnum):
    """The privacy policy's three kinds of data (DESIGN.md section 2)."""

    PERSONAL = "personal"  # identifies or describes one subscriber
    ANALYTICS = "analytics"  # times, counters, coarse categories
    NONE = "none"  # configuration, keys, internal ids, bookkeeping


class Protection(StrEnum):
    """How a column's value is protected at rest."""

    SUBSCRIBER_KEY = "AES-256-GCM, subscriber data key"
    # acct_records and sessions of subscriber 0 (no subscriber matched).
    SUBSCRIBER_OR_EPOCH = "AES-256-GCM, subscriber data key (epoch key if unattributed)"
    EPOCH_KEY = "AES-256-GCM, epoch key"
    SYSTEM_KEY = "AES-256-GCM, system key"
    MASTER_KEY = "AES-256-GCM, master key (KEK)"
    BLIND_INDEX = "HMAC-SHA256 blind index"
    # Not personal on its own; linked to a person only through subscriber_id.
    PSEUDONYMOUS = "plaintext, linked by subscriber id only"
    PLAINTEXT = "plaintext (not personal)"


@dataclass(frozen=True, slots=True)
class ColumnDecl:
    """One column: its classification and protection, and why when not obvious."""

    name: str
    classification: Classification
    protection: Protection
    note: str = ""


@dataclass(frozen=True, slots=True)
class TableDecl:
    """One table: its columns and how long its rows are kept.

    ``retention_key`` names a field of the ``[retention]`` config section
    (days) when a setting governs the table; ``retention`` says in words what
    happens to the rows otherwise, or how the setting is applied.
    """

    name: str
    retention: str
    columns: tuple[ColumnDecl, ...]
    retention_key: str | None = None

    def column(self, name: str) -> ColumnDecl:
        """The declaration of ``name``; KeyError if it is not declared."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


P, A, N = Classification.PERSONAL, Classification.ANALYTICS, Classification.NONE
_SUB = Protection.SUBSCRIBER_KEY
_SUB_OR_EPOCH = Protection.SUBSCRIBER_OR_EPOCH
_EPOCH = Protection.EPOCH_KEY
_BLIND = Protection.BLIND_INDEX
_PSEUDO = Protection.PSEUDONYMOUS
_PLAIN = Protection.PLAINTEXT
WHILE_SUBSCRIBED: Final = "while the subscriber exists; deleted with them"


def _none(*names: str, note: str = "") -> tuple[ColumnDecl, ...]:
    return tuple(ColumnDecl(n, N, _PLAIN, note) for n in names)


def _analytics(*names: str, note: str = "") -> tuple[ColumnDecl, ...]:
    return tuple(ColumnDecl(n, A, _PSEUDO, note) for n in names)


def _sealed(names: Iterable[str], protection: Protection) -> tuple[ColumnDecl, ...]:
    return tuple(ColumnDecl(f"{n}_enc", P, protection) for n in names)


def _blinds(*names: str, note: str = "") -> tuple[ColumnDecl, ...]:
    return tuple(ColumnDecl(n, P, _BLIND, note) for n in names)


_SUBSCRIBER_ID: Final = ColumnDecl("subscriber_id", N, _PLAIN, "internal id, no meaning outside")

# Sealed columns of the three tables that hold sealed auth/accounting fields.
_EVENT_SEALED: Final = ("user_name", "calling_station_id", "nas_ip")
_RECORD_SEALED: Final = (
    "session_id",
    "user_name",
    "calling_station_id",
    "framed_ip",
    "framed_ipv6",
    "nas_ip",
)

_SESSION_COLUMNS: Final = (
    ColumnDecl("id", N, _PLAIN, "id of the accounting record that opened it"),
    _SUBSCRIBER_ID,
    *_blinds("session_key", "session_blind", "port_blind", "framed_ip_blind", "framed_ipv6_blind"),
    *_none("nas_id", "nas_port_type", "start_seen", "interim_interval", "counters_at"),
    *_analytics(
        "started_at",
        "updated_at",
        "last_seen",
        "input_octets",
        "output_octets",
        "input_wraps",
        "output_wraps",
        "session_time",
    ),
    *_sealed(SESSION_SEALED, _SUB_OR_EPOCH),
)

TABLES: Final[tuple[TableDecl, ...]] = (
    TableDecl(
        "schema_migrations",
        "kept",
        _none("version", "name", "applied_at"),
    ),
    TableDecl(
        "system_keys",
        "kept; retired versions destroyed by key management",
        (
            *_none("name", "version", "created_at"),
            ColumnDecl("wrapped", N, Protection.MASTER_KEY, "system keys, wrapped"),
            *_none("kek_version"),  # 0010
        ),
    ),
    TableDecl(
        "epoch_keys",
        "destroyed once the data they sealed is past its retention (crypto-shredding)",
        (
            *_none("version", "period", "starts_at", "ends_at", "kek_version", "created_at"),
            ColumnDecl("wrapped", N, Protection.MASTER_KEY, "monthly epoch keys, wrapped"),
        ),
    ),
    TableDecl(
        "nas",
        "while the NAS is configured",
        (
            *_none("id", "name", "vendor", "ma_policy", "coa_port", "created_at"),
            ColumnDecl("address", N, _PLAIN, "network equipment, not a subscriber's address"),
            ColumnDecl("secret_enc", N, Protection.SYSTEM_KEY, "shared secret"),
            *_analytics("latitude", "longitude", "country", "city", note="NAS location"),
            # 0013: which IP a login comes from; the NAS's own address pools.
            *_none("nas_type", "pools"),
            *_none("nas_group"),  # 0016: statistics group
        ),
    ),
    TableDecl(
        "plans",
        "while the plan exists",
        # The plan columns the code reads and writes (store/plans.py), plus created_at.
        _none(*PLAN_COLUMNS, "created_at"),
    ),
    TableDecl(
        "subscribers",
        "while the subscriber exists; erasure destroys the data key with the row",
        (
            ColumnDecl("id", N, _PLAIN, "internal id"),
            ColumnDecl("account_ref", N, _PLAIN, "the billing system's opaque account id"),
            *_none("status", "plan_id", "expires_at", "mac_binding"),
            *_none(
                "override_download_kbps",
                "override_upload_kbps",
                "override_session_timeout",
                "override_idle_timeout",
            ),
            ColumnDecl("wrapped_key", N, Protection.MASTER_KEY, "the subscriber's data key"),
            *_none("kek_version", "data_key_version", "reencrypt_pending"),
            *_sealed((c.value for c in SubscriberColumn), _SUB),
            *_analytics("created_at", "updated_at"),
            # 0011: the personal-data lifecycle.
            *_none("deactivated_at", "legal_hold"),
        ),
    ),
    TableDecl(
        "erased_subscribers",
        "kept: what billing needs of an erased subscriber",
        (
            _SUBSCRIBER_ID,
            ColumnDecl("account_ref", N, _PLAIN, "the billing system's opaque account id"),
            *_none("deactivated_at", "erased_at"),
        ),
    ),
    TableDecl(
        "subscriber_lookup",
        WHILE_SUBSCRIBED,
        (
            ColumnDecl("kind", N, _PLAIN),
            ColumnDecl("blind", P, _BLIND, "user name, MAC lock, static IPv4 or device MAC"),
            _SUBSCRIBER_ID,
        ),
    ),
    TableDecl(
        "devices",
        WHILE_SUBSCRIBED,
        (
            _SUBSCRIBER_ID,
            ColumnDecl("id", N, _PLAIN),
            *_blinds("mac_blind"),
            ColumnDecl("mac_enc", P, _SUB),
            *_analytics("first_seen", "last_seen", "created_at"),
        ),
    ),
    TableDecl(
        "blocked_macs",
        "until unblocked by an operator",
        (*_blinds("mac_blind"), *_none("reason", "created_at")),
    ),
    TableDecl(
        "auth_events",
        "daily partitions dropped after the setting; deleted with the subscriber",
        (
            *_analytics("time"),
            ColumnDecl("id", N, _PLAIN),
            _SUBSCRIBER_ID,
            *_none("nas_id", "result", "reason", "method", "flags"),
            *_sealed(_EVENT_SEALED, _SUB),
            # 0013: categories derived at login time, never the IP or MAC.
            *_analytics("country", "city", "device_class", "os_family", "vendor"),
            ColumnDecl("detect", P, _BLIND, "detector signal: keyed digests, coarse location"),
        ),
        retention_key="auth_events_days",
    ),
    TableDecl(
        "auth_rejects_unknown",
        "daily partitions dropped after the setting; epoch keys expire",
        (
            *_analytics("time", note="no subscriber: not linkable"),
            ColumnDecl("id", N, _PLAIN),
            *_none("nas_id", "reason", "method"),
            *_sealed(_EVENT_SEALED, _EPOCH),
            ColumnDecl("detect", P, _BLIND, "detector signal: keyed digests, coarse location"),
        ),
        retention_key="unknown_rejects_days",
    ),
    TableDecl(
        "audit_log",
        "rows deleted after the setting (who did what; no personal values)",
        (
            *_none("time", "id", "actor", "action"),
            _SUBSCRIBER_ID,
            ColumnDecl("detail", N, _PLAIN, "slugs, counts and blind indexes only"),
        ),
        retention_key="audit_log_days",
    ),
    TableDecl(
        "flags",
        "rows deleted after the setting; evidence shredded with the subscriber",
        (
            ColumnDecl("id", N, _PLAIN),
            *_analytics("time"),
            _SUBSCRIBER_ID,
            *_none("rule", "severity", "score", "action", "subject_kind", "bucket", "state"),
            *_none("acknowledged_by", "acknowledged_at", "thresholds"),
            ColumnDecl("subject", P, _BLIND, "keyed digest of the account, source or MAC"),
            ColumnDecl("evidence_enc", P, _SUB_OR_EPOCH),
            ColumnDecl("note_enc", P, _SUB_OR_EPOCH, "operator's acknowledgement note"),
        ),
        retention_key="flags_days",
    ),
    TableDecl(
        "feed_outbox",
        "until every sink has it and [feeds] keep_days passed; deleted with the subscriber",
        (
            *_none("id", "topic", "idempotency_key", "created_at"),
            ColumnDecl(
                "payload",
                N,
                _PLAIN,
                "subscriber ids, account refs, usage totals, flag rules, statuses; no values",
            ),
            ColumnDecl("account_key", N, _PLAIN, "account_ref, else 'subscriber:<id>'"),
            _SUBSCRIBER_ID,
            *_none(
                *(
                    f"{sink}_{column}"
                    for sink in ("webhook", "ndjson")
                    for column in (
                        "attempts",
                        "next_attempt_at",
                        "delivered_at",
                        "dead_at",
                        "last_error",
                    )
                )
            ),
        ),
    ),
    # Views for the billing system (migration 0015): they store nothing.
    TableDecl(
        "feed_usage",
        "a view of usage and usage_hourly per account; stores nothing",
        (
            ColumnDecl("account_key", N, _PLAIN, "account_ref, else 'subscriber:<id>'"),
            ColumnDecl("account_ref", N, _PLAIN, "the billing system's opaque account id"),
            *_none("period", "period_start"),
            *_analytics("input_octets", "output_octets", "session_time", "sessions"),
            *_analytics("updated_at"),
        ),
    ),
    TableDecl(
        "feed_events",
        "a view of feed_outbox (all but usage); stores nothing",
        (
            *_none("id", "topic", "idempotency_key", "created_at"),
            ColumnDecl("account_key", N, _PLAIN, "account_ref, else 'subscriber:<id>'"),
            ColumnDecl("payload", N, _PLAIN, "as feed_outbox.payload"),
        ),
    ),
    TableDecl(
        "acct_records",
        "daily partitions dropped after the setting; deleted with the subscriber",
        (
            *_analytics("time", "event_time", "nas_event_time", "delay_time"),
            ColumnDecl("id", N, _PLAIN),
            _SUBSCRIBER_ID,
            *_none("attribution", "nas_id", "status_type", "terminate_cause", "nas_port_type"),
            *_none("gigawords", "has_cookie"),
            ColumnDecl("nas_identifier", N, _PLAIN, "the NAS's own name"),
            ColumnDecl("class", N, _PLAIN, "the server's random Class cookie"),
            *_analytics("input_octets", "output_octets", "session_time"),
            *_blinds("session_blind", "record_key", "session_key", "port_blind"),
            *_blinds("framed_ip_blind", "framed_ipv6_blind"),
            *_sealed(_RECORD_SEALED, _SUB_OR_EPOCH),
        ),
        retention_key="acct_records_days",
    ),
    TableDecl(
        "acct_record_keys",
        "pruned after the setting",
        (
            *_blinds("record_key"),
            _SUBSCRIBER_ID,
            *_analytics("event_time", "time"),
        ),
        retention_key="acct_duplicate_keys_days",
    ),
    TableDecl(
        "acct_pending",
        "until applied to sessions (milliseconds)",
        (ColumnDecl("id", N, _PLAIN), _SUBSCRIBER_ID, *_analytics("time")),
    ),
    TableDecl("sessions_active", "until the session closes", _SESSION_COLUMNS),
    TableDecl(
        "sessions_closed",
        "daily partitions (by stop time) dropped after the setting",
        (
            *_SESSION_COLUMNS,
            *_analytics("stopped_at", "closed_at"),
            *_none("close_reason", "terminate_cause"),
        ),
        retention_key="closed_sessions_days",
    ),
    TableDecl(
        "session_reservations",
        "until the session starts or the reservation expires",
        (_SUBSCRIBER_ID, *_blinds("session_key"), *_none("nas_id", "created_at", "expires_at")),
    ),
    TableDecl(
        "usage",
        WHILE_SUBSCRIBED,
        (
            _SUBSCRIBER_ID,
            *_none("period", "period_start", "version"),
            *_analytics("input_octets", "output_octets", "session_time", "updated_at"),
            *_analytics("sessions"),
        ),
    ),
    TableDecl(
        "usage_hourly",
        "while the subscriber exists; deleted with them (hourly detail)",
        (
            _SUBSCRIBER_ID,
            *_none("hour_start", "version"),
            *_analytics("input_octets", "output_octets", "session_time", "sessions"),
            *_analytics("updated_at"),
        ),
    ),
    TableDecl(
        "quota_events",
        WHILE_SUBSCRIBED,
        (
            _SUBSCRIBER_ID,
            *_none("period", "period_start", "kind", "quota", "handled_at"),
            *_analytics("time", "used"),
        ),
    ),
    TableDecl(
        "disconnect_requests",
        "kept until handled, then with the subscriber",
        (
            ColumnDecl("id", N, _PLAIN),
            _SUBSCRIBER_ID,
            *_blinds("session_key"),
            *_none("reason", "requested_at", "handled_at"),
        ),
    ),
    # 0016: released statistics only, k-anonymous by construction (privacy/anon_check.py).
    TableDecl(
        "stats_hourly",
        "kept: aggregates of at least k subscribers, no identifier",
        (
            *_none("period", "bucket", "dimension", "value"),
            *_analytics("sessions", "subscribers", "bytes_in", "bytes_out", "seconds"),
        ),
    ),
    TableDecl(
        "stats_releases",
        "kept: one row per released period",
        _none("period", "bucket", "k", "cells", "suppressed", "released_at"),
    ),
)

BY_NAME: Final[Mapping[str, TableDecl]] = {t.name: t for t in TABLES}


def declared_columns() -> dict[str, set[str]]:
    """Table name -> declared column names."""
    return {t.name: {c.name for c in t.columns} for t in TABLES}


def personal_columns() -> list[tuple[str, ColumnDecl]]:
    """(table, column) of every column classified personal, in registry order."""
    return [(t.name, c) for t in TABLES for c in t.columns if c.classification is P]


# Tables and views of the current schema, partitions left out (they repeat
# their parent's columns and come and go with retention).
_LIVE_COLUMNS: Final = """
SELECT c.relname AS table_name, a.attname AS column_name
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid
WHERE n.nspname = current_schema()
  AND c.relkind IN ('r', 'p', 'v', 'm')
  AND NOT c.relispartition
  AND a.attnum > 0
  AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""


async def live_columns(conn: Connection) -> dict[str, set[str]]:
    """Table name -> column names, read from the database's catalog."""
    found: dict[str, set[str]] = {}
    for row in await conn.fetch(_LIVE_COLUMNS):
        found.setdefault(str(row["table_name"]), set()).add(str(row["column_name"]))
    return found


def undeclared(live: Mapping[str, set[str]]) -> list[str]:
    """``table.column`` of every live column the registry does not declare, sorted."""
    declared = declared_columns()
    return sorted(
        f"{table}.{column}"
        for table, columns in live.items()
        for column in columns
        if column not in declared.get(table, set())
    )


def stale(live: Mapping[str, set[str]]) -> list[str]:
    """``table.column`` of every declaration that no live table has, sorted."""
    return sorted(
        f"{table}.{column}"
        for table, columns in declared_columns().items()
        for column in columns
        if column not in live.get(table, set())
    )
