"""``serve`` with ``[server] workers`` > 1: several server processes on the same ports.

DESIGN.md section 8: one process per core with ``SO_REUSEPORT``. The kernel
spreads datagrams over the workers by a hash of the source and destination
address, so every retransmission from one NAS socket reaches the worker that
holds its reply cache. Each worker is a complete server (its own caches,
writers and spool directory); what they share lives in PostgreSQL, where the
session applier and the maintenance jobs already take their rows or locks
so that several processes can run them.

The supervisor forks the workers before any event loop or database
connection exists, forwards SIGTERM/SIGINT/SIGHUP to them, restarts a worker
that dies (with a growing pause, giving up after repeated quick failures),
and exits 0 when every worker stopped cleanly after a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from ispcare_radius.cli.config import Config, ConfigError

# A worker that dies within this many seconds of starting counts as failing
# quickly; this many quick failures in a row stop the whole server.
QUICK_FAILURE = 10.0
MAX_QUICK_FAILURES = 5


def worker_config(config: Config, index: int) -> Config:
    """Worker ``index``'s configuration: shared ports, its own spool directory."""
    return dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, reuse_port=True),
        accounting=dataclasses.replace(
            config.accounting, spool_dir=config.accounting.spool_dir / f"worker-{index}"
        ),
        workers=1,
    )


def check_workers(config: Config) -> None:
    """Refuse settings several processes cannot share; ConfigError with one line."""
    listens = (*config.server.auth_listen, *config.server.acct_listen)
    if any(port == 0 for _, port in listens):
        raise ConfigError("server.workers > 1 needs fixed ports (not 0) in auth_listen/acct_listen")


def _say(text: str) -> None:
    sys.stderr.write(f"ispcare-radius: {text}\n")
    sys.stderr.flush()


class Supervisor:
    """Forks and watches ``count`` workers, each running ``run_worker(index)``."""

    def __init__(self, count: int, run_worker: Callable[[int], int]) -> None:
        self._count = count
        self._run_worker = run_worker
        self._children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self._stopping = False
        self._failed = False
        self._quick_failures = 0

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = self._run_worker(index)
            except ConfigError as exc:
                _say(f"worker {index}: error: {exc}")
            except OSError as exc:  # our own messages (ports, spool): no personal values
                _say(f"worker {index}: error: {exc.strerror or exc}")
            except BaseException as exc:  # never return into the supervisor's code
                _say(f"worker {index}: unexpected {type(exc).__name__}")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self._children[pid] = (index, time.monotonic())

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            self._stopping = True
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    def run(self) -> int:
        """Run until every worker has stopped; 0 after a clean stop on a signal."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        for index in range(self._count):
            self._spawn(index)
        _say(f"started {self._count} workers: pids {sorted(self._children)}")
        while self._children:
            pid, status = os.wait()  # retried after a signal handler runs (PEP 475)
            if pid not in self._children:
                continue
            index, started = self._children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                self._failed |= code != 0
                continue
            self._restart(index, code, time.monotonic() - started)
        return 1 if self._failed else 0

    def _restart(self, index: int, code: int, lived: float) -> None:
        _say(f"worker {index} exited ({code}) after {lived:.0f} s")
        self._quick_failures = self._quick_failures + 1 if lived < QUICK_FAILURE else 0
        if self._quick_failures >= MAX_QUICK_FAILURES:
            _say("workers keep failing at start; stopping")
            self._failed = True
            self._forward(signal.SIGTERM, None)
            return
        # A pause that grows with each quick failure keeps a broken setup
        # (database down at start, say) from becoming a fork loop.
        time.sleep(min(2.0**self._quick_failures - 1, 30.0))
        if not self._stopping:
            self._spawn(index)


def run_workers(config: Config, *, demo: bool) -> int:
    """``serve`` with ``config.workers`` processes; returns the exit code."""
    from ispcare_radius.cli.serve import prepare_demo, serve

    check_workers(config)
    embedded = None
    if not config.database.dsn:
        # The supervisor runs the embedded PostgreSQL for all workers, so no
        # worker's exit can stop it under the others.
        from ispcare_radius.store.embedded import start_embedded

        try:
            embedded = start_embedded(config.database.embedded_dir)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"embedded PostgreSQL: {exc}") from None
        config = dataclasses.replace(
            config, database=dataclasses.replace(config.database, dsn=embedded.dsn)
        )
    try:
        if demo:
            print(asyncio.run(prepare_demo(config)), flush=True)

        def run_worker(index: int) -> int:
            return asyncio.run(serve(worker_config(config, index), worker=index))

        return Supervisor(config.workers, run_worker).run()
    finally:
        if embedded is not None:
            embedded.stop()
