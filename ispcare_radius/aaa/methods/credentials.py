"""Stored credential forms, the methods each can serve, and the scrypt slow hash.

A subscriber holds the reversible password (every method works), or only an
NT hash (MS-CHAPv1/v2, and PAP by hashing the offered password), or only a
scrypt hash (PAP only). Which methods a form serves follows from what each
method must compute: CHAP needs MD5 over the cleartext (RFC 1994 section
4.1), MS-CHAP needs the NT hash (RFC 2759 section 8.3), and a slow hash can
only check a cleartext the NAS hands over. Pure: imports the aaa model only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from ispcare_radius.aaa.model import Subscriber


class CredentialForm(StrEnum):
    """What a subscriber may hold as proof of their password."""

    PASSWORD = "password"  # reversible, sealed with the subscriber's data key
    NT_HASH = "nt_hash"  # MD4 of the UTF-16LE password
    SLOW_HASH = "slow_hash"  # $scrypt$...


_ALL = frozenset(CredentialForm)
# Method name -> the stored forms it can verify against. MAC auth is absent:
# its proof is the device row, not a password.
SERVES: Mapping[str, frozenset[CredentialForm]] = MappingProxyType(
    {
        "pap": _ALL,
        "chap": frozenset({CredentialForm.PASSWORD}),
        "mschap": frozenset({CredentialForm.PASSWORD, CredentialForm.NT_HASH}),
        "mschapv2": frozenset({CredentialForm.PASSWORD, CredentialForm.NT_HASH}),
    }
)
_LABELS: Final = MappingProxyType(
    {"pap": "PAP", "chap": "CHAP", "mschap": "MS-CHAP", "mschapv2": "MS-CHAPv2"}
)
_NEEDS: Final = MappingProxyType(
    {
        "chap": "a stored password",
        "mschap": "a stored password or NT hash",
        "mschapv2": "a stored password or NT hash",
        "pap": "a stored password or hash",
    }
)
_HOLDS: Final = MappingProxyType(
    {
        frozenset(): "no password",
        frozenset({CredentialForm.NT_HASH}): "only an NT hash",
        frozenset({CredentialForm.SLOW_HASH}): "only a slow (scrypt) hash",
        frozenset({CredentialForm.NT_HASH, CredentialForm.SLOW_HASH}): (
            "only an NT hash and a slow (scrypt) hash"
        ),
    }
)


def stored_forms(sub: Subscriber) -> frozenset[CredentialForm]:
    """The credential forms ``sub`` holds."""
    held = (
        (CredentialForm.PASSWORD, sub.password),
        (CredentialForm.NT_HASH, sub.nt_hash),
        (CredentialForm.SLOW_HASH, sub.slow_hash),
    )
    return frozenset(form for form, value in held if value is not None)


def methods_for(forms: Iterable[CredentialForm]) -> tuple[str, ...]:
    """The password methods (by configuration name) that work with ``forms``."""
    held = frozenset(forms)
    return tuple(name for name, served in SERVES.items() if served & held)


def unsupported_message(method: str, forms: frozenset[CredentialForm]) -> str | None:
    """The Reply-Message for ``method`` against ``forms``; None when the method can work.

    An account holding nothing at all gets None too: that is a plain wrong
    password, which a reject never explains.
    """
    served = SERVES.get(method)
    if served is None or not forms or served & forms:
        return None
    label, needs = _LABELS.get(method, method), _NEEDS.get(method, "another credential")
    holds = _HOLDS.get(forms - {CredentialForm.PASSWORD}, "another credential form")
    return f"{label} needs {needs}; this account holds {holds}"


# --- NT hash -----------------------------------------------------------------

NT_HASH_BYTES: Final = 16


def parse_nt_hash(text: str) -> bytes:
    """16 bytes from 32 hex digits (an optional ``0x`` prefix allowed); ValueError otherwise."""
    digits = text.strip().removeprefix("0x").removeprefix("0X")
    if len(digits) != 2 * NT_HASH_BYTES:
        raise ValueError("NT hash must be 32 hex digits")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ValueError("NT hash must be 32 hex digits") from None


# --- scrypt --------------------------------------------------------------------

_SCRYPT_RE: Final = re.compile(
    r"\$scrypt\$n=(?P<n>\d{1,8}),r=(?P<r>\d{1,3}),p=(?P<p>\d{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)"
)
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
# Bounds on what a stored string may ask for, so that a bad row cannot make
# one verification take minutes or gigabytes: n up to 2**20, 128*r*n up to 1 GiB.
_MAX_N: Final = 1 << 20
_MAX_MEMORY: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """scrypt's work factors (RFC 7914 section 2): CPU/memory cost n, block size r,
    parallelism p.

    The default, n=2**14, r=8, p=5, is one of OWASP's equivalent scrypt
    settings (16 MiB per verification, several tens of milliseconds); tests use
    tiny values.
    """

    n: int = 1 << 14
    r: int = 8
    p: int = 5

    def __post_init__(self) -> None:
        # RFC 7914 section 2: N "must be larger than 1, a power of 2".
        if not 1 < self.n <= _MAX_N or self.n & (self.n - 1):
            raise ValueError("scrypt n must be a power of 2 between 2 and 1048576")
        if not 1 <= self.r <= 64 or not 1 <= self.p <= 64:
            raise ValueError("scrypt r and p must be between 1 and 64")
        if self.memory > _MAX_MEMORY:
            raise ValueError("scrypt n and r ask for more than 1 GiB")

    @property
    def memory(self) -> int:
        """Bytes scrypt's ROMix needs (128 * r * n), plus the p blocks."""
        return 128 * self.r * (self.n + self.p + 2)


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """A parsed ``$scrypt$n=..,r=..,p=..$<salt>$<hash>`` string (standard base64, no padding)."""

    cost: ScryptCost
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def matches(self, password: bytes) -> bool:
        """Whether ``password`` derives the stored digest; constant-time compare. CPU-heavy."""
        derived = _scrypt(password, self.salt, self.cost, len(self.digest))
        return hmac.compare_digest(derived, self.digest)

    def encode(self) -> str:
        """The self-describing text form."""
        c = self.cost
        return f"$scrypt$n={c.n},r={c.r},p={c.p}${_b64(self.salt)}${_b64(self.digest)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, cost: ScryptCost, length: int) -> bytes:
    return hashlib.scrypt(
        password,
        salt=salt,
        n=cost.n,
        r=cost.r,
        p=cost.p,
        maxmem=cost.memory + (1 << 20),
        dklen=length,
    )


def scrypt_hash(password: bytes, cost: ScryptCost, *, salt: bytes | None = None) -> str:
    """The ``$scrypt$`` string for ``password`` with a fresh random 16-byte salt."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    return ScryptHash(cost, salt, _scrypt(password, salt, cost, _HASH_BYTES)).encode()


def parse_scrypt(text: str) -> ScryptHash:
    """The parts of a ``$scrypt$`` string; ValueError (without the value) otherwise."""
    found = _SCRYPT_RE.fullmatch(text.strip())
    if found is None:
        raise ValueError("password hash is not '$scrypt$n=..,r=..,p=..$salt$hash'")
    try:
        salt, digest = _unb64(found["salt"]), _unb64(found["hash"])
    except (binascii.Error, ValueError):
        raise ValueError("password hash salt or digest is not base64") from None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("password hash salt or digest has a bad length")
    cost = ScryptCost(int(found["n"]), int(found["r"]), int(found["p"]))
    return ScryptHash(cost, salt, digest)
