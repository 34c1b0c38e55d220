"""Database failures reach callers as StoreUnavailable, never as asyncpg exceptions."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest

from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Pool, acquire, connect, is_unavailable
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys, load_system_keys
from ispcare_radius.store.migrate import migrate
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository

Call = Callable[[], Awaitable[Any]]

# Synthetic personal values passed to every call: none may reach a message.
USER = "Synthetic.Person-7731@example.test"
PASSWORD = "pw-Unavail-5529!"
MAC = "02:7e:11:22:33:44"
IPV4 = "203.0.113.58"
NAS_IP = "192.0.2.201"
NAS_SECRET = "nas-secret-Qx93"
PERSONAL = (USER, USER.lower(), PASSWORD, MAC, IPV4, NAS_IP, NAS_SECRET)
DSN_USER = "synthetic_role_4410"
DSN_PASSWORD = "dsn-pw-Lk27"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dsn_parts(dsn: str) -> list[str]:
    """The values of ``dsn`` a message must not show: user, password, host, port, database."""
    parts = urlsplit(dsn)
    found = [parts.username, parts.password, parts.hostname, parts.path.lstrip("/")]
    found += [v for values in parse_qs(parts.query).values() for v in values]
    if parts.port is not None:
        found.append(str(parts.port))
    return [p for p in found if p]


def dsn_with(dsn: str, *, user: str, password: str | None, database: str) -> str:
    """``dsn`` with another user, password and database (same host, port and options)."""
    parts = urlsplit(dsn)
    secret = f":{password}" if password else ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}{secret}@{host}", path="/" + database))


def calls(
    pool: Pool, keys: SystemKeys, masters: MasterKeys, data_keys: DataKeyCache
) -> dict[str, Call]:
    subs = SubscriberRepository(pool, keys, masters, data_keys)
    nas = NasRepository(pool, keys)
    plans = PlanRepository(pool)
    directory = CachedSubscriberDirectory(pool, keys, data_keys)
    return {
        "subscriber.add": lambda: subs.add(
            USER, PASSWORD, plan=None, mac_lock=MAC, static_ipv4=IPV4
        ),
        "subscriber.get": lambda: subs.get(USER),
        "subscriber.set": lambda: subs.set(USER, status="suspended", password=PASSWORD),
        "subscriber.list": lambda: subs.list(),
        "subscriber.remove": lambda: subs.remove(USER),
        "nas.add": lambda: nas.add("n", NAS_IP, NAS_SECRET),
        "nas.list": lambda: nas.list(),
        "plans.get": lambda: plans.get("p"),
        "plans.add": lambda: plans.add("p"),
        "directory.by_user_name": lambda: directory.by_user_name(USER),
        "directory.prewarm": lambda: directory.prewarm(),
        "directory.start_listening": lambda: directory.start_listening(),
        "keys.load": lambda: load_system_keys(pool, masters),
        "migrate": lambda: migrate(pool),
    }


def assert_clean(exc: BaseException, forbidden: list[str]) -> None:
    """The message and repr of ``exc`` hold no DSN part and no personal value."""
    shown = f"{exc} {exc!r}"
    for value in [*forbidden, *PERSONAL]:
        assert value not in shown, f"{value!r} in {shown!r}"


async def assert_all_unavailable(table: dict[str, Call], dsn: str) -> None:
    for name, call in table.items():
        with pytest.raises(StoreUnavailable) as info:
            await call()
        # Translated from a database failure (or the closed pool), and clean.
        cause = info.value.__cause__
        assert cause is None or isinstance(
            cause, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError
        ), name
        assert str(info.value).startswith("database "), name
        assert_clean(info.value, dsn_parts(dsn))


async def test_closed_pool(
    pg_pool: Pool,
    pg_dsn: str,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
) -> None:
    """Every repository call on a terminated pool raises StoreUnavailable."""
    pg_pool.terminate()
    await assert_all_unavailable(calls(pg_pool, system_keys, master_keys, data_keys), pg_dsn)


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
    dsn = f"postgresql://{DSN_USER}:{DSN_PASSWORD}@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(StoreUnavailable) as info:
        await connect(dsn)
    assert_clean(info.value, dsn_parts(dsn))
    lazy = await connect(dsn, min_size=0)
    try:
        await assert_all_unavailable(calls(lazy, system_keys, master_keys, data_keys), dsn)
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


@pytest.mark.parametrize(
    "sqlstate",
    [
        "08006",  # connection failure
        "28000",  # invalid authorization specification
        "3D000",  # invalid catalog name
        "40001",  # serialization failure / recovery conflict
        "40P01",  # deadlock detected
        "53300",  # too many connections
        "57014",  # query canceled (statement timeout)
        "58030",  # I/O error
        "XX000",  # internal error
        "XX001",  # data corrupted
    ],
)
async def test_cannot_answer_now_sqlstates_are_unavailable(pg_pool: Pool, sqlstate: str) -> None:
    """An error of an unavailability SQLSTATE class raised by the server is StoreUnavailable."""
    with pytest.raises(StoreUnavailable) as info:
        async with acquire(pg_pool) as conn:
            await conn.execute(
                f"DO $$ BEGIN RAISE EXCEPTION 'synthetic' USING ERRCODE = '{sqlstate}'; END $$"
            )
    cause = info.value.__cause__
    assert isinstance(cause, asyncpg.PostgresError) and cause.sqlstate == sqlstate


@pytest.mark.parametrize("sqlstate", ["22012", "23505", "42P01", "P0001", "55000"])
async def test_query_errors_stay_database_errors(pg_pool: Pool, sqlstate: str) -> None:
    """An error of any other SQLSTATE class is not masked as StoreUnavailable."""
    with pytest.raises(asyncpg.PostgresError) as info:
        async with acquire(pg_pool) as conn:
            await conn.execute(
                f"DO $$ BEGIN RAISE EXCEPTION 'synthetic' USING ERRCODE = '{sqlstate}'; END $$"
            )
    assert info.value.sqlstate == sqlstate


def test_unavailability_is_judged_by_class_not_text() -> None:
    """is_unavailable() looks at the exception class and SQLSTATE, never at the message."""
    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(TimeoutError())
    assert is_unavailable(asyncpg.exceptions.SerializationError("anything"))
    assert is_unavailable(asyncpg.exceptions.InternalServerError("anything"))
    assert not is_unavailable(ValueError("connection refused"))
    assert not is_unavailable(asyncpg.exceptions.DivisionByZeroError("connection lost"))


async def test_missing_database_or_role_is_unavailable_and_message_is_clean(
    pg_admin_dsn: str,
) -> None:
    """A database or role that does not exist gives StoreUnavailable naming no DSN part."""
    missing_db = dsn_with(
        pg_admin_dsn,
        user=urlsplit(pg_admin_dsn).username or "postgres",
        password=DSN_PASSWORD,
        database="ispcare_no_such_db_81",
    )
    missing_role = dsn_with(
        pg_admin_dsn, user=DSN_USER, password=DSN_PASSWORD, database="ispcare_no_such_db_82"
    )
    for dsn, sqlstate in ((missing_db, "3D000"), (missing_role, "28000")):
        with pytest.raises(StoreUnavailable) as info:
            await connect(dsn, min_size=1)
        cause = info.value.__cause__
        assert isinstance(cause, asyncpg.PostgresError) and cause.sqlstate == sqlstate
        forbidden = [p for p in dsn_parts(dsn) if p != "postgres"]
        assert_clean(info.value, forbidden)
        assert DSN_PASSWORD in dsn  # the check above looked for it
