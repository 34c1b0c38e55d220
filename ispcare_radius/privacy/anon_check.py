"""The release validator: refuses a statistics table that breaks any anonymity rule.

Pure: takes the rows about to be released (column -> value mappings) and
returns what is wrong with them; store/stats.py releases nothing unless the
list is empty. It checks the output, not the code that made it, so a bug in
the rollup (or a hand-made table) is caught here.

A violation names the rule, the column and the row number, never the
offending value: the value may be the very personal datum that must not
leak, into a log or an error message included.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import StrEnum
from itertools import pairwise
from typing import Final

from ispcare_radius.privacy.anon import MIN_K, OTHER, PORT_TYPES, UNKNOWN, Dimension, Period


class Problem(StrEnum):
    """Why a table may not be released; stable slugs for messages and tests."""

    BELOW_K = "cell_below_k"
    UNKNOWN_COLUMN = "unknown_column"
    IDENTIFIER_COLUMN = "identifier_column"
    TIME_COLUMN = "time_column"
    MISSING_COLUMN = "missing_column"
    IDENTIFIER_VALUE = "identifier_value"
    IP_ADDRESS = "ip_address"
    MAC_ADDRESS = "mac_address"
    CLOCK_TIME = "clock_time"
    EXACT_TIMESTAMP = "exact_timestamp"
    DIGEST = "digest"
    BAD_MEASURE = "bad_measure"
    BAD_BUCKET = "bad_bucket"
    BAD_DIMENSION = "bad_dimension"
    BAD_CATEGORY = "bad_category"
    DUPLICATE_CELL = "duplicate_cell"
    K_TOO_LOW = "k_too_low"
    # A table leaves out 1..k-1 of the population: its total subtracted from
    # another table's (or the population) isolates them.
    REMAINDER_BELOW_K = "remainder_below_k"
    # Country and city tables side by side: one minus the other isolates the
    # small places the city table generalised.
    NESTED_TABLES = "nested_tables"


@dataclass(frozen=True, slots=True)
class Violation:
    problem: Problem
    column: str | None = None
    row: int | None = None

    def __str__(self) -> str:
        where = f" in column {self.column!r}" if self.column else ""
        at = f" (row {self.row})" if self.row is not None else ""
        return f"{self.problem.value}{where}{at}"


# The only columns a released table may have.
KEY_COLUMNS: Final = ("period", "bucket", "dimension", "value")
MEASURE_COLUMNS: Final = ("sessions", "subscribers", "bytes_in", "bytes_out", "seconds")
ALLOWED_COLUMNS: Final = frozenset(KEY_COLUMNS + MEASURE_COLUMNS)

# Column-name words that say the column holds an identifier (or a digest,
# pseudonym or address of one), whatever the allow-list says.
_IDENTIFIER_WORDS: Final = frozenset(
    {
        "user", "username", "login", "name", "subscriber", "subscriberid", "account",
        "session", "sessionid", "id", "uuid", "key", "hash", "digest", "blind", "pseudonym",
        "ip", "ipv4", "ipv6", "addr", "address", "mac", "calling", "called", "station",
        "framed", "email", "phone", "msisdn", "imsi", "imei", "cookie", "token", "serial",
        "class", "port", "nas", "enc", "secret", "password",
    }
)  # fmt: skip
_TIME_WORDS: Final = frozenset(
    {"time", "timestamp", "ts", "at", "date", "datetime", "epoch", "started", "stopped", "when"}
)
# Allowed names made of identifier-like words: exact matches win.
_EXEMPT: Final = ALLOWED_COLUMNS


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def check_column(name: str) -> Problem | None:
    """Why a column may not be released, or None."""
    if name in _EXEMPT:
        return None
    words = _words(name)
    if any(w in _IDENTIFIER_WORDS for w in words) or "".join(words) in _IDENTIFIER_WORDS:
        return Problem.IDENTIFIER_COLUMN
    if any(w in _TIME_WORDS for w in words):
        return Problem.TIME_COLUMN
    return Problem.UNKNOWN_COLUMN


_HEX = "[0-9a-f]"
_MAC_PATTERNS: Final = (
    # 00:11:22:33:44:55, 00-11-22-33-44-55 (one separator throughout).
    re.compile(
        rf"(?<![0-9a-f]){_HEX}{{2}}([:-]){_HEX}{{2}}(?:\1{_HEX}{{2}}){{4}}(?![0-9a-f])", re.I
    ),
    # 0011.2233.4455 (Cisco).
    re.compile(rf"(?<![0-9a-f.]){_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}}(?![0-9a-f.])", re.I),
    # 001122-334455 and bare 001122334455.
    re.compile(rf"(?<![0-9a-f]){_HEX}{{6}}-?{_HEX}{{6}}(?![0-9a-f])", re.I),
)
_CLOCK: Final = re.compile(r"(?<!\d)\d{1,2}:\d{2}(?!\d)")
_ISO_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}[:h]?\d{2}")
_EPOCH: Final = re.compile(r"(?<!\d)1\d{9}(?:\d{3})?(?!\d)")
_HEX_RUN: Final = re.compile(rf"{_HEX}{{12,}}", re.I)
_UUID: Final = re.compile(rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}", re.I)
_B64_RUN: Final = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}|[A-Za-z0-9+/_-]{4,}==?")
_LONG_NUMBER: Final = re.compile(r"\d{6,}")
_TOKEN_SPLIT: Final = re.compile(r"[\s,;/|=()<>\"'\[\]]+")
_BUCKET: Final = {
    Period.HOUR: re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}"),
    Period.DAY: re.compile(r"\d{4}-\d{2}-\d{2}"),
}
_MAX_VALUE_LENGTH: Final = 80


def _has_ip(text: str) -> bool:
    for token in _TOKEN_SPLIT.split(text):
        candidate = token.strip(".:").split("%")[0]
        if candidate.count(".") == 3 or candidate.count(":") >= 2:
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                continue
            return True
    return False


def _char_class(ch: str) -> int:
    return 0 if ch.isupper() else 1 if ch.islower() else 2


def _mixed(segment: str) -> bool:
    return any(ch.isdigit() for ch in segment) and any(ch.isalpha() for ch in segment)


def _looks_encoded(run: str) -> bool:
    """Whether a long run of base64 characters reads as encoded bytes, not as words.

    Names are short words between separators and keep a character class
    (upper, lower, digit) for several characters; encoded bytes make long
    mixed segments and switch class at about three positions in five.
    """
    if run.endswith("="):
        return True
    segments = re.split(r"[-_+/]", run.rstrip("="))
    if any(len(s) >= 16 and _mixed(s) for s in segments):
        return True
    classes = [_char_class(ch) for ch in "".join(segments)]
    if len(classes) < 12 or len(set(classes)) < 2:
        return False
    switches = sum(1 for a, b in pairwise(classes) if a != b)
    return switches / (len(classes) - 1) >= 0.4


def _looks_like_digest(text: str) -> bool:
    if _HEX_RUN.search(text) or _UUID.search(text):
        return True
    return any(_looks_encoded(run) for run in _B64_RUN.findall(text))


def check_text(text: str) -> list[Problem]:
    """What a released text value looks like that it must not (empty: nothing)."""
    found: list[Problem] = []
    if _has_ip(text):
        found.append(Problem.IP_ADDRESS)
    if any(p.search(text) for p in _MAC_PATTERNS):
        found.append(Problem.MAC_ADDRESS)
    if _ISO_TIME.search(text) or _EPOCH.search(text):
        found.append(Problem.EXACT_TIMESTAMP)
    if _CLOCK.search(text):
        found.append(Problem.CLOCK_TIME)
    if _looks_like_digest(text):
        found.append(Problem.DIGEST)
    if "@" in text or _LONG_NUMBER.search(text) or len(text) > _MAX_VALUE_LENGTH or not text:
        found.append(Problem.IDENTIFIER_VALUE)
    return found


def _check_value(column: str, value: object, period: Period | None) -> list[Problem]:
    if isinstance(value, (datetime, time)):
        return [Problem.EXACT_TIMESTAMP]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [Problem.DIGEST]
    if column in MEASURE_COLUMNS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return [] if ok else [Problem.BAD_MEASURE]
    if column == "bucket":
        if isinstance(value, date):
            return [] if period is Period.DAY else [Problem.BAD_BUCKET]
        if isinstance(value, str) and period is not None and _BUCKET[period].fullmatch(value):
            return []
        return [Problem.BAD_BUCKET]
    if not isinstance(value, str):
        return [Problem.IDENTIFIER_VALUE]
    return check_text(value)


_GENERAL: Final = frozenset({OTHER, UNKNOWN})
_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_CITY: Final = re.compile(r"[A-Z]{2}(?:/[^/]+)?")
_PORT_TYPE_NAMES: Final = frozenset(PORT_TYPES.values()) | _GENERAL


def check_category(dimension: object, value: object) -> bool:
    """Whether ``value`` has the shape its dimension allows (codes and registry names)."""
    if not isinstance(value, str):
        return False
    if dimension == Dimension.COUNTRY:
        return value in _GENERAL or bool(_COUNTRY.fullmatch(value))
    if dimension == Dimension.CITY:
        return value in _GENERAL or bool(_CITY.fullmatch(value))
    if dimension == Dimension.NAS_PORT_TYPE:
        return value in _PORT_TYPE_NAMES
    return True


def _period(value: object) -> Period | None:
    try:
        return Period(str(value))
    except ValueError:
        return None


def check_cover(
    rows: Sequence[Mapping[str, object]], *, k: int, population: int
) -> list[Violation]:
    """Complementary suppression: each table leaves out no subscriber or at least k.

    ``population`` is the distinct subscribers of the period the rows are
    from. A table (one period, bucket and dimension) whose cells' subscribers
    add up to 1..k-1 fewer is refused: the difference is a group below k.
    Subscribers in two cells of a table count twice in the sum, so this can
    miss a remainder hidden by such overlap (the rollup's own rule does not);
    it never refuses a table that is complete. Country and city tables of one
    bucket are refused together: the city table generalises to countries.
    """
    problems: list[Violation] = []
    sums: dict[tuple[object, object, object], int] = {}
    first: dict[tuple[object, object, object], int] = {}
    for i, row in enumerate(rows):
        key = (row.get("period"), row.get("bucket"), row.get("dimension"))
        subscribers = row.get("subscribers")
        count = subscribers if isinstance(subscribers, int) else 0
        sums[key] = sums.get(key, 0) + count
        first.setdefault(key, i)
    for key, total in sums.items():
        if 0 < population - total < max(k, MIN_K):
            problems.append(Violation(Problem.REMAINDER_BELOW_K, "subscribers", first[key]))
        period, bucket, dimension = key
        if dimension == Dimension.COUNTRY and (period, bucket, Dimension.CITY.value) in sums:
            problems.append(Violation(Problem.NESTED_TABLES, "dimension", first[key]))
    return problems


def check_release(
    rows: Sequence[Mapping[str, object]], *, k: int, population: int
) -> list[Violation]:
    """Every rule the table ``rows`` breaks; release only when the list is empty.

    ``population`` is the distinct subscribers of the period (see ``check_cover``).
    """
    problems: list[Violation] = []
    if k < MIN_K:
        problems.append(Violation(Problem.K_TOO_LOW))
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    for name in columns:
        bad = check_column(name)
        if bad is not None:
            problems.append(Violation(bad, name))
    for name in ALLOWED_COLUMNS:
        if rows and name not in columns:
            problems.append(Violation(Problem.MISSING_COLUMN, name))
    dimensions = {d.value for d in Dimension}
    seen: set[tuple[object, ...]] = set()
    for i, row in enumerate(rows):
        period = _period(row.get("period"))
        if period is None:
            problems.append(Violation(Problem.BAD_BUCKET, "period", i))
        if row.get("dimension") not in dimensions:
            problems.append(Violation(Problem.BAD_DIMENSION, "dimension", i))
        elif not check_category(row.get("dimension"), row.get("value")):
            problems.append(Violation(Problem.BAD_CATEGORY, "value", i))
        for column, value in row.items():
            if column in ("period", "dimension"):
                continue
            problems.extend(Violation(p, column, i) for p in _check_value(column, value, period))
        subscribers = row.get("subscribers")
        if not isinstance(subscribers, int) or subscribers < max(k, MIN_K):
            problems.append(Violation(Problem.BELOW_K, "subscribers", i))
        key = tuple(row.get(c) for c in KEY_COLUMNS)
        if key in seen:
            problems.append(Violation(Problem.DUPLICATE_CELL, None, i))
        seen.add(key)
    problems.extend(check_cover(rows, k=k, population=population))
    return problems


def summary(problems: Iterable[Violation], *, limit: int = 5) -> str:
    """One line naming the broken rules (never the values), for a refusal message."""
    items = list(problems)
    shown = ", ".join(str(v) for v in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} violation(s): {shown}{more}"
