"""Policy outcomes and the one table that turns them into reply codes.

Fails closed: an outcome with no entry cannot exist (a test walks the enum),
and storage failure maps to Access-Reject or no reply, by configuration.
Imports protocol codes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from ispcare_radius.protocol.codes import Code


class Outcome(StrEnum):
    """Why an Access-Request ended the way it did; the slug is the log reason."""

    ACCEPT = "accept"
    NO_USER_NAME = "no_user_name"
    MALFORMED_USER_NAME = "malformed_user_name"
    NO_CREDENTIALS = "no_credentials"
    UNSUPPORTED_METHOD = "unsupported_method"
    # The method cannot be verified against the credential form the account
    # holds (e.g. CHAP against an NT hash); the method's reject hook says why.
    METHOD_UNSUPPORTED_BY_CREDENTIAL = "method_unsupported_by_credential"
    MALFORMED_PASSWORD = "malformed_password"
    MALFORMED_CREDENTIALS = "malformed_credentials"
    CONFLICTING_CREDENTIALS = "conflicting_credentials"
    UNKNOWN_USER = "unknown_user"
    BAD_PASSWORD = "bad_password"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    DEACTIVATED = "deactivated"
    MAC_LOCK_MISMATCH = "mac_lock_mismatch"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"
    UNKNOWN_DEVICE = "unknown_device"
    MAC_BLOCKED = "mac_blocked"
    OUTSIDE_LOGIN_HOURS = "outside_login_hours"
    # The plan's Simultaneous-Use limit is reached (policy "reject").
    SIMULTANEOUS_USE = "simultaneous_use"
    # Accepted into the plan's walled garden instead of rejected.
    SUSPENDED_WALLED_GARDEN = "suspended_walled_garden"
    EXPIRED_WALLED_GARDEN = "expired_walled_garden"
    # Suspicious-login holds (detect/): a reject for the cool-down, or the
    # plan's walled garden instead of the normal service.
    FLAGGED_COOLDOWN = "flagged_cooldown"
    FLAGGED_WALLED_GARDEN = "flagged_walled_garden"


class StoreFailureAction(StrEnum):
    """What a storage failure becomes: a reject, or silence so the NAS retries."""

    REJECT = "reject"
    NO_REPLY = "no_reply"


class SimultaneousUsePolicy(StrEnum):
    """What a login beyond the plan's Simultaneous-Use limit gets.

    ``reject``: Access-Reject, the sessions already up stay. ``disconnect_oldest``:
    Access-Accept, and the oldest active session is recorded for a
    Disconnect-Request (RFC 5176), so the newest device wins.
    """

    REJECT = "reject"
    DISCONNECT_OLDEST = "disconnect_oldest"


_REJECT = int(Code.ACCESS_REJECT)

# Outcome -> reply code (None: no reply). STORE_UNAVAILABLE is filled in from
# configuration by ``reply_codes``; everything that is not an explicit accept
# is a reject.
_BASE_TABLE: Mapping[Outcome, int | None] = MappingProxyType(
    {
        Outcome.ACCEPT: int(Code.ACCESS_ACCEPT),
        Outcome.NO_USER_NAME: _REJECT,
        Outcome.MALFORMED_USER_NAME: _REJECT,
        Outcome.NO_CREDENTIALS: _REJECT,
        Outcome.UNSUPPORTED_METHOD: _REJECT,
        Outcome.METHOD_UNSUPPORTED_BY_CREDENTIAL: _REJECT,
        Outcome.MALFORMED_PASSWORD: _REJECT,
        Outcome.MALFORMED_CREDENTIALS: _REJECT,
        Outcome.CONFLICTING_CREDENTIALS: _REJECT,
        Outcome.UNKNOWN_USER: _REJECT,
        Outcome.BAD_PASSWORD: _REJECT,
        Outcome.SUSPENDED: _REJECT,
        Outcome.EXPIRED: _REJECT,
        Outcome.DEACTIVATED: _REJECT,
        Outcome.MAC_LOCK_MISMATCH: _REJECT,
        Outcome.INTERNAL_ERROR: _REJECT,
        Outcome.UNKNOWN_DEVICE: _REJECT,
        Outcome.MAC_BLOCKED: _REJECT,
        Outcome.OUTSIDE_LOGIN_HOURS: _REJECT,
        Outcome.SIMULTANEOUS_USE: _REJECT,
        # Accepts that confine the session (see ReplyRenderer.walled_garden).
        Outcome.SUSPENDED_WALLED_GARDEN: int(Code.ACCESS_ACCEPT),
        Outcome.EXPIRED_WALLED_GARDEN: int(Code.ACCESS_ACCEPT),
        Outcome.FLAGGED_COOLDOWN: _REJECT,
        Outcome.FLAGGED_WALLED_GARDEN: int(Code.ACCESS_ACCEPT),
    }
)

# Reply-Message sent with a reject, only where telling the subscriber helps
# and reveals nothing to a guesser (never for a wrong password or unknown user).
REPLY_MESSAGES: Mapping[Outcome, str] = MappingProxyType(
    {
        Outcome.SUSPENDED: "Account suspended",
        Outcome.EXPIRED: "Account expired",
        Outcome.DEACTIVATED: "Account deactivated",
        Outcome.OUTSIDE_LOGIN_HOURS: "Login not allowed at this time",
        Outcome.SIMULTANEOUS_USE: "Too many sessions",
        Outcome.SUSPENDED_WALLED_GARDEN: "Account suspended",
        Outcome.EXPIRED_WALLED_GARDEN: "Account expired",
        Outcome.FLAGGED_WALLED_GARDEN: "Account held for review",
    }
)


def reply_codes(on_store_failure: StoreFailureAction) -> Mapping[Outcome, int | None]:
    """The complete outcome -> reply code table for this configuration."""
    table = dict(_BASE_TABLE)
    table[Outcome.STORE_UNAVAILABLE] = (
        _REJECT if on_store_failure is StoreFailureAction.REJECT else None
    )
    missing = set(Outcome) - set(table)
    if missing:  # pragma: no cover - guarded by a test over the enum
        raise RuntimeError(f"outcomes without a reply code: {sorted(missing)}")
    return MappingProxyType(table)
