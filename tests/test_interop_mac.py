"""End to end: MAC authentication through the real server process, provisioned by its CLI.

radclient sends what a MikroTik hotspot sends for MAC auth: the MAC as
User-Name, User-Password and Calling-Station-Id.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.peers import RadclientResult, radclient, require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

pytestmark = pytest.mark.interop

SECRET = "it-mac-secret-Hq42"
OWNER = "it-cafe-owner-m17"
DEVICE = "AA-BB-CC-DD-EE-FF"
BLOCKED = "02-5A-00-00-00-0B"


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(
        tmp_path_factory.mktemp("interop-mac"),
        dsn,
        probe_secret=SECRET.encode(),
        extra_config='\n[auth]\nmethods = ["pap", "chap", "mschap", "mschapv2", "mac"]\n',
    )
    try:
        srv.setup()
        srv.cli("nas", "add", "hotspot", "127.0.0.1", "--secret", SECRET, "--vendor", "mikrotik")
        srv.cli(
            "plan", "add", "hotspot-8", "--download", "8M", "--upload", "2M",
            "--session-timeout", "3600",
        )  # fmt: skip
        srv.cli("subscriber", "add", OWNER, "--plan", "hotspot-8", "--password", "it-pw-Xm4")
        srv.cli("device", "add", "aa:bb:cc:dd:ee:ff", "--subscriber", OWNER)
        srv.cli("device", "add", BLOCKED, "--subscriber", OWNER)
        srv.cli("device", "block", BLOCKED, "--reason", "test")
        srv.start()
        yield srv
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def _mac_auth(srv: ServerProcess, mac: str, password: str | None = None) -> RadclientResult:
    pw = mac if password is None else password
    attrs = f'User-Name = "{mac}", User-Password = "{pw}", Calling-Station-Id = "{mac}"\n'
    return radclient(f"127.0.0.1:{srv.auth_port}", "auth", SECRET, attrs)


def test_mac_auth_accepts_with_the_owners_plan(server: ServerProcess) -> None:
    """The MAC as name, password and Calling-Station-Id gets Access-Accept with the plan."""
    result = _mac_auth(server, DEVICE)
    assert result.code == "Access-Accept", result.output
    attrs = result.attributes
    assert attrs["Session-Timeout"] == ["3600"]
    assert attrs["Mikrotik-Rate-Limit"] == ["2000k/8000k"]


def test_mac_auth_with_an_empty_password_accepts(server: ServerProcess) -> None:
    """RouterOS with an empty mac-auth-password: the same device, Cisco notation."""
    result = _mac_auth(server, "aabb.ccdd.eeff", password="")
    assert result.code == "Access-Accept", result.output


def test_unknown_and_blocked_macs_are_rejected(server: ServerProcess) -> None:
    """A MAC bound to nobody and a blocked MAC both get Access-Reject."""
    assert _mac_auth(server, "02-00-00-00-00-77").code == "Access-Reject"
    assert _mac_auth(server, BLOCKED).code == "Access-Reject"


def test_device_list_shows_the_bound_macs(server: ServerProcess) -> None:
    """The CLI lists the owner's devices, normalised."""
    out = server.cli("device", "list", "--subscriber", OWNER)
    assert "aa:bb:cc:dd:ee:ff" in out and "02:5a:00:00:00:0b" in out
    assert server.run_cli("device", "add", DEVICE, "--subscriber", OWNER).returncode == 1
