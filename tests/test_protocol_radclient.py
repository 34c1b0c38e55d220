"""Interop with FreeRADIUS's radclient: it sends, a minimal responder built on our codec answers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ispcare_radius.protocol.authenticator import (
    build_response,
    message_authenticator_ok,
    request_authenticator_ok,
    unhide_password,
)
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import Packet, encode_attributes, parse

pytestmark = pytest.mark.interop

SECRET = b"radclient-secret"
DICT_DIR = Path("/usr/share/freeradius")

if shutil.which("radclient") is None or not DICT_DIR.exists():
    pytest.skip("radclient or its dictionaries not installed", allow_module_level=True)


class Responder:
    """Answers each datagram with ``handler(packet)``; records what it saw."""

    def __init__(self, handler: Callable[[Packet], bytes | None]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port: int = self.sock.getsockname()[1]
        self.handler = handler
        self.seen: list[Packet] = []
        self.thread = threading.Thread(target=self._serve_one, daemon=True)

    def _serve_one(self) -> None:
        data, peer = self.sock.recvfrom(4096)
        packet = parse(data)
        self.seen.append(packet)
        reply = self.handler(packet)
        if reply is not None:
            self.sock.sendto(reply, peer)


@pytest.fixture
def responder() -> Iterator[Callable[[Callable[[Packet], bytes | None]], Responder]]:
    made: list[Responder] = []

    def make(handler: Callable[[Packet], bytes | None]) -> Responder:
        r = Responder(handler)
        r.thread.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.sock.close()
        r.thread.join(timeout=5)


def _radclient(
    port: int, command: str, pairs: str, *, wait: float = 5
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "radclient",
            "-D",
            str(DICT_DIR),
            "-x",
            "-r",
            "1",
            "-t",
            str(wait),
            f"127.0.0.1:{port}",
            command,
            SECRET.decode(),
        ],
        input=pairs,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_radclient_access_request_is_verified_and_our_accept_is_accepted(
    responder: Callable[[Callable[[Packet], bytes | None]], Responder],
) -> None:
    """radclient's Access-Request verifies with our codec and radclient accepts our signed reply."""

    def answer(packet: Packet) -> bytes:
        attrs = encode_attributes([(18, b"hello from ispcare")])
        return build_response(packet, Code.ACCESS_ACCEPT, attrs, SECRET)

    r = responder(answer)
    result = _radclient(
        r.port,
        "auth",
        'User-Name = "erin"\nUser-Password = "a-password-longer-than-16"\n'
        "Message-Authenticator = 0x00\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Access-Accept" in result.stdout
    assert "hello from ispcare" in result.stdout
    [packet] = r.seen
    assert message_authenticator_ok(packet, SECRET) is True
    hidden = packet.get(2)
    assert hidden is not None
    assert unhide_password(hidden, SECRET, packet.authenticator) == b"a-password-longer-than-16"


def test_radclient_rejects_a_reply_signed_with_the_wrong_secret(
    responder: Callable[[Callable[[Packet], bytes | None]], Responder],
) -> None:
    """radclient refuses our reply when we sign it with another secret (the check is real)."""
    r = responder(lambda p: build_response(p, Code.ACCESS_ACCEPT, b"", b"not-the-secret"))
    result = _radclient(r.port, "auth", 'User-Name = "frank"\nUser-Password = "pw"\n', wait=1)
    assert "Received Access-Accept" not in result.stdout
    assert result.returncode != 0


def test_radclient_accounting_request_authenticator_verifies(
    responder: Callable[[Callable[[Packet], bytes | None]], Responder],
) -> None:
    """radclient's Accounting-Request authenticator verifies and it accepts our response."""
    r = responder(lambda p: build_response(p, Code.ACCOUNTING_RESPONSE, b"", SECRET))
    result = _radclient(
        r.port, "acct", 'Acct-Status-Type = Start\nAcct-Session-Id = "0001"\nUser-Name = "gus"\n'
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Accounting-Response" in result.stdout
    [packet] = r.seen
    assert packet.code == Code.ACCOUNTING_REQUEST
    assert request_authenticator_ok(packet, SECRET)
    assert not request_authenticator_ok(packet, b"wrong")
