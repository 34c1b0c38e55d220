"""End to end: suspicious-login flags raised by the real server process, read by its CLI.

radclient plays the NAS. The server runs with ``[detect] mode = "enforce"``,
so the configured actions apply: a brute-forced account is rejected for the
cool-down, even with the right password, and stays so after a restart.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import asyncpg
import pytest

from tests.support.peers import RadclientResult, radclient, require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

pytestmark = pytest.mark.interop

SECRET = "it-flags-secret-R7"
PLAN = "flags-10M"
VICTIM = "it-flags-victim"
VICTIM_PW = "right-pw-Kq2"
BYSTANDER = "it-flags-bystander"
SHARED = [f"it-flags-shared-{i}" for i in range(4)]
SHARED_PW = "shared-pw-Zt5"
VICTIM_STATION = "02-00-00-00-B0-01"
SPRAY_STATION = "02-00-00-00-5A-01"
SHARED_MAC = "00-1B-21-00-00-01"  # globally administered: a real device

EXTRA = """
[detect]
mode = "enforce"
cooldown_minutes = 30

[detect.brute_force]
actions = { high = "reject", medium = "reject", low = "flag" }

[detect.password_spray]
actions = { high = "flag" }
"""


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(
        tmp_path_factory.mktemp("interop-flags"),
        dsn,
        probe_secret=SECRET.encode(),
        extra_config=EXTRA,
    )
    try:
        srv.setup()
        srv.cli("nas", "add", "flags-nas", "127.0.0.1", "--secret", SECRET, "--vendor", "mikrotik")
        srv.cli("plan", "add", PLAN, "--download", "10M", "--upload", "5M")
        srv.cli("subscriber", "add", VICTIM, "--plan", PLAN, "--password", VICTIM_PW)
        srv.cli("subscriber", "add", BYSTANDER, "--plan", PLAN, "--password", VICTIM_PW)
        for user in SHARED:
            srv.cli("subscriber", "add", user, "--plan", PLAN, "--password", SHARED_PW)
        srv.start()
        yield srv
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def _auth(srv: ServerProcess, user: str, password: str, station: str) -> RadclientResult:
    attrs = (
        f'User-Name = "{user}", User-Password = "{password}", Calling-Station-Id = "{station}"\n'
    )
    return radclient(f"127.0.0.1:{srv.auth_port}", "auth", SECRET, attrs)


_ROW = re.compile(r"^(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$")


def _flags(srv: ServerProcess, *args: str) -> list[dict[str, str]]:
    """``flags list`` parsed into one dict per row, by column name."""
    names = ("id", "time", "rule", "severity", "score", "action", "subscriber_id", "subject")
    rows = []
    for line in srv.cli("flags", "list", *args).splitlines()[1:]:
        m = _ROW.match(line.strip())
        if m:
            rows.append(dict(zip((*names, "state"), m.groups(), strict=True)))
    return rows


def _wait_for_flags(srv: ServerProcess, rule: str, timeout: float = 20.0) -> list[dict[str, str]]:
    """The flags of ``rule`` once the writer has stored at least one (it writes off-path)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _flags(srv, "--rule", rule)
        if rows or time.monotonic() > deadline:
            return rows


def test_ten_wrong_passwords_flag_and_reject_the_eleventh(server: ServerProcess) -> None:
    """Ten distinct wrong passwords raise a high brute-force flag; the 11th attempt, with
    the right password, is rejected for the cool-down; another account is not touched."""
    assert _auth(server, VICTIM, VICTIM_PW, VICTIM_STATION).code == "Access-Accept"
    for i in range(10):
        result = _auth(server, VICTIM, f"guess-{i}", VICTIM_STATION)
        assert result.code == "Access-Reject", result.output
    assert _auth(server, VICTIM, VICTIM_PW, VICTIM_STATION).code == "Access-Reject"
    # Holds are per account: the same NAS and password work for everyone else.
    assert _auth(server, BYSTANDER, VICTIM_PW, "02-00-00-00-B0-02").code == "Access-Accept"
    rows = _wait_for_flags(server, "brute_force")
    assert len(rows) == 1, rows
    assert rows[0]["severity"] == "high" and rows[0]["action"] == "reject"
    assert rows[0]["subscriber_id"] != "-" and rows[0]["state"] == "open"


def test_twenty_user_names_from_one_source_flag_a_spray(server: ServerProcess) -> None:
    """Twenty unknown user names from one Calling-Station-Id: one password-spray flag."""
    for i in range(20):
        assert _auth(server, f"it-spray-{i}", "spray-pw", SPRAY_STATION).code == "Access-Reject"
    rows = _wait_for_flags(server, "password_spray")
    assert len(rows) == 1, rows
    assert rows[0]["subject"].startswith("source:") and rows[0]["subscriber_id"] == "-"


def test_one_mac_on_four_accounts_flags(server: ServerProcess) -> None:
    """Four accounts accepted from one MAC: a device-on-many-accounts flag, logins not blocked."""
    for user in SHARED:
        assert _auth(server, user, SHARED_PW, SHARED_MAC).code == "Access-Accept"
    rows = _wait_for_flags(server, "device_many_accounts")
    assert len(rows) == 1, rows
    assert rows[0]["subject"].startswith("mac:")


def test_cli_show_explain_and_ack(server: ServerProcess) -> None:
    """show has no personal values; explain opens the evidence and is audited; ack moves
    the flag out of the open list and is audited."""
    flag = _wait_for_flags(server, "brute_force")[0]
    shown = server.cli("flags", "show", flag["id"])
    assert "rule: brute_force" in shown and '"short_count": 10' in shown
    assert VICTIM not in shown
    explained = server.cli("flags", "explain", flag["id"])
    assert f'user_name: "{VICTIM}"' in explained
    assert 'kind: "guessing"' in explained and "distinct_passwords: 10" in explained
    assert "guess-" not in explained  # passwords are never evidence, only their count
    acked = server.cli("flags", "ack", flag["id"], "--note", "customer called back")
    assert "state: acknowledged" in acked
    assert flag["id"] not in {r["id"] for r in _flags(server, "--state", "open")}
    assert flag["id"] in {r["id"] for r in _flags(server, "--state", "acknowledged")}
    assert "note: customer called back" in server.cli("flags", "explain", flag["id"])
    listed = _flags(server, "--subscriber", VICTIM)
    assert [r["id"] for r in listed] == [flag["id"]]
    assert server.run_cli("flags", "show", "999999").returncode == 1

    async def audited() -> list[str]:
        conn = await asyncpg.connect(server.dsn)
        try:
            rows = await conn.fetch(
                "SELECT action, detail::text AS detail FROM audit_log"
                " WHERE action LIKE 'flag.%' ORDER BY time"
            )
        finally:
            await conn.close()
        assert all(VICTIM not in r["detail"] and "customer" not in r["detail"] for r in rows)
        return [str(r["action"]) for r in rows]

    assert asyncio.run(audited()) == ["flag.explain", "flag.ack", "flag.explain"]


def test_state_is_rebuilt_after_a_restart(server: ServerProcess) -> None:
    """After a restart the brute-force hold is still on (rebuilt from auth events), and
    replaying the events raises no second flag."""
    before = {r["rule"]: r["id"] for r in _flags(server)}
    assert server.stop() == 0
    server.start()
    assert _auth(server, VICTIM, VICTIM_PW, VICTIM_STATION).code == "Access-Reject"
    assert _auth(server, BYSTANDER, VICTIM_PW, "02-00-00-00-B0-02").code == "Access-Accept"
    rebuilt = [
        json.loads(line)
        for line in server.log_path.read_text().splitlines()
        if '"detector_rebuilt"' in line
    ]
    # Every auth event of this module so far, replayed: 12 + 20 + 4 before the restart.
    assert rebuilt and rebuilt[-1]["signals"] >= 36 and rebuilt[-1]["holds"] >= 1
    after = _flags(server)
    assert sorted(r["id"] for r in after) == sorted(before.values())
