"""Typed attribute values: wire bytes <-> Python values and text -> value; stdlib only."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TypeAlias

from .attrtypes import AttrDef, AttrType
from .codes import DecodeError, DropReason

__all__ = [
    "DECODERS",
    "Value",
    "decode_plain",
    "decode_tagged",
    "decode_value",
    "encode_plain",
    "encode_value",
    "parse_text_value",
]

Value: TypeAlias = str | bytes | int | IPv4Address | IPv6Address | IPv6Network | IPv4Network

_RAW_TYPES = frozenset(
    {
        AttrType.OCTETS,
        AttrType.ABINARY,
        AttrType.TLV,
        AttrType.VSA,
        AttrType.EXTENDED,
        AttrType.LONG_EXTENDED,
        AttrType.EVS,
    }
)
# Unsigned integer types: octet width.
_UINT_WIDTH = {
    AttrType.INTEGER: 4,
    AttrType.DATE: 4,
    AttrType.BYTE: 1,
    AttrType.SHORT: 2,
    AttrType.INTEGER64: 8,
}
_MAC_HEX = re.compile(r"[0-9a-fA-F]{12}")
_MAX_TAG = 0x1F


def _malformed() -> DecodeError:
    return DecodeError(DropReason.MALFORMED_ATTRIBUTE)


def _uint(width: int) -> Callable[[bytes], Value]:
    def decode(data: bytes) -> Value:
        if len(data) != width:
            raise _malformed()
        return int.from_bytes(data)

    return decode


def _string(data: bytes) -> Value:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _raw(data: bytes) -> Value:
    return data


def _ipaddr(data: bytes) -> Value:
    if len(data) != 4:
        raise _malformed()
    return IPv4Address(data)


def _ipv6addr(data: bytes) -> Value:
    if len(data) != 16:
        raise _malformed()
    return IPv6Address(data)


def _signed(data: bytes) -> Value:
    if len(data) != 4:
        raise _malformed()
    return int.from_bytes(data, signed=True)


def _ipv6prefix(data: bytes) -> Value:
    # RFC 3162 section 2.3: Reserved (1), Prefix-Length (1), Prefix (0..16).
    n = len(data)
    if n < 2 or n > 18 or data[1] > 128 or (n - 2) * 8 < data[1]:
        raise _malformed()
    addr = IPv6Address(data[2:].ljust(16, b"\x00"))
    return IPv6Network((addr, data[1]), strict=False)


def _ipv4prefix(data: bytes) -> Value:
    # RFC 6572 section 3.4: Reserved (1), Prefix-Length (1), Prefix (4).
    if len(data) != 6 or data[1] > 32:
        raise _malformed()
    return IPv4Network((IPv4Address(data[2:]), data[1]), strict=False)


def _ether(data: bytes) -> Value:
    if len(data) != 6:
        raise _malformed()
    return data.hex(":")


def _ifid(data: bytes) -> Value:
    if len(data) != 8:
        raise _malformed()
    return data.hex(":", 2)


def _combo_ip(data: bytes) -> Value:
    if len(data) == 4:
        return IPv4Address(data)
    if len(data) == 16:
        return IPv6Address(data)
    raise _malformed()


DECODERS: dict[AttrType, Callable[[bytes], Value]] = {
    **{t: _uint(w) for t, w in _UINT_WIDTH.items()},
    **dict.fromkeys(_RAW_TYPES, _raw),
    AttrType.STRING: _string,
    AttrType.IPADDR: _ipaddr,
    AttrType.IPV6ADDR: _ipv6addr,
    AttrType.SIGNED: _signed,
    AttrType.IPV6PREFIX: _ipv6prefix,
    AttrType.IPV4PREFIX: _ipv4prefix,
    AttrType.ETHER: _ether,
    AttrType.IFID: _ifid,
    AttrType.COMBO_IP: _combo_ip,
}


def decode_plain(type_: AttrType, data: bytes) -> Value:
    """Decode an untagged, unencrypted value of ``type_``.

    Raises ``DecodeError(malformed_attribute)`` when the length does not fit
    the type. Strings that are not valid UTF-8 come back as bytes.
    """
    return DECODERS[type_](data)


def decode_tagged(defn: AttrDef, data: bytes) -> tuple[Value, int | None]:
    """Decode a plaintext value of ``defn`` and its RFC 2868 section 3.1 tag.

    Tag 0 (no tunnel grouping) is returned as None. Encrypted attributes must
    be unhidden by the caller first; see :class:`Dictionary.decode`.
    """
    if defn.array:
        return data, None
    tag: int | None = None
    if defn.has_tag and data:
        if defn.type is AttrType.INTEGER:
            # RFC 2868 section 3.1: for integer attributes the tag takes the
            # first octet and the value the remaining three.
            if len(data) != 4:
                raise _malformed()
            return int.from_bytes(data[1:]), (data[0] or None)
        # "If the Tag field is greater than 0x1F, it SHOULD be interpreted as
        # the first byte of the following String field."
        if data[0] <= _MAX_TAG:
            tag = data[0] or None
            data = data[1:]
    return decode_plain(defn.type, data), tag


def decode_value(defn: AttrDef, data: bytes) -> Value:
    """Decode a plaintext wire value of ``defn``, dropping any tag."""
    return decode_tagged(defn, data)[0]


def _named_int(defn: AttrDef, name: str) -> int:
    number = defn.values.get(name)
    if number is not None:
        return number
    folded = name.casefold()
    for key, number in defn.values.items():
        if key.casefold() == folded:
            return number
    raise ValueError(f"{defn.name} has no such VALUE name")


def encode_plain(defn: AttrDef, value: Value) -> bytes:
    """Encode ``value`` as an untagged, unencrypted value of ``defn``.

    Integers also accept a VALUE name; other types accept their text form.
    Raises ValueError (with no personal data) when the value does not fit.
    """
    type_ = defn.type
    try:
        if type_ is AttrType.STRING:
            return value.encode() if isinstance(value, str) else _as_bytes(value)
        if type_ in _RAW_TYPES:
            return value.encode() if isinstance(value, str) else _as_bytes(value)
        if isinstance(value, str):
            value = parse_text_value(defn, value)
        width = _UINT_WIDTH.get(type_)
        if width is not None:
            return _as_int(value).to_bytes(width)
        if type_ is AttrType.SIGNED:
            return _as_int(value).to_bytes(4, signed=True)
        if type_ is AttrType.IPADDR and isinstance(value, IPv4Address):
            return value.packed
        if type_ is AttrType.IPV6ADDR and isinstance(value, IPv6Address):
            return value.packed
        if type_ is AttrType.COMBO_IP and isinstance(value, IPv4Address | IPv6Address):
            return value.packed
        if type_ is AttrType.IPV6PREFIX and isinstance(value, IPv6Network):
            return bytes((0, value.prefixlen)) + value.network_address.packed
        if type_ is AttrType.IPV4PREFIX and isinstance(value, IPv4Network):
            return bytes((0, value.prefixlen)) + value.network_address.packed
        if type_ is AttrType.ETHER or type_ is AttrType.IFID:
            raw = bytes.fromhex(value.replace(":", "")) if isinstance(value, str) else value
            if isinstance(raw, bytes) and len(raw) == (6 if type_ is AttrType.ETHER else 8):
                return raw
    except OverflowError:
        raise ValueError(f"value out of range for {defn.name}") from None
    raise ValueError(f"value of the wrong kind for {defn.name} ({type_.value})")


def _as_bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    raise ValueError("expected bytes or str")


def _as_int(value: Value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("expected an integer")


def encode_value(defn: AttrDef, value: Value, *, tag: int | None = None) -> bytes:
    """Encode a plaintext value of ``defn`` with its optional RFC 2868 tag.

    Integer types accept VALUE names, e.g. ``encode_value(d, "Framed-User")``.
    Encryption (``encrypt=``) is applied by :meth:`Dictionary.encode`, not here.
    """
    if tag is not None and not 0 <= tag <= _MAX_TAG:
        raise ValueError("tag must be in 0..31")
    if not defn.has_tag:
        if tag:
            raise ValueError(f"{defn.name} takes no tag")
        return encode_plain(defn, value)
    if defn.type is AttrType.INTEGER:
        number = _named_int(defn, value) if isinstance(value, str) else _as_int(value)
        if not 0 <= number < 1 << 24:
            raise ValueError(f"value out of range for tagged {defn.name}")
        return bytes((tag or 0,)) + number.to_bytes(3)
    body = encode_plain(defn, value)
    if tag or (body and body[0] <= _MAX_TAG):
        # Without a tag octet a first value octet <= 0x1F would be read as one.
        return bytes((tag or 0,)) + body
    return body


def _parse_int(text: str) -> int:
    t = text.strip()
    neg = t.startswith("-")
    digits = t[1:] if neg else t
    number = int(digits[2:], 16) if digits[:2].lower() == "0x" else int(digits, 10)
    return -number if neg else number


def _parse_mac(text: str) -> str:
    hexdigits = re.sub(r"[:\-.\s]", "", text)
    if not _MAC_HEX.fullmatch(hexdigits):
        raise ValueError("not a MAC address")
    return bytes.fromhex(hexdigits).hex(":")


def parse_text_value(defn: AttrDef, text: str) -> Value:
    """Turn configuration text into a value of ``defn``'s type.

    Examples: "10.0.0.1", "2001:db8::/32", "0x0102" (octets), "Framed-User"
    (a VALUE name), "3600", "2024-01-01T00:00:00Z" (date), "00-11-22-33-44-55".
    Raises ValueError naming the attribute, never echoing the text.
    """
    type_ = defn.type
    try:
        if type_ is AttrType.STRING:
            return text
        if type_ in _RAW_TYPES:
            if text[:2].lower() == "0x":
                return bytes.fromhex(text[2:])
            return text.encode()
        if type_ in _UINT_WIDTH or type_ is AttrType.SIGNED:
            if defn.values and not text.strip().lstrip("+-")[:1].isdigit():
                return _named_int(defn, text.strip())
            if type_ is AttrType.DATE and not text.strip().isdigit():
                stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=UTC)
                return int(stamp.timestamp())
            number = _parse_int(text)
            width = _UINT_WIDTH.get(type_, 4)
            lo, hi = (-(1 << 31), 1 << 31) if type_ is AttrType.SIGNED else (0, 1 << (8 * width))
            if not lo <= number < hi:
                raise ValueError
            return number
        if type_ is AttrType.IPADDR:
            return IPv4Address(text.strip())
        if type_ is AttrType.IPV6ADDR:
            return IPv6Address(text.strip())
        if type_ is AttrType.COMBO_IP:
            return ip_address(text.strip())
        if type_ is AttrType.IPV6PREFIX:
            return IPv6Network(text.strip())
        if type_ is AttrType.IPV4PREFIX:
            return IPv4Network(text.strip())
        if type_ is AttrType.ETHER:
            return _parse_mac(text)
        if type_ is AttrType.IFID:
            groups = text.strip().split(":")
            if len(groups) != 4 or not all(1 <= len(g) <= 4 for g in groups):
                raise ValueError
            return b"".join(int(g, 16).to_bytes(2) for g in groups).hex(":", 2)
    except ValueError:
        pass
    raise ValueError(f"cannot read text as a value of {defn.name} ({type_.value})")
