"""The command-line grammar of ``ispcare-radius``: parsers and value types.

Argument errors become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import sys
from datetime import UTC, datetime
from typing import Final, NoReturn

from ispcare_radius.aaa.model import MacBinding, MessageAuthenticatorPolicy, SubscriberStatus
from ispcare_radius.aaa.vendors import known_vendors


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is a single line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ispcare-radius: error: {message} (see --help)\n")


def speed_kbps(text: str) -> int:
    """``"10M"``, ``"512k"``, ``"1G"`` or plain kbit/s -> kbit/s."""
    units = {"k": 1, "m": 1000, "g": 1_000_000}
    t = text.strip().lower()
    factor = 1
    if t and t[-1] in units:
        factor = units[t[-1]]
        t = t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad speed {text!r} (try 10M or 512k)") from None
    if not math.isfinite(value) or value <= 0 or value * factor > 100_000_000_000:
        raise argparse.ArgumentTypeError("speed must be positive and at most 100T")
    return int(value * factor)


def seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number of seconds {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("seconds must be positive")
    return value


_SIZE_UNITS: Final = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def byte_size(text: str) -> int:
    """Bytes from ``500M`` / ``50G`` / ``1T`` (decimal units, as ISPs sell them)."""
    stripped = text.strip().upper().removesuffix("B")
    unit = stripped[-1:] if stripped[-1:] in _SIZE_UNITS else ""
    number = stripped[: len(stripped) - len(unit)]
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 500M, 50G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def billing_day(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad day {text!r}") from None
    if not 1 <= value <= 28:
        raise argparse.ArgumentTypeError("billing day must be between 1 and 28")
    return value


def timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("bad time (use ISO 8601, e.g. 2027-01-31)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def address_or_cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError("not an IP address or CIDR") from None
    return text


def ipv4(text: str) -> str:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an IPv4 address") from None
    return text


def reply_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected ATTRIBUTE=VALUE")
    return name.strip(), value.strip()


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--download", type=speed_kbps, help="download speed (10M, 512k)")
    p.add_argument("--upload", type=speed_kbps, help="upload speed")
    p.add_argument("--burst-download", type=speed_kbps)
    p.add_argument("--burst-upload", type=speed_kbps)
    p.add_argument("--burst-threshold-download", type=speed_kbps)
    p.add_argument("--burst-threshold-upload", type=speed_kbps)
    p.add_argument("--burst-time", type=seconds)
    p.add_argument("--session-timeout", type=seconds)
    p.add_argument("--idle-timeout", type=seconds)
    p.add_argument("--interim-interval", type=seconds)
    p.add_argument("--simultaneous-use", type=seconds, metavar="N")
    p.add_argument("--pool", help="IPv4 pool name (Framed-Pool)")
    p.add_argument("--ipv6-pool", help="delegated IPv6 prefix pool name")
    p.add_argument("--address-list", help="MikroTik address list for the subscriber")
    p.add_argument("--qos-profile", help="QoS profile / policy name (Juniper, Cisco, Huawei)")
    p.add_argument(
        "--login-hours", help="allowed login hours, e.g. Wk0800-1800,Sa0900-1300 (docs/vendors.md)"
    )
    p.add_argument("--time-zone", help="IANA time zone of --login-hours (default UTC)")
    p.add_argument(
        "--walled-garden", help="profile suspended/expired subscribers are let into, not rejected"
    )
    p.add_argument("--quota", type=byte_size, metavar="SIZE", help="bytes per period (50G, 500M)")
    p.add_argument("--quota-time", type=seconds, metavar="SECONDS", help="seconds per period")
    p.add_argument(
        "--quota-period", choices=["day", "cycle"], help="quota period (default: billing cycle)"
    )
    p.add_argument(
        "--billing-day", type=billing_day, metavar="N", help="day of month (1-28) a cycle starts"
    )
    p.add_argument(
        "--dns-ipv6",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="IPv6 DNS server, DNS-Server-IPv6-Address (repeatable)",
    )
    p.add_argument("--ipv6-address-pool", help="DHCPv6 pool name (Stateful-IPv6-Address-Pool)")
    p.add_argument(
        "--reply",
        type=reply_pair,
        action="append",
        default=[],
        metavar="ATTR=VALUE",
        help="extra reply attribute (repeatable)",
    )


def _subscriber_options(p: argparse.ArgumentParser, *, adding: bool) -> None:
    p.add_argument("--password", help="password (prompted for when omitted on a terminal)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--password-hash",
        choices=["scrypt"],
        help="store only a slow hash of the password (PAP works; CHAP and MS-CHAP do not)",
    )
    p.add_argument(
        "--nt-hash",
        metavar="HEX",
        help="the NT hash (32 hex digits) instead of a password: MS-CHAP and PAP work, CHAP not"
        + ("" if adding else "; any credential option replaces all stored ones"),
    )
    p.add_argument("--plan")
    p.add_argument("--status", choices=[s.value for s in SubscriberStatus])
    p.add_argument("--expires", type=timestamp, help="expiry time, ISO 8601")
    p.add_argument("--static-ip", type=ipv4)
    p.add_argument("--mac-lock", help="only this MAC may log in")
    p.add_argument(
        "--mac-binding",
        choices=[m.value for m in MacBinding],
        help="off; lock (to --mac-lock); first_login (the first login's MAC becomes the lock;"
        " clear the lock to let the next login bind again)",
    )
    p.add_argument("--account-ref", help="the billing system's account id")
    if not adding:
        p.add_argument(
            "--legal-hold",
            choices=["on", "off"],
            help="on: keep a deactivated subscriber's data past the erasure grace (audited)",
        )
    p.add_argument("--netmask", help="Framed-IP-Netmask of the static IP (255.255.255.248 or /29)")
    p.add_argument(
        "--route",
        action="append",
        metavar="PREFIX [GATEWAY [METRIC]]",
        help="routed subnet, Framed-Route (repeatable; on set, replaces all routes)",
    )
    p.add_argument("--delegated-prefix", help="Delegated-IPv6-Prefix, e.g. 2001:db8:1::/56")
    p.add_argument("--ipv6-address", help="Framed-IPv6-Address")
    p.add_argument("--download", type=speed_kbps, help="override the plan's download speed")
    p.add_argument("--upload", type=speed_kbps, help="override the plan's upload speed")
    p.add_argument("--session-timeout", type=seconds, help="override the plan's session timeout")
    p.add_argument("--idle-timeout", type=seconds, help="override the plan's idle timeout")
    if not adding:
        p.add_argument(
            "--clear",
            action="append",
            default=[],
            choices=[
                "expires",
                "static-ip",
                "mac-lock",
                "plan",
                "account-ref",
                *CLEARABLE_POLICY,
            ],
            help="remove a value (repeatable)",
        )


# ``subscriber set --clear`` choices of the reply-policy fields -> repository field.
CLEARABLE_POLICY = {
    "netmask": "framed_netmask",
    "routes": "framed_routes",
    "delegated-prefix": "delegated_ipv6_prefix",
    "ipv6-address": "framed_ipv6_address",
    "download": "download_kbps",
    "upload": "upload_kbps",
    "session-timeout": "session_timeout",
    "idle-timeout": "idle_timeout",
}
# ``subscriber add/set`` options of the reply-policy fields -> repository field.
POLICY_OPTIONS = {
    "netmask": "framed_netmask",
    "route": "framed_routes",
    "delegated_prefix": "delegated_ipv6_prefix",
    "ipv6_address": "framed_ipv6_address",
    "download": "download_kbps",
    "upload": "upload_kbps",
    "session_timeout": "session_timeout",
    "idle_timeout": "idle_timeout",
}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="ispcare-radius", description="ISPCare RADIUS/AAA server")
    parser.add_argument("--config", help="TOML config file (default: $ISPCARE_CONFIG)")
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: config, $ISPCARE_DSN, embedded)")
    parser.add_argument("--master-key-file", help="master key file (default: config)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("serve", help="run the RADIUS server")
    p.add_argument(
        "--demo",
        action="store_true",
        help="create a demo NAS and subscriber and print a radtest line",
    )
    p.add_argument("--auth-port", type=int, help="override the auth port on every address")
    p.add_argument("--acct-port", type=int, help="override the acct port on every address")

    sub.add_parser("migrate", help="apply pending database migrations")

    keys = sub.add_parser("keys", help="master key management").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    keys.add_parser("init", help="create a new master key file (mode 0400)")
    from ispcare_radius.cli.keys import add_keys_parser

    add_keys_parser(keys)

    nas = sub.add_parser("nas", help="NAS clients").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    p = nas.add_parser("add", help="add a NAS")
    p.add_argument("name")
    p.add_argument("address", type=address_or_cidr, help="IP address or CIDR")
    p.add_argument("--secret", help="shared secret (generated and printed when omitted)")
    p.add_argument("--vendor", default="generic", choices=known_vendors())
    p.add_argument(
        "--ma-policy", default="observe", choices=[m.value for m in MessageAuthenticatorPolicy]
    )
    p.add_argument("--coa-port", type=int, default=3799)
    p.add_argument("--latitude", type=float)
    p.add_argument("--longitude", type=float)
    p.add_argument("--country", help="ISO 3166-1 alpha-2 code, e.g. GB")
    p.add_argument("--city")
    p.add_argument(
        "--type",
        dest="nas_type",
        default="pppoe",
        choices=["pppoe", "hotspot", "vpn"],
        help="pppoe: fixed lines, placed at the NAS location; hotspot/vpn: a public"
        " client IP in the request is geolocated",
    )
    p.add_argument(
        "--pool",
        dest="pools",
        action="append",
        default=[],
        metavar="CIDR",
        help="an address pool of this NAS, never geolocated (repeatable)",
    )
    nas.add_parser("list", help="list NAS clients")
    p = nas.add_parser("remove", help="remove a NAS")
    p.add_argument("name")

    plan = sub.add_parser("plan", help="service plans").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    p = plan.add_parser("add", help="add a plan")
    p.add_argument("name")
    _plan_options(p)
    plan.add_parser("list", help="list plans")

    subs = sub.add_parser("subscriber", help="subscribers").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    p = subs.add_parser("add", help="add a subscriber")
    p.add_argument("user_name")
    _subscriber_options(p, adding=True)
    p = subs.add_parser("show", help="show one subscriber")
    p.add_argument("user_name")
    p = subs.add_parser("set", help="change a subscriber")
    p.add_argument("user_name")
    _subscriber_options(p, adding=False)
    p = subs.add_parser("list", help="list subscribers")
    p.add_argument("--status", choices=[s.value for s in SubscriberStatus])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p = subs.add_parser(
        "deactivate",
        help="end access now: reject logins, request disconnects; erased after the grace period",
    )
    p.add_argument("user_name")
    p.add_argument("--reason", help="why, for the audit log (no personal values)")
    p = subs.add_parser("remove", help="remove a subscriber and shred their data")
    p.add_argument("user_name")
    p = subs.add_parser("import", help="bulk import a CSV of subscribers")
    p.add_argument(
        "csv",
        help="CSV with a header: user_name, then password and/or nt_hash or password_hash"
        " ($scrypt$...), optionally plan, status, expires_at, static_ipv4, mac_lock,"
        " mac_binding, account_ref, static_ipv6_prefix, framed_netmask, framed_routes"
        " (';'-separated), delegated_ipv6_prefix, framed_ipv6_address, download_kbps,"
        " upload_kbps, session_timeout, idle_timeout",
    )
    p.add_argument("--no-progress", action="store_true")
    from ispcare_radius.cli.devices import add_device_parser

    add_device_parser(sub)
    from ispcare_radius.cli.sessions import add_sessions_parser

    add_sessions_parser(sub)
    from ispcare_radius.cli.flags import add_flags_parser

    add_flags_parser(sub)
    from ispcare_radius.cli.stats import add_stats_parser

    add_stats_parser(sub)
    from ispcare_radius.cli.feeds import add_feed_parser

    add_feed_parser(sub)
    # One ``privacy`` group: every privacy command adds its subcommands here.
    privacy = sub.add_parser(
        "privacy", help="personal data: export, inventory, erasure"
    ).add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    from ispcare_radius.cli.privacy_export import add_privacy_export_parsers

    add_privacy_export_parsers(privacy)
    from ispcare_radius.cli.privacy import add_privacy_parsers

    add_privacy_parsers(privacy)
    return parser


def die(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"ispcare-radius: error: {message}\n")
    raise SystemExit(code)
