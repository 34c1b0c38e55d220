"""End to end: radclient accounting files against ``ispcare-radius serve``, sessions asserted.

FreeRADIUS's radclient sends each case as one file of packets, one at a
time (``-p 1``), to the real server process; the test then reads what the
server made of them in sessions_active, sessions_closed and usage. Event
times come from Event-Timestamp, so each case controls its own clock. Each
case has its own subscriber, so rows are told apart by subscriber_id.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ispcare_radius.privacy.keys import load_master_keys
from ispcare_radius.store.keyring import DataKeyCache
from ispcare_radius.store.session_keys import session_aad
from tests.support.peers import require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

pytestmark = pytest.mark.interop

SECRET = "ia-secret-Tq4Ld9"
PASSWORD = "ia-pw-Hx72"
GIB4 = 1 << 32
# RFC 2866 section 5.10: Acct-Terminate-Cause 11 is NAS-Reboot.
NAS_REBOOT = 11
# One subscriber per case.
USERS = ("ia-stop", "ia-reboot", "ia-giga", "ia-wrap", "ia-lost", "ia-late", "ia-rev", "ia-log")
# Event times well inside the server's late-record window (days, from now).
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
_ADDED = re.compile(r"added subscriber id (\d+)")


@dataclass
class Served:
    """The running server and the subscriber id of each case's user."""

    proc: ServerProcess
    ids: dict[str, int]
    workdir: Path


@pytest.fixture(scope="module")
def served(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    workdir = tmp_path_factory.mktemp("acct-sessions")
    srv = ServerProcess(workdir, dsn, probe_secret=SECRET.encode())
    try:
        srv.setup()
        srv.watch_applier()
        srv.cli("nas", "add", "ia-bras", "127.0.0.1", "--secret", SECRET, "--vendor", "mikrotik")
        srv.cli(
            "plan",
            "add",
            "ia-plan",
            "--download",
            "8M",
            "--upload",
            "2M",
            "--interim-interval",
            "300",
        )
        ids = {}
        for user in USERS:
            out = srv.cli(
                "subscriber",
                "add",
                user,
                "--plan",
                "ia-plan",
                "--password-stdin",
                input=PASSWORD + "\n",
            )
            match = _ADDED.search(out)
            assert match is not None, out
            ids[user] = int(match.group(1))
        srv.start()
        yield Served(srv, ids, workdir)
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def packet(
    status: str,
    user: str,
    at: datetime,
    *,
    session: str = "",
    port: int = 1,
    octets: tuple[int, int] | None = None,
    gigawords: tuple[int, int] | None = None,
    seconds: int | None = None,
    cause: str | None = None,
) -> str:
    """One Accounting-Request in radclient's attribute syntax."""
    lines = [f"Acct-Status-Type = {status}", "NAS-IP-Address = 127.0.0.1"]
    if status not in ("Accounting-On", "Accounting-Off"):
        lines += [
            f'Acct-Session-Id = "{session}"',
            f'User-Name = "{user}"',
            f"NAS-Port = {port}",
            'Calling-Station-Id = "02-00-5E-10-20-30"',
            "Framed-IP-Address = 100.64.7.8",
        ]
    lines.append(f"Event-Timestamp = {int(at.timestamp())}")
    if octets is not None:
        lines += [f"Acct-Input-Octets = {octets[0]}", f"Acct-Output-Octets = {octets[1]}"]
    if gigawords is not None:
        lines += [
            f"Acct-Input-Gigawords = {gigawords[0]}",
            f"Acct-Output-Gigawords = {gigawords[1]}",
        ]
    if seconds is not None:
        lines.append(f"Acct-Session-Time = {seconds}")
    if cause is not None:
        lines.append(f"Acct-Terminate-Cause = {cause}")
    return "\n".join(lines) + "\n"


def send_file(served: Served, case: str, packets: list[str]) -> None:
    """``radclient -f FILE`` with the packets in order; every one must be answered."""
    exe = require_tool("radclient")
    path = served.workdir / f"{case}.acct"
    path.write_text("\n".join(packets))  # a blank line between packets
    proc = subprocess.run(
        [
            exe,
            "-x",
            "-p",
            "1",
            "-r",
            "3",
            "-t",
            "2",
            "-f",
            str(path),
            f"127.0.0.1:{served.proc.acct_port}",
            "acct",
            SECRET,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    answered = len(re.findall(r"Received Accounting-Response Id \d+", out))
    assert (proc.returncode, answered) == (0, len(packets)), out
    # Responses mean the records are durable; sessions follow from the queue
    # (acct_pending) a moment later, off the acknowledgement path.
    served.proc.wait_applied()


def query(served: Served, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(served.proc.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def active(served: Served, user: str) -> list[asyncpg.Record]:
    return query(
        served,
        "SELECT * FROM sessions_active WHERE subscriber_id = $1 ORDER BY started_at",
        served.ids[user],
    )


def closed(served: Served, user: str) -> list[asyncpg.Record]:
    return query(
        served,
        "SELECT * FROM sessions_closed WHERE subscriber_id = $1 ORDER BY started_at",
        served.ids[user],
    )


def counters(row: asyncpg.Record) -> tuple[int, int, int]:
    return row["input_octets"], row["output_octets"], row["session_time"]


def test_start_interim_stop_close_one_session_with_the_stop_counters(served: Served) -> None:
    """Start, Interim, Stop: one closed session ('stop'), usage for day and cycle, sealed data."""
    user, t0 = "ia-stop", BASE
    send_file(
        served,
        "stop",
        [
            packet("Start", user, t0, session="IA-S-1"),
            packet(
                "Interim-Update",
                user,
                t0 + timedelta(seconds=300),
                session="IA-S-1",
                octets=(1000, 2000),
                seconds=300,
            ),
            packet(
                "Stop",
                user,
                t0 + timedelta(seconds=600),
                session="IA-S-1",
                octets=(5000, 7000),
                gigawords=(1, 0),
                seconds=600,
                cause="User-Request",
            ),
        ],
    )
    assert active(served, user) == []
    [row] = closed(served, user)
    assert counters(row) == (GIB4 + 5000, 7000, 600)
    assert (row["close_reason"], row["terminate_cause"], row["start_seen"]) == ("stop", 1, True)
    assert (row["started_at"], row["stopped_at"]) == (t0, t0 + timedelta(seconds=600))
    assert row["interim_interval"] == 300  # the plan's
    usage = query(
        served,
        "SELECT period, period_start, input_octets, output_octets, session_time FROM usage"
        " WHERE subscriber_id = $1 ORDER BY period",
        served.ids[user],
    )
    day = (t0 + timedelta(seconds=600)).date()
    assert [(u["period"], u["period_start"]) for u in usage] == [
        ("cycle", day.replace(day=1)),  # billing_day 1 by default
        ("day", day),
    ]
    assert {counters(u) for u in usage} == {(GIB4 + 5000, 7000, 600)}

    # The NAS session id and MAC are stored sealed under the subscriber's key.
    sid = served.ids[user]
    [key] = query(served, "SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
    cipher = DataKeyCache(load_master_keys(served.proc.key_path, env={})).cipher(
        sid, bytes(key["wrapped_key"])
    )
    for column, plain in (("session_id", b"IA-S-1"), ("calling_station_id", b"02-00-5E-10-20-30")):
        sealed = bytes(row[f"{column}_enc"])
        assert plain not in sealed
        assert cipher.open(sealed, session_aad(column, row["id"], sid)) == plain


def test_accounting_on_closes_the_nas_sessions_as_reboot(served: Served) -> None:
    """Accounting-On closes the NAS's sessions begun before it ('nas_reboot', cause 11)."""
    # Days back: no other case has a session of this NAS started before the reboot.
    user, t0 = "ia-reboot", BASE - timedelta(days=2)
    reboot = t0 + timedelta(seconds=400)
    send_file(
        served,
        "reboot",
        [
            packet("Start", user, t0, session="IA-R-1", port=11),
            packet("Start", user, t0 + timedelta(seconds=10), session="IA-R-2", port=12),
            packet(
                "Interim-Update",
                user,
                t0 + timedelta(seconds=310),
                session="IA-R-1",
                port=11,
                octets=(300, 400),
                seconds=310,
            ),
            packet("Accounting-On", user, reboot),
            packet("Start", user, reboot + timedelta(seconds=60), session="IA-R-3", port=11),
        ],
    )
    gone = closed(served, user)
    assert [(r["close_reason"], r["terminate_cause"], r["stopped_at"]) for r in gone] == [
        ("nas_reboot", NAS_REBOOT, reboot),
        ("nas_reboot", NAS_REBOOT, reboot),
    ]
    assert [counters(r) for r in gone] == [(300, 400, 310), (0, 0, 0)]
    [after] = active(served, user)
    assert after["started_at"] == reboot + timedelta(seconds=60)


def test_gigawords_fold_into_64_bit_totals(served: Served) -> None:
    """Acct-Input-Gigawords N with Acct-Input-Octets x is N * 2^32 + x."""
    user, t0 = "ia-giga", BASE
    send_file(
        served,
        "giga",
        [
            packet("Start", user, t0, session="IA-G-1", port=21),
            packet(
                "Interim-Update",
                user,
                t0 + timedelta(seconds=300),
                session="IA-G-1",
                port=21,
                octets=(17, 4000),
                gigawords=(3, 0),
                seconds=300,
            ),
        ],
    )
    [row] = active(served, user)
    assert counters(row) == (3 * GIB4 + 17, 4000, 300)
    assert (row["input_wraps"], row["output_wraps"]) == (0, 0)


def test_32_bit_wrap_without_gigawords_is_counted(served: Served) -> None:
    """No Gigawords, a lower Acct-Input-Octets in a later interim: one wrap, + 2^32."""
    user, t0 = "ia-wrap", BASE
    send_file(
        served,
        "wrap",
        [
            packet("Start", user, t0, session="IA-W-1", port=31),
            packet(
                "Interim-Update",
                user,
                t0 + timedelta(seconds=300),
                session="IA-W-1",
                port=31,
                octets=(4_000_000_000, 900),
                seconds=300,
            ),
            packet(
                "Interim-Update",
                user,
                t0 + timedelta(seconds=600),
                session="IA-W-1",
                port=31,
                octets=(1234, 1000),
                seconds=600,
            ),
        ],
    )
    [row] = active(served, user)
    assert (row["input_wraps"], row["output_wraps"]) == (1, 0)
    assert counters(row) == (GIB4 + 1234, 1000, 600)
    [day] = query(
        served,
        "SELECT input_octets FROM usage WHERE subscriber_id = $1 AND period = 'day'",
        served.ids[user],
    )
    assert day["input_octets"] == GIB4 + 1234


def test_lost_start_interim_creates_the_session(served: Served) -> None:
    """An Interim with no Start before it creates the session, marked start_seen false."""
    user, t0 = "ia-lost", BASE
    send_file(
        served,
        "lost",
        [
            packet(
                "Interim-Update",
                user,
                t0 + timedelta(seconds=900),
                session="IA-L-1",
                port=41,
                octets=(111, 222),
                seconds=900,
            ),
        ],
    )
    [row] = active(served, user)
    assert row["start_seen"] is False
    assert counters(row) == (111, 222, 900)
    assert row["started_at"] == t0  # event time minus Acct-Session-Time
    assert closed(served, user) == []


def test_late_interim_does_not_reopen_a_stopped_session(served: Served) -> None:
    """An Interim dated before the Stop but sent after it leaves the session closed as stopped."""
    user, t0 = "ia-late", BASE
    send_file(
        served,
        "late",
        [
            packet("Start", user, t0, session="IA-E-1", port=51),
            packet(
                "Stop",
                user,
                t0 + timedelta(seconds=600),
                session="IA-E-1",
                port=51,
                octets=(6000, 8000),
                seconds=600,
                cause="Lost-Carrier",
            ),
            packet(
                "Interim-Update",
                user,
                t0 + timedelta(seconds=300),
                session="IA-E-1",
                port=51,
                octets=(3000, 4000),
                seconds=300,
            ),
        ],
    )
    assert active(served, user) == []
    [row] = closed(served, user)
    assert counters(row) == (6000, 8000, 600)
    assert (row["close_reason"], row["terminate_cause"]) == ("stop", 2)
    # Recorded all the same: acct_records is the raw log.
    [count] = query(
        served, "SELECT count(*) AS n FROM acct_records WHERE subscriber_id = $1", served.ids[user]
    )
    assert count["n"] == 3


def test_records_in_reverse_order_make_one_closed_session(served: Served) -> None:
    """Stop, then Interim, then Start (all late): one closed session, never reopened."""
    user, t0 = "ia-rev", BASE
    send_file(
        served,
        "reverse",
        [
            packet("Stop", user, t0 + timedelta(seconds=600), session="IA-V-1", port=71,
                   octets=(900, 800), seconds=600, cause="Idle-Timeout"),
            packet("Interim-Update", user, t0 + timedelta(seconds=300), session="IA-V-1",
                   port=71, octets=(400, 300), seconds=300),
            packet("Start", user, t0, session="IA-V-1", port=71),
        ],
    )  # fmt: skip
    assert active(served, user) == []
    [row] = closed(served, user)
    assert counters(row) == (900, 800, 600)
    assert (row["close_reason"], row["terminate_cause"]) == ("stop", 4)
    assert (row["started_at"], row["start_seen"]) == (t0, False)
    [day] = query(
        served,
        "SELECT input_octets, output_octets, session_time FROM usage"
        " WHERE subscriber_id = $1 AND period = 'day'",
        served.ids[user],
    )
    assert counters(day) == (900, 800, 600)


def test_server_log_holds_no_session_plaintext(served: Served) -> None:
    """After accounting, the log has no user name, NAS session id, MAC or framed IP in clear."""
    user, t0 = "ia-log", BASE
    send_file(
        served,
        "log",
        [
            packet("Start", user, t0, session="IA-X-1", port=61),
            packet("Stop", user, t0 + timedelta(seconds=60), session="IA-X-1", port=61,
                   octets=(10, 20), seconds=60),
        ],
    )  # fmt: skip
    [row] = closed(served, user)
    assert row["close_reason"] == "stop"
    log = served.proc.log_path.read_text()
    assert '"event": "request"' in log  # requests are logged, pseudonymised
    for value in (*USERS, "IA-X-1", "IA-S-1", "02-00-5E-10-20-30", "100.64.7.8"):
        assert value not in log
    assert "stale_sessions_failed" not in log and "maintenance_failed" not in log
