"""``ispcare-radius serve``: wires store, AAA pipeline and server, then runs.

Composition root: the one place that builds every package's objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from datetime import UTC, datetime

import structlog

from ispcare_radius.aaa.pipeline import AccessHandler
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.cli.config import Config, ConfigError
from ispcare_radius.cli.runtime import Store, load_dictionaries, open_store
from ispcare_radius.privacy.logsetup import configure_logging
from ispcare_radius.server.app import RadiusServer
from ispcare_radius.server.clients import ClientTable
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.events import AuthEventWriter
from ispcare_radius.store.partitions import ensure_partitions

DEMO_NAS = "local-nas"
DEMO_PLAN = "demo-10M"
DEMO_USER = "demo"


async def ensure_demo(store: Store) -> tuple[str, str]:
    """A demo NAS (127.0.0.1), plan and subscriber; returns (secret, password)."""
    existing = {n.name: n for n in await store.nas.list()}
    if DEMO_NAS in existing:
        secret = existing[DEMO_NAS].secret.reveal().decode()
    else:
        secret = secrets.token_urlsafe(12)
        await store.nas.add(DEMO_NAS, "127.0.0.1", secret, vendor="mikrotik", ma_policy="observe")
    if await store.plans.get(DEMO_PLAN) is None:
        await store.plans.add(
            name=DEMO_PLAN,
            download_kbps=10_000,
            upload_kbps=5_000,
            session_timeout=86_400,
            idle_timeout=600,
            interim_interval=300,
        )
    password = secrets.token_urlsafe(9)
    if await store.subscribers.get(DEMO_USER) is None:
        await store.subscribers.add(DEMO_USER, password, plan=DEMO_PLAN)
    else:
        await store.subscribers.set(DEMO_USER, password=password, status="active")
    return secret, password


def _auth_port(config: Config) -> int:
    return config.server.auth_listen[0][1] if config.server.auth_listen else 1812


async def serve(config: Config, *, demo: bool = False) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    dictionary = load_dictionaries(config.dictionary_dirs)
    async with open_store(config, create_master_key=demo) as store:
        configure_logging(
            pseudonymizer=store.keys.pseudonymizer,
            json=None if config.logging.format == "auto" else config.logging.format == "json",
            level=config.logging.level,
        )
        log = structlog.get_logger("ispcare_radius")
        demo_line = None
        if demo:
            secret, password = await ensure_demo(store)
            demo_line = f"radtest {DEMO_USER} {password} 127.0.0.1:{_auth_port(config)} 0 {secret}"
        renderer = ReplyRenderer(dictionary)
        for plan in await store.plans.list():
            try:
                renderer.check_plan(plan)
            except ValueError as exc:
                raise ConfigError(f"plan {plan.name!r}: {exc}") from None
        try:
            clients = ClientTable(await store.nas.list())
        except ValueError as exc:
            raise ConfigError(f"NAS table: {exc}") from None
        directory = CachedSubscriberDirectory(
            store.pool,
            store.keys,
            store.data_keys,
            ttl=config.cache.ttl,
            max_entries=config.cache.max_entries,
        )
        events = AuthEventWriter(
            store.pool,
            store.keys,
            store.data_keys,
            batch_size=config.events.batch_size,
            flush_interval=config.events.flush_interval,
            max_queue=config.events.max_queue,
        )
        handler = AccessHandler(
            directory=directory,
            events=events,
            renderer=renderer,
            settings=config.auth,
        )
        server = RadiusServer(config.server, clients, auth_handler=handler, acct_handler=None)
        await directory.start_listening()
        await ensure_partitions(store.pool, now=datetime.now(UTC))
        events.start()
        background = [
            asyncio.create_task(_reload_nas(store, clients, config.nas_reload_interval)),
            asyncio.create_task(_daily_partitions(store)),
        ]
        if config.cache.prewarm:
            # Serve at once; until the cache is warm, misses go to the database.
            background.append(asyncio.create_task(_prewarm(directory, config.cache.max_entries)))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(_reload_once(store, clients))
            )
        try:
            await server.start()
            log.info(
                "started",
                auth=[f"{h}:{p}" for h, p in server.bound_ports.get("auth", [])],
                acct=[f"{h}:{p}" for h, p in server.bound_ports.get("acct", [])],
                nas=len(await store.nas.list()),
            )
            if demo_line:
                print(f"Demo ready. In another terminal run:\n  {demo_line}", flush=True)
            await server.serve_forever()
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await events.stop()
            await directory.stop()
            log.info("stopped")
    return 0


async def _reload_once(store: Store, clients: ClientTable) -> None:
    log = structlog.get_logger("ispcare_radius")
    try:
        clients.replace(await store.nas.list())
    except Exception as exc:  # keep the old table; the next reload tries again
        log.warning("nas_reload_failed", error=type(exc).__name__)


async def _prewarm(directory: CachedSubscriberDirectory, limit: int) -> None:
    log = structlog.get_logger("ispcare_radius")
    started = time.monotonic()
    try:
        count = await directory.prewarm(limit)
    except Exception as exc:  # a cold cache is slower, not wrong
        log.warning("cache_prewarm_failed", error=type(exc).__name__)
        return
    log.info("cache_prewarmed", subscribers=count, seconds=round(time.monotonic() - started, 1))


async def _daily_partitions(store: Store) -> None:
    """Keep a week of auth-event partitions ahead of the clock."""
    log = structlog.get_logger("ispcare_radius")
    while True:
        await asyncio.sleep(6 * 3600)
        try:
            await ensure_partitions(store.pool, now=datetime.now(UTC))
        except Exception as exc:  # rows still land in the default partition
            log.warning("partition_maintenance_failed", error=type(exc).__name__)


async def _reload_nas(store: Store, clients: ClientTable, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await _reload_once(store, clients)
