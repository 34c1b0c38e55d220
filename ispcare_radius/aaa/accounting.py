"""The Accounting-Request handler: packet -> accounting record -> durable write -> reply.

Owns the accounting values (``AcctRecord``), the decoding of an
Accounting-Request and the fail-closed outcome -> reply table. Pure apart from
awaiting its ports; imports protocol, privacy (logging only), aaa.request and
aaa.ports; never store, asyncpg or sockets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final

from ispcare_radius.aaa.cookie import find_cookie
from ispcare_radius.aaa.ports import AccountingRecorder, StoreUnavailable, SubscriberDirectory
from ispcare_radius.aaa.request import Reply, Request
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import Packet

_log = get_logger(__name__)

USER_NAME: Final = 1
NAS_IP_ADDRESS: Final = 4
NAS_PORT: Final = 5
FRAMED_IP_ADDRESS: Final = 8
CLASS: Final = 25
CALLING_STATION_ID: Final = 31
NAS_IDENTIFIER: Final = 32
PROXY_STATE: Final = 33
ACCT_STATUS_TYPE: Final = 40
ACCT_DELAY_TIME: Final = 41
ACCT_INPUT_OCTETS: Final = 42
ACCT_OUTPUT_OCTETS: Final = 43
ACCT_SESSION_ID: Final = 44
ACCT_SESSION_TIME: Final = 46
ACCT_TERMINATE_CAUSE: Final = 49
ACCT_INPUT_GIGAWORDS: Final = 52
ACCT_OUTPUT_GIGAWORDS: Final = 53
EVENT_TIMESTAMP: Final = 55
NAS_PORT_TYPE: Final = 61
NAS_PORT_ID: Final = 87
MESSAGE_AUTHENTICATOR: Final = 80
NAS_IPV6_ADDRESS: Final = 95
FRAMED_IPV6_PREFIX: Final = 97
DELEGATED_IPV6_PREFIX: Final = 123
FRAMED_IPV6_ADDRESS: Final = 168

# A retransmission differs from the original only in these attributes: the
# identifier and authenticator change with Acct-Delay-Time (RFC 2866 section
# 5.2: "changing the Acct-Delay-Time causes the Identifier to change"), and
# Proxy-State / Message-Authenticator are hop-by-hop. Everything else is the
# content that makes two packets the same accounting event.
_NOT_CONTENT: Final = frozenset({PROXY_STATE, ACCT_DELAY_TIME, MESSAGE_AUTHENTICATOR})
_MAX_BIGINT: Final = (1 << 63) - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class AcctStatus(IntEnum):
    """Acct-Status-Type values (RFC 2866 section 5.1, RFC 2867 section 4.1)."""

    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8
    TUNNEL_START = 9
    TUNNEL_STOP = 10
    TUNNEL_REJECT = 11
    TUNNEL_LINK_START = 12
    TUNNEL_LINK_STOP = 13
    TUNNEL_LINK_REJECT = 14
    FAILED = 15


# Accounting-On/Off describe the whole NAS, not a session. RFC 2866 section
# 5.5 asks for an Acct-Session-Id in every Accounting-Request, but NAS in the
# field often omit it here; recording the reboot beats losing it.
_NO_SESSION_NEEDED: Final = frozenset({AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF})


class Attribution(StrEnum):
    """How a record was tied (or not) to a subscriber; ``subscriber_id`` is 0 unless SUBSCRIBER."""

    SUBSCRIBER = "subscriber"
    UNKNOWN_USER = "unknown_user"
    NO_USER_NAME = "no_user_name"
    LOOKUP_FAILED = "lookup_failed"


NO_SUBSCRIBER: Final = 0


@dataclass(frozen=True, slots=True)
class AcctRecord:
    """One Accounting-Request as it is stored. Personal fields are sealed by the store.

    Counters are 64-bit (gigawords folded in). ``event_time`` is Event-Timestamp
    when the NAS sent one, else arrival minus Acct-Delay-Time. ``content_digest``
    is SHA-256 over every attribute except Acct-Delay-Time, Proxy-State and
    Message-Authenticator: equal for a packet and its retransmissions.
    """

    received_at: datetime
    nas_id: int
    status: int
    event_time: datetime
    content_digest: bytes = field(repr=False)
    nas_event_time: datetime | None = None
    delay_time: int = 0
    subscriber_id: int = NO_SUBSCRIBER
    attribution: Attribution = Attribution.NO_USER_NAME
    input_octets: int | None = None
    output_octets: int | None = None
    # True when the NAS sent Acct-Input/Output-Gigawords: the counters are
    # then full 64-bit values; without, a counter going down is a 32-bit wrap.
    gigawords: bool = False
    session_time: int | None = None
    terminate_cause: int | None = None
    nas_identifier: str | None = None
    nas_port: int | None = None
    nas_port_type: int | None = None
    acct_class: bytes | None = field(default=None, repr=False)
    # The server's Class cookie (aaa.cookie) when the NAS echoed it.
    cookie: bytes | None = field(default=None, repr=False)
    # Personal: never logged, encrypted before they leave the process.
    session_id: bytes | None = field(default=None, repr=False)
    user_name: bytes | None = field(default=None, repr=False)
    calling_station_id: bytes | None = field(default=None, repr=False)
    framed_ip: str | None = field(default=None, repr=False)
    # Framed-IPv6-Prefix, else Delegated-IPv6-Prefix, else Framed-IPv6-Address (as /128).
    framed_ipv6: str | None = field(default=None, repr=False)
    nas_ip: str | None = field(default=None, repr=False)
    # NAS-Port-Id can name a subscriber line (DSL circuit ids): personal.
    nas_port_id: bytes | None = field(default=None, repr=False)


class Recorded(StrEnum):
    """What a durable write did: stored a new row, found the same event already stored,
    or fsynced it to the local spool to be replayed into the database later."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    SPOOLED = "spooled"


class AcctOutcome(StrEnum):
    """Why an Accounting-Request ended the way it did; the slug is the log reason."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    SPOOLED = "spooled"
    NO_STATUS_TYPE = "no_status_type"
    NO_SESSION_ID = "no_session_id"
    MALFORMED_ATTRIBUTE = "malformed_attribute"
    COUNTER_OUT_OF_RANGE = "counter_out_of_range"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"


_RESPONSE = int(Code.ACCOUNTING_RESPONSE)

# RFC 2866 section 4.1: "Upon receipt of an Accounting-Request, the server
# MUST transmit an Accounting-Response reply if it successfully records the
# accounting packet, and MUST NOT transmit any reply if it fails to record the
# accounting packet." Only the durable outcomes are answered: committed, already
# committed, or fsynced to the local spool.
REPLY_CODES: Mapping[AcctOutcome, int | None] = MappingProxyType(
    {
        AcctOutcome.RECORDED: _RESPONSE,
        AcctOutcome.DUPLICATE: _RESPONSE,
        AcctOutcome.SPOOLED: _RESPONSE,
        AcctOutcome.NO_STATUS_TYPE: None,
        AcctOutcome.NO_SESSION_ID: None,
        AcctOutcome.MALFORMED_ATTRIBUTE: None,
        AcctOutcome.COUNTER_OUT_OF_RANGE: None,
        AcctOutcome.STORE_UNAVAILABLE: None,
        AcctOutcome.INTERNAL_ERROR: None,
    }
)


_RECORDED_OUTCOMES: Mapping[Recorded, AcctOutcome] = MappingProxyType(
    {
        Recorded.STORED: AcctOutcome.RECORDED,
        Recorded.DUPLICATE: AcctOutcome.DUPLICATE,
        Recorded.SPOOLED: AcctOutcome.SPOOLED,
    }
)


class _Malformed(Exception):
    def __init__(self, outcome: AcctOutcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


def _u32(packet: Packet, type_: int) -> int | None:
    value = packet.get(type_)
    if value is None:
        return None
    if len(value) != 4:
        raise _Malformed(AcctOutcome.MALFORMED_ATTRIBUTE)
    return int.from_bytes(value, "big")


def _counter(packet: Packet, octets_type: int, gigawords_type: int) -> int | None:
    """A 64-bit counter from its low 32 bits and gigawords.

    RFC 2869 section 5.1: Acct-Input-Gigawords "indicates how many times the
    Acct-Input-Octets counter has wrapped around 2^32" (5.2 likewise for output).
    """
    octets = _u32(packet, octets_type)
    gigawords = _u32(packet, gigawords_type)
    if octets is None and gigawords is None:
        return None
    total = ((gigawords or 0) << 32) | (octets or 0)
    if total > _MAX_BIGINT:
        raise _Malformed(AcctOutcome.COUNTER_OUT_OF_RANGE)
    return total


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace").replace("\x00", "\ufffd")


def _nas_ip(packet: Packet) -> str | None:
    v4 = packet.get(NAS_IP_ADDRESS)
    if v4 is not None:
        if len(v4) != 4:
            raise _Malformed(AcctOutcome.MALFORMED_ATTRIBUTE)
        return str(ipaddress.IPv4Address(v4))
    v6 = packet.get(NAS_IPV6_ADDRESS)
    if v6 is not None:
        if len(v6) != 16:
            raise _Malformed(AcctOutcome.MALFORMED_ATTRIBUTE)
        return str(ipaddress.IPv6Address(v6))
    return None


def _framed_ip(packet: Packet) -> str | None:
    value = packet.get(FRAMED_IP_ADDRESS)
    if value is None:
        return None
    if len(value) != 4:
        raise _Malformed(AcctOutcome.MALFORMED_ATTRIBUTE)
    return str(ipaddress.IPv4Address(value))


def _ipv6_prefix(value: bytes) -> str:
    # RFC 3162 section 2.3: Reserved (1), Prefix-Length (1), Prefix (0-16).
    if len(value) < 2 or len(value) > 18 or value[1] > 128 or (value[1] + 7) // 8 > len(value) - 2:
        raise _Malformed(AcctOutcome.MALFORMED_ATTRIBUTE)
    raw = value[2:].ljust(16, b"\x00")
    return str(ipaddress.IPv6Network((raw, value[1]), strict=False))


def _framed_ipv6(packet: Packet) -> str | None:
    for type_ in (FRAMED_IPV6_PREFIX, DELEGATED_IPV6_PREFIX):
        value = packet.get(type_)
        if value is not None:
            return _ipv6_prefix(value)
    address = packet.get(FRAMED_IPV6_ADDRESS)
    if address is None:
        return None
    if len(address) != 16:
        raise _Malformed(AcctOutcome.MALFORMED_ATTRIBUTE)
    return f"{ipaddress.IPv6Address(address)}/128"


def content_digest(packet: Packet) -> bytes:
    """SHA-256 over the attributes that say what happened, in packet order.

    Not a secret and never stored: the store keys it (HMAC) before it reaches
    the database, since the content includes personal values.
    """
    h = hashlib.sha256()
    for type_, value in packet.attributes:
        if type_ not in _NOT_CONTENT:
            h.update(bytes((type_, len(value))))
            h.update(value)
    return h.digest()


def _at(seconds: float) -> datetime:
    # timedelta arithmetic instead of fromtimestamp: no platform range limits.
    return _EPOCH + timedelta(seconds=seconds)


def decode_accounting(request: Request, *, now: float) -> AcctRecord | AcctOutcome:
    """The record an Accounting-Request carries, or why it cannot be recorded.

    ``now`` is the wall-clock arrival time (seconds since the epoch). The
    subscriber is not looked up here: the record comes back unattributed.
    """
    packet = request.packet
    try:
        status = _u32(packet, ACCT_STATUS_TYPE)
        if status is None:
            return AcctOutcome.NO_STATUS_TYPE
        session_id = packet.get(ACCT_SESSION_ID) or None
        if session_id is None and status not in _NO_SESSION_NEEDED:
            return AcctOutcome.NO_SESSION_ID
        delay = _u32(packet, ACCT_DELAY_TIME) or 0
        timestamp = _u32(packet, EVENT_TIMESTAMP)
        nas_event_time = None if timestamp is None else _at(timestamp)
        # RFC 2866 section 5.2: Acct-Delay-Time "can be subtracted from the
        # time of arrival on the server to find the approximate time of the
        # event generating this Accounting-Request".
        event_time = nas_event_time if nas_event_time is not None else _at(now - delay)
        user_name = packet.get(USER_NAME) or None
        return AcctRecord(
            received_at=_at(now),
            nas_id=request.nas.id,
            status=status,
            event_time=event_time,
            content_digest=content_digest(packet),
            nas_event_time=nas_event_time,
            delay_time=delay,
            attribution=Attribution.NO_USER_NAME if user_name is None else Attribution.UNKNOWN_USER,
            input_octets=_counter(packet, ACCT_INPUT_OCTETS, ACCT_INPUT_GIGAWORDS),
            output_octets=_counter(packet, ACCT_OUTPUT_OCTETS, ACCT_OUTPUT_GIGAWORDS),
            gigawords=packet.get(ACCT_INPUT_GIGAWORDS) is not None
            or packet.get(ACCT_OUTPUT_GIGAWORDS) is not None,
            session_time=_u32(packet, ACCT_SESSION_TIME),
            terminate_cause=_u32(packet, ACCT_TERMINATE_CAUSE),
            nas_identifier=_text(packet.get(NAS_IDENTIFIER)),
            nas_port=_u32(packet, NAS_PORT),
            nas_port_type=_u32(packet, NAS_PORT_TYPE),
            acct_class=packet.get(CLASS),
            cookie=find_cookie(packet.get_all(CLASS)),
            session_id=session_id,
            user_name=user_name,
            calling_station_id=packet.get(CALLING_STATION_ID) or None,
            framed_ip=_framed_ip(packet),
            framed_ipv6=_framed_ipv6(packet),
            nas_ip=_nas_ip(packet),
            nas_port_id=packet.get(NAS_PORT_ID) or None,
        )
    except _Malformed as exc:
        return exc.outcome


class AccountingHandler:
    """Answers Accounting-Requests once they are durable; implements the server's ``Handler``.

    A storage failure, a malformed request or a bug means no reply, so the
    NAS retransmits (or fails over); it never means a reply for a record that
    is not stored. ``counts`` holds how many requests ended with each outcome.
    """

    def __init__(
        self,
        *,
        recorder: AccountingRecorder,
        directory: SubscriberDirectory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._recorder = recorder
        self._directory = directory
        self._clock = clock
        self.counts: Counter[AcctOutcome] = Counter()

    async def handle(self, request: Request) -> Reply:
        """Decode, attribute and durably record ``request``; reply only if it is stored."""
        now = self._clock()
        user_name: str | None = None
        try:
            decoded = decode_accounting(request, now=now)
            if isinstance(decoded, AcctOutcome):
                outcome = decoded
            else:
                if decoded.user_name is not None:
                    user_name = decoded.user_name.decode("utf-8", "replace")
                outcome = await self._record(await self._attribute(decoded, user_name))
        except Exception as exc:  # a bug must not become a reply or a crash
            _log.error("accounting_internal_error", error=type(exc).__name__)
            outcome = AcctOutcome.INTERNAL_ERROR
        self.counts[outcome] += 1
        return Reply(REPLY_CODES[outcome], b"", reason=outcome.value, user_name=user_name)

    async def _attribute(self, record: AcctRecord, user_name: str | None) -> AcctRecord:
        if user_name is None:
            return record
        try:
            subscriber = await self._directory.by_user_name(user_name)
        except Exception as exc:
            # Stored under subscriber 0 with the user name sealed under the
            # epoch key, so it can be attributed later: a failed lookup must
            # not lose accounting, and the write below decides the reply.
            if not isinstance(exc, StoreUnavailable):
                _log.error("accounting_lookup_error", error=type(exc).__name__)
            return replace(record, attribution=Attribution.LOOKUP_FAILED)
        if subscriber is None:
            return record
        return replace(record, subscriber_id=subscriber.id, attribution=Attribution.SUBSCRIBER)

    async def _record(self, record: AcctRecord) -> AcctOutcome:
        try:
            result = await self._recorder.record(record)
        except StoreUnavailable:
            return AcctOutcome.STORE_UNAVAILABLE
        return _RECORDED_OUTCOMES[result]
