"""Packet codes, drop reasons and the decode error; imports nothing but the stdlib enum."""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["CODE_NAMES", "Code", "DecodeError", "DropReason"]


class Code(IntEnum):
    """RADIUS packet codes (RFC 2865 section 3, RFC 2866, RFC 5176, RFC 5997)."""

    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12
    STATUS_CLIENT = 13
    DISCONNECT_REQUEST = 40
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


# Wire names as RFCs and FreeRADIUS print them, for log lines.
CODE_NAMES: dict[int, str] = {
    c.value: "-".join(w.capitalize() for w in c.name.split("_")).replace("Coa", "CoA") for c in Code
}


class DropReason(StrEnum):
    """Why a datagram was dropped; the value is a stable slug for metrics and logs."""

    TOO_SHORT = "too_short"
    BAD_LENGTH = "bad_length"
    TRUNCATED = "truncated"
    UNKNOWN_CODE = "unknown_code"
    ATTRIBUTE_TOO_SHORT = "attribute_too_short"
    ATTRIBUTE_OVERRUN = "attribute_overrun"
    TOO_MANY_ATTRIBUTES = "too_many_attributes"
    MALFORMED_ATTRIBUTE = "malformed_attribute"
    UNKNOWN_CLIENT = "unknown_client"
    UNEXPECTED_CODE = "unexpected_code"
    BAD_AUTHENTICATOR = "bad_authenticator"
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    DUPLICATE_IN_PROGRESS = "duplicate_in_progress"
    HANDLER_ERROR = "handler_error"
    OVERLOADED = "overloaded"


class DecodeError(Exception):
    """The peer sent bytes we cannot use; ``reason`` says why.

    The message never carries packet content, so it is safe to log.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason.value)
        self.reason = reason

    def __reduce__(self) -> tuple[type[DecodeError], tuple[DropReason]]:
        return (DecodeError, (self.reason,))
