"""The command line: one-line errors with non-zero exits, provisioning, and the
quick start's demo on the embedded PostgreSQL answering the radtest it prints."""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.peers import require_tool
from tests.support.server_proc import (
    ServerProcess,
    create_database,
    drop_database,
    free_udp_port,
)


def _cli(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ispcare_radius", *args],
        capture_output=True,
        text=True,
        env=env,
        input=input,
        timeout=120,
        check=False,
    )


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("ISPCARE_DSN", "ISPCARE_CONFIG", "ISPCARE_MASTER_KEY", "ISPCARE_MASTER_KEY_FILE"):
        env.pop(key, None)
    env["ISPCARE_STATE_DIR"] = str(tmp_path / "state")
    return env


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("ispcare-radius: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["nas", "add", "x", "not-an-address"],
        ["plan", "add", "p", "--download", "fast"],
        ["plan", "add", "p", "--download", "inf"],
        ["subscriber", "add", "u", "--expires", "next tuesday"],
        ["subscriber", "set", "u", "--status", "sleeping"],
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    """Each malformed command line is refused with one line on stderr and status 2."""
    proc = _cli(*args, env=_isolated_env(tmp_path))
    assert proc.returncode == 2
    _one_line_error(proc)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[server]\nauth_lisen = []\n", "unknown setting server.auth_lisen"),
        ("[server]\nauth_listen = ['0.0.0.0:99999']\n", "port out of range"),
        ("[auth]\non_store_failure = 'accept'\n", "on_store_failure"),
        ("[database\n", "config file"),
        ("[logging]\nlevel = 'chatty'\n", "logging.level"),
    ],
)
def test_bad_config_gives_one_line_and_exit_2(text: str, fragment: str, tmp_path: Path) -> None:
    """A wrong config file names the bad setting in one line, exit status 2."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    proc = _cli("--config", str(cfg), "migrate", env=_isolated_env(tmp_path))
    assert proc.returncode == 2
    assert fragment in _one_line_error(proc)


def test_missing_master_key_is_a_one_line_error(tmp_path: Path) -> None:
    """Without a master key the command says how to make one, exit status 2."""
    proc = _cli(
        "--dsn", "postgresql://nobody@127.0.0.1:1/none", "migrate", env=_isolated_env(tmp_path)
    )
    assert proc.returncode == 2
    assert "keys init" in _one_line_error(proc)


def test_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    """A database that does not answer gives one line and exit status 1, no traceback."""
    env = _isolated_env(tmp_path)
    assert _cli("keys", "init", env=env).returncode == 0
    proc = _cli("--dsn", f"postgresql://postgres@127.0.0.1:{free_udp_port()}/x", "migrate", env=env)
    assert proc.returncode == 1
    assert "database unavailable" in _one_line_error(proc)


def test_keys_init_refuses_to_overwrite(tmp_path: Path) -> None:
    """keys init makes a 0400 key file once, and refuses to replace it."""
    env = _isolated_env(tmp_path)
    assert _cli("keys", "init", env=env).returncode == 0
    key = tmp_path / "state" / "master.key"
    assert key.stat().st_mode & 0o777 == 0o400
    proc = _cli("keys", "init", env=env)
    assert proc.returncode != 0
    _one_line_error(proc)


def test_provisioning_round_trip(pg_admin_dsn: str, tmp_path: Path) -> None:
    """nas/plan/subscriber commands add, show, change, import, list and remove."""
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn)
    try:
        srv.setup()
        out = srv.cli("nas", "add", "edge-1", "192.0.2.0/28", "--vendor", "mikrotik")
        assert "shared secret:" in out
        assert "edge-1" in srv.cli("nas", "list")
        srv.cli("plan", "add", "p-50", "--download", "50M", "--upload", "10M")
        assert "download_kbps=50000" in srv.cli("plan", "list")
        srv.cli(
            "subscriber",
            "add",
            "cli-user-1",
            "--plan",
            "p-50",
            "--password",
            "pw-1",
            "--mac-lock",
            "02:00:00:00:00:01",
        )
        shown = srv.cli("subscriber", "show", "cli-user-1")
        assert "status: active" in shown and "plan: p-50" in shown
        assert "pw-1" not in shown
        srv.cli("subscriber", "set", "cli-user-1", "--status", "suspended")
        assert "status: suspended" in srv.cli("subscriber", "show", "cli-user-1")
        dup = srv.run_cli("subscriber", "add", "cli-user-1", "--password-stdin", input="x\n")
        assert dup.returncode == 1
        assert "already exists" in _one_line_error(dup)
        csv = tmp_path / "subs.csv"
        csv.write_text(
            "user_name,password,plan\n"
            + "".join(f"bulk-{i},secret-{i},p-50\n" for i in range(2000))
        )
        assert "imported 2000 subscribers" in srv.cli(
            "subscriber", "import", str(csv), "--no-progress"
        )
        listed = srv.cli("subscriber", "list", "--limit", "5000")
        assert listed.count("bulk-") == 2000
        srv.cli("subscriber", "remove", "bulk-7")
        gone = srv.run_cli("subscriber", "show", "bulk-7")
        assert gone.returncode == 1
        assert "no such subscriber" in _one_line_error(gone)
        bad = tmp_path / "bad.csv"
        bad.write_text("user_name,password\nok-1,pw\n,missing-name\n")
        proc = srv.run_cli("subscriber", "import", str(bad), "--no-progress")
        assert proc.returncode == 1
        assert "line 3" in _one_line_error(proc)
    finally:
        drop_database(pg_admin_dsn, name)


@pytest.mark.embedded
def test_demo_on_embedded_postgres_answers_its_radtest_line(tmp_path: Path) -> None:
    """`serve --demo` with no database configured starts the embedded PostgreSQL and
    prints a radtest line that gets an Access-Accept; SIGTERM exits 0."""
    radtest = require_tool("radtest")
    env = _isolated_env(tmp_path)
    port = free_udp_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ispcare_radius",
            "serve",
            "--demo",
            "--auth-port",
            str(port),
            "--acct-port",
            str(free_udp_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = _read_until(proc, "radtest ", deadline=time.monotonic() + 120)
        args = shlex.split(line.strip())
        assert args[0] == "radtest"
        result = subprocess.run(
            [radtest, *args[1:]], capture_output=True, text=True, timeout=60, check=False
        )
        assert "Received Access-Accept" in result.stdout, result.stdout + result.stderr
        assert "Mikrotik-Rate-Limit" in result.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_until(proc: subprocess.Popen[str], needle: str, *, deadline: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = []
    while time.monotonic() < deadline:
        if not sel.select(timeout=deadline - time.monotonic()):
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError("no radtest line; output was:\n" + "".join(seen[-30:]))


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ("No-Such-Attribute=1", "unknown reply attribute"),
        ("Message-Authenticator=0x00", "cannot be a plan reply attribute"),
        ("Proxy-State=0x01", "cannot be a plan reply attribute"),
        ("Session-Timeout=soon", "bad value for Session-Timeout"),
    ],
)
def test_plan_reply_attributes_are_checked_when_added(
    reply: str, fragment: str, pg_admin_dsn: str, tmp_path: Path
) -> None:
    """A plan attribute that would break every Access-Accept is refused up front."""
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn)
    try:
        srv.setup()
        proc = srv.run_cli("plan", "add", "p", "--reply", reply)
        assert proc.returncode == 2
        assert fragment in _one_line_error(proc)
        assert "(none)" in srv.cli("plan", "list")
        srv.cli("plan", "add", "ok", "--reply", "Framed-Pool=pool-a")
    finally:
        drop_database(pg_admin_dsn, name)


def test_database_errors_are_one_line(pg_admin_dsn: str, tmp_path: Path) -> None:
    """A wrong master key, a missing database or a malformed DSN each give one line."""
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn)
    try:
        srv.setup()
        env = _isolated_env(tmp_path / "other")
        assert _cli("keys", "init", env=env).returncode == 0
        wrong_key = _cli("--dsn", dsn, "nas", "list", env=env)
        assert wrong_key.returncode == 2
        assert "master key" in _one_line_error(wrong_key)
        base = dsn.rsplit("/", 1)[0]
        missing = _cli("--dsn", f"{base}/no_such_db_4242", "migrate", env=env)
        assert missing.returncode in (1, 2)
        _one_line_error(missing)
        malformed = _cli("--dsn", "postgresql://u:secretpw@[::1:x/db", "migrate", env=env)
        assert malformed.returncode in (1, 2)
        assert "secretpw" not in _one_line_error(malformed)
    finally:
        drop_database(pg_admin_dsn, name)


def test_plan_quota_options(pg_admin_dsn: str, tmp_path: Path) -> None:
    """--quota takes decimal sizes; a bad billing day is a one-line usage error."""
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn)
    try:
        srv.setup()
        srv.cli("plan", "add", "capped", "--quota", "50G", "--quota-period", "day")
        listed = srv.cli("plan", "list")
        assert "quota_bytes=50000000000" in listed and "quota_period=day" in listed
        bad = srv.run_cli("plan", "add", "x", "--billing-day", "31")
        assert bad.returncode == 2
        assert "billing day" in _one_line_error(bad)
    finally:
        drop_database(pg_admin_dsn, name)
