"""The suspicious-login rules: pure functions over a subject's recent history.

No I/O, no clock: ``now`` and the history come in, a ``Finding`` or None goes
out. Thresholds come from ``detect.settings``; each docstring says where a
boundary lies ("at least" or "more than"), as DESIGN.md section 6 words it.
Evidence may hold personal values: the flag store seals it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ispcare_radius.detect.settings import (
    AccountManyDevices,
    BruteForce,
    ConcurrentSessions,
    DeviceManyAccounts,
    ImpossibleTravel,
    NewCountry,
    PasswordSpray,
    Rule,
    Severity,
    UnusualHour,
)

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule fired: how bad, how sure (``score`` in 0..1), and why."""

    rule: Rule
    severity: Severity
    score: float
    evidence: dict[str, Any] = field(default_factory=dict, repr=False)


class Place(Protocol):
    """Where a login came from: a GeoIP answer or the NAS location.

    ``detect.location.Location`` has these fields; so has ``Fix``.
    """

    @property
    def country(self) -> str | None: ...
    @property
    def latitude(self) -> float | None: ...
    @property
    def longitude(self) -> float | None: ...
    @property
    def accuracy_km(self) -> float | None: ...


def radius_km(place: Place, nas_accuracy_km: float) -> float:
    """How far from its coordinates a login at ``place`` may be: the GeoIP
    accuracy radius, or for a NAS location (none of its own) the area a POP
    serves."""
    accuracy = place.accuracy_km
    return nas_accuracy_km if accuracy is None else accuracy


# Slotted but not frozen, like Login and Signal (detect/login.py): one is
# made for every located login, and a frozen dataclass sets each field
# through object.__setattr__. Nothing changes one after construction.
@dataclass(slots=True)
class Fix:
    """A located login: the place and when."""

    time: float
    country: str | None
    latitude: float | None
    longitude: float | None
    accuracy_km: float | None = None


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) on a spherical Earth."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def brute_force(
    failures: Sequence[tuple[float, int | None]], now: float, s: BruteForce
) -> Finding | None:
    """At least ``short_count`` failures in ``short_window`` or ``long_count`` in ``long_window``.

    ``failures`` are (time, keyed digest of the offered password or None),
    oldest first, the newest at ``now``. Guessing (high) when the failures in
    the window offered at least ``guessing_distinct`` different passwords;
    a CPE retrying one stale password offers one (low); without digests
    (CHAP, MS-CHAP) the two cannot be told apart (medium).
    """
    window = None
    if len(failures) >= s.short_count and now - failures[-s.short_count][0] <= s.short_window:
        window, count = s.short_window, s.short_count
    elif len(failures) >= s.long_count and now - failures[-s.long_count][0] <= s.long_window:
        window, count = s.long_window, s.long_count
    if window is None:
        return None
    recent = [d for t, d in failures if now - t <= window]
    digests = [d for d in recent if d is not None]
    distinct = len(set(digests))
    if not digests:
        kind, severity = "unknown", Severity.MEDIUM
    elif distinct >= s.guessing_distinct:
        kind, severity = "guessing", Severity.HIGH
    else:
        kind, severity = "stale_credential", Severity.LOW
    return Finding(
        Rule.BRUTE_FORCE,
        severity,
        min(1.0, len(recent) / count),
        {
            "kind": kind,
            "failures": len(recent),
            "window_s": window,
            "threshold": count,
            "distinct_passwords": distinct,
            "passwords_known": len(digests),
        },
    )


def password_spray(names: Collection[object], failures: int, s: PasswordSpray) -> Finding | None:
    """More than ``max_names`` distinct user names failing from one source in
    ``names_window``, or more than ``max_failures`` failures in ``failures_window``.

    ``names`` are the keys of the user names that failed inside the names
    window; ``failures`` counts the source's failures inside the failures window.
    """
    if len(names) <= s.max_names and failures <= s.max_failures:
        return None
    return Finding(
        Rule.PASSWORD_SPRAY,
        Severity.HIGH,
        1.0,
        {
            "user_names": len(names),
            "names_window_s": s.names_window,
            "max_names": s.max_names,
            "failures": failures,
            "failures_window_s": s.failures_window,
            "max_failures": s.max_failures,
        },
    )


def new_country(
    recent: Sequence[str],
    logins_seen: int,
    first_seen: float,
    country: str | None,
    now: float,
    s: NewCountry,
) -> Finding | None:
    """``country`` is not among the last ``history`` logins' countries.

    Quiet until the account has at least ``quiet_logins`` earlier logins and
    was first seen at least ``quiet_days`` ago: a new account has no habit yet.
    """
    if not country or logins_seen < s.quiet_logins or now - first_seen < s.quiet_days * DAY:
        return None
    window = list(recent)[-s.history :]
    if country in window:
        return None
    return Finding(
        Rule.NEW_COUNTRY,
        Severity.MEDIUM,
        1.0,
        {"country": country, "recent_countries": sorted(set(window)), "logins_seen": logins_seen},
    )


def impossible_travel(prev: Fix, cur: Fix, s: ImpossibleTravel) -> Finding | None:
    """Two logins at least ``min_distance_km`` apart at more than ``max_speed_kmh``.

    The distance first loses both accuracy radii: two GeoIP answers with
    wide radii may be the same town. A non-positive interval with the
    distance met counts as infinitely fast.
    """
    if None in (prev.latitude, prev.longitude, cur.latitude, cur.longitude):
        return None
    assert prev.latitude is not None and prev.longitude is not None
    assert cur.latitude is not None and cur.longitude is not None
    raw = distance_km(prev.latitude, prev.longitude, cur.latitude, cur.longitude)
    effective = raw - (prev.accuracy_km or 0.0) - (cur.accuracy_km or 0.0)
    if effective < s.min_distance_km:
        return None
    hours = (cur.time - prev.time) / 3600.0
    speed = math.inf if hours <= 0 else effective / hours
    if speed <= s.max_speed_kmh:
        return None
    return Finding(
        Rule.IMPOSSIBLE_TRAVEL,
        Severity.HIGH,
        1.0 if math.isinf(speed) else min(1.0, speed / (s.max_speed_kmh * 4)),
        {
            "distance_km": round(raw, 1),
            "effective_km": round(effective, 1),
            "hours": round(hours, 3),
            "speed_kmh": None if math.isinf(speed) else round(speed, 1),
            "max_speed_kmh": s.max_speed_kmh,
            "from": _place(prev),
            "to": _place(cur),
        },
    )


def _place(fix: Fix) -> dict[str, Any]:
    return {
        "country": fix.country,
        "latitude": fix.latitude,
        "longitude": fix.longitude,
        "accuracy_km": fix.accuracy_km,
        "time": fix.time,
    }


def device_many_accounts(accounts: Collection[object], s: DeviceManyAccounts) -> Finding | None:
    """One MAC on more than ``max_accounts`` accounts inside the window (keys of those accounts)."""
    if len(accounts) <= s.max_accounts:
        return None
    return Finding(
        Rule.DEVICE_MANY_ACCOUNTS,
        Severity.MEDIUM,
        min(1.0, len(accounts) / (2 * s.max_accounts)),
        {"accounts": len(accounts), "max_accounts": s.max_accounts, "window_s": s.window},
    )


def account_many_devices(devices: Collection[object], s: AccountManyDevices) -> Finding | None:
    """One account from more than ``max_devices`` globally administered MACs inside the window."""
    if len(devices) <= s.max_devices:
        return None
    return Finding(
        Rule.ACCOUNT_MANY_DEVICES,
        Severity.MEDIUM,
        min(1.0, len(devices) / (2 * s.max_devices)),
        {"devices": len(devices), "max_devices": s.max_devices, "window_s": s.window},
    )


def unusual_hour(
    hours: Sequence[int], hour: int, s: UnusualHour, total: int | None = None
) -> Finding | None:
    """A login in an hour holding less than ``max_share`` of at least ``min_history`` logins.

    ``hours`` counts the account's earlier logins per UTC hour (24 entries);
    ``total`` is their sum when the caller keeps it.
    Low severity always: an odd hour is a score that adds to other signals,
    never a reason to block (settings refuse enforcing actions for it).
    """
    if total is None:
        total = sum(hours)
    if total < s.min_history:
        return None
    share = hours[hour] / total
    if share >= s.max_share:
        return None
    return Finding(
        Rule.UNUSUAL_HOUR,
        Severity.LOW,
        round(1.0 - share / s.max_share, 3),
        {"hour_utc": hour, "logins_in_hour": hours[hour], "logins": total},
    )


def concurrent_sessions(
    reason: str, s: ConcurrentSessions, displaced: bool = False
) -> Finding | None:
    """The plan's Simultaneous-Use limit fired: it refused this login (outcome
    ``simultaneous_use``) or, under ``disconnect_oldest``, let it in by
    displacing an older session (``displaced``)."""
    if reason != "simultaneous_use" and not displaced:
        return None
    return Finding(
        Rule.CONCURRENT_SESSIONS,
        Severity.LOW,
        1.0,
        {"reason": reason, "displaced": displaced},
    )
