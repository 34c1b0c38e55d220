"""What the detector remembers of a known subscriber's login as sent, to skip work next time.

A ``Known`` is found by the process's salted hash of (subscriber id, user
name, MAC as sent): it holds the account and MAC keys (no personal value),
the stored signal text (and that of its last place), and where the
subscriber's accepted-login state was last found (its habit, its places,
its MAC's accounts, its account's MACs). A returning subscriber's login
then costs no digest and no lookup in those maps: the most common
Access-Request reads one record.

A place found is only used while nothing has been forgotten from its map
since (each map counts what it forgets: ``forgotten``, kept with what was
found); otherwise it is looked up again. So the state a login updates is
always the one in the map, exactly as without the record.
"""

from __future__ import annotations

from array import array

from ispcare_radius.detect.bounded import Touched
from ispcare_radius.detect.habit import Habits, Places
from ispcare_radius.detect.login import keys_text, signal_text
from ispcare_radius.detect.rules import Place, radius_km

NEVER = -1
"""A ``*_at`` count no map ever has: the place must be looked up."""


class Found:
    """Where one login's accepted-login state was found: its habit, its MAC's accounts,
    its account's MACs. Fresh (nothing found) for a login with no record."""

    __slots__ = ("accounts", "habit", "habit_at", "macs")

    def __init__(self) -> None:
        self.habit: array[float] | None = None
        self.habit_at = NEVER
        self.accounts: Touched | None = None  # the MAC's accounts
        self.macs: Touched | None = None  # the account's MACs


class Known(Found):
    """One (subscriber, user name, MAC as sent): keys, text, and state last found."""

    __slots__ = (
        "account",
        "head",
        "mac",
        "mac_local",
        "place",
        "place_text",
        "places",
        "places_at",
        "sid",
        "text",
    )

    def __init__(self, sid: int | None, account: bytes, mac: bytes | None, mac_local: bool) -> None:
        super().__init__()
        self.sid = sid
        self.account = account
        self.mac = mac
        self.mac_local = mac_local
        self.head = keys_text(account, mac, mac_local)
        # The whole stored text of an accepted login without a place: most of them.
        self.text = signal_text(self.head, None, None, None)
        # The last place of an accepted login, and its whole stored text: a
        # NAS's logins share one place object (``detect.location.Locator``).
        self.place: object = None
        self.place_text = self.text
        # The account's places as last found, while ``Habits.forgotten`` is
        # ``places_at`` (they are forgotten with its habit).
        self.places: Places | None = None
        self.places_at = NEVER

    def settled(
        self, habits: Habits, place: Place, time: float, nas_accuracy_km: float, history: int
    ) -> bool:
        """True if ``place`` is where the account's last logins were (``Places.settled``):
        then ``Places.stay`` is all this login changes of the account's places, and that is
        done."""
        places = self.places
        if places is None or self.places_at != habits.forgotten:
            self.places = places = habits.places.get(self.account)
            self.places_at = habits.forgotten
            if places is None:
                return False
        accuracy = radius_km(place, nas_accuracy_km)
        if places.settled(place.country, place.latitude, place.longitude, accuracy):
            places.stay(time, history)
            return True
        return False
