"""Domain values the AAA pipeline works on: plans, subscribers, NAS, auth events.

Frozen and slotted; personal values arrive here already decrypted and leave
encrypted by the store. Imports only privacy (for ``Secret``) and detect
(for ``NasType``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from ispcare_radius.detect.location import NasType
from ispcare_radius.privacy.secret import Secret

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SubscriberStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    DEACTIVATED = "deactivated"


class MacBinding(StrEnum):
    """How a subscriber's MAC lock is set: never, by an operator, or by the first login."""

    OFF = "off"
    LOCK = "lock"  # an operator set the lock
    # The first accepted login's Calling-Station-Id becomes the lock.
    FIRST_LOGIN = "first_login"


class MessageAuthenticatorPolicy(StrEnum):
    """Per-NAS BlastRADIUS (CVE-2024-3596) mitigation for Access-Requests."""

    NO = "no"
    OBSERVE = "observe"
    REQUIRE = "require"


@dataclass(frozen=True, slots=True)
class Plan:
    """A service plan: speeds in kbit/s, times in seconds; None means not sent."""

    id: int
    name: str
    download_kbps: int | None = None
    upload_kbps: int | None = None
    burst_download_kbps: int | None = None
    burst_upload_kbps: int | None = None
    burst_threshold_download_kbps: int | None = None
    burst_threshold_upload_kbps: int | None = None
    burst_time_s: int | None = None
    session_timeout: int | None = None
    idle_timeout: int | None = None
    interim_interval: int | None = None
    simultaneous_use: int | None = None
    ipv4_pool: str | None = None
    ipv6_pool: str | None = None
    # Vendor forms (see aaa/vendors.py): a RouterOS address list for the
    # subscriber's address, and a QoS profile / policy name configured on the NAS.
    address_list: str | None = None
    qos_profile: str | None = None
    # Extra reply attributes as (dictionary name, value as text), sent as is.
    extra_reply: tuple[tuple[str, str], ...] = ()
    # RFC 6911: DNS-Server-IPv6-Address (3.1) values and the
    # Stateful-IPv6-Address-Pool (3.5) the NAS assigns DHCPv6 addresses from.
    dns_ipv6: tuple[ipaddress.IPv6Address, ...] = ()
    ipv6_address_pool: str | None = None
    # Allowed login hours (aaa/hours.py syntax) read in ``time_zone`` (IANA
    # name; None means UTC); None means any time.
    login_hours: str | None = None
    time_zone: str | None = None
    # Walled-garden profile name: suspended or expired subscribers are let into
    # it instead of rejected (see docs/vendors.md for each vendor's form).
    walled_garden: str | None = None
    # Quota per period (bytes in + out, and/or seconds): crossing it records a
    # quota event. The period is the UTC day or the billing cycle, which starts
    # on ``billing_day`` (1-28) of each month.
    quota_bytes: int | None = None
    quota_seconds: int | None = None
    quota_period: str = "cycle"
    billing_day: int = 1


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-subscriber values that replace the plan's when set (None: the plan's)."""

    download_kbps: int | None = None
    upload_kbps: int | None = None
    session_timeout: int | None = None
    idle_timeout: int | None = None

    def apply(self, plan: Plan) -> Plan:
        """``plan`` with every set override in place; ``plan`` itself when none differs."""
        changes = {
            name: value
            for name in ("download_kbps", "upload_kbps", "session_timeout", "idle_timeout")
            if (value := getattr(self, name)) is not None and value != getattr(plan, name)
        }
        return replace(plan, **changes) if changes else plan


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A subscriber as authentication needs it, personal fields decrypted."""

    id: int
    status: SubscriberStatus
    plan: Plan | None
    password: Secret | None
    account_ref: str | None = None
    expires_at: datetime | None = None
    # Personal: kept out of reprs (and so out of logs and tracebacks).
    static_ipv4: ipaddress.IPv4Address | None = field(default=None, repr=False)
    static_ipv6_prefix: ipaddress.IPv6Network | None = field(default=None, repr=False)
    mac_lock: bytes | None = field(default=None, repr=False)  # 6 bytes
    framed_netmask: ipaddress.IPv4Address | None = field(default=None, repr=False)
    # RFC 2865 section 5.22 text: "<prefix>/<len> <gateway> <metric>".
    framed_routes: tuple[str, ...] = field(default=(), repr=False)
    delegated_ipv6_prefix: ipaddress.IPv6Network | None = field(default=None, repr=False)
    framed_ipv6_address: ipaddress.IPv6Address | None = field(default=None, repr=False)
    overrides: Overrides | None = None
    # Credentials held instead of (or besides) ``password``, see
    # aaa/methods/credentials.py: the 16-byte NT hash, the ``$scrypt$`` text.
    nt_hash: Secret | None = None
    slow_hash: Secret | None = None
    mac_binding: MacBinding = MacBinding.OFF


@dataclass(frozen=True, slots=True)
class Nas:
    """A NAS client: matched by source address, with its own shared secret."""

    id: int
    name: str
    address: IPNetwork
    secret: Secret
    vendor: str = "generic"
    ma_policy: MessageAuthenticatorPolicy = MessageAuthenticatorPolicy.OBSERVE
    coa_port: int = 3799
    latitude: float | None = None
    longitude: float | None = None
    country: str | None = None
    city: str | None = None
    # How subscribers reach it (detect/location.py): which IP a login comes from.
    nas_type: NasType = NasType.PPPOE
    # Its address pools: client IPs in them are the ISP's, never geolocated.
    pools: tuple[IPNetwork, ...] = ()


class AuthResult(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    NO_REPLY = "no_reply"


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One authentication decision, written to the auth-events table in batches.

    ``user_name``, ``calling_station_id`` and ``nas_ip`` are personal and are
    encrypted by the store before they reach PostgreSQL.
    """

    time: datetime
    subscriber_id: int | None
    nas_id: int
    result: AuthResult
    reason: str
    user_name: str = field(repr=False)
    calling_station_id: str | None = field(default=None, repr=False)
    nas_ip: str | None = field(default=None, repr=False)
    method: str = "pap"
    flags: tuple[str, ...] = field(default=())
    # Analytics categories derived at login (detect/): never identifiers.
    country: str | None = None
    city: str | None = None
    device_class: str | None = None
    os_family: str | None = None
    vendor: str | None = None
    # The detector's keyed signal of this login as JSON text (detect/state.py
    # Signal.encode): digests and a coarse location only, replayed after a restart.
    detect: str | None = field(default=None, repr=False)
