"""Runs the real ``ispcare-radius`` command as a subprocess for end-to-end tests.

Provisioning goes through the CLI too, so these tests cover what an operator types.
Tests wait for what the server does through events, never by sleeping: a JSON
log line it writes (``wait_for_log``), or a NOTIFY when its session applier
dequeues (``watch_applier``/``wait_applied``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ispcare_radius.protocol.authenticator import build_request
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import parse


def free_udp_port() -> int:
    """A UDP port free on both 127.0.0.1 and ::1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
            s4.bind(("127.0.0.1", 0))
            port = int(s4.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
                    s6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")


@dataclass(frozen=True)
class LogLine:
    """One JSON line of the server log, and the byte offset just past it."""

    fields: dict[str, Any]
    end: int  # pass as ``since`` to wait for a later line


# The test's own trigger on acct_pending (installed by ``watch_applier``), and its channel.
_DEQUEUED = "ispcare_test_dequeued"


@dataclass
class ServerProcess:
    """One configured ispcare-radius instance: config, keys, database, process."""

    workdir: Path
    dsn: str
    auth_port: int = field(default_factory=free_udp_port)
    acct_port: int = field(default_factory=free_udp_port)
    extra_config: str = ""
    # Extra lines for the [server] table (TOML cannot reopen it later).
    server_config: str = ""
    # A NAS secret for 127.0.0.1, used by the readiness probe (Status-Server).
    probe_secret: bytes = b""
    probe_host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "ispcare-radius.toml"

    @property
    def key_path(self) -> Path:
        return self.workdir / "keys" / "master.key"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""
[server]
auth_listen = ["127.0.0.1:{self.auth_port}", "[::1]:{self.auth_port}"]
acct_listen = ["127.0.0.1:{self.acct_port}"]
shutdown_grace = 5
# Short enough for radclient's 1 s timeout (tests/support/peers.py), long
# enough to show that rejects are held back.
reject_delay = 0.2
{self.server_config}

[database]
dsn = "{self.dsn}"

[keys]
master_key_file = "{self.key_path}"

[auth_events]
flush_interval = 0.05

[logging]
format = "json"
level = "info"
{self.extra_config}
"""
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("ISPCARE_DSN", None)
        env.pop("ISPCARE_MASTER_KEY", None)
        env["ISPCARE_STATE_DIR"] = str(self.workdir / "state")
        return env

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run ``ispcare-radius --config ... ARGS`` and return its stdout."""
        proc = self.run_cli(*args, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"ispcare-radius {args[:2]} failed: {proc.stderr.strip()}")
        return proc.stdout

    def run_cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``ispcare-radius --config ... ARGS``; the finished process."""
        return subprocess.run(
            [sys.executable, "-m", "ispcare_radius", "--config", str(self.config_path), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
            check=False,
        )

    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.cli("keys", "init")
        self.cli("migrate")

    def start(self, timeout: float = 60.0) -> None:
        """Start ``serve`` and wait until it answers a Status-Server."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ispcare_radius", "--config", str(self.config_path), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_path.read_text()}")
            if self.status_server_answers():
                return
        raise AssertionError(f"server did not come up:\n{self.log_path.read_text()}")

    def status_server_answers(self) -> bool:
        """True once the auth port answers a Status-Server signed with ``probe_secret``."""
        return _probe(self.probe_host, self.auth_port, self.probe_secret)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_size(self) -> int:
        """Where the log ends now: ``since`` for lines the server writes from here on."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_log(self, event: str, *, since: int = 0, timeout: float = 30.0) -> LogLine:
        """The first log line for ``event`` at or after byte ``since``, once the server writes it.

        Sleeps on the log file's inotify watch and on the process (a pidfd),
        so it wakes when the server writes or exits; fails after ``timeout``
        seconds, or at once if the server exits without writing the line.
        """
        deadline = time.monotonic() + timeout
        with _watch_writes(self.log_path) as written, contextlib.ExitStack() as stack:
            waits = [written]
            if self.proc is not None and self.proc.poll() is None:
                exited = os.pidfd_open(self.proc.pid)
                stack.callback(os.close, exited)
                waits.append(exited)
            position = since
            while True:
                # The watch is in place before the read: a write after it wakes the select.
                found, position = _find_event(self.log_path, event, position)
                if found is not None:
                    return found
                if self.proc is None or self.proc.poll() is not None:
                    raise AssertionError(f"server stopped without logging {event!r}:{self._tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"server did not log {event!r} within {timeout} s:{self._tail()}"
                    )
                ready, _, _ = select.select(waits, [], [], remaining)
                if written in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(written, 4096)  # consume the notices; the file is read above

    def _tail(self, lines: int = 20) -> str:
        """The end of the log, for a failure message."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n" + "\n".join(text.splitlines()[-lines:])

    def watch_applier(self) -> None:
        """Have the database NOTIFY each time a transaction takes rows off acct_pending.

        The session applier dequeues in the transaction that applies, so the
        notice arrives as that work commits. A test-only trigger (call after
        ``setup``): the schema under test sends no such notice.
        """
        _run_sql(
            self.dsn,
            f"""
            CREATE FUNCTION {_DEQUEUED}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{_DEQUEUED}', '');
                RETURN NULL;
            END $$;
            CREATE TRIGGER {_DEQUEUED} AFTER DELETE ON acct_pending
                FOR EACH STATEMENT EXECUTE FUNCTION {_DEQUEUED}();
            """,
        )

    def wait_applied(self, timeout: float = 15.0) -> None:
        """Wait until the session applier has taken every stored record off acct_pending.

        Checked now and again on each dequeue notice (``watch_applier``): a
        record the applier holds is still visible until its transaction commits.
        """
        import asyncio

        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                installed = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = $1)", _DEQUEUED
                )
                assert installed, "wait_applied needs watch_applier() after setup()"
                dequeued = asyncio.Event()
                await conn.add_listener(_DEQUEUED, lambda *_: dequeued.set())
                try:
                    async with asyncio.timeout(timeout):
                        while True:
                            dequeued.clear()
                            if not await conn.fetchval(
                                "SELECT EXISTS (SELECT 1 FROM acct_pending)"
                            ):
                                return
                            await dequeued.wait()
                except TimeoutError:
                    raise AssertionError("session applier did not drain acct_pending") from None
            finally:
                await conn.close()

        asyncio.run(go())


def _probe(host: str, port: int, secret: bytes) -> bool:
    data = build_request(int(Code.STATUS_SERVER), 7, b"", secret, message_authenticator=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(0.25)
        s.sendto(data, (host, port))
        with contextlib.suppress(TimeoutError, ConnectionRefusedError):
            reply = parse(s.recv(4096))
            return reply.code == Code.ACCESS_ACCEPT
    return False


_IN_MODIFY = 0x00000002
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _watch_writes(path: Path) -> Iterator[int]:
    """An inotify descriptor that turns readable when ``path`` is written to (Linux)."""
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed")
    try:
        if _libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed on {path}")
        yield fd
    finally:
        os.close(fd)


def _find_event(path: Path, event: str, position: int) -> tuple[LogLine | None, int]:
    """The first complete JSON line for ``event`` from byte ``position``; where reading stopped.

    Lines that are not JSON (the supervisor's messages) are passed over; a
    line still being written is left for the next read.
    """
    with path.open("rb") as fh:
        fh.seek(position)
        data = fh.read()
    for raw in data.split(b"\n")[:-1]:
        position += len(raw) + 1
        try:
            fields = json.loads(raw)
        except ValueError:
            continue
        if isinstance(fields, dict) and fields.get("event") == event:
            return LogLine(fields, position), position
    return None, position


def _run_sql(dsn: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def create_database(admin_dsn: str) -> tuple[str, str]:
    """A fresh database on the server of ``admin_dsn``: (dsn, name)."""
    import asyncio

    import asyncpg

    name = f"ispcare_it_{secrets.token_hex(6)}"

    async def go() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(go())
    base, _, _ = admin_dsn.rpartition("/")
    query = ""
    if "?" in admin_dsn:
        query = "?" + admin_dsn.split("?", 1)[1]
        base = admin_dsn.split("?", 1)[0].rpartition("/")[0]
    return f"{base}/{name}{query}", name


def drop_database(admin_dsn: str, name: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(go())


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.kill()
