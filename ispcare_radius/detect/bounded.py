"""Bounded maps for the detector's state.

An LRU, and per-subject collections (LRUs, or second-chance maps for the
ones every accepted login updates) whose entries are counted against one
shared budget, so memory stays bounded under any load.
Plain containers: no keys, rules or I/O (detect/state.py uses them).

A second-chance map is a plain dict and a ``Turns`` queue in one flat
buffer: a login reorders nothing, and no subject costs a linked-list node
(an OrderedDict's, relinked on every ``move_to_end``).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, ItemsView, Iterator, Sized, ValuesView
from typing import Any, Generic, TypeVar

_K = TypeVar("_K")
_V = TypeVar("_V")


class Lru(OrderedDict[_K, _V]):
    """An ordered dict that forgets its least recently used entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def take(self, key: _K, make: Callable[[], _V]) -> _V:
        value = self.get(key)
        if value is None:
            value = self[key] = make()
            while len(self) > self.limit:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value


_L = TypeVar("_L", bound=Sized)


class Turns:
    """The order in which a map's subjects come up to be forgotten, each with a stamp.

    A FIFO of (key, stamp) pairs, keys all ``width`` bytes, in one bytearray
    (no object per entry, nothing for the garbage collector to walk). It
    grows by doubling and never shrinks: a map holds each subject in it once,
    so it stays as large as the map has ever been.
    """

    __slots__ = ("_buf", "_capacity", "_count", "_entry", "_head", "_width")

    def __init__(self, width: int) -> None:
        self._width = width
        self._entry = struct.Struct(f"<{width}sd")
        self._capacity = 64
        self._buf = bytearray(self._entry.size * self._capacity)
        self._head = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, key: bytes, stamp: float) -> None:
        """Queue ``key`` with ``stamp`` at the back."""
        if len(key) != self._width:
            raise ValueError(f"a key of {len(key)} bytes, not {self._width}")
        if self._count == self._capacity:
            self._grow()
        at = self._head + self._count
        if at >= self._capacity:
            at -= self._capacity
        self._entry.pack_into(self._buf, at * self._entry.size, key, stamp)
        self._count += 1

    def pop(self) -> tuple[bytes, float]:
        """The (key, stamp) at the front, taken off the queue."""
        if not self._count:
            raise IndexError("pop from empty Turns")
        key, stamp = self._entry.unpack_from(self._buf, self._head * self._entry.size)
        self._head += 1
        if self._head == self._capacity:
            self._head = 0
        self._count -= 1
        return key, stamp

    def _grow(self) -> None:
        start = self._head * self._entry.size
        buf = self._buf
        self._buf = buf[start:] + buf[:start] + bytearray(len(buf))
        self._head = 0
        self._capacity *= 2


class Budget:
    """The entries held across several ``Lists`` and ``Seen`` maps, and the cap on their sum."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries = 0
        self.maps: list[Lists[Any] | Seen] = []

    def grew(self, owner: Lists[Any] | Seen, grown: int) -> None:
        """Count ``grown`` more entries (fewer if negative) in ``owner``; settle if over."""
        if grown:
            owner.entries += grown
            self.entries += grown
            if self.entries > self.limit:
                self.settle()

    def settle(self) -> None:
        """Forget subjects of the fullest map, its oldest idle first, until under the cap.

        The fullest map is the one a flood fills: an attacker forging names
        or MACs evicts their own subjects first, not the accounts' failures.
        Only runs once the cap is reached; five maps to compare.
        """
        while self.entries > self.limit:
            max(self.maps, key=lambda m: m.entries).forget_oldest()


class Lists(OrderedDict[bytes, _L], Generic[_L]):
    """An LRU of per-subject lists that counts their entries against a shared budget.

    Callers change a list in place and report its length before and after
    (``resized``); forgetting a subject gives its entries back.
    """

    def __init__(self, limit: int, budget: Budget) -> None:
        super().__init__()
        self.limit = limit
        self.entries = 0
        self._budget = budget
        budget.maps.append(self)

    def open(self, key: bytes, make: Callable[[], _L]) -> _L:
        """The list of ``key`` (made empty if new), now the most recently used."""
        value = self.get(key)
        if value is None:
            value = self[key] = make()
            while len(self) > self.limit:
                self.forget_oldest()
        else:
            self.move_to_end(key)
        return value

    def forget_oldest(self) -> None:
        _, value = self.popitem(last=False)
        self.entries -= len(value)
        self._budget.entries -= len(value)

    def resized(self, before: int, after: int) -> None:
        """Account for a list that went from ``before`` to ``after`` entries."""
        self._budget.grew(self, after - before)


# A subject's keys as ``Seen.touch_from`` found them, and ``Seen.forgotten`` then.
Touched = tuple[dict[bytes, float], int]


class Seen:
    """Per subject, the keys seen with it inside a window: when each was last seen.

    Subjects and keys are ``width``-byte keys; entries (keys) count against
    the budget. Most logins see a subject again with the key it already
    holds (a MAC with its one account): that costs one lookup and one
    store, with no reordering. Recency is judged when a subject must be
    forgotten instead (second chance, as in the CLOCK page-replacement
    algorithm): the subject at the front of ``Turns`` goes, unless a key was
    seen with it since it was put there; then it goes to the back once, and
    the next is judged. The subject just recorded is never the one
    forgotten to make room for it. So the subject forgotten is one not seen
    for at least a whole turn of the map, every login costs O(1)
    amortised, and the map stays bounded.
    """

    __slots__ = ("_budget", "_keys", "_turns", "entries", "forgotten", "limit")

    def __init__(self, limit: int, budget: Budget, width: int = 8) -> None:
        self.limit = limit
        self.entries = 0
        self.forgotten = 0  # subjects forgotten so far: a subject's keys found since are current
        self._budget = budget
        self._keys: dict[bytes, dict[bytes, float]] = {}
        # Each subject once, stamped with the time of its newest key when queued.
        self._turns = Turns(width)
        budget.maps.append(self)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __contains__(self, subject: object) -> bool:
        return subject in self._keys

    def get(self, subject: bytes) -> dict[bytes, float] | None:
        return self._keys.get(subject)

    def values(self) -> ValuesView[dict[bytes, float]]:
        return self._keys.values()

    def items(self) -> ItemsView[bytes, dict[bytes, float]]:
        return self._keys.items()

    def forget_oldest(self, keep: bytes | None = None) -> None:
        """Forget the first subject not seen since it was queued, other than ``keep``."""
        keys = self._keys
        turns = self._turns
        while True:
            subject, queued = turns.pop()
            seen = keys[subject]
            newest = next(reversed(seen.values()))
            if newest > queued or subject == keep:  # one more turn
                turns.push(subject, newest)
                continue
            del keys[subject]
            self.forgotten += 1
            self._budget.grew(self, -len(seen))
            return

    def touch(
        self, subject: bytes, key: bytes, now: float, window: float, cap: int
    ) -> dict[bytes, float]:
        """Record ``key`` for ``subject`` at ``now``; the subject's keys.

        The keys are returned, not looked up again: settling the budget may
        forget this very subject, and its rule still judges this login.

        Keys last seen before the window, or beyond ``cap``, are dropped.
        ``cap`` is the rule's threshold plus one: a "more than N" rule fires
        with N + 1 keys inside the window, so keeping more would only cost
        memory. The oldest key goes first, so the newest N + 1 are always
        kept, and the last key of the dict is the newest (what
        ``forget_oldest`` judges). Each subject's keys are a plain dict
        (insertion ordered, cheaper to make than an OrderedDict): most only
        ever hold one.
        """
        keys = self._keys
        seen = keys.get(subject)
        if seen is None:
            seen = keys[subject] = {key: now}
            self._turns.push(subject, now)
            while len(keys) > self.limit:
                self.forget_oldest(subject)
            self._budget.grew(self, 1)
            return seen
        before = len(seen)
        if before == 1 and key in seen:
            seen[key] = now  # seen again, alone: nothing to prune (most calls)
            return seen
        seen.pop(key, None)
        seen[key] = now
        while seen and (next(iter(seen.values())) < now - window or len(seen) > cap):
            del seen[next(iter(seen))]
        self._budget.grew(self, len(seen) - before)
        return seen

    def touch_from(
        self,
        found: Touched | None,
        subject: bytes,
        key: bytes,
        now: float,
        window: float,
        cap: int,
    ) -> Touched:
        """``touch``, given what it returned for ``subject`` before (or None).

        While nothing has been forgotten since, those are still the
        subject's keys: seen again with its one key, the subject costs no
        lookup and ``found`` itself is returned. Otherwise the keys as
        ``touch`` gives them, to pass next time.
        """
        if found is not None:
            seen, at = found
            if at == self.forgotten and len(seen) == 1 and key in seen:
                seen[key] = now
                return found
        before = self.forgotten
        seen = self.touch(subject, key, now, window, cap)
        # Forgotten by this very touch (settling the budget), they cannot be reused.
        return seen, before if self.forgotten == before else -1
