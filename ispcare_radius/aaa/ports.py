"""The storage ports the AAA pipeline depends on; ``store`` implements them.

Only ``typing.Protocol`` definitions, the one exception storage may raise, and
the ``Device`` value a MAC lookup returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol, final, runtime_checkable

from ispcare_radius.aaa.model import AuthEvent, Subscriber

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
