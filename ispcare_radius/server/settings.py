"""The server's one configuration value, validated once; imports nothing of ours."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

Listen = tuple[tuple[str, int], ...]

# The longest Access-Reject delay accepted, in seconds.
MAX_REJECT_DELAY = 10.0


def _check_listen(name: str, listen: Listen) -> None:
    seen: set[tuple[str, int]] = set()
    for item in listen:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError(f"{name}: each entry must be (address, port)")
        host, port = item
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{name}: {host!r} is not an IP address literal") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"{name}: port {port!r} is not in 0..65535")
        if item in seen and port != 0:
            raise ValueError(f"{name}: {host}:{port} is listed twice")
        seen.add(item)


def _check_positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'>=' if zero_ok else '>'} 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where to listen and how hard to work; every field validated at construction.

    Listen addresses are IP literals (``0.0.0.0``, ``::``, ``127.0.0.1``);
    port 0 asks the kernel for a free port (tests).  An empty ``acct_listen``
    serves authentication only.
    """

    auth_listen: Listen = (("0.0.0.0", 1812), ("::", 1812))
    acct_listen: Listen = (("0.0.0.0", 1813), ("::", 1813))
    reply_cache_ttl: float = 30.0
    reply_cache_max: int = 100_000
    # Requests handed to handlers and not yet answered; beyond it: drop `overloaded`.
    max_in_flight: int = 10_000
    recv_buffer_bytes: int = 4 * 1024 * 1024
    reuse_port: bool = False
    shutdown_grace: float = 10.0
    # One info line per completed request; costs CPU under load.
    log_requests: bool = True
    # At most one "Message-Authenticator missing" warning per NAS per interval.
    ma_warning_interval: float = 300.0
    max_attributes: int = 255
    # Seconds an Access-Reject is held back before it is sent (0 sends at once):
    # slows password guessing without blocking other requests.
    reject_delay: float = 1.0

    def __post_init__(self) -> None:
        _check_listen("auth_listen", self.auth_listen)
        _check_listen("acct_listen", self.acct_listen)
        if not self.auth_listen and not self.acct_listen:
            raise ValueError("auth_listen and acct_listen are both empty: nothing to serve")
        _check_positive("reply_cache_ttl", self.reply_cache_ttl)
        _check_positive("shutdown_grace", self.shutdown_grace, zero_ok=True)
        _check_positive("ma_warning_interval", self.ma_warning_interval)
        _check_positive("reject_delay", self.reject_delay, zero_ok=True)
        if self.reject_delay > MAX_REJECT_DELAY:
            # A NAS gives up on a request after a few seconds; a longer delay
            # would turn every reject into a timeout and a failover.
            raise ValueError(
                f"reject_delay must be <= {MAX_REJECT_DELAY:g}, got {self.reject_delay!r}"
            )
        for name, value, low in (
            ("reply_cache_max", self.reply_cache_max, 1),
            ("max_in_flight", self.max_in_flight, 1),
            ("recv_buffer_bytes", self.recv_buffer_bytes, 4096),
            ("max_attributes", self.max_attributes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
