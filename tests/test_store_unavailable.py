"""Database failures reach callers as StoreUnavailable, never as asyncpg exceptions."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Pool, acquire, connect
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys, load_system_keys
from ispcare_radius.store.migrate import migrate
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository

Call = Callable[[], Awaitable[Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def calls(
    pool: Pool, keys: SystemKeys, masters: MasterKeys, data_keys: DataKeyCache
) -> dict[str, Call]:
    subs = SubscriberRepository(pool, keys, masters, data_keys)
    nas = NasRepository(pool, keys)
    plans = PlanRepository(pool)
    directory = CachedSubscriberDirectory(pool, keys, data_keys)
    return {
        "subscriber.add": lambda: subs.add("u", "p", plan=None),
        "subscriber.get": lambda: subs.get("u"),
        "subscriber.set": lambda: subs.set("u", status="suspended"),
        "subscriber.list": lambda: subs.list(),
        "subscriber.remove": lambda: subs.remove("u"),
        "nas.add": lambda: nas.add("n", "192.0.2.1", "s"),
        "nas.list": lambda: nas.list(),
        "plans.get": lambda: plans.get("p"),
        "plans.add": lambda: plans.add("p"),
        "directory.by_user_name": lambda: directory.by_user_name("u"),
        "directory.prewarm": lambda: directory.prewarm(),
        "directory.start_listening": lambda: directory.start_listening(),
        "keys.load": lambda: load_system_keys(pool, masters),
        "migrate": lambda: migrate(pool),
    }


async def assert_all_unavailable(table: dict[str, Call]) -> None:
    for name, call in table.items():
        with pytest.raises(StoreUnavailable) as info:
            await call()
        assert not isinstance(info.value, asyncpg.PostgresError), name


async def test_closed_pool(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> None:
    """Every repository call on a terminated pool raises StoreUnavailable."""
    pg_pool.terminate()
    await assert_all_unavailable(calls(pg_pool, system_keys, master_keys, data_keys))


async def test_backends_terminated_by_the_server(
    pg_pool: Pool, pg_dsn: str, system_keys: SystemKeys, master_keys: MasterKeys
) -> None:
    """Connections killed with pg_terminate_backend give StoreUnavailable, not asyncpg errors."""
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, DataKeyCache(master_keys))
    await repo.add("alive", "p", plan=None)
    killer = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(StoreUnavailable):
            async with acquire(pg_pool) as conn:
                await killer.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                await conn.fetchval("SELECT 1")
        # Idle pooled connections killed: a call either reconnects or says unavailable.
        await killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        with contextlib.suppress(StoreUnavailable):
            await repo.get("alive")
    finally:
        await killer.close()
    # The pool replaces the dead connection: the next call works again.
    assert await repo.get("alive") is not None


async def test_nothing_listening(
    system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> None:
    """connect() and every call on a lazy pool to a closed port raise StoreUnavailable."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(StoreUnavailable):
        await connect(dsn)
    lazy = await connect(dsn, min_size=0)
    try:
        await assert_all_unavailable(calls(lazy, system_keys, master_keys, data_keys))
    finally:
        await lazy.close()


async def test_query_timeout(pg_dsn: str) -> None:
    """A query running past command_timeout raises StoreUnavailable."""
    pool = await connect(pg_dsn, min_size=1, max_size=1, command_timeout=0.2)
    try:
        with pytest.raises(StoreUnavailable):
            async with acquire(pool) as conn:
                await conn.execute("SELECT pg_sleep(5)")
    finally:
        pool.terminate()


async def test_programming_errors_are_not_masked(pg_pool: Pool) -> None:
    """A wrong query stays an asyncpg error: only unavailability is mapped."""
    with pytest.raises(asyncpg.UndefinedTableError):
        async with acquire(pg_pool) as conn:
            await conn.execute("SELECT * FROM no_such_table")
    with pytest.raises(asyncpg.InterfaceError):
        async with acquire(pg_pool) as conn:
            await conn.execute("SELECT $1::int", 1, 2)


def test_messages_hold_no_dsn() -> None:
    """StoreUnavailable messages name the failure class only."""
    from ispcare_radius.store.db import is_unavailable

    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(TimeoutError())
    assert not is_unavailable(ValueError())
