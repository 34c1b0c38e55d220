"""After a scripted run of logins, neither a pg_dump nor the server log holds a
plaintext user name, password, MAC or NAS secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pgserver
import pytest

from tests.support.peers import radclient, require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

pytestmark = pytest.mark.interop

NAS_SECRET = "pv-nas-secret-Hq7Wz"
USERS = {  # synthetic subscribers: user name -> password
    "pv-user-anna-71": "pv-pass-Lm3x",
    "pv-user-boris-72": "pv-pass-Qa9c",
    "pv-user-chen-73": "pv-pass-Vb2e",
}
MACS = ["02-AB-CD-EF-01-71", "02:ab:cd:ef:01:72", "02abcdef0173"]
LOCKED_MAC = "0E-11-22-33-44-55"
UNKNOWN_USER = "pv-nobody-99"
WRONG_PASSWORD = "pv-wrong-Zz11"


def _pg_dump() -> str:
    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump")


def _mac_forms(mac: str) -> list[str]:
    hexes = mac.replace("-", "").replace(":", "").lower()
    pairs = [hexes[i : i + 2] for i in range(0, 12, 2)]
    return [mac, hexes, hexes.upper(), ":".join(pairs), "-".join(pairs).upper(), "-".join(pairs)]


def test_dump_and_log_hold_no_plaintext(pg_admin_dsn: str, tmp_path: Path) -> None:
    """Logins of every outcome leave no personal plaintext in the database or the log."""
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn, probe_secret=NAS_SECRET.encode())
    try:
        srv.setup()
        srv.cli(
            "nas", "add", "pv-bras", "127.0.0.1", "--secret", NAS_SECRET, "--vendor", "mikrotik"
        )
        srv.cli("plan", "add", "pv-plan", "--download", "8M", "--upload", "2M")
        for user, password in USERS.items():
            srv.cli(
                "subscriber",
                "add",
                user,
                "--plan",
                "pv-plan",
                "--password-stdin",
                input=password + "\n",
            )
        srv.cli("subscriber", "set", "pv-user-chen-73", "--mac-lock", LOCKED_MAC)
        srv.start()
        port = f"127.0.0.1:{srv.auth_port}"
        outcomes = []
        for (user, password), mac in zip(USERS.items(), MACS, strict=True):
            for pw in (password, WRONG_PASSWORD):
                r = radclient(
                    port,
                    "auth",
                    NAS_SECRET,
                    f'User-Name = "{user}", User-Password = "{pw}", '
                    f'Calling-Station-Id = "{mac}", NAS-IP-Address = 127.0.0.1\n',
                )
                outcomes.append(r.code)
        r = radclient(
            port,
            "auth",
            NAS_SECRET,
            f'User-Name = "{UNKNOWN_USER}", User-Password = "{WRONG_PASSWORD}", '
            f'Calling-Station-Id = "{MACS[0]}"\n',
        )
        outcomes.append(r.code)
        # anna and boris get in; chen is MAC-locked elsewhere; wrong passwords fail.
        assert outcomes == [
            "Access-Accept",
            "Access-Reject",
            "Access-Accept",
            "Access-Reject",
            "Access-Reject",
            "Access-Reject",
            "Access-Reject",
        ]
        assert srv.stop() == 0
        dump = subprocess.run(
            [_pg_dump(), "--no-owner", "--data-only", "--inserts", dsn],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        log = srv.log_path.read_text()
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)

    # The run did write rows and log lines, so absence below means something.
    assert "INSERT INTO public.auth_events" in dump
    assert "INSERT INTO public.subscribers" in dump
    assert log.count('"event": "request"') >= len(outcomes)
    plaintexts = [NAS_SECRET, UNKNOWN_USER, WRONG_PASSWORD, *USERS, *USERS.values()]
    for mac in [*MACS, LOCKED_MAC]:
        plaintexts += _mac_forms(mac)
    for value in plaintexts:
        assert value not in dump, "a personal value is in the database dump"
        assert value not in log, "a personal value is in the server log"
        assert value.encode().hex() not in dump, "a personal value is in the dump as hex"
