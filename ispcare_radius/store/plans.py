"""Service plans in the ``plans`` reference table (no personal data).

Imports aaa.model and store.db; never server or cli.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg

from ispcare_radius.aaa.hours import check_time_zone, parse_login_hours
from ispcare_radius.aaa.model import Plan
from ispcare_radius.store.db import Pool, acquire

# The numeric and text columns of plans, in Plan field order (id, name and
# extra_reply are handled apart).
PLAN_VALUE_FIELDS: Final[tuple[str, ...]] = (
    "download_kbps",
    "upload_kbps",
    "burst_download_kbps",
    "burst_upload_kbps",
    "burst_threshold_download_kbps",
    "burst_threshold_upload_kbps",
    "burst_time_s",
    "session_timeout",
    "idle_timeout",
    "interim_interval",
    "simultaneous_use",
    "ipv4_pool",
    "ipv6_pool",
    "address_list",
    "qos_profile",
    "ipv6_address_pool",
    "login_hours",
    "time_zone",
    "walled_garden",
    "quota_bytes",
    "quota_seconds",
    "quota_period",
    "billing_day",
)
_INT_FIELDS: Final = frozenset(
    (*PLAN_VALUE_FIELDS[:11], "quota_bytes", "quota_seconds", "billing_day")
)
QUOTA_PERIODS: Final = ("day", "cycle")
PLAN_COLUMNS: Final[tuple[str, ...]] = (
    "id",
    "name",
    *PLAN_VALUE_FIELDS,
    "extra_reply",
    "dns_ipv6",
)


def plan_select_list(alias: str, prefix: str) -> str:
    """``alias.col AS prefixcol, ...`` for every plan column, for joins."""
    return ", ".join(f"{alias}.{col} AS {prefix}{col}" for col in PLAN_COLUMNS)


def plan_from_record(record: asyncpg.Record, prefix: str = "") -> Plan | None:
    """The Plan in ``record`` (columns named ``prefix + column``), or None if absent."""
    plan_id = record[f"{prefix}id"]
    if plan_id is None:
        return None
    extra = record[f"{prefix}extra_reply"] or []
    return Plan(
        id=int(plan_id),
        name=str(record[f"{prefix}name"]),
        extra_reply=tuple((str(name), str(value)) for name, value in extra),
        dns_ipv6=tuple(ipaddress.IPv6Address(a) for a in record[f"{prefix}dns_ipv6"] or ()),
        **{f: record[f"{prefix}{f}"] for f in PLAN_VALUE_FIELDS},
    )


def _check_values(values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if value is None:
            continue
        if name in _INT_FIELDS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"plan field {name} must be a non-negative integer")
        elif not isinstance(value, str) or not value:
            raise ValueError(f"plan field {name} must be a non-empty string")
    if values.get("login_hours") is not None:
        parse_login_hours(values["login_hours"])
    if values.get("time_zone") is not None:
        check_time_zone(values["time_zone"])
    if values.get("quota_period") not in (None, *QUOTA_PERIODS):
        raise ValueError("plan field quota_period must be day or cycle")
    if values.get("billing_day") is not None and not 1 <= values["billing_day"] <= 28:
        raise ValueError("plan field billing_day must be between 1 and 28")
    for name in ("quota_bytes", "quota_seconds"):
        if values.get(name) == 0:
            raise ValueError(f"plan field {name} must be positive")


def _dns_ipv6(servers: Sequence[str]) -> list[str]:
    try:
        return [str(ipaddress.IPv6Address(text.strip())) for text in servers]
    except ValueError:
        raise ValueError("plan field dns_ipv6 must hold IPv6 addresses") from None


class PlanRepository:
    """Create, read and remove plans."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def add(
        self,
        name: str,
        *,
        download_kbps: int | None = None,
        upload_kbps: int | None = None,
        burst_download_kbps: int | None = None,
        burst_upload_kbps: int | None = None,
        burst_threshold_download_kbps: int | None = None,
        burst_threshold_upload_kbps: int | None = None,
        burst_time_s: int | None = None,
        session_timeout: int | None = None,
        idle_timeout: int | None = None,
        interim_interval: int | None = None,
        simultaneous_use: int | None = None,
        ipv4_pool: str | None = None,
        ipv6_pool: str | None = None,
        address_list: str | None = None,
        qos_profile: str | None = None,
        extra_reply: Sequence[tuple[str, str]] = (),
        dns_ipv6: Sequence[str] = (),
        ipv6_address_pool: str | None = None,
        login_hours: str | None = None,
        time_zone: str | None = None,
        walled_garden: str | None = None,
        quota_bytes: int | None = None,
        quota_seconds: int | None = None,
        quota_period: str | None = None,
        billing_day: int | None = None,
    ) -> Plan:
        """Store a new plan; ValueError for a taken name or an invalid value."""
        if not name or not name.strip():
            raise ValueError("plan name must not be empty")
        values: dict[str, Any] = {
            "download_kbps": download_kbps,
            "upload_kbps": upload_kbps,
            "burst_download_kbps": burst_download_kbps,
            "burst_upload_kbps": burst_upload_kbps,
            "burst_threshold_download_kbps": burst_threshold_download_kbps,
            "burst_threshold_upload_kbps": burst_threshold_upload_kbps,
            "burst_time_s": burst_time_s,
            "session_timeout": session_timeout,
            "idle_timeout": idle_timeout,
            "interim_interval": interim_interval,
            "simultaneous_use": simultaneous_use,
            "ipv4_pool": ipv4_pool,
            "ipv6_pool": ipv6_pool,
            "address_list": address_list,
            "qos_profile": qos_profile,
            "ipv6_address_pool": ipv6_address_pool,
            "login_hours": login_hours,
            "time_zone": time_zone,
            "walled_garden": walled_garden,
            "quota_bytes": quota_bytes,
            "quota_seconds": quota_seconds,
            "quota_period": quota_period,
            "billing_day": billing_day,
        }
        _check_values(values)
        # NOT NULL columns with defaults: None means the default.
        values["quota_period"] = quota_period or "cycle"
        values["billing_day"] = billing_day or 1
        extra = [[str(attr), str(value)] for attr, value in extra_reply]
        if any(not attr for attr, _ in extra):
            raise ValueError("extra reply attribute names must not be empty")
        columns = ["name", *PLAN_VALUE_FIELDS, "extra_reply", "dns_ipv6"]
        params = [name, *(values[f] for f in PLAN_VALUE_FIELDS), extra, _dns_ipv6(dns_ipv6)]
        placeholders = ", ".join(f"${i}" for i in range(1, len(params) + 1))
        query = (
            f"INSERT INTO plans ({', '.join(columns)}) VALUES ({placeholders})"
            f" RETURNING {', '.join(PLAN_COLUMNS)}"
        )
        async with acquire(self._pool) as conn:
            try:
                record = await conn.fetchrow(query, *params)
            except asyncpg.UniqueViolationError:
                raise ValueError("plan name already exists") from None
        assert record is not None
        plan = plan_from_record(record)
        assert plan is not None
        return plan

    async def get(self, name: str) -> Plan | None:
        """The plan named ``name``, or None."""
        async with acquire(self._pool) as conn:
            record = await conn.fetchrow(
                f"SELECT {', '.join(PLAN_COLUMNS)} FROM plans WHERE name = $1", name
            )
        return None if record is None else plan_from_record(record)

    async def list(self) -> list[Plan]:
        """All plans, by name."""
        async with acquire(self._pool) as conn:
            records = await conn.fetch(f"SELECT {', '.join(PLAN_COLUMNS)} FROM plans ORDER BY name")
        plans = [plan_from_record(r) for r in records]
        return [p for p in plans if p is not None]

    async def remove(self, name: str) -> bool:
        """Delete the plan ``name``; ValueError while subscribers still use it."""
        async with acquire(self._pool) as conn:
            try:
                status = await conn.execute("DELETE FROM plans WHERE name = $1", name)
            except asyncpg.ForeignKeyViolationError:
                raise ValueError("plan is still assigned to subscribers") from None
        return status.endswith(" 1")
