"""Schema migrations: numbered SQL files applied once each, in order, under a lock.

Imports only store.db; never server or cli.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from ispcare_radius.store.db import Pool, acquire

# Any 64-bit constant shared by every process that migrates this database;
# pg_advisory_lock serialises concurrent callers (several workers starting).
_ADVISORY_LOCK_KEY = 0x1597_CA7E_0001
_TIMEOUT = 600.0
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migration files shipped in ``store/migrations``, sorted by number."""
    found: list[Migration] = []
    for entry in resources.files("ispcare_radius.store").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migration files share a number")
    return found


async def migrate(pool: Pool) -> list[int]:
    """Apply the migrations not yet recorded; return the versions applied now.

    Each file runs in its own transaction together with its row in
    ``schema_migrations``; concurrent callers wait on an advisory lock, so a
    second caller finds everything applied and returns ``[]``.
    """
    migrations = available_migrations()
    applied_now: list[int] = []
    async with acquire(pool, timeout=60.0) as conn:
        # Waiting for another migrating process may outlast the pool's command timeout.
        await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY, timeout=_TIMEOUT)
        try:
            await conn.execute(_CREATE_TABLE)
            rows = await conn.fetch("SELECT version FROM schema_migrations")
            done = {int(r["version"]) for r in rows}
            for migration in migrations:
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql, timeout=_TIMEOUT)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                applied_now.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now
