"""RADIUS packet framing: bytes <-> Packet; owns structure only, no crypto, no I/O imports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .codes import Code, DecodeError, DropReason

__all__ = [
    "HEADER_LENGTH",
    "MAX_PACKET_LENGTH",
    "Packet",
    "build_packet",
    "encode_attributes",
    "parse",
]

HEADER_LENGTH = 20
MAX_PACKET_LENGTH = 4096
MAX_ATTRIBUTE_VALUE = 253

MESSAGE_AUTHENTICATOR = 80
USER_PASSWORD = 2
VENDOR_SPECIFIC = 26

_KNOWN_CODES = frozenset(int(c) for c in Code)


@dataclass(frozen=True, slots=True)
class Packet:
    """One structurally valid RADIUS packet; attribute values stay undecoded bytes."""

    code: int
    identifier: int
    authenticator: bytes
    attributes: tuple[tuple[int, bytes], ...]
    raw: bytes

    def __repr__(self) -> str:
        # Attribute values may be personal (user names, hidden passwords): only
        # the shape of the packet is shown.
        types = ",".join(str(t) for t, _ in self.attributes)
        return f"Packet(code={self.code}, identifier={self.identifier}, attribute_types=[{types}])"

    def get(self, type_: int) -> bytes | None:
        """Return the value of the first attribute of ``type_``, or None."""
        for t, v in self.attributes:
            if t == type_:
                return v
        return None

    def get_all(self, type_: int) -> list[bytes]:
        """Return the values of every attribute of ``type_``, in packet order."""
        return [v for t, v in self.attributes if t == type_]

    def vsa(self, vendor: int, vtype: int) -> bytes | None:
        """Return the first Vendor-Specific sub-attribute ``vtype`` of ``vendor``.

        Only the common RFC 2865 section 5.26 layout (1-octet type, 1-octet
        length) is understood; malformed Vendor-Specific values are skipped.
        """
        for t, v in self.attributes:
            if t != VENDOR_SPECIFIC or len(v) < 6 or int.from_bytes(v[:4]) != vendor:
                continue
            pos = 4
            end = len(v)
            while pos + 2 <= end:
                sub_len = v[pos + 1]
                if sub_len < 2 or pos + sub_len > end:
                    break
                if v[pos] == vtype:
                    return v[pos + 2 : pos + sub_len]
                pos += sub_len
        return None


def parse(data: bytes, *, max_attributes: int = 255) -> Packet:
    """Check the framing of one datagram and split it into attributes.

    Every check here is structural and runs before any cryptography. Raises
    :class:`DecodeError` with a :class:`DropReason`, never anything else.
    """
    n = len(data)
    if n < HEADER_LENGTH:
        raise DecodeError(DropReason.TOO_SHORT)
    if not isinstance(data, bytes):
        data = bytes(data)
    length = (data[2] << 8) | data[3]
    # RFC 2865 section 3: "The minimum length is 20 and maximum length is 4096."
    if length < HEADER_LENGTH or length > MAX_PACKET_LENGTH:
        raise DecodeError(DropReason.BAD_LENGTH)
    # RFC 2865 section 3: "If the packet is shorter than the Length field
    # indicates, it MUST be silently discarded."
    if length > n:
        raise DecodeError(DropReason.TRUNCATED)
    code = data[0]
    if code not in _KNOWN_CODES:
        raise DecodeError(DropReason.UNKNOWN_CODE)
    # RFC 2865 section 3: "Octets outside the range of the Length field MUST be
    # treated as padding and ignored on reception."
    raw = data if length == n else data[:length]
    attrs: list[tuple[int, bytes]] = []
    append = attrs.append
    pos = HEADER_LENGTH
    while pos < length:
        if pos + 2 > length:
            raise DecodeError(DropReason.ATTRIBUTE_TOO_SHORT)
        alen = raw[pos + 1]
        if alen < 2:
            raise DecodeError(DropReason.ATTRIBUTE_TOO_SHORT)
        end = pos + alen
        if end > length:
            raise DecodeError(DropReason.ATTRIBUTE_OVERRUN)
        t = raw[pos]
        if t == MESSAGE_AUTHENTICATOR:
            # RFC 3579 section 3.2: Length = 18.
            if alen != 18:
                raise DecodeError(DropReason.MALFORMED_ATTRIBUTE)
        elif t == USER_PASSWORD and code == Code.ACCESS_REQUEST:
            # RFC 2865 section 5.2: "The Length field ... at least 18 and no
            # larger than 130", the hidden value a multiple of 16 octets.
            vlen = alen - 2
            if vlen < 16 or vlen > 128 or vlen % 16:
                raise DecodeError(DropReason.MALFORMED_ATTRIBUTE)
        append((t, raw[pos + 2 : end]))
        if len(attrs) > max_attributes:
            raise DecodeError(DropReason.TOO_MANY_ATTRIBUTES)
        pos = end
    return Packet(code, raw[1], raw[4:20], tuple(attrs), raw)


def encode_attributes(pairs: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode (type, value) pairs as wire attributes.

    Raises ValueError for a type outside 0..255 or a value over 253 octets.
    """
    out = bytearray()
    for t, v in pairs:
        vlen = len(v)
        if vlen > MAX_ATTRIBUTE_VALUE:
            raise ValueError("attribute value longer than 253 octets")
        if not 0 <= t <= 255:
            raise ValueError("attribute type outside 0..255")
        out.append(t)
        out.append(vlen + 2)
        out += v
    return bytes(out)


def build_packet(code: int, identifier: int, authenticator: bytes, attributes: bytes) -> bytes:
    """Frame already-encoded attributes into a packet with the given authenticator."""
    length = HEADER_LENGTH + len(attributes)
    if length > MAX_PACKET_LENGTH:
        raise ValueError("packet longer than 4096 octets")
    if len(authenticator) != 16:
        raise ValueError("authenticator must be 16 octets")
    if not 0 <= code <= 255 or not 0 <= identifier <= 255:
        raise ValueError("code and identifier must fit in one octet")
    return bytes((code, identifier, length >> 8, length & 0xFF)) + authenticator + attributes
