"""What the detector remembers of a known subscriber's login as sent, to skip work next time.

A ``Known`` is found by the process's salted hash of (subscriber id, user
name, MAC as sent): it holds the account and MAC keys (no personal value),
the start of the stored signal text, and where the subscriber's
accepted-login state was last found (its habit, its MAC's accounts, its
account's MACs). A returning subscriber's login then costs no digest and no
lookup in those maps: the most common Access-Request reads one record.

A place found is only used while nothing has been forgotten from its map
since (each map counts what it forgets: ``forgotten``, kept with what was
found); otherwise it is looked up again. So the state a login updates is always the one in the
map, exactly as without the record.
"""

from __future__ import annotations

from array import array

from ispcare_radius.detect.bounded import Touched
from ispcare_radius.detect.login import keys_text, signal_text

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

    __slots__ = ("account", "head", "mac", "mac_local", "sid", "text")

    def __init__(self, sid: int | None, account: bytes, mac: bytes | None, mac_local: bool) -> None:
        super().__init__()
        self.sid = sid
        self.account = account
        self.mac = mac
        self.mac_local = mac_local
        self.head = keys_text(account, mac, mac_local)
        # The whole stored text of an accepted login without a place: most of them.
        self.text = signal_text(self.head, None, None, None)
