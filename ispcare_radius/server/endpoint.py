"""UDP sockets read straight from the event loop's selector; imports nothing of ours.

asyncio's datagram transport reads one datagram per loop iteration; under
load that makes the selector the hottest part of the server.  An endpoint
here registers its socket with ``loop.add_reader`` and drains up to
``batch`` datagrams per wake-up, handing each to the server's callback,
which never raises into the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from enum import StrEnum
from typing import Any

# RFC 2865 section 3: "The maximum length is 4096."  Longer datagrams are
# truncated here and their excess ignored as padding by the parser.
MAX_DATAGRAM = 4096


class PortKind(StrEnum):
    """Which RADIUS service a socket offers."""

    AUTH = "auth"
    ACCT = "acct"


def open_udp_socket(
    host: str, port: int, *, recv_buffer_bytes: int, reuse_port: bool
) -> socket.socket:
    """A bound, non-blocking UDP socket for ``host``:``port``.

    IPv6 sockets are IPv6-only, so that ``::`` and ``0.0.0.0`` can both be
    bound on the same port as separate sockets.  Raises OSError when the
    address cannot be bound (the caller reports it as a configuration error).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # The kernel may clamp this to net.core.rmem_max; a short buffer only
        # costs drops under bursts, so it is not an error.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


# (endpoint, datagram, source address as the socket gives it) -> None
DatagramSink = Callable[["Endpoint", bytes, Any], None]
ErrorSink = Callable[["Endpoint", BaseException], None]


class Endpoint:
    """One bound UDP socket: feeds datagrams to the server and sends replies."""

    __slots__ = (
        "_fd",
        "_loop",
        "_on_datagram",
        "_on_error",
        "_reading",
        "_sock",
        "batch",
        "kind",
        "local_host",
        "local_port",
        "send_failures",
    )

    def __init__(
        self,
        kind: PortKind,
        sock: socket.socket,
        on_datagram: DatagramSink,
        on_error: ErrorSink,
        *,
        batch: int = 64,
    ) -> None:
        self.kind = kind
        self.batch = batch
        self.send_failures = 0
        self._sock = sock
        self._fd = sock.fileno()
        self._on_datagram = on_datagram
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._reading = False
        name = sock.getsockname()
        self.local_host: str = name[0]
        self.local_port: int = name[1]

    def __repr__(self) -> str:
        return f"Endpoint({self.kind}, port={self.local_port}, reading={self._reading})"

    def start_accepting(self) -> None:
        """Register the socket with the event loop."""
        if not self._reading and self._fd >= 0:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reading = True

    def stop_accepting(self) -> None:
        """Take no new datagrams (they wait in the kernel); replies can still be sent."""
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _read_ready(self) -> None:
        recvfrom = self._sock.recvfrom
        on_datagram = self._on_datagram
        for _ in range(self.batch):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Queued ICMP errors surface here on some systems; the next
                # datagram is unaffected.
                continue
            try:
                on_datagram(self, data, addr)
            except Exception as exc:  # the event loop must never see our bugs
                self._on_error(self, exc)
            if not self._reading:
                return

    def send(self, data: bytes, addr: Any) -> None:
        """Send one datagram; a full send buffer drops it (the NAS retransmits)."""
        try:
            self._sock.sendto(data, addr)
        except OSError:
            self.send_failures += 1

    def close(self) -> None:
        """Stop reading and close the socket."""
        self.stop_accepting()
        if self._fd >= 0:
            self._sock.close()
            self._fd = -1
