"""A value that must never be shown: passwords, shared secrets, keys.

Pure: imports nothing of ours.
"""

from __future__ import annotations

import hmac
import secrets
import string
from typing import Final

_TYPABLE: Final = string.ascii_letters + string.digits


def typable_token(length: int) -> str:
    """A random letters-and-digits string: safe to paste on a command line.

    Generated shared secrets and passwords end up in ``radtest``/``radclient``
    argument lists; a leading ``-`` (possible with ``token_urlsafe``) would be
    read as an option there. 62 symbols give 5.95 bits each.
    """
    return "".join(secrets.choice(_TYPABLE) for _ in range(length))


class Secret:
    """Bytes that print as ``Secret(***)`` in reprs, logs and tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | str) -> None:
        if isinstance(value, str):
            value = value.encode("utf-8")
        self._value: Final[bytes] = bytes(value)

    def reveal(self) -> bytes:
        """The secret bytes; call only where they are used, never to log."""
        return self._value

    def equals(self, other: bytes) -> bool:
        """Constant-time comparison with ``other``."""
        return hmac.compare_digest(self._value, other)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")
