"""What the detector keeps of one account's accepted logins: its habit and its places,
and the bounded map of them (``Habits``).

Plain containers, no keys, rules or I/O (detect/state.py uses them). Made
for every new account and updated on every accepted login, so they hold
plain values and are changed in place. The one exception, an account's
recent countries, is a short tuple of strings, rebuilt only while its
history fills or its country changes; the garbage collector stops walking
it once it has seen it.
"""

from __future__ import annotations

from array import array
from collections.abc import ItemsView
from typing import Final

from ispcare_radius.detect.bounded import Turns
from ispcare_radius.detect.rules import Fix

# A habit is a flat array of doubles: when the account was first seen, how
# many logins it had, and how many in each UTC hour. An array, not an
# object: no reference inside for the garbage collector to follow, and one
# allocation per new account.
FIRST: Final = 0
SEEN: Final = 1
HOURS: Final = 2
_EMPTY: Final = array("d", bytes((HOURS + 24) * array("d").itemsize))


def new_habit(first: float) -> array[float]:
    """The habit of an account first seen at ``first``, with no login counted."""
    habit = _EMPTY[:]
    habit[FIRST] = first
    return habit


def hours_of(habit: array[float]) -> list[int]:
    """The logins per UTC hour, for the unusual-hour rule."""
    return [int(n) for n in habit[HOURS:]]


class Places:
    """Where one account's accepted logins were: its recent countries, its last location.

    Only for an account that has logged in from a known place. The last
    location is kept as plain values, updated in place.
    """

    __slots__ = (
        "accuracy_km",
        "countries",
        "country",
        "latitude",
        "longitude",
        "recent",
        "repeats",
        "time",
    )

    def __init__(self) -> None:
        # Oldest first, at most ``history``: a tuple of strings, which the
        # garbage collector stops walking once it has seen it (a deque it
        # would walk, all ``history`` entries, at every full collection).
        self.countries: tuple[str, ...] = ()
        # The last country in ``countries`` and how many times it ends it: once
        # it fills them, the same country again changes nothing (most logins).
        self.recent: str | None = None
        self.repeats = 0
        self.time = 0.0
        self.country: str | None = None
        self.latitude: float | None = None  # None: no located login yet
        self.longitude: float | None = None
        self.accuracy_km: float | None = None

    def travel_from(self, fix: Fix) -> Fix | None:
        """The last location, if the impossible-travel rule must compare ``fix`` with it.

        None without a last location, or at the very same coordinates (a NAS
        location again): no distance at all, below any ``min_distance_km``
        (settings require it positive).
        """
        if self.latitude is None:
            return None
        if (
            self.latitude == fix.latitude
            and self.longitude == fix.longitude
            and (self.accuracy_km or 0.0) >= 0.0
            and (fix.accuracy_km or 0.0) >= 0.0
        ):
            return None
        return Fix(self.time, self.country, self.latitude, self.longitude, self.accuracy_km)

    def settled(
        self, country: str | None, lat: float | None, lon: float | None, accuracy_km: float | None
    ) -> bool:
        """True if a login from this place is one more from the last location.

        So it is: its country ends ``countries`` already (the new-country rule
        skips it), and its coordinates and radius are the last location's (no
        travel at all); ``stay`` is then all that ``remember`` would do. Most
        of a fixed line's logins come through one NAS, from one place.
        """
        return (
            lat is not None
            and country == self.recent
            and country == self.country
            and lat == self.latitude
            and lon == self.longitude
            and accuracy_km == self.accuracy_km
            and (accuracy_km or 0.0) >= 0.0
        )

    def stay(self, time: float, history: int) -> None:
        """``remember`` a login from the last location again (``settled``)."""
        self.time = time
        if self.recent is not None and self.repeats < history:
            self._repeat(self.recent, history)

    def remember(self, fix: Fix, history: int) -> None:
        """Add an accepted login's location; ``history`` countries are kept."""
        country = fix.country
        if country:
            if country != self.recent:
                self.recent = country
                self.repeats = 0
            if self.repeats < history:  # else all of them are this country already
                self._repeat(country, history)
        if fix.latitude is not None and fix.longitude is not None:
            self.time = fix.time
            self.country = fix.country
            self.latitude = fix.latitude
            self.longitude = fix.longitude
            self.accuracy_km = fix.accuracy_km

    def _repeat(self, country: str, history: int) -> None:
        self.repeats += 1
        countries = self.countries
        if len(countries) >= history:
            countries = countries[len(countries) - history + 1 :]
        self.countries = (*countries, country)


class Habits:
    """Each account's habit, at most ``limit`` of them, and the places of those that have one.

    Forgets by second chance, as ``bounded.Seen`` does: the habit at the
    front of the turns goes unless it counted a login since it was queued;
    then it goes to the back once, and the next is judged. The habit just
    made is never the one forgotten to make room for it. An accepted login
    only counts itself in its habit: nothing is reordered on the way.
    ``forgotten`` counts the habits forgotten so far: a habit found since is
    still the account's.
    """

    __slots__ = ("_habits", "_limit", "_turns", "forgotten", "places")

    def __init__(self, limit: int, width: int) -> None:
        self._habits: dict[bytes, array[float]] = {}
        self._limit = limit
        # Each account once, stamped with its login count when queued.
        self._turns = Turns(width)
        self.forgotten = 0
        # The places of accounts here that have one (forgotten with the habit).
        self.places: dict[bytes, Places] = {}

    def __len__(self) -> int:
        return len(self._habits)

    def __contains__(self, account: object) -> bool:
        return account in self._habits

    def __getitem__(self, account: bytes) -> array[float]:
        return self._habits[account]

    def items(self) -> ItemsView[bytes, array[float]]:
        return self._habits.items()

    def take(self, account: bytes, t: float) -> array[float]:
        """The habit of ``account``, made (first seen at ``t``) if it has none."""
        habits = self._habits
        habit = habits.get(account)
        if habit is None:
            habit = habits[account] = new_habit(t)
            self._turns.push(account, 1.0)  # as of the login counted next
            if len(habits) > self._limit:
                self._forget(account)
        return habit

    def _forget(self, keep: bytes) -> None:
        habits = self._habits
        turns = self._turns
        while True:
            account, queued = turns.pop()
            seen = habits[account][SEEN]
            if seen > queued or account == keep:
                turns.push(account, max(seen, queued))
                continue
            del habits[account]
            self.places.pop(account, None)
            self.forgotten += 1
            return
