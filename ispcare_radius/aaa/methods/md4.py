"""MD4 (RFC 1320) in pure Python, for the NT password hash only; stdlib only.

OpenSSL 3 moved MD4 to its legacy provider, so ``hashlib.new("md4")`` is
often missing. MD4 is broken as a general hash; MS-CHAP needs it anyway.
"""

from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<16I")  # a block is sixteen 32-bit little-endian words
# RFC 1320 section 3.4: the round 2 and round 3 additive constants.
_K2 = 0x5A827999
_K3 = 0x6ED9EBA1
# Per-step shift amounts and message-word orders of the three rounds.
_S1 = (3, 7, 11, 19)
_S2 = (3, 5, 9, 13)
_S3 = (3, 9, 11, 15)
_ORDER2 = (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
_ORDER3 = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)


def _compress(state: list[int], block: bytes) -> None:
    x = _WORDS.unpack(block)
    a, b, c, d = state
    m = _MASK
    # Round 1: F(X,Y,Z) = XY v not(X) Z
    for i in range(16):
        s = _S1[i & 3]
        t = (a + ((b & c) | (~b & d)) + x[i]) & m
        a, b, c, d = d, ((t << s) | (t >> (32 - s))) & m, b, c
    # Round 2: G(X,Y,Z) = XY v XZ v YZ
    for i in range(16):
        s = _S2[i & 3]
        t = (a + ((b & c) | (b & d) | (c & d)) + x[_ORDER2[i]] + _K2) & m
        a, b, c, d = d, ((t << s) | (t >> (32 - s))) & m, b, c
    # Round 3: H(X,Y,Z) = X xor Y xor Z
    for i in range(16):
        s = _S3[i & 3]
        t = (a + (b ^ c ^ d) + x[_ORDER3[i]] + _K3) & m
        a, b, c, d = d, ((t << s) | (t >> (32 - s))) & m, b, c
    state[0] = (state[0] + a) & m
    state[1] = (state[1] + b) & m
    state[2] = (state[2] + c) & m
    state[3] = (state[3] + d) & m


def md4(data: bytes) -> bytes:
    """The 16-octet MD4 digest of ``data`` (RFC 1320)."""
    # RFC 1320 section 3.1-3.2: pad with a 1 bit then 0 bits to 56 mod 64
    # octets, then append the bit length as a 64-bit little-endian number.
    bit_len = (len(data) * 8) & 0xFFFFFFFFFFFFFFFF
    padded = data + b"\x80" + bytes((55 - len(data)) % 64) + bit_len.to_bytes(8, "little")
    # RFC 1320 section 3.3: the initial buffer A, B, C, D.
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for i in range(0, len(padded), 64):
        _compress(state, padded[i : i + 64])
    return b"".join(w.to_bytes(4, "little") for w in state)
