"""The port the AAA pipeline implements for the server; imports aaa.request only.

``Request`` and ``Reply`` are defined in ``aaa.request`` so that the pipeline,
which sits below the server, can name them; they are re-exported here so the
server's callers find the whole port in one place.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ispcare_radius.aaa.request import NOT_READY, NotReady, Reply, Request

__all__ = ["NOT_READY", "FastHandler", "Handler", "NotReady", "Reply", "Request"]


class Handler(Protocol):
    """Answers one authenticated request from a known NAS.

    Return a ``Reply`` (with ``code`` None, or None itself, to send nothing: the
    NAS will retransmit).  An exception means no reply too; the server counts
    it as ``handler_error``.
    """

    async def handle(self, request: Request) -> Reply | None:
        """The reply to ``request``, or None for no reply."""
        ...


@runtime_checkable
class FastHandler(Protocol):
    """Optional synchronous fast path, tried before ``Handler.handle``.

    A handler that can often answer from memory (cached subscriber, accounting
    spool append) implements ``try_handle_now`` to save the cost of a task per
    request; it returns ``NOT_READY`` when it would have to wait.
    """

    def try_handle_now(self, request: Request) -> Reply | NotReady | None:
        """The reply now, None for no reply, or ``NOT_READY`` to go async."""
        ...
