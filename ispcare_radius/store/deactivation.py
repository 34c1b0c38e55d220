"""Deactivation's rows: the time that starts the erasure grace, and disconnect requests.

Steps inside the caller's transaction (``SubscriberRepository.set`` and
``deactivate``): access ends at once, and every live session is asked to
end. Imports aaa.model and store.db; never server or cli.
"""

from __future__ import annotations

from typing import Any, Final

from ispcare_radius.aaa.model import SubscriberStatus
from ispcare_radius.store.db import Connection, rows_affected

# disconnect_requests.reason of sessions ended by a deactivation.
DEACTIVATED_REASON: Final = "deactivated"

# Every live session of the subscriber, and every login accepted moments ago
# whose Start has not arrived yet (its reservation key is the key its session
# will have, see store/limits.py): the provisioning side sends each a
# Disconnect-Request (RFC 5176 section 3). A session already asked to leave
# keeps its one pending request.
_DISCONNECT_ALL: Final = """
INSERT INTO disconnect_requests (subscriber_id, session_key, reason, requested_at)
SELECT $1, k.session_key, $2, now() FROM (
    SELECT session_key FROM sessions_active WHERE subscriber_id = $1
    UNION
    SELECT session_key FROM session_reservations WHERE subscriber_id = $1 AND expires_at > now()
) k
ON CONFLICT (session_key) WHERE handled_at IS NULL DO NOTHING
"""


async def request_disconnects(conn: Connection, subscriber_id: int) -> int:
    """Record a disconnect request (reason ``deactivated``) for each live session; the count."""
    status = await conn.execute(_DISCONNECT_ALL, subscriber_id, DEACTIVATED_REASON)
    return rows_affected(status)


async def deactivation_changes(
    conn: Connection, current: str, state: SubscriberStatus
) -> dict[str, Any]:
    """deactivated_at for a status change: set on deactivation, cleared on any other status.

    The erasure grace (store/lifecycle.py) counts from it; a subscriber
    already deactivated keeps the time of the first deactivation.
    """
    if state is SubscriberStatus.DEACTIVATED:
        if current == SubscriberStatus.DEACTIVATED.value:
            return {}
        return {"deactivated_at": await conn.fetchval("SELECT now()")}
    if current == SubscriberStatus.DEACTIVATED.value:
        return {"deactivated_at": None}
    return {}
