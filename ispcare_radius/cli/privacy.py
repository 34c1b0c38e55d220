"""The ``privacy erase-due`` command: run the erasure job now, or see what it would do.

Composition root: turns the parsed arguments into ``store.lifecycle.erase_due``
with the configured grace and prints ids and counts only (no personal values).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from ispcare_radius.cli.config import Config
from ispcare_radius.cli.runtime import Store, open_store
from ispcare_radius.cli.sessions import operator
from ispcare_radius.store.lifecycle import ErasureReport, erase_due

ACTIONS = ("erase-due",)


def add_privacy_parsers(privacy: Any) -> None:
    """Add ``erase-due`` to the ``privacy`` subparsers."""
    p = privacy.add_parser(
        "erase-due",
        help="erase subscribers deactivated longer than the grace period (not under legal hold)",
    )
    p.add_argument("--dry-run", action="store_true", help="only list who would be erased")


async def run_privacy(config: Config, args: argparse.Namespace) -> int:
    """Open the store and run ``privacy erase-due``."""
    async with open_store(config) as store:
        return await erase_due_command(store, config, args, now=datetime.now(UTC))


async def erase_due_command(
    store: Store, config: Config, args: argparse.Namespace, *, now: datetime
) -> int:
    """Run the erasure job once with the configured grace; print what it did."""
    report = await erase_due(
        store.pool,
        store.data_keys,
        now=now,
        grace_days=config.privacy.erasure_grace_days,
        dry_run=args.dry_run,
        actor=operator(),
    )
    for line in report_lines(report, grace_days=config.privacy.erasure_grace_days):
        print(line)
    return 0


def report_lines(report: ErasureReport, *, grace_days: int) -> list[str]:
    """The report as text: subscriber ids and counts only."""
    verb = "would erase" if report.dry_run else "erased"
    lines = [f"{verb} {len(report.erased)} subscriber(s) deactivated over {grace_days} day(s) ago"]
    lines += [f"  subscriber id {sid}" for sid in report.erased]
    if report.held:
        lines.append(f"kept under legal hold: {len(report.held)}")
        lines += [f"  subscriber id {sid}" for sid in report.held]
    return lines
