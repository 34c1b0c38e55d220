"""Anonymised statistics: generalisation, suppression, caps, the release validator,
and a scripted day of traffic released through the real accounting path and
PostgreSQL, searched for every personal value and identifier it must not hold.
"""

from __future__ import annotations

import argparse
import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispcare_radius.aaa.accounting import AccountingHandler, AcctStatus
from ispcare_radius.aaa.model import AuthEvent, AuthResult, Nas
from ispcare_radius.aaa.request import Request
from ispcare_radius.cli.config import ConfigError, load_config
from ispcare_radius.cli.stats import period_to_release, show_lines, stats_command
from ispcare_radius.privacy.anon import (
    OTHER,
    RELEASED_DIMENSIONS,
    Caps,
    Categories,
    Cell,
    Dimension,
    Period,
    StatsSettings,
    Usage,
    cap_usage,
    cell_rows,
    generalise,
    rollup,
    totals,
)
from ispcare_radius.privacy.anon_check import Problem, check_release, check_text
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.authenticator import build_request
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import encode_attributes, parse
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.applier import SessionApplier
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.events import AuthEventWriter
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.sessions import SessionTracker
from ispcare_radius.store.stats import GranularityConflict, ReleaseRefused, release, released
from ispcare_radius.store.subscribers import SubscriberRepository

K = 10
CAPS = Caps(sessions=1000, bytes=10**12, seconds=10**6)
HOUR = datetime(2030, 5, 6, 10, tzinfo=UTC)


def use(
    sid: int,
    *,
    country: str | None = "GB",
    city: str | None = None,
    plan: str | None = "home",
    sessions: int = 1,
    bytes_in: int = 1000,
    bytes_out: int = 2000,
    seconds: int = 60,
) -> Usage:
    return Usage(
        subscriber=sid,
        categories=Categories(country=country, city=city, plan=plan, nas_port_type=15),
        sessions=sessions,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        seconds=seconds,
    )


def values(cells: list[Cell]) -> list[str]:
    return [c.value for c in cells]


# -- generalisation and suppression ---------------------------------------------------


def test_a_town_with_one_subscriber_disappears_into_its_country() -> None:
    """The lone Tinytown subscriber is released only inside "GB", with the city-less GB users."""
    usage = [use(i, city="London") for i in range(12)]
    usage += [use(100, city="Tinytown")]
    usage += [use(200 + i, city=None) for i in range(9)]
    cells, suppressed, _ = generalise(Dimension.CITY, usage, k=K, caps=CAPS)
    assert values(cells) == ["GB/London", "GB"]
    assert [c.subscribers for c in cells] == [12, 10]
    assert suppressed == 0
    assert not any("Tinytown" in v for v in values(cells))


def test_a_town_with_one_subscriber_goes_to_other_with_the_smallest_cell() -> None:
    """Too few in the country as well: "other" is below k, so London joins it.

    Suppressing the lone Tinytown subscriber instead would leave the table one
    subscriber short of every other table: the difference would be them.
    """
    usage = [use(i, city="London") for i in range(12)] + [use(100, city="Tinytown")]
    cells, suppressed, hidden = generalise(Dimension.CITY, usage, k=K, caps=CAPS)
    assert values(cells) == [OTHER]
    assert cells[0].subscribers == 13
    assert (suppressed, hidden) == (0, 0)
    # With nine other small places elsewhere, "other" reaches k and is released.
    usage += [use(300 + i, country="FR", city=f"Village{i}") for i in range(9)]
    cells, suppressed, _ = generalise(Dimension.CITY, usage, k=K, caps=CAPS)
    assert values(cells) == ["GB/London", OTHER]
    assert cells[1].subscribers == 10 and suppressed == 0


@pytest.mark.parametrize(("count", "released_"), [(9, False), (10, True)])
def test_a_cell_with_nine_subscribers_is_suppressed_and_ten_released(
    count: int, released_: bool
) -> None:
    usage = [use(i, country="FR") for i in range(count)]
    cells, suppressed, _ = generalise(Dimension.COUNTRY, usage, k=K, caps=CAPS)
    assert values(cells) == (["FR"] if released_ else [])
    assert suppressed == (0 if released_ else 1)


def test_distinct_subscribers_not_sessions_decide_k() -> None:
    """Nine subscribers with many sessions each are still nine."""
    usage = [use(i, country="FR", sessions=50) for i in range(9)] * 3
    assert generalise(Dimension.COUNTRY, usage, k=K, caps=CAPS)[0] == []


def test_each_subscribers_contribution_to_a_cell_is_capped() -> None:
    caps = Caps(sessions=5, bytes=10_000, seconds=3600)
    usage = [use(i, bytes_in=100, bytes_out=200, seconds=60) for i in range(10)]
    heavy = use(99, sessions=40, bytes_in=10**12, bytes_out=5 * 10**11, seconds=86_400)
    [cell] = generalise(Dimension.COUNTRY, [*usage, heavy], k=K, caps=caps)[0]
    assert cell.subscribers == 11
    assert cell.bytes_in == 10 * 100 + 10_000
    assert cell.bytes_out == 10 * 200 + 10_000
    assert cell.seconds == 10 * 60 + 3600
    assert cell.sessions == 10 + 5
    # The cap is per subscriber per cell: two usages of one subscriber are summed first.
    split = [use(99, bytes_in=6000), use(99, bytes_in=6000)]
    [cell] = generalise(Dimension.COUNTRY, [*usage, *split], k=K, caps=caps)[0]
    assert cell.bytes_in == 10 * 100 + 10_000


def test_day_caps_are_24_hourly_caps() -> None:
    s = StatsSettings(max_bytes=100, max_seconds=10, max_sessions=2)
    assert Caps.for_period(s, Period.DAY) == Caps(sessions=48, bytes=2400, seconds=240)


def test_totals_are_recomputed_from_released_cells_only() -> None:
    usage = [use(i, country="GB", bytes_in=10) for i in range(10)]
    usage += [use(50 + i, country="FR", bytes_in=1000) for i in range(3)]
    result = rollup(usage, settings=StatsSettings(), period=Period.HOUR)
    rows = cell_rows(Period.HOUR, HOUR, result.cells)
    assert totals(rows) == totals(cell_rows(Period.HOUR, HOUR, result.cells))
    sums = totals([r for r in rows if r["dimension"] == "plan"])
    assert sums["plan"] == {"sessions": 13, "bytes_in": 3100, "bytes_out": 26_000, "seconds": 780}
    # Only released rows count: dropping one drops its measures from the totals.
    assert totals(rows[1:]) != totals(rows)


# -- differencing: no two released figures subtract to fewer than k subscribers -------


def figures(rows: list[dict[str, object]], measure: str) -> list[int]:
    """Every released figure of one measure: each cell and each table's total."""
    cells = [int(str(r[measure])) for r in rows]
    return cells + [sums[measure] for sums in totals(rows).values()]


def test_a_country_minus_its_city_no_longer_isolates_one_subscriber() -> None:
    """(a) GB = 11 and GB/London = 10 gave away the Tinytown subscriber: neither is released now.

    No country table is released next to the city table, and the city table's
    remainder (Tinytown, 1) takes the smallest cell with it into "other".
    """
    usage = [use(i, city="London", bytes_in=10) for i in range(10)]
    usage += [use(100, city="Tinytown", bytes_in=777_777)]
    usage += [use(200 + i, country="FR", city="Paris", bytes_in=10) for i in range(12)]
    result = rollup(usage, settings=StatsSettings(), period=Period.HOUR)
    rows = cell_rows(Period.HOUR, HOUR, result.cells)
    assert "country" not in {r["dimension"] for r in rows}
    city = {r["value"]: r["subscribers"] for r in rows if r["dimension"] == "city"}
    assert city == {"FR/Paris": 12, OTHER: 11}  # London (the smallest) joined Tinytown
    # No released figure minus another (cells and table totals, any tables) is
    # the Tinytown subscriber's traffic.
    numbers = figures(rows, "bytes_in")
    assert not any(a - b == 777_777 for a in numbers for b in numbers)
    assert check_release(rows, k=K, population=result.population) == []


def test_tables_with_different_suppression_no_longer_subtract() -> None:
    """(b) The plan table released all 13, the country table 10: the 3 FR users were the gap.

    Now every table covers the whole period, so all tables' totals agree.
    """
    usage = [use(i, country="GB", bytes_in=10) for i in range(10)]
    usage += [use(50 + i, country="FR", bytes_in=1000) for i in range(3)]
    result = rollup(usage, settings=StatsSettings(), period=Period.HOUR)
    rows = cell_rows(Period.HOUR, HOUR, result.cells)
    sums = totals(rows)
    assert set(sums) == {d.value for d in RELEASED_DIMENSIONS}
    first = sums["plan"]
    assert first["bytes_in"] == 100 + 3000
    assert all(s == first for s in sums.values())
    assert result.suppressed == 0 and result.suppressed_subscribers == 0


def test_a_period_below_k_releases_no_table_at_all() -> None:
    """Below k in the whole period there is nothing to merge with: every table is empty."""
    usage = [use(i, country="GB") for i in range(K - 1)]
    result = rollup(usage, settings=StatsSettings(), period=Period.HOUR)
    assert result.cells == ()
    assert result.population == K - 1


def test_capping_is_per_subscriber_per_period_so_tables_agree() -> None:
    """A heavy subscriber in two cities is capped once, not once per city cell."""
    caps = Caps(sessions=100, bytes=10_000, seconds=10**6)
    usage = [use(i, city="London", bytes_in=100) for i in range(10)]
    usage += [use(20 + i, country="FR", city="Paris", bytes_in=100) for i in range(10)]
    usage += [
        use(99, city="London", bytes_in=30_000),
        use(99, country="FR", city="Paris", bytes_in=10_000),
    ]
    capped = cap_usage(usage, caps)
    assert [u.bytes_in for u in capped[-2:]] == [7500, 2500]
    by_table = {
        d: sum(c.bytes_in for c in generalise(d, usage, k=K, caps=caps)[0])
        for d in (Dimension.CITY, Dimension.PLAN)
    }
    assert by_table[Dimension.CITY] == by_table[Dimension.PLAN] == 2000 + 10_000


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40),
            st.sampled_from(["GB", "FR", "DE", None]),
            st.sampled_from(["London", "Paris", "Berlin", "Tinytown", None]),
            st.sampled_from(["home", "biz", None]),
            st.integers(0, 10**11),
        ),
        max_size=120,
    )
)
def test_every_rollup_passes_the_validator_and_keeps_k(
    items: list[tuple[int, str | None, str | None, str | None, int]],
) -> None:
    usage = [use(s, country=c, city=t, plan=p, bytes_in=b) for s, c, t, p, b in items]
    result = rollup(usage, settings=StatsSettings(), period=Period.HOUR)
    rows = cell_rows(Period.HOUR, HOUR, result.cells)
    assert check_release(rows, k=K, population=result.population) == []
    members = {u.subscriber for u in usage}
    for cell in result.cells:
        assert K <= cell.subscribers <= len(members)
    # Every table covers the whole period (or, below k, none does): totals agree
    # and equal the capped usage, so no table minus another leaves a remainder.
    sums = totals(rows)
    if len(members) < K:
        assert sums == {}
    else:
        caps = Caps.for_period(StatsSettings(), Period.HOUR)
        whole = sum(u.bytes_in for u in cap_usage(usage, caps))
        assert set(sums) == {d.value for d in RELEASED_DIMENSIONS}
        assert {s["bytes_in"] for s in sums.values()} == {whole}
        assert result.suppressed_subscribers == 0


# -- the validator -------------------------------------------------------------------


def good_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "period": "hour",
        "bucket": "2030-05-06T10",
        "dimension": "plan",
        "value": "home",
        "sessions": 12,
        "subscribers": 10,
        "bytes_in": 1,
        "bytes_out": 2,
        "seconds": 3,
    }
    row.update(changes)
    return row


def problems(rows: list[dict[str, object]], k: int = K, population: int = 0) -> set[Problem]:
    return {v.problem for v in check_release(rows, k=k, population=population)}


def test_the_validator_accepts_a_clean_table() -> None:
    rows = [good_row(), good_row(dimension="city", value="GB/London", subscribers=40)]
    rows.append(good_row(dimension="nas_port_type", value="Wireless-802.11"))
    # Plan and port type leave out 30 of the 40: a remainder of at least k is fine.
    assert check_release(rows, k=K, population=40) == []


def test_the_validator_refuses_a_table_leaving_out_fewer_than_k() -> None:
    """(1) A table whose cells hold 1..k-1 fewer subscribers than the period is refused."""
    rows = [good_row(subscribers=13), good_row(dimension="city", value="GB", subscribers=10)]
    found = check_release(rows, k=K, population=13)
    assert [(v.problem, v.row) for v in found] == [(Problem.REMAINDER_BELOW_K, 1)]
    assert str(found[0]) == "remainder_below_k in column 'subscribers' (row 1)"
    # The same table completed with "other", or missing k or more, passes.
    whole = [rows[0], good_row(dimension="city", value=OTHER, subscribers=13)]
    assert problems(whole, population=13) == set()
    assert problems(rows, population=23) == set()
    assert problems(rows, population=22) == {Problem.REMAINDER_BELOW_K}  # plan: 9 out


def test_the_validator_refuses_country_and_city_tables_together() -> None:
    rows = [
        good_row(dimension="country", value="GB", subscribers=11),
        good_row(dimension="city", value="GB/London", subscribers=11),
    ]
    assert problems(rows, population=11) == {Problem.NESTED_TABLES}
    assert problems(rows[:1], population=11) == set()


@pytest.mark.parametrize(
    "value",
    ["192.0.2.17", "net 10.1.2.3/24", "2001:db8::1", "fe80::1%eth0", "[2001:db8:5::7]"],
)
def test_the_validator_rejects_an_ip_address(value: str) -> None:
    assert Problem.IP_ADDRESS in problems([good_row(value=value)])


@pytest.mark.parametrize(
    "value",
    [
        "02:5a:00:00:00:01",
        "02-5A-00-00-00-01",
        "025a.0000.0001",
        "025a00-000001",
        "025A00000001",
        "cpe 02:5A:00:00:00:01 lab",
    ],
)
def test_the_validator_rejects_a_mac_in_any_spelling(value: str) -> None:
    assert Problem.MAC_ADDRESS in problems([good_row(value=value)])


@pytest.mark.parametrize("value", ["07:45", "at 7:45", "23:59:59"])
def test_the_validator_rejects_a_clock_time(value: str) -> None:
    assert Problem.CLOCK_TIME in problems([good_row(value=value)])


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"value": "2030-05-06T10:17"}, Problem.EXACT_TIMESTAMP),
        ({"value": "1904305020"}, Problem.EXACT_TIMESTAMP),
        ({"value": datetime(2030, 5, 6, 10, 17, tzinfo=UTC)}, Problem.EXACT_TIMESTAMP),
        ({"bucket": "2030-05-06T10:17"}, Problem.BAD_BUCKET),
        ({"bucket": datetime(2030, 5, 6, 10, tzinfo=UTC)}, Problem.EXACT_TIMESTAMP),
    ],
)
def test_the_validator_rejects_exact_times(changes: dict[str, object], problem: Problem) -> None:
    assert problem in problems([good_row(**changes)])


@pytest.mark.parametrize(
    "value",
    [
        uuid.UUID(int=7).hex,
        str(uuid.uuid4()),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        base64.b64encode(bytes(range(32))).decode(),
        base64.urlsafe_b64encode(bytes(range(100, 132))).decode().rstrip("="),
        b"\x01\x02",
    ],
)
def test_the_validator_rejects_digests_and_pseudonyms(value: object) -> None:
    assert Problem.DIGEST in problems([good_row(value=value)])


@pytest.mark.parametrize(
    "column", ["user_name", "UserName", "subscriber_id", "session_id", "acct_session", "mac"]
)
def test_the_validator_rejects_identifier_columns(column: str) -> None:
    assert Problem.IDENTIFIER_COLUMN in problems([good_row(**{column: "x"})])


def test_the_validator_rejects_unknown_and_time_columns() -> None:
    assert Problem.UNKNOWN_COLUMN in problems([good_row(colour="blue")])
    assert Problem.TIME_COLUMN in problems([good_row(started_at="x")])
    missing = good_row()
    del missing["subscribers"]
    assert Problem.MISSING_COLUMN in problems([missing])


def test_the_validator_rejects_a_cell_below_k_and_a_k_below_five() -> None:
    assert problems([good_row(subscribers=9)]) == {Problem.BELOW_K}
    assert problems([good_row(subscribers=10)]) == set()
    assert Problem.K_TOO_LOW in problems([good_row()], k=4)
    assert Problem.BELOW_K in problems([good_row(subscribers=4)], k=4)


def test_the_validator_rejects_malformed_categories_and_duplicates() -> None:
    assert Problem.BAD_CATEGORY in problems([good_row(dimension="country", value="Britain")])
    assert Problem.BAD_CATEGORY in problems([good_row(dimension="nas_port_type", value="15")])
    assert Problem.BAD_DIMENSION in problems([good_row(dimension="user")])
    assert Problem.DUPLICATE_CELL in problems([good_row(), good_row()])
    assert Problem.IDENTIFIER_VALUE in problems([good_row(value="someone@example.net")])
    assert Problem.BAD_MEASURE in problems([good_row(bytes_in=-1)])


def test_the_refusal_names_rules_never_values() -> None:
    [violation] = check_release([good_row(value="198.51.100.77")], k=K, population=10)
    assert "198.51.100.77" not in str(violation)
    assert str(violation) == "ip_address in column 'value' (row 0)"


def test_category_names_that_are_words_pass() -> None:
    for text in ["Fibre-1000-Unlimited", "Frankfurt am Main", "Llanfairpwllgwyngyll", "Android"]:
        assert check_text(text) == []


# -- configuration ---------------------------------------------------------------------


def test_config_refuses_k_below_five_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[stats]\nk = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == "stats.k must be at least 5 (got 4)"
    path.write_text("[stats]\nk = 5\nmax_bytes = 1000\n")
    config = load_config(path, env={})
    assert (config.stats.k, config.stats.max_bytes) == (5, 1000)
    assert load_config(None, env={}).stats.k == 10


def test_the_default_release_is_the_last_settled_period() -> None:
    s = StatsSettings(release_delay=1800)
    now = datetime(2030, 5, 6, 12, 20, tzinfo=UTC)
    assert period_to_release(s, Period.HOUR, None, now) == datetime(2030, 5, 6, 10, tzinfo=UTC)
    now = datetime(2030, 5, 6, 12, 40, tzinfo=UTC)
    assert period_to_release(s, Period.HOUR, None, now) == datetime(2030, 5, 6, 11, tzinfo=UTC)
    assert period_to_release(s, Period.DAY, None, now) == datetime(2030, 5, 5, tzinfo=UTC)
    at = datetime(2030, 5, 6, 9, 59, tzinfo=UTC)
    assert period_to_release(s, Period.HOUR, at, now) == datetime(2030, 5, 6, 9, tzinfo=UTC)


# -- a scripted day through accounting and PostgreSQL -----------------------------------

SECRET = "stats-secret-3"
DAY = datetime(2030, 5, 6, tzinfo=UTC)
FIRST_ID = 7_340_001  # subscriber ids long enough to search for as text


class Clock:
    def __init__(self) -> None:
        self.now = DAY.timestamp()

    def __call__(self) -> float:
        return self.now


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


class Person:
    """A synthetic subscriber: every personal value the day uses for them."""

    def __init__(self, n: int, country: str | None, city: str | None, plan: str) -> None:
        self.n = n
        self.user = f"stats-user-{n:02d}"
        self.password = f"pw-{n:02d}-secret"
        self.mac = f"02-5A-00-00-{n // 256:02X}-{n % 256:02X}"
        self.ip = f"100.64.{n // 200}.{n % 200 + 10}"
        self.country = country
        self.city = city
        self.plan = plan
        self.sid = 0

    def session(self, hour: int) -> bytes:
        return f"SESS-{self.n:02d}-{hour:02d}".encode()


def acct(
    person: Person,
    status: AcctStatus,
    sid: bytes,
    at: datetime,
    *,
    octets: tuple[int, int] = (0, 0),
    seconds: int = 0,
    port_type: int,
) -> list[tuple[int, bytes]]:
    return [
        (40, u32(int(status))),
        (44, sid),
        (1, person.user.encode()),
        (4, bytes((198, 51, 100, 1))),
        (5, u32(person.n)),
        (61, u32(port_type)),
        (31, person.mac.encode()),
        (8, bytes(int(x) for x in person.ip.split("."))),
        # 64-bit counters: low 32 bits and Acct-Input/Output-Gigawords (RFC 2869 5.1, 5.2).
        (42, u32(octets[0] & 0xFFFFFFFF)),
        (43, u32(octets[1] & 0xFFFFFFFF)),
        (52, u32(octets[0] >> 32)),
        (53, u32(octets[1] >> 32)),
        (46, u32(seconds)),
        (55, u32(int(at.timestamp()))),
    ]


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def send(
    handler: AccountingHandler,
    applier: SessionApplier,
    clock: Clock,
    nas: Nas,
    attrs: list[tuple[int, bytes]],
    at: datetime,
) -> None:
    clock.now = at.timestamp() + 1
    data = build_request(
        int(Code.ACCOUNTING_REQUEST), 1, encode_attributes(attrs), SECRET.encode(),
        message_authenticator=False,
    )  # fmt: skip
    reply = await handler.handle(Request(parse(data), nas, ("127.0.0.1", 41000), 0.0, None))
    assert reply.code == int(Code.ACCOUNTING_RESPONSE), reply.reason
    await applier.drain()


async def scripted_day(
    pool: Pool,
    keys: SystemKeys,
    masters: MasterKeys,
    data_keys: DataKeyCache,
    db: asyncpg.Connection[asyncpg.Record],
) -> list[Person]:
    """26 subscribers on two NAS: sessions that end at 10:xx (most) and 14:xx (three)."""
    await db.execute(f"ALTER SEQUENCE subscriber_id_seq RESTART {FIRST_ID}")
    nas_repo = NasRepository(pool, keys)
    north = await nas_repo.add(
        "stats-north", "127.0.0.1", SECRET, vendor="mikrotik", country="GB", city="Manchester"
    )
    south = await nas_repo.add("stats-south", "127.0.0.2", SECRET, vendor="cisco")
    await db.execute("UPDATE nas SET nas_group = 'north-ring' WHERE name = 'stats-north'")
    plans = PlanRepository(pool)
    await plans.add(name="home-100", download_kbps=100_000, upload_kbps=20_000)
    await plans.add(name="biz-500", download_kbps=500_000, upload_kbps=100_000)
    subs = SubscriberRepository(pool, keys, masters, data_keys)
    people = [Person(n, "GB", "London", "home-100") for n in range(12)]
    people += [Person(12 + n, "FR", "Paris", "biz-500") for n in range(10)]
    people += [Person(22, "GB", "Tinytown", "home-100")]
    people += [Person(23 + n, None, None, "biz-500") for n in range(3)]  # placed by the NAS
    for p in people:
        p.sid = await subs.add(p.user, p.password, plan=p.plan, mac_lock=p.mac)
    assert people[0].sid == FIRST_ID
    events = AuthEventWriter(pool, keys, data_keys)
    for p in people:
        if p.country is None:
            continue  # no categorised login: falls back to the NAS location
        events.submit(
            AuthEvent(
                time=DAY + timedelta(hours=9, minutes=p.n),
                subscriber_id=p.sid,
                nas_id=(north if p.n % 2 else south).id,
                result=AuthResult.ACCEPT,
                reason="ok",
                user_name=p.user,
                calling_station_id=p.mac,
                nas_ip="198.51.100.1",
                country=p.country,
                city=p.city,
                device_class="cpe" if p.n % 3 else "smartphone",
                os_family="RouterOS" if p.n % 3 else "Android",
                vendor="Synthetic Routers Ltd",
            )
        )
    await events.flush()
    assert events.written == 23

    writer = AccountingWriter(pool, keys, DataKeyCache(masters))
    applier = SessionApplier(pool, SessionTracker(keys.blind_index))
    writer.on_commit = applier.wake
    clock = Clock()
    handler = AccountingHandler(
        recorder=writer, directory=CachedSubscriberDirectory(pool, keys, data_keys), clock=clock
    )
    try:
        for p in people:
            nas = north if p.n % 2 or p.country is None else south
            late = p.n in (0, 12, 22)  # three sessions end in the afternoon
            start = DAY + timedelta(hours=9, minutes=p.n + 1)
            stop = DAY + timedelta(hours=14 if late else 10, minutes=30 + p.n)
            sid = p.session(start.hour)
            port_type = 15 if p.n % 2 else 19
            await send(
                handler, applier, clock, nas,
                acct(p, AcctStatus.START, sid, start, port_type=port_type), start,
            )  # fmt: skip
            mid = start + timedelta(minutes=20)
            octets = (1000 * (p.n + 1), 7000 * (p.n + 1))
            await send(
                handler, applier, clock, nas,
                acct(p, AcctStatus.INTERIM_UPDATE, sid, mid, octets=octets, seconds=1200,
                     port_type=port_type),
                mid,
            )  # fmt: skip
            total = int((stop - start).total_seconds())
            # The last subscriber downloads far more than anyone else: the cap holds them.
            final = (3000 * (p.n + 1), 10**12 if p.n == 25 else 9000 * (p.n + 1))
            await send(
                handler, applier, clock, nas,
                acct(p, AcctStatus.STOP, sid, stop, octets=final, seconds=total,
                     port_type=port_type),
                stop,
            )  # fmt: skip
    finally:
        await writer.close()
    closed = await db.fetchval("SELECT count(*) FROM sessions_closed")
    assert closed == len(people)
    return people


async def identifier_values(db: asyncpg.Connection[asyncpg.Record]) -> set[object]:
    """Every value of an identifier column of the subscriber and session tables."""
    found: set[object] = set()
    queries = {
        "subscribers": ["id", "account_ref", "wrapped_key", "user_name_enc", "password_enc"],
        "subscriber_lookup": ["blind", "subscriber_id"],
        "sessions_closed": [
            "id", "subscriber_id", "session_key", "session_blind", "port_blind",
            "framed_ip_blind", "session_id_enc", "user_name_enc", "calling_station_id_enc",
            "framed_ip_enc", "nas_ip_enc",
        ],
        "acct_records": ["id", "session_key", "port_blind", "framed_ip_blind"],
        "auth_events": ["id", "user_name_enc", "calling_station_id_enc", "nas_ip_enc"],
    }  # fmt: skip
    for table, columns in queries.items():
        for column in columns:
            for r in await db.fetch(f"SELECT DISTINCT {column} AS v FROM {table}"):
                if r["v"] is not None:
                    found.add(r["v"])
    return found


def forms(value: object) -> list[str | bytes]:
    """The spellings a leaked value could take in a released row: raw, hex, base64, text."""
    if isinstance(value, bytes):
        out: list[str | bytes] = [value.hex(), base64.b64encode(value).decode().rstrip("=")]
        out.append(base64.urlsafe_b64encode(value).decode().rstrip("="))
        # Raw bytes are searched in the encoded release; shorter ones match by chance.
        return [*out, value] if len(value) >= 6 else out
    if isinstance(value, uuid.UUID):
        return [str(value), value.hex]
    return [str(value)]


async def test_a_scripted_day_releases_no_personal_value_or_identifier(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
    db: asyncpg.Connection[asyncpg.Record],
    capsys: pytest.CaptureFixture[str],
) -> None:
    people = await scripted_day(pg_pool, system_keys, master_keys, data_keys, db)
    stats = StatsSettings(max_bytes=10**9)
    now = DAY + timedelta(days=1, hours=2)
    for h in (10, 14):
        args = argparse.Namespace(action="release", period=Period.HOUR, at=DAY.replace(hour=h))
        assert await stats_command(pg_pool, stats, args, now=now) == 0
    out = capsys.readouterr().out
    assert "hour 2030-05-06T14: released 0 cells" in out

    # (c) The day minus its hours would be the hours' hidden subscribers (the three
    # whose sessions end at 14:xx, a period below k): with hours released, the day
    # is refused.
    args = argparse.Namespace(action="release", period=Period.DAY, at=DAY)
    with pytest.raises(SystemExit) as exit_:
        await stats_command(pg_pool, stats, args, now=now)
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("the day 2030-05-06 overlaps released hours; one granularity per day")
    assert len(err.splitlines()) == 1
    assert await db.fetchval("SELECT count(*) FROM stats_releases WHERE period = 'day'") == 0

    rows = await released(pg_pool)
    assert {r["period"] for r in rows} == {"hour"}
    hour = {(r["dimension"], r["value"]): r for r in rows}
    # 12 London + 9 Paris users end at 10:xx; Tinytown and the NAS-placed three are too few.
    assert hour["city", "GB/London"]["subscribers"] == 11
    assert ("city", "FR/Paris") not in hour  # 9: suppressed, and "other" (9 + 3) takes them
    assert hour["city", "other"]["subscribers"] == 9 + 3
    assert "country" not in {d for d, _ in hour}  # the city table holds the countries
    # The south NAS's 9 ("cisco") are below k: north-ring (14) joins them in "other"
    # rather than leave a 9-subscriber gap between this table and the others.
    assert hour["nas_group", "other"]["subscribers"] == 6 + 5 + 3 + 9
    assert ("nas_group", "north-ring") not in hour
    assert {v for d, v in hour if d == "nas_port_type"} <= {"Ethernet", "Wireless-802.11"}
    sums = totals(rows)
    assert len({json.dumps(v) for v in sums.values()}) == 1  # every table, same totals

    messages = await db.fetch(
        "SELECT idempotency_key, payload FROM feed_outbox WHERE topic = 'stats' ORDER BY id"
    )
    assert [m["idempotency_key"] for m in messages] == [
        "stats:hour:2030-05-06T10",
        "stats:hour:2030-05-06T14",
    ]
    await assert_nothing_personal(db, people, rows, messages)
    assert "totals (released cells only):" in "\n".join(show_lines(rows))


async def assert_nothing_personal(
    db: asyncpg.Connection[asyncpg.Record],
    people: list[Person],
    rows: list[dict[str, object]],
    messages: list[asyncpg.Record],
) -> None:
    """Outbox totals match the cells, and no personal value or identifier is released."""
    for m in messages:
        body = json.loads(m["payload"])
        mine = [r for r in rows if r["bucket"] == body["bucket"]]
        assert body["totals"] == totals(mine)
        assert len(body["cells"]) == len(mine)

    # Nothing personal, nothing that names a row: search every spelling.
    blob = json.dumps([[json.loads(m["payload"]) for m in messages], rows], default=str)
    raw = blob.encode()
    personal: list[str] = []
    for p in people:
        personal += [p.user, p.password, p.mac, p.mac.replace("-", ":"), p.ip]
        personal += [p.session(9).decode(), str(p.sid)]
    personal += ["198.51.100.1", "127.0.0.1", "127.0.0.2", SECRET]
    for value in personal:
        assert value.lower() not in blob.lower(), "a personal value was released"
    identifiers = await identifier_values(db)
    assert len(identifiers) > 100
    for ident in identifiers:
        for form in forms(ident):
            hit = form in raw if isinstance(form, bytes) else form.lower() in blob.lower()
            assert not hit, "an identifier was released"
    # The released table has only the allow-listed columns.
    columns = {r["column_name"] for r in await db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'stats_hourly'"
    )}  # fmt: skip
    assert columns == {
        "period", "bucket", "dimension", "value", "sessions", "subscribers",
        "bytes_in", "bytes_out", "seconds",
    }  # fmt: skip


async def test_a_release_is_refused_whole_when_a_value_breaks_a_rule(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
    db: asyncpg.Connection[asyncpg.Record],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator named a NAS group after its MAC: the release exits 1 and writes nothing."""
    people = await scripted_day(pg_pool, system_keys, master_keys, data_keys, db)
    await db.execute("UPDATE nas SET nas_group = '02:5A:00:00:99:01' WHERE name = 'stats-north'")
    stats = StatsSettings(max_bytes=10**9)
    now = DAY + timedelta(days=1)
    with pytest.raises(ReleaseRefused) as info:
        await release(pg_pool, stats, period=Period.DAY, start=DAY, now=now)
    assert "mac_address in column 'value'" in str(info.value)
    assert "02:5A" not in str(info.value)
    args = argparse.Namespace(action="release", period=Period.DAY, at=DAY)
    with pytest.raises(SystemExit) as exit_:
        await stats_command(pg_pool, stats, args, now=now)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "release refused, nothing written" in err and "02:5A" not in err
    for table in ("stats_hourly", "stats_releases"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0
    assert await db.fetchval("SELECT count(*) FROM feed_outbox WHERE topic = 'stats'") == 0
    # Fixed, the same period releases, once.
    await db.execute("UPDATE nas SET nas_group = 'north-ring' WHERE name = 'stats-north'")
    first = await release(pg_pool, stats, period=Period.DAY, start=DAY, now=now)
    again = await release(pg_pool, stats, period=Period.DAY, start=DAY, now=now)
    assert first.rows and not first.already_released and again.already_released
    assert await db.fetchval("SELECT count(*) FROM feed_outbox WHERE topic = 'stats'") == 1

    day = {(r["dimension"], r["value"]): r for r in first.rows}
    assert day["city", "GB/London"]["subscribers"] == 12
    # Tinytown (1) and the Manchester NAS's three make a GB remainder of 4: Paris,
    # the smallest cell, joins them in "other" instead of leaving a gap of 4.
    assert day["city", OTHER]["subscribers"] == 10 + 1 + 3
    assert not any(w in str(v) for w in ("Tinytown", "Manchester", "Paris") for _, v in day)
    # The heavy user's 1 TB is capped at 24 x 1 GB for the day.
    light = sum(9000 * (n + 1) for n in range(12, 25) if n != 22)
    assert day["plan", "biz-500"]["bytes_out"] == light + 24 * 10**9
    assert len({json.dumps(v) for v in totals(list(first.rows)).values()}) == 1
    messages = await db.fetch("SELECT payload FROM feed_outbox WHERE topic = 'stats'")
    await assert_nothing_personal(db, people, await released(pg_pool), messages)

    # (c) The other way round: with the day released, none of its hours is.
    with pytest.raises(GranularityConflict) as conflict:
        await release(pg_pool, stats, period=Period.HOUR, start=DAY.replace(hour=10), now=now)
    assert str(conflict.value) == (
        "the hour 2030-05-06T10 overlaps released day; one granularity per day"
    )
    later = await release(pg_pool, stats, period=Period.HOUR, start=DAY + timedelta(days=-1),
                          now=now)  # fmt: skip
    assert not later.already_released  # the day before is free


async def test_a_period_that_has_not_ended_is_not_released(pg_pool: Pool) -> None:
    args = argparse.Namespace(action="release", period=Period.HOUR, at=HOUR)
    with pytest.raises(SystemExit) as exit_:
        await stats_command(pg_pool, StatsSettings(), args, now=HOUR + timedelta(minutes=59))
    assert exit_.value.code == 1
