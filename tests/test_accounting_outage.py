"""Outage: PostgreSQL really stopped in the middle of an accounting run, then started again.

The real server runs as a subprocess on a private PostgreSQL cluster; NAS-like
clients resend each request unchanged until it is answered. Every answered
request must end up in acct_records exactly once.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from ispcare_radius.protocol.authenticator import build_request, verify_response
from ispcare_radius.protocol.codes import Code, DecodeError
from ispcare_radius.protocol.packet import encode_attributes, parse
from tests.support import privatepg
from tests.support.server_proc import ServerProcess

SECRET = b"outage-secret-Tz81"
WORKERS = 8
# Synthetic subscriber name, never provisioned.
USER = b"outage-user-Synthetic"


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def accounting_start(i: int, identifier: int) -> bytes:
    """Accounting-Request (Start) number ``i``; Acct-Session-Time carries ``i`` as a marker."""
    attrs = [
        (40, u32(1)),  # Acct-Status-Type = Start
        (44, b"OUT-%06d" % i),  # Acct-Session-Id
        (1, USER),
        (4, bytes((127, 0, 0, 1))),  # NAS-IP-Address
        (46, u32(i)),  # Acct-Session-Time: the marker counted in the database
        (55, u32(1_900_000_000 + i)),  # Event-Timestamp
    ]
    return build_request(
        int(Code.ACCOUNTING_REQUEST), identifier, encode_attributes(attrs), SECRET,
        message_authenticator=False,
    )  # fmt: skip


class Nas:
    """Worker threads that send queued requests and resend each until it is answered.

    RFC 2866 section 2: a NAS keeps retransmitting an Accounting-Request with
    no response; the same bytes (same identifier) here, as a retransmission.
    """

    def __init__(self, port: int, deadline: float) -> None:
        self._port = port
        self._deadline = deadline
        self._queue: queue.Queue[int | None] = queue.Queue()
        # Guards ``answered``; notified on each answer, so waiting needs no polling.
        self._answers = threading.Condition()
        self.answered: dict[int, float] = {}
        self.resends = 0
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._work, args=(w,)) for w in range(WORKERS)]
        for thread in self._threads:
            thread.start()

    def send(self, numbers: range) -> None:
        for i in numbers:
            self._queue.put(i)

    def count(self, numbers: range) -> int:
        with self._answers:
            return sum(1 for i in numbers if i in self.answered)

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``condition`` holds, re-checked on each answer; fail naming ``what``."""
        with self._answers:
            if not self._answers.wait_for(condition, timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=60)

    def _work(self, worker: int) -> None:
        identifier = worker * 31
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3)
            while (i := self._queue.get()) is not None:
                identifier = (identifier + 1) % 256
                data = accounting_start(i, identifier)
                if not self._exchange(sock, data, identifier):
                    self.errors.append(f"request {i} never answered")
                    return
                with self._answers:
                    self.answered[i] = time.monotonic()
                    self._answers.notify_all()

    def _exchange(self, sock: socket.socket, data: bytes, identifier: int) -> bool:
        first = True
        while time.monotonic() < self._deadline:
            if not first:
                self.resends += 1
            first = False
            sock.sendto(data, ("127.0.0.1", self._port))
            try:
                while True:
                    reply = parse(sock.recv(4096))
                    if reply.identifier == identifier:
                        break
            except (TimeoutError, DecodeError):
                continue
            assert reply.code == Code.ACCOUNTING_RESPONSE
            assert verify_response(reply, data[4:20], SECRET)
            return True
        return False


def wait_drained(server: ServerProcess, since: int, timeout: float, what: str) -> None:
    """Until the spool has no segment left, re-checked on each ``spool_drained`` the server
    logs from byte ``since`` of its log on; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while spool_segments(server):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        since = server.wait_for_log("spool_drained", since=since, timeout=remaining).end


def markers(dsn: str) -> dict[int, int]:
    """Acct-Session-Time marker -> number of acct_records rows carrying it."""

    async def go() -> dict[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT session_time, count(*) AS n FROM acct_records GROUP BY session_time"
            )
        finally:
            await conn.close()
        return {int(r["session_time"]): int(r["n"]) for r in rows}

    return asyncio.run(go())


def spool_segments(server: ServerProcess) -> list[Path]:
    return sorted((server.workdir / "state" / "spool").glob("*.seg"))


@pytest.fixture
def cluster() -> Iterator[privatepg.PrivatePostgres]:
    if not privatepg.available():
        if os.environ.get("ISPCARE_REQUIRE_INTEROP") == "1":
            pytest.fail("PostgreSQL server binaries are required for the outage test")
        pytest.skip("PostgreSQL server binaries not installed")
    pg = privatepg.PrivatePostgres.create()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


def test_answered_accounting_survives_a_database_outage_exactly_once(
    cluster: privatepg.PrivatePostgres, tmp_path: Path
) -> None:
    """Requests answered before, during (from the spool) and after an immediate
    PostgreSQL stop are each in acct_records once, after the spool replays; a
    server killed with a full spool replays it when started again."""
    server = ServerProcess(
        tmp_path / "srv",
        cluster.dsn,
        probe_secret=SECRET,
        extra_config="\n[accounting]\nspool_after = 1.0\n",
    )
    server.setup()
    server.cli("nas", "add", "outage-nas", "127.0.0.1", "--secret", SECRET.decode())
    server.start()
    nas = Nas(server.acct_port, deadline=time.monotonic() + 55)
    try:
        nas.send(range(100))
        nas.wait_for(lambda: nas.count(range(100)) == 100, 15, "answers with the database up")
        assert spool_segments(server) == []

        nas.send(range(100, 200))
        nas.wait_for(lambda: nas.count(range(100, 200)) >= 20, 15, "the run to be under way")
        cluster.stop("immediate")  # requests are in flight as it goes down
        stopped = time.monotonic()
        nas.send(range(200, 300))
        nas.wait_for(lambda: nas.count(range(300)) == 300, 30, "answers from the spool")
        restarting = time.monotonic()
        # Every request queued after the stop was answered while PostgreSQL was down.
        assert all(stopped < nas.answered[i] < restarting for i in range(200, 300))
        assert spool_segments(server)

        back = server.log_size()
        cluster.start()
        wait_drained(server, back, 40, "the spool to drain")
        assert markers(cluster.dsn) == dict.fromkeys(range(300), 1)

        # Second outage, and the server dies (SIGKILL) with records only in its spool.
        cluster.stop("immediate")
        nas.send(range(300, 350))
        nas.wait_for(lambda: nas.count(range(300, 350)) == 50, 30, "answers from the spool")
        server.kill()
        assert spool_segments(server)
        cluster.start()
        restarted = server.log_size()
        server.start()
        wait_drained(server, restarted, 40, "the restarted server's replay")
    finally:
        nas.close()
        server.kill()
    assert nas.errors == []
    # Stopped: nothing replays late a second time.
    assert markers(cluster.dsn) == dict.fromkeys(range(350), 1)
