"""The suspicious-login rules and the detector, with fixed clocks and plain coordinates.

Each rule fires at its threshold and not one below; the detector keys its
state by keyed digests, holds subjects as configured, and rebuilds from the
signals it stores.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace

import pytest

from ispcare_radius.detect import rules
from ispcare_radius.detect.login import Flag, Login, Signal
from ispcare_radius.detect.rules import Fix, distance_km
from ispcare_radius.detect.settings import (
    AccountManyDevices,
    Action,
    BruteForce,
    ConcurrentSessions,
    DetectSettings,
    DeviceManyAccounts,
    ImpossibleTravel,
    Mode,
    NewCountry,
    PasswordSpray,
    Rule,
    Severity,
    UnusualHour,
    settings_from_toml,
)
from ispcare_radius.detect.state import Detector
from ispcare_radius.privacy.blind import normalize_mac

T0 = 1_900_000_000.0  # a fixed clock
DAY = 86400.0
LONDON = (51.5074, -0.1278)
CHANGCHUN = (43.8171, 125.3235)
# About 50 km north of London.
NEARBY = (51.5074 + 0.45, -0.1278)


# --- brute force --------------------------------------------------------------------


def _fails(
    count: int, *, every: float = 30.0, distinct: int = 10
) -> list[tuple[float, int | None]]:
    start = T0 - every * (count - 1)
    return [(start + i * every, i % distinct) for i in range(count)]


def test_brute_force_fires_at_ten_rejects_in_ten_minutes_not_nine() -> None:
    """Ten failures inside 600 s fire; nine do not."""
    s = BruteForce()
    assert rules.brute_force(_fails(9), T0, s) is None
    found = rules.brute_force(_fails(10), T0, s)
    assert found is not None and found.rule is Rule.BRUTE_FORCE
    assert found.evidence["failures"] == 10 and found.evidence["window_s"] == 600.0


def test_brute_force_short_window_edge() -> None:
    """Ten failures spread over exactly 600 s fire; over 601 s they do not (short rule)."""
    s = BruteForce()
    assert rules.brute_force(_fails(10, every=600 / 9), T0, s) is not None
    assert rules.brute_force(_fails(10, every=601 / 9), T0, s) is None


def test_brute_force_fires_at_thirty_in_twelve_hours_not_twenty_nine() -> None:
    """Slow guessing: 30 failures in 12 h fire, 29 do not."""
    s = BruteForce()
    every = 43200 / 29
    assert rules.brute_force(_fails(29, every=every), T0, s) is None
    found = rules.brute_force(_fails(30, every=every), T0, s)
    assert found is not None and found.evidence["window_s"] == 43200.0


def test_guessing_is_told_from_a_stale_password() -> None:
    """Three distinct wrong passwords are guessing (high); one retried is a stale CPE (low)."""
    s = BruteForce()
    guessing = rules.brute_force(_fails(10, distinct=3), T0, s)
    assert guessing is not None and guessing.severity is Severity.HIGH
    assert guessing.evidence["kind"] == "guessing"
    two = rules.brute_force(_fails(10, distinct=2), T0, s)
    assert two is not None and two.severity is Severity.LOW
    stale = rules.brute_force(_fails(10, distinct=1), T0, s)
    assert stale is not None and stale.severity is Severity.LOW
    assert stale.evidence["kind"] == "stale_credential"
    unknown = rules.brute_force([(t, None) for t, _ in _fails(10)], T0, s)
    assert unknown is not None and unknown.severity is Severity.MEDIUM


# --- password spray -----------------------------------------------------------------


def test_spray_fires_above_fifteen_names_in_five_minutes() -> None:
    """Sixteen user names from one source fire; fifteen do not."""
    s = PasswordSpray()
    assert rules.password_spray(set(range(15)), 15, s) is None
    found = rules.password_spray(set(range(16)), 16, s)
    assert found is not None and found.evidence["user_names"] == 16


def test_spray_fires_above_a_hundred_failures_a_day() -> None:
    """101 failures in a day fire; 100 do not."""
    s = PasswordSpray()
    assert rules.password_spray({1}, 100, s) is None
    assert rules.password_spray({1}, 101, s) is not None


def test_spray_day_window_forgets_old_failures() -> None:
    """Through the detector: 100 failures a day old plus 100 fresh ones from one source
    and one user name do not fire; a 101st fresh one does."""
    det, sink = _detector()
    for i in range(100):
        det.observe(_login(T0 - DAY - 100 + i, "u", calling="10.0.0.1", sid=None))
    sink.flags.clear()
    for i in range(100):
        det.observe(_login(T0 + i * 60, f"n{i % 3}", calling="10.0.0.1", sid=None,
                           reason="unknown_user"))  # fmt: skip
    assert [f for f in sink.flags if f.rule is Rule.PASSWORD_SPRAY] == []
    det.observe(_login(T0 + 100 * 60, "n0", calling="10.0.0.1", sid=None, reason="unknown_user"))
    assert [f.rule for f in sink.flags if f.rule is Rule.PASSWORD_SPRAY] == [Rule.PASSWORD_SPRAY]


# --- new country ----------------------------------------------------------------------


def test_new_country_after_the_quiet_period() -> None:
    """A new country fires once 10 logins and 14 days are seen; not at 9, not a second early."""
    s = NewCountry()
    first = T0 - 14 * DAY
    assert rules.new_country(["GB"] * 9, 9, first, "CN", T0, s) is None
    assert rules.new_country(["GB"] * 10, 10, first + 1, "CN", T0, s) is None
    found = rules.new_country(["GB"] * 10, 10, first, "CN", T0, s)
    assert found is not None and found.evidence["country"] == "CN"
    assert rules.new_country(["GB"] * 10, 10, first, "GB", T0, s) is None


def test_new_country_looks_at_the_last_twenty_logins_only() -> None:
    """A country last seen 21 logins ago is new again."""
    s = NewCountry()
    history = ["CN"] + ["GB"] * 20
    assert rules.new_country(history, 21, T0 - 30 * DAY, "CN", T0, s) is not None
    assert rules.new_country([*history[1:], "CN"], 21, T0 - 30 * DAY, "CN", T0, s) is None


# --- impossible travel ------------------------------------------------------------------


def _fix(t: float, where: tuple[float, float], country: str, acc: float | None = None) -> Fix:
    return Fix(t, country, where[0], where[1], acc)


def test_london_then_changchun_thirty_minutes_later_is_impossible() -> None:
    """About 8,000 km in half an hour fires."""
    found = rules.impossible_travel(
        _fix(T0, LONDON, "GB"), _fix(T0 + 1800, CHANGCHUN, "CN"), ImpossibleTravel()
    )
    assert found is not None and found.severity is Severity.HIGH
    assert 7900 < found.evidence["distance_km"] < 8300


def test_london_then_a_town_fifty_km_away_three_hours_later_is_nothing() -> None:
    """A short trip at a normal speed raises nothing."""
    assert 49 < distance_km(*LONDON, *NEARBY) < 51
    assert (
        rules.impossible_travel(
            _fix(T0, LONDON, "GB"), _fix(T0 + 3 * 3600, NEARBY, "GB"), ImpossibleTravel()
        )
        is None
    )


def test_travel_speed_and_distance_thresholds() -> None:
    """Just above 805 km/h fires, just below does not; under 500 km never fires."""
    s = ImpossibleTravel()
    far = (LONDON[0], LONDON[1] + 20.0)  # about 1,380 km east
    d = distance_km(*LONDON, *far)
    at_limit = d / 805.0 * 3600
    start = _fix(T0, LONDON, "GB")
    assert rules.impossible_travel(start, _fix(T0 + at_limit * 0.99, far, "XX"), s) is not None
    assert rules.impossible_travel(start, _fix(T0 + at_limit * 1.01, far, "XX"), s) is None
    near = (LONDON[0], LONDON[1] + 7.0)  # about 485 km: instantly, still nothing
    assert distance_km(*LONDON, *near) < 500
    assert rules.impossible_travel(start, _fix(T0, near, "XX"), s) is None


def test_travel_allows_for_the_accuracy_radii() -> None:
    """Both radii come off the distance: 700 km apart with 100 km radii is 500 km (fires
    when instant), with 101 km radii it is below 500 km (nothing)."""
    s = ImpossibleTravel()
    other = (LONDON[0], LONDON[1] + 10.1)
    d = distance_km(*LONDON, *other)
    half = (d - 500.0) / 2
    fires = rules.impossible_travel(
        _fix(T0, LONDON, "GB", half - 0.5), _fix(T0 + 60, other, "XX", half - 0.5), s
    )
    assert fires is not None
    assert (
        rules.impossible_travel(
            _fix(T0, LONDON, "GB", half + 0.5), _fix(T0 + 60, other, "XX", half + 0.5), s
        )
        is None
    )


# --- devices, hours, sessions ----------------------------------------------------------


def test_device_on_many_accounts_fires_at_four() -> None:
    s = DeviceManyAccounts()
    assert rules.device_many_accounts({1, 2, 3}, s) is None
    assert rules.device_many_accounts({1, 2, 3, 4}, s) is not None


def test_account_on_many_devices_fires_at_six() -> None:
    s = AccountManyDevices()
    assert rules.account_many_devices(set(range(5)), s) is None
    assert rules.account_many_devices(set(range(6)), s) is not None


def test_unusual_hour_scores_below_two_percent() -> None:
    """Once 20 logins are known, an hour with under 2 % of them scores; never above low."""
    s = UnusualHour()
    hours = [0] * 24
    hours[9] = 19
    assert rules.unusual_hour(hours, 3, s) is None  # 19 logins: no habit yet
    hours[9] = 20
    found = rules.unusual_hour(hours, 3, s)
    assert found is not None and found.severity is Severity.LOW and found.score == 1.0
    hours[3] = 1  # 1 of 21 is 4.8 %: usual enough
    assert rules.unusual_hour(hours, 3, s) is None


def test_unusual_hour_cannot_be_configured_to_block() -> None:
    with pytest.raises(ValueError, match="score only"):
        settings_from_toml({"mode": "enforce", "unusual_hour": {"actions": {"low": "reject"}}})


def test_concurrent_sessions_fires_on_the_simultaneous_use_outcome() -> None:
    s = ConcurrentSessions()
    assert rules.concurrent_sessions("accept", s) is None
    assert rules.concurrent_sessions("simultaneous_use", s) is not None
    assert rules.concurrent_sessions("accept", s, displaced=True) is not None


# --- the detector ------------------------------------------------------------------------


KEY = bytes(range(32))


def keyer(domain: str, value: bytes) -> bytes:
    return hmac.digest(KEY, domain.encode() + b"\x00" + value, hashlib.sha256)


class Sink:
    def __init__(self) -> None:
        self.flags: list[Flag] = []

    def submit(self, flag: Flag) -> None:
        self.flags.append(flag)


def _detector(mode: Mode = Mode.ENFORCE, **changes: object) -> tuple[Detector, Sink]:
    sink = Sink()
    settings = replace(DetectSettings(mode=mode), **changes)  # type: ignore[arg-type]
    return Detector(settings, keyer, sink), sink


def _login(
    t: float,
    user: str = "alice",
    *,
    ok: bool = False,
    calling: str | None = "02-00-00-00-00-01",
    mac: bytes | None = None,
    password: bytes | None = None,
    sid: int | None = 7,
    reason: str | None = None,
) -> Login:
    return Login(
        time=t,
        subscriber_id=sid,
        accepted=ok,
        reason=reason or ("accept" if ok else "bad_password"),
        user_name=user,
        calling_station_id=calling,
        mac=mac,
        password=password,
    )


def test_ten_wrong_passwords_hold_the_account_for_the_cooldown() -> None:
    """Enforce mode: the tenth failure flags brute force and rejects the account until the
    cool-down ends; other accounts are not held."""
    det, sink = _detector()
    for i in range(9):
        det.observe(_login(T0 + i, password=b"guess-%d" % i))
    assert det.hold("alice", None, None, T0 + 9) is None
    det.observe(_login(T0 + 9, password=b"guess-9"))
    assert [f.rule for f in sink.flags] == [Rule.BRUTE_FORCE]
    flag = sink.flags[0]
    assert flag.action is Action.REJECT and flag.severity is Severity.HIGH
    assert flag.evidence["user_name"] == "alice" and flag.subscriber_id == 7
    assert det.hold("ALICE", None, None, T0 + 10) is Action.REJECT  # same account, any case
    assert det.hold("bob", None, None, T0 + 10) is None
    assert det.hold("alice", None, None, T0 + 9 + 15 * 60) is None


def test_monitor_mode_flags_without_holding() -> None:
    """Monitor mode turns reject into flag: nothing is held."""
    det, sink = _detector(Mode.MONITOR)
    for i in range(10):
        det.observe(_login(T0 + i, password=b"guess-%d" % i))
    assert sink.flags[0].action is Action.FLAG
    assert det.hold("alice", None, None, T0 + 10) is None


def test_one_flag_per_rule_subject_and_bucket() -> None:
    """Failures after the threshold extend the hold but raise no second flag in the bucket."""
    det, sink = _detector()
    for i in range(15):
        det.observe(_login(T0 + i, password=b"x%d" % i))
    assert len(sink.flags) == 1


def _spray(det: Detector, source: str, names: int, t: float = T0) -> None:
    for i in range(names):
        det.observe(_login(t + i, f"user{i}", calling=source, sid=None, reason="unknown_user"))


def test_spray_flags_the_source_and_holds_nothing_by_default() -> None:
    """Twenty user names failing from one Calling-Station-Id: a spray flag on that source,
    raised at the sixteenth name; by default (even in enforce mode) nothing is held,
    since a source may stand for many subscribers."""
    det, sink = _detector()
    _spray(det, "02-00-00-00-0A-01", 15)
    assert [f for f in sink.flags if f.rule is Rule.PASSWORD_SPRAY] == []
    _spray(det, "02-00-00-00-0A-01", 20)
    spray = [f for f in sink.flags if f.rule is Rule.PASSWORD_SPRAY]
    assert len(spray) == 1 and spray[0].subject_kind == "source"
    assert spray[0].evidence["user_names"] == 16  # fired at the sixteenth
    assert spray[0].action is Action.FLAG
    assert det.hold("someone", "02-00-00-00-0A-01", None, T0 + 30) is None


def test_a_spray_reject_configured_holds_that_source_only() -> None:
    """An operator who configures reject for spray holds the source, not its neighbours."""
    s = settings_from_toml({"mode": "enforce", "password_spray": {"actions": {"high": "reject"}}})
    sink = Sink()
    det = Detector(s, keyer, sink)
    _spray(det, "02-00-00-00-0A-01", 20)
    assert det.hold("someone", "02-00-00-00-0A-01", None, T0 + 30) is Action.REJECT
    assert det.hold("someone", "02-00-00-00-0A-02", None, T0 + 30) is None


def test_source_and_mac_flags_carry_no_user_name() -> None:
    """Spray and device flags (sealed under the epoch key, outliving any subscriber) keep
    counts only; the brute-force flag about the account keeps its user name."""
    det, sink = _detector()
    _spray(det, "02-00-00-00-0A-01", 16)
    mac = bytes.fromhex("001122334455")
    for i in range(4):
        det.observe(_login(T0 + 100 + i, f"shared{i}", ok=True, mac=mac))
    for i in range(10):
        det.observe(_login(T0 + 200 + i, "victim", password=b"g%d" % i))
    by_rule = {f.rule: f for f in sink.flags}
    assert set(by_rule) == {Rule.PASSWORD_SPRAY, Rule.DEVICE_MANY_ACCOUNTS, Rule.BRUTE_FORCE}
    for rule in (Rule.PASSWORD_SPRAY, Rule.DEVICE_MANY_ACCOUNTS):
        text = repr(by_rule[rule].evidence)
        assert "user1" not in text and "shared" not in text and "02-00" not in text, text
        assert {"user_name", "calling_station_id"}.isdisjoint(by_rule[rule].evidence)
    assert by_rule[Rule.BRUTE_FORCE].evidence["user_name"] == "victim"


def test_chap_brute_force_is_flagged_not_held_by_default() -> None:
    """Ten failures without password digests (CHAP, MS-CHAP) are medium: flagged, no hold,
    so a CPE retrying one stale password is not locked out after every cool-down."""
    det, sink = _detector()
    for i in range(10):
        det.observe(_login(T0 + i, "cpe"))
    assert [(f.rule, f.severity, f.action) for f in sink.flags] == [
        (Rule.BRUTE_FORCE, Severity.MEDIUM, Action.FLAG)
    ]
    assert det.hold("cpe", None, None, T0 + 11) is None


def test_one_mac_on_four_accounts_and_randomised_macs_ignored() -> None:
    """A MAC on a fourth account flags; six randomised MACs on one account do not."""
    det, sink = _detector()
    mac = bytes.fromhex("001122334455")
    for i in range(4):
        det.observe(_login(T0 + i, f"user{i}", ok=True, mac=mac))
    assert [f.rule for f in sink.flags] == [Rule.DEVICE_MANY_ACCOUNTS]
    assert sink.flags[0].subject_kind == "mac"
    sink.flags.clear()
    for i in range(6):
        det.observe(_login(T0 + 10 + i, "carol", ok=True, mac=bytes([0x02, 0, 0, 0, 0, i])))
    assert sink.flags == []
    for i in range(6):
        det.observe(_login(T0 + 20 + i, "dave", ok=True, mac=bytes([0x00, 0x1B, 0, 0, 0, i])))
    assert [f.rule for f in sink.flags] == [Rule.ACCOUNT_MANY_DEVICES]


def test_state_is_keyed_by_digests_and_bounded() -> None:
    """No user name in any map key or stored signal; the LRU holds max_subjects."""
    det, _ = _detector(max_subjects=3)
    for i in range(10):
        det.observe(_login(T0 + i, f"name-{i}-secret"))
    failures = det._failures
    assert len(failures) == 3
    assert all(isinstance(k, bytes) and len(k) == 8 for k in failures)
    text = det.observe(_login(T0 + 20, "name-0-secret", password=b"pw-secret")).encode()
    assert "secret" not in text and "02-00" not in text


def test_a_subject_forgotten_by_the_budget_is_still_judged_on_this_login() -> None:
    """With the smallest entry budget the settings allow, settling the budget
    may forget the very source just recorded: its rules still judge the login
    that recorded it (spray fires, brute force holds), nothing raises."""
    settings = replace(
        DetectSettings(mode=Mode.ENFORCE),
        brute_force=BruteForce(short_count=1, long_count=1),
        password_spray=PasswordSpray(max_names=2, max_failures=1),
        device_many_accounts=DeviceManyAccounts(max_accounts=1),
        account_many_devices=AccountManyDevices(max_devices=1),
        max_subjects=1,
    )
    settings = replace(settings, max_entries=settings.largest_list())
    sink = Sink()
    det = Detector(settings, keyer, sink)
    for i, user in enumerate(("a", "b")):
        det.observe(_login(T0 + i, user, calling="10.0.0.1", password=b"pw", sid=7 + i))
    assert [f.rule for f in sink.flags] == [
        Rule.BRUTE_FORCE,
        Rule.BRUTE_FORCE,
        Rule.PASSWORD_SPRAY,
    ]
    assert det.entries <= settings.max_entries


def _parse_mac(station: bytes) -> bytes | None:
    return normalize_mac(station.decode("ascii"))


def test_remembered_subscriber_keys_are_the_keys_a_fresh_detector_gives() -> None:
    """The per-subscriber key memo changes nothing: every login's signal equals the
    signal of a detector that never saw a login, whatever the name, MAC or
    subscriber id that come with it; the memo is bounded and holds no name."""
    det, _ = _detector(max_subjects=4)
    macs = (None, bytes.fromhex("001b00000001"), bytes.fromhex("021b00000002"))
    logins = [
        _login(T0 + i, user, ok=ok, mac=mac, sid=sid, password=b"pw")
        for i, (user, mac, sid, ok) in enumerate(
            (user, mac, sid, ok)
            for user in ("alice", "Alice", "bob", "name-secret")
            for mac in macs
            for sid in (7, 8)
            for ok in (True, False)
        )
    ]
    for login in logins + logins[::-1]:
        fresh, _ = _detector()
        assert det.signal(login).encode() == fresh.signal(login).encode()
        # The same login with the MAC as the NAS wrote it, parsed only when not remembered.
        station = None if login.mac is None else login.mac.hex("-").upper().encode()
        raw = replace(login, mac=None, station=station)
        assert det.signal(raw, _parse_mac).encode() == fresh.signal(login).encode()
    assert len(det._known) <= 4
    held = repr(det._known)
    assert "secret" not in held and "alice" not in held.lower()


def test_see_is_observe_without_the_login_object() -> None:
    """``see`` (the pipeline's entry, with its shortcut for accepted logins of
    known subscribers) and ``observe`` leave the same signal text, raise the
    same flags with the same evidence, and hold the same subjects, on logins
    that take the shortcut and logins that do not, flags fired on either."""
    settings = replace(
        DetectSettings(mode=Mode.ENFORCE),
        device_many_accounts=DeviceManyAccounts(max_accounts=2),
        account_many_devices=AccountManyDevices(max_devices=2),
        unusual_hour=UnusualHour(min_history=3),
        new_country=NewCountry(quiet_logins=2, quiet_days=1.0),
    )
    by_observe, by_see = Sink(), Sink()
    old, new = Detector(settings, keyer, by_observe), Detector(settings, keyer, by_see)
    places = (
        Fix(0.0, "GB", *LONDON, 10.0),
        Fix(0.0, "CN", *CHANGCHUN, None),
        Fix(0.0, "GB", None, None),
    )
    stations = (b"00-1B-00-00-00-01", b"00-1B-00-00-00-02", b"00-1B-00-00-00-03", b"x", None)
    rows = []
    for i in range(400):
        user = ("alice", "bob", "Carol", "dave")[i % 4 if i < 200 else i % 3]
        station = stations[(i // 5) % len(stations) if i < 300 else i % 2]
        ok = i % 7 != 3
        place = places[i % 3] if i % 11 < 4 else None
        reason = "accept" if ok else ("bad_password", "unknown_user", "simultaneous_use")[i % 3]
        t = T0 + i * 1800.0
        sid = None if user == "dave" and not ok else 7 + i % 4
        rows.append((t, sid, ok, reason, user, station, b"pw%d" % (i % 5), place, i % 13 == 0))
    end = rows[-1][0]
    rows += [
        (end + i, 8, False, "bad_password", "bob", None, b"g%d" % i, None, False) for i in range(12)
    ]
    for t, sid, ok, reason, user, station, password, place, over in rows:
        source = station.decode() if station else None
        login = Login(t, sid, ok, reason, user, source, None, password, place, over, station)
        expected = old.observe(login, _parse_mac).encode()
        got = new.see(t, sid, ok, reason, user, source, password, place, over, station, _parse_mac)
        assert got == expected
        for who in ("alice", "bob", "carol", "dave"):
            mac = _parse_mac(station) if station else None
            assert new.hold(who, source, mac, t + 1) == old.hold(who, source, mac, t + 1)
    assert by_see.flags == by_observe.flags
    rules_fired = {f.rule for f in by_see.flags}
    assert {Rule.DEVICE_MANY_ACCOUNTS, Rule.ACCOUNT_MANY_DEVICES, Rule.BRUTE_FORCE} <= rules_fired
    assert {Rule.CONCURRENT_SESSIONS, Rule.NEW_COUNTRY, Rule.IMPOSSIBLE_TRAVEL} <= rules_fired
    assert new.entries == old.entries and new.holds == old.holds


def _stored(det: Detector) -> int:
    """Entries actually held in the detector's per-subject lists, counted one by one."""
    lists = (det._failures, det._spray_names, det._spray_failures, det._account_macs,
             det._mac_accounts)  # fmt: skip
    return sum(len(v) for m in lists for v in m.values())


def test_many_sources_with_many_names_stay_within_the_entry_budget() -> None:
    """A flood of forged sources, each failing with many user names, and of forged MACs
    on many accounts: each list keeps at most its threshold plus one, all lists together
    at most max_entries, and the rules still fire on the newest subjects."""
    budget = 2000
    det, sink = _detector(max_entries=budget, max_subjects=50_000)
    s = det.settings
    t = T0
    for src in range(300):
        for n in range(40):
            t += 0.001
            det.observe(_login(t, f"u{n}", calling=f"10.1.{src // 250}.{src % 250}", sid=None))
        assert det.entries <= budget
        assert _stored(det) == det.entries
    assert all(len(v) <= s.password_spray.max_names + 1 for v in det._spray_names.values())
    assert all(len(v) <= s.password_spray.max_failures + 1 for v in det._spray_failures.values())
    assert all(len(v) <= s.brute_force.long_count for v in det._failures.values())
    for acct in range(200):
        for m in range(10):
            t += 0.001
            mac = bytes([0x00, 0x1B, 0, 0, acct, m])
            det.observe(_login(t, f"a{acct}", ok=True, mac=mac))
        assert det.entries <= budget and _stored(det) == det.entries
    assert all(len(v) <= s.account_many_devices.max_devices + 1 for v in det._account_macs.values())
    assert all(
        len(v) <= s.device_many_accounts.max_accounts + 1 for v in det._mac_accounts.values()
    )
    # Every source crossed the spray threshold once, however full the budget was.
    spray = [f for f in sink.flags if f.rule is Rule.PASSWORD_SPRAY]
    assert len({f.subject for f in spray}) == 300
    assert {f.rule for f in sink.flags} >= {Rule.ACCOUNT_MANY_DEVICES}
    with pytest.raises(ValueError, match="max_entries"):
        DetectSettings(max_entries=100)  # below one spray source's failure list (101)


def test_replay_of_stored_signals_restores_history_and_holds() -> None:
    """Signals written as JSON and read back rebuild the state of a fresh detector."""
    det, _ = _detector()
    stored = []
    for i in range(10):
        sig = det.observe(_login(T0 + i, password=b"p%d" % i))
        stored.append((sig.encode(), sig))
    fresh, sink = _detector()
    signals = [
        Signal.decode(
            row, time=s.time, subscriber_id=s.subscriber_id, accepted=False, reason=s.reason
        )
        for row, s in stored
    ]
    assert fresh.replay(s for s in signals if s is not None) == 10
    assert fresh.hold("alice", None, None, T0 + 11) is Action.REJECT
    assert [f.replayed for f in sink.flags] == [True]
    assert sink.flags[0].evidence.get("user_name") is None  # no personal value replayed
    assert (
        Signal.decode("not json", time=T0, subscriber_id=None, accepted=False, reason="x") is None
    )


def test_impossible_travel_through_the_detector() -> None:
    """London, then Changchun 30 minutes later, both accepted: impossible travel flagged."""
    det, sink = _detector()

    class Where:
        def __init__(self, lat: float, lon: float, country: str) -> None:
            self.latitude, self.longitude, self.country = lat, lon, country
            self.accuracy_km: float | None = 20.0

    det.observe(replace(_login(T0, ok=True), place=Where(*LONDON, "GB")))
    det.observe(replace(_login(T0 + 1800, ok=True), place=Where(*CHANGCHUN, "CN")))
    assert [f.rule for f in sink.flags] == [Rule.IMPOSSIBLE_TRAVEL]
    assert sink.flags[0].action is Action.NOTIFY


def test_settings_from_toml() -> None:
    """Rule tables override thresholds and actions; unknown keys and bad values are refused."""
    s = settings_from_toml(
        {
            "mode": "enforce",
            "cooldown_minutes": 5,
            "brute_force": {"short_count": 4, "actions": {"high": "walled_garden"}},
        }
    )
    assert s.mode is Mode.ENFORCE and s.cooldown == 300.0
    assert s.brute_force.short_count == 4
    assert s.action(Rule.BRUTE_FORCE, Severity.HIGH) is Action.WALLED_GARDEN
    assert replace(s, mode=Mode.MONITOR).action(Rule.BRUTE_FORCE, Severity.HIGH) is Action.FLAG
    bads: list[dict[str, object]] = [
        {"mode": "block"},
        {"brute_force": {"short_count": 0}},
        {"brute_force": {"short_count": 2.5}},
        {"brute_force": {"nope": 1}},
        {"brute_force": {"actions": {"high": "ban"}}},
        {"no_such_rule": {}},
        {"cooldown_minutes": True},
    ]
    for bad in bads:
        with pytest.raises(ValueError):
            settings_from_toml(bad)
