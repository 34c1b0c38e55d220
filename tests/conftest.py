"""Shared fixtures: a real PostgreSQL per test (own database), master and system keys.

``ISPCARE_TEST_DSN`` points the tests at an existing server (a superuser DSN,
e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``); without it one
embedded PostgreSQL (pgserver) is started per test session in a temp dir.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ispcare_radius.privacy.keys import MasterKeys, init_key_file, load_master_keys
from ispcare_radius.store.db import Pool, connect
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys, load_system_keys
from ispcare_radius.store.migrate import migrate


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` with its database name replaced (URL form, any host/socket)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A superuser DSN on a real PostgreSQL, for creating per-test databases."""
    configured = os.environ.get("ISPCARE_TEST_DSN")
    if configured:
        yield configured
        return
    from ispcare_radius.store.embedded import start_embedded

    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemp
    # directories and would delete the data of a server still running.
    base = Path(tempfile.mkdtemp(prefix="ispcare-test-pg-"))
    server = start_embedded(base / "data")
    try:
        yield server.dsn
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def pg_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A DSN on a fresh, empty database, dropped after the test."""
    name = f"ispcare_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_with_database(pg_admin_dsn, name)
    finally:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def pg_pool(pg_dsn: str) -> AsyncIterator[Pool]:
    """A migrated asyncpg pool on the test's own database."""
    pool = await connect(pg_dsn, min_size=1, max_size=5)
    try:
        await migrate(pool)
        yield pool
    finally:
        if not pool.is_closing():
            pool.terminate()


@pytest.fixture
def master_keys(tmp_path: Path) -> MasterKeys:
    """Fresh master keys from a new key file (mode 0400) in the test's temp dir."""
    path = tmp_path / "keys" / "master.json"
    init_key_file(path)
    return load_master_keys(path, env={})


@pytest.fixture
async def system_keys(pg_pool: Pool, master_keys: MasterKeys) -> SystemKeys:
    """System keys created in, and loaded from, the test database."""
    return await load_system_keys(pg_pool, master_keys)


@pytest.fixture
def data_keys(master_keys: MasterKeys) -> DataKeyCache:
    """An empty cache of subscriber data keys under ``master_keys``."""
    return DataKeyCache(master_keys, max_entries=10_000)
