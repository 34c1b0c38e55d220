"""The server over real loopback UDP (port 0): answers, drops and their reasons, shutdown.

The NAS side is a plain UDP socket sending packets built by the protocol
codec; the handlers are tiny in-test classes implementing ``Handler``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ispcare_radius.aaa.model import MessageAuthenticatorPolicy, Nas
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import (
    build_request,
    hide_password,
    message_authenticator_ok,
    random_authenticator,
    verify_response,
)
from ispcare_radius.protocol.codes import Code, DropReason
from ispcare_radius.protocol.packet import Packet, encode_attributes, parse
from ispcare_radius.server.app import RadiusServer
from ispcare_radius.server.clients import ClientTable
from ispcare_radius.server.endpoint import PortKind
from ispcare_radius.server.handler import NOT_READY, Handler, NotReady, Reply, Request
from ispcare_radius.server.settings import ServerSettings

SECRET = b"synthetic-test-secret"
USER_NAME = 1
USER_PASSWORD = 2
REPLY_MESSAGE = 18
PROXY_STATE = 33
ACCT_STATUS_TYPE = 40
ACCT_SESSION_ID = 44
MESSAGE_AUTHENTICATOR = 80

# Loopback sources: every 127/8 address reaches the server on Linux, so each
# Message-Authenticator policy gets its own NAS address.
V4 = "127.0.0.1"
V6 = "::1"
REQUIRE_SRC = "127.0.0.2"
OBSERVE_SRC = "127.0.0.3"
NO_SRC = "127.0.0.4"
UNKNOWN_SRC = "127.0.0.9"


def _nas(nas_id: int, name: str, address: str, policy: MessageAuthenticatorPolicy) -> Nas:
    return Nas(
        id=nas_id,
        name=name,
        address=ipaddress.ip_network(address),
        secret=Secret(SECRET),
        ma_policy=policy,
    )


def client_table() -> ClientTable:
    """Known NAS: loopback v4/v6 (require), and one per MA policy."""
    p = MessageAuthenticatorPolicy
    return ClientTable(
        [
            _nas(1, "lo4", "127.0.0.1/32", p.REQUIRE),
            _nas(2, "lo6", "::1/128", p.REQUIRE),
            _nas(3, "nas-require", "127.0.0.2/32", p.REQUIRE),
            _nas(4, "nas-observe", "127.0.0.3/32", p.OBSERVE),
            _nas(5, "nas-no", "127.0.0.4/32", p.NO),
        ]
    )


class GatedHandler:
    """Answers with a fixed code and Reply-Message; can be held on an Event."""

    def __init__(self, code: int, *, gate: asyncio.Event | None = None) -> None:
        self.code = code
        self.gate = gate
        self.calls = 0
        self.requests: list[Request] = []
        self.entered = asyncio.Event()
        self.result: Callable[[Request], Reply | None] | None = None

    async def handle(self, request: Request) -> Reply | None:
        self.calls += 1
        self.requests.append(request)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.result is not None:
            return self.result(request)
        return Reply(self.code, encode_attributes([(REPLY_MESSAGE, b"welcome")]))


class FailingHandler:
    """Raises on every call, with a message that must not reach the logs."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: Request) -> Reply | None:
        self.calls += 1
        raise RuntimeError("user alice@example.test broke it")


class RecordingLogger:
    """A logger that keeps (level, event, fields) so tests can read the log lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str, event: str, kw: dict[str, Any]) -> None:
        self.lines.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, kw)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for _, event, kw in self.lines if event == name]


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)


class UdpClient:
    """A NAS stand-in: sends prepared datagrams from a chosen source address."""

    def __init__(self, transport: asyncio.DatagramTransport, proto: _ClientProtocol) -> None:
        self.transport = transport
        self.proto = proto

    def send(self, data: bytes) -> None:
        self.transport.sendto(data)

    async def receive(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.proto.inbox.get(), timeout)

    async def nothing(self, timeout: float = 0.3) -> bool:
        """True when no datagram arrives within ``timeout`` (the "no answer" check)."""
        try:
            await asyncio.wait_for(self.proto.inbox.get(), timeout)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.transport.close()


@asynccontextmanager
async def udp_client(source: str, target: tuple[str, int]) -> AsyncIterator[UdpClient]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _ClientProtocol, local_addr=(source, 0), remote_addr=target
    )
    client = UdpClient(transport, proto)
    try:
        yield client
    finally:
        client.close()


def port_of(server: RadiusServer, kind: PortKind, host: str) -> tuple[str, int]:
    for bound_host, port in server.bound_ports.get(kind.value, []):
        if bound_host == host:
            return (host, port)
    raise AssertionError(f"no {kind} socket on {host}")


def v4_settings(**overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "auth_listen": (("127.0.0.1", 0), ("::1", 0)),
        "acct_listen": (("127.0.0.1", 0), ("::1", 0)),
        "shutdown_grace": 5.0,
        # These tests expect prompt rejects; test_server_reject_delay covers the delay.
        "reject_delay": 0,
    }
    values.update(overrides)
    return ServerSettings(**values)


@asynccontextmanager
async def running_server(
    auth_handler: Handler,
    acct_handler: Handler | None,
    *,
    logger: RecordingLogger | None = None,
    **overrides: Any,
) -> AsyncIterator[RadiusServer]:
    server = RadiusServer(
        v4_settings(**overrides),
        client_table(),
        auth_handler=auth_handler,
        acct_handler=acct_handler,
        logger=logger if logger is not None else RecordingLogger(),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def access_request(
    identifier: int = 1,
    *,
    ma: bool = True,
    secret: bytes = SECRET,
    extra: list[tuple[int, bytes]] | None = None,
) -> tuple[bytes, bytes]:
    """A PAP Access-Request for a synthetic user; returns (datagram, authenticator)."""
    auth = random_authenticator()
    attrs = [
        (USER_NAME, b"user1"),
        (USER_PASSWORD, hide_password(b"pass1", secret, auth)),
        *(extra or []),
    ]
    data = build_request(
        Code.ACCESS_REQUEST,
        identifier,
        encode_attributes(attrs),
        secret,
        message_authenticator=ma,
        authenticator=auth,
    )
    return data, auth


def accounting_request(identifier: int = 1, *, secret: bytes = SECRET) -> tuple[bytes, bytes]:
    data = build_request(
        Code.ACCOUNTING_REQUEST,
        identifier,
        encode_attributes([(ACCT_STATUS_TYPE, (1).to_bytes(4)), (ACCT_SESSION_ID, b"s-1")]),
        secret,
        message_authenticator=False,
    )
    return data, data[4:20]


def status_server(identifier: int = 200, *, ma: bool = True) -> tuple[bytes, bytes]:
    auth = random_authenticator()
    data = build_request(
        Code.STATUS_SERVER, identifier, b"", SECRET, message_authenticator=ma, authenticator=auth
    )
    return data, auth


def check_reply(data: bytes, request_auth: bytes, *, ma_first: bool) -> Packet:
    """Parse a reply and assert its Response Authenticator (and MA when expected)."""
    reply = parse(data)
    assert verify_response(reply, request_auth, SECRET)
    if ma_first:
        assert reply.attributes[0][0] == MESSAGE_AUTHENTICATOR
        assert message_authenticator_ok(reply, SECRET, request_auth) is True
    return reply


async def barrier(server: RadiusServer, kind: PortKind, host: str = V4) -> None:
    """Wait until every datagram sent earlier to that socket has been processed.

    A Status-Server answer proves the server read past everything queued before
    it on the same socket (loopback delivers in order).
    """
    async with udp_client(host, port_of(server, kind, host)) as c:
        data, auth = status_server()
        c.send(data)
        check_reply(await c.receive(), auth, ma_first=True)


# -- tests ---------------------------------------------------------------------


@pytest.mark.parametrize("host", [V4, V6])
async def test_access_request_gets_signed_reply_with_message_authenticator_first(
    host: str,
) -> None:
    """Over IPv4 and IPv6 the handler's reply arrives with a valid Response
    Authenticator and a valid Message-Authenticator as first attribute."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with (
        running_server(handler, None) as server,
        udp_client(host, port_of(server, PortKind.AUTH, host)) as nas,
    ):
        data, auth = access_request(identifier=42)
        nas.send(data)
        reply = check_reply(await nas.receive(), auth, ma_first=True)
    assert reply.code == Code.ACCESS_ACCEPT and reply.identifier == 42
    assert reply.get(REPLY_MESSAGE) == b"welcome"
    assert handler.calls == 1
    assert handler.requests[0].message_authenticator is True
    assert handler.requests[0].nas.name == ("lo4" if host == V4 else "lo6")
    snap = server.counters.snapshot()
    assert snap["requests.access_request"] == 1 and snap["replies.access_accept"] == 1


async def test_bound_ports_report_kernel_chosen_ports() -> None:
    """Port 0 in the settings becomes a real port in bound_ports, one socket per address."""
    async with running_server(GatedHandler(Code.ACCESS_ACCEPT), None) as server:
        ports = server.bound_ports
    assert sorted(ports) == ["acct", "auth"]
    assert [h for h, _ in ports["auth"]] == [V4, V6]
    assert [h for h, _ in ports["acct"]] == [V4, V6]
    assert all(port > 0 for kind in ports.values() for _, port in kind)


async def test_unknown_source_gets_no_reply_and_is_counted_without_its_address() -> None:
    """A datagram from an address outside the client table is dropped as
    unknown_client, and no log line carries the source address."""
    log = RecordingLogger()
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with running_server(handler, None, logger=log) as server:
        async with udp_client(UNKNOWN_SRC, port_of(server, PortKind.AUTH, V4)) as stranger:
            data, _ = access_request()
            stranger.send(data)
            await barrier(server, PortKind.AUTH)
            assert await stranger.nothing()
        assert server.counters.get_drop(DropReason.UNKNOWN_CLIENT) == 1
    assert handler.calls == 0
    assert [kw for kw in log.events("drop") if kw["reason"] == "unknown_client"]
    assert UNKNOWN_SRC not in repr(log.lines)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"\x01\x02\x03", DropReason.TOO_SHORT),
        (bytes([1, 1, 0, 10]) + bytes(16), DropReason.BAD_LENGTH),
        (bytes([1, 1, 0, 40]) + bytes(16), DropReason.TRUNCATED),
        (bytes([99, 1, 0, 20]) + bytes(16), DropReason.UNKNOWN_CODE),
        (bytes([1, 1, 0, 23]) + bytes(16) + bytes([1, 1, 0]), DropReason.ATTRIBUTE_TOO_SHORT),
    ],
)
async def test_garbage_datagram_is_dropped_with_its_decode_reason(
    datagram: bytes, reason: DropReason
) -> None:
    """Undecodable datagrams from a known NAS are dropped and counted by reason."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with running_server(handler, None) as server:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            nas.send(datagram)
            await barrier(server, PortKind.AUTH)
            assert await nas.nothing()
        assert server.counters.get_drop(reason) == 1
        assert server.counters.nas_drops["lo4"] == 1
    assert handler.calls == 0


async def test_retransmission_while_in_progress_is_dropped_and_handler_runs_once() -> None:
    """A copy of a request still being handled is dropped as duplicate_in_progress;
    after release exactly one reply is sent."""
    gate = asyncio.Event()
    handler = GatedHandler(Code.ACCESS_ACCEPT, gate=gate)
    async with (
        running_server(handler, None) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(identifier=7)
        nas.send(data)
        await asyncio.wait_for(handler.entered.wait(), 5)
        nas.send(data)
        await barrier(server, PortKind.AUTH)
        assert server.counters.get_drop(DropReason.DUPLICATE_IN_PROGRESS) == 1
        gate.set()
        check_reply(await nas.receive(), auth, ma_first=True)
        assert await nas.nothing()
    assert handler.calls == 1


async def test_retransmission_after_answer_gets_identical_bytes_from_cache() -> None:
    """A copy of an answered request is answered with the same bytes, without the handler."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with running_server(handler, None) as server:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            data, auth = access_request(identifier=8)
            nas.send(data)
            first = await nas.receive()
            nas.send(data)
            second = await nas.receive()
        assert server.counters.duplicate_answered == 1
    check_reply(first, auth, ma_first=True)
    assert first == second
    assert handler.calls == 1


async def test_new_authenticator_with_same_identifier_is_a_new_request() -> None:
    """Same identifier with a fresh authenticator reaches the handler again."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with (
        running_server(handler, None) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        for _ in range(2):
            data, auth = access_request(identifier=9)
            nas.send(data)
            check_reply(await nas.receive(), auth, ma_first=True)
    assert handler.calls == 2


async def test_require_policy_drops_access_request_without_message_authenticator() -> None:
    """A NAS with policy require gets no answer without Message-Authenticator."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with running_server(handler, None) as server:
        async with udp_client(REQUIRE_SRC, port_of(server, PortKind.AUTH, V4)) as nas:
            data, _ = access_request(ma=False)
            nas.send(data)
            await barrier(server, PortKind.AUTH)
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.MISSING_MESSAGE_AUTHENTICATOR) == 1
    assert handler.calls == 0


async def test_observe_policy_answers_counts_and_warns_once() -> None:
    """Policy observe answers a request without Message-Authenticator, counts each,
    and logs the warning once per interval per NAS."""
    log = RecordingLogger()
    handler = GatedHandler(Code.ACCESS_REJECT)
    async with running_server(handler, None, logger=log) as server:
        async with udp_client(OBSERVE_SRC, port_of(server, PortKind.AUTH, V4)) as nas:
            for ident in (1, 2):
                data, auth = access_request(identifier=ident, ma=False)
                nas.send(data)
                reply = check_reply(await nas.receive(), auth, ma_first=True)
                assert reply.code == Code.ACCESS_REJECT
        assert server.counters.ma_missing_observed == 2
    assert handler.requests[0].message_authenticator is None
    assert log.events("message_authenticator_missing") == [{"nas": "nas-observe"}]


async def test_no_policy_answers_without_counting() -> None:
    """Policy no answers a request without Message-Authenticator and counts nothing."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with running_server(handler, None) as server:
        async with udp_client(NO_SRC, port_of(server, PortKind.AUTH, V4)) as nas:
            data, auth = access_request(ma=False)
            nas.send(data)
            check_reply(await nas.receive(), auth, ma_first=True)
        assert server.counters.ma_missing_observed == 0


async def test_bad_message_authenticator_is_dropped_even_under_policy_no() -> None:
    """A Message-Authenticator made with another secret drops the request."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with running_server(handler, None) as server:
        async with udp_client(NO_SRC, port_of(server, PortKind.AUTH, V4)) as nas:
            data, _ = access_request(secret=b"some-other-secret")
            nas.send(data)
            await barrier(server, PortKind.AUTH)
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.BAD_MESSAGE_AUTHENTICATOR) == 1
        # The dropped request left no cache entry: a correct one with the same
        # identifier is processed.
        async with udp_client(NO_SRC, port_of(server, PortKind.AUTH, V4)) as nas:
            data, auth = access_request()
            nas.send(data)
            check_reply(await nas.receive(), auth, ma_first=True)
    assert handler.calls == 1


@pytest.mark.parametrize(
    ("kind", "expected"),
    [(PortKind.AUTH, Code.ACCESS_ACCEPT), (PortKind.ACCT, Code.ACCOUNTING_RESPONSE)],
)
async def test_status_server_is_answered_on_both_ports(kind: PortKind, expected: Code) -> None:
    """Status-Server gets Access-Accept on auth and Accounting-Response on acct,
    both with a Message-Authenticator, without calling a handler."""
    auth_h = GatedHandler(Code.ACCESS_ACCEPT)
    acct_h = GatedHandler(Code.ACCOUNTING_RESPONSE)
    async with (
        running_server(auth_h, acct_h) as server,
        udp_client(V6, port_of(server, kind, V6)) as nas,
    ):
        data, auth = status_server(identifier=3)
        nas.send(data)
        reply = check_reply(await nas.receive(), auth, ma_first=True)
    assert reply.code == expected and reply.identifier == 3
    assert auth_h.calls == acct_h.calls == 0


async def test_status_server_without_message_authenticator_is_dropped() -> None:
    """Status-Server without Message-Authenticator is dropped even for a policy-no NAS."""
    async with running_server(GatedHandler(Code.ACCESS_ACCEPT), None) as server:
        async with udp_client(NO_SRC, port_of(server, PortKind.AUTH, V4)) as nas:
            data, _ = status_server(ma=False)
            nas.send(data)
            await barrier(server, PortKind.AUTH)
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.MISSING_MESSAGE_AUTHENTICATOR) == 1


async def test_proxy_state_is_copied_in_order() -> None:
    """Every Proxy-State of the request comes back, unmodified and in order, after
    the handler's attributes."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    states = [b"first", b"\x00second", b"third"]
    async with (
        running_server(handler, None) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(extra=[(PROXY_STATE, s) for s in states])
        nas.send(data)
        reply = check_reply(await nas.receive(), auth, ma_first=True)
    assert reply.get_all(PROXY_STATE) == states
    types = [t for t, _ in reply.attributes]
    assert types == [MESSAGE_AUTHENTICATOR, REPLY_MESSAGE, PROXY_STATE, PROXY_STATE, PROXY_STATE]


async def test_accounting_request_is_answered_and_bad_authenticator_dropped() -> None:
    """A correctly signed Accounting-Request is answered; one signed with another
    secret is dropped as bad_authenticator."""
    acct_h = GatedHandler(Code.ACCOUNTING_RESPONSE)
    async with running_server(GatedHandler(Code.ACCESS_ACCEPT), acct_h) as server:
        async with udp_client(V4, port_of(server, PortKind.ACCT, V4)) as nas:
            data, auth = accounting_request(identifier=5)
            nas.send(data)
            reply = check_reply(await nas.receive(), auth, ma_first=False)
            assert reply.code == Code.ACCOUNTING_RESPONSE
            bad, _ = accounting_request(identifier=6, secret=b"wrong-secret")
            nas.send(bad)
            await barrier(server, PortKind.ACCT)
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.BAD_AUTHENTICATOR) == 1
    assert acct_h.calls == 1


async def test_wrong_code_for_the_port_is_unexpected() -> None:
    """Accounting-Request on the auth port, Access-Request on the acct port, and
    accounting with no acct handler are dropped as unexpected_code."""
    async with running_server(GatedHandler(Code.ACCESS_ACCEPT), None) as server:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            nas.send(accounting_request()[0])
        async with udp_client(V4, port_of(server, PortKind.ACCT, V4)) as nas:
            nas.send(access_request()[0])
            nas.send(accounting_request()[0])
            await barrier(server, PortKind.ACCT)
            await barrier(server, PortKind.AUTH)
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.UNEXPECTED_CODE) == 3


async def test_handler_exception_sends_nothing_counts_and_lets_retry_through() -> None:
    """A raising handler gives no reply, counts handler_error, logs no message text,
    and the NAS's retransmission is processed again."""
    log = RecordingLogger()
    handler = FailingHandler()
    async with running_server(handler, None, logger=log) as server:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            data, _ = access_request()
            nas.send(data)
            assert await nas.nothing()
            nas.send(data)
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.HANDLER_ERROR) == 2
    assert handler.calls == 2
    assert log.events("handler_error")[0] == {"nas": "lo4", "error": "RuntimeError"}
    assert "alice" not in repr(log.lines)


async def test_no_reply_from_handler_forgets_the_request() -> None:
    """A handler answering None sends nothing, and the retransmission reaches it again."""
    handler = GatedHandler(Code.ACCOUNTING_RESPONSE)
    handler.result = lambda request: None
    async with (
        running_server(GatedHandler(Code.ACCESS_ACCEPT), handler) as server,
        udp_client(V4, port_of(server, PortKind.ACCT, V4)) as nas,
    ):
        data, _ = accounting_request()
        nas.send(data)
        assert await nas.nothing()
        nas.send(data)
        assert await nas.nothing()
    assert handler.calls == 2


async def test_reply_code_not_allowed_for_request_is_not_sent() -> None:
    """A handler answering an Access-Request with Accounting-Response is a handler_error."""
    handler = GatedHandler(Code.ACCOUNTING_RESPONSE)
    async with running_server(handler, None) as server:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            nas.send(access_request()[0])
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.HANDLER_ERROR) == 1


async def test_beyond_max_in_flight_requests_are_dropped_as_overloaded() -> None:
    """With max_in_flight=1 and one request held, the next one is dropped as overloaded."""
    gate = asyncio.Event()
    handler = GatedHandler(Code.ACCESS_ACCEPT, gate=gate)
    async with (
        running_server(handler, None, max_in_flight=1) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        first, auth = access_request(identifier=1)
        nas.send(first)
        await asyncio.wait_for(handler.entered.wait(), 5)
        nas.send(access_request(identifier=2)[0])
        await barrier(server, PortKind.AUTH)
        assert server.counters.get_drop(DropReason.OVERLOADED) == 1
        gate.set()
        check_reply(await nas.receive(), auth, ma_first=True)
    assert handler.calls == 1


async def test_request_log_line_has_nas_codes_and_latency() -> None:
    """Each completed request logs one info line: event request, nas, code, result, latency."""
    log = RecordingLogger()
    async with (
        running_server(GatedHandler(Code.ACCESS_ACCEPT), None, logger=log) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        nas.send(access_request()[0])
        await nas.receive()
    (line,) = log.events("request")
    assert line["nas"] == "lo4" and line["packet"] == "Access-Request"
    assert line["result"] == "Access-Accept"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0


async def test_request_log_line_can_be_switched_off() -> None:
    """log_requests=False suppresses the per-request line."""
    log = RecordingLogger()
    async with (
        running_server(
            GatedHandler(Code.ACCESS_ACCEPT), None, logger=log, log_requests=False
        ) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        nas.send(access_request()[0])
        await nas.receive()
    assert log.events("request") == []


async def test_graceful_stop_waits_for_in_flight_request_and_sends_its_reply() -> None:
    """stop() waits for a request whose handler is released after stop began,
    and its reply still reaches the NAS."""
    gate = asyncio.Event()
    handler = GatedHandler(Code.ACCESS_ACCEPT, gate=gate)
    server = RadiusServer(
        v4_settings(),
        client_table(),
        auth_handler=handler,
        acct_handler=None,
        logger=RecordingLogger(),
    )
    await server.start()
    async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
        data, auth = access_request()
        nas.send(data)
        await asyncio.wait_for(handler.entered.wait(), 5)
        stopping = asyncio.create_task(server.stop())
        # stop() must still be waiting for the held request.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stopping), 0.3)
        assert server.in_flight == 1
        gate.set()
        check_reply(await nas.receive(), auth, ma_first=True)
        await asyncio.wait_for(stopping, 5)
    assert server.in_flight == 0


async def test_stop_cancels_requests_past_the_grace_period() -> None:
    """A handler still blocked when shutdown_grace ends is cancelled; stop returns."""
    handler = GatedHandler(Code.ACCESS_ACCEPT, gate=asyncio.Event())
    server = RadiusServer(
        v4_settings(shutdown_grace=0),
        client_table(),
        auth_handler=handler,
        acct_handler=None,
        logger=RecordingLogger(),
    )
    await server.start()
    async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
        nas.send(access_request()[0])
        await asyncio.wait_for(handler.entered.wait(), 5)
        await asyncio.wait_for(server.stop(), 5)
        assert await nas.nothing()
    assert server.in_flight == 0


async def test_serve_forever_returns_after_sigterm() -> None:
    """SIGTERM during serve_forever stops the server and serve_forever returns."""
    server = RadiusServer(
        v4_settings(),
        client_table(),
        auth_handler=GatedHandler(Code.ACCESS_ACCEPT),
        acct_handler=None,
        logger=RecordingLogger(),
    )
    await server.start()
    serving = asyncio.create_task(server.serve_forever())
    # The barrier's network round trip lets serve_forever install its handlers.
    await barrier(server, PortKind.AUTH)
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 5)
    assert repr(server) == "RadiusServer(state=stopped, in_flight=0)"


async def test_bind_failure_names_the_address_and_leaks_no_socket() -> None:
    """Binding a port already in use raises OSError naming the service and address."""
    async with running_server(GatedHandler(Code.ACCESS_ACCEPT), None) as first:
        taken = port_of(first, PortKind.AUTH, V4)[1]
        second = RadiusServer(
            v4_settings(auth_listen=((V4, 0), (V4, taken))),
            client_table(),
            auth_handler=GatedHandler(Code.ACCESS_ACCEPT),
            acct_handler=None,
            logger=RecordingLogger(),
        )
        with pytest.raises(OSError, match=f"auth on \\[127.0.0.1\\]:{taken}"):
            await second.start()
        assert second.bound_ports == {}


class FastPathHandler(GatedHandler):
    """Answers synchronously for identifiers below 100, asks for the async path otherwise;
    identifier 13 raises."""

    def __init__(self) -> None:
        super().__init__(Code.ACCESS_ACCEPT)
        self.fast_calls = 0

    def try_handle_now(self, request: Request) -> Reply | NotReady | None:
        self.fast_calls += 1
        if request.packet.identifier == 13:
            raise ValueError("synthetic failure")
        if request.packet.identifier >= 100:
            return NOT_READY
        return Reply(Code.ACCESS_REJECT, b"")


async def test_fast_path_answers_without_the_async_handler() -> None:
    """A handler with try_handle_now answering directly is not awaited, and its
    reply is signed, cached and resent like any other."""
    handler = FastPathHandler()
    async with (
        running_server(handler, None) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(identifier=5)
        nas.send(data)
        first = await nas.receive()
        nas.send(data)
        assert await nas.receive() == first
    assert check_reply(first, auth, ma_first=True).code == Code.ACCESS_REJECT
    assert handler.fast_calls == 1 and handler.calls == 0


async def test_fast_path_not_ready_falls_back_to_handle() -> None:
    """NOT_READY from try_handle_now sends the request through handle()."""
    handler = FastPathHandler()
    async with (
        running_server(handler, None) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(identifier=150)
        nas.send(data)
        reply = check_reply(await nas.receive(), auth, ma_first=True)
    assert reply.code == Code.ACCESS_ACCEPT
    assert handler.fast_calls == 1 and handler.calls == 1


async def test_fast_path_exception_is_a_handler_error_and_retry_gets_through() -> None:
    """An exception in try_handle_now sends nothing, counts handler_error and
    leaves no cache entry behind."""
    handler = FastPathHandler()
    async with running_server(handler, None) as server:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            data, _ = access_request(identifier=13)
            nas.send(data)
            nas.send(data)
            await barrier(server, PortKind.AUTH)
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.HANDLER_ERROR) == 2
    assert handler.fast_calls == 2


async def test_burst_larger_than_one_read_batch_is_fully_answered() -> None:
    """256 requests sent back to back (four read batches) all get their reply."""
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    async with running_server(handler, None) as server:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            sent = {}
            for ident in range(256):
                data, auth = access_request(identifier=ident)
                sent[ident] = auth
                nas.send(data)
            replies = [await nas.receive() for _ in range(256)]
        assert server.counters.snapshot()["replies.access_accept"] == 256
    for raw in replies:
        check_reply(raw, sent[raw[1]], ma_first=True)
    assert {raw[1] for raw in replies} == set(range(256))


class _BrokenTable(ClientTable):
    """A client table with a bug: every lookup raises."""

    def match(self, address: object) -> None:
        raise RuntimeError("table bug")


async def test_bug_in_datagram_path_is_counted_and_never_reaches_the_loop() -> None:
    """An exception inside the per-datagram path is counted as handler_error and
    the socket keeps reading."""
    log = RecordingLogger()
    server = RadiusServer(
        v4_settings(),
        _BrokenTable(),
        auth_handler=GatedHandler(Code.ACCESS_ACCEPT),
        acct_handler=None,
        logger=log,
    )
    await server.start()
    try:
        async with udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas:
            nas.send(access_request(identifier=1)[0])
            nas.send(access_request(identifier=2)[0])
            assert await nas.nothing()
        assert server.counters.get_drop(DropReason.HANDLER_ERROR) == 2
        assert log.events("datagram_error")[0] == {"service": "auth", "error": "RuntimeError"}
    finally:
        await server.stop()
