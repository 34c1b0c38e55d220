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
    entries live until ``complete`` (the server always calls it) or until the
    bound evicts them.  When full, the oldest entry is evicted first.
    """

    __slots__ = ("_entries", "evicted", "max_entries", "ttl")

    def __init__(self, *, ttl: float = 30.0, max_entries: int = 100_000) -> None:
        if ttl <= 0:
            raise ValueError("reply cache ttl must be > 0")
        if max_entries < 1:
            raise ValueError("reply cache max_entries must be >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.evicted = 0
        # key -> (reply, expiry); reply None means in progress (expiry unused).
        # Ordered by last state change: begin appends, complete moves to the end,
        # so answered entries at the front are the first to expire.
        self._entries: OrderedDict[CacheKey, tuple[bytes | None, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ReplyCache(entries={len(self._entries)}, ttl={self.ttl})"

    def begin(self, key: CacheKey, now: float) -> Hit:
        """Look ``key`` up and, when it is new, mark it in progress."""
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:
            reply, expires = entry
            if reply is None:
                return IN_PROGRESS
            if expires > now:
                return Hit(HitKind.ANSWERED, reply)
            # Expired: a fresh request that happens to repeat the key.
            del entries[key]
        self._purge(now)
        if len(entries) >= self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1
        entries[key] = (None, 0.0)
        return NEW

    def complete(self, key: CacheKey, reply: bytes | None, now: float) -> None:
        """Record the outcome of ``key``: its reply bytes, or None for no reply.

        No reply forgets the key, so the NAS's retransmission is processed
        again (a failed accounting write must be retried, not ignored).
        A key evicted meanwhile is not re-added.
        """
        entries = self._entries
        if key not in entries:
            return
        if reply is None:
            del entries[key]
            return
        entries[key] = (reply, now + self.ttl)
        entries.move_to_end(key)

    def forget(self, key: CacheKey) -> None:
        """Drop ``key`` whatever its state (the request was discarded)."""
        self._entries.pop(key, None)

    def _purge(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (reply, expires) = next(iter(entries.items()))
            if reply is None or expires > now:
                # An in-progress entry at the front stops the sweep; the bound
                # still holds, and expired entries behind it are checked on hit.
                return
            del entries[key]

    def purge(self, now: float) -> int:
        """Remove expired answered entries from the front; returns how many went."""
        before = len(self._entries)
        self._purge(now)
        return before - len(self._entries)
