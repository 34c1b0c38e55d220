"""The storage ports the AAA pipeline depends on; ``store`` implements them.

Only ``typing.Protocol`` definitions, the one exception storage may raise, and
the values ports return (``Device`` of a MAC lookup, ``Admission`` of the
session limiter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol, final, runtime_checkable

from ispcare_radius.aaa.model import AuthEvent, Subscriber
from ispcare_radius.aaa.outcome import SimultaneousUsePolicy

if TYPE_CHECKING:  # the accounting values live with their handler, which imports this module
    from ispcare_radius.aaa.accounting import AcctRecord, Recorded


class StoreUnavailable(Exception):
    """Storage could not answer (connection lost, timeout, pool exhausted).

    Raised by port implementations; the pipeline maps it to the configured
    fail-closed outcome. The message must not hold personal values.
    """


class SubscriberDirectory(Protocol):
    async def by_user_name(self, user_name: str) -> Subscriber | None:
        """The subscriber whose user name is ``user_name`` (normalised by the
        store), or None. Raises StoreUnavailable when storage fails."""
        ...


@final
class Miss:
    """Marker: the answer is not in memory; ask the asynchronous lookup."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = Miss()


@runtime_checkable
class CachedDirectory(Protocol):
    """Optional: a directory that can answer from memory without waiting."""

    def peek(self, user_name: str) -> Subscriber | Miss | None:
        """The cached subscriber, None if known not to exist, or ``MISS``."""
        ...


class AuthEventSink(Protocol):
    def submit(self, event: AuthEvent) -> None:
        """Queue ``event`` to be written off the reply path; never blocks."""
        ...


class AccountingRecorder(Protocol):
    async def record(self, record: AcctRecord) -> Recorded:
        """Return once ``record`` is committed to durable storage (or found
        already stored: ``Recorded.DUPLICATE``). Raises StoreUnavailable when
        it is not durable; the caller must then not acknowledge it."""
        ...


# --- MAC authentication ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device and the subscriber it authorises, personal fields decrypted."""

    id: str
    subscriber: Subscriber
    mac: bytes = field(repr=False)  # 6 bytes, normalised
    raw: str = field(repr=False)  # as registered, kept for CoA towards the NAS


@runtime_checkable
class MacDirectory(Protocol):
    """Optional: a directory that also knows devices and the blocked-MAC list."""

    async def by_mac(self, mac: bytes) -> Device | None:
        """The device with this 6-byte MAC, or None. Raises StoreUnavailable."""
        ...

    async def is_blocked(self, mac: bytes) -> bool:
        """Whether this 6-byte MAC is on the blocked list. Raises StoreUnavailable."""
        ...


@runtime_checkable
class CachedMacDirectory(Protocol):
    """Optional: MAC answers from memory without waiting."""

    def peek_mac(self, mac: bytes) -> Device | Miss | None:
        """The cached device, None if known not to exist, or ``MISS``."""
        ...

    def peek_blocked(self, mac: bytes) -> bool | Miss:
        """Whether the MAC is blocked, from memory, or ``MISS``."""
        ...


# --- Simultaneous-Use --------------------------------------------------------


class Admission(StrEnum):
    """The session limiter's answer for one login."""

    ADMITTED = "admitted"  # below the limit; a slot is reserved
    # At the limit under ``disconnect_oldest``: older sessions were recorded
    # for disconnect and a slot is reserved for this login.
    DISPLACED = "displaced"
    REFUSED = "refused"  # at the limit; nothing was written


class SessionLimiter(Protocol):
    async def admit(
        self,
        *,
        subscriber_id: int,
        limit: int,
        cookie: bytes,
        nas_id: int,
        policy: SimultaneousUsePolicy,
        now: float,
        ttl: float,
    ) -> Admission:
        """Whether a login by ``subscriber_id`` may start with at most ``limit`` sessions.

        Counts the subscriber's active sessions and live reservations and,
        when admitted, reserves a slot keyed by the session key of ``cookie``
        (the Class cookie the Access-Accept will carry) until ``now + ttl`` or
        until its Accounting Start arrives. Atomic with respect to concurrent
        calls for the same subscriber from any process. Raises
        StoreUnavailable when storage fails; nothing is reserved then.
        """
        ...


# --- MAC binding on first login ------------------------------------------------


@runtime_checkable
class MacBinder(Protocol):
    """Optional: a directory that can bind a first-login subscriber's MAC lock."""

    async def bind_first_mac(self, subscriber_id: int, mac: bytes) -> bool:
        """Make the 6-byte ``mac`` the lock of a ``first_login`` subscriber that has none.

        One conditional write (only while no lock is set), so of two
        concurrent first logins from different MACs exactly one binds. True
        when the subscriber's lock is now ``mac`` (this call bound it, or a
        concurrent login bound the same MAC); False when it is another MAC,
        or ``mac`` is already another subscriber's lock. Raises
        StoreUnavailable when storage fails; nothing is bound then.
        """
        ...
