"""MS-CHAP v1/v2 and MPPE key primitives (RFC 2433, RFC 2759, RFC 3079, RFC 2548).

Pure functions over bytes; imports ``cryptography`` (for DES) and the local
MD4 only, nothing of the pipeline. DES comes from cryptography's "decrepit"
TripleDES with the 8-octet key repeated three times, which is single DES
(EDE with K1 = K2 = K3): OpenSSL's constant-time implementation, no
pure-Python S-boxes on the request path.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from ispcare_radius.aaa.methods.md4 import md4

# RFC 2759 section 8.7 (GenerateAuthenticatorResponse) magic constants.
_AUTH_MAGIC1 = b"Magic server to client signing constant"
_AUTH_MAGIC2 = b"Pad to make it do more than one iteration"
# RFC 3079 section 3.4 (GetMasterKey, GetAsymmetricStartKey) magic constants.
_KEY_MAGIC1 = b"This is the MPPE Master Key"
_KEY_MAGIC2 = (
    b"On the client side, this is the send key; on the server side, it is the receive key."
)
_KEY_MAGIC3 = (
    b"On the client side, this is the receive key; on the server side, it is the send key."
)
_SHS_PAD1 = bytes(40)
_SHS_PAD2 = b"\xf2" * 40
# RFC 2433 appendix A (LmPasswordHash): the constant "KGS!@#$%" encrypted twice.
_LM_MAGIC = b"KGS!@#$%"


def _sha1(*parts: bytes) -> bytes:
    h = hashlib.sha1(usedforsecurity=False)
    for p in parts:
        h.update(p)
    return h.digest()


def _des_key(seven: bytes) -> bytes:
    """Spread 56 key bits over 8 octets, one parity bit (left at 0) per octet."""
    bits = int.from_bytes(seven)
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def des_encrypt(key7: bytes, block: bytes) -> bytes:
    """DES-encrypt one 8-octet block under a 7-octet key (RFC 2433 appendix A, DesEncrypt)."""
    key = _des_key(key7)
    # One block, as the protocol defines it: ECB is exactly single-block DES.
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305
    return enc.update(block) + enc.finalize()


def nt_password_hash(password: str) -> bytes:
    """MD4 of the UTF-16LE password (RFC 2759 section 8.3, NtPasswordHash)."""
    return md4(password.encode("utf-16-le"))


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """MD4 of the NT hash (RFC 2759 section 8.4, HashNtPasswordHash)."""
    return md4(password_hash)


def lm_password_hash(password: bytes) -> bytes:
    """The LAN Manager hash (RFC 2433 appendix A, LmPasswordHash).

    The password is upper-cased (ASCII letters) and cut or NUL-padded to 14
    octets; each half keys a DES encryption of a fixed constant.
    """
    pw = password.upper()[:14].ljust(14, b"\x00")
    return des_encrypt(pw[:7], _LM_MAGIC) + des_encrypt(pw[7:], _LM_MAGIC)


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """24-octet response: the 8-octet challenge DES-encrypted under the
    zero-padded 21-octet hash split in three keys (RFC 2759 section 8.5)."""
    z = password_hash.ljust(21, b"\x00")
    return (
        des_encrypt(z[0:7], challenge)
        + des_encrypt(z[7:14], challenge)
        + des_encrypt(z[14:21], challenge)
    )


def challenge_hash(
    peer_challenge: bytes, authenticator_challenge: bytes, user_name: bytes
) -> bytes:
    """The 8-octet MS-CHAPv2 challenge (RFC 2759 section 8.2, ChallengeHash)."""
    return _sha1(peer_challenge, authenticator_challenge, user_name)[:8]


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, user_name: bytes, password: str
) -> bytes:
    """The NT-Response a peer sends (RFC 2759 section 8.1); used by tests and checks."""
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user_name)
    return challenge_response(challenge, nt_password_hash(password))


def authenticator_response(
    password_hash_hash: bytes,
    nt_response: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    user_name: bytes,
) -> bytes:
    """``S=`` plus 40 upper-case hex digits (RFC 2759 section 8.7)."""
    digest = _sha1(password_hash_hash, nt_response, _AUTH_MAGIC1)
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user_name)
    digest = _sha1(digest, challenge, _AUTH_MAGIC2)
    return b"S=" + digest.hex().upper().encode("ascii")


def master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """The 16-octet MPPE master key (RFC 3079 section 3.4, GetMasterKey)."""
    return _sha1(password_hash_hash, nt_response, _KEY_MAGIC1)[:16]


def asymmetric_start_key(master: bytes, *, send: bool, server: bool, length: int = 16) -> bytes:
    """A 128-bit (or shorter) start key (RFC 3079 section 3.4, GetAsymmetricStartKey)."""
    # The server's send key is the client's receive key, and the other way round.
    magic = _KEY_MAGIC3 if send == server else _KEY_MAGIC2
    return _sha1(master, _SHS_PAD1, magic, _SHS_PAD2)[:length]


def mppe_v2_keys(password_hash_hash: bytes, nt_response: bytes) -> tuple[bytes, bytes]:
    """(server send key, server receive key), 128 bits each, for MS-MPPE-Send/Recv-Key."""
    master = master_key(password_hash_hash, nt_response)
    return (
        asymmetric_start_key(master, send=True, server=True),
        asymmetric_start_key(master, send=False, server=True),
    )
