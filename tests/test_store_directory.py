"""The cached subscriber directory against a real PostgreSQL: hits, misses, TTL, NOTIFY."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from ispcare_radius.aaa.model import SubscriberStatus
from ispcare_radius.aaa.ports import StoreUnavailable, SubscriberDirectory
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
