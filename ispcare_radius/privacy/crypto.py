"""Field encryption and key wrapping with AES-256-GCM; imports no asyncio, asyncpg or socket.

Every blob, a field ciphertext or a wrapped key, has one layout::

    format (1 byte, 0x01) | key version (uint32, big-endian) | nonce (12) | ciphertext + tag (16)

The header is authenticated together with the caller's associated data, so a
blob cannot be moved to another key version, row, column or subscriber.
"""

from __future__ import annotations

import enum
import functools
import os
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ispcare_radius.privacy.keys import MasterKeys

FORMAT_V1: Final = 0x01
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_HEADER: Final = struct.Struct(">BI")
HEADER_BYTES: Final = _HEADER.size
MIN_BLOB_BYTES: Final = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
_MAX_VERSION: Final = 0xFFFFFFFF
_FIELD_DOMAIN: Final = b"ispcare-radius/field/v1"
_WRAP_DOMAIN: Final = b"ispcare-radius/wrap/v1"


class DecryptFailure(enum.StrEnum):
    """Why a blob could not be opened; a stable slug for logs and metrics."""

    TRUNCATED = "truncated"
    UNKNOWN_FORMAT = "unknown_format"
    KEY_VERSION = "key_version"
    AUTHENTICATION = "authentication"
    BAD_KEY_LENGTH = "bad_key_length"


class DecryptError(Exception):
    """A blob did not open; the message names the reason, never any content."""

    def __init__(self, reason: DecryptFailure = DecryptFailure.AUTHENTICATION) -> None:
        super().__init__(f"decryption failed: {reason.value}")
        self.reason = reason


def _part(tag: bytes, value: bytes) -> bytes:
    return tag + len(value).to_bytes(4, "big") + value


@functools.lru_cache(maxsize=512)
def _aad_prefix(table: str, column: str) -> bytes:
    return b"".join(
        (
            _part(b"d", _FIELD_DOMAIN),
            _part(b"s", table.encode("utf-8")),
            _part(b"s", column.encode("utf-8")),
        )
    )


_NO_SUBSCRIBER: Final = _part(b"n", b"")


def field_aad(table: str, column: str, row_key: str | int, subscriber_id: int | None) -> bytes:
    """Associated data binding a field value to its table, column, row and subscriber.

    Each part is type-tagged and length-prefixed, so distinct tuples never give
    the same bytes (row key ``"42"`` differs from ``42``, ``None`` from ``0``).
    """
    if isinstance(row_key, bool) or isinstance(subscriber_id, bool):
        raise TypeError("row_key and subscriber_id must not be booleans")
    if isinstance(row_key, int):
        row = _part(b"i", b"%d" % row_key)
    else:
        row = _part(b"s", row_key.encode("utf-8"))
    subscriber = _NO_SUBSCRIBER if subscriber_id is None else _part(b"i", b"%d" % subscriber_id)
    return _aad_prefix(table, column) + row + subscriber


def key_version(blob: bytes) -> int:
    """The key version named in a blob's header, checking only its layout."""
    if len(blob) < MIN_BLOB_BYTES:
        raise DecryptError(DecryptFailure.TRUNCATED)
    fmt, version = _HEADER.unpack_from(blob)
    if fmt != FORMAT_V1:
        raise DecryptError(DecryptFailure.UNKNOWN_FORMAT)
    return int(version)


class FieldCipher:
    """AES-256-GCM under one data key of one version; build once, reuse per value."""

    __slots__ = ("_aead", "_header", "_version")

    def __init__(self, key: bytes, version: int) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a field key must be {KEY_BYTES} bytes")
        if not 0 <= version <= _MAX_VERSION:
            raise ValueError("key version must fit in 32 bits")
        self._aead = AESGCM(bytes(key))
        self._version = version
        self._header = _HEADER.pack(FORMAT_V1, version)

    def __repr__(self) -> str:
        return f"FieldCipher(version={self._version})"

    @property
    def version(self) -> int:
        """The key version written into every blob this cipher seals."""
        return self._version

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``aad`` under a fresh random 96-bit nonce."""
        # NIST SP 800-38D section 8.2.2: random IVs are allowed for up to 2^32
        # invocations per key; per-subscriber keys stay far below that.
        nonce = os.urandom(NONCE_BYTES)
        header = self._header
        return header + nonce + self._aead.encrypt(nonce, plaintext, header + aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob sealed by ``seal`` with the same key, version and ``aad``.

        Raises ``DecryptError`` for a wrong layout or key version, a wrong ``aad``,
        or any tampered byte.
        """
        header = self._header
        if blob[:HEADER_BYTES] != header:
            key_version(blob)  # raises for truncated or unknown format
            raise DecryptError(DecryptFailure.KEY_VERSION)
        if len(blob) < MIN_BLOB_BYTES:
            raise DecryptError(DecryptFailure.TRUNCATED)
        nonce = blob[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[HEADER_BYTES + NONCE_BYTES :], header + aad)
        except InvalidTag:
            raise DecryptError(DecryptFailure.AUTHENTICATION) from None


def new_data_key() -> bytes:
    """A fresh random 256-bit key for a subscriber, an epoch or a blind index."""
    return os.urandom(KEY_BYTES)


def _wrap_aad(purpose: str) -> bytes:
    return _part(b"d", _WRAP_DOMAIN) + _part(b"s", purpose.encode("utf-8"))


def wrap_key(masters: MasterKeys, data_key: bytes, *, purpose: str) -> bytes:
    """Encrypt ``data_key`` under the primary master key, bound to ``purpose``.

    ``purpose`` names what the key is for (``"subscriber:42"``,
    ``"system:blind_index"``); unwrapping under another purpose fails.
    """
    if len(data_key) != KEY_BYTES:
        raise ValueError(f"a data key must be {KEY_BYTES} bytes")
    return wrap_payload(masters, data_key, purpose=purpose)


def unwrap_key(masters: MasterKeys, wrapped: bytes, *, purpose: str) -> bytes:
    """Decrypt a key wrapped by ``wrap_key``, under the master key version it names.

    Raises ``DecryptError`` (reason ``key_version``) when that version is not
    loaded, and for any tampering or a wrong ``purpose``.
    """
    key = unwrap_payload(masters, wrapped, purpose=purpose)
    if len(key) != KEY_BYTES:
        raise DecryptError(DecryptFailure.BAD_KEY_LENGTH)
    return key


def wrap_payload(masters: MasterKeys, payload: bytes, *, purpose: str) -> bytes:
    """``wrap_key`` for a key together with its own metadata (a key and its
    data-key version); the caller checks the layout when unwrapping."""
    version, kek = masters.primary()
    return FieldCipher(kek, version).seal(payload, _wrap_aad(purpose))


def unwrap_payload(masters: MasterKeys, wrapped: bytes, *, purpose: str) -> bytes:
    """``unwrap_key`` without the length check: the payload ``wrap_payload`` sealed.

    Also what a KEK rotation uses to re-wrap any wrapped key unchanged.
    """
    version = key_version(wrapped)
    try:
        kek = masters.get(version)
    except KeyError:
        raise DecryptError(DecryptFailure.KEY_VERSION) from None
    return FieldCipher(kek, version).open(wrapped, _wrap_aad(purpose))


def wrapped_key_version(wrapped: bytes) -> int:
    """The master key version a wrapped key was wrapped under (for KEK rotation)."""
    return key_version(wrapped)
