"""What the detector takes in and gives out.

A decided login (personal values in clear, in memory only), its keyed
``Signal`` (stored with the auth event, replayed after a restart) and the
``Flag`` a rule raises; and how subjects are normalised before they are
keyed. No I/O, no state (detect/state.py keeps that).
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Final

from ispcare_radius.detect.rules import Fix, Place
from ispcare_radius.detect.settings import Action, Rule, Severity

# Rejects that say someone tried a credential and it did not fit (Outcome slugs).
FAILURE_REASONS: Final = frozenset({"bad_password", "unknown_user"})
SIGNAL_VERSION: Final = 1
# Coordinates are kept to 0.1 degree in stored signals (about 11 km), and the
# accuracy radius widened to cover the rounding: a coarse category, not a place.
_ROUND_DEGREES: Final = 1
_ROUNDING_KM: Final = 8.0
_COMPACT: Final = json.JSONEncoder(separators=(",", ":"))


# Login and Signal are built for every Access-Request: slotted but not frozen,
# because a frozen dataclass sets each field through object.__setattr__.
# Nothing changes them after construction.
@dataclass(slots=True)
class Login:
    """One decided Access-Request as the pipeline saw it; personal values in clear.

    ``calling_station_id`` is the source: the Calling-Station-Id, or the
    client's public IP for VPN and hotspot NAS. ``password`` is the PAP
    password offered (only its keyed digest is kept); ``mac`` the 6 bytes of
    a MAC-shaped Calling-Station-Id, or instead ``station``, the
    Calling-Station-Id as the NAS sent it, for the detector to parse only
    when it does not remember this subscriber on this station already.
    """

    time: float
    subscriber_id: int | None
    accepted: bool
    reason: str
    user_name: str = field(repr=False)
    calling_station_id: str | None = field(default=None, repr=False)
    mac: bytes | None = field(default=None, repr=False)
    password: bytes | None = field(default=None, repr=False)
    place: Place | None = field(default=None, repr=False)
    # Admitted over the plan's Simultaneous-Use limit by displacing a session.
    over_limit: bool = False
    station: bytes | None = field(default=None, repr=False)


@dataclass(slots=True)
class Signal:
    """What detection keeps of a login: keyed digests and a coarse location, no personal value."""

    time: float
    subscriber_id: int | None
    accepted: bool
    reason: str
    account: bytes
    source: bytes | None = None
    mac: bytes | None = None
    mac_local: bool = False
    password: int | None = None
    fix: Fix | None = None
    over_limit: bool = False  # not stored: its flag is, once
    # ``encode``'s text for the account and MAC, when the detector has it already.
    head: str | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The JSON stored with the auth event (``auth_events.detect``)."""
        out: dict[str, Any] = {"v": SIGNAL_VERSION, "a": self.account.hex()}
        if self.source is not None:
            out["s"] = self.source.hex()
        if self.mac is not None:
            out["m"] = self.mac.hex()
            out["ml"] = self.mac_local
        if self.password is not None:
            out["p"] = self.password
        if self.fix is not None:
            out["fx"] = _fx(self.fix)
        return out

    def encode(self) -> str:
        """``row()`` as compact JSON text, as the auth-event writer stores it.

        Built by hand: it runs for every Access-Request, and hex digests and
        integers need no escaping (the location goes through ``json``).
        """
        head = self.head or keys_text(self.account, self.mac, self.mac_local)
        fx = None if self.fix is None else fix_text(self.fix)
        return signal_text(head, self.source, self.password, fx)

    @classmethod
    def decode(
        cls, text: str, *, time: float, subscriber_id: int | None, accepted: bool, reason: str
    ) -> Signal | None:
        """The signal stored as ``text`` by ``encode``; None if it is not one."""
        try:
            row = json.loads(text)
        except ValueError:
            return None
        if not isinstance(row, dict):
            return None
        try:
            return cls.from_row(
                row, time=time, subscriber_id=subscriber_id, accepted=accepted, reason=reason
            )
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_row(
        cls,
        row: dict[str, Any],
        *,
        time: float,
        subscriber_id: int | None,
        accepted: bool,
        reason: str,
    ) -> Signal | None:
        """The signal stored by ``row``; None for a row of an unknown version."""
        if row.get("v") != SIGNAL_VERSION or "a" not in row:
            return None
        fx = row.get("fx")
        fix = None
        if isinstance(fx, list) and len(fx) == 4:
            fix = Fix(time, fx[0], fx[1], fx[2], fx[3])
        return cls(
            time=time,
            subscriber_id=subscriber_id,
            accepted=accepted,
            reason=reason,
            account=bytes.fromhex(row["a"]),
            source=bytes.fromhex(row["s"]) if "s" in row else None,
            mac=bytes.fromhex(row["m"]) if "m" in row else None,
            mac_local=bool(row.get("ml", False)),
            password=int(row["p"]) if "p" in row else None,
            fix=fix,
        )


def _fx(fix: Fix) -> list[Any]:
    """A location as stored: country, coordinates to 0.1 degree, radius widened to match."""
    lat = None if fix.latitude is None else round(fix.latitude, _ROUND_DEGREES)
    lon = None if fix.longitude is None else round(fix.longitude, _ROUND_DEGREES)
    return [fix.country, lat, lon, (fix.accuracy_km or 0.0) + _ROUNDING_KM]


def fix_text(fix: Fix) -> str:
    """``Signal.encode``'s text for a location (compact JSON of ``row()["fx"]``)."""
    return _COMPACT.encode(_fx(fix))


def signal_text(head: str, source: bytes | None, password: int | None, fx: str | None) -> str:
    """``Signal.encode``'s text from its parts: ``keys_text``, the source and
    password keys, and ``fix_text`` of the location."""
    if source is None and password is None and fx is None:
        return head + "}"  # an accepted login without a location: most of them
    parts = [head]
    if source is not None:
        parts.append(f',"s":"{source.hex()}"')
    if password is not None:
        parts.append(f',"p":{password}')
    if fx is not None:
        parts.append(',"fx":' + fx)
    parts.append("}")
    return "".join(parts)


def keys_text(account: bytes, mac: bytes | None, mac_local: bool) -> str:
    """The start of ``Signal.encode``'s text: version, account and MAC keys."""
    text = f'{{"v":{SIGNAL_VERSION},"a":"{account.hex()}"'
    if mac is not None:
        text += f',"m":"{mac.hex()}","ml":{"true" if mac_local else "false"}'
    return text


@dataclass(frozen=True, slots=True)
class Flag:
    """A finding with its subject, time bucket and action, for the flag store.

    ``evidence`` holds personal values (sealed by the store) only on a flag
    about an account; ``thresholds`` are the rule's settings when it fired.
    """

    time: float
    rule: Rule
    severity: Severity
    score: float
    action: Action
    subject_kind: str
    subject: bytes
    bucket: int
    subscriber_id: int | None
    evidence: dict[str, Any] = field(repr=False)
    thresholds: dict[str, Any]
    replayed: bool = False


def account_text(user_name: str) -> bytes:
    """A user name as one account, however spelled: NFKC, case folded, NFKC again.

    ASCII names (nearly all) take the short way: NFKC leaves them as they are
    and case folding is lowercasing.
    """
    if user_name.isascii():
        return user_name.lower().encode("ascii")
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", user_name).casefold())
    return folded.encode("utf-8", "surrogatepass")


def source_text(source: str) -> bytes:
    """A source (Calling-Station-Id or client IP) as one subject: trimmed, lowercased.

    A NAS writes a station the same way every time, so no further
    normalisation is needed to count what comes from it.
    """
    return source.strip().lower().encode("utf-8", "surrogatepass")


def is_locally_administered(mac: bytes) -> bool:
    """The U/L bit (IEEE 802, bit 1 of octet 0): set on randomised MACs."""
    return bool(mac[0] & 0x02)
