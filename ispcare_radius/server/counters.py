"""In-process server counters (drops by reason, requests and replies by code, per NAS).

Imports only protocol.codes. Labels are reason slugs, code names and NAS
names: never a user name, address or secret.
"""

from __future__ import annotations

from collections import defaultdict

from ispcare_radius.protocol.codes import Code, DropReason


def _code_name(code: int) -> str:
    try:
        return Code(code).name.lower()
    except ValueError:
        return f"code_{code}"


class Counters:
    """Monotonic counters, cheap to bump from the datagram path.

    ``snapshot`` flattens them into ``{"name": value}`` with names such as
    ``drops.unknown_client``, ``requests.access_request``,
    ``replies.access_accept``, ``nas.<name>.requests``.
    """

    __slots__ = (
        "drops",
        "duplicate_answered",
        "ma_missing_observed",
        "nas_drops",
        "nas_replies",
        "nas_requests",
        "rejects_delayed",
        "replies",
        "requests",
    )

    def __init__(self) -> None:
        self.drops: defaultdict[DropReason, int] = defaultdict(int)
        self.requests: defaultdict[int, int] = defaultdict(int)
        self.replies: defaultdict[int, int] = defaultdict(int)
        self.duplicate_answered = 0
        self.ma_missing_observed = 0
        # Access-Rejects held back for ``reject_delay`` before being sent.
        self.rejects_delayed = 0
        self.nas_requests: defaultdict[str, int] = defaultdict(int)
        self.nas_replies: defaultdict[str, int] = defaultdict(int)
        self.nas_drops: defaultdict[str, int] = defaultdict(int)

    def drop(self, reason: DropReason, nas_name: str | None = None) -> None:
        """Count one dropped datagram; ``nas_name`` when the sender is known."""
        self.drops[reason] += 1
        if nas_name is not None:
            self.nas_drops[nas_name] += 1

    def request(self, code: int, nas_name: str) -> None:
        """Count one well-formed request from a known NAS."""
        self.requests[code] += 1
        self.nas_requests[nas_name] += 1

    def reply(self, code: int, nas_name: str) -> None:
        """Count one reply sent (fresh or resent from the reply cache)."""
        self.replies[code] += 1
        self.nas_replies[nas_name] += 1

    def get_drop(self, reason: DropReason) -> int:
        """How many datagrams were dropped for ``reason``."""
        return self.drops.get(reason, 0)

    def snapshot(self) -> dict[str, int]:
        """All counters as flat names -> values; every drop reason is present."""
        out: dict[str, int] = {f"drops.{r.value}": self.drops.get(r, 0) for r in DropReason}
        for code, n in self.requests.items():
            out[f"requests.{_code_name(code)}"] = n
        for code, n in self.replies.items():
            out[f"replies.{_code_name(code)}"] = n
        out["duplicate_answered"] = self.duplicate_answered
        out["ma_missing_observed"] = self.ma_missing_observed
        out["rejects_delayed"] = self.rejects_delayed
        for name, n in self.nas_requests.items():
            out[f"nas.{name}.requests"] = n
        for name, n in self.nas_replies.items():
            out[f"nas.{name}.replies"] = n
        for name, n in self.nas_drops.items():
            out[f"nas.{name}.drops"] = n
        return out

    def __repr__(self) -> str:
        return f"Counters(drops={sum(self.drops.values())}, requests={sum(self.requests.values())})"
