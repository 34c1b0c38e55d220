"""Delayed Access-Rejects over loopback UDP: held back, never blocking, never doubled, flushed.

Time passes for real here (the delay is a loop timer), but no test sleeps:
each waits on the reply itself and measures when it came with time.monotonic.
"""

from __future__ import annotations

import math
import time

import pytest

from ispcare_radius.protocol.codes import Code, DropReason
from ispcare_radius.server.counters import Counters
from ispcare_radius.server.endpoint import PortKind
from ispcare_radius.server.handler import Reply, Request
from ispcare_radius.server.settings import MAX_REJECT_DELAY, ServerSettings
from tests.test_server_udp import (
    V4,
    FastPathHandler,
    GatedHandler,
    RecordingLogger,
    access_request,
    barrier,
    check_reply,
    port_of,
    running_server,
    udp_client,
)

DELAY = 0.3
REJECTED_ID = 1  # the handler rejects this identifier and accepts every other


def _reject_one(request: Request) -> Reply:
    code = Code.ACCESS_REJECT if request.packet.identifier == REJECTED_ID else Code.ACCESS_ACCEPT
    return Reply(code, b"")


def _handler() -> GatedHandler:
    handler = GatedHandler(Code.ACCESS_ACCEPT)
    handler.result = _reject_one
    return handler


async def test_reject_waits_out_the_delay_while_a_later_accept_is_sent_at_once() -> None:
    """With reject_delay 0.3 the reject arrives >= 0.3 s after sending, and an accept for a
    request sent right after it arrives first."""
    handler = _handler()
    async with (
        running_server(handler, None, reject_delay=DELAY) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        rejected, reject_auth = access_request(identifier=REJECTED_ID)
        accepted, accept_auth = access_request(identifier=2)
        start = time.monotonic()
        nas.send(rejected)
        nas.send(accepted)
        first = await nas.receive()
        first_at = time.monotonic() - start
        second = await nas.receive()
        second_at = time.monotonic() - start

        assert check_reply(first, accept_auth, ma_first=True).code == Code.ACCESS_ACCEPT
        assert check_reply(second, reject_auth, ma_first=True).code == Code.ACCESS_REJECT
        assert second_at >= DELAY
        assert first_at < second_at
        assert handler.calls == 2
        assert server.counters.rejects_delayed == 1
        assert server.counters.replies[Code.ACCESS_REJECT] == 1
        assert server.delayed_rejects == 0


async def test_retransmission_during_the_delay_gets_no_extra_reply() -> None:
    """A retransmission while the reject is held is dropped as duplicate_in_progress, the
    handler runs once, one reject goes out; a later retransmission gets the cached copy."""
    handler = _handler()
    async with (
        running_server(handler, None, reject_delay=DELAY) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(identifier=REJECTED_ID)
        start = time.monotonic()
        nas.send(data)
        await handler.entered.wait()
        nas.send(data)  # the NAS's retransmission, same bytes and source
        await barrier(server, PortKind.AUTH)
        assert server.delayed_rejects == 1
        assert server.counters.get_drop(DropReason.DUPLICATE_IN_PROGRESS) == 1

        reply = await nas.receive()
        assert time.monotonic() - start >= DELAY
        assert check_reply(reply, auth, ma_first=True).code == Code.ACCESS_REJECT
        assert await nas.nothing(0.3)  # no second reply for the dropped copy

        # Once sent, the reject is answered from the reply cache like any reply.
        nas.send(data)
        assert await nas.receive() == reply
        assert server.counters.duplicate_answered == 1
        assert handler.calls == 1


async def test_stop_sends_a_pending_reject_at_once() -> None:
    """stop() sends a reject still waiting out a 10 s delay before the sockets close."""
    handler = _handler()
    log = RecordingLogger()
    async with (
        running_server(handler, None, logger=log, reject_delay=MAX_REJECT_DELAY) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(identifier=REJECTED_ID)
        nas.send(data)
        await handler.entered.wait()
        assert server.delayed_rejects == 1
        assert await nas.nothing(0.2)

        start = time.monotonic()
        await server.stop()
        reply = await nas.receive(timeout=2.0)
        assert time.monotonic() - start < MAX_REJECT_DELAY / 2
        assert check_reply(reply, auth, ma_first=True).code == Code.ACCESS_REJECT
        assert server.delayed_rejects == 0
        assert server.counters.replies[Code.ACCESS_REJECT] == 1
    # The decision was logged once, when it was made.
    assert [e["result"] for e in log.events("request")] == ["Access-Reject"]


async def test_fast_path_rejects_are_delayed_too() -> None:
    """A reject answered synchronously by try_handle_now is held back like any other."""
    handler = FastPathHandler()
    async with (
        running_server(handler, None, reject_delay=DELAY) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(identifier=5)
        start = time.monotonic()
        nas.send(data)
        reply = await nas.receive()
        assert time.monotonic() - start >= DELAY
        assert check_reply(reply, auth, ma_first=True).code == Code.ACCESS_REJECT
        assert handler.fast_calls == 1
        assert server.counters.rejects_delayed == 1


async def test_zero_delay_sends_rejects_at_once_and_counts_none_delayed() -> None:
    """reject_delay 0 disables the delay: the reject is sent and cached straight away."""
    handler = _handler()
    async with (
        running_server(handler, None, reject_delay=0) as server,
        udp_client(V4, port_of(server, PortKind.AUTH, V4)) as nas,
    ):
        data, auth = access_request(identifier=REJECTED_ID)
        nas.send(data)
        reply = await nas.receive()
        assert check_reply(reply, auth, ma_first=True).code == Code.ACCESS_REJECT
        assert server.counters.rejects_delayed == 0
        assert server.delayed_rejects == 0


def test_reject_delay_defaults_to_one_second_and_shows_in_the_counters() -> None:
    """The production default is 1 s, and the counters snapshot names rejects_delayed."""
    assert ServerSettings().reject_delay == 1.0
    assert Counters().snapshot()["rejects_delayed"] == 0


@pytest.mark.parametrize("value", [-0.1, 10.5, math.nan, math.inf, True, "1"])
def test_reject_delay_outside_0_to_10_seconds_is_refused(value: object) -> None:
    """reject_delay must be a finite number of seconds from 0 to 10."""
    with pytest.raises(ValueError, match="reject_delay"):
        ServerSettings(reject_delay=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 0.05, 1, MAX_REJECT_DELAY])
def test_reject_delay_from_0_to_10_seconds_is_accepted(value: float) -> None:
    """Zero (disabled), fractions and the 10 s maximum are all valid."""
    assert ServerSettings(reject_delay=value).reject_delay == value
