"""Known-answer tests of the MS-CHAP primitives: RFC 1320, RFC 2433, RFC 2759, RFC 3079."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from ispcare_radius.aaa.methods.chap import chap_response
from ispcare_radius.aaa.methods.md4 import md4
from ispcare_radius.aaa.methods.mscrypto import (
    asymmetric_start_key,
    authenticator_response,
    challenge_hash,
    challenge_response,
    des_encrypt,
    generate_nt_response,
    hash_nt_password_hash,
    lm_password_hash,
    master_key,
    mppe_v2_keys,
    nt_password_hash,
)

H = bytes.fromhex


@pytest.mark.parametrize(
    ("message", "digest"),
    [
        (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
        (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        (
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "043f8582f241db351ce627e153e7f0e4",
        ),
        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ],
)
def test_md4_matches_the_rfc_1320_test_suite(message: bytes, digest: str) -> None:
    """MD4 gives the RFC 1320 appendix A.5 digests."""
    assert md4(message).hex() == digest


def test_md4_agrees_with_the_openssl_command_at_every_length_to_130() -> None:
    """Against ``openssl dgst -md4`` (legacy provider) for lengths 0..130, which cross
    both padding boundaries (55/56 and 119/120 octets) and two-block messages."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl command not installed")
    for length in range(131):
        data = bytes((i * 37 + length) & 0xFF for i in range(length))
        proc = subprocess.run(
            [exe, "dgst", "-md4", "-provider", "legacy", "-provider", "default", "-r"],
            input=data,
            capture_output=True,
            check=True,
        )
        assert md4(data).hex() == proc.stdout.split()[0].decode(), length


def test_des_known_answer() -> None:
    """Single DES: the all-zero key and block give 8CA64DE9C1B123A7 (7-octet key form)."""
    assert des_encrypt(bytes(7), bytes(8)).hex().upper() == "8CA64DE9C1B123A7"


# RFC 2433 appendix B.2: password "MyPw", challenge 10 2D B5 DF 08 5D 30 41.
V1_CHALLENGE = H("102DB5DF085D3041")


def test_rfc2433_nt_hash_and_response() -> None:
    """MS-CHAPv1: NT hash and NT-Response of "MyPw" match RFC 2433 appendix B."""
    password_hash = nt_password_hash("MyPw")
    assert password_hash.hex() == "fc156af7edcd6c0edde3337d427f4eac"
    assert challenge_response(V1_CHALLENGE, password_hash).hex() == (
        "4e9d3c8f9cfd385d5bf4d3246791956ca4c351ab409a3d61"
    )


def test_rfc2433_lm_hash_and_response() -> None:
    """MS-CHAPv1: the LAN Manager hash and response of "MyPw" match RFC 2433 appendix B."""
    lm = lm_password_hash(b"MyPw")
    assert lm.hex() == "75ba30198e6d1975aad3b435b51404ee"
    assert challenge_response(V1_CHALLENGE, lm).hex() == (
        "91881d0152ab0c33c524135ec24a95ee64e23cdc2d33347d"
    )


def test_rfc3079_lm_hash_of_client_pass() -> None:
    """LmPasswordHash("clientPass") matches RFC 3079 section 2.5."""
    assert lm_password_hash(b"clientPass").hex() == "76a152936096d7830e2390227404afd2"


# RFC 2759 section 9.2 and RFC 3079 section 3.5.
USER = b"User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = H("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = H("21402324255E262A28295F2B3A337C7E")
NT_RESPONSE = H("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")


def test_rfc2759_section_9_2() -> None:
    """Every intermediate value of the RFC 2759 example, up to the S= response."""
    assert challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER).hex().upper() == "D02E4386BCE91226"
    password_hash = nt_password_hash(PASSWORD)
    assert password_hash.hex().upper() == "44EBBA8D5312B8D611474411F56989AE"
    assert generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD) == NT_RESPONSE
    hash_hash = hash_nt_password_hash(password_hash)
    assert hash_hash.hex().upper() == "41C00C584BD2D91C4017A2A12FA59F3F"
    assert authenticator_response(hash_hash, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER) == (
        b"S=407A5589115FD0D6209F510FE9C04566932CDA56"
    )


def test_rfc3079_section_3_5_keys() -> None:
    """Master key and the 128-bit start keys of RFC 3079 section 3.5.

    The RFC's SendStartKey128 is computed from the server's side (Magic3): it
    is the server's MS-MPPE-Send-Key, and the client's receive key.
    """
    hash_hash = hash_nt_password_hash(nt_password_hash(PASSWORD))
    master = master_key(hash_hash, NT_RESPONSE)
    assert master.hex().upper() == "FDECE3717A8C838CB388E527AE3CDD31"
    send, recv = mppe_v2_keys(hash_hash, NT_RESPONSE)
    assert send.hex().upper() == "8B7CDC149B993A1BA118CB153F56DCCB"
    assert recv.hex().upper() == "D5F0E9521E3EA9589645E86051C82226"
    assert asymmetric_start_key(master, send=False, server=False) == send
    assert asymmetric_start_key(master, send=True, server=False) == recv
    assert asymmetric_start_key(master, send=True, server=True, length=8) == send[:8]


def test_chap_response_is_md5_of_ident_password_challenge() -> None:
    """RFC 1994 section 4.1: MD5 over ident, secret and challenge, in that order."""
    expected = hashlib.md5(b"\x07" + b"pw" + b"challenge-16-oct").digest()
    assert chap_response(7, b"pw", b"challenge-16-oct") == expected
    assert chap_response(8, b"pw", b"challenge-16-oct") != expected
