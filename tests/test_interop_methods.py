"""CHAP, MS-CHAPv1 and MS-CHAPv2 end to end: FreeRADIUS's radtest/radclient against
the real ``ispcare-radius serve`` process."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from ispcare_radius.aaa.methods.mscrypto import (
    authenticator_response,
    generate_nt_response,
    hash_nt_password_hash,
    lm_password_hash,
    mppe_v2_keys,
    nt_password_hash,
)
from tests.support.peers import RadclientResult, radclient, require_tool
from tests.support.server_proc import ServerProcess, create_database, drop_database

pytestmark = pytest.mark.interop

SECRET = "it-methods-secret-Q7"
CHAP_USER, CHAP_PASSWORD = "it-chap-user-3", "it-chap-Pw-51"
V1_USER, V1_PASSWORD = "it-mschap1-user-8", "it-v1-Pw-77"
V2_USER, V2_PASSWORD = "it-mschap2-user-4", "it-v2-Pw-ümlaut"
AUTH_CHALLENGE = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
PEER_CHALLENGE = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tool("radclient")
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path_factory.mktemp("methods"), dsn, probe_secret=SECRET.encode())
    try:
        srv.setup()
        srv.cli("nas", "add", "bras-m", "127.0.0.1", "--secret", SECRET, "--ma-policy", "observe")
        srv.cli("plan", "add", "plan-m", "--download", "10M", "--upload", "2M")
        for user, password in (
            (CHAP_USER, CHAP_PASSWORD),
            (V1_USER, V1_PASSWORD),
            (V2_USER, V2_PASSWORD),
        ):
            srv.cli(
                "subscriber", "add", user, "--plan", "plan-m", "--password-stdin",
                input=password + "\n",
            )  # fmt: skip
        srv.start()
        yield srv
    finally:
        srv.kill()
        drop_database(pg_admin_dsn, name)


def _radtest(srv: ServerProcess, kind: str, user: str, password: str) -> RadclientResult:
    exe = require_tool("radtest")
    proc = subprocess.run(
        [exe, "-t", kind, user, password, f"127.0.0.1:{srv.auth_port}", "0", SECRET],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    code = "Access-Accept" if "Received Access-Accept" in out else None
    if "Received Access-Reject" in out:
        code = "Access-Reject"
    return RadclientResult(proc.returncode, out, code)


def _v2(srv: ServerProcess, password: str) -> RadclientResult:
    nt = generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, V2_USER.encode(), password)
    response = bytes((0x5C, 0)) + PEER_CHALLENGE + bytes(8) + nt
    attrs = (
        f'User-Name = "{V2_USER}", MS-CHAP-Challenge = 0x{AUTH_CHALLENGE.hex()}, '
        f"MS-CHAP2-Response = 0x{response.hex()}, NAS-IP-Address = 127.0.0.1, "
        "Message-Authenticator = 0x00\n"
    )
    return radclient(f"127.0.0.1:{srv.auth_port}", "auth", SECRET, attrs)


def _octets(text: str) -> bytes:
    assert text.startswith("0x"), text
    return bytes.fromhex(text[2:])


def test_radtest_chap_accepts(server: ServerProcess) -> None:
    """``radtest -t chap`` with the right password gets Access-Accept."""
    result = _radtest(server, "chap", CHAP_USER, CHAP_PASSWORD)
    assert result.code == "Access-Accept", result.output


def test_radtest_chap_wrong_password_rejects(server: ServerProcess) -> None:
    """``radtest -t chap`` with a wrong password gets Access-Reject."""
    result = _radtest(server, "chap", CHAP_USER, "not-" + CHAP_PASSWORD)
    assert result.code == "Access-Reject", result.output


def test_radtest_mschap_accepts_with_mppe_keys(server: ServerProcess) -> None:
    """``radtest -t mschap`` (MS-CHAPv1) gets Access-Accept with MS-CHAP-MPPE-Keys."""
    result = _radtest(server, "mschap", V1_USER, V1_PASSWORD)
    assert result.code == "Access-Accept", result.output
    # radclient unhides the keys with the secret: LM key (8) then NT hash-hash (16).
    found = re.search(r"MS-CHAP-MPPE-Keys = 0x([0-9a-f]+)", result.output)
    assert found is not None, result.output
    expected = lm_password_hash(V1_PASSWORD.encode())[:8] + hash_nt_password_hash(
        nt_password_hash(V1_PASSWORD)
    )
    assert bytes.fromhex(found.group(1)) == expected
    assert "MS-MPPE-Encryption-Policy = Encryption-Allowed" in result.output, result.output


def test_radtest_mschap_wrong_password_gets_error_691(server: ServerProcess) -> None:
    """``radtest -t mschap`` with a wrong password gets Access-Reject with E=691."""
    result = _radtest(server, "mschap", V1_USER, "not-" + V1_PASSWORD)
    assert result.code == "Access-Reject", result.output
    assert "MS-CHAP-Error" in result.output and "E=691 R=0" in result.output, result.output


def test_mschapv2_accepts_with_success_and_keys(server: ServerProcess) -> None:
    """A radclient MS-CHAPv2 request gets Access-Accept whose MS-CHAP2-Success holds
    the S= value the peer expects, and the MPPE keys (decrypted by radclient) match."""
    result = _v2(server, V2_PASSWORD)
    assert result.code == "Access-Accept", result.output
    nt = generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, V2_USER.encode(), V2_PASSWORD)
    hash_hash = hash_nt_password_hash(nt_password_hash(V2_PASSWORD))
    expected = authenticator_response(
        hash_hash, nt, PEER_CHALLENGE, AUTH_CHALLENGE, V2_USER.encode()
    )
    (success,) = result.attributes["MS-CHAP2-Success"]
    assert _octets(success) == bytes((0x5C,)) + expected
    send, recv = mppe_v2_keys(hash_hash, nt)
    assert [_octets(v) for v in result.attributes["MS-MPPE-Send-Key"]] == [send]
    assert [_octets(v) for v in result.attributes["MS-MPPE-Recv-Key"]] == [recv]
    assert result.attributes["MS-MPPE-Encryption-Types"] == ["RC4-40or128-bit-Allowed"]


def test_mschapv2_wrong_password_gets_error_691(server: ServerProcess) -> None:
    """A wrong MS-CHAPv2 password gets Access-Reject with MS-CHAP-Error E=691 and no keys."""
    result = _v2(server, "not-" + V2_PASSWORD)
    assert result.code == "Access-Reject", result.output
    (error,) = result.attributes["MS-CHAP-Error"]
    assert "E=691 R=0 C=" in error and "V=3" in error, error
    assert "MS-MPPE-Send-Key" not in result.attributes
