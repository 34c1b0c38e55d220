"""When the database connection dies during an Access-Request, the answer is the
configured fail-closed outcome (Access-Reject, or silence), never an accept or a
crash, and service resumes once the database is back."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from ispcare_radius.aaa.model import AuthEvent
from ispcare_radius.aaa.outcome import StoreFailureAction
from ispcare_radius.aaa.pipeline import AccessHandler, AuthSettings
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.authenticator import (
    build_request,
    hide_password,
    random_authenticator,
    verify_response,
)
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.packet import encode_attributes, parse
from ispcare_radius.server.app import RadiusServer
from ispcare_radius.server.clients import ClientTable
from ispcare_radius.server.settings import ServerSettings
from ispcare_radius.store.db import Pool, connect
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository
from tests.support.cutproxy import CutProxy

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"fc-secret-31"
USER = "fc-user-1"
PASSWORD = b"fc-pass-1"


class EventList:
    """An in-memory AuthEventSink: the events the pipeline decided."""

    def __init__(self) -> None:
        self.events: list[AuthEvent] = []

    def submit(self, event: AuthEvent) -> None:
        self.events.append(event)


async def _ask(port: int, ident: int) -> bytes | None:
    """Send one PAP Access-Request; the reply, or None if none came in 1 s."""
    auth = random_authenticator()
    attrs = encode_attributes([(1, USER.encode()), (2, hide_password(PASSWORD, SECRET, auth))])
    data = build_request(
        int(Code.ACCESS_REQUEST),
        ident,
        attrs,
        SECRET,
        message_authenticator=True,
        authenticator=auth,
    )
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        await loop.sock_sendall(s, data)
        try:
            reply = await asyncio.wait_for(loop.sock_recv(s, 4096), 1.0)
        except TimeoutError:
            return None
    assert verify_response(parse(reply), auth, SECRET)
    return reply


@pytest.mark.parametrize(
    ("action", "expected"),
    [(StoreFailureAction.REJECT, Code.ACCESS_REJECT), (StoreFailureAction.NO_REPLY, None)],
)
async def test_connection_cut_mid_request_fails_closed(
    pg_dsn: str,
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
    action: StoreFailureAction,
    expected: Code | None,
) -> None:
    """A cut connection gives the configured outcome; the next request is accepted."""
    nas = await NasRepository(pg_pool, system_keys).add("fc-nas", "127.0.0.1", SECRET.decode())
    await PlanRepository(pg_pool).add(name="fc-plan", session_timeout=600)
    await SubscriberRepository(pg_pool, system_keys, master_keys, data_keys).add(
        USER, PASSWORD.decode(), plan="fc-plan"
    )
    proxy = CutProxy(pg_dsn)
    proxied = await connect(await proxy.start(), min_size=1, max_size=2)
    directory = CachedSubscriberDirectory(proxied, system_keys, data_keys, negative_ttl=0)
    events = EventList()
    dictionary, _ = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    handler = AccessHandler(
        directory=directory,
        events=events,
        renderer=ReplyRenderer(dictionary),
        settings=AuthSettings(on_store_failure=action),
    )
    server = RadiusServer(
        ServerSettings(auth_listen=(("127.0.0.1", 0),), acct_listen=(), reject_delay=0),
        ClientTable([nas]),
        auth_handler=handler,
        acct_handler=None,
    )
    await server.start()
    port = server.bound_ports["auth"][0][1]
    try:
        proxy.cut_on_next_query()
        reply = await _ask(port, 1)
        assert proxy.cuts == 1
        if expected is None:
            assert reply is None
        else:
            assert reply is not None and parse(reply).code == expected
        assert [e.reason for e in events.events] == ["store_unavailable"]

        # The database is reachable again: the pool reconnects, the user gets in.
        reply = await _ask(port, 2)
        assert reply is not None and parse(reply).code == Code.ACCESS_ACCEPT
        assert [e.reason for e in events.events] == ["store_unavailable", "accept"]
    finally:
        await server.stop()
        await directory.stop()
        proxied.terminate()
        await proxy.close()
