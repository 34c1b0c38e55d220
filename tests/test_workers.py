"""``[server] workers = 2``: two server processes on the same ports, supervised.

Runs the real CLI against the test PostgreSQL: both workers answer, a worker
killed with SIGKILL is restarted, and SIGTERM stops everything with exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ispcare_radius.protocol.authenticator import build_request, hide_password, random_authenticator
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import encode_attributes, parse
from tests.support.server_proc import ServerProcess, create_database, drop_database

SECRET = b"workers-secret-31"
USER, PASSWORD = "wk-user-1", b"wk-Pw-1"


@pytest.fixture
def server(pg_admin_dsn: str, tmp_path: Path) -> Iterator[ServerProcess]:
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn, probe_secret=SECRET, server_config="workers = 2")
    try:
        srv.setup()
        srv.cli("nas", "add", "wk-nas", "127.0.0.1", "--secret", SECRET.decode())
        srv.cli("subscriber", "add", USER, "--password-stdin", input=PASSWORD.decode() + "\n")
        srv.start()
        yield srv
    finally:
        srv.kill()
        for pid in worker_pids(srv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        drop_database(pg_admin_dsn, name)


def worker_pids(srv: ServerProcess) -> set[int]:
    """Live worker processes: the supervisor's children, from /proc."""
    if srv.proc is None:
        return set()
    parent = srv.proc.pid
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.add(int(entry.name))
    return found


def logins(port: int, sockets: int = 16, per_socket: int = 8) -> int:
    """Access-Requests from many source ports (spread over workers); Accepts counted."""
    accepted = 0
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    try:
        for s in socks:
            s.settimeout(3.0)
            s.bind(("127.0.0.1", 0))
        for ident in range(per_socket):
            for s in socks:
                auth = random_authenticator()
                attrs = encode_attributes(
                    [(1, USER.encode()), (2, hide_password(PASSWORD, SECRET, auth))]
                )
                s.sendto(
                    build_request(
                        int(Code.ACCESS_REQUEST),
                        ident,
                        attrs,
                        SECRET,
                        message_authenticator=True,
                        authenticator=auth,
                    ),
                    ("127.0.0.1", port),
                )
            for s in socks:
                reply = parse(s.recv(4096))
                accepted += reply.code == Code.ACCESS_ACCEPT
    finally:
        for s in socks:
            s.close()
    return accepted


def test_two_workers_answer_restart_and_stop_cleanly(server: ServerProcess) -> None:
    # Each worker logs "started" once it serves.
    first = server.wait_for_log("started")
    second = server.wait_for_log("started", since=first.end)
    assert {first.fields["worker"], second.fields["worker"]} == {0, 1}
    assert len(worker_pids(server)) == 2
    assert logins(server.auth_port) == 16 * 8

    # A worker that dies is replaced; the ports keep answering meanwhile.
    victim = min(worker_pids(server))
    killed = server.log_size()
    os.kill(victim, signal.SIGKILL)
    # The supervisor reaps the victim before it starts the replacement.
    server.wait_for_log("started", since=killed)
    assert victim not in worker_pids(server) and len(worker_pids(server)) == 2
    assert logins(server.auth_port) == 16 * 8

    assert server.stop() == 0
    assert "exited (-9)" in server.log_path.read_text()


def test_workers_refuse_port_zero(pg_admin_dsn: str, tmp_path: Path) -> None:
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn, auth_port=0, server_config="workers = 2")
    try:
        srv.setup()
        proc = srv.run_cli("serve")
        assert proc.returncode == 2
        assert "fixed ports" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    finally:
        drop_database(pg_admin_dsn, name)
