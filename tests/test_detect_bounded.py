"""The detector's bounded maps: what the second-chance maps forget, and when."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from ispcare_radius.detect.bounded import Budget, Seen, Turns
from ispcare_radius.detect.habit import SEEN
from ispcare_radius.detect.location import Location
from ispcare_radius.detect.login import Login
from ispcare_radius.detect.settings import (
    AccountManyDevices,
    BruteForce,
    DetectSettings,
    DeviceManyAccounts,
    Mode,
    NewCountry,
    PasswordSpray,
)
from ispcare_radius.detect.state import Detector
from tests.test_detect_rules import T0, Sink, _detector, _parse_mac, keyer

WINDOW = 3600.0
A, B, C = b"subjectA", b"subjectB", b"subjectC"
K1, K2 = b"key....1", b"key....2"


def _seen(limit: int) -> Seen:
    return Seen(limit, Budget(1_000_000))


def test_a_subject_seen_since_it_was_placed_outlives_one_that_was_not() -> None:
    """Limit 2: A and B, then A again; a new subject C makes room by forgetting
    B (not seen for a whole turn), as an LRU would."""
    seen = _seen(2)
    seen.touch(A, K1, T0, WINDOW, 5)
    seen.touch(B, K1, T0 + 1, WINDOW, 5)
    seen.touch(A, K1, T0 + 2, WINDOW, 5)
    seen.touch(C, K1, T0 + 3, WINDOW, 5)
    assert set(seen) == {A, C}
    assert seen.entries == 2


def test_a_new_subject_has_its_turn() -> None:
    """Limit 1: the subject just recorded stays, the older one goes, even though
    the older one was seen since it was placed."""
    seen = _seen(1)
    seen.touch(A, K1, T0, WINDOW, 5)
    seen.touch(A, K2, T0 + 1, WINDOW, 5)
    seen.touch(B, K1, T0 + 2, WINDOW, 5)
    assert list(seen) == [B]
    assert seen.entries == 1


def test_a_subject_seen_every_turn_survives_a_flood_of_new_ones() -> None:
    """A MAC seen again between forged ones is never forgotten; the map stays
    at its limit, and a subject not seen again is forgotten within a turn."""
    seen = _seen(4)
    seen.touch(b"kept....", K1, T0, WINDOW, 5)
    seen.touch(b"once....", K1, T0, WINDOW, 5)
    for i in range(200):
        seen.touch(b"forged%02x" % i, K1, T0 + 1 + i, WINDOW, 5)
        seen.touch(b"kept....", K1, T0 + 1 + i, WINDOW, 5)
        assert len(seen) <= 4 and len(seen._turns) == len(seen)
        assert b"kept...." in seen
    assert b"once...." not in seen
    assert seen.entries == len(seen)


def _accept(t: float, user: str, sid: int) -> Login:
    return Login(
        time=t,
        subscriber_id=sid,
        accepted=True,
        reason="accept",
        user_name=user,
        calling_station_id=None,
        mac=None,
    )


def test_a_habit_counting_logins_survives_new_accounts_past_the_limit() -> None:
    """max_subjects 3: an account logging in between 50 new accounts keeps its
    habit (every login counted); the habits stay at the limit."""
    det, _ = _detector(max_subjects=3)
    for i in range(50):
        det.observe(_accept(T0 + 2 * i, f"new-{i}", 100 + i))
        det.observe(_accept(T0 + 2 * i + 1, "regular", 7))
        assert len(det._habits) <= 3
    account = det.signal(_accept(T0 + 200, "regular", 7)).account
    assert det._habits[account][SEEN] == 50
    first = det.signal(_accept(T0, "new-0", 100)).account
    assert first not in det._habits


def test_turns_keep_their_order_across_growth_and_wrap_around() -> None:
    """A FIFO of (key, stamp): order kept while it wraps and doubles; keys of
    another width refused; popping an empty queue raises."""
    turns = Turns(8)
    expected: list[tuple[bytes, float]] = []
    for i in range(1000):
        item = (b"%08d" % i, float(i))
        turns.push(*item)
        expected.append(item)
        if i % 3 == 0:  # take some off the front, so the buffer wraps before it grows
            assert turns.pop() == expected.pop(0)
        assert len(turns) == len(expected)
    while expected:
        assert turns.pop() == expected.pop(0)
    with pytest.raises(IndexError):
        turns.pop()
    with pytest.raises(ValueError):
        turns.push(b"short", 1.0)


def _state(det: Detector) -> tuple[object, ...]:
    places = {
        k: (list(p.countries), p.recent, p.repeats, p.time, p.country, p.latitude, p.longitude)
        for k, p in det._habits.places.items()
    }
    radii = {k: p.accuracy_km for k, p in det._habits.places.items()}
    return (
        {k: list(v) for k, v in det._habits.items()},
        places,
        radii,
        dict(det._mac_accounts.items()),
        dict(det._account_macs.items()),
        det.entries,
    )


@pytest.mark.parametrize("limit", [2, 3, 5])
@pytest.mark.parametrize("tight_budget", [False, True])
def test_state_a_remembered_subscriber_found_is_the_state_in_the_maps(
    limit: int, tight_budget: bool
) -> None:
    """``see`` reuses the habit and MAC maps its subscriber record found last
    time; with maps so small that they forget all the time (records outliving
    what they found), and with the smallest entry budget (a touch may forget
    its own subject), every login leaves the detector exactly as ``observe``
    (which never reuses anything) leaves it."""
    settings = DetectSettings(
        mode=Mode.ENFORCE,
        max_subjects=limit,
        brute_force=BruteForce(short_count=2, long_count=3),
        password_spray=PasswordSpray(max_names=2, max_failures=2),
        device_many_accounts=DeviceManyAccounts(max_accounts=limit + 2),
        account_many_devices=AccountManyDevices(max_devices=limit + 2),
    )
    if tight_budget:
        settings = replace(settings, max_entries=settings.largest_list())
    by_see, by_observe = Detector(settings, keyer, Sink()), Detector(settings, keyer, Sink())
    rnd = random.Random(limit)
    for i in range(3000):
        user = f"user-{rnd.randrange(limit + 3)}"
        sid = 100 + int(user[5:])
        station = b"00-1B-00-00-00-%02X" % rnd.randrange(2 * limit + 2)
        ok = rnd.random() < 0.8
        reason = "accept" if ok else "bad_password"
        t = T0 + i * 60.0
        login = Login(t, sid, ok, reason, user, None, None, b"pw", None, False, station)
        expected = by_observe.observe(login, _parse_mac).encode()
        got = by_see.see(t, sid, ok, reason, user, None, b"pw", None, False, station, _parse_mac)
        assert got == expected
        assert _state(by_see) == _state(by_observe), i


# Places as the pipeline passes them: a NAS's one place object, shared by its
# logins (``Locator``), and GeoIP answers, a new object for each login.
_LONDON_NAS = Location("GB", "London", 51.5, -0.12, None, "nas")
_LEEDS_NAS = Location("GB", "Leeds", 53.8, -1.55, None, "nas")
_PARIS_NAS = Location("FR", "Paris", 48.86, 2.35, None, "nas")
_COUNTRY_ONLY = Location("DE", None, None, None, None, "nas")
_NO_COUNTRY = Location(None, None, 40.0, -3.7, None, "nas")
# Oddities: another country at the home NAS's coordinates, the same latitude
# or longitude elsewhere, and a radius no sane database gives (settled places never skip
# what the rules would make of it).
_IE_ONLY = Location("IE", None, None, None, None, "nas")
_IE_AT_HOME = Location("IE", None, 51.5, -0.12, None, "nas")
_READING_NAS = Location("GB", "Reading", 51.5, -0.97, None, "nas")
_CAMBRIDGE_NAS = Location("GB", "Cambridge", 52.2, -0.12, None, "nas")
_NEGATIVE = Location("GB", "London", 51.5, -0.12, -600.0, "geoip")


_ELSEWHERE = (_LEEDS_NAS, _PARIS_NAS, _COUNTRY_ONLY, _NO_COUNTRY, _IE_ONLY, _IE_AT_HOME)
_ELSEWHERE += (_READING_NAS, _CAMBRIDGE_NAS, _NEGATIVE, None)


class _Stays:
    """Each user's logins: mostly through the home NAS, with stays elsewhere of
    one to four logins, and GeoIP answers now and then."""

    def __init__(self, rnd: random.Random) -> None:
        self._rnd = rnd
        self._stay: dict[str, tuple[Location | None, int]] = {}

    def place(self, user: str) -> Location | None:
        rnd = self._rnd
        if rnd.random() < 0.1:  # GeoIP: a new object each time
            return Location("GB", "London", 51.5, -0.12, rnd.choice([None, 10.0]), "geoip")
        where, left = self._stay.get(user, (_LONDON_NAS, 0))
        if left == 0:
            where = _LONDON_NAS if rnd.random() < 0.5 else rnd.choice(_ELSEWHERE)
            left = rnd.randint(1, 4)
        self._stay[user] = (where, left - 1)
        return where


@pytest.mark.parametrize("limit", [2, 5, 100])
def test_state_a_login_from_the_last_place_skips_the_rules_as_observe_would(limit: int) -> None:
    """``see`` skips the location rules for a login from the place where the
    account's last logins were (``Places.settled``, then ``Places.stay``), and
    reuses its stored text for the same place object. With NAS places shared,
    GeoIP places made anew, places without coordinates or country, countries
    changing and maps that forget, every login leaves the detector and its
    stored text exactly as ``observe`` does."""
    settings = DetectSettings(
        mode=Mode.ENFORCE,
        max_subjects=limit,
        device_many_accounts=DeviceManyAccounts(max_accounts=limit + 2),
        account_many_devices=AccountManyDevices(max_devices=limit + 2),
        new_country=NewCountry(history=3, quiet_logins=2, quiet_days=0.1),
    )
    by_see, by_observe = Detector(settings, keyer, Sink()), Detector(settings, keyer, Sink())
    rnd = random.Random(limit)
    stays = _Stays(rnd)
    for i in range(4000):
        user = f"user-{rnd.randrange(limit + 3)}"
        sid = 100 + int(user[5:])
        station = b"00-1B-00-00-00-%02X" % rnd.randrange(limit + 2)
        place = stays.place(user)
        t = T0 + i * 600.0  # hours apart: a country change may be travel
        login = Login(t, sid, True, "accept", user, None, None, b"pw", place, False, station)
        expected = by_observe.observe(login, _parse_mac).encode()
        got = by_see.see(
            t, sid, True, "accept", user, None, b"pw", place, False, station, _parse_mac
        )
        assert got == expected, i
        assert _state(by_see) == _state(by_observe), i
    assert by_see.flags_emitted == by_observe.flags_emitted > 0
