"""The ``flags`` commands: list, show, ack and explain suspicious-login flags.

Composition root: turns parsed arguments into ``store.flags.FlagQuery`` calls
and prints results. ``explain`` opens the sealed evidence for the operator
and writes an audit row; the audit log never gets the evidence itself.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from ispcare_radius.cli.args import OneLineParser, die, timestamp
from ispcare_radius.cli.config import Config
from ispcare_radius.cli.runtime import Store, open_store
from ispcare_radius.cli.sessions import limit, operator, table
from ispcare_radius.detect.settings import Rule
from ispcare_radius.store.flags import FlagFilter, FlagQuery, FlagView

# What each rule's evidence fields mean, for ``explain``.
RULE_TEXT = {
    Rule.BRUTE_FORCE: "rejected logins for one account (wrong password or unknown name)",
    Rule.PASSWORD_SPRAY: "many user names failing from one source",
    Rule.NEW_COUNTRY: "a login from a country not among the account's recent logins",
    Rule.IMPOSSIBLE_TRAVEL: "two logins too far apart for the time between them",
    Rule.DEVICE_MANY_ACCOUNTS: "one device (MAC) logged in to many accounts",
    Rule.ACCOUNT_MANY_DEVICES: "one account logged in from many devices (MACs)",
    Rule.UNUSUAL_HOUR: "a login at an hour of day the account rarely uses (score only)",
    Rule.CONCURRENT_SESSIONS: "a login refused by the plan's Simultaneous-Use limit",
}


def flag_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("bad flag id (a number, as flags list shows)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("bad flag id (a number, as flags list shows)")
    return value


def add_flags_parser(sub: Any) -> None:
    """Add ``flags list|show|ack|explain`` to the top-level subparsers."""
    flags = sub.add_parser("flags", help="suspicious-login flags").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    p = flags.add_parser("list", help="list flags, newest first")
    p.add_argument("--rule", choices=[r.value for r in Rule])
    p.add_argument("--state", choices=["open", "acknowledged"])
    p.add_argument("--subscriber", metavar="USER", help="only this subscriber (user name)")
    p.add_argument("--since", type=timestamp, metavar="TIME", help="raised at or after (ISO 8601)")
    p.add_argument("--limit", type=limit, default=50)
    p = flags.add_parser("show", help="one flag: rule, severity, action, thresholds")
    p.add_argument("id", type=flag_id)
    p = flags.add_parser("ack", help="acknowledge a flag (audited)")
    p.add_argument("id", type=flag_id)
    p.add_argument("--note", help="the operator's note, stored encrypted with the flag")
    p = flags.add_parser(
        "explain", help="why the rule fired, with the decrypted evidence (audited)"
    )
    p.add_argument("id", type=flag_id)


async def run_flags(config: Config, args: argparse.Namespace) -> int:
    """Open the store and run one ``flags`` command."""
    async with open_store(config) as store:
        return await flags_command(store, args, now=datetime.now(UTC))


async def flags_command(store: Store, args: argparse.Namespace, *, now: datetime) -> int:
    """Run one ``flags`` command; exit status 1 with one line on failure."""
    query = FlagQuery(store.pool, store.data_keys, store.keys.epoch, actor=operator())
    if args.action == "list":
        subscriber_id = None
        if args.subscriber is not None:
            found = await store.subscribers.get(args.subscriber)
            if found is None:
                die("no such subscriber")
            subscriber_id = found.id
        views = await query.search(
            FlagFilter(
                rule=args.rule,
                state=args.state,
                subscriber_id=subscriber_id,
                since=args.since,
                limit=args.limit,
            )
        )
        for line in table([list_row(v) for v in views]):
            print(line)
        return 0
    if args.action == "show":
        view = await query.get(args.id)
    elif args.action == "ack":
        view = await query.ack(args.id, note=args.note, now=now)
    else:
        view = await query.explain(args.id, now=now)
    if view is None:
        die("no flag with this id")
    lines = show_lines(view)
    if args.action == "ack":
        lines = [f"acknowledged flag {view.id}", *lines]
    if args.action == "explain":
        lines += explain_lines(view)
    for line in lines:
        print(line)
    return 0


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def _subject(view: FlagView) -> str:
    # A keyed digest: it names no one, and matches the signal of every
    # auth event of the same account, source or MAC.
    return f"{view.subject_kind}:{view.subject.hex()[:12]}"


def list_row(view: FlagView) -> dict[str, str]:
    """One ``flags list`` line."""
    return {
        "id": str(view.id),
        "time": _time(view.time),
        "rule": view.rule,
        "severity": view.severity,
        "score": f"{view.score:.2f}",
        "action": view.action,
        "subscriber_id": str(view.subscriber_id) if view.subscriber_id else "-",
        "subject": _subject(view),
        "state": view.state,
    }


def show_lines(view: FlagView) -> list[str]:
    """What ``flags show`` prints about one flag (no personal values)."""
    lines = [
        f"flag: {view.id}",
        f"time: {_time(view.time)}",
        f"rule: {view.rule}",
        f"severity: {view.severity}",
        f"score: {view.score:.2f}",
        f"action: {view.action}",
        f"subject: {_subject(view)}",
        "subscriber id: " + (str(view.subscriber_id) if view.subscriber_id else "- (none)"),
        f"state: {view.state}",
    ]
    if view.state == "acknowledged":
        lines += [
            f"acknowledged by: {view.acknowledged_by or '-'}",
            f"acknowledged at: {_time(view.acknowledged_at)}",
        ]
    lines.append("thresholds: " + json.dumps(view.thresholds, sort_keys=True))
    return lines


def explain_lines(view: FlagView) -> list[str]:
    """Why the rule fired: what it watches, its thresholds, and the opened evidence."""
    try:
        what = RULE_TEXT[Rule(view.rule)]
    except ValueError:
        what = "(a rule this version does not know)"
    lines = [f"why: {what}"]
    if not view.readable or view.evidence is None:
        lines.append("evidence: (unreadable: the subscriber was erased or the key is gone)")
        return lines
    lines.append("evidence:")
    lines += [
        f"  {key}: {json.dumps(value, sort_keys=True)}"
        for key, value in sorted(view.evidence.items())
    ]
    if view.note:
        lines.append(f"note: {view.note}")
    return lines
