"""The cached subscriber directory against a real PostgreSQL: hits, misses, TTL, NOTIFY."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from ispcare_radius.aaa.model import SubscriberStatus
from ispcare_radius.aaa.ports import MISS, Miss, StoreUnavailable, SubscriberDirectory
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, clock: Clock
) -> CachedSubscriberDirectory:
    # Its own key cache, as in another process than the repository's.
    return CachedSubscriberDirectory(
        pg_pool, system_keys, DataKeyCache(master_keys), ttl=30.0, negative_ttl=5.0, clock=clock
    )


def test_implements_the_port(directory: CachedSubscriberDirectory) -> None:
    """CachedSubscriberDirectory satisfies aaa.ports.SubscriberDirectory."""
    port: SubscriberDirectory = directory
    assert port is directory


async def test_lookup_decrypts_the_subscriber(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A lookup returns the decrypted subscriber with its plan, password and locks."""
    await PlanRepository(pg_pool).add("p10", download_kbps=10_000, extra_reply=[("Filter-Id", "x")])
    sid = await repo.add(
        "Alice", "pw-alice", plan="p10", mac_lock="02:aa:bb:cc:dd:ee", static_ipv4="192.0.2.9"
    )
    sub = await directory.by_user_name("alice")
    assert sub is not None
    assert sub.id == sid
    assert sub.status is SubscriberStatus.ACTIVE
    assert sub.password is not None and sub.password.equals(b"pw-alice")
    assert sub.plan is not None and sub.plan.name == "p10"
    assert sub.plan.extra_reply == (("Filter-Id", "x"),)
    assert sub.mac_lock == bytes.fromhex("02aabbccddee")
    assert sub.static_ipv4 == ipaddress.IPv4Address("192.0.2.9")


async def test_second_lookup_needs_no_database(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """After a miss, the next lookup is served with the pool terminated (no query possible)."""
    await repo.add("bob", "pw", plan=None)
    first = await directory.by_user_name("bob")
    pg_pool.terminate()
    assert await directory.by_user_name("BOB") == first
    assert (directory.hits, directory.misses) == (1, 1)
    with pytest.raises(StoreUnavailable):
        await directory.by_user_name("someone-not-cached")


async def test_peek_answers_from_memory_only(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool, clock: Clock
) -> None:
    """peek is MISS until a lookup caches the name, then the subscriber (or None for
    a known-unknown name) without the database; expiry makes it MISS again."""
    await repo.add("carol", "pw", plan=None)
    assert directory.peek("carol") is MISS
    assert directory.peek("nobody-here") is MISS
    found = await directory.by_user_name("carol")
    assert await directory.by_user_name("nobody-here") is None
    pg_pool.terminate()
    assert directory.peek("CAROL") == found
    assert directory.peek("nobody-here") is None
    clock.now += 5.1
    assert directory.peek("nobody-here") is MISS
    clock.now += 30
    assert directory.peek("carol") is MISS


async def test_unknown_user_is_none_and_cached_briefly(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, clock: Clock
) -> None:
    """An unknown name gives None, is cached for negative_ttl, then looked up again."""
    assert await directory.by_user_name("ghost") is None
    await repo.add("ghost", "pw", plan=None)  # not listening: no hint reaches the cache
    assert await directory.by_user_name("ghost") is None
    assert directory.misses == 1
    clock.now += 5.1
    found = await directory.by_user_name("ghost")
    assert found is not None and directory.misses == 2


async def test_ttl_bounds_staleness_without_notifications(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, clock: Clock
) -> None:
    """Without NOTIFY a change shows once the TTL has passed, not before."""
    await repo.add("carol", "pw", plan=None)
    assert (await directory.by_user_name("carol")).status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    await repo.set("carol", status="suspended")
    clock.now += 29.0
    assert (await directory.by_user_name("carol")).status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    clock.now += 1.5
    assert (await directory.by_user_name("carol")).status is SubscriberStatus.SUSPENDED  # type: ignore[union-attr]


async def test_notify_invalidates_after_set(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository
) -> None:
    """With LISTEN on, set() makes the next lookup see the new status at once."""
    await repo.add("dave", "pw", plan=None)
    await directory.start_listening()
    try:
        before = await directory.by_user_name("dave")
        assert before is not None and before.status is SubscriberStatus.ACTIVE
        seen = directory.notifications
        await repo.set("dave", status="suspended")
        await asyncio.wait_for(directory.wait_for_notifications(seen + 1), timeout=10)
        after = await directory.by_user_name("dave")
        assert after is not None and after.status is SubscriberStatus.SUSPENDED
        assert directory.misses == 2
    finally:
        await directory.stop()


async def test_notify_clears_negative_entries_on_add(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository
) -> None:
    """With LISTEN on, a subscriber added after a cached "unknown" is found at once."""
    await directory.start_listening()
    try:
        assert await directory.by_user_name("erin") is None
        seen = directory.notifications
        await repo.add("erin", "pw", plan=None)
        await asyncio.wait_for(directory.wait_for_notifications(seen + 1), timeout=10)
        assert await directory.by_user_name("erin") is not None
    finally:
        await directory.stop()


async def test_remove_is_seen_through_notify(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository
) -> None:
    """With LISTEN on, an erased subscriber stops being found at once."""
    await repo.add("frank", "pw", plan=None)
    await directory.start_listening()
    try:
        assert await directory.by_user_name("frank") is not None
        seen = directory.notifications
        await repo.remove("frank")
        await asyncio.wait_for(directory.wait_for_notifications(seen + 1), timeout=10)
        assert await directory.by_user_name("frank") is None
    finally:
        await directory.stop()


async def test_cache_is_bounded(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache, repo: SubscriberRepository
) -> None:
    """The cache never holds more than max_entries; the least recently used goes first."""
    small = CachedSubscriberDirectory(pg_pool, system_keys, data_keys, max_entries=2)
    for name in ("u1", "u2", "u3"):
        await repo.add(name, "pw", plan=None)
    await small.by_user_name("u1")
    await small.by_user_name("u2")
    await small.by_user_name("u1")
    await small.by_user_name("u3")
    assert len(small) == 2
    misses = small.misses
    await small.by_user_name("u1")
    assert small.misses == misses  # u1 was kept, u2 evicted
    await small.by_user_name("u2")
    assert small.misses == misses + 1


async def test_prewarm_loads_active_subscribers(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """prewarm() loads every active subscriber so lookups need no database."""
    for i in range(20):
        await repo.add(f"w{i}", "pw", plan=None, status="active" if i % 2 else "suspended")
    assert await directory.prewarm() == 10
    pg_pool.terminate()
    assert (await directory.by_user_name("w3")) is not None
    assert directory.misses == 0


async def test_tampered_row_is_store_unavailable(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A row whose ciphertext was swapped fails closed as StoreUnavailable, not a crash."""
    await repo.add("ivan", "pw-ivan", plan=None)
    await repo.add("judy", "pw-judy", plan=None)
    await pg_pool.execute(
        "UPDATE subscribers SET password_enc ="
        " (SELECT password_enc FROM subscribers ORDER BY id LIMIT 1)"
        " WHERE id = (SELECT max(id) FROM subscribers)"
    )
    assert await directory.by_user_name("ivan") is not None
    with pytest.raises(StoreUnavailable):
        await directory.by_user_name("judy")


async def test_notify_discards_the_erased_subscribers_data_key(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, repo: SubscriberRepository
) -> None:
    """A removal hint drops the subscriber's unwrapped data key from the server's key cache."""
    server_keys = DataKeyCache(master_keys)  # the repository (CLI) has its own cache
    directory = CachedSubscriberDirectory(pg_pool, system_keys, server_keys, poll_interval=None)
    keep = await repo.add("kept", "pw", plan=None)
    sid = await repo.add("erased", "pw", plan=None)
    await directory.start_listening()
    try:
        assert await directory.by_user_name("erased") is not None
        assert await directory.by_user_name("kept") is not None
        assert server_keys.cached(sid) is not None
        seen = directory.notifications
        await repo.remove("erased")
        await asyncio.wait_for(directory.wait_for_notifications(seen + 1), timeout=10)
        assert server_keys.cached(sid) is None
        assert server_keys.cached(keep) is not None
    finally:
        await directory.stop()


async def test_flood_of_unknown_names_cannot_evict_subscribers(
    pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache, repo: SubscriberRepository
) -> None:
    """Unknown names fill their own bounded cache; cached subscribers stay served."""
    small = CachedSubscriberDirectory(
        pg_pool, system_keys, data_keys, max_entries=2, negative_max_entries=10
    )
    await repo.add("real-1", "pw", plan=None)
    await repo.add("real-2", "pw", plan=None)
    assert await small.by_user_name("real-1") is not None
    assert await small.by_user_name("real-2") is not None
    for i in range(50):
        assert await small.by_user_name(f"random-{i}@example.test") is None
    assert (len(small), small.unknown_cached) == (2, 10)
    pg_pool.terminate()  # from here on, only the cache can answer
    assert await small.by_user_name("real-1") is not None
    assert await small.by_user_name("real-2") is not None
    assert await small.by_user_name("random-49@example.test") is None  # newest kept
    with pytest.raises(StoreUnavailable):
        await small.by_user_name("random-0@example.test")  # oldest evicted


async def test_invalidate_drops_one_subscriber_and_the_unknown_names(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """invalidate(id) drops that subscriber and the unknown names, and keeps other subscribers."""
    a = await repo.add("anna", "pw", plan=None)
    await repo.add("bert", "pw", plan=None)
    for name in ("anna", "bert", "nobody"):
        await directory.by_user_name(name)
    directory.invalidate(a)
    assert (len(directory), directory.unknown_cached) == (1, 0)
    misses = directory.misses
    await directory.by_user_name("bert")
    assert directory.misses == misses
    await directory.by_user_name("anna")
    await directory.by_user_name("nobody")
    assert directory.misses == misses + 2


async def test_poll_sees_an_update_made_without_notify(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A plain-SQL UPDATE that sets updated_at is seen after one poll_changes() call."""
    sid = await repo.add("olga", "pw", plan=None)
    assert await directory.poll_changes() == 0  # nothing cached yet: nothing to check
    before = await directory.by_user_name("olga")
    assert before is not None and before.status is SubscriberStatus.ACTIVE
    await pg_pool.execute(
        "UPDATE subscribers SET status = 'suspended', updated_at = now() WHERE id = $1", sid
    )
    still = await directory.by_user_name("olga")
    assert still is not None and still.status is SubscriberStatus.ACTIVE  # cached, no hint
    assert await directory.poll_changes() == 1
    after = await directory.by_user_name("olga")
    assert after is not None and after.status is SubscriberStatus.SUSPENDED
    assert await directory.poll_changes() == 0  # the same change is dropped once only
    assert (await directory.by_user_name("olga")) == after
    assert directory.hits == 2


async def test_poll_keeps_entries_read_after_their_last_change(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """Subscribers written moments before the cache read them (a bulk import just
    before start) stay cached through polls: only a newer row version evicts."""
    for n in range(20):
        await repo.add(f"fresh-{n}", "pw", plan=None)
    assert await directory.prewarm() == 20
    await directory.poll_changes()
    assert await directory.poll_changes() == 0
    assert all(not isinstance(directory.peek(f"fresh-{n}"), Miss) for n in range(20))
    await pg_pool.execute(
        "UPDATE subscribers SET status = 'suspended', updated_at = now()"
        " WHERE id = (SELECT subscriber_id FROM subscriber_lookup LIMIT 1)"
    )
    assert await directory.poll_changes() == 1
    assert sum(isinstance(directory.peek(f"fresh-{n}"), Miss) for n in range(20)) == 1


async def test_start_listening_starts_the_poll_loop(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, repo: SubscriberRepository
) -> None:
    """start_listening() starts the poll loop, which drops a row changed without NOTIFY."""
    directory = CachedSubscriberDirectory(
        pg_pool, system_keys, DataKeyCache(master_keys), poll_interval=0.01
    )
    sid = await repo.add("pia", "pw", plan=None)
    await directory.start_listening()
    try:
        assert await directory.by_user_name("pia") is not None
        await pg_pool.execute(
            "UPDATE subscribers SET status = 'expired', updated_at = now() WHERE id = $1", sid
        )
        await asyncio.wait_for(directory.wait_for_polls(directory.polls + 2), timeout=10)
        after = await directory.by_user_name("pia")
        assert after is not None and after.status is SubscriberStatus.EXPIRED
    finally:
        await directory.stop()


async def test_repointed_lookup_row_finds_nobody(
    directory: CachedSubscriberDirectory, repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A user-name lookup row repointed to another subscriber gives None, not that subscriber."""
    a = await repo.add("quinn", "pw-q", plan=None)
    b = await repo.add("rosa", "pw-r", plan=None)
    await pg_pool.execute(
        "UPDATE subscriber_lookup SET subscriber_id = $2"
        " WHERE kind = 'user_name' AND subscriber_id = $1",
        a,
        b,
    )
    assert await directory.by_user_name("quinn") is None
    assert directory.mismatches == 1
    found = await directory.by_user_name("rosa")
    assert found is not None and found.id == b
    directory.clear()
    assert await directory.prewarm() == 1  # rosa, once; the repointed row is skipped
    assert directory.mismatches == 2
