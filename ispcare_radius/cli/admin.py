"""The administrative commands: keys, migrate, nas, plan, subscriber.

Composition root: turns parsed arguments into store calls and prints results.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import ipaddress
import sys
from pathlib import Path
from typing import Any

from ispcare_radius.aaa.methods.credentials import (
    SERVES,
    CredentialForm,
    scrypt_hash,
    unsupported_message,
)
from ispcare_radius.aaa.model import Plan
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.cli.args import CLEARABLE_POLICY, POLICY_OPTIONS, die
from ispcare_radius.cli.config import Config, ConfigError
from ispcare_radius.cli.runtime import Store, load_dictionaries, open_store
from ispcare_radius.privacy.blind import normalize_mac
from ispcare_radius.privacy.keys import KeyFileError, init_key_file
from ispcare_radius.privacy.secret import typable_token
from ispcare_radius.store.importer import parse_import_csv


def keys_init(config: Config) -> int:
    try:
        init_key_file(config.master_key_file)
    except KeyFileError as exc:
        die(str(exc))
    print(f"master key written to {config.master_key_file} (mode 0400); back it up safely")
    return 0


async def run_admin(config: Config, args: argparse.Namespace) -> int:
    if args.command == "migrate":
        async with open_store(config) as store:
            applied = store.applied_migrations
            print(f"applied migrations: {applied}" if applied else "database is up to date")
        return 0
    async with open_store(config) as store:
        if args.command == "plan":
            return await _plan(store, args, config)
        if args.command == "device":
            from ispcare_radius.cli.devices import run_device

            return await run_device(store, args)
        if args.command == "subscriber":
            return await _subscriber(store, args, config)
        return await _nas(store, args)


def _table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(_cell(r[c]).ljust(widths[c]) for c in cols).rstrip())


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


async def _nas(store: Store, args: argparse.Namespace) -> int:
    if args.action == "add":
        secret = args.secret or typable_token(22)
        try:
            nas = await store.nas.add(
                args.name,
                args.address,
                secret,
                vendor=args.vendor,
                ma_policy=args.ma_policy,
                coa_port=args.coa_port,
                latitude=args.latitude,
                longitude=args.longitude,
                country=args.country,
                city=args.city,
                nas_type=args.nas_type,
                pools=tuple(args.pools),
            )
        except ValueError as exc:
            die(str(exc))
        print(f"added NAS {nas.name} ({nas.address})")
        if not args.secret:
            print(f"shared secret: {secret}")
        return 0
    if args.action == "list":
        _table(
            [
                {
                    "name": n.name,
                    "address": str(n.address),
                    "vendor": n.vendor,
                    "ma_policy": n.ma_policy.value,
                    "coa_port": n.coa_port,
                    "type": n.nas_type.value,
                    "location": ", ".join(x for x in (n.city, n.country) if x) or None,
                }
                for n in await store.nas.list()
            ]
        )
        return 0
    if not await store.nas.remove(args.name):
        die(f"no NAS named {args.name!r}")
    print(f"removed NAS {args.name}")
    return 0


_PLAN_FIELDS = {
    "download": "download_kbps",
    "upload": "upload_kbps",
    "burst_download": "burst_download_kbps",
    "burst_upload": "burst_upload_kbps",
    "burst_threshold_download": "burst_threshold_download_kbps",
    "burst_threshold_upload": "burst_threshold_upload_kbps",
    "burst_time": "burst_time_s",
    "session_timeout": "session_timeout",
    "idle_timeout": "idle_timeout",
    "interim_interval": "interim_interval",
    "simultaneous_use": "simultaneous_use",
    "pool": "ipv4_pool",
    "ipv6_pool": "ipv6_pool",
    "address_list": "address_list",
    "qos_profile": "qos_profile",
    "login_hours": "login_hours",
    "time_zone": "time_zone",
    "walled_garden": "walled_garden",
    "ipv6_address_pool": "ipv6_address_pool",
    "quota": "quota_bytes",
    "quota_time": "quota_seconds",
    "quota_period": "quota_period",
    "billing_day": "billing_day",
}


def _dns_ipv6(texts: list[str]) -> tuple[ipaddress.IPv6Address, ...]:
    try:
        return tuple(ipaddress.IPv6Address(t) for t in texts)
    except ValueError:
        die("--dns-ipv6 is not an IPv6 address", 2)


async def _plan(store: Store, args: argparse.Namespace, config: Config) -> int:
    if args.action == "add":
        fields = {dst: getattr(args, src) for src, dst in _PLAN_FIELDS.items()}
        dns = _dns_ipv6(args.dns_ipv6)
        candidate = Plan(
            id=0,
            name=args.name,
            extra_reply=tuple(args.reply),
            dns_ipv6=dns,
            **{k: v for k, v in fields.items() if v is not None},
        )
        try:
            ReplyRenderer(load_dictionaries(config.dictionary_dirs)).check_plan(candidate)
        except ValueError as exc:
            die(f"plan {args.name!r}: {exc}", 2)
        try:
            plan = await store.plans.add(
                name=args.name,
                extra_reply=tuple(args.reply),
                dns_ipv6=[str(a) for a in dns],
                **fields,
            )
        except ValueError as exc:
            die(str(exc))
        print(f"added plan {plan.name}")
        return 0
    rows = []
    for plan in await store.plans.list():
        row = {"name": plan.name}
        for f in dataclasses.fields(plan):
            if f.name in ("id", "name"):
                continue
            value = getattr(plan, f.name)
            if value not in (None, ()):
                row[f.name] = value
        rows.append(row)
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    if not rows:
        print("(none)")
    return 0


def _read_password(args: argparse.Namespace, *, required: bool) -> str | None:
    if args.password_stdin:
        value = sys.stdin.readline().rstrip("\n")
        if not value:
            die("empty password on stdin")
        return value
    if args.password is not None:
        if not args.password:
            die("empty password")
        sys.stderr.write(
            "ispcare-radius: warning: a password on the command line is visible to other "
            "users and kept in shell history; prefer --password-stdin\n"
        )
        return str(args.password)
    if required:
        if not sys.stdin.isatty():
            die("no password given (use --password or --password-stdin)")
        value = getpass.getpass("password: ")
        if not value:
            die("empty password")
        return value
    return None


def _mac(text: str | None) -> str | None:
    if text is None:
        return None
    if normalize_mac(text) is None:
        die("--mac-lock is not a MAC address")
    return text


def _credentials(args: argparse.Namespace, config: Config, *, adding: bool) -> dict[str, Any]:
    """The credential options as repository fields (empty when none was given).

    ``--password-hash scrypt`` stores the scrypt hash instead of the reversible
    password; ``--nt-hash`` alone needs no password.
    """
    nt_hash = args.nt_hash
    password = _read_password(args, required=adding and nt_hash is None)
    out: dict[str, Any] = {}
    if args.password_hash == "scrypt":
        if password is None:
            die("--password-hash needs a password (--password-stdin)", 2)
        out["password_hash"] = scrypt_hash(password.encode("utf-8"), config.password_hash)
        out["password"] = None
    elif password is not None:
        out["password"] = password
    if nt_hash is not None:
        out["nt_hash"] = nt_hash
    return out


def _show(view: Any) -> None:
    """Every field, then which password methods cannot work and why."""
    fields = dataclasses.asdict(view)
    methods = fields.pop("methods")
    for key, value in fields.items():
        print(f"{key}: {_cell(value)}")
    print(f"methods: {', '.join(methods) or 'none (no password or hash stored)'}")
    held = (
        (CredentialForm.PASSWORD, view.has_password),
        (CredentialForm.NT_HASH, view.has_nt_hash),
        (CredentialForm.SLOW_HASH, view.has_slow_hash),
    )
    forms = frozenset(form for form, present in held if present)
    for method in SERVES:
        why = unsupported_message(method, forms)
        if why is not None:
            print(f"not {method}: {why}")


async def _subscriber(store: Store, args: argparse.Namespace, config: Config) -> int:
    repo = store.subscribers
    action = args.action
    try:
        if action == "add":
            creds = _credentials(args, config, adding=True)
            sid = await repo.add(
                args.user_name,
                creds.pop("password", None),
                **creds,
                mac_binding=args.mac_binding,
                plan=args.plan,
                status=args.status or "active",
                expires_at=args.expires,
                static_ipv4=args.static_ip,
                mac_lock=_mac(args.mac_lock),
                account_ref=args.account_ref,
                **_policy_options(args),
            )
            print(f"added subscriber id {sid}")
            return 0
        if action == "show":
            view = await repo.get(args.user_name)
            if view is None:
                die("no such subscriber")
            _show(view)
            return 0
        if action == "set":
            changes: dict[str, Any] = _credentials(args, config, adding=False)
            if args.mac_binding is not None:
                changes["mac_binding"] = args.mac_binding
            for opt, key in (
                ("plan", "plan"),
                ("status", "status"),
                ("expires", "expires_at"),
                ("static_ip", "static_ipv4"),
                ("account_ref", "account_ref"),
            ):
                if getattr(args, opt) is not None:
                    changes[key] = getattr(args, opt)
            if args.mac_lock is not None:
                changes["mac_lock"] = _mac(args.mac_lock)
            if args.legal_hold is not None:
                changes["legal_hold"] = args.legal_hold == "on"
            changes.update(_policy_options(args))
            for cleared in args.clear:
                if cleared in CLEARABLE_POLICY:
                    changes[CLEARABLE_POLICY[cleared]] = None
                    continue
                key = {
                    "expires": "expires_at",
                    "static-ip": "static_ipv4",
                    "mac-lock": "mac_lock",
                    "plan": "plan",
                    "account-ref": "account_ref",
                }[cleared]
                changes[key] = None
            if not changes:
                die("nothing to change", 2)
            if not await repo.set(args.user_name, **changes):
                die("no such subscriber")
            print("updated")
            return 0
        if action == "list":
            views = await repo.list(status=args.status, limit=args.limit, offset=args.offset)
            _table([_list_row(v) for v in views])
            return 0
        if action == "deactivate":
            requested = await repo.deactivate(args.user_name, reason=args.reason)
            if requested is None:
                die("no such subscriber")
            print(
                f"deactivated; {requested} disconnect request(s) recorded;"
                " erased after the grace period unless under legal hold"
            )
            return 0
        if action == "remove":
            if not await repo.remove(args.user_name):
                die("no such subscriber")
            print("removed; the subscriber's data key is destroyed")
            return 0
        if action == "import":
            return await _import(store, Path(args.csv), progress=not args.no_progress)
    except ValueError as exc:
        die(str(exc))
    raise ConfigError(f"unknown action {action}")


def _policy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The reply-policy options given on the command line, by repository field."""
    return {
        field: getattr(args, opt)
        for opt, field in POLICY_OPTIONS.items()
        if getattr(args, opt) is not None
    }


def _list_row(view: Any) -> dict[str, Any]:
    d = dataclasses.asdict(view)
    return {k: d[k] for k in ("id", "user_name", "status", "plan", "expires_at") if k in d}


async def _import(store: Store, path: Path, *, progress: bool) -> int:
    if not path.is_file():
        die(f"no such file: {path}")
    from tqdm import tqdm

    with path.open("rb") as fh:
        total = max(sum(1 for _ in fh) - 1, 0)
    bar = tqdm(total=total, unit="rows", disable=not progress, file=sys.stderr)

    def advance(done: int) -> None:  # the importer reports rows done so far
        bar.update(done - bar.n)

    try:
        count = await store.subscribers.import_rows(parse_import_csv(path), progress=advance)
    finally:
        bar.close()
    print(f"imported {count} subscribers")
    return 0
