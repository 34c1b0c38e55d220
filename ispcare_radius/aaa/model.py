"""Domain values the AAA pipeline works on: plans, subscribers, NAS, auth events.

Frozen and slotted; personal values arrive here already decrypted and leave
encrypted by the store. Imports only privacy (for ``Secret``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ispcare_radius.privacy.secret import Secret

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SubscriberStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    DEACTIVATED = "deactivated"


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
