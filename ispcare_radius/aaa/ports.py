"""The storage ports the AAA pipeline depends on; ``store`` implements them.

Only ``typing.Protocol`` definitions and the one exception storage may raise.
"""

from __future__ import annotations

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
