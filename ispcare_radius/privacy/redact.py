"""The structlog processor that keeps personal data and secrets out of logs; no asyncio, asyncpg.

Secrets (passwords, shared secrets, keys) are dropped; identifiers (user names,
MACs, station ids, IP addresses, device ids) are replaced by short keyed
pseudonyms; any ``Secret`` value renders as ``"***"``. Plaintexts removed from
the fields are also replaced where they reappear inside other text of the same
event, such as a formatted exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final

from structlog.typing import EventDict, WrappedLogger

from ispcare_radius.privacy.blind import Pseudonymizer, normalize_mac
from ispcare_radius.privacy.secret import Secret

SECRET_KEYS: Final = frozenset(
    {
        "password",
        "user_password",
        "passwd",
        "secret",
        "shared_secret",
        "key",
        "chap_password",
        "chap_challenge",
        "nt_hash",
        "slow_hash",
        "password_hash",
        "ms_chap_response",
        "ms_chap2_response",
        "data_key",
        "master_key",
        "private_key",
        "api_key",
        "kek",
    }
)
SECRET_SUFFIXES: Final = ("_secret", "_password", "_passwd")
PERSONAL_KEYS: Final = frozenset(
    {
        "user_name",
        "username",
        "mac",
        "mac_lock",
        "static_ipv4",
        "static_ipv6_prefix",
        "ip",
        "source",
        "address",
        "client_address",
        "source_address",
        "calling_station_id",
        "called_station_id",
        "nas_ip",
        "nas_ip_address",
        "nas_ipv6_address",
        "client_ip",
        "framed_ip",
        "framed_ip_address",
        "framed_ipv6_address",
        "framed_ipv6_prefix",
        "delegated_ipv6_prefix",
        "static_ip",
        "device_id",
        "peer",
    }
)
PERSONAL_SUFFIXES: Final = (
    "_ip",
    "_ip_address",
    "_ipv4",
    "_ipv6",
    "_ipv6_prefix",
    "_mac",
    "_user_name",
    "_username",
    "_station_id",
)
MASK: Final = "***"
REDACTED: Final = "<redacted>"
_MAX_DEPTH: Final = 6
_MIN_SCRUB_LEN: Final = 3
_ADDRESS_TYPES: Final = (IPv4Address, IPv6Address, IPv4Network, IPv6Network)
_TEXT_TYPES: Final = (str, *_ADDRESS_TYPES)
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_PLAIN, _SECRET, _PERSONAL = 0, 1, 2
_MAX_KNOWN_NAMES: Final = 4096


class RedactPersonal:
    """Drop secret fields, pseudonymise personal ones, mask every ``Secret``.

    Without a pseudonymizer (before the keys are loaded) personal values become
    ``"<redacted>"``. Field names are matched case-insensitively with ``-`` read
    as ``_``, so RADIUS attribute names (``User-Name``) are covered too.
    """

    __slots__ = ("_kinds", "_personal", "_pseudonymizer", "_secret")

    def __init__(
        self,
        pseudonymizer: Pseudonymizer | None,
        *,
        extra_secret_keys: Iterable[str] = (),
        extra_personal_keys: Iterable[str] = (),
    ) -> None:
        self._pseudonymizer = pseudonymizer
        self._secret = SECRET_KEYS | {_norm_key(k) for k in extra_secret_keys}
        self._personal = PERSONAL_KEYS | {_norm_key(k) for k in extra_personal_keys}
        # Field names repeat endlessly; classify each one once.
        self._kinds: dict[str, int] = {}

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Return the event with secrets dropped and personal values pseudonymised."""
        found: dict[str, str] = {}
        cleaned = self._clean_mapping(event_dict, found, 0)
        if found:
            order = sorted(found, key=len, reverse=True)
            for name, value in cleaned.items():
                if isinstance(value, str) and self._kind(name) == _PLAIN:
                    cleaned[name] = _scrub_text(value, order, found)
        event_dict.clear()
        event_dict.update(cleaned)
        return event_dict

    def _kind(self, name: object) -> int:
        if not isinstance(name, str):
            return _PLAIN
        kind = self._kinds.get(name)
        if kind is None:
            key = _norm_key(name)
            if key in self._secret or key.endswith(SECRET_SUFFIXES):
                kind = _SECRET
            elif key in self._personal or key.endswith(PERSONAL_SUFFIXES):
                kind = _PERSONAL
            else:
                kind = _PLAIN
            if len(self._kinds) < _MAX_KNOWN_NAMES:
                self._kinds[name] = kind
        return kind

    def _clean_mapping(
        self, mapping: Mapping[Any, Any], found: dict[str, str], depth: int
    ) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for name, value in mapping.items():
            kind = self._kind(name)
            if kind == _PLAIN:
                if type(value) in _SCALARS:
                    out[name] = value
                else:
                    out[name] = self._clean_value(value, found, depth)
            elif kind == _PERSONAL:
                out[name] = self._pseudonymise(value, found, depth)
            else:
                _remember(value, MASK, found)
        return out

    def _clean_value(self, value: Any, found: dict[str, str], depth: int) -> Any:
        if type(value) in _SCALARS:
            return value
        if isinstance(value, Secret):
            _remember(value, MASK, found)
            return MASK
        if isinstance(value, str | bytes | int | float):
            return value
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return self._clean_mapping(value, found, depth + 1)
        if isinstance(value, list | tuple | set | frozenset):
            items = [self._clean_value(item, found, depth + 1) for item in value]
            return tuple(items) if isinstance(value, tuple) else items
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            # A dataclass repr would show every field; walk it as a mapping instead.
            as_mapping = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return self._clean_mapping(as_mapping, found, depth + 1)
        return value

    def _pseudonymise(self, value: Any, found: dict[str, str], depth: int) -> Any:
        if value is None:
            return None
        if isinstance(value, Secret):
            _remember(value, MASK, found)
            return MASK
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {k: self._pseudonymise(v, found, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._pseudonymise(item, found, depth + 1) for item in value]
        text = _canonical_text(value)
        replacement = REDACTED if self._pseudonymizer is None else self._pseudonymizer(text)
        _remember(value, replacement, found)
        if text not in found:
            found[text] = replacement
        return replacement


def _norm_key(name: str) -> str:
    return name.lower().replace("-", "_")


def _canonical_text(value: object) -> str:
    """One spelling per value, so a MAC gets one pseudonym however it was written."""
    if isinstance(value, bytes):
        if len(value) == 6:
            return value.hex(":")
        text = value.decode("utf-8", "replace")
    elif isinstance(value, _ADDRESS_TYPES):
        return str(value)
    else:
        text = str(value)
    mac = normalize_mac(text)
    return mac.hex(":") if mac is not None else text


def _remember(value: object, replacement: str, found: dict[str, str]) -> None:
    """Note the plaintext spellings of a removed value, to scrub them from other text."""
    if isinstance(value, Secret):
        raw: object = value.reveal()
    else:
        raw = value
    if isinstance(raw, bytes):
        spellings = [raw.decode("utf-8", "ignore"), raw.hex()]
    elif isinstance(raw, _TEXT_TYPES):
        spellings = [str(raw)]
    else:
        return
    for spelling in spellings:
        if len(spelling) >= _MIN_SCRUB_LEN and found.get(spelling) != MASK:
            found[spelling] = replacement


def _scrub_text(text: str, order: list[str], found: Mapping[str, str]) -> str:
    for plain in order:
        if plain in text:
            text = text.replace(plain, found[plain])
    return text
