"""Allowed login hours: parsing the plan's ``login_hours`` and placing ``now`` in it.

Pure: imports only the standard library (no protocol, store, asyncio).

Two spellings are accepted, and may be mixed; entries are separated by ``,``
or ``|``:

- FreeRADIUS ``Login-Time`` form: ``Wk0800-1800,Sa0900-1300``. Days are
  ``Mo Tu We Th Fr Sa Su``, ``Wk`` (Monday to Friday), ``Any`` or ``Al``
  (every day); several days may be run together (``SaSu``) or given as a
  range (``Mo-We``); the time range ``HHMM-HHMM`` is optional (whole day).
- Readable form: ``Mo-Fr 08:00-18:00, Sa 09:00-13:00``.

An end time earlier than the start runs past midnight into the next day
(``Fr2200-0200`` ends on Saturday at 02:00). Times are wall-clock times in the
plan's time zone (default UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["LoginHours", "Window", "check_time_zone", "login_window", "parse_login_hours"]

_DAY = 86_400
_WEEK = 7 * _DAY
_DAYS = {"mo": 0, "tu": 1, "we": 2, "th": 3, "fr": 4, "sa": 5, "su": 6}
_GROUPS = {"wk": (0, 1, 2, 3, 4), "any": tuple(range(7)), "al": tuple(range(7))}
_ENTRY = re.compile(
    r"^(?P<days>[a-z\- ]+?)\s*(?:(?P<h1>\d\d):?(?P<m1>\d\d)\s*-\s*(?P<h2>\d\d):?(?P<m2>\d\d))?$"
)
_DAY_TOKEN = re.compile(r"(any|al|wk|mo|tu|we|th|fr|sa|su)(?:-(mo|tu|we|th|fr|sa|su))?")


@dataclass(frozen=True, slots=True)
class LoginHours:
    """Allowed spans as sorted, disjoint [start, end) seconds of the week (Monday 00:00 = 0)."""

    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Window:
    """Where ``now`` falls: ``allowed``, and seconds until the allowed span ends.

    ``remaining`` is None when allowed with no end (every hour of the week).
    """

    allowed: bool
    remaining: int | None = None


def _days(text: str) -> tuple[int, ...]:
    compact = text.replace(" ", "")
    days: list[int] = []
    pos = 0
    while pos < len(compact):
        match = _DAY_TOKEN.match(compact, pos)
        if match is None:
            raise ValueError("login hours: unknown day name")
        first, last = match.group(1), match.group(2)
        if first in _GROUPS:
            if last is not None:
                raise ValueError("login hours: a day group cannot start a range")
            days.extend(_GROUPS[first])
        elif last is None:
            days.append(_DAYS[first])
        else:
            start, end = _DAYS[first], _DAYS[last]
            days.extend((start + i) % 7 for i in range((end - start) % 7 + 1))
        pos = match.end()
    if not days:
        raise ValueError("login hours: an entry names no day")
    return tuple(dict.fromkeys(days))


def _minute(hours: str, minutes: str) -> int:
    h, m = int(hours), int(minutes)
    if h > 24 or m > 59 or (h == 24 and m):
        raise ValueError("login hours: time out of range")
    return h * 3600 + m * 60


def _merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    flat: list[tuple[int, int]] = []
    for start, end in spans:
        # Split spans that run past the end of Sunday back to Monday.
        if end > _WEEK:
            flat += [(start, _WEEK), (0, end - _WEEK)]
        else:
            flat.append((start, end))
    flat.sort()
    merged: list[tuple[int, int]] = []
    for start, end in flat:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


@lru_cache(maxsize=256)
def parse_login_hours(text: str) -> LoginHours:
    """Parse ``text`` (see the module docstring); ValueError naming the problem."""
    spans: list[tuple[int, int]] = []
    for raw in re.split(r"[,|]", text.lower()):
        entry = raw.strip()
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError("login hours: cannot read an entry (expected e.g. Wk0800-1800)")
        if match.group("h1") is None:
            start, end = 0, _DAY
        else:
            start = _minute(match.group("h1"), match.group("m1"))
            end = _minute(match.group("h2"), match.group("m2"))
            if end <= start:
                end += _DAY  # runs past midnight into the next day
        for day in _days(match.group("days")):
            spans.append((day * _DAY + start, day * _DAY + end))
    if not spans:
        raise ValueError("login hours: no entries")
    return LoginHours(_merge(spans))


def check_time_zone(name: str) -> None:
    """ValueError unless ``name`` is an IANA time zone this host knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown time zone") from None


def login_window(text: str, time_zone: str | None, *, now: float) -> Window:
    """Whether wall time ``now`` is inside the login hours ``text``, and for how long.

    Seconds remaining are counted to the real instant the span ends in
    ``time_zone``, so a daylight-saving change inside the span is honoured.
    """
    hours = parse_login_hours(text)
    zone = UTC if time_zone is None else ZoneInfo(time_zone)
    local = datetime.fromtimestamp(now, zone)
    second = local.weekday() * _DAY + local.hour * 3600 + local.minute * 60 + local.second
    spans = hours.spans
    if spans == ((0, _WEEK),):
        return Window(allowed=True)
    index = next((i for i, (s, e) in enumerate(spans) if s <= second < e), None)
    if index is None:
        return Window(allowed=False)
    end = spans[index][1]
    if end == _WEEK and spans[0][0] == 0:
        # A span ending at the end of Sunday goes on into one from Monday 00:00.
        end += spans[0][1]
    wall_end = local.replace(tzinfo=None) + timedelta(seconds=end - second)
    remaining = wall_end.replace(tzinfo=zone).timestamp() - now
    return Window(allowed=True, remaining=max(1, int(remaining)))
