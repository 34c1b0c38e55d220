"""The detector: bounded in-memory history per subject, the rules over it, and active holds.

Owns no I/O and no clock (time comes with each login). Subjects (account,
source, MAC) are keyed by keyed digests from a ``Keyer`` the composition
root builds on a blind-index key: a raw user name, MAC or address never
becomes a dict key here. Every map is bounded by ``max_subjects``: the
failure lists and holds are LRUs; the maps an accepted login updates
(habits, an account's MACs, a MAC's accounts, a source's names) forget by
second chance (a subject not seen for a whole turn of its map), so an
accepted login reorders nothing. Each subject's list (failures, user
names, MACs, accounts) is bounded by its rule's window and its rule's
threshold plus one (all the rule needs to fire); and the entries of all
those lists together by ``max_entries``, the fullest map forgetting
first. So memory stays bounded under any load, forged MACs and user names
included (the containers are in detect/bounded.py, an
account's habit and places in detect/habit.py). O(1)
amortised per login: appends to bounded deques and dicts pruned from the
front; a returning subscriber's keys are remembered, so its login costs no
digest, and where its state was found (detect/known.py), so no lookup.

What a login leaves behind is a ``Signal`` (keys, no personal values;
detect/login.py), stored with its auth event, so ``replay`` can rebuild this
state after a restart.
Chosen over unsealing the auth events' personal columns: the rebuild needs
no subscriber key, and the wrong-password digests it needs were never
stored anywhere else.

Limits: the state is per process (with several workers each sees its share
of the traffic); the rebuild replays ``rebuild_hours`` of events, so the
new-country habit of an account older than that starts again (quiet until
its quiet period has passed anew).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Final, Protocol

from ispcare_radius.detect import rules
from ispcare_radius.detect.bounded import Budget, Lists, Lru, Seen, Turns
from ispcare_radius.detect.habit import FIRST, HOURS, SEEN, Habits, Places, hours_of
from ispcare_radius.detect.known import Found, Known
from ispcare_radius.detect.login import (
    FAILURE_REASONS,
    Flag,
    Login,
    Signal,
    account_text,
    fix_text,
    is_locally_administered,
    signal_text,
    source_text,
)
from ispcare_radius.detect.rules import Finding, Fix, Place, radius_km
from ispcare_radius.detect.settings import ACTION_RANK, Action, DetectSettings, Rule

KEY_BYTES: Final = 8

MacParser = Callable[[bytes], bytes | None]
"""A Calling-Station-Id as sent -> the 6 bytes of the MAC it spells, or None."""

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


# (country, latitude, longitude, accuracy) of a Fix: what its stored text depends on.
_PlaceKey = tuple[str | None, float | None, float | None, float | None]


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
        self._budget = Budget(settings.max_entries)
        budget = self._budget
        self._failures: Lists[deque[tuple[float, int | None]]] = Lists(n, budget)
        self._spray_names = Seen(n, budget)
        self._spray_failures: Lists[deque[float]] = Lists(n, budget)
        self._habits = Habits(n, KEY_BYTES)
        self._account_macs = Seen(n, budget)
        self._mac_accounts = Seen(n, budget)
        self._fired: Lru[tuple[Rule, str, bytes, int], bool] = Lru(n)
        self._holds: Lru[tuple[str, bytes], tuple[Action, float]] = Lru(n)
        self.flags_emitted = 0
        self._fail_len = max(settings.brute_force.short_count, settings.brute_force.long_count)
        self._memo: (
            tuple[tuple[str, str | None, bytes | None], tuple[bytes, bytes | None, bytes | None]]
            | None
        ) = None
        # A known subscriber's keys and state (detect/known.py), found by the
        # process's salted hash of (subscriber id, user name, MAC): no
        # personal value is held, and a returning subscriber costs no digest.
        # Insertion order evicts (``_known_turns``); the subscriber id in the
        # record keeps a collision from giving one subscriber another's keys.
        self._known: dict[int, Known] = {}
        self._known_turns = Turns(KEY_BYTES)
        self._known_limit = n
        self._fix_memo: (
            tuple[tuple[str | None, float | None, float | None, float | None], str] | None
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

    def _identity(
        self,
        sid: int | None,
        user_name: str,
        mac: bytes | None,
        station: bytes | None,
        parse_mac: MacParser | None,
    ) -> Known:
        """The account and MAC keys of a login; remembered for a known subscriber."""
        if sid is None:
            return self._identify(None, user_name, mac, station, parse_mac)
        known = self._known
        slot = hash((sid, user_name, mac, station))
        hit = known.get(slot)
        if hit is not None and hit.sid == sid:
            return hit
        found = self._identify(sid, user_name, mac, station, parse_mac)
        if hit is None:  # else a collision: the slot keeps its turn
            self._known_turns.push(slot.to_bytes(KEY_BYTES, "little", signed=True), 0.0)
        known[slot] = found
        if len(known) > self._known_limit:
            oldest = self._known_turns.pop()[0]
            del known[int.from_bytes(oldest, "little", signed=True)]
        return found

    def _identify(
        self,
        sid: int | None,
        user_name: str,
        mac: bytes | None,
        station: bytes | None,
        parse_mac: MacParser | None,
    ) -> Known:
        key = self._key
        account = key(Subject.ACCOUNT, account_text(user_name))[:KEY_BYTES]
        if mac is None and station is not None and parse_mac is not None:
            mac = parse_mac(station)
        if mac is None:
            return Known(sid, account, None, False)
        mac_key = key(Subject.MAC, mac)[:KEY_BYTES]
        return Known(sid, account, mac_key, is_locally_administered(mac))

    def signal(self, login: Login, parse_mac: MacParser | None = None) -> Signal:
        """The keyed form of ``login``: what the rules and the auth-events row keep.

        The source key is only for rejected logins (the spray rule counts
        nothing else), so an accepted login costs no digest of it. ``parse_mac``
        reads ``login.station`` as a MAC when ``login.mac`` is not given, and
        only when the login's keys are not remembered.
        """
        known = self._identity(
            login.subscriber_id, login.user_name, login.mac, login.station, parse_mac
        )
        account = known.account
        source = password = None
        if not login.accepted:
            if login.calling_station_id:
                source = self.keys(login.user_name, login.calling_station_id, login.mac)[1]
            if login.password is not None:
                # Only 32 bits, and bound to the account: enough to count distinct
                # wrong passwords, too short to test a guess offline.
                digest = self._key("password", account + login.password)
                password = int.from_bytes(digest[:4], "big")
        return Signal(  # positional, in field order: this runs for every request
            login.time,
            login.subscriber_id,
            login.accepted,
            login.reason,
            account,
            source,
            known.mac,
            known.mac_local,
            password,
            self._fix(login.place, login.time),
            login.over_limit,
            known.head,
        )

    def _fix(self, place: Place | None, time: float) -> Fix | None:
        """Where and when, for the location rules; None for a login without a place."""
        if place is None or not (place.country or place.latitude is not None):
            return None
        accuracy = radius_km(place, self.settings.nas_accuracy_km)
        return Fix(time, place.country, place.latitude, place.longitude, accuracy)

    def _fix_text(self, fix: Fix) -> str:
        """``fix_text(fix)``, remembered for the last place (a NAS's logins share one)."""
        asked = (fix.country, fix.latitude, fix.longitude, fix.accuracy_km)
        memo = self._fix_memo
        if memo is not None and memo[0] == asked:
            return memo[1]
        text = fix_text(fix)
        self._fix_memo = (asked, text)
        return text

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

    def observe(self, login: Login, parse_mac: MacParser | None = None) -> Signal:
        """Run the rules on ``login``, emit its flags and holds; the signal to store.

        ``parse_mac`` as for ``signal``.
        """
        sig = self.signal(login, parse_mac)
        self.apply(sig, login)
        return sig

    def see(
        self,
        time: float,
        subscriber_id: int | None,
        accepted: bool,
        reason: str,
        user_name: str,
        source: str | None,
        password: bytes | None,
        place: Place | None,
        over_limit: bool,
        station: bytes | None,
        parse_mac: MacParser | None,
    ) -> str:
        """``observe`` for the pipeline: a login's fields in, its stored signal text out.

        The fields are ``Login``'s, with the MAC left to ``parse_mac``. An
        accepted login of a known subscriber is most Access-Requests: it
        builds neither a ``Login`` nor a ``Signal`` unless a rule fires on
        it. Any other login goes through ``observe``.
        """
        sig = None
        if (
            accepted
            and subscriber_id is not None
            and not over_limit
            and reason != "simultaneous_use"
        ):
            known = self._identity(subscriber_id, user_name, None, station, parse_mac)
            fix = None
            s = self.settings
            if place is not None and not known.settled(
                self._habits, place, time, s.nas_accuracy_km, s.new_country.history
            ):
                fix = self._fix(place, time)
            found: list[tuple[Finding, bytes]] = []
            account, mac, mac_local = known.account, known.mac, known.mac_local
            self._accepted(account, time, fix, mac, mac_local, found, known)
            if not found:
                if place is None:
                    return known.text
                if place is not known.place:
                    fx = fix if fix is not None else self._fix(place, time)
                    known.place_text = (
                        known.text
                        if fx is None
                        else signal_text(known.head, None, None, self._fix_text(fx))
                    )
                    known.place = place
                return known.place_text
            if fix is None and place is not None:
                fix = self._fix(place, time)
            sig = Signal(  # positional, in field order
                time, subscriber_id, True, reason, account, None, mac, mac_local, None, fix
            )
            sig.head = known.head
        login = Login(  # positional, in field order
            time,
            subscriber_id,
            accepted,
            reason,
            user_name,
            source,
            None,
            password,
            place,
            over_limit,
            station,
        )
        if sig is None:
            return self.observe(login, parse_mac).encode()
        for finding, subject in found:  # a rule fired on an accepted login
            self._act(sig, finding, subject, login)
        return sig.encode()

    def replay(self, signals: Iterable[Signal]) -> int:
        """Rebuild history from stored signals, oldest first; returns how many.

        Findings raised again reach the sink marked ``replayed`` (the store
        keeps one open flag per rule, subject and bucket, so nothing doubles),
        and holds whose cool-down has not ended come back.
        """
        count = 0
        for sig in signals:
            self.apply(sig)
            count += 1
        return count

    def apply(self, sig: Signal, login: Login | None = None) -> list[Flag]:
        """Every rule over ``sig`` and the subject's history, then record ``sig``.

        ``login`` is the request behind a live signal (its personal values go
        into the evidence of a flag about the account); None on replay.

        Runs for every Access-Request: plain appends and lookups, no closures,
        each history pruned from its old end (amortised O(1)).
        """
        s = self.settings
        t = sig.time
        account = sig.account
        found: list[tuple[Finding, bytes]] = []
        if not sig.accepted and sig.reason in FAILURE_REASONS:
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
                names = self._spray_names.touch(
                    source, account, t, sp.names_window, sp.max_names + 1
                )
                day = self._spray_failures.open(source, self._new_day)
                before = len(day)
                day.append(t)
                while day[0] < t - sp.failures_window:
                    day.popleft()
                self._spray_failures.resized(before, len(day))
                if (f := rules.password_spray(names, len(day), sp)) is not None:
                    found.append((f, source))
        if sig.accepted:
            self._accepted(account, t, sig.fix, sig.mac, sig.mac_local, found, Found())
        if sig.over_limit or sig.reason == "simultaneous_use":
            f = rules.concurrent_sessions(sig.reason, s.concurrent_sessions, sig.over_limit)
            if f is not None:
                found.append((f, account))
        if not found:
            return []
        return [
            flag
            for finding, subject in found
            if (flag := self._act(sig, finding, subject, login)) is not None
        ]

    def _accepted(
        self,
        account: bytes,
        t: float,
        fix: Fix | None,
        mac: bytes | None,
        mac_local: bool,
        found: list[tuple[Finding, bytes]],
        known: Found,
    ) -> None:
        """The rules on an accepted login (``found`` gets their findings), then its record.

        ``known`` is where this login's state was found last time (the
        subscriber's record, or a fresh ``Found``): used while still current,
        it learns the state found this time.
        """
        s = self.settings
        habits = self._habits
        habit = known.habit
        if habit is None or known.habit_at != habits.forgotten:
            known.habit = habit = habits.take(account, t)
            known.habit_at = habits.forgotten
        seen = habit[SEEN]
        places = None
        if fix is not None:
            places = habits.places.get(account)
            # The country of the last login is never new: most logins skip the rule.
            if places is None or places.recent is None or places.recent != fix.country:
                recent = places.countries if places is not None else ()
                f = rules.new_country(
                    recent, int(seen), habit[FIRST], fix.country, t, s.new_country
                )
                if f is not None:
                    found.append((f, account))
            prev = places.travel_from(fix) if places is not None else None
            if prev is not None:
                f = rules.impossible_travel(prev, fix, s.impossible_travel)
                if f is not None:
                    found.append((f, account))
        slot = HOURS + int(t // 3600) % 24  # this login's UTC hour in the habit
        uh = s.unusual_hour
        # Only a login in a rare hour can be unusual: an account with a
        # habit seldom is, so the rule runs only when it may fire.
        if seen >= uh.min_history and habit[slot] <= uh.max_share * seen:
            f = rules.unusual_hour(hours_of(habit), slot - HOURS, uh, int(seen))
            if f is not None:
                found.append((f, account))
        habit[SEEN] = seen + 1
        habit[slot] += 1
        if fix is not None:
            if places is None and (fix.country or None not in (fix.latitude, fix.longitude)):
                places = habits.places[account] = Places()
            if places is not None:
                places.remember(fix, s.new_country.history)
        if mac is None:
            return
        if not mac_local:
            am = s.account_many_devices
            known.macs = mine = self._account_macs.touch_from(
                known.macs, account, mac, t, am.window, am.max_devices + 1
            )
            if len(mine[0]) > am.max_devices and (f := rules.account_many_devices(mine[0], am)):
                found.append((f, account))
        dm = s.device_many_accounts
        known.accounts = on_mac = self._mac_accounts.touch_from(
            known.accounts, mac, account, t, dm.window, dm.max_accounts + 1
        )
        if len(on_mac[0]) > dm.max_accounts and (f := rules.device_many_accounts(on_mac[0], dm)):
            found.append((f, mac))

    def _new_failures(self) -> deque[tuple[float, int | None]]:
        # The longer brute-force rule looks back this many failures: no more is kept.
        return deque(maxlen=self._fail_len)

    def _new_day(self) -> deque[float]:
        # One failure beyond the threshold is enough to fire "more than max_failures".
        return deque(maxlen=self.settings.password_spray.max_failures + 1)

    def _act(
        self, sig: Signal, finding: Finding, subject: bytes, login: Login | None
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
        if login is not None and kind == Subject.ACCOUNT:
            # Only a flag about an account carries its user name: it is sealed
            # under that subscriber's key and goes with their erasure. A source
            # or MAC flag is sealed under the epoch key and outlives any one
            # subscriber, so it keeps the rule's counts and the keyed subject.
            evidence["user_name"] = login.user_name
            if login.calling_station_id:
                evidence["calling_station_id"] = login.calling_station_id
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
            replayed=login is None,
        )
        self.flags_emitted += 1
        self._sink.submit(flag)
        return flag
