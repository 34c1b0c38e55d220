"""Bounded maps for the detector's state.

An LRU, and per-subject collections (LRUs, or second-chance maps for the
ones every accepted login updates) whose entries are counted against one
shared budget, so memory stays bounded under any load.
Plain containers: no keys, rules or I/O (detect/state.py uses them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sized
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


class Budget:
    """The entries held across several ``Lists`` maps, and the cap on their sum."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries = 0
        self.maps: list[Lists[Any]] = []

    def settle(self) -> None:
        """Forget least recently used subjects of the fullest map until under the cap.

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
        grown = after - before
        if grown:
            self.entries += grown
            budget = self._budget
            budget.entries += grown
            if budget.entries > budget.limit:
                budget.settle()


class Seen(Lists[dict[bytes, float]]):
    """Per subject, the keys seen with it inside a window: when each was last seen.

    Most logins see a subject again with the key it already holds (a MAC
    with its one account): that costs one lookup and one store, with no
    reordering. Recency is judged when a subject must be forgotten instead
    (second chance, as in the CLOCK page-replacement algorithm): the subject
    at the front goes, unless a key was seen with it since it was put
    there; then it goes to the back once, and the next is judged. The
    subject just recorded is never the one forgotten to make room for it.
    So the subject forgotten is one not seen for at least a whole turn of
    the map, every login costs O(1) amortised, and the map stays bounded.
    """

    def __init__(self, limit: int, budget: Budget) -> None:
        super().__init__(limit, budget)
        # When each subject was put at the back: the time of its newest key then.
        self._placed: dict[bytes, float] = {}

    def forget_oldest(self, keep: bytes | None = None) -> None:
        """Forget the first subject not seen since it was put at the back, other than ``keep``."""
        placed = self._placed
        while True:
            subject, seen = self.popitem(last=False)
            at = placed.pop(subject)
            newest = next(reversed(seen.values()))
            if newest > at or subject == keep:  # one more turn
                self[subject] = seen
                placed[subject] = newest
                continue
            self.entries -= len(seen)
            self._budget.entries -= len(seen)
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
        seen = self.get(subject)
        if seen is None:
            seen = self[subject] = {key: now}
            self._placed[subject] = now
            while len(self) > self.limit:
                self.forget_oldest(subject)
            self.resized(0, 1)
            return seen
        before = len(seen)
        if before == 1 and key in seen:
            seen[key] = now  # seen again, alone: nothing to prune (most calls)
            return seen
        seen.pop(key, None)
        seen[key] = now
        while seen and (next(iter(seen.values())) < now - window or len(seen) > cap):
            del seen[next(iter(seen))]
        after = len(seen)
        if after != before:
            self.resized(before, after)
        return seen
