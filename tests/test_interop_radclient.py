"""End to end: the real server process, provisioned by its CLI, against radclient.

Each test sends real packets from FreeRADIUS's radclient to ``ispcare-radius
serve`` and checks what comes back and what lands in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.peers import radclient, require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

pytestmark = pytest.mark.interop

SECRET_V4 = "it-secret-v4-Zr81"
SECRET_V6 = "it-secret-v6-Kq27"
USER = "it-alice-x91"
PASSWORD = "it-pw-T0p$ecret"
MAC = "02-1A-2B-3C-4D-5E"


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path_factory.mktemp("interop"), dsn, probe_secret=SECRET_V4.encode())
    try:
        srv.setup()
        srv.cli(
            "nas",
            "add",
            "bras-v4",
            "127.0.0.1",
            "--secret",
            SECRET_V4,
            "--vendor",
            "mikrotik",
            "--ma-policy",
            "observe",
        )
        srv.cli("nas", "add", "bras-v6", "::1", "--secret", SECRET_V6, "--ma-policy", "require")
        srv.cli(
            "plan",
            "add",
            "home-20",
            "--download",
            "20M",
            "--upload",
            "5M",
            "--session-timeout",
            "7200",
            "--idle-timeout",
            "600",
            "--interim-interval",
            "300",
        )
        srv.cli(
            "subscriber",
            "add",
            USER,
            "--plan",
            "home-20",
            "--password-stdin",
            input=PASSWORD + "\n",
        )
        srv.start()
        yield srv
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def _auth(
    srv: ServerProcess,
    password: str = PASSWORD,
    *,
    secret: str = SECRET_V4,
    ma: bool = False,
    extra: str = "",
    ipv6: bool = False,
) -> object:
    attrs = (
        f'User-Name = "{USER}", User-Password = "{password}", '
        f'Calling-Station-Id = "{MAC}", NAS-IP-Address = 127.0.0.1'
    )
    if ma:
        attrs += ", Message-Authenticator = 0x00"
    if extra:
        attrs += ", " + extra
    host = f"[::1]:{srv.auth_port}" if ipv6 else f"127.0.0.1:{srv.auth_port}"
    return radclient(host, "auth", secret, attrs + "\n", ipv6=ipv6)


def test_pap_accept_carries_the_plan(server: ServerProcess) -> None:
    """radclient PAP with the right password gets Access-Accept with the plan's attributes."""
    result = _auth(server)
    assert result.code == "Access-Accept", result.output
    assert result.attributes["Session-Timeout"] == ["7200"]
    assert result.attributes["Idle-Timeout"] == ["600"]
    assert result.attributes["Acct-Interim-Interval"] == ["300"]
    assert result.attributes["Mikrotik-Rate-Limit"] == ["5000k/20000k"]


def test_radtest_accepts(server: ServerProcess) -> None:
    """The radtest line an operator types gets an Access-Accept."""
    import subprocess

    exe = require_tool("radtest")
    proc = subprocess.run(
        [exe, USER, PASSWORD, f"127.0.0.1:{server.auth_port}", "0", SECRET_V4],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Received Access-Accept" in proc.stdout, proc.stdout + proc.stderr


def test_wrong_password_is_rejected(server: ServerProcess) -> None:
    """A wrong password gets Access-Reject, with no Reply-Message to help a guesser."""
    result = _auth(server, "not-the-password")
    assert result.code == "Access-Reject", result.output
    assert "Reply-Message" not in result.attributes


def test_status_server_is_answered(server: ServerProcess) -> None:
    """Status-Server (RFC 5997) on the auth port is answered."""
    result = radclient(
        f"127.0.0.1:{server.auth_port}", "status", SECRET_V4, "Message-Authenticator = 0x00\n"
    )
    assert result.code == "Access-Accept", result.output


def test_status_server_on_acct_port_is_answered(server: ServerProcess) -> None:
    """Status-Server on the accounting port gets an Accounting-Response."""
    result = radclient(
        f"127.0.0.1:{server.acct_port}", "status", SECRET_V4, "Message-Authenticator = 0x00\n"
    )
    assert result.code == "Accounting-Response", result.output


def test_wrong_shared_secret_gets_no_answer(server: ServerProcess) -> None:
    """A request signed with the wrong shared secret is dropped, not answered."""
    result = _auth(server, secret="not-the-secret", ma=True)
    assert result.code is None, result.output


def test_require_policy_drops_requests_without_message_authenticator(
    server: ServerProcess,
) -> None:
    """A NAS set to `require` gets no answer without a Message-Authenticator, one with it."""
    without = _auth(server, secret=SECRET_V6, ipv6=True)
    assert without.code is None, without.output
    with_ma = _auth(server, secret=SECRET_V6, ipv6=True, ma=True)
    assert with_ma.code == "Access-Accept", with_ma.output


def test_unknown_nas_gets_no_answer(pg_admin_dsn: str, tmp_path: Path) -> None:
    """A server that knows no NAS at 127.0.0.1 stays silent towards it."""
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn, probe_secret=SECRET_V6.encode(), probe_host="::1")
    try:
        srv.setup()
        srv.cli("nas", "add", "elsewhere", "198.51.100.0/24", "--secret", SECRET_V4)
        srv.cli("nas", "add", "v6-only", "::1", "--secret", SECRET_V6)
        srv.start()
        result = _auth(srv)
        assert result.code is None, result.output
        result = _auth(srv, ma=True)
        assert result.code is None, result.output
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


class _DuplicatingRelay:
    """Forwards each datagram from radclient to the server twice, from one socket.

    Both copies have the same source address, identifier and authenticator: a
    retransmission as RFC 5080 section 2.2.2 describes it.
    """

    def __init__(self, server_port: int) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.server = ("127.0.0.1", server_port)
        self.replies: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.front.getsockname()[1])

    def _run(self) -> None:
        self.front.settimeout(20)
        self.back.settimeout(5)
        data, client = self.front.recvfrom(4096)
        self.back.sendto(data, self.server)
        first = self.back.recv(4096)
        self.back.sendto(data, self.server)
        second = self.back.recv(4096)
        self.replies = [first, second]
        self.front.sendto(first, client)

    def close(self) -> None:
        self.thread.join(timeout=30)
        self.front.close()
        self.back.close()


async def _count_events(dsn: str, reason: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT count(*) FROM auth_events WHERE reason = $1", reason)
        return int(value)
    finally:
        await conn.close()


def test_retransmission_gets_the_same_reply_and_one_event(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    """A retransmitted request gets byte-identical reply and is recorded once."""
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn, probe_secret=SECRET_V4.encode())
    try:
        srv.setup()
        srv.cli("nas", "add", "bras", "127.0.0.1", "--secret", SECRET_V4)
        srv.cli("subscriber", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        srv.start()
        relay = _DuplicatingRelay(srv.auth_port)
        result = radclient(
            f"127.0.0.1:{relay.port}",
            "auth",
            SECRET_V4,
            f'User-Name = "{USER}", User-Password = "{PASSWORD}"\n',
            retries=1,
            timeout=5,
        )
        relay.close()
        assert result.code == "Access-Accept", result.output
        assert len(relay.replies) == 2
        assert relay.replies[0] == relay.replies[1]
        # A graceful stop flushes the pending auth events; then count them.
        assert srv.stop() == 0
        assert asyncio.run(_count_events(dsn, "accept")) == 1
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def test_accounting_start_is_answered_once_stored(server: ServerProcess) -> None:
    """radclient's Accounting-Request Start gets an Accounting-Response, and the record
    is in PostgreSQL by then."""
    attrs = (
        f'User-Name = "{USER}", Acct-Status-Type = Start, Acct-Session-Id = "it-sess-1", '
        f'Calling-Station-Id = "{MAC}", NAS-IP-Address = 127.0.0.1, '
        "Framed-IP-Address = 100.64.0.9\n"
    )
    result = radclient(f"127.0.0.1:{server.acct_port}", "acct", SECRET_V4, attrs)
    assert result.code == "Accounting-Response", result.output

    async def count() -> int:
        conn = await asyncpg.connect(server.dsn)
        try:
            return int(
                await conn.fetchval("SELECT count(*) FROM acct_records WHERE status_type = 1")
            )
        finally:
            await conn.close()

    assert asyncio.run(count()) == 1
