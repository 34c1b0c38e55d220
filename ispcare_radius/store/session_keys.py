"""Blind session keys and the associated data of sealed session fields.

One place, so the Access-Accept side (reservations for Simultaneous-Use) and
the accounting side (sessions_active / sessions_closed) derive the same key
from the same Class cookie. Pure apart from the keyed HMAC.
"""

from __future__ import annotations

import uuid
from typing import Final

from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.privacy.crypto import field_aad

RECORDS: Final = "acct_records"
_DOMAIN: Final = b"ispcare-radius/session/v1\x00"
_ACCT_SESSION_DOMAIN: Final = b"ispcare-radius/acct-session/v1\x00"


def session_blind(index: BlindIndex, nas_id: int, session_id: bytes) -> bytes:
    """Blind index of an Acct-Session-Id, which is unique only per NAS."""
    return index.full(_ACCT_SESSION_DOMAIN + nas_id.to_bytes(8, "big") + session_id)


def cookie_session_key(index: BlindIndex, cookie: bytes) -> bytes:
    """The session key of a Class cookie (unique server-wide: no NAS in it)."""
    return index.full(_DOMAIN + b"C" + cookie)


def _part(value: bytes | None) -> bytes:
    # Length-prefixed, with absent distinct from empty.
    if value is None:
        return b"\xff\xff"
    return len(value).to_bytes(2, "big") + value


def tuple_session_key(
    index: BlindIndex,
    nas_id: int,
    session_id: bytes,
    nas_port: int | None,
    nas_port_id: bytes | None,
    user_name: bytes | None,
) -> bytes:
    """The session key when no cookie came back: (NAS, Acct-Session-Id, port, User-Name)."""
    port = None if nas_port is None else nas_port.to_bytes(4, "big")
    return index.full(
        _DOMAIN
        + b"T"
        + nas_id.to_bytes(8, "big")
        + _part(session_id)
        + _part(port)
        + _part(nas_port_id)
        + _part(user_name)
    )


def port_blind(
    index: BlindIndex, nas_id: int, nas_port: int | None, nas_port_id: bytes | None
) -> bytes | None:
    """Blind index of a NAS port (NAS-Port and/or NAS-Port-Id), None when neither was sent."""
    if nas_port is None and nas_port_id is None:
        return None
    port = None if nas_port is None else nas_port.to_bytes(4, "big")
    return index.full(_DOMAIN + b"P" + nas_id.to_bytes(8, "big") + _part(port) + _part(nas_port_id))


def ip_blind(index: BlindIndex, address: str) -> bytes:
    """Blind index of a framed IPv4 address or IPv6 prefix, in canonical text form."""
    return index.full(_DOMAIN + b"I" + address.encode("ascii"))


def session_aad(column: str, row_id: uuid.UUID, subscriber_id: int) -> bytes:
    """Associated data of a sealed session field (``column`` without ``_enc``).

    A session's id is the id of the accounting record that created it and its
    sealed columns are that record's ciphertexts, so this is the record's
    associated data: bound to that row and subscriber, whichever table
    (sessions_active, sessions_closed) holds the copy.
    """
    return field_aad(RECORDS, column, str(row_id), subscriber_id)
