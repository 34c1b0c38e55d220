"""The ``privacy export`` and ``privacy inventory`` commands.

Composition root: ``export`` turns a lawful request (a subject, a reason, an
explicit confirmation) into ``store.export.export_subject`` and writes the
document to a file only its owner can read; ``inventory`` prints the data
inventory declared in ``store.inventory`` with the configured retention, and
with ``--check`` compares it with the live database.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from ispcare_radius.cli.args import die
from ispcare_radius.cli.config import Config
from ispcare_radius.cli.runtime import Store, open_store
from ispcare_radius.cli.sessions import operator, table
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.store import inventory
from ispcare_radius.store.db import Connection
from ispcare_radius.store.export import (
    Subject,
    SubjectNotFound,
    export_subject,
    find_by_account_ref,
    find_by_user_name,
)

ACTIONS = ("export", "inventory")


def add_privacy_export_parsers(privacy: Any) -> None:
    """Add ``export`` and ``inventory`` to the ``privacy`` subparsers."""
    p = privacy.add_parser(
        "export", help="everything held on one subscriber, decrypted, as JSON (lawful requests)"
    )
    p.add_argument("subject", nargs="?", metavar="USER", help="the subscriber's user name")
    p.add_argument("--account-ref", metavar="REF", help="find the subscriber by account ref")
    p.add_argument("--reason", required=True, help="the request's reference, for the audit log")
    p.add_argument("--yes", action="store_true", help="do not ask to type the subject to confirm")
    p.add_argument("--out", type=Path, metavar="FILE", help="write here (mode 0600), not stdout")
    p = privacy.add_parser(
        "inventory", help="every table and column, what it holds, how it is protected and kept"
    )
    p.add_argument("--personal", action="store_true", help="only columns classified personal")
    p.add_argument(
        "--check", action="store_true", help="also compare with the database; exit 1 on a gap"
    )


def run_privacy_export(config: Config, args: argparse.Namespace) -> int:
    """Run ``privacy export`` or ``privacy inventory``."""
    import asyncio

    if args.action == "inventory":
        for line in inventory_lines(config, personal_only=args.personal):
            print(line)
        if args.check:
            return asyncio.run(_check(config))
        return 0
    subject_text = _subject_text(args)
    if not args.yes and not confirmed(subject_text, sys.stdin, sys.stderr):
        die("not confirmed: nothing exported")
    return asyncio.run(_export(config, args))


def _subject_text(args: argparse.Namespace) -> str:
    if (args.subject is None) == (args.account_ref is None):
        die("give either a user name or --account-ref", 2)
    if not args.reason.strip():
        die("--reason must not be empty", 2)
    return str(args.subject if args.subject is not None else args.account_ref)


def confirmed(subject: str, stdin: TextIO, prompt: TextIO) -> bool:
    """Ask the operator to type the subject again; True if they did exactly."""
    prompt.write(
        "This writes every personal value held on the subscriber, decrypted, and is audited.\n"
        "Type the subject again to confirm: "
    )
    prompt.flush()
    return stdin.readline().rstrip("\r\n") == subject


def _open_private(path: Path) -> int:
    """A new file only its owner can read and write; refuses to overwrite."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        die("the output file exists already (an export is never overwritten)")


async def _export(config: Config, args: argparse.Namespace) -> int:
    # Opened before the export: a file that cannot be created must fail the
    # command before an audit row claims a disclosure.
    fd = None if args.out is None else _open_private(args.out)
    try:
        async with open_store(config) as store:
            doc = await export_document(store, args, now=datetime.now(UTC))
    except BaseException:
        if fd is not None:
            os.close(fd)
            args.out.unlink(missing_ok=True)
        raise
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fd is None:
        sys.stdout.write(text)
        return 0
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    print(f"exported subscriber {doc['subscriber_id']} to {args.out}", file=sys.stderr)
    return 0


async def export_document(store: Store, args: argparse.Namespace, *, now: datetime) -> Any:
    """The export document for the subject in ``args``; one-line errors otherwise."""
    find: Callable[[Connection], Awaitable[Subject]]
    if args.account_ref is not None:
        find = partial(find_by_account_ref, account_ref=args.account_ref)
    else:
        find = partial(
            find_by_user_name, keys=store.keys, data_keys=store.data_keys, user_name=args.subject
        )
    try:
        return await export_subject(
            store.pool, store.data_keys, find, reason=args.reason, actor=operator(), now=now
        )
    except SubjectNotFound as exc:
        die(str(exc))
    except DecryptError as exc:
        die(f"a stored value did not decrypt ({exc.reason.value}): nothing exported")


def _retention(config: Config, decl: inventory.TableDecl) -> str:
    if decl.retention_key is None:
        return decl.retention
    days = getattr(config.retention, decl.retention_key, None)
    setting = f"[retention] {decl.retention_key}"
    if days is None:
        return f"{decl.retention} ({setting}: not configured)"
    return f"{days} days ({setting}); {decl.retention}"


def inventory_lines(config: Config, *, personal_only: bool) -> list[str]:
    """The inventory as text: per table its retention, then its columns."""
    lines: list[str] = []
    for decl in inventory.TABLES:
        columns = [
            c
            for c in decl.columns
            if not personal_only or c.classification is inventory.Classification.PERSONAL
        ]
        if not columns:
            continue
        lines.append(f"{decl.name}: retention {_retention(config, decl)}")
        rows = [
            {
                "column": c.name,
                "class": c.classification.value,
                "protection": c.protection.value,
                "note": c.note,
            }
            for c in columns
        ]
        lines += ["  " + line for line in table(rows)]
        lines.append("")
    return lines[:-1] if lines else ["(none)"]


async def _check(config: Config) -> int:
    async with open_store(config) as store, store.pool.acquire() as conn:
        live = await inventory.live_columns(conn)
    gaps = inventory.undeclared(live)
    for name in gaps:
        print(f"undeclared column: {name}", file=sys.stderr)
    return 1 if gaps else 0
