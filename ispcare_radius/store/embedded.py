"""The embedded PostgreSQL (the ``pgserver`` package) used when no DSN is configured.

Imports pgserver only; never server or cli. Blocking: call it before the
event loop serves traffic (or from a thread).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any


class EmbeddedPostgres:
    """A running embedded server: ``dsn`` to connect, ``stop()`` to shut it down."""

    def __init__(self, server: Any, data_dir: Path) -> None:
        self._server = server
        self.data_dir = data_dir
        self.dsn: str = str(server.get_uri())

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r})"

    def stop(self) -> None:
        """Stop the server; the data directory is kept for the next start."""
        self._server.cleanup()


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (initialising on first use) a PostgreSQL server whose data lives in ``data_dir``.

    It listens on a Unix socket inside ``data_dir`` only, with trust
    authentication for the local user. As root, pgserver runs PostgreSQL as
    a dedicated ``pgserver`` system user (created if missing) and makes the
    parent directories of ``data_dir`` traversable by it.
    """
    # Imported here: it is heavy and only needed without a DSN. Its runtime
    # directory lookup warns when XDG_RUNTIME_DIR is unset; that is harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if data_dir.exists() and os.listdir(data_dir) and not (data_dir / "PG_VERSION").exists():
        raise RuntimeError(f"{data_dir} is not empty and is not a PostgreSQL data directory")
    server = get_server(data_dir, cleanup_mode="stop")
    return EmbeddedPostgres(server, data_dir)
