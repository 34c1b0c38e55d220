"""Connection pool and the one mapping of database failures to StoreUnavailable.

Owns asyncpg pool creation and error translation for every repository. May
import aaa (ports) but never server or cli.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ispcare_radius.aaa.ports import StoreUnavailable

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# SQLSTATE classes that mean "the database cannot answer now", not "your query
# is wrong": 08 connection exception, 28 invalid authorization specification
# (role gone or not allowed to log in), 3D invalid catalog name (database
# missing or renamed), 40 transaction rollback (serialization failure,
# deadlock, 40001 recovery conflict on a standby), 53 insufficient resources
# (too many connections, disk full), 57 operator intervention (shutdown,
# statement timeout), 58 system error (I/O), XX internal error (corruption).
# Matched by SQLSTATE only (PostgreSQL Appendix A), never by message text.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58", "XX"})

DEFAULT_ACQUIRE_TIMEOUT = 5.0


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable, by class or SQLSTATE."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    # TimeoutError covers command_timeout and acquire timeouts; OSError covers
    # refused and reset TCP/Unix-socket connections.
    return isinstance(exc, TimeoutError | OSError)


def _is_closed(conn: Connection) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        # The pool already took back a proxy whose connection was lost.
        return True


@contextmanager
def unavailable_as_store_error(
    pool: Pool | None = None, conn: Connection | None = None
) -> Iterator[None]:
    """Translate database failures raised inside the block to StoreUnavailable.

    ``InterfaceError`` and ``InternalClientError`` are raised both for misuse
    (a bug, re-raised as is) and for a closed pool or a lost connection; the
    state of ``pool``/``conn`` tells which, never the message text.
    """
    try:
        yield
    except StoreUnavailable:
        raise
    except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
        if (pool is not None and pool.is_closing()) or (conn is not None and _is_closed(conn)):
            raise StoreUnavailable("database connection closed") from exc
        raise
    except Exception as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc
        raise


@asynccontextmanager
async def acquire(
    pool: Pool, *, timeout: float = DEFAULT_ACQUIRE_TIMEOUT
) -> AsyncIterator[Connection]:
    """A pooled connection; every database failure in the block is StoreUnavailable."""
    if pool.is_closing():
        raise StoreUnavailable("database pool closed")
    with unavailable_as_store_error(pool):
        async with pool.acquire(timeout=timeout) as conn:
            with unavailable_as_store_error(pool, conn):
                yield conn


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # jsonb <-> Python values, so repositories never juggle JSON text.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    command_timeout: float = 5.0,
    server_settings: dict[str, str] | None = None,
) -> Pool:
    """An asyncpg pool on ``dsn``; StoreUnavailable when it cannot connect.

    ``command_timeout`` bounds every query; a query running longer raises
    StoreUnavailable in the repositories.
    """
    with unavailable_as_store_error():
        pool: Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            init=_init_connection,
            server_settings=server_settings,
        )
    return pool


def rows_affected(status: str) -> int:
    """The row count in a command status such as ``DELETE 3`` (0 when there is none)."""
    try:
        return int(status.split()[-1])
    except (ValueError, IndexError):
        return 0


def as_columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as ``width`` column lists, for ``unnest($1::type[], ...)`` statements."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]
