"""The authentication-method plug-in contract, the per-request ``Attempt``, wire helpers.

Imports protocol, the aaa model/request types, the outcome table, the
credential forms and the MS-CHAP primitives only; never storage, asyncio or
the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ispcare_radius.aaa.methods.credentials import stored_forms, unsupported_message
from ispcare_radius.aaa.methods.mscrypto import nt_password_hash
from ispcare_radius.aaa.outcome import Outcome
from ispcare_radius.protocol.packet import VENDOR_SPECIFIC, Packet, encode_attributes

if TYPE_CHECKING:
    from ispcare_radius.aaa.model import Subscriber
    from ispcare_radius.aaa.request import Request

MICROSOFT = 311
REPLY_MESSAGE = 18


class Method(Protocol):
    """One way a NAS proves the subscriber knows their password.

    ``claims`` looks only at which attributes are present; ``read`` parses and
    checks their shape before any lookup (so junk costs no database work);
    ``verify`` compares against the subscriber's stored password in constant
    time. The two reply hooks add method attributes to the Access-Accept or
    Access-Reject (MS-CHAP2-Success, MPPE keys, MS-CHAP-Error).
    """

    @property
    def name(self) -> str:
        """The name configuration refers to (``AuthSettings.methods``)."""
        ...

    def claims(self, packet: Packet) -> bool:
        """True if ``packet`` carries this method's credentials."""
        ...

    def read(self, attempt: Attempt) -> Outcome | None:
        """Parse the credentials into ``attempt.credentials``; an outcome if malformed."""
        ...

    def verify(self, attempt: Attempt) -> Outcome | None:
        """None if the credentials match ``attempt.subscriber``'s password, else an outcome."""
        ...

    def accept_attributes(self, attempt: Attempt) -> bytes:
        """Encoded attributes this method adds to an Access-Accept."""
        ...

    def reject_attributes(self, attempt: Attempt, outcome: Outcome) -> bytes:
        """Encoded attributes this method adds to an Access-Reject for ``outcome``."""
        ...


class Attempt:
    """The working state of one Access-Request as it goes through the steps.

    ``methods`` are the enabled methods; ``method`` is the one that claimed
    the request, ``credentials`` what it parsed, ``verified`` what ``verify``
    derived for the accept hook (e.g. the NT-Response and hash-hash).
    """

    __slots__ = (
        "credentials",
        "method",
        "methods",
        "password",
        "request",
        "slow_match",
        "subscriber",
        "user_name",
        "verified",
    )

    def __init__(self, request: Request, methods: tuple[Method, ...] | None = None) -> None:
        self.request = request
        if methods is None:
            from ispcare_radius.aaa.methods import enabled

            methods = enabled()
        self.methods: tuple[Method, ...] = methods
        self.user_name: str | None = None
        self.password: bytes | None = None  # PAP only: the unhidden User-Password
        self.subscriber: Subscriber | None = None
        self.method: Method | None = None
        self.credentials: object = None
        self.verified: object = None
        # PAP against a slow hash: the comparison's result when the pipeline
        # ran it off the event loop (None: not run yet).
        self.slow_match: bool | None = None


def stored_password(attempt: Attempt) -> bytes | None:
    """The subscriber's cleartext password, or None when none is stored."""
    sub = attempt.subscriber
    if sub is None or sub.password is None:
        return None
    return sub.password.reveal()


def stored_nt_hash(attempt: Attempt) -> bytes | None:
    """The NT hash of the stored password, else the stored NT hash, else None."""
    sub = attempt.subscriber
    if sub is None:
        return None
    password = stored_password(attempt)
    if password is not None:
        try:
            return nt_password_hash(password.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return None if sub.nt_hash is None else sub.nt_hash.reveal()


def credential_gap(method: str, attempt: Attempt) -> Outcome | None:
    """METHOD_UNSUPPORTED_BY_CREDENTIAL when the subscriber holds no form ``method`` can use."""
    sub = attempt.subscriber
    if sub is None or unsupported_message(method, stored_forms(sub)) is None:
        return None
    return Outcome.METHOD_UNSUPPORTED_BY_CREDENTIAL


def credential_reply(method: str, attempt: Attempt, outcome: Outcome) -> bytes:
    """A Reply-Message saying why ``method`` cannot work for this account, for that outcome.

    Empty for every other outcome: a wrong password is never explained.
    """
    sub = attempt.subscriber
    if outcome is not Outcome.METHOD_UNSUPPORTED_BY_CREDENTIAL or sub is None:
        return b""
    text = unsupported_message(method, stored_forms(sub))
    if text is None:
        return b""
    # RFC 2865 section 5.18: Reply-Message is text, one or more octets.
    return encode_attributes(((REPLY_MESSAGE, text.encode("utf-8")[:253]),))


def vsa(vendor: int, vtype: int, value: bytes) -> bytes:
    """One Vendor-Specific attribute in the RFC 2865 section 5.26 layout."""
    return encode_attributes(
        ((VENDOR_SPECIFIC, vendor.to_bytes(4) + bytes((vtype, len(value) + 2)) + value),)
    )
