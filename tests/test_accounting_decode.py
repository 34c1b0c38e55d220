"""Decoding an Accounting-Request into a record, and the fail-closed reply table (no I/O)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest

from ispcare_radius.aaa.accounting import (
    REPLY_CODES,
    AcctOutcome,
    AcctRecord,
    AcctStatus,
    Attribution,
    decode_accounting,
)
from ispcare_radius.aaa.model import Nas
from ispcare_radius.aaa.request import Request
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.authenticator import build_request
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import encode_attributes, parse

SECRET = b"dec-secret-77"
NAS = Nas(7, "dec-nas", ipaddress.ip_network("192.0.2.0/24"), Secret(SECRET))
NOW = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def request(attrs: list[tuple[int, bytes]], ident: int = 1) -> Request:
    data = build_request(
        int(Code.ACCOUNTING_REQUEST),
        ident,
        encode_attributes(attrs),
        SECRET,
        message_authenticator=False,
    )
    return Request(parse(data), NAS, ("192.0.2.1", 3000), 0.0, None)


def interim(*, delay: int = 0, in_octets: int = 100, proxy: bytes | None = None) -> Request:
    attrs = [
        (40, u32(AcctStatus.INTERIM_UPDATE)),
        (44, b"sess-0001"),
        (1, b"dec-user"),
        (4, bytes((198, 51, 100, 7))),
        (31, b"02-00-00-00-00-01"),
        (8, bytes((100, 64, 0, 9))),
        (42, u32(in_octets)),
        (52, u32(2)),
        (43, u32(0xFFFFFFFF)),
        (53, u32(0)),
        (46, u32(600)),
        (41, u32(delay)),
        (25, b"cookie"),
        (32, b"bras\x00one"),
    ]
    if proxy is not None:
        attrs.append((33, proxy))
    return request(attrs)


def decoded(req: Request) -> AcctRecord:
    result = decode_accounting(req, now=NOW)
    assert isinstance(result, AcctRecord), result
    return result


def test_gigawords_fold_into_64_bit_counters() -> None:
    """Octets plus gigawords * 2^32 give each direction's 64-bit counter."""
    record = decoded(interim(in_octets=5))
    assert record.input_octets == 2 * 2**32 + 5
    assert record.output_octets == 2**32 - 1
    assert record.session_time == 600
    assert record.status == AcctStatus.INTERIM_UPDATE


def test_personal_fields_are_decoded_and_not_in_the_repr() -> None:
    """Session id, user name, MAC and IPs are read, and repr shows none of them."""
    record = decoded(interim())
    assert (record.session_id, record.user_name) == (b"sess-0001", b"dec-user")
    assert (record.framed_ip, record.nas_ip) == ("100.64.0.9", "198.51.100.7")
    assert record.calling_station_id == b"02-00-00-00-00-01"
    assert record.nas_identifier == "bras\ufffdone"
    assert record.attribution is Attribution.UNKNOWN_USER and record.subscriber_id == 0
    text = repr(record)
    for value in ("sess-0001", "dec-user", "100.64.0.9", "198.51.100.7", "02-00", "cookie"):
        assert value not in text


def test_retransmission_has_the_same_content_digest() -> None:
    """A new identifier, a later Acct-Delay-Time and Proxy-State leave the digest unchanged."""
    first = decoded(interim(delay=0))
    again = decode_accounting(
        Request(
            parse(
                build_request(
                    int(Code.ACCOUNTING_REQUEST),
                    99,
                    encode_attributes([(t, v) for t, v in interim(delay=7).packet.attributes]),
                    SECRET,
                    message_authenticator=True,
                )
            ),
            NAS,
            ("192.0.2.1", 3001),
            0.0,
            True,
        ),
        now=NOW + 7,
    )
    assert isinstance(again, AcctRecord)
    assert again.content_digest == first.content_digest
    assert decoded(interim(proxy=b"px")).content_digest == first.content_digest
    assert again.event_time == first.event_time
    assert decoded(interim(in_octets=101)).content_digest != first.content_digest


def test_event_time_is_the_timestamp_else_arrival_minus_delay() -> None:
    """Event-Timestamp wins; without it the event time is arrival minus Acct-Delay-Time."""
    record = decoded(interim(delay=30))
    assert record.event_time.timestamp() == NOW - 30
    assert record.nas_event_time is None and record.delay_time == 30
    stamped = decoded(
        request([(40, u32(AcctStatus.START)), (44, b"s"), (55, u32(1_900_000_000)), (41, u32(9))])
    )
    assert stamped.event_time == datetime.fromtimestamp(1_900_000_000, UTC)
    assert stamped.nas_event_time == stamped.event_time
    assert stamped.received_at.timestamp() == NOW


def test_accounting_on_needs_no_session_id_or_user() -> None:
    """Accounting-On without Acct-Session-Id or User-Name is a record about the NAS."""
    record = decoded(request([(40, u32(AcctStatus.ACCOUNTING_ON)), (4, bytes((10, 0, 0, 1)))]))
    assert record.session_id is None and record.user_name is None
    assert record.attribution is Attribution.NO_USER_NAME
    assert record.nas_id == NAS.id


@pytest.mark.parametrize(
    ("attrs", "outcome"),
    [
        ([(44, b"s"), (1, b"u")], AcctOutcome.NO_STATUS_TYPE),
        ([(40, u32(AcctStatus.START)), (1, b"u")], AcctOutcome.NO_SESSION_ID),
        ([(40, u32(AcctStatus.STOP)), (44, b""), (1, b"u")], AcctOutcome.NO_SESSION_ID),
        ([(40, b"\x00\x01"), (44, b"s")], AcctOutcome.MALFORMED_ATTRIBUTE),
        ([(40, u32(2)), (44, b"s"), (42, b"\x00" * 5)], AcctOutcome.MALFORMED_ATTRIBUTE),
        ([(40, u32(2)), (44, b"s"), (8, b"\x01\x02\x03")], AcctOutcome.MALFORMED_ATTRIBUTE),
        ([(40, u32(2)), (44, b"s"), (95, b"\x00" * 15)], AcctOutcome.MALFORMED_ATTRIBUTE),
        ([(40, u32(2)), (44, b"s"), (53, u32(2**31))], AcctOutcome.COUNTER_OUT_OF_RANGE),
    ],
)
def test_unrecordable_requests_give_their_reason(
    attrs: list[tuple[int, bytes]], outcome: AcctOutcome
) -> None:
    """A request missing what it must carry, or with a bad value, decodes to its reason."""
    assert decode_accounting(request(attrs), now=NOW) is outcome


def test_largest_storable_counter_is_accepted() -> None:
    """Gigawords 2^31 - 1 with all octets set is the largest bigint and is kept."""
    record = decoded(
        request([(40, u32(2)), (44, b"s"), (52, u32(2**31 - 1)), (42, u32(2**32 - 1))])
    )
    assert record.input_octets == 2**63 - 1


def test_every_outcome_has_a_reply_code_and_only_durable_ones_answer() -> None:
    """The reply table covers every outcome; only recorded, duplicate and spooled get a response."""
    assert set(REPLY_CODES) == set(AcctOutcome)
    answered = {o for o, code in REPLY_CODES.items() if code is not None}
    assert answered == {AcctOutcome.RECORDED, AcctOutcome.DUPLICATE, AcctOutcome.SPOOLED}
    assert {REPLY_CODES[o] for o in answered} == {Code.ACCOUNTING_RESPONSE}
