"""The ``feed`` commands and the relay the server runs: feeds to billing (store/feeds.py).

Composition root: builds the sinks ``[feeds]`` names, and turns ``feed
status`` / ``feed replay`` into store calls. The webhook secret is never
printed; neither is the webhook URL (it may carry credentials).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ispcare_radius.cli.args import OneLineParser, timestamp
from ispcare_radius.cli.config import Config, ConfigError
from ispcare_radius.cli.config_sections import FeedsConfig
from ispcare_radius.cli.runtime import Store, open_store
from ispcare_radius.cli.sessions import table
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store import feeds
from ispcare_radius.store.db import Pool, acquire
from ispcare_radius.store.feeds import (
    FeedRelay,
    NdjsonSink,
    RelaySettings,
    Sink,
    SinkWriter,
    WebhookSink,
)

_log = get_logger(__name__)


def writers(config: FeedsConfig) -> list[SinkWriter]:
    """The sinks ``[feeds] sinks`` enables, built from their settings."""
    out: list[SinkWriter] = []
    for name in config.sinks:
        if name == Sink.WEBHOOK:
            if config.webhook_url is None or config.webhook_secret is None:
                raise ConfigError("feeds: the webhook sink needs webhook_url and webhook_secret")
            out.append(
                WebhookSink(
                    config.webhook_url, config.webhook_secret, timeout=config.webhook_timeout
                )
            )
        elif name == Sink.NDJSON:
            out.append(NdjsonSink(config.ndjson_dir))
    return out


def build_relay(pool: Pool, config: FeedsConfig) -> FeedRelay | None:
    """The relay for the configured sinks; None when no sink is enabled."""
    sinks = writers(config)
    if not sinks:
        return None
    settings = RelaySettings(
        max_attempts=config.max_attempts,
        backoff_base=config.backoff_base,
        backoff_max=config.backoff_max,
        batch_size=config.batch_size,
        poll=config.poll_interval,
    )
    return FeedRelay(pool, sinks, settings)


async def prune_outbox(pool: Pool, config: FeedsConfig, *, now: datetime) -> int:
    """Delete outbox rows older than ``keep_days`` that every enabled sink is done with."""
    async with acquire(pool, timeout=30.0) as conn:
        return await feeds.prune(
            conn,
            before=now - timedelta(days=config.keep_days),
            sinks=[Sink(s) for s in config.sinks],
        )


async def prune_job(pool: Pool, config: FeedsConfig) -> None:
    """``prune_outbox`` for the server's periodic jobs: a failure is logged, not raised."""
    try:
        deleted = await prune_outbox(pool, config, now=datetime.now(UTC))
    except Exception as exc:  # the next run tries again
        _log.warning("feed_prune_failed", error=type(exc).__name__)
        return
    if deleted:
        _log.info("feed_pruned", rows=deleted)


def add_feed_parser(sub: Any) -> None:
    """Add ``feed status|replay`` to the top-level subparsers."""
    feed = sub.add_parser("feed", help="feeds to billing (outbox relay)").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    feed.add_parser("status", help="backlog, failures, dead letters and last delivery per sink")
    p = feed.add_parser(
        "replay", help="deliver again the events written since TIME (receivers dedupe by key)"
    )
    p.add_argument("--since", type=timestamp, required=True, metavar="TIME", help="ISO 8601")
    p.add_argument("--sink", choices=[s.value for s in Sink], help="only this sink")


async def run_feed(config: Config, args: argparse.Namespace) -> int:
    """Open the store and run one ``feed`` command."""
    async with open_store(config) as store:
        return await feed_command(store, config.feeds, args, now=datetime.now(UTC))


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    age = int((now - value).total_seconds())
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({age}s ago)"


def status_lines(
    states: Sequence[feeds.SinkStatus], enabled: Sequence[str], now: datetime
) -> list[str]:
    """What ``feed status`` prints: one row per sink."""
    rows = [
        {
            "sink": s.sink.value,
            "enabled": "yes" if s.sink.value in enabled else "no",
            "backlog": str(s.backlog),
            "failing": str(s.failing),
            "dead": str(s.dead),
            "oldest pending": _when(s.oldest_pending, now),
            "last delivery": _when(s.last_delivery, now),
            "last error": s.last_error or "-",
        }
        for s in states
    ]
    return table(rows)


async def feed_command(
    store: Store, config: FeedsConfig, args: argparse.Namespace, *, now: datetime
) -> int:
    """Run one ``feed`` command; 0 on success."""
    if args.action == "status":
        async with acquire(store.pool) as conn:
            states = await feeds.status(conn, list(Sink))
        for line in status_lines(states, config.sinks, now):
            print(line)
        return 0
    sinks = [Sink(args.sink)] if args.sink else list(Sink)
    async with acquire(store.pool) as conn, conn.transaction():
        count = await feeds.replay(conn, since=args.since, sinks=sinks)
    print(f"re-queued {count} deliveries ({', '.join(s.value for s in sinks)})")
    return 0
