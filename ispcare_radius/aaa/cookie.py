"""The Class cookie: a server-made session identifier put in every Access-Accept.

RFC 2865 section 5.25: Class "is available to be sent by the server to the
client in an Access-Accept and SHOULD be sent unmodified by the client to the
accounting server as part of the Accounting-Request packet". A random cookie
there lets accounting name the session the server authorised, whatever the
NAS does with Acct-Session-Id (reused after reboots, per port, per box).

Pure: no I/O. The cookie holds no personal value; the store keys it before use.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Final

# Tag + version, then 16 random bytes. Other Class values (a plan's own, a
# proxy's) are left alone: only values with this exact shape are cookies.
PREFIX: Final = b"ISPC\x01"
RANDOM_BYTES: Final = 16
LENGTH: Final = len(PREFIX) + RANDOM_BYTES
CLASS: Final = 25


def new_cookie() -> bytes:
    """A fresh cookie (21 bytes)."""
    return PREFIX + secrets.token_bytes(RANDOM_BYTES)


def is_cookie(value: bytes) -> bool:
    """True when ``value`` has the shape of a cookie this server made."""
    return len(value) == LENGTH and value.startswith(PREFIX)


def find_cookie(class_values: Iterable[bytes]) -> bytes | None:
    """The first cookie among a request's Class values, or None."""
    for value in class_values:
        if is_cookie(value):
            return value
    return None
