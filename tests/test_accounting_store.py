"""Durable accounting against a real PostgreSQL: group commit, idempotency, failure, encryption."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ispcare_radius.aaa.accounting import (
    AccountingHandler,
    AcctOutcome,
    AcctRecord,
    AcctStatus,
    Recorded,
    decode_accounting,
)
from ispcare_radius.aaa.model import Nas
from ispcare_radius.aaa.ports import AccountingRecorder, StoreUnavailable
from ispcare_radius.aaa.request import Request
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.authenticator import build_request
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import encode_attributes, parse
from ispcare_radius.store.accounting import (
    AccountingWriter,
    prune_record_keys,
    record_aad,
    session_blind,
)
from ispcare_radius.store.db import Pool, connect
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.partitions import ensure_partitions
from ispcare_radius.store.subscribers import SubscriberRepository
from tests.support.cutproxy import CutProxy

SECRET = "acct-secret-55"
USER = "acct-user-1"
T0 = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
RESPONSE = int(Code.ACCOUNTING_RESPONSE)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def acct(nas: Nas, attrs: list[tuple[int, bytes]], ident: int = 1) -> Request:
    data = build_request(
        int(Code.ACCOUNTING_REQUEST),
        ident,
        encode_attributes(attrs),
        SECRET.encode(),
        message_authenticator=False,
    )
    return Request(parse(data), nas, ("127.0.0.1", 40000 + ident), 0.0, None)


def session(
    status: AcctStatus,
    sid: bytes = b"S-0001",
    *,
    user: bytes = USER.encode(),
    giga_in: int = 0,
    octets_in: int = 0,
    giga_out: int = 0,
    octets_out: int = 0,
    seconds: int = 0,
    delay: int = 0,
) -> list[tuple[int, bytes]]:
    attrs = [
        (40, u32(status)),
        (44, sid),
        (1, user),
        (4, bytes((198, 51, 100, 1))),
        (31, b"02-AA-BB-CC-DD-EE"),
        (8, bytes((100, 64, 1, 2))),
        (42, u32(octets_in)),
        (52, u32(giga_in)),
        (43, u32(octets_out)),
        (53, u32(giga_out)),
        (46, u32(seconds)),
        (41, u32(delay)),
    ]
    if status is AcctStatus.STOP:
        attrs.append((49, u32(1)))
    return attrs


@pytest.fixture
async def nas(pg_pool: Pool, system_keys: SystemKeys) -> Nas:
    return await NasRepository(pg_pool, system_keys).add("acct-nas", "127.0.0.1", SECRET)


@pytest.fixture
async def subscriber_id(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> int:
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    return await repo.add(USER, "pw-1", plan=None)


@pytest.fixture
async def writer(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> AsyncIterator[AccountingWriter]:
    # Its own key cache: the writer must be able to fetch subscriber keys itself.
    w = AccountingWriter(pg_pool, system_keys, DataKeyCache(master_keys))
    yield w
    await w.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def handler(
    writer: AccountingWriter,
    pg_pool: Pool,
    system_keys: SystemKeys,
    data_keys: DataKeyCache,
    clock: Clock,
) -> AccountingHandler:
    directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys)
    return AccountingHandler(recorder=writer, directory=directory, clock=clock)


@pytest.fixture
async def other(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A separate connection, outside the writer's pool, to see only committed rows."""
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def rows(conn: asyncpg.Connection[asyncpg.Record]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM acct_records ORDER BY event_time, status_type")


def test_writer_implements_the_port(writer: AccountingWriter) -> None:
    """AccountingWriter satisfies aaa.ports.AccountingRecorder."""
    recorder: AccountingRecorder = writer
    assert recorder is writer


async def test_start_interim_stop_are_stored_with_64_bit_counters(
    handler: AccountingHandler,
    nas: Nas,
    subscriber_id: int,
    clock: Clock,
    other: asyncpg.Connection[asyncpg.Record],
    system_keys: SystemKeys,
    data_keys: DataKeyCache,
) -> None:
    """A session's Start, Interim-Update and Stop land as three rows with gigaword counters."""
    steps = [
        session(AcctStatus.START),
        session(AcctStatus.INTERIM_UPDATE, giga_in=1, octets_in=10, octets_out=77, seconds=300),
        session(AcctStatus.STOP, giga_in=3, octets_in=5, giga_out=1, octets_out=1, seconds=615),
    ]
    for i, attrs in enumerate(steps):
        clock.now += 300
        reply = await handler.handle(acct(nas, attrs, i))
        assert (reply.code, reply.reason) == (RESPONSE, "recorded")
        assert reply.user_name == USER
    found = await rows(other)
    assert [r["status_type"] for r in found] == [1, 3, 2]
    assert [(r["input_octets"], r["output_octets"]) for r in found] == [
        (0, 0),
        (2**32 + 10, 77),
        (3 * 2**32 + 5, 2**32 + 1),
    ]
    assert [r["session_time"] for r in found] == [0, 300, 615]
    assert [r["terminate_cause"] for r in found] == [None, None, 1]
    assert {r["subscriber_id"] for r in found} == {subscriber_id}
    assert {r["attribution"] for r in found} == {"subscriber"}
    blind = session_blind(system_keys.blind_index, nas.id, b"S-0001")
    assert {bytes(r["session_blind"]) for r in found} == {blind}
    # Sealed with the subscriber's key, bound to the row; nothing in clear.
    cipher = data_keys.cached(subscriber_id)
    assert cipher is not None
    row = found[2]
    opened = {
        col: cipher.open(bytes(row[f"{col}_enc"]), record_aad(col, row["id"], subscriber_id))
        for col in ("session_id", "user_name", "calling_station_id", "framed_ip", "nas_ip")
    }
    assert opened == {
        "session_id": b"S-0001",
        "user_name": USER.encode(),
        "calling_station_id": b"02-AA-BB-CC-DD-EE",
        "framed_ip": b"100.64.1.2",
        "nas_ip": b"198.51.100.1",
    }
    raw = await other.fetchval("SELECT string_agg(t::text, '') FROM acct_records t")
    assert USER not in raw and "S-0001" not in raw and "100.64.1.2" not in raw


async def test_reply_waits_for_the_commit(
    handler: AccountingHandler,
    nas: Nas,
    subscriber_id: int,
    other: asyncpg.Connection[asyncpg.Record],
) -> None:
    """While another transaction blocks the write, no reply comes; after it, reply and row do."""
    async with other.transaction():
        await other.execute("LOCK TABLE acct_records IN EXCLUSIVE MODE")
        task = asyncio.create_task(handler.handle(acct(nas, session(AcctStatus.START))))
        async with asyncio.timeout(10):
            # pg_locks is read live (not a per-transaction snapshot like pg_stat_activity).
            while not await other.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE NOT granted AND relation = 'acct_records'::regclass"
            ):
                pass
        assert not task.done()
    reply = await task
    assert (reply.code, reply.reason) == (RESPONSE, "recorded")
    assert len(await rows(other)) == 1


async def test_concurrent_records_share_few_commits(
    writer: AccountingWriter, handler: AccountingHandler, nas: Nas, subscriber_id: int
) -> None:
    """Two hundred concurrent requests are committed in a handful of batches, not one each."""
    replies = await asyncio.gather(
        *(
            handler.handle(acct(nas, session(AcctStatus.START, b"G-%d" % i), i % 256))
            for i in range(200)
        )
    )
    assert {r.code for r in replies} == {RESPONSE}
    assert writer.stored == 200
    assert 1 <= writer.batches <= 10


async def test_retransmission_with_new_id_is_stored_once(
    handler: AccountingHandler,
    nas: Nas,
    subscriber_id: int,
    clock: Clock,
    other: asyncpg.Connection[asyncpg.Record],
) -> None:
    """The same event resent with a new id and a later Acct-Delay-Time: one row, both answered."""
    first = await handler.handle(acct(nas, session(AcctStatus.STOP, seconds=900), 1))
    clock.now += 12
    again = await handler.handle(acct(nas, session(AcctStatus.STOP, seconds=900, delay=12), 2))
    assert (first.code, first.reason) == (RESPONSE, "recorded")
    assert (again.code, again.reason) == (RESPONSE, "duplicate")
    assert len(await rows(other)) == 1
    assert handler.counts[AcctOutcome.DUPLICATE] == 1


async def test_duplicates_in_one_batch_are_stored_once(
    handler: AccountingHandler, nas: Nas, other: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Identical requests arriving together are written once and all answered."""
    replies = await asyncio.gather(
        *(handler.handle(acct(nas, session(AcctStatus.INTERIM_UPDATE), i)) for i in range(5))
    )
    assert [r.code for r in replies] == [RESPONSE] * 5
    assert sorted(r.reason for r in replies) == ["duplicate"] * 4 + ["recorded"]
    assert len(await rows(other)) == 1


async def test_same_content_far_apart_is_two_events(
    handler: AccountingHandler, nas: Nas, clock: Clock, other: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Two identical Accounting-On without Event-Timestamp an hour apart are two rows."""
    on = [(40, u32(AcctStatus.ACCOUNTING_ON)), (4, bytes((198, 51, 100, 1)))]
    assert (await handler.handle(acct(nas, on, 1))).reason == "recorded"
    clock.now += 3600
    assert (await handler.handle(acct(nas, on, 2))).reason == "recorded"
    clock.now += 20
    assert (await handler.handle(acct(nas, on, 3))).reason == "duplicate"
    found = await rows(other)
    assert len(found) == 2
    assert {r["attribution"] for r in found} == {"no_user_name"}
    assert {r["subscriber_id"] for r in found} == {0}
    assert {r["session_blind"] for r in found} == {None}


async def test_unknown_user_is_stored_under_subscriber_zero(
    handler: AccountingHandler,
    nas: Nas,
    other: asyncpg.Connection[asyncpg.Record],
    system_keys: SystemKeys,
) -> None:
    """A record for no known subscriber is kept as subscriber 0, sealed under the epoch key."""
    reply = await handler.handle(acct(nas, session(AcctStatus.START, user=b"nobody-9")))
    assert reply.code == RESPONSE
    (row,) = await rows(other)
    assert (row["subscriber_id"], row["attribution"]) == (0, "unknown_user")
    name = system_keys.epoch.open(
        bytes(row["user_name_enc"]), record_aad("user_name", row["id"], 0)
    )
    assert name == b"nobody-9"


async def test_directory_failure_still_records_as_lookup_failed(
    writer: AccountingWriter,
    nas: Nas,
    subscriber_id: int,
    pg_dsn: str,
    system_keys: SystemKeys,
    data_keys: DataKeyCache,
    other: asyncpg.Connection[asyncpg.Record],
) -> None:
    """When only the subscriber lookup fails, the record is stored unattributed and answered."""
    dead = await connect(pg_dsn, min_size=1, max_size=1)
    dead.terminate()
    directory = CachedSubscriberDirectory(dead, system_keys, data_keys)
    handler = AccountingHandler(recorder=writer, directory=directory, clock=Clock())
    reply = await handler.handle(acct(nas, session(AcctStatus.START)))
    assert (reply.code, reply.reason) == (RESPONSE, "recorded")
    (row,) = await rows(other)
    assert (row["subscriber_id"], row["attribution"]) == (0, "lookup_failed")
    name = system_keys.epoch.open(
        bytes(row["user_name_enc"]), record_aad("user_name", row["id"], 0)
    )
    assert name == USER.encode()


async def test_record_for_an_erased_subscriber_is_not_kept_under_their_id(
    handler: AccountingHandler,
    nas: Nas,
    subscriber_id: int,
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    other: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Once the subscriber is erased (by another process, so their key is still
    cached here), a record that arrives for them is stored unattributed."""
    assert (await handler.handle(acct(nas, session(AcctStatus.START)))).code == RESPONSE
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, DataKeyCache(master_keys))
    assert await repo.remove(USER)  # the erasure also deletes the first record
    reply = await handler.handle(acct(nas, session(AcctStatus.STOP, seconds=60)))
    assert reply.code == RESPONSE
    stored = await rows(other)
    assert [r["subscriber_id"] for r in stored] == [0]
    assert stored[0]["attribution"] == "lookup_failed"


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ([(44, b"S-1"), (1, b"u")], "no_status_type"),
        ([(40, u32(AcctStatus.START)), (1, b"u")], "no_session_id"),
        ([(40, u32(AcctStatus.STOP)), (44, b"S-1"), (46, b"\x00\x01")], "malformed_attribute"),
    ],
)
async def test_malformed_request_is_neither_answered_nor_stored(
    handler: AccountingHandler,
    nas: Nas,
    other: asyncpg.Connection[asyncpg.Record],
    attrs: list[tuple[int, bytes]],
    reason: str,
) -> None:
    """A request that cannot be recorded gets no reply, its reason, a count, and no row."""
    reply = await handler.handle(acct(nas, attrs))
    assert (reply.code, reply.reason) == (None, reason)
    assert handler.counts[AcctOutcome(reason)] == 1
    assert await rows(other) == []


async def test_database_gone_means_no_reply_and_no_row(
    handler: AccountingHandler,
    nas: Nas,
    subscriber_id: int,
    pg_pool: Pool,
    other: asyncpg.Connection[asyncpg.Record],
) -> None:
    """With the pool terminated: no reply, nothing written, nothing raised."""
    pg_pool.terminate()
    reply = await handler.handle(acct(nas, session(AcctStatus.START)))
    assert (reply.code, reply.reason) == (None, "store_unavailable")
    assert handler.counts[AcctOutcome.STORE_UNAVAILABLE] == 1
    assert await rows(other) == []
    assert await other.fetchval("SELECT count(*) FROM acct_record_keys") == 0


async def test_connection_cut_mid_write_then_retry_stores_once(
    pg_dsn: str,
    pg_pool: Pool,
    nas: Nas,
    subscriber_id: int,
    system_keys: SystemKeys,
    data_keys: DataKeyCache,
    other: asyncpg.Connection[asyncpg.Record],
) -> None:
    """A write whose connection dies is not answered; the NAS's retry is stored exactly once."""
    proxy = CutProxy(pg_dsn)
    proxied = await connect(await proxy.start(), min_size=1, max_size=2)
    writer = AccountingWriter(proxied, system_keys, data_keys)
    directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys)
    handler = AccountingHandler(recorder=writer, directory=directory, clock=Clock())
    try:
        await directory.by_user_name(USER)  # cached: the next query is the write
        proxy.cut_on_next_query()
        reply = await handler.handle(acct(nas, session(AcctStatus.STOP, seconds=5), 1))
        assert proxy.cuts == 1
        assert (reply.code, reply.reason) == (None, "store_unavailable")
        assert await rows(other) == []
        retry = await handler.handle(acct(nas, session(AcctStatus.STOP, seconds=5, delay=3), 2))
        assert (retry.code, retry.reason) == (RESPONSE, "recorded")
        assert len(await rows(other)) == 1
    finally:
        await writer.close()
        proxied.terminate()
        await proxy.close()


async def test_a_refused_row_fails_alone(
    writer: AccountingWriter, nas: Nas, other: asyncpg.Connection[asyncpg.Record]
) -> None:
    """A record the database cannot take fails by itself; its batch-mates are stored."""
    good = [
        decode_accounting(acct(nas, session(AcctStatus.START, b"R-%d" % i)), now=1e9)
        for i in range(7)
    ]
    assert all(isinstance(g, AcctRecord) for g in good)
    records = [g for g in good if isinstance(g, AcctRecord)]
    bad = replace(records[0], content_digest=b"\x01" * 32, input_octets=2**63)
    results = await asyncio.gather(
        *(writer.record(r) for r in [*records[:3], bad, *records[3:]]), return_exceptions=True
    )
    assert isinstance(results[3], StoreUnavailable)
    assert [r for i, r in enumerate(results) if i != 3] == [Recorded.STORED] * 7
    assert len(await rows(other)) == 7
    assert writer.failed == 1


async def test_over_max_pending_is_refused_at_once(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache, nas: Nas
) -> None:
    """Beyond max_pending records in flight, record() raises StoreUnavailable without waiting."""
    writer = AccountingWriter(pg_pool, system_keys, data_keys, max_pending=2)
    records = [
        decode_accounting(acct(nas, session(AcctStatus.START, b"P-%d" % i)), now=1e9)
        for i in range(3)
    ]
    try:
        results = await asyncio.gather(
            *(writer.record(r) for r in records if isinstance(r, AcctRecord)),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert results[:2] == [Recorded.STORED, Recorded.STORED]
    assert isinstance(results[2], StoreUnavailable)
    assert writer.rejected == 1


async def test_pruned_keys_no_longer_deduplicate(
    handler: AccountingHandler, nas: Nas, pg_pool: Pool, other: asyncpg.Connection[asyncpg.Record]
) -> None:
    """After its key is pruned, a late resend of an event is stored again (the documented limit)."""
    attrs = session(AcctStatus.STOP, b"K-1", seconds=60)
    assert (await handler.handle(acct(nas, attrs, 1))).reason == "recorded"
    assert await prune_record_keys(pg_pool, before=T0) == 0
    assert await prune_record_keys(pg_pool, before=T0 + timedelta(seconds=1)) == 1
    assert (await handler.handle(acct(nas, attrs, 2))).reason == "recorded"
    assert len(await rows(other)) == 2


async def test_daily_partitions_take_accounting_rows(
    handler: AccountingHandler, nas: Nas, pg_pool: Pool, other: asyncpg.Connection[asyncpg.Record]
) -> None:
    """acct_records gets daily partitions; rows first in DEFAULT move to their day."""
    assert (await handler.handle(acct(nas, session(AcctStatus.START)))).code == RESPONSE
    created = await ensure_partitions(pg_pool, now=T0, days_ahead=1)
    assert "acct_records_p20300506" in created and "acct_records_p20300507" in created
    assert await other.fetchval("SELECT count(*) FROM acct_records_default") == 0
    assert await other.fetchval("SELECT count(*) FROM acct_records_p20300506") == 1


async def test_same_content_far_apart_in_one_batch_is_two_events(
    writer: AccountingWriter, nas: Nas, other: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Two records with one key but event times an hour apart, sent together, are both stored."""
    on = acct(nas, [(40, u32(AcctStatus.ACCOUNTING_ON))])
    early = decode_accounting(on, now=T0.timestamp())
    late = decode_accounting(on, now=T0.timestamp() + 3600)
    assert isinstance(early, AcctRecord) and isinstance(late, AcctRecord)
    assert early.content_digest == late.content_digest
    results = await asyncio.gather(writer.record(early), writer.record(late))
    assert list(results) == [Recorded.STORED, Recorded.STORED]
    assert len(await rows(other)) == 2
