"""Migrations and the keyring against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.keys import MasterKeys, init_key_file, load_master_keys
from ispcare_radius.store.db import Pool, connect
from ispcare_radius.store.keyring import load_system_keys
from ispcare_radius.store.migrate import available_migrations, migrate


async def test_second_migrate_applies_nothing(pg_pool: Pool) -> None:
    """Re-running migrate() after the fixture migrated applies no file and keeps the record."""
    assert await migrate(pg_pool) == []
    rows = await pg_pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [m.version for m in available_migrations()]


async def test_concurrent_migrations_apply_once(pg_dsn: str) -> None:
    """Two concurrent migrate() calls on a fresh database both succeed and only one applies."""
    pools = [await connect(pg_dsn, min_size=1, max_size=2) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
    finally:
        for p in pools:
            await p.close()
    expected = [m.version for m in available_migrations()]
    assert sorted(results, key=len) == [[], expected]


async def test_schema_has_every_table(pg_pool: Pool) -> None:
    """The first migration creates the tables of DESIGN section 4 this store uses."""
    rows = await pg_pool.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p')"
    )
    names = {r["relname"] for r in rows}
    assert {
        "system_keys",
        "nas",
        "plans",
        "subscribers",
        "subscriber_lookup",
        "auth_events",
        "auth_events_default",
        "auth_rejects_unknown",
        "audit_log",
    } <= names


async def test_system_keys_created_once_and_shared(pg_pool: Pool, master_keys: MasterKeys) -> None:
    """Concurrent first loads of the system keys agree on one key per name."""
    first, second = await asyncio.gather(
        load_system_keys(pg_pool, master_keys), load_system_keys(pg_pool, master_keys)
    )
    assert first.blind_index.full(b"x") == second.blind_index.full(b"x")
    assert first.pseudonymizer("x") == second.pseudonymizer("x")
    assert second.nas.open(first.nas.seal(b"v", b"a"), b"a") == b"v"
    assert second.epoch.open(first.epoch.seal(b"v", b"a"), b"a") == b"v"
    count = await pg_pool.fetchval("SELECT count(*) FROM system_keys")
    assert count == 3
    # Epoch keys: the current period's and the next one's (migration 0010).
    assert await pg_pool.fetchval("SELECT count(*) FROM epoch_keys") == 2


async def test_system_keys_are_stored_wrapped(
    pg_pool: Pool, master_keys: MasterKeys, tmp_path: Path
) -> None:
    """System keys are stored wrapped: another master key cannot unwrap them."""
    await load_system_keys(pg_pool, master_keys)
    other = tmp_path / "other.json"
    init_key_file(other)
    with pytest.raises(DecryptError):
        await load_system_keys(pg_pool, load_master_keys(other, env={}))
