"""End to end: FreeRADIUS's radclient sends Accounting-Requests to the in-process server.

The server runs with the real accounting handler and writer on PostgreSQL;
each test checks what radclient received and what was committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ispcare_radius.aaa.accounting import AccountingHandler
from ispcare_radius.aaa.pipeline import AccessHandler
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.server.app import RadiusServer
from ispcare_radius.server.clients import ClientTable
from ispcare_radius.server.settings import ServerSettings
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.events import AuthEventWriter
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.subscribers import SubscriberRepository
from tests.support.peers import RadclientResult, radclient, require_tool

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[1]
SECRET = "acct-ic-secret-42"
USER = "acct-ic-user"


async def send(port: int, attributes: str) -> RadclientResult:
    """One radclient ``acct`` request (in a thread: the server shares this event loop)."""
    return await asyncio.to_thread(
        radclient, f"127.0.0.1:{port}", "acct", SECRET, attributes, retries=1, timeout=2.0
    )


@pytest.fixture
async def served(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> AsyncIterator[int]:
    """The accounting port of a running server wired to the real writer."""
    require_tool("radclient")
    nas = await NasRepository(pg_pool, system_keys).add("ic-nas", "127.0.0.1", SECRET)
    await SubscriberRepository(pg_pool, system_keys, master_keys, data_keys).add(
        USER, "pw", plan=None
    )
    directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys)
    writer = AccountingWriter(pg_pool, system_keys, data_keys)
    access = AccessHandler(
        directory=directory,
        events=AuthEventWriter(pg_pool, system_keys, data_keys),
        renderer=ReplyRenderer(load_dictionary([ROOT / "dictionaries" / "dictionary"])[0]),
    )
    server = RadiusServer(
        ServerSettings(auth_listen=(), acct_listen=(("127.0.0.1", 0),)),
        ClientTable([nas]),
        auth_handler=access,
        acct_handler=AccountingHandler(recorder=writer, directory=directory),
    )
    await server.start()
    try:
        yield server.bound_ports["acct"][0][1]
    finally:
        await server.stop()
        await writer.close()


def stop(delay: int) -> str:
    return (
        "Acct-Status-Type = Stop\n"
        'Acct-Session-Id = "IC-0001"\n'
        f'User-Name = "{USER}"\n'
        "NAS-IP-Address = 127.0.0.1\n"
        'Calling-Station-Id = "02-10-20-30-40-50"\n'
        "Framed-IP-Address = 100.64.9.9\n"
        "Acct-Input-Octets = 1000\n"
        "Acct-Input-Gigawords = 4\n"
        "Acct-Output-Octets = 2000\n"
        "Acct-Output-Gigawords = 1\n"
        "Acct-Session-Time = 3600\n"
        "Acct-Terminate-Cause = User-Request\n"
        f"Acct-Delay-Time = {delay}\n"
    )


async def test_radclient_stop_is_answered_and_stored_once(served: int, pg_dsn: str) -> None:
    """radclient gets Accounting-Response for a Stop and its resend; one row holds the counters."""
    first = await send(served, stop(0))
    assert first.code == "Accounting-Response", first.output
    again = await send(served, stop(4))
    assert again.code == "Accounting-Response", again.output
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT status_type, input_octets, output_octets, session_time, terminate_cause,"
            " attribution FROM acct_records"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [(2, 4 * 2**32 + 1000, 2**32 + 2000, 3600, 1, "subscriber")]


async def test_radclient_request_without_status_type_gets_no_reply(
    served: int, pg_dsn: str
) -> None:
    """Without Acct-Status-Type nothing is recorded, so radclient hears nothing back."""
    result = await send(served, 'Acct-Session-Id = "IC-0002"\nUser-Name = "x"\n')
    assert result.code is None
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM acct_records") == 0
    finally:
        await conn.close()
