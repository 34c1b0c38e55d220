"""A private PostgreSQL cluster a test may stop and start (the shared one must stay up).

Uses Debian's server binaries; PostgreSQL refuses to run as root, so as root
every command runs as the ``postgres`` user in a temp directory it owns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"


def available() -> bool:
    """Whether the binaries (and, as root, the ``postgres`` user) are there."""
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivatePostgres:
    """One cluster: ``init()``, ``start()``, ``stop(mode)``, ``destroy()``."""

    base: Path
    port: int

    @classmethod
    def create(cls) -> PrivatePostgres:
        base = Path(tempfile.mkdtemp(prefix="ispcare-private-pg-"))
        if os.geteuid() == 0:
            shutil.chown(base, USER, USER)
        cluster = cls(base, _free_tcp_port())
        cluster._run(
            str(BIN / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        return cluster

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
        proc = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"{Path(argv[0]).name} failed: {proc.stderr.strip()[-500:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        self._run(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` kills it without a shutdown checkpoint."""
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
