"""The detector: bounded in-memory history per subject, the rules over it, and active holds.

Owns no I/O and no clock (time comes with each login). Subjects (account,
source, MAC) are keyed by keyed digests from a ``Keyer`` the composition
root builds on a blind-index key: a raw user name, MAC or address never
becomes a dict key here. Every map is an LRU bounded by
``max_subjects``; each subject's list (failures, user names, MACs,
accounts) by its rule's window and its rule's threshold plus one (all the
rule needs to fire); and the entries of all those lists together by
``max_entries``, the least recently used subject of the fullest map
forgotten first. So memory stays bounded under any load, forged MACs and
user names included. O(1) amortised per login: appends to bounded deques
and ordered dicts pruned from the front.

What a login leaves behind is a ``Signal`` (keys, no personal values), stored
with its auth event, so ``replay`` can rebuild this state after a restart.
Chosen over unsealing the auth events' personal columns: the rebuild needs
no subscriber key, and the wrong-password digests it needs were never
stored anywhere else.

Limits: the state is per process (with several workers each sees its share
of the traffic); the rebuild replays ``rebuild_hours`` of events, so the
new-country habit of an account older than that starts again (quiet until
its quiet period has passed anew).
"""

from __future__ import annotations

import json
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sized
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

from ispcare_radius.detect import rules
from ispcare_radius.detect.rules import Finding, Fix, Place
from ispcare_radius.detect.settings import (
    ACTION_RANK,
    Action,
    DetectSettings,
    Rule,
    Severity,
)

# Rejects that say someone tried a credential and it did not fit (Outcome slugs).
FAILURE_REASONS: Final = frozenset({"bad_password", "unknown_user"})
KEY_BYTES: Final = 8
SIGNAL_VERSION: Final = 1
# Coordinates are kept to 0.1 degree in stored signals (about 11 km), and the
# accuracy radius widened to cover the rounding: a coarse category, not a place.
_ROUND_DEGREES: Final = 1
_ROUNDING_KM: Final = 8.0

Keyer = Callable[[str, bytes], bytes]
"""(domain, value) -> keyed digest (HMAC under a key the database never holds in clear)."""


class FlagSink(Protocol):
    def submit(self, flag: Flag) -> None:
        """Queue ``flag`` to be logged or stored off the reply path; never blocks."""
        ...


class Subject:
    """Who a rule's finding and action are about."""

    ACCOUNT: Final = "account"
    SOURCE: Final = "source"
    MAC: Final = "mac"


_RULE_SUBJECT: Final = {
    Rule.BRUTE_FORCE: Subject.ACCOUNT,
    Rule.PASSWORD_SPRAY: Subject.SOURCE,
    Rule.NEW_COUNTRY: Subject.ACCOUNT,
    Rule.IMPOSSIBLE_TRAVEL: Subject.ACCOUNT,
    Rule.DEVICE_MANY_ACCOUNTS: Subject.MAC,
    Rule.ACCOUNT_MANY_DEVICES: Subject.ACCOUNT,
    Rule.UNUSUAL_HOUR: Subject.ACCOUNT,
    Rule.CONCURRENT_SESSIONS: Subject.ACCOUNT,
}


# Login and Signal are built for every Access-Request: slotted but not frozen,
# because a frozen dataclass sets each field through object.__setattr__.
# Nothing changes them after construction.
@dataclass(slots=True)
class Login:
    """One decided Access-Request as the pipeline saw it; personal values in clear.

    ``calling_station_id`` is the source: the Calling-Station-Id, or the
    client's public IP for VPN and hotspot NAS. ``password`` is the PAP
    password offered (only its keyed digest is kept); ``mac`` the 6 bytes of
    a MAC-shaped Calling-Station-Id.
    """

    time: float
    subscriber_id: int | None
    accepted: bool
    reason: str
    user_name: str = field(repr=False)
    calling_station_id: str | None = field(default=None, repr=False)
    mac: bytes | None = field(default=None, repr=False)
    password: bytes | None = field(default=None, repr=False)
    place: Place | None = field(default=None, repr=False)
    # Admitted over the plan's Simultaneous-Use limit by displacing a session.
    over_limit: bool = False


@dataclass(slots=True)
class Signal:
    """What detection keeps of a login: keyed digests and a coarse location, no personal value."""

    time: float
    subscriber_id: int | None
    accepted: bool
    reason: str
    account: bytes
    source: bytes | None = None
    mac: bytes | None = None
    mac_local: bool = False
    password: int | None = None
    fix: Fix | None = None
    over_limit: bool = False  # not stored: its flag is, once

    @property
    def failure(self) -> bool:
        return not self.accepted and self.reason in FAILURE_REASONS

    def row(self) -> dict[str, Any]:
        """The JSON stored with the auth event (``auth_events.detect``)."""
        out: dict[str, Any] = {"v": SIGNAL_VERSION, "a": self.account.hex()}
        if self.source is not None:
            out["s"] = self.source.hex()
        if self.mac is not None:
            out["m"] = self.mac.hex()
            out["ml"] = self.mac_local
        if self.password is not None:
            out["p"] = self.password
        fix = self.fix
        if fix is not None:
            lat = None if fix.latitude is None else round(fix.latitude, _ROUND_DEGREES)
            lon = None if fix.longitude is None else round(fix.longitude, _ROUND_DEGREES)
            out["fx"] = [fix.country, lat, lon, (fix.accuracy_km or 0.0) + _ROUNDING_KM]
        return out

    def encode(self) -> str:
        """``row()`` as compact JSON text, as the auth-event writer stores it.

        Built by hand: it runs for every Access-Request, and hex digests and
        integers need no escaping (the location goes through ``json``).
        """
        parts = [f'{{"v":{SIGNAL_VERSION},"a":"{self.account.hex()}"']
        if self.source is not None:
            parts.append(f',"s":"{self.source.hex()}"')
        if self.mac is not None:
            parts.append(f',"m":"{self.mac.hex()}","ml":{"true" if self.mac_local else "false"}')
        if self.password is not None:
            parts.append(f',"p":{self.password}')
        if self.fix is not None:
            parts.append(',"fx":' + json.dumps(self.row()["fx"], separators=(",", ":")))
        parts.append("}")
        return "".join(parts)

    @classmethod
    def decode(
        cls, text: str, *, time: float, subscriber_id: int | None, accepted: bool, reason: str
    ) -> Signal | None:
        """The signal stored as ``text`` by ``encode``; None if it is not one."""
        try:
            row = json.loads(text)
        except ValueError:
            return None
        if not isinstance(row, dict):
            return None
        try:
            return cls.from_row(
                row, time=time, subscriber_id=subscriber_id, accepted=accepted, reason=reason
            )
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_row(
        cls,
        row: dict[str, Any],
        *,
        time: float,
        subscriber_id: int | None,
        accepted: bool,
        reason: str,
    ) -> Signal | None:
        """The signal stored by ``row``; None for a row of an unknown version."""
        if row.get("v") != SIGNAL_VERSION or "a" not in row:
            return None
        fx = row.get("fx")
        fix = None
        if isinstance(fx, list) and len(fx) == 4:
            fix = Fix(time, fx[0], fx[1], fx[2], fx[3])
        return cls(
            time=time,
            subscriber_id=subscriber_id,
            accepted=accepted,
            reason=reason,
            account=bytes.fromhex(row["a"]),
            source=bytes.fromhex(row["s"]) if "s" in row else None,
            mac=bytes.fromhex(row["m"]) if "m" in row else None,
            mac_local=bool(row.get("ml", False)),
            password=int(row["p"]) if "p" in row else None,
            fix=fix,
        )


@dataclass(frozen=True, slots=True)
class Flag:
    """A finding with its subject, time bucket and action, for the flag store.

    ``evidence`` holds personal values (sealed by the store) only on a flag
    about an account; ``thresholds`` are the rule's settings when it fired.
    """

    time: float
    rule: Rule
    severity: Severity
    score: float
    action: Action
    subject_kind: str
    subject: bytes
    bucket: int
    subscriber_id: int | None
    evidence: dict[str, Any] = field(repr=False)
    thresholds: dict[str, Any]
    replayed: bool = False


def account_text(user_name: str) -> bytes:
    """A user name as one account, however spelled: NFKC, case folded, NFKC again.

    ASCII names (nearly all) take the short way: NFKC leaves them as they are
    and case folding is lowercasing.
    """
    if user_name.isascii():
        return user_name.lower().encode("ascii")
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", user_name).casefold())
    return folded.encode("utf-8", "surrogatepass")


def source_text(source: str) -> bytes:
    """A source (Calling-Station-Id or client IP) as one subject: trimmed, lowercased.

    A NAS writes a station the same way every time, so no further
    normalisation is needed to count what comes from it.
    """
    return source.strip().lower().encode("utf-8", "surrogatepass")


def is_locally_administered(mac: bytes) -> bool:
    """The U/L bit (IEEE 802, bit 1 of octet 0): set on randomised MACs."""
    return bool(mac[0] & 0x02)


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Lru(OrderedDict[_K, _V]):
    """An ordered dict that forgets its least recently used entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: _K, value: _V) -> _V:
        """Add ``value`` as the most recent entry, forgetting the oldest beyond the limit."""
        self[key] = value
        if len(self) > self.limit:
            self.popitem(last=False)
        return value

    def take(self, key: _K, make: Callable[[], _V]) -> _V:
        value = self.get(key)
        if value is None:
            value = self[key] = make()
            while len(self) > self.limit:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value


_L = TypeVar("_L", bound=Sized)


class _Budget:
    """The entries held across several ``_Lists`` maps, and the cap on their sum."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries = 0
        self.maps: list[_Lists[Any]] = []

    def settle(self) -> None:
        """Forget least recently used subjects of the fullest map until under the cap.

        The fullest map is the one a flood fills: an attacker forging names
        or MACs evicts their own subjects first, not the accounts' failures.
        Only runs once the cap is reached; five maps to compare.
        """
        while self.entries > self.limit:
            max(self.maps, key=lambda m: m.entries).forget_oldest()


class _Lists(OrderedDict[bytes, _L], Generic[_L]):
    """An LRU of per-subject lists that counts their entries against a shared budget.

    Callers change a list in place and report its length before and after
    (``resized``); forgetting a subject gives its entries back.
    """

    def __init__(self, limit: int, budget: _Budget) -> None:
        super().__init__()
        self.limit = limit
        self.entries = 0
        self._budget = budget
        budget.maps.append(self)

    def open(self, key: bytes, make: Callable[[], _L]) -> _L:
        """The list of ``key`` (made empty if new), now the most recently used."""
        value = self.get(key)
        if value is None:
            value = self[key] = make()
            while len(self) > self.limit:
                self.forget_oldest()
        else:
            self.move_to_end(key)
        return value

    def forget_oldest(self) -> None:
        _, value = self.popitem(last=False)
        self.entries -= len(value)
        self._budget.entries -= len(value)

    def resized(self, before: int, after: int) -> None:
        """Account for a list that went from ``before`` to ``after`` entries."""
        grown = after - before
        if grown:
            self.entries += grown
            budget = self._budget
            budget.entries += grown
            if budget.entries > budget.limit:
                budget.settle()


def _touch(
    seen: OrderedDict[bytes, float], key: bytes, now: float, window: float, cap: int
) -> None:
    """Record ``key`` at ``now`` and drop keys last seen before the window (or beyond ``cap``).

    ``cap`` is the rule's threshold plus one: a "more than N" rule fires
    with N + 1 keys inside the window, so keeping more would only cost
    memory. The oldest key goes first, so the newest N + 1 are always kept.
    """
    seen.pop(key, None)
    seen[key] = now
    while seen and (next(iter(seen.values())) < now - window or len(seen) > cap):
        seen.popitem(last=False)


@dataclass(slots=True)
class _Habit:
    """One account's accepted logins: countries, last location, hours of day."""

    first: float
    seen: int = 0
    countries: deque[str] = field(default_factory=deque)
    last_fix: Fix | None = None
    hours: list[int] = field(default_factory=lambda: [0] * 24)


class Detector:
    """Runs every rule on each login, emits flags to a sink, and keeps the holds.

    ``hold`` is the cheap question the pipeline asks before replying: is this
    account, source or MAC rejected or sent to the walled garden right now?
    """

    def __init__(self, settings: DetectSettings, keyer: Keyer, sink: FlagSink) -> None:
        self.settings = settings
        self._key = keyer
        self._sink = sink
        n = settings.max_subjects
        self._budget = _Budget(settings.max_entries)
        budget = self._budget
        self._failures: _Lists[deque[tuple[float, int | None]]] = _Lists(n, budget)
        self._spray_names: _Lists[OrderedDict[bytes, float]] = _Lists(n, budget)
        self._spray_failures: _Lists[deque[float]] = _Lists(n, budget)
        self._habits: _Lru[bytes, _Habit] = _Lru(n)
        self._account_macs: _Lists[OrderedDict[bytes, float]] = _Lists(n, budget)
        self._mac_accounts: _Lists[OrderedDict[bytes, float]] = _Lists(n, budget)
        self._fired: _Lru[tuple[Rule, str, bytes, int], bool] = _Lru(n)
        self._holds: _Lru[tuple[str, bytes], tuple[Action, float]] = _Lru(n)
        self.flags_emitted = 0
        self._fail_len = max(settings.brute_force.short_count, settings.brute_force.long_count)
        self._memo: (
            tuple[tuple[str, str | None, bytes | None], tuple[bytes, bytes | None, bytes | None]]
            | None
        ) = None

    # --- keys -------------------------------------------------------------

    def _subject(self, kind: str, value: bytes) -> bytes:
        return self._key(kind, value)[:KEY_BYTES]

    def keys(
        self, user_name: str, source: str | None, mac: bytes | None
    ) -> tuple[bytes, bytes | None, bytes | None]:
        """The (account, source, MAC) keys of one request.

        The last answer is remembered: the pipeline asks for the same
        request's keys before the reply (``hold``) and after it (``observe``).
        """
        asked = (user_name, source, mac)
        memo = self._memo
        if memo is not None and memo[0] == asked:
            return memo[1]
        account = self._subject(Subject.ACCOUNT, account_text(user_name))
        src = self._subject(Subject.SOURCE, source_text(source)) if source else None
        mac_key = self._subject(Subject.MAC, mac) if mac is not None else None
        keys = (account, src, mac_key)
        self._memo = (asked, keys)
        return keys

    def signal(self, login: Login) -> Signal:
        """The keyed form of ``login``: what the rules and the auth-events row keep."""
        account, source, mac = self.keys(login.user_name, login.calling_station_id, login.mac)
        password = None
        if login.password is not None and not login.accepted:
            # Only 32 bits, and bound to the account: enough to count distinct
            # wrong passwords, too short to test a guess offline.
            digest = self._key("password", account + login.password)
            password = int.from_bytes(digest[:4], "big")
        fix = None
        place = login.place
        if place is not None and (place.country or place.latitude is not None):
            # A NAS location has no radius of its own: the POP serves an area.
            accuracy = place.accuracy_km
            if accuracy is None:
                accuracy = self.settings.nas_accuracy_km
            fix = Fix(login.time, place.country, place.latitude, place.longitude, accuracy)
        return Signal(
            time=login.time,
            subscriber_id=login.subscriber_id,
            accepted=login.accepted,
            reason=login.reason,
            account=account,
            source=source,
            mac=mac,
            mac_local=login.mac is not None and is_locally_administered(login.mac),
            password=password,
            fix=fix,
            over_limit=login.over_limit,
        )

    # --- the question before a reply ---------------------------------------

    def hold(
        self, user_name: str | None, calling_station_id: str | None, mac: bytes | None, now: float
    ) -> Action | None:
        """REJECT or WALLED_GARDEN when a live hold covers this account, source or MAC.

        Costs nothing while no hold exists (the usual case); otherwise a few
        keyed digests and dict lookups.
        """
        holds = self._holds
        # Every hold lasts the same cool-down and is refreshed to the back, so
        # the front runs out first: dropping spent ones there is amortised O(1).
        while holds:
            key, (_, until) = next(iter(holds.items()))
            if until > now:
                break
            del holds[key]
        if not holds or not user_name:
            return None
        account, src, mac_key = self.keys(user_name, calling_station_id, mac)
        wanted = [(Subject.ACCOUNT, account)]
        if src is not None:
            wanted.append((Subject.SOURCE, src))
        if mac_key is not None:
            wanted.append((Subject.MAC, mac_key))
        best: Action | None = None
        for key in wanted:
            held = self._holds.get(key)
            if held is None:
                continue
            action, until = held
            if until <= now:
                del self._holds[key]
                continue
            if best is None or ACTION_RANK[action] > ACTION_RANK[best]:
                best = action
        return best

    @property
    def holds(self) -> int:
        """Holds in memory (some may have run out)."""
        return len(self._holds)

    @property
    def entries(self) -> int:
        """Entries held in every subject's lists together (at most ``max_entries``)."""
        return self._budget.entries

    # --- after a decision ----------------------------------------------------

    def observe(self, login: Login) -> Signal:
        """Run the rules on ``login``, emit its flags and holds; the signal to store."""
        sig = self.signal(login)
        personal: dict[str, Any] = {"user_name": login.user_name}
        if login.calling_station_id:
            personal["calling_station_id"] = login.calling_station_id
        self.apply(sig, personal=personal)
        return sig

    def replay(self, signals: Iterable[Signal]) -> int:
        """Rebuild history from stored signals, oldest first; returns how many.

        Findings raised again reach the sink marked ``replayed`` (the store
        keeps one open flag per rule, subject and bucket, so nothing doubles),
        and holds whose cool-down has not ended come back.
        """
        count = 0
        for sig in signals:
            self.apply(sig, personal=None)
            count += 1
        return count

    def apply(self, sig: Signal, *, personal: dict[str, Any] | None) -> list[Flag]:
        """Every rule over ``sig`` and the subject's history, then record ``sig``.

        Runs for every Access-Request: plain appends and lookups, no closures,
        each history pruned from its old end (amortised O(1)).
        """
        s = self.settings
        t = sig.time
        account = sig.account
        found: list[tuple[Finding, bytes]] = []
        if sig.failure:
            bf = s.brute_force
            fails = self._failures.open(account, self._new_failures)
            before = len(fails)
            fails.append((t, sig.password))
            self._failures.resized(before, len(fails))
            if (f := rules.brute_force(fails, t, bf)) is not None:
                found.append((f, account))
            source = sig.source
            if source is not None:
                sp = s.password_spray
                names = self._spray_names.open(source, OrderedDict)
                before = len(names)
                _touch(names, account, t, sp.names_window, sp.max_names + 1)
                self._spray_names.resized(before, len(names))
                day = self._spray_failures.open(source, self._new_day)
                before = len(day)
                day.append(t)
                while day[0] < t - sp.failures_window:
                    day.popleft()
                self._spray_failures.resized(before, len(day))
                if (f := rules.password_spray(names, len(day), sp)) is not None:
                    found.append((f, source))
        if sig.accepted:
            habit = self._habits.get(account)
            if habit is None:
                habit = self._habits.put(account, _Habit(first=t))
            else:
                self._habits.move_to_end(account)
            fix = sig.fix
            if fix is not None:
                f = rules.new_country(
                    habit.countries, habit.seen, habit.first, fix.country, t, s.new_country
                )
                if f is not None:
                    found.append((f, account))
                if habit.last_fix is not None:
                    f = rules.impossible_travel(habit.last_fix, fix, s.impossible_travel)
                    if f is not None:
                        found.append((f, account))
            hour = int(t // 3600) % 24
            if (f := rules.unusual_hour(habit.hours, hour, s.unusual_hour)) is not None:
                found.append((f, account))
            self._remember(habit, fix, hour)
            mac = sig.mac
            if mac is not None:
                if not sig.mac_local:
                    am = s.account_many_devices
                    macs = self._account_macs.open(account, OrderedDict)
                    before = len(macs)
                    _touch(macs, mac, t, am.window, am.max_devices + 1)
                    self._account_macs.resized(before, len(macs))
                    if (f := rules.account_many_devices(macs, am)) is not None:
                        found.append((f, account))
                dm = s.device_many_accounts
                accounts = self._mac_accounts.open(mac, OrderedDict)
                before = len(accounts)
                _touch(accounts, account, t, dm.window, dm.max_accounts + 1)
                self._mac_accounts.resized(before, len(accounts))
                if (f := rules.device_many_accounts(accounts, dm)) is not None:
                    found.append((f, mac))
        if sig.over_limit or sig.reason == "simultaneous_use":
            f = rules.concurrent_sessions(sig.reason, s.concurrent_sessions, sig.over_limit)
            if f is not None:
                found.append((f, account))
        if not found:
            return []
        return [
            flag
            for finding, subject in found
            if (flag := self._act(sig, finding, subject, personal)) is not None
        ]

    def _new_failures(self) -> deque[tuple[float, int | None]]:
        # The longer brute-force rule looks back this many failures: no more is kept.
        return deque(maxlen=self._fail_len)

    def _new_day(self) -> deque[float]:
        # One failure beyond the threshold is enough to fire "more than max_failures".
        return deque(maxlen=self.settings.password_spray.max_failures + 1)

    def _remember(self, habit: _Habit, fix: Fix | None, hour: int) -> None:
        habit.seen += 1
        habit.hours[hour] += 1
        if fix is not None:
            if fix.country:
                habit.countries.append(fix.country)
                while len(habit.countries) > self.settings.new_country.history:
                    habit.countries.popleft()
            if fix.latitude is not None and fix.longitude is not None:
                habit.last_fix = fix

    def _act(
        self, sig: Signal, finding: Finding, subject: bytes, personal: dict[str, Any] | None
    ) -> Flag | None:
        """Apply the configured action's hold, and emit the flag once per bucket."""
        s = self.settings
        rule = finding.rule
        kind = _RULE_SUBJECT[rule]
        action = s.action(rule, finding.severity)
        if action in (Action.REJECT, Action.WALLED_GARDEN):
            key = (kind, subject)
            until = sig.time + s.cooldown
            held = self._holds.get(key)
            if held is None or ACTION_RANK[action] >= ACTION_RANK[held[0]]:
                self._holds[key] = (action, max(until, held[1] if held else until))
                self._holds.move_to_end(key)
                while len(self._holds) > self._holds.limit:
                    self._holds.popitem(last=False)
        bucket = int(sig.time // s.rule(rule).bucket)
        fired = (rule, kind, subject, bucket)
        if fired in self._fired:
            return None
        self._fired.take(fired, lambda: True)
        evidence = dict(finding.evidence)
        if personal is not None and kind == Subject.ACCOUNT:
            # Only a flag about an account carries its user name: it is sealed
            # under that subscriber's key and goes with their erasure. A source
            # or MAC flag is sealed under the epoch key and outlives any one
            # subscriber, so it keeps the rule's counts and the keyed subject.
            evidence.update(personal)
        flag = Flag(
            time=sig.time,
            rule=rule,
            severity=finding.severity,
            score=finding.score,
            action=action,
            subject_kind=kind,
            subject=subject,
            bucket=bucket,
            subscriber_id=sig.subscriber_id if kind == Subject.ACCOUNT else None,
            evidence=evidence,
            thresholds=asdict(s.rule(rule)),
            replayed=personal is None,
        )
        self.flags_emitted += 1
        self._sink.submit(flag)
        return flag
