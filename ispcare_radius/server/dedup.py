"""The reply cache for duplicate requests; sans-IO (time passed in), imports nothing of ours.

RFC 5080 section 2.2.2 keys duplicate detection on the source IP address and
port, the Code, the Identifier and the Request Authenticator: a NAS
retransmission repeats all five, while a new request changes at least the
authenticator.  A retransmission of a request still being processed is
dropped (the first copy will be answered); one of an answered request gets
the same reply bytes again, so the handler never runs twice for one request.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class CacheKey(NamedTuple):
    """The RFC 5080 section 2.2.2 duplicate-detection key."""

    source_ip: str
    source_port: int
    code: int
    identifier: int
    authenticator: bytes

    def __repr__(self) -> str:
        # The source address is personal for some NAS types; keep it out of reprs.
        return f"CacheKey(code={self.code}, identifier={self.identifier})"


class HitKind(StrEnum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    ANSWERED = "answered"


@dataclass(frozen=True, slots=True)
class Hit:
    """The outcome of ``ReplyCache.begin``; ``reply`` is set only for ANSWERED."""

    kind: HitKind
    reply: bytes | None = None


NEW = Hit(HitKind.NEW)
IN_PROGRESS = Hit(HitKind.IN_PROGRESS)


class ReplyCache:
    """Bounded map from ``CacheKey`` to in-progress or answered (reply bytes).

    Answered entries live ``ttl`` seconds after ``complete``; in-progress
    entries live until ``complete`` (the server always calls it) and are never
    evicted; when full, the oldest answered entry is evicted first.
    """

    __slots__ = ("_answered", "_in_progress", "evicted", "max_entries", "ttl")

    def __init__(self, *, ttl: float = 30.0, max_entries: int = 100_000) -> None:
        if ttl <= 0:
            raise ValueError("reply cache ttl must be > 0")
        if max_entries < 1:
            raise ValueError("reply cache max_entries must be >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.evicted = 0
        # Answered keys -> (reply, expiry), oldest answer first, so the front is
        # the first to expire and the first to be evicted. Keys being processed
        # live apart: they are bounded by the server's max_in_flight, never
        # evicted (evicting one would let a retransmission run the handler twice).
        self._answered: OrderedDict[CacheKey, tuple[bytes, float]] = OrderedDict()
        self._in_progress: set[CacheKey] = set()

    def __len__(self) -> int:
        return len(self._answered) + len(self._in_progress)

    def __repr__(self) -> str:
        return f"ReplyCache(entries={len(self)}, ttl={self.ttl})"

    def begin(self, key: CacheKey, now: float) -> Hit:
        """Look ``key`` up and, when it is new, mark it in progress."""
        if key in self._in_progress:
            return IN_PROGRESS
        answered = self._answered
        entry = answered.get(key)
        if entry is not None:
            reply, expires = entry
            if expires > now:
                return Hit(HitKind.ANSWERED, reply)
            # Expired: a fresh request that happens to repeat the key.
            del answered[key]
        self._in_progress.add(key)
        return NEW

    def complete(self, key: CacheKey, reply: bytes | None, now: float) -> None:
        """Record the outcome of ``key``: its reply bytes, or None for no reply.

        No reply forgets the key, so the NAS's retransmission is processed
        again (a failed accounting write must be retried, not ignored).
        A key that was not in progress (forgotten meanwhile) is not added.
        """
        if key not in self._in_progress:
            return
        self._in_progress.discard(key)
        if reply is None:
            return
        answered = self._answered
        self._purge(now)
        if len(answered) >= self.max_entries:
            answered.popitem(last=False)
            self.evicted += 1
        answered[key] = (reply, now + self.ttl)

    def forget(self, key: CacheKey) -> None:
        """Drop ``key`` whatever its state (the request was discarded)."""
        self._in_progress.discard(key)
        self._answered.pop(key, None)

    def _purge(self, now: float) -> None:
        answered = self._answered
        while answered:
            key, (_, expires) = next(iter(answered.items()))
            if expires > now:
                return
            del answered[key]

    def purge(self, now: float) -> int:
        """Remove expired answered entries from the front; returns how many went."""
        before = len(self._answered)
        self._purge(now)
        return before - len(self._answered)
