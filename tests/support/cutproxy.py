"""A TCP proxy in front of PostgreSQL that can cut every connection mid-query.

Used to show what authentication does when the database goes away while a
request is being processed.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


def _target(dsn: str) -> tuple[str | None, int, str | None]:
    """(tcp host, port, unix socket path) of ``dsn``."""
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    port = parts.port or int(parse_qs(parts.query).get("port", ["5432"])[0])
    if socket_dir and socket_dir.startswith("/"):
        return None, port, f"{socket_dir}/.s.PGSQL.{port}"
    return parts.hostname or "127.0.0.1", port, None


class CutProxy:
    """Forwards TCP to the database; ``cut_on_next_query()`` arms a cut.

    Once armed, the next bytes a client sends (its next query) are not
    forwarded: both sides of that connection are closed instead, so the
    client sees its connection die with a query in flight.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._host, self._port, self._unix = _target(dsn)
        self._server: asyncio.Server | None = None
        self._armed = False
        self.cuts = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        """Start listening; returns a DSN that goes through the proxy."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self._dsn)
        user = parts.username or "postgres"
        password = f":{parts.password}" if parts.password else ""
        query = "&".join(
            f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k not in ("host", "port")
        )
        netloc = f"{user}{password}@127.0.0.1:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def cut_on_next_query(self) -> None:
        self._armed = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for w in list(self._writers):
            w.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._unix is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
        else:
            assert self._host is not None
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        self._writers |= {writer, up_writer}
        upstream = asyncio.create_task(self._pipe(up_reader, writer, cuttable=False))
        try:
            await self._pipe(reader, up_writer, cuttable=True)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await upstream
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, cuttable: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if cuttable and self._armed:
                    self._armed = False
                    self.cuts += 1
                    return
                writer.write(data)
                await writer.drain()
