"""The request the server hands to an AAA handler, and the reply it gets back.

Lives in ``aaa`` so that both ``server`` (above) and the pipeline can name it.
Imports protocol and the aaa model only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, final

from ispcare_radius.aaa.model import Nas
from ispcare_radius.protocol.packet import Packet


@dataclass(frozen=True, slots=True)
class Request:
    """A structurally valid, authenticated request from a known NAS."""

    packet: Packet
    nas: Nas
    source: tuple[str, int] = field(repr=False)
    received_at: float
    # None: no Message-Authenticator; True: present and valid.
    message_authenticator: bool | None


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer. ``code`` None means send nothing (the NAS will retry).

    ``attributes`` are encoded, without Message-Authenticator and Proxy-State,
    which the server adds. ``reason`` and ``user_name`` are for the request log
    line only (the user name is pseudonymised by the log pipeline).
    """

    code: int | None
    attributes: bytes = b""
    reason: str = ""
    user_name: str | None = field(default=None, repr=False)


@final
class NotReady:
    """Marker a synchronous fast path returns to ask for the asynchronous one."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_READY"


NOT_READY: Final = NotReady()
