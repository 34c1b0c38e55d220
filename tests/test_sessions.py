"""Sessions, usage and quota events from accounting, against a real PostgreSQL.

Records go through the real handler and writer (decode, attribute, group
commit); the assertions read the committed rows from a separate connection.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from ispcare_radius.aaa.accounting import AccountingHandler, AcctStatus
from ispcare_radius.aaa.cookie import new_cookie
from ispcare_radius.aaa.model import Nas
from ispcare_radius.aaa.request import Request
from ispcare_radius.aaa.sessions import (
    Counters,
    Delta,
    Period,
    Quota,
    Reading,
    advance,
    period_start,
    quota_crossed,
)
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.authenticator import build_request
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import encode_attributes, parse
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.applier import SessionApplier
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.session_keys import session_aad
from ispcare_radius.store.sessions import SessionTracker, close_stale
from ispcare_radius.store.subscribers import SubscriberRepository

SECRET = "sess-secret-9"
USER = "sess-user-1"
T0 = datetime(2030, 5, 6, 7, 0, 0, tzinfo=UTC)
RESPONSE = int(Code.ACCOUNTING_RESPONSE)
GIB4 = 1 << 32


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def packet(
    status: AcctStatus | int,
    sid: bytes = b"S-1",
    *,
    user: bytes | None = USER.encode(),
    octets: tuple[int, int] | None = None,
    gigawords: tuple[int, int] | None = None,
    seconds: int | None = None,
    port: int | None = 7,
    at: datetime | None = None,
    cookie: bytes | None = None,
    framed_ip: bytes | None = bytes((100, 64, 9, 9)),
    cause: int | None = None,
) -> list[tuple[int, bytes]]:
    attrs: list[tuple[int, bytes]] = [(40, u32(int(status)))]
    if status not in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
        attrs.append((44, sid))
    if user is not None:
        attrs.append((1, user))
    attrs.append((4, bytes((198, 51, 100, 1))))
    if port is not None and status not in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
        attrs.append((5, u32(port)))
        attrs.append((31, b"02-AA-BB-CC-DD-EE"))
    if framed_ip is not None and status not in (
        AcctStatus.ACCOUNTING_ON,
        AcctStatus.ACCOUNTING_OFF,
    ):
        attrs.append((8, framed_ip))
    if octets is not None:
        attrs += [(42, u32(octets[0])), (43, u32(octets[1]))]
    if gigawords is not None:
        attrs += [(52, u32(gigawords[0])), (53, u32(gigawords[1]))]
    if seconds is not None:
        attrs.append((46, u32(seconds)))
    if at is not None:
        attrs.append((55, u32(int(at.timestamp()))))
    if cookie is not None:
        attrs.append((25, cookie))
    if cause is not None:
        attrs.append((49, u32(cause)))
    return attrs


class Nas1:
    """Sends accounting for one NAS through the handler, with a moving clock."""

    def __init__(
        self, handler: AccountingHandler, nas: Nas, clock: Clock, applier: SessionApplier
    ) -> None:
        self.handler = handler
        self.nas = nas
        self.clock = clock
        self.applier = applier
        self.ident = 0

    async def send(
        self, attrs: list[tuple[int, bytes]], *, advance_s: float = 1.0, settle: bool = True
    ) -> str:
        """Send one request; with ``settle``, wait until the applier has applied it."""
        self.clock.now += advance_s
        self.ident = (self.ident + 1) % 256
        data = build_request(
            int(Code.ACCOUNTING_REQUEST),
            self.ident,
            encode_attributes(attrs),
            SECRET.encode(),
            message_authenticator=False,
        )
        request = Request(parse(data), self.nas, ("127.0.0.1", 41000), 0.0, None)
        reply = await self.handler.handle(request)
        assert reply.code == RESPONSE, reply.reason
        if settle:
            await self.applier.drain()
        return reply.reason


@pytest.fixture
async def nas(pg_pool: Pool, system_keys: SystemKeys) -> Nas:
    return await NasRepository(pg_pool, system_keys).add("sess-nas", "127.0.0.1", SECRET)


@pytest.fixture
async def subscribers(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    plans = PlanRepository(pg_pool)
    await plans.add(name="sess-plan", download_kbps=1000, upload_kbps=500, interim_interval=300)
    async with pg_pool.acquire() as conn:
        await conn.execute(
            "UPDATE plans SET quota_bytes = 10000, quota_period = 'day' WHERE name = 'sess-plan'"
        )
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)


@pytest.fixture
async def subscriber_id(subscribers: SubscriberRepository) -> int:
    return await subscribers.add(USER, "pw-1", plan="sess-plan")


@pytest.fixture
async def writer(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> AsyncIterator[AccountingWriter]:
    w = AccountingWriter(pg_pool, system_keys, DataKeyCache(master_keys))
    yield w
    await w.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def applier(pg_pool: Pool, system_keys: SystemKeys, writer: AccountingWriter) -> SessionApplier:
    # Not started: the tests apply the queue themselves, so they see each step.
    applier = SessionApplier(pg_pool, SessionTracker(system_keys.blind_index))
    writer.on_commit = applier.wake
    return applier


@pytest.fixture
def client(
    writer: AccountingWriter,
    pg_pool: Pool,
    system_keys: SystemKeys,
    data_keys: DataKeyCache,
    clock: Clock,
    nas: Nas,
    applier: SessionApplier,
) -> Nas1:
    directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys)
    handler = AccountingHandler(recorder=writer, directory=directory, clock=clock)
    return Nas1(handler, nas, clock, applier)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def active(db: asyncpg.Connection[asyncpg.Record]) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM sessions_active ORDER BY started_at")


async def closed(db: asyncpg.Connection[asyncpg.Record]) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM sessions_closed ORDER BY stopped_at, started_at")


async def usage(
    db: asyncpg.Connection[asyncpg.Record], sid: int
) -> dict[str, tuple[int, int, int]]:
    rows = await db.fetch(
        "SELECT period, input_octets, output_octets, session_time FROM usage"
        " WHERE subscriber_id = $1",
        sid,
    )
    return {r["period"]: (r["input_octets"], r["output_octets"], r["session_time"]) for r in rows}


# -- pure rules ---------------------------------------------------------------


def test_period_start_for_days_and_billing_cycles() -> None:
    assert period_start(Period.DAY, date(2030, 3, 4)) == date(2030, 3, 4)
    assert period_start(Period.CYCLE, date(2030, 3, 4), billing_day=5) == date(2030, 2, 5)
    assert period_start(Period.CYCLE, date(2030, 3, 5), billing_day=5) == date(2030, 3, 5)
    assert period_start(Period.CYCLE, date(2030, 1, 1), billing_day=28) == date(2029, 12, 28)
    with pytest.raises(ValueError):
        period_start(Period.CYCLE, date(2030, 1, 1), billing_day=29)


def test_quota_fires_at_the_threshold_and_not_one_below() -> None:
    quota = Quota(period=Period.DAY, bytes=1000, seconds=60)
    assert quota_crossed(quota, octets=999, seconds=59) == []
    assert quota_crossed(quota, octets=1000, seconds=59) == [("bytes", 1000, 1000)]
    assert quota_crossed(quota, octets=0, seconds=60) == [("time", 60, 60)]


# -- sessions through the writer -----------------------------------------------


async def test_start_interim_stop_make_one_closed_session_and_usage(
    client: Nas1,
    subscriber_id: int,
    db: asyncpg.Connection[asyncpg.Record],
    data_keys: DataKeyCache,
) -> None:
    assert await client.send(packet(AcctStatus.START, octets=(0, 0), seconds=0)) == "recorded"
    [row] = await active(db)
    assert row["subscriber_id"] == subscriber_id and row["start_seen"]
    assert row["interim_interval"] == 300
    await client.send(
        packet(AcctStatus.INTERIM_UPDATE, octets=(1000, 200), seconds=300), advance_s=300
    )
    [row] = await active(db)
    assert (row["input_octets"], row["output_octets"], row["session_time"]) == (1000, 200, 300)
    await client.send(
        packet(AcctStatus.STOP, octets=(1500, 300), gigawords=(1, 0), seconds=600, cause=1),
        advance_s=300,
    )
    assert await active(db) == []
    [done] = await closed(db)
    assert (done["input_octets"], done["output_octets"]) == (GIB4 + 1500, 300)
    assert (done["close_reason"], done["terminate_cause"]) == ("stop", 1)
    assert await usage(db, subscriber_id) == {
        "day": (GIB4 + 1500, 300, 600),
        "cycle": (GIB4 + 1500, 300, 600),
    }
    # Personal fields sealed under the subscriber's key, bound to the row.
    cipher = data_keys.cached(subscriber_id)
    assert cipher is not None
    aad = session_aad("session_id", done["id"], subscriber_id)
    assert cipher.open(bytes(done["session_id_enc"]), aad) == b"S-1"
    assert b"S-1" not in bytes(done["session_id_enc"])
    # The quota (10,000 bytes a day) was crossed once, by the Stop.
    events = await db.fetch("SELECT kind, used, quota, period FROM quota_events")
    assert [(e["kind"], e["quota"], e["period"]) for e in events] == [("bytes", 10000, "day")]


async def test_lost_start_creates_the_session_and_late_interim_does_not_reopen_it(
    client: Nas1, subscriber_id: int, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    # The Start never arrived: the first interim creates the session.
    await client.send(packet(AcctStatus.INTERIM_UPDATE, octets=(500, 50), seconds=120))
    [row] = await active(db)
    assert not row["start_seen"]
    assert row["started_at"] == datetime.fromtimestamp(client.clock.now, UTC) - timedelta(
        seconds=120
    )
    stop_at = T0 + timedelta(seconds=700)
    await client.send(packet(AcctStatus.STOP, octets=(900, 90), seconds=600, at=stop_at))
    # An interim from before the Stop, delivered after it.
    await client.send(
        packet(
            AcctStatus.INTERIM_UPDATE,
            octets=(700, 70),
            seconds=400,
            at=stop_at - timedelta(seconds=200),
        )
    )
    assert await active(db) == []
    [done] = await closed(db)
    assert (done["input_octets"], done["output_octets"], done["session_time"]) == (900, 90, 600)
    assert await usage(db, subscriber_id) == {"day": (900, 90, 600), "cycle": (900, 90, 600)}


async def test_32_bit_wrap_without_gigawords_is_detected(
    client: Nas1, subscriber_id: int, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    await client.send(packet(AcctStatus.START))
    await client.send(packet(AcctStatus.INTERIM_UPDATE, octets=(GIB4 - 100, 10), seconds=300))
    # The counter went down in a newer record: it wrapped once.
    await client.send(packet(AcctStatus.INTERIM_UPDATE, octets=(400, 20), seconds=600))
    [row] = await active(db)
    assert row["input_octets"] == GIB4 + 400 and row["input_wraps"] == 1
    assert row["output_octets"] == 20 and row["output_wraps"] == 0
    # A reordered older interim (lower session time) is not a wrap.
    await client.send(packet(AcctStatus.INTERIM_UPDATE, octets=(GIB4 - 50, 15), seconds=450))
    [row] = await active(db)
    assert row["input_octets"] == GIB4 + 400 and row["input_wraps"] == 1
    assert (await usage(db, subscriber_id))["day"] == (GIB4 + 400, 20, 600)


async def test_accounting_on_closes_the_nas_sessions_as_nas_reboot(
    client: Nas1, subscriber_id: int, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    for i in range(3):
        await client.send(packet(AcctStatus.START, f"S-{i}".encode(), port=i))
    await client.send(packet(AcctStatus.ACCOUNTING_ON, user=None))
    assert await active(db) == []
    rows = await closed(db)
    assert [(r["close_reason"], r["terminate_cause"]) for r in rows] == [("nas_reboot", 11)] * 3
    # A session started after the reboot stays open.
    await client.send(packet(AcctStatus.START, b"S-9", port=9))
    assert len(await active(db)) == 1


async def test_new_start_on_the_same_port_supersedes_the_older_session(
    client: Nas1, subscriber_id: int, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    await client.send(packet(AcctStatus.START, b"S-old", port=3))
    await client.send(packet(AcctStatus.START, b"S-new", port=3))
    [row] = await active(db)
    [old] = await closed(db)
    assert old["close_reason"] == "superseded"
    assert row["id"] != old["id"]


async def test_class_cookie_keys_the_session_and_clears_its_reservation(
    client: Nas1,
    subscriber_id: int,
    db: asyncpg.Connection[asyncpg.Record],
    system_keys: SystemKeys,
) -> None:
    from ispcare_radius.store.session_keys import cookie_session_key

    cookie = new_cookie()
    key = cookie_session_key(system_keys.blind_index, cookie)
    await db.execute(
        "INSERT INTO session_reservations (subscriber_id, session_key, nas_id, expires_at)"
        " VALUES ($1, $2, $3, now() + interval '2 minutes')",
        subscriber_id,
        key,
        client.nas.id,
    )
    await client.send(packet(AcctStatus.START, cookie=cookie))
    # The NAS changed its session id (some do across a re-auth): same session.
    await client.send(
        packet(AcctStatus.INTERIM_UPDATE, b"S-other", cookie=cookie, octets=(5, 6), seconds=60)
    )
    [row] = await active(db)
    assert bytes(row["session_key"]) == key
    assert (row["input_octets"], row["output_octets"]) == (5, 6)
    assert await db.fetchval("SELECT count(*) FROM session_reservations") == 0
    # After its Stop, a replayed Start of that cookie does not reopen it.
    await client.send(packet(AcctStatus.STOP, cookie=cookie, octets=(9, 9), seconds=90))
    await client.send(packet(AcctStatus.START, cookie=cookie, port=8), advance_s=1000)
    assert await active(db) == []


async def test_stale_sessions_are_closed_not_deleted(
    client: Nas1, subscriber_id: int, db: asyncpg.Connection[asyncpg.Record], pg_pool: Pool
) -> None:
    await client.send(packet(AcctStatus.START, b"S-a", port=1))
    await client.send(
        packet(AcctStatus.INTERIM_UPDATE, b"S-a", port=1, octets=(10, 10), seconds=300)
    )
    last_seen = datetime.fromtimestamp(client.clock.now, UTC)
    # interim 300 s: stale after 2 x 300 + grace (60) without a record.
    limit = last_seen + timedelta(seconds=660)
    assert await close_stale(pg_pool, now=limit, grace=60, default_interval=600) == 0
    assert (
        await close_stale(pg_pool, now=limit + timedelta(seconds=1), grace=60, default_interval=600)
        == 1
    )
    [row] = await closed(db)
    assert row["close_reason"] == "stale" and row["input_octets"] == 10
    # A record after that is late: the session is not reopened.
    await client.send(
        packet(AcctStatus.INTERIM_UPDATE, b"S-a", port=1, octets=(20, 20), seconds=600)
    )
    assert await active(db) == []


async def test_unknown_user_sessions_are_kept_under_subscriber_zero(
    client: Nas1, db: asyncpg.Connection[asyncpg.Record], nas: Nas
) -> None:
    await client.send(packet(AcctStatus.START, user=b"nobody-here"))
    [row] = await active(db)
    assert row["subscriber_id"] == 0
    assert await db.fetchval("SELECT count(*) FROM usage") == 0


def _run(sessions: int, seed: int) -> list[tuple[int, list[tuple[int, bytes]], float]]:
    """A run of ``sessions`` sessions: (order, packet, event offset) per Start/Interims/Stop."""
    rng = random.Random(seed)
    out = []
    for s in range(sessions):
        sid = f"R-{s:05d}".encode()
        user = USER.encode() if s % 2 == 0 else b"run-user-2"
        t = T0 + timedelta(seconds=s)
        steps = [packet(AcctStatus.START, sid, user=user, port=s, at=t)]
        total_in = total_out = 0
        for k in range(1, 4):
            total_in += rng.randrange(1, GIB4 // 2)
            total_out += rng.randrange(1, 10_000)
            lo_in, hi_in = total_in % GIB4, total_in // GIB4
            steps.append(
                packet(
                    AcctStatus.INTERIM_UPDATE if k < 3 else AcctStatus.STOP,
                    sid,
                    user=user,
                    port=s,
                    at=t + timedelta(seconds=300 * k),
                    octets=(lo_in, total_out),
                    gigawords=(hi_in, 0),
                    seconds=300 * k,
                )
            )
        out.extend((s, p, 0.0) for p in steps)
    return out


async def _totals(db: asyncpg.Connection[asyncpg.Record]) -> list[tuple[int, int, int, int, str]]:
    rows = await db.fetch(
        "SELECT subscriber_id, input_octets, output_octets, session_time, close_reason"
        " FROM sessions_closed ORDER BY subscriber_id, input_octets"
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_every_packet_sent_three_times_interleaved_counts_once(
    client: Nas1,
    subscriber_id: int,
    subscribers: SubscriberRepository,
    db: asyncpg.Connection[asyncpg.Record],
    pg_dsn: str,
) -> None:
    """1,000 sessions, each packet sent 3 times in shuffled order, concurrently
    -> the same sessions and usage as sending each once, in order."""
    await subscribers.add("run-user-2", "pw-2", plan="sess-plan")
    run = _run(1000, seed=7)
    packets = [p for _, p, _ in run]

    once = packets
    for start in range(0, len(once), 200):
        await asyncio.gather(
            *(client.send(p, advance_s=0, settle=False) for p in once[start : start + 200])
        )
        await client.applier.drain()
    expected_sessions = await _totals(db)
    expected_usage = await db.fetch(
        "SELECT subscriber_id, period, input_octets, output_octets, session_time FROM usage"
        " ORDER BY subscriber_id, period"
    )
    assert len(expected_sessions) == 1000
    assert {r[4] for r in expected_sessions} == {"stop"}
    for table in (
        "sessions_closed",
        "sessions_active",
        "usage",
        "quota_events",
        "acct_records",
        "acct_record_keys",
    ):
        await db.execute(f"DELETE FROM {table}")

    thrice = packets * 3
    random.Random(11).shuffle(thrice)
    for start in range(0, len(thrice), 300):
        await asyncio.gather(
            *(client.send(p, advance_s=0, settle=False) for p in thrice[start : start + 300])
        )
        await client.applier.drain()
    assert await _totals(db) == expected_sessions
    assert (
        await db.fetch(
            "SELECT subscriber_id, period, input_octets, output_octets, session_time FROM usage"
            " ORDER BY subscriber_id, period"
        )
        == expected_usage
    )
    assert await db.fetchval("SELECT count(*) FROM sessions_active") == 0


def test_advance_ignores_a_record_without_counters() -> None:
    assert advance(Counters(), Reading(event_time=T0)) == (Counters(), Delta())


def test_advance_counts_a_wrap_only_in_a_newer_record_without_gigawords() -> None:
    first, delta = advance(Counters(), Reading(T0, GIB4 - 10, 5, 300))
    assert (first.input_octets, delta.input_octets) == (GIB4 - 10, GIB4 - 10)
    later = T0 + timedelta(seconds=300)
    wrapped, delta = advance(first, Reading(later, 20, 6, 600))
    assert (wrapped.input_octets, wrapped.input_wraps) == (GIB4 + 20, 1)
    assert delta == Delta(input_octets=30, output_octets=1, session_time=300)
    # The same counters with Gigawords sent: a lower 64-bit value is not a wrap.
    kept, delta = advance(first, Reading(later, 20, 6, 600, gigawords=True))
    assert (kept.input_octets, kept.input_wraps, delta.input_octets) == (GIB4 - 10, 0, 0)
    # Older (lower session time): nothing changes.
    assert advance(wrapped, Reading(T0, 1, 1, 100)) == (wrapped, Delta())


async def test_a_queued_record_that_was_erased_is_only_dequeued(
    client: Nas1, subscriber_id: int, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    await client.send(packet(AcctStatus.START), settle=False)
    # Erasure or retention removed the raw record before the applier ran.
    await db.execute("DELETE FROM acct_records")
    assert await client.applier.drain() == 1
    assert await db.fetchval("SELECT count(*) FROM acct_pending") == 0
    assert await active(db) == []
    assert client.applier.failed == 0


async def test_without_a_feed_sink_usage_changes_queue_no_events(
    client: Nas1,
    subscriber_id: int,
    db: asyncpg.Connection[asyncpg.Record],
    pg_pool: Pool,
    system_keys: SystemKeys,
) -> None:
    client.applier = SessionApplier(
        pg_pool, SessionTracker(system_keys.blind_index, usage_events=False)
    )
    await client.send(packet(AcctStatus.START))
    await client.send(packet(AcctStatus.INTERIM_UPDATE, octets=(10, 20), seconds=60))
    assert (await usage(db, subscriber_id))["day"] == (10, 20, 60)
    assert await db.fetchval("SELECT count(*) FROM feed_outbox WHERE topic = 'usage'") == 0
