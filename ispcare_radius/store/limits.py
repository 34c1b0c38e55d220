"""Simultaneous-Use in PostgreSQL: counts sessions, reserves slots, records displaced sessions.

Implements the ``SessionLimiter`` port (aaa/ports.py). A subscriber's slots
are the rows of ``sessions_active`` (filled by accounting) plus the live
``session_reservations`` of logins accepted whose Accounting Start has not
arrived yet. Race safety comes from a transaction-scoped advisory lock per
subscriber, so it holds across processes and hosts sharing the database.
Imports aaa, privacy and store only.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from ispcare_radius.aaa.outcome import SimultaneousUsePolicy
from ispcare_radius.aaa.ports import Admission
from ispcare_radius.privacy.blind import BlindIndex
from ispcare_radius.store.db import Pool, acquire
from ispcare_radius.store.session_keys import cookie_session_key

REASON = "simultaneous_use"
_LOCK_DOMAIN = b"ispcare-radius/simultaneous-use/v1\x00"

# Expired reservations go; what is left is counted in the same statement.
# A session with a pending disconnect request is on its way out and holds no
# slot; a reservation whose session is already active is counted once.
_COUNT = """
WITH expired AS (
    DELETE FROM session_reservations WHERE subscriber_id = $1 AND expires_at <= $2
)
SELECT
    (SELECT count(*) FROM sessions_active a
      WHERE a.subscriber_id = $1
        AND NOT EXISTS (SELECT 1 FROM disconnect_requests d
                         WHERE d.session_key = a.session_key AND d.handled_at IS NULL))
  + (SELECT count(*) FROM session_reservations r
      WHERE r.subscriber_id = $1 AND r.expires_at > $2
        AND NOT EXISTS (SELECT 1 FROM sessions_active a WHERE a.session_key = r.session_key))
"""

_RESERVE = """
INSERT INTO session_reservations (subscriber_id, session_key, nas_id, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5)
"""

_OLDEST = """
SELECT a.session_key FROM sessions_active a
 WHERE a.subscriber_id = $1
   AND NOT EXISTS (SELECT 1 FROM disconnect_requests d
                    WHERE d.session_key = a.session_key AND d.handled_at IS NULL)
 ORDER BY a.started_at, a.session_key
 LIMIT $2
"""

_DISCONNECT = """
INSERT INTO disconnect_requests (subscriber_id, session_key, reason, requested_at)
SELECT $1, key, $3, $4 FROM unnest($2::bytea[]) AS key
ON CONFLICT (session_key) WHERE handled_at IS NULL DO NOTHING
"""


def lock_key(subscriber_id: int) -> int:
    """The advisory lock key guarding one subscriber's Simultaneous-Use count.

    A signed 64-bit hash in a domain of its own: keys of other advisory locks
    (migrations, partitions) are unlikely to collide, and a collision would
    only make two callers wait for each other, never break the count.
    """
    digest = hashlib.blake2b(
        _LOCK_DOMAIN + subscriber_id.to_bytes(8, "big", signed=True), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class SessionLimits:
    """The ``SessionLimiter`` port on PostgreSQL; one instance per process."""

    def __init__(self, pool: Pool, blind_index: BlindIndex) -> None:
        self._pool = pool
        self._index = blind_index

    def __repr__(self) -> str:
        return "SessionLimits(***)"

    async def admit(
        self,
        *,
        subscriber_id: int,
        limit: int,
        cookie: bytes,
        nas_id: int,
        policy: SimultaneousUsePolicy,
        now: float,
        ttl: float,
    ) -> Admission:
        """See ``aaa.ports.SessionLimiter.admit``; one transaction under the subscriber's lock."""
        if limit < 1:
            raise ValueError("a Simultaneous-Use limit is at least 1")
        # The same key the accounting writer derives from the echoed Class,
        # so that the Start replaces this reservation.
        key = cookie_session_key(self._index, cookie)
        at = datetime.fromtimestamp(now, UTC)
        expires = datetime.fromtimestamp(now + ttl, UTC)
        async with acquire(self._pool) as conn, conn.transaction():
            # Held until commit: a concurrent login of this subscriber, in any
            # process, counts only after this one has reserved or refused.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(subscriber_id))
            used = int(await conn.fetchval(_COUNT, subscriber_id, at))
            admission = Admission.ADMITTED
            if used >= limit:
                if policy is not SimultaneousUsePolicy.DISCONNECT_OLDEST:
                    return Admission.REFUSED
                rows = await conn.fetch(_OLDEST, subscriber_id, used - limit + 1)
                if len(rows) < used - limit + 1:
                    # The slots are held by logins accepted moments ago whose
                    # sessions have not started: there is nothing to
                    # disconnect yet, so the limit holds by refusing.
                    return Admission.REFUSED
                victims = [bytes(r["session_key"]) for r in rows]
                await conn.execute(_DISCONNECT, subscriber_id, victims, REASON, at)
                admission = Admission.DISPLACED
            await conn.execute(_RESERVE, subscriber_id, key, nas_id, at, expires)
        return admission
