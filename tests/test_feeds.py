"""Feeds to billing: outbox, relay, webhook, NDJSON and views, against a real PostgreSQL.

Usage comes from accounting records through the real handler, writer and
session applier; the webhook receiver is a real HTTP server on loopback.
The relay's clock is passed in, so retries fall due without waiting.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ispcare_radius.aaa.accounting import AccountingHandler, AcctStatus
from ispcare_radius.aaa.model import Nas
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.store import feeds
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.applier import SessionApplier
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.feeds import (
    FeedRelay,
    NdjsonSink,
    RelaySettings,
    Sink,
    WebhookSink,
    deliverable,
    enqueue,
    sign,
    verify,
)
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.sessions import SessionTracker
from ispcare_radius.store.subscribers import SubscriberRepository
from ispcare_radius.store.usage import add_usage
from tests.test_sessions import SECRET, Clock, Nas1, packet

HOOK_SECRET = Secret(b"feed-hook-secret-0123")
ALICE, BOB, CAROL = "feed-alice", "feed-bob", "feed-carol"
R0 = datetime(2031, 1, 2, 3, 0, 0, tzinfo=UTC)


class RelayClock:
    """The relay's clock: moved by the test, never by waiting."""

    def __init__(self) -> None:
        self.now = R0

    def __call__(self) -> datetime:
        return self.now


class Receiver:
    """A webhook receiver: verifies signatures, can be down (503), records what it accepts."""

    def __init__(self) -> None:
        self.down = False
        # The receiver's clock for the signature's timestamp check: the
        # relay's when the test moves it, else the real one.
        self.now: Callable[[], int] = lambda: int(datetime.now(UTC).timestamp())
        self.accepted: list[dict[str, Any]] = []  # events, in arrival order
        self.rejected = 0
        self.bad_signatures = 0
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = self.headers.get(feeds.SIGNATURE_HEADER, "")
                ok = verify(HOOK_SECRET, header, body, now=receiver.now())
                with receiver.cond:
                    if not ok:
                        receiver.bad_signatures += 1
                        code = 401
                    elif receiver.down:
                        receiver.rejected += 1
                        code = 503
                    else:
                        receiver.accepted.extend(json.loads(body)["events"])
                        code = 200
                    receiver.cond.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/billing/feed"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def keys(self) -> Counter[str]:
        with self.cond:
            return Counter(e["idempotency_key"] for e in self.accepted)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        def wait() -> bool:
            with self.cond:
                return self.cond.wait_for(predicate, timeout=timeout)

        assert await asyncio.to_thread(wait), "receiver condition not met in time"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
async def nas(pg_pool: Pool, system_keys: SystemKeys) -> Nas:
    return await NasRepository(pg_pool, system_keys).add("feed-nas", "127.0.0.1", SECRET)


@pytest.fixture
async def subscribers(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    plans = PlanRepository(pg_pool)
    await plans.add(name="feed-plan", download_kbps=1000, upload_kbps=500, interim_interval=300)
    async with pg_pool.acquire() as conn:
        await conn.execute(
            "UPDATE plans SET quota_bytes = 10000, quota_period = 'day' WHERE name = 'feed-plan'"
        )
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    # Alice and Bob share one billing account; Carol has none.
    await repo.add(ALICE, "pw-a", plan="feed-plan", account_ref="ACC-100")
    await repo.add(BOB, "pw-b", plan="feed-plan", account_ref="ACC-100")
    await repo.add(CAROL, "pw-c", plan="feed-plan")
    return repo


@pytest.fixture
async def writer(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> AsyncIterator[AccountingWriter]:
    w = AccountingWriter(pg_pool, system_keys, DataKeyCache(master_keys))
    yield w
    await w.close()


@pytest.fixture
def client(
    writer: AccountingWriter,
    pg_pool: Pool,
    system_keys: SystemKeys,
    data_keys: DataKeyCache,
    nas: Nas,
    subscribers: SubscriberRepository,
) -> Nas1:
    applier = SessionApplier(pg_pool, SessionTracker(system_keys.blind_index))
    writer.on_commit = applier.wake
    clock = Clock()
    directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys)
    handler = AccountingHandler(recorder=writer, directory=directory, clock=clock)
    return Nas1(handler, nas, clock, applier)


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    yield conn
    await conn.close()


USERS = {ALICE: (b"SA", 1), BOB: (b"SB", 2), CAROL: (b"SC", 3)}


async def traffic(client: Nas1, user: str, *, start: bool, interims: int, base: int = 0) -> None:
    """A session of ``user``: a Start (if ``start``), then ``interims`` growing interims."""
    sid, port = USERS[user]
    if start:
        await client.send(
            packet(AcctStatus.START, sid, user=user.encode(), port=port, octets=(0, 0), seconds=0)
        )
    for i in range(1, interims + 1):
        n = base + i
        await client.send(
            packet(
                AcctStatus.INTERIM_UPDATE,
                sid,
                user=user.encode(),
                port=port,
                octets=(1000 * n, 100 * n),
                seconds=300 * n,
            ),
            advance_s=300,
        )


async def outbox(db: asyncpg.Connection[asyncpg.Record], topic: str = "usage") -> list[Any]:
    return await db.fetch(
        "SELECT id, idempotency_key, account_key, payload FROM feed_outbox"
        " WHERE topic = $1 ORDER BY id",
        topic,
    )


# -- pure ------------------------------------------------------------------------


def test_signature_verifies_and_rejects_tampering_and_old_timestamps() -> None:
    body = b'{"events":[]}'
    header = sign(HOOK_SECRET, 1_900_000_000, body)
    assert header.startswith("t=1900000000,v1=")
    assert verify(HOOK_SECRET, header, body, now=1_900_000_010)
    assert not verify(HOOK_SECRET, header, body + b" ", now=1_900_000_010)
    assert not verify(Secret(b"other"), header, body, now=1_900_000_010)
    assert not verify(HOOK_SECRET, header, body, now=1_900_000_000 + 301)
    assert not verify(HOOK_SECRET, "v1=00", body, now=1_900_000_000)


def test_deliverable_takes_only_the_prefix_of_each_accounts_pending_rows() -> None:
    claimed = [
        {"id": 2, "account_key": "A"},
        {"id": 3, "account_key": "A"},
        {"id": 4, "account_key": "B"},
        {"id": 6, "account_key": "B"},
        {"id": 7, "account_key": None},
    ]
    # Row 1 of A is held elsewhere; row 5 of B too.
    pending = {"A": [1, 2, 3], "B": [4, 5, 6]}
    assert [r["id"] for r in deliverable(claimed, pending)] == [4, 7]


def test_backoff_doubles_and_is_capped() -> None:
    s = RelaySettings(backoff_base=5, backoff_max=60)
    assert [feeds.backoff(n, s).total_seconds() for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]


# -- outbox written with the change ----------------------------------------------


async def test_usage_change_and_its_outbox_rows_commit_or_roll_back_together(
    pg_pool: Pool, subscribers: SubscriberRepository, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    sid = int(await db.fetchval("SELECT id FROM subscribers WHERE account_ref IS NULL"))
    hour = R0.replace(minute=0)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with pg_pool.acquire() as conn, conn.transaction():
            await add_usage(conn, {(sid, hour): [10, 20, 30, 1]}, {}, R0)
            assert await conn.fetchval("SELECT count(*) FROM feed_outbox") == 3
            raise Abort
    assert await db.fetchval("SELECT count(*) FROM usage") == 0
    assert await db.fetchval("SELECT count(*) FROM usage_hourly") == 0
    assert await db.fetchval("SELECT count(*) FROM feed_outbox") == 0

    # Applied again (as a retried batch would be): the same keys, once each.
    for _ in range(2):
        async with pg_pool.acquire() as conn, conn.transaction():
            await add_usage(conn, {(sid, hour): [10, 20, 30, 1]}, {}, R0)
    rows = await outbox(db)
    assert sorted(r["idempotency_key"] for r in rows) == sorted(
        [
            f"usage:{sid}:hour:2031-01-02T03:00:00Z:1",
            f"usage:{sid}:day:2031-01-02T00:00:00Z:1",
            f"usage:{sid}:cycle:2031-01-01T00:00:00Z:1",
            f"usage:{sid}:hour:2031-01-02T03:00:00Z:2",
            f"usage:{sid}:day:2031-01-02T00:00:00Z:2",
            f"usage:{sid}:cycle:2031-01-01T00:00:00Z:2",
        ]
    )
    last = {r["payload"]["period"]: r["payload"] for r in rows}
    assert last["hour"]["input_octets"] == 20 and last["hour"]["sessions"] == 2
    assert {r["account_key"] for r in rows} == {f"subscriber:{sid}"}


async def test_every_usage_version_has_exactly_one_outbox_row_and_no_personal_value(
    client: Nas1, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    await traffic(client, ALICE, start=True, interims=3)
    await traffic(client, CAROL, start=True, interims=2)
    versions = await db.fetch(
        "SELECT subscriber_id, period, version FROM usage"
        " UNION ALL SELECT subscriber_id, 'hour', version FROM usage_hourly"
    )
    expected = sum(r["version"] for r in versions)
    rows = await outbox(db)
    assert len(rows) == expected == len({r["idempotency_key"] for r in rows})
    # Per subscriber and period the versions run 1..n with no gap.
    seen: dict[tuple[int, str, str], list[int]] = {}
    for r in rows:
        p = r["payload"]
        seen.setdefault((p["subscriber_id"], p["period"], p["period_start"]), []).append(
            p["version"]
        )
    assert all(v == list(range(1, len(v) + 1)) for v in seen.values())
    alice = {r["account_key"] for r in rows if r["payload"]["account_ref"] == "ACC-100"}
    assert alice == {"ACC-100"}
    text = json.dumps([dict(r) for r in await db.fetch("SELECT * FROM feed_outbox")], default=str)
    for personal in (ALICE, CAROL, "100.64.9.9", "02-AA-BB-CC-DD-EE", '"SA"'):
        assert personal not in text
    # Sessions started: one each, in the hour of their Start.
    day = await db.fetch("SELECT sessions FROM usage WHERE period = 'day'")
    assert sorted(r["sessions"] for r in day) == [1, 1]


async def test_status_change_and_quota_crossing_reach_the_outbox(
    client: Nas1, subscribers: SubscriberRepository, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    assert await subscribers.set(CAROL, status="suspended")
    assert await subscribers.set(CAROL, status="suspended")  # unchanged: no event
    await subscribers.deactivate(ALICE)
    events = await outbox(db, feeds.STATUS_TOPIC)
    assert [(e["payload"]["status"], e["payload"]["previous"]) for e in events] == [
        ("suspended", "active"),
        ("deactivated", "active"),
    ]
    carol = int(await db.fetchval("SELECT id FROM subscribers WHERE account_ref IS NULL"))
    assert [e["account_key"] for e in events] == [f"subscriber:{carol}", "ACC-100"]
    # 10,000 bytes a day: Bob's tenth interim (11,000) goes past it.
    await traffic(client, BOB, start=True, interims=10)
    [quota] = await outbox(db, feeds.QUOTA_TOPIC)
    assert quota["account_key"] == "ACC-100" and quota["payload"]["kind"] == "bytes"
    assert (quota["payload"]["quota"], quota["payload"]["used"]) == (10000, 11000)


async def test_flag_events_get_their_account_key_from_the_payload(
    pg_pool: Pool, subscribers: SubscriberRepository, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    bob = int(await db.fetchval("SELECT max(id) FROM subscribers WHERE account_ref = 'ACC-100'"))
    async with pg_pool.acquire() as conn:
        # The shape store/flags.py writes (no account key of its own).
        await conn.execute(
            "INSERT INTO feed_outbox (topic, idempotency_key, payload) VALUES ($1, $2, $3)",
            "flag.raised",
            "flag/x1",
            {"flag_id": 1, "rule": "r", "subscriber_id": bob},
        )
        assert await enqueue(
            conn, topic="stats", key="stats:1", account_key=None, payload={"cells": 1}
        )
        assert not await enqueue(
            conn, topic="stats", key="stats:1", account_key=None, payload={"cells": 1}
        )
    keys = await db.fetch("SELECT topic, account_key FROM feed_outbox ORDER BY id")
    assert [tuple(k) for k in keys] == [("flag.raised", "ACC-100"), ("stats", None)]


# -- webhook ---------------------------------------------------------------------


def hook_relay(pg_pool: Pool, receiver: Receiver, clock: RelayClock, **settings: Any) -> FeedRelay:
    receiver.now = lambda: int(clock.now.timestamp())
    return FeedRelay(
        pg_pool,
        [WebhookSink(receiver.url, HOOK_SECRET, timeout=5.0)],
        RelaySettings(**settings),
        clock=clock,
    )


async def test_webhook_delivers_each_key_once_across_an_outage_and_a_relay_restart(
    pg_pool: Pool, client: Nas1, receiver: Receiver, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    clock = RelayClock()
    await traffic(client, ALICE, start=True, interims=3)
    await traffic(client, CAROL, start=True, interims=2)
    carol = int(await db.fetchval("SELECT id FROM subscribers WHERE account_ref IS NULL"))

    # The receiver is down: the first batch (Alice's account) fails.
    receiver.down = True
    relay = hook_relay(pg_pool, receiver, clock, batch_size=4)
    assert await relay.run_once(Sink.WEBHOOK) == (4, 0)
    assert receiver.rejected == 1
    failed = await db.fetch("SELECT account_key FROM feed_outbox WHERE webhook_attempts = 1")
    assert {r["account_key"] for r in failed} == {"ACC-100"} and len(failed) == 4

    # Back up: only the other account goes before the retry falls due.
    receiver.down = False
    await relay.drain()
    assert {e["account_key"] for e in receiver.accepted} == {f"subscriber:{carol}"}
    clock.now += timedelta(seconds=5)
    _, done = await relay.run_once(Sink.WEBHOOK)
    assert done == 4
    # The relay stops mid-stream; more traffic; a new relay takes over.
    await relay.close()
    await traffic(client, ALICE, start=False, interims=2, base=3)
    await traffic(client, BOB, start=True, interims=2)
    second = hook_relay(pg_pool, receiver, clock, batch_size=4)
    await second.drain()

    rows = await outbox(db)
    got = receiver.keys()
    assert set(got) == {r["idempotency_key"] for r in rows}
    assert set(got.values()) == {1}  # each exactly once
    assert receiver.bad_signatures == 0
    # Per account, events arrived in outbox order.
    order: dict[str, list[int]] = {}
    for e in receiver.accepted:
        order.setdefault(e["account_key"], []).append(e["id"])
    assert all(ids == sorted(ids) for ids in order.values())
    assert (
        await db.fetchval("SELECT count(*) FROM feed_outbox WHERE webhook_delivered_at IS NULL")
        == 0
    )


async def test_two_relays_share_the_outbox_without_duplicates_or_reordering(
    pg_pool: Pool, subscribers: SubscriberRepository, receiver: Receiver
) -> None:
    clock = RelayClock()
    async with pg_pool.acquire() as conn:
        for i in range(60):
            account = f"K{i % 4}"
            await enqueue(conn, topic="t", key=f"k{i}", account_key=account, payload={"i": i})
    relays = [hook_relay(pg_pool, receiver, clock, batch_size=3) for _ in range(2)]

    async def run(relay: FeedRelay) -> None:
        while await relay.drain():
            pass

    await asyncio.gather(*(run(r) for r in relays))
    await run(relays[0])  # what one skipped while the other held it
    assert receiver.keys() == Counter({f"k{i}": 1 for i in range(60)})
    order: dict[str, list[int]] = {}
    for e in receiver.accepted:
        order.setdefault(e["account_key"], []).append(e["payload"]["i"])
    assert all(ids == sorted(ids) for ids in order.values())
    assert relays[0].delivered + relays[1].delivered == 60


async def test_a_failed_account_holds_back_its_later_events_only(
    pg_pool: Pool,
    subscribers: SubscriberRepository,
    receiver: Receiver,
    db: asyncpg.Connection[asyncpg.Record],
) -> None:
    clock = RelayClock()
    async with pg_pool.acquire() as conn:
        for i in range(3):
            await enqueue(conn, topic="t", key=f"a{i}", account_key="A", payload={"i": i})
        await enqueue(conn, topic="t", key="b0", account_key="B", payload={})
    relay = hook_relay(pg_pool, receiver, clock, batch_size=1)
    receiver.down = True
    assert await relay.run_once(Sink.WEBHOOK) == (1, 0)  # a0 fails
    receiver.down = False
    await relay.drain()
    assert [e["idempotency_key"] for e in receiver.accepted] == ["b0"]
    clock.now += timedelta(seconds=5)
    await relay.drain()
    assert [e["idempotency_key"] for e in receiver.accepted] == ["b0", "a0", "a1", "a2"]


async def test_dead_letter_after_max_attempts_then_replay(
    pg_pool: Pool,
    subscribers: SubscriberRepository,
    receiver: Receiver,
    db: asyncpg.Connection[asyncpg.Record],
) -> None:
    clock = RelayClock()
    async with pg_pool.acquire() as conn:
        await enqueue(conn, topic="t", key="d0", account_key="D", payload={})
        await enqueue(conn, topic="t", key="d1", account_key="D", payload={})
    relay = hook_relay(pg_pool, receiver, clock, max_attempts=3, backoff_base=1, backoff_max=1)
    receiver.down = True
    for _ in range(3):
        await relay.drain()
        clock.now += timedelta(seconds=2)
    assert receiver.rejected == 3
    assert relay.dead == 2
    async with pg_pool.acquire() as conn:
        [state] = await feeds.status(conn, [Sink.WEBHOOK])
    assert (state.backlog, state.dead, state.last_error) == (0, 2, "http_503")
    await relay.drain()
    assert receiver.rejected == 3  # dead letters are not retried
    receiver.down = False
    async with pg_pool.acquire() as conn:
        assert await feeds.replay(conn, since=R0 - timedelta(days=3650), sinks=[Sink.WEBHOOK]) == 2
    await relay.drain()
    assert [e["idempotency_key"] for e in receiver.accepted] == ["d0", "d1"]
    async with pg_pool.acquire() as conn:
        [state] = await feeds.status(conn, [Sink.WEBHOOK])
    assert (state.backlog, state.dead, state.failing) == (0, 0, 0)
    assert state.last_delivery is not None


async def test_background_relay_is_woken_by_notify(
    pg_pool: Pool, client: Nas1, receiver: Receiver, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    # A long poll: only the NOTIFY can wake it in time.
    relay = FeedRelay(pg_pool, [WebhookSink(receiver.url, HOOK_SECRET)], RelaySettings(poll=3600.0))
    relay.start()
    try:
        await traffic(client, CAROL, start=True, interims=1)
        expected = {r["idempotency_key"] for r in await outbox(db)}
        await receiver.wait_for(
            lambda: {e["idempotency_key"] for e in receiver.accepted} >= expected
        )
    finally:
        await relay.close()


# -- NDJSON and views -------------------------------------------------------------


async def test_ndjson_export_appends_one_line_per_event_and_rotates_by_day(
    pg_pool: Pool, client: Nas1, tmp_path: Path, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    clock = RelayClock()
    sink = NdjsonSink(tmp_path / "feed")
    relay = FeedRelay(pg_pool, [sink], clock=clock)
    await traffic(client, ALICE, start=True, interims=1)
    first = await relay.drain()
    clock.now += timedelta(days=1)
    await traffic(client, ALICE, start=False, interims=1, base=1)
    second = await relay.drain()
    day1 = sink.path_for(R0).read_text().splitlines()
    day2 = sink.path_for(clock.now).read_text().splitlines()
    assert (len(day1), len(day2)) == (first, second)
    lines = [json.loads(line) for line in day1 + day2]
    assert [e["idempotency_key"] for e in lines] == [r["idempotency_key"] for r in await outbox(db)]
    assert lines[0]["payload"]["account_ref"] == "ACC-100"
    assert (tmp_path / "feed").stat().st_mode & 0o077 == 0


async def test_views_give_usage_per_account_and_the_events(
    client: Nas1, subscribers: SubscriberRepository, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    await traffic(client, ALICE, start=True, interims=2)
    await traffic(client, BOB, start=True, interims=1)
    await traffic(client, CAROL, start=True, interims=1)
    await subscribers.set(CAROL, status="suspended")
    rows = await db.fetch(
        "SELECT account_key, period, input_octets, output_octets, session_time, sessions"
        " FROM feed_usage WHERE period = 'day' ORDER BY account_key"
    )
    carol = int(await db.fetchval("SELECT id FROM subscribers WHERE account_ref IS NULL"))
    # Alice 2000 + Bob 1000 on the shared account.
    assert [tuple(r) for r in rows] == [
        ("ACC-100", "day", 3000, 300, 900, 2),
        (f"subscriber:{carol}", "day", 1000, 100, 300, 1),
    ]
    hours = await db.fetchval("SELECT sum(input_octets) FROM feed_usage WHERE period = 'hour'")
    assert hours == 4000
    events = await db.fetch("SELECT topic, account_key FROM feed_events")
    assert [tuple(e) for e in events] == [(feeds.STATUS_TOPIC, f"subscriber:{carol}")]


# -- configuration and CLI ---------------------------------------------------------


def test_feeds_config_checks_sinks_url_and_secret(tmp_path: Path) -> None:
    from ispcare_radius.cli.config import ConfigError, feeds_config

    assert feeds_config({}, tmp_path, {}).sinks == ()
    with pytest.raises(ConfigError, match="unknown sink"):
        feeds_config({"sinks": ["kafka"]}, tmp_path, {})
    with pytest.raises(ConfigError, match="webhook_url"):
        feeds_config({"sinks": ["webhook"]}, tmp_path, {})
    with pytest.raises(ConfigError, match="webhook_secret"):
        feeds_config({"sinks": ["webhook"], "webhook_url": "https://b.example/f"}, tmp_path, {})
    config = feeds_config(
        {"sinks": ["webhook", "ndjson"], "webhook_url": "https://b.example/f"},
        tmp_path,
        {"ISPCARE_FEED_WEBHOOK_SECRET": "s" * 16},
    )
    assert config.webhook_secret == Secret("s" * 16)
    assert config.ndjson_dir == tmp_path / "feed"
    assert "ssss" not in repr(config) and "b.example" not in repr(config)


async def test_feed_status_and_replay_commands(
    pg_pool: Pool,
    subscribers: SubscriberRepository,
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from typing import cast

    from ispcare_radius.cli.args import build_parser
    from ispcare_radius.cli.config_sections import FeedsConfig
    from ispcare_radius.cli.feeds import feed_command
    from ispcare_radius.cli.runtime import Store

    clock = RelayClock()
    store = cast(Store, type("S", (), {"pool": pg_pool})())
    config = FeedsConfig(sinks=("webhook",))
    async with pg_pool.acquire() as conn:
        await enqueue(conn, topic="t", key="c0", account_key="C", payload={})
    await hook_relay(pg_pool, receiver, clock).drain()
    parse = build_parser().parse_args
    assert await feed_command(store, config, parse(["feed", "status"]), now=R0) == 0
    out = capsys.readouterr().out.splitlines()
    webhook = next(line.split() for line in out if line.startswith("webhook"))
    ndjson = next(line.split() for line in out if line.startswith("ndjson"))
    assert webhook[1:6] == ["yes", "0", "0", "0", "-"] and ndjson[1:3] == ["no", "1"]
    args = parse(["feed", "replay", "--since", "2000-01-01", "--sink", "webhook"])
    assert await feed_command(store, config, args, now=R0) == 0
    assert "re-queued 1 deliveries (webhook)" in capsys.readouterr().out
    await hook_relay(pg_pool, receiver, clock).drain()
    assert receiver.keys() == Counter({"c0": 2})  # replayed: the receiver dedupes by key


async def test_a_redirect_is_a_failed_delivery_not_a_silent_get() -> None:
    """urllib would follow a 302 to a POST with a body-less GET; the sink refuses it."""
    followed: list[str] = []

    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            followed.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sink = WebhookSink(f"http://127.0.0.1:{server.server_port}/hook", HOOK_SECRET)
        error = await sink.deliver([{"topic": "usage"}], now=datetime.now(UTC))
    finally:
        server.shutdown()
        server.server_close()
    assert error == "http_302"
    assert followed == []
