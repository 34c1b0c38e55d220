"""The session rules accounting records are applied by: pure, no I/O, time passed in.

A session's counters only move forward. Records can arrive late, twice, out
of order or without their Start; these functions decide what each one changes
and by how much, so usage is counted once:

- counters are cumulative (RFC 2866 sections 5.3-5.4, 5.7), so a record older
  than the one the totals come from changes nothing;
- without Acct-*-Gigawords (RFC 2869 sections 5.1-5.2) a NAS sends the low
  32 bits only, and a counter that goes down in a newer record has wrapped;
- a session first seen in an Interim or Stop (its Start lost) counts all the
  usage that record reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Final

WRAP: Final = 1 << 32
MIN_INTERIM: Final = 60
# RFC 2866 section 5.10: Acct-Terminate-Cause 11 is NAS-Reboot.
NAS_REBOOT: Final = 11


class CloseReason(StrEnum):
    """Why a session left sessions_active; stored in sessions_closed.close_reason."""

    STOP = "stop"
    NAS_REBOOT = "nas_reboot"
    SUPERSEDED = "superseded"
    STALE = "stale"
    ADMIN = "admin"


class Period(StrEnum):
    """Usage periods: the UTC day, and the plan's billing cycle."""

    DAY = "day"
    CYCLE = "cycle"


@dataclass(frozen=True, slots=True)
class Reading:
    """What one accounting record says about a session's counters.

    Counters are None when the record carries none (a Start); ``gigawords``
    says whether the NAS sent Acct-*-Gigawords with them.
    """

    event_time: datetime
    input_octets: int | None = None
    output_octets: int | None = None
    session_time: int | None = None
    gigawords: bool = False


@dataclass(frozen=True, slots=True)
class Counters:
    """A session's totals and where they come from.

    ``input_wraps``/``output_wraps`` count the 32-bit wraps detected on a NAS
    that sends no Gigawords; ``at`` is the event time of the record the totals
    come from (None before any record with counters).
    """

    input_octets: int = 0
    output_octets: int = 0
    input_wraps: int = 0
    output_wraps: int = 0
    session_time: int = 0
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """How much a record added to a session: what usage is increased by."""

    input_octets: int = 0
    output_octets: int = 0
    session_time: int = 0

    def __bool__(self) -> bool:
        return bool(self.input_octets or self.output_octets or self.session_time)


def _order(counters: Counters, record: Reading) -> int:
    """+1 when ``record`` is newer than the totals, 0 when as new, -1 when older.

    Acct-Session-Time is the NAS's own clock for the session, so it orders
    two records of one session better than event times (which may be arrival
    minus Acct-Delay-Time); event time decides when it is missing or equal.
    """
    if counters.at is None:
        return 1
    if record.session_time is not None and record.session_time != counters.session_time:
        return 1 if record.session_time > counters.session_time else -1
    if record.event_time == counters.at:
        return 0
    return 1 if record.event_time > counters.at else -1


def _direction(
    total: int, wraps: int, value: int, *, gigawords: bool, newer: bool
) -> tuple[int, int]:
    """(new total, new wrap count) for one direction."""
    if gigawords:
        return max(total, value), wraps
    last_sent = total - (wraps << 32)
    if newer and 0 <= last_sent < WRAP and value < last_sent:
        wraps += 1  # gone down in a newer record: the 32-bit counter wrapped
    return max(total, (wraps << 32) + value), wraps


def advance(counters: Counters, record: Reading) -> tuple[Counters, Delta]:
    """The session's counters after ``record``, and what it added.

    Records without counters (a Start) change nothing; an older record
    changes nothing; a record as new as the totals (same session time and
    event time) can only raise them, never count a wrap.
    """
    if record.input_octets is None and record.output_octets is None and record.session_time is None:
        return counters, Delta()
    order = _order(counters, record)
    if order < 0:
        return counters, Delta()
    newer = order > 0
    input_total, input_wraps = counters.input_octets, counters.input_wraps
    if record.input_octets is not None:
        input_total, input_wraps = _direction(
            input_total, input_wraps, record.input_octets, gigawords=record.gigawords, newer=newer
        )
    output_total, output_wraps = counters.output_octets, counters.output_wraps
    if record.output_octets is not None:
        output_total, output_wraps = _direction(
            output_total,
            output_wraps,
            record.output_octets,
            gigawords=record.gigawords,
            newer=newer,
        )
    session_time = max(counters.session_time, record.session_time or 0)
    after = Counters(
        input_octets=input_total,
        output_octets=output_total,
        input_wraps=input_wraps,
        output_wraps=output_wraps,
        session_time=session_time,
        at=record.event_time if newer or counters.at is None else counters.at,
    )
    delta = Delta(
        input_octets=input_total - counters.input_octets,
        output_octets=output_total - counters.output_octets,
        session_time=session_time - counters.session_time,
    )
    return after, delta


def started_at(record: Reading) -> datetime:
    """When the session began: the Start's event time, else event time minus session time."""
    if record.session_time:
        return record.event_time - timedelta(seconds=record.session_time)
    return record.event_time


def interim_interval(plan_value: int | None) -> int | None:
    """The interval the NAS was told (Acct-Interim-Interval is never below 60 s)."""
    if plan_value is None or plan_value <= 0:
        return None
    return max(plan_value, MIN_INTERIM)


def stale_after(interval: int | None, *, default_interval: int, grace: int) -> timedelta:
    """How long a session may go without a record before the stale job closes it."""
    return timedelta(seconds=2 * (interval or default_interval) + grace)


def period_start(period: Period, day: date, *, billing_day: int = 1) -> date:
    """The first day of the ``period`` holding ``day``.

    A billing cycle starts on ``billing_day`` (1-28, so every month has it)
    of this month, or of the previous month when ``day`` comes before it.
    """
    if period is Period.DAY:
        return day
    if not 1 <= billing_day <= 28:
        raise ValueError("billing_day must be between 1 and 28")
    if day.day >= billing_day:
        return day.replace(day=billing_day)
    previous = day.replace(day=1) - timedelta(days=1)
    return previous.replace(day=billing_day)


@dataclass(frozen=True, slots=True)
class Quota:
    """A plan's quota per period: bytes (in + out) and/or seconds."""

    period: Period
    billing_day: int = 1
    bytes: int | None = None
    seconds: int | None = None


def quota_crossed(quota: Quota, *, octets: int, seconds: int) -> list[tuple[str, int, int]]:
    """(kind, used, quota) for each limit that ``octets``/``seconds`` reach or pass."""
    crossed: list[tuple[str, int, int]] = []
    if quota.bytes is not None and octets >= quota.bytes:
        crossed.append(("bytes", octets, quota.bytes))
    if quota.seconds is not None and seconds >= quota.seconds:
        crossed.append(("time", seconds, quota.seconds))
    return crossed
