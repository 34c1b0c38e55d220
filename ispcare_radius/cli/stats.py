"""The ``stats`` commands: release a period's anonymised statistics, show released ones.

Composition root: turns parsed arguments into ``store.stats`` calls and
prints results. A release the validator refuses exits 1 with the broken
rules named (never a value); nothing is written then. So does a release of
a day some hour of which is released, or of an hour whose day is.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ispcare_radius.cli.args import OneLineParser, die, timestamp
from ispcare_radius.cli.config import Config
from ispcare_radius.cli.runtime import open_store
from ispcare_radius.privacy.anon import (
    Dimension,
    Period,
    StatsSettings,
    bucket_label,
    bucket_start,
    totals,
)
from ispcare_radius.store.db import Pool
from ispcare_radius.store.stats import (
    GranularityConflict,
    PeriodNotOver,
    ReleaseRefused,
    release,
    released,
)


def period(text: str) -> Period:
    try:
        return Period(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError("period must be HOUR or DAY") from None


def add_stats_parser(sub: Any) -> None:
    """Add ``stats release|show`` to the top-level subparsers."""
    stats = sub.add_parser("stats", help="anonymised statistics").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    p = stats.add_parser(
        "release", help="compute, validate and release one period (refused if any rule breaks)"
    )
    p.add_argument("--period", type=period, required=True, metavar="HOUR|DAY")
    p.add_argument(
        "--at",
        type=timestamp,
        metavar="TIME",
        help="a time inside the period to release (default: the last period that ended"
        " at least stats.release_delay seconds ago)",
    )
    p = stats.add_parser("show", help="released statistics, with totals over released cells")
    p.add_argument("--since", type=timestamp, metavar="TIME", help="buckets starting at or after")
    p.add_argument("--period", type=period, metavar="HOUR|DAY")
    p.add_argument(
        "--dimension",
        action="append",
        default=[],
        choices=[d.value for d in Dimension],
        help="only this dimension (repeatable)",
    )


def period_to_release(
    settings: StatsSettings, chosen: Period, at: datetime | None, now: datetime
) -> datetime:
    """The start of the period to release: the one holding ``at``, else the last settled one."""
    if at is not None:
        return bucket_start(chosen, at)
    settled = now - timedelta(seconds=settings.release_delay)
    start = bucket_start(chosen, settled)
    # The period holding the settle point is still open: take the one before.
    return bucket_start(chosen, start - timedelta(seconds=1))


async def run_stats(config: Config, args: argparse.Namespace) -> int:
    """Open the store and run one ``stats`` command."""
    async with open_store(config) as store:
        return await stats_command(store.pool, config.stats, args, now=datetime.now(UTC))


async def stats_command(
    pool: Pool, settings: StatsSettings, args: argparse.Namespace, *, now: datetime
) -> int:
    """Run one ``stats`` command; exit status 1 with one line on failure."""
    if args.action == "release":
        start = period_to_release(settings, args.period, args.at, now)
        try:
            done = await release(pool, settings, period=args.period, start=start, now=now)
        except (PeriodNotOver, GranularityConflict) as exc:
            die(str(exc))
        except ReleaseRefused as exc:
            die(f"release refused, nothing written: {exc}")
        label = bucket_label(args.period, start)
        if done.already_released:
            print(f"{args.period.value} {label}: already released")
            return 0
        print(
            f"{args.period.value} {label}: released {len(done.rows)} cells"
            f" (k={settings.k}, {done.suppressed} suppressed)"
        )
        return 0
    rows = await released(pool, since=args.since, period=args.period, dimensions=args.dimension)
    for line in show_lines(rows):
        print(line)
    return 0


def show_lines(rows: Sequence[dict[str, object]]) -> list[str]:
    """A table of released cells, then per bucket and dimension the totals of its cells."""
    if not rows:
        return ["no released statistics"]
    header = (
        f"{'period':6} {'bucket':13} {'dimension':13} {'value':24} {'subs':>6}"
        f" {'sessions':>9} {'bytes_in':>15} {'bytes_out':>15} {'seconds':>10}"
    )
    lines = [header]
    groups: dict[tuple[object, object], list[dict[str, object]]] = {}
    for r in rows:
        lines.append(
            f"{r['period']!s:6} {r['bucket']!s:13} {r['dimension']!s:13} {r['value']!s:24}"
            f" {r['subscribers']!s:>6} {r['sessions']!s:>9} {r['bytes_in']!s:>15}"
            f" {r['bytes_out']!s:>15} {r['seconds']!s:>10}"
        )
        groups.setdefault((r["period"], r["bucket"]), []).append(r)
    lines.append("totals (released cells only):")
    for (p, b), group in groups.items():
        for dimension, sums in totals(group).items():
            lines.append(
                f"{p!s:6} {b!s:13} {dimension:13} {'*':24} {'':>6} {sums['sessions']:>9}"
                f" {sums['bytes_in']:>15} {sums['bytes_out']:>15} {sums['seconds']:>10}"
            )
    return lines
