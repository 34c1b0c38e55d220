"""Anonymised statistics: per-subscriber usage -> k-anonymous cells, generalised and capped.

Pure (no I/O, no clock): store/stats.py reads usage and writes what this
module releases; privacy/anon_check.py validates the result before release.

The rules (DESIGN.md section 7):

- each dimension is released as its own table of cells (one marginal per
  dimension; a cross-tabulation of all seven would leave almost every cell
  below k);
- a cell is released only with at least k distinct subscribers behind it;
  a cell below k is generalised first (city -> country -> "other", any
  other category -> "other");
- complementary suppression: what a table leaves out holds no subscriber
  or at least k. When "other" is still below k, the smallest released cell
  is merged into it until it reaches k; with no cell left to merge (the
  whole period has fewer than k subscribers) the table releases nothing.
  So every table covers the whole period, and subtracting one table's total
  from another's (or a cell from the rest) never isolates a small group;
- no table for a level another table generalises: the city table already
  holds country cells ("GB" is "GB outside any released city"), so no
  separate country table is released. Two tables of one hierarchy, each
  generalised on its own, differ by exactly the small places one of them
  hid (country GB = 11 minus city GB/London = 10 is one person). Country
  figures are the sums of the city cells with that country prefix;
- each subscriber's usage in a period is capped once (sessions, bytes,
  seconds) before any table is built, so one heavy user cannot dominate a
  cell and every table sums the same capped usage: totals agree across
  tables instead of differing by how a heavy user's sessions were split;
- totals are computed from released cells only.

Subscriber numbers appear in the input only, to count distinct subscribers;
no output value is derived from them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

# The privacy floor: k below this is refused whatever the configuration says.
MIN_K: Final = 5
DEFAULT_K: Final = 10
OTHER: Final = "other"
UNKNOWN: Final = "unknown"


class Dimension(StrEnum):
    COUNTRY = "country"
    CITY = "city"
    DEVICE_CLASS = "device_class"
    OS_FAMILY = "os_family"
    PLAN = "plan"
    NAS_GROUP = "nas_group"
    NAS_PORT_TYPE = "nas_port_type"


# The tables a release holds. COUNTRY is not one of them: the city table
# generalises to countries itself, and a country table next to it would
# differ from it by exactly the subscribers of the small places it hid.
RELEASED_DIMENSIONS: Final = tuple(d for d in Dimension if d is not Dimension.COUNTRY)


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"

    @property
    def hours(self) -> int:
        return 1 if self is Period.HOUR else 24


# NAS-Port-Type names (RFC 2865 section 5.41, RFC 3580 section 3.20, RFC 4603
# section 2): released as names, never as raw attribute values.
PORT_TYPES: Final[Mapping[int, str]] = {
    0: "Async",
    1: "Sync",
    2: "ISDN-Sync",
    3: "ISDN-Async-V120",
    4: "ISDN-Async-V110",
    5: "Virtual",
    6: "PIAFS",
    7: "HDLC-Clear-Channel",
    8: "X.25",
    9: "X.75",
    10: "G.3-Fax",
    11: "SDSL",
    12: "ADSL-CAP",
    13: "ADSL-DMT",
    14: "IDSL",
    15: "Ethernet",
    16: "xDSL",
    17: "Cable",
    18: "Wireless-Other",
    19: "Wireless-802.11",
    20: "Token-Ring",
    21: "FDDI",
    22: "Wireless-CDMA2000",
    23: "Wireless-UMTS",
    24: "Wireless-1X-EV",
    25: "IAPP",
    26: "FTTP",
    27: "Wireless-802.16",
    28: "Wireless-802.20",
    29: "Wireless-802.22",
    30: "PPPoA",
    31: "PPPoEoA",
    32: "PPPoEoE",
    33: "PPPoEoVLAN",
    34: "PPPoEoQinQ",
}


def port_type_name(value: int | None) -> str:
    """A NAS-Port-Type as its registered name; unregistered values are "other"."""
    if value is None:
        return UNKNOWN
    return PORT_TYPES.get(value, OTHER)


@dataclass(frozen=True, slots=True)
class StatsSettings:
    """[stats]: k and the per-subscriber caps, per hour of the period.

    The caps bound one subscriber's share of one cell: sessions, bytes each
    way and session seconds, multiplied by the period's hours (a day cell
    allows 24 times an hour's). ``release_delay`` is how long after its end a
    period is released by default, so late Stops and stale closures land first.
    """

    k: int = DEFAULT_K
    max_sessions: int = 60
    max_bytes: int = 50 * 10**9
    max_seconds: int = 3600
    release_delay: int = 1800

    def __post_init__(self) -> None:
        if self.k < MIN_K:
            raise ValueError(f"stats.k must be at least {MIN_K} (got {self.k})")
        for name in ("max_sessions", "max_bytes", "max_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"stats.{name} must be positive")
        if not 0 <= self.release_delay <= 7 * 86_400:
            raise ValueError("stats.release_delay must be between 0 and 604800 seconds")


@dataclass(frozen=True, slots=True)
class Categories:
    """The coarse categories of a session; None where nothing was derived."""

    country: str | None = None
    city: str | None = None
    device_class: str | None = None
    os_family: str | None = None
    plan: str | None = None
    nas_group: str | None = None
    nas_port_type: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """One subscriber's sessions under one set of categories in a period.

    ``subscriber`` only tells subscribers apart while counting; it never
    reaches a released cell.
    """

    subscriber: int = field(repr=False)
    categories: Categories
    sessions: int
    bytes_in: int
    bytes_out: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Cell:
    """One released (or candidate) cell: a category value and its measures."""

    dimension: Dimension
    value: str
    sessions: int
    subscribers: int
    bytes_in: int
    bytes_out: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Rollup:
    """The cells of one period: released, and how many candidate cells were suppressed.

    ``population`` is the period's distinct subscribers: the validator checks
    each table's cells against it (privacy/anon_check.py).
    """

    cells: tuple[Cell, ...]
    suppressed: int
    suppressed_subscribers: int
    population: int


@dataclass(frozen=True, slots=True)
class Caps:
    sessions: int
    bytes: int
    seconds: int

    @classmethod
    def for_period(cls, settings: StatsSettings, period: Period) -> Caps:
        h = period.hours
        return cls(settings.max_sessions * h, settings.max_bytes * h, settings.max_seconds * h)


def bucket_start(period: Period, at: datetime) -> datetime:
    """The start (UTC) of the hour or day containing ``at``."""
    at = at.astimezone(UTC)
    if period is Period.HOUR:
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def bucket_end(period: Period, start: datetime) -> datetime:
    return start + timedelta(hours=period.hours)


def bucket_label(period: Period, start: datetime) -> str:
    """The released form of a bucket: ``2030-05-06T07`` or ``2030-05-06``, never minutes."""
    start = start.astimezone(UTC)
    return start.strftime("%Y-%m-%dT%H" if period is Period.HOUR else "%Y-%m-%d")


def _clean(value: str | None) -> str | None:
    text = (value or "").strip()
    return text or None


def ladder(dimension: Dimension, c: Categories) -> tuple[str | None, ...]:
    """The values a usage takes in ``dimension``, finest first, ending in "other".

    None at a level means "not at this level": a session with no city starts
    at its country, so "GB" in the city table is "GB, city unknown or too
    small to release".
    """
    cc = _clean(c.country)
    country = cc.upper() if cc else UNKNOWN
    if dimension is Dimension.CITY:
        city = _clean(c.city)
        fine = f"{country}/{city}" if city and country != UNKNOWN else None
        return (fine, country, OTHER)
    if dimension is Dimension.COUNTRY:
        return (country, OTHER)
    if dimension is Dimension.NAS_PORT_TYPE:
        return (port_type_name(c.nas_port_type), OTHER)
    raw = getattr(c, dimension.value)
    return (_clean(raw) or UNKNOWN, OTHER)


@dataclass(slots=True)
class _Acc:
    """A subscriber's summed usage inside one cell."""

    sessions: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: int = 0

    def add(self, u: _Acc | Usage) -> None:
        self.sessions += u.sessions
        self.bytes_in += u.bytes_in
        self.bytes_out += u.bytes_out
        self.seconds += u.seconds


def _cell(dimension: Dimension, value: str, members: Mapping[int, _Acc], caps: Caps) -> Cell:
    """Sum a cell's members, each capped (a no-op after ``cap_usage``; a backstop)."""
    return Cell(
        dimension=dimension,
        value=value,
        sessions=sum(min(a.sessions, caps.sessions) for a in members.values()),
        subscribers=len(members),
        bytes_in=sum(min(a.bytes_in, caps.bytes) for a in members.values()),
        bytes_out=sum(min(a.bytes_out, caps.bytes) for a in members.values()),
        seconds=sum(min(a.seconds, caps.seconds) for a in members.values()),
    )


def _scaled(value: int, cap: int, total: int) -> int:
    return value if total <= cap else value * cap // total


def cap_usage(usage: Iterable[Usage], caps: Caps) -> list[Usage]:
    """Each subscriber's usage scaled down so their period total stays within the caps.

    Capping once per subscriber and period (not per cell) gives every usage
    one fixed value whatever table it lands in, so all tables sum the same
    usage. Over a cap, each of the subscriber's usages keeps its share of the
    cap (rounded down, so the sum never exceeds it).
    """
    items = list(usage)
    sums: dict[int, _Acc] = defaultdict(_Acc)
    for u in items:
        sums[u.subscriber].add(u)
    out = []
    for u in items:
        t = sums[u.subscriber]
        out.append(
            Usage(
                subscriber=u.subscriber,
                categories=u.categories,
                sessions=_scaled(u.sessions, caps.sessions, t.sessions),
                bytes_in=_scaled(u.bytes_in, caps.bytes, t.bytes_in),
                bytes_out=_scaled(u.bytes_out, caps.bytes, t.bytes_out),
                seconds=_scaled(u.seconds, caps.seconds, t.seconds),
            )
        )
    return out


def _merge(into: dict[int, _Acc], members: Mapping[int, _Acc]) -> None:
    for sid, acc in members.items():
        into.setdefault(sid, _Acc()).add(acc)


def _complete(
    released: dict[str, dict[int, _Acc]], rest: dict[int, _Acc], k: int
) -> dict[int, _Acc]:
    """Complementary suppression: bring the unreleased remainder to 0 or at least k.

    A remainder of 1..k-1 subscribers would be the difference between this
    table and any table that covers them. It joins "other" when "other" is
    released; else the smallest released cells are merged into it (one is
    enough: each holds k) and it is released as "other". Returns what stays
    suppressed: empty, or everything when the period is below k.
    """
    if not rest:
        return rest
    if OTHER in released:
        _merge(released[OTHER], rest)
        return {}
    while len(rest) < k and released:
        smallest = min(released, key=lambda v: (len(released[v]), v))
        _merge(rest, released.pop(smallest))
    if len(rest) < k:
        # Nothing left to merge: the whole table is below k and is not released.
        for members in released.values():
            _merge(rest, members)
        released.clear()
        return rest
    released[OTHER] = rest
    return {}


def generalise(
    dimension: Dimension, usage: Iterable[Usage], *, k: int, caps: Caps
) -> tuple[list[Cell], int, int]:
    """One dimension's released cells, the suppressed cell count and subscribers in them.

    Level by level: group what is still pending by its value at this level;
    a group with at least k distinct subscribers is released, the others move
    up the ladder. A subscriber's usage that falls in two groups counts in
    each; a released value met again later (a category literally named
    "other") is merged into the released cell, which keeps it at or above k.
    What is left below k at the top is completed by ``_complete``, so the
    cells cover every subscriber of the period or none.
    """
    if k < MIN_K:
        raise ValueError(f"k must be at least {MIN_K}")
    pending = [(ladder(dimension, u.categories), u) for u in cap_usage(usage, caps)]
    released: dict[str, dict[int, _Acc]] = {}
    rest: dict[int, _Acc] = {}
    depth = max((len(steps) for steps, _ in pending), default=0)
    suppressed = 0
    for level in range(depth):
        groups: dict[str, list[tuple[tuple[str | None, ...], Usage]]] = defaultdict(list)
        carried = []
        for steps, u in pending:
            value = steps[level] if level < len(steps) else None
            if value is None:
                carried.append((steps, u))
            else:
                groups[value].append((steps, u))
        pending = carried
        for value, items in groups.items():
            members: dict[int, _Acc] = defaultdict(_Acc)
            for _, u in items:
                members[u.subscriber].add(u)
            if len(members) >= k or value in released:
                _merge(released.setdefault(value, {}), members)
            elif level == depth - 1 or all(len(s) <= level + 1 for s, _ in items):
                suppressed += 1
                _merge(rest, members)
            else:
                pending.extend(items)
    before = len(released)
    hidden = _complete(released, rest, k)
    # Merged into "other", nothing is suppressed; with the table below k, all of it is.
    suppressed = suppressed + before if hidden else 0
    cells = [_cell(dimension, value, members, caps) for value, members in released.items()]
    cells.sort(key=lambda c: (c.value == OTHER, -c.subscribers, c.value))
    return cells, suppressed, len(hidden)


def rollup(usage: Sequence[Usage], *, settings: StatsSettings, period: Period) -> Rollup:
    """Every released dimension's cells for one period's usage."""
    caps = Caps.for_period(settings, period)
    cells: list[Cell] = []
    suppressed = suppressed_subscribers = 0
    for dimension in RELEASED_DIMENSIONS:
        out, n, s = generalise(dimension, usage, k=settings.k, caps=caps)
        cells.extend(out)
        suppressed += n
        suppressed_subscribers += s
    population = len({u.subscriber for u in usage})
    return Rollup(tuple(cells), suppressed, suppressed_subscribers, population)


MEASURES: Final = ("sessions", "bytes_in", "bytes_out", "seconds")


def totals(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[str, int]]:
    """Per dimension, the sums of the measures over released rows only.

    Distinct subscribers do not add up across cells (one subscriber may be
    in two), so no subscriber total is given.
    """
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        sums = out.setdefault(str(row["dimension"]), dict.fromkeys(MEASURES, 0))
        for m in MEASURES:
            value = row[m]
            if not isinstance(value, int):
                raise TypeError(f"measure {m} is not an integer")
            sums[m] += value
    return out


def cell_rows(period: Period, start: datetime, cells: Iterable[Cell]) -> list[dict[str, object]]:
    """The rows a release publishes: bucket label, dimension, value and measures."""
    label = bucket_label(period, start)
    return [
        {
            "period": period.value,
            "bucket": label,
            "dimension": c.dimension.value,
            "value": c.value,
            "sessions": c.sessions,
            "subscribers": c.subscribers,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "seconds": c.seconds,
        }
        for c in cells
    ]
