"""Normalisation, keyed blind indexes and log pseudonyms; imports no asyncio, asyncpg or socket.

A blind index is HMAC-SHA256 over a normalised value under its own key, so the
database can look a value up without holding it. Normalise first: the same
user name or MAC written two ways must give the same index.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import Final

MAC_BYTES: Final = 6
DIGEST_BYTES: Final = 32


def normalize_user_name(name: str) -> bytes:
    """UTF-8 of ``name`` after NFKC and case folding; nothing else is stripped.

    NFKC is applied again after folding because folding can leave a string that
    is not NFKC-stable; the result is then the same for every equivalent spelling.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    try:
        return folded.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("user name contains characters that cannot be encoded") from None


def normalize_mac(text: str) -> bytes | None:
    """The 6 bytes of a MAC in one of the four common spellings, else ``None``.

    Accepted: ``aa:bb:cc:dd:ee:ff``, ``AA-BB-CC-DD-EE-FF``, ``aabb.ccdd.eeff`` and
    ``aabbccddeeff``, in either case, with surrounding whitespace ignored.

    The four spellings NAS vendors use in Calling-Station-Id (RFC 3580 section
    3.21 recommends "00-10-A4-23-19-C0"; others send colons, Cisco dotted or
    bare hex), told apart by length and separator positions: it runs for
    every Access-Request, and this is several times cheaper than regexes.
    """
    candidate = text.strip()
    size = len(candidate)
    if size == 17:  # aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff
        sep = candidate[2]
        if sep not in ":-" or candidate[2::3] != sep * 5:
            return None
        digits = candidate.replace(sep, "")
    elif size == 14:  # aabb.ccdd.eeff
        if candidate[4::5] != "..":
            return None
        digits = candidate.replace(".", "")
    elif size == 12:
        digits = candidate
    else:
        return None
    if len(digits) != 12:
        return None
    try:
        # fromhex takes only ASCII hex digits and skips whitespace: from 12
        # characters, 6 bytes come out only when all 12 are hex digits.
        mac = bytes.fromhex(digits)
    except ValueError:
        return None
    return mac if len(mac) == MAC_BYTES else None


def is_locally_administered(mac: bytes) -> bool:
    """True for a locally administered MAC (U/L bit set), as randomised MACs are."""
    if len(mac) != MAC_BYTES:
        raise ValueError("a MAC is 6 bytes")
    # IEEE 802 addressing: the second-lowest bit of the first octet is the U/L bit.
    return bool(mac[0] & 0x02)


class BlindIndex:
    """HMAC-SHA256 under one index key: full digests for unique lookups, prefixes for search."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != DIGEST_BYTES:
            raise ValueError(f"a blind index key must be {DIGEST_BYTES} bytes")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "BlindIndex(***)"

    def full(self, value: bytes) -> bytes:
        """The 32-byte index of an already normalised value."""
        return hmac.digest(self._key, value, "sha256")

    def truncated(self, value: bytes, bits: int = 16) -> int:
        """The first ``bits`` bits of the full index, as a non-negative integer.

        Short indexes collide on purpose: they narrow a search to candidates that
        are then decrypted and compared, without identifying a value alone.
        """
        if not 1 <= bits <= DIGEST_BYTES * 8:
            raise ValueError("bits must be between 1 and 256")
        nbytes = (bits + 7) // 8
        prefix = int.from_bytes(hmac.digest(self._key, value, "sha256")[:nbytes], "big")
        return prefix >> (nbytes * 8 - bits)


class Pseudonymizer:
    """Short keyed pseudonyms for logs: stable under one key, unlinkable without it."""

    __slots__ = ("_key", "_length")

    def __init__(self, key: bytes, length: int = 10) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonym key must be at least 16 bytes")
        if not 4 <= length <= hashlib.sha256().digest_size * 2:
            raise ValueError("pseudonym length must be between 4 and 64 hex digits")
        self._key = bytes(key)
        self._length = length

    def __repr__(self) -> str:
        return f"Pseudonymizer(length={self._length})"

    @property
    def length(self) -> int:
        """Number of hex digits in each pseudonym."""
        return self._length

    def __call__(self, value: str) -> str:
        """The pseudonym of ``value``: leading hex digits of its HMAC-SHA256."""
        data = value.encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, data, "sha256").hex()[: self._length]
