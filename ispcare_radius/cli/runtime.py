"""Opens what every command needs: the database (DSN or embedded), keys, repositories.

Part of the composition root; the only place that knows both store and privacy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from ispcare_radius.cli.config import Config, ConfigError
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.keys import KeyFileError, MasterKeys, init_key_file, load_master_keys
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.store.db import connect
from ispcare_radius.store.embedded import EmbeddedPostgres, start_embedded
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys, load_system_keys
from ispcare_radius.store.migrate import migrate
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository


def load_dictionaries(dirs: tuple[Path, ...]) -> Dictionary:
    """Every dictionary directory's top ``dictionary`` file, in order."""
    paths = []
    for d in dirs:
        top = d / "dictionary" if d.is_dir() else d
        if not top.exists():
            raise ConfigError(f"no dictionary file in {d}")
        paths.append(top)
    dictionary, warnings = load_dictionary(paths)
    log = structlog.get_logger("ispcare_radius.dictionary")
    for w in warnings[:20]:
        log.warning("dictionary_line_skipped", detail=w)
    if len(warnings) > 20:
        log.warning("dictionary_lines_skipped", count=len(warnings))
    return dictionary


@dataclass
class Store:
    pool: asyncpg.Pool
    dsn: str
    masters: MasterKeys
    keys: SystemKeys
    data_keys: DataKeyCache
    nas: NasRepository
    plans: PlanRepository
    subscribers: SubscriberRepository
    applied_migrations: list[int]


def read_master_keys(path: Path, *, create: bool) -> MasterKeys:
    """The master keys; with ``create``, a missing key file is made first."""
    import os

    if create and not path.exists() and not os.environ.get("ISPCARE_MASTER_KEY"):
        init_key_file(path)
    try:
        return load_master_keys(path if path.exists() else None, env=os.environ)
    except KeyFileError as exc:
        raise ConfigError(f"{exc} (create one with 'ispcare-radius keys init')") from None


async def database_dsn(config: Config) -> tuple[str, EmbeddedPostgres | None]:
    """The configured DSN, or an embedded PostgreSQL started in the state directory."""
    if config.database.dsn:
        return config.database.dsn, None
    embedded = await asyncio.to_thread(start_embedded, config.database.embedded_dir)
    return embedded.dsn, embedded


@asynccontextmanager
async def open_store(config: Config, *, create_master_key: bool = False) -> AsyncIterator[Store]:
    """Connect, migrate and load keys; close everything on exit."""
    masters = read_master_keys(config.master_key_file, create=create_master_key)
    dsn, embedded = await database_dsn(config)
    try:
        try:
            pool = await connect(
                dsn,
                min_size=config.database.pool_min,
                max_size=config.database.pool_max,
                command_timeout=config.database.command_timeout,
            )
        except ValueError:  # asyncpg's message may quote the DSN, password included
            raise ConfigError("the database DSN is not valid") from None
        except asyncpg.InvalidAuthorizationSpecificationError:
            raise ConfigError("the database refused the DSN's user or password") from None
        except asyncpg.InvalidCatalogNameError:
            raise ConfigError("the DSN's database does not exist") from None
        try:
            applied = await migrate(pool)
            try:
                keys = await load_system_keys(pool, masters)
            except DecryptError:
                raise ConfigError(
                    "the master key does not open this database's keys (wrong key file?)"
                ) from None
            # After 'keys rotate' added a master key version, re-read the key
            # file on meeting it (store/keyring.py DataKeyCache).
            data_keys = DataKeyCache(
                masters, reload=lambda: read_master_keys(config.master_key_file, create=False)
            )
            yield Store(
                pool=pool,
                dsn=dsn,
                masters=masters,
                keys=keys,
                data_keys=data_keys,
                nas=NasRepository(pool, keys),
                plans=PlanRepository(pool),
                subscribers=SubscriberRepository(pool, keys, masters, data_keys),
                applied_migrations=applied,
            )
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
