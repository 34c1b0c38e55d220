"""``ispcare-radius serve``: wires store, AAA handlers and server, then runs.

Composition root: the one place that builds every package's objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from ispcare_radius.aaa.accounting import AccountingHandler
from ispcare_radius.aaa.logininfo import LoginProfiler
from ispcare_radius.aaa.pipeline import AccessHandler
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.cli.config import Config, ConfigError
from ispcare_radius.cli.config_sections import AccountingConfig, GeoConfig, RetentionConfig
from ispcare_radius.cli.feeds import build_relay, prune_job
from ispcare_radius.cli.runtime import Store, load_dictionaries, open_store
from ispcare_radius.detect.device import prepare as prepare_device_rules
from ispcare_radius.detect.location import Locator
from ispcare_radius.detect.state import Detector
from ispcare_radius.privacy.logsetup import configure_logging
from ispcare_radius.privacy.secret import typable_token
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.server.app import RadiusServer
from ispcare_radius.server.clients import ClientTable
from ispcare_radius.store.accounting import AccountingWriter, prune_record_keys
from ispcare_radius.store.applier import SessionApplier
from ispcare_radius.store.db import Pool
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.durable import SpoolingRecorder
from ispcare_radius.store.events import AuthEventWriter
from ispcare_radius.store.flags import FlagWriter, detect_keyer, rebuild
from ispcare_radius.store.geoip import GeoDataError, GeoIpReader, default_oui_paths, load_oui
from ispcare_radius.store.keyring import destroy_expired_epoch_keys, refresh_epoch_keys
from ispcare_radius.store.lifecycle import apply_row_retention, erase_due
from ispcare_radius.store.limits import SessionLimits
from ispcare_radius.store.partitions import apply_retention, ensure_partitions
from ispcare_radius.store.sessions import SessionTracker, close_stale
from ispcare_radius.store.spool import Spool, SpoolError

DEMO_NAS = "local-nas"
DEMO_PLAN = "demo-10M"
DEMO_USER = "demo"
MAINTENANCE_INTERVAL = 6 * 3600.0


async def ensure_demo(store: Store) -> tuple[str, str]:
    """A demo NAS (127.0.0.1), plan and subscriber; returns (secret, password)."""
    existing = {n.name: n for n in await store.nas.list()}
    secret = existing[DEMO_NAS].secret.reveal().decode() if DEMO_NAS in existing else ""
    if secret.startswith("-"):
        # Made by an older release whose generator could start with "-";
        # radtest would read it as an option.
        await store.nas.remove(DEMO_NAS)
        secret = ""
    if not secret:
        secret = typable_token(16)
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
    password = typable_token(12)
    if await store.subscribers.get(DEMO_USER) is None:
        await store.subscribers.add(DEMO_USER, password, plan=DEMO_PLAN)
    else:
        await store.subscribers.set(DEMO_USER, password=password, status="active")
    return secret, password


@dataclass
class Services:
    """Everything ``serve`` runs, built from the configuration."""

    server: RadiusServer
    clients: ClientTable
    directory: CachedSubscriberDirectory
    events: AuthEventWriter
    accounting: AccountingWriter
    spooling: SpoolingRecorder
    sessions: SessionApplier
    # Suspicious-login detection ([detect]); None when disabled.
    flags: FlagWriter | None = None
    detector: Detector | None = None


def build_profiler(geo: GeoConfig) -> LoginProfiler:
    """The login locator and device classifier from [detect]'s data files.

    A configured file that is missing, corrupt or of the wrong kind stops the
    start with a one-line ``ConfigError``; the GeoIP database stays open
    (memory-mapped) for the life of the process.
    """
    reader = None
    if geo.geoip_db is not None:
        try:
            reader = GeoIpReader.open(geo.geoip_db)
        except GeoDataError as exc:
            raise ConfigError(f"detect.geoip_db: {exc}") from None
    paths = default_oui_paths() if geo.oui_files is None else geo.oui_files
    try:
        oui = load_oui(paths) if paths else None
    except GeoDataError as exc:
        raise ConfigError(f"detect.oui_file: {exc}") from None
    prepare_device_rules()
    return LoginProfiler(Locator(reader), oui)


async def build(config: Config, store: Store, dictionary: Dictionary) -> Services:
    """Check plans and NAS, then build the cache, writers, handlers and server."""
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
    cache = config.cache
    directory = CachedSubscriberDirectory(
        store.pool,
        store.keys,
        store.data_keys,
        ttl=cache.ttl,
        max_entries=cache.max_entries,
        poll_interval=cache.poll_interval,
    )
    events = AuthEventWriter(
        store.pool,
        store.keys,
        store.data_keys,
        batch_size=config.events.batch_size,
        flush_interval=config.events.flush_interval,
        max_queue=config.events.max_queue,
        give_up_after=config.events.give_up_after,
    )
    accounting = AccountingWriter(
        store.pool,
        store.keys,
        store.data_keys,
        batch_size=config.accounting.batch_size,
        max_delay=config.accounting.max_delay,
    )
    try:
        spool = await asyncio.to_thread(
            Spool.open,
            config.accounting.spool_dir,
            store.masters,
            max_bytes=config.accounting.spool_max_mb << 20,
        )
    except (SpoolError, OSError) as exc:
        raise ConfigError(f"accounting.spool_dir: {exc}") from None
    spooling = SpoolingRecorder(accounting, spool, spool_after=config.accounting.spool_after)
    tracker = SessionTracker(store.keys.blind_index, usage_events=bool(config.feeds.sinks))
    sessions = SessionApplier(store.pool, tracker)
    accounting.on_commit = sessions.wake
    flags = detector = None
    if config.detect.enabled:
        flags = FlagWriter(store.pool, store.keys.epoch, store.data_keys)
        detector = Detector(config.detect, detect_keyer(store.keys.blind_index), flags)
    server = RadiusServer(
        config.server,
        clients,
        auth_handler=AccessHandler(
            directory=directory,
            events=events,
            renderer=renderer,
            settings=config.auth,
            limiter=SessionLimits(store.pool, store.keys.blind_index),
            profiler=await asyncio.to_thread(build_profiler, config.geo),
            detector=detector,
        ),
        acct_handler=AccountingHandler(recorder=spooling, directory=directory),
    )
    return Services(
        server, clients, directory, events, accounting, spooling, sessions, flags, detector
    )


def demo_message(config: Config, secret: str, password: str) -> str:
    """What ``serve --demo`` prints: the radtest line that proves the server answers."""
    port = config.server.auth_listen[0][1] if config.server.auth_listen else 1812
    line = f"radtest {DEMO_USER} {password} 127.0.0.1:{port} 0 {secret}"
    return f"Demo ready. In another terminal run:\n  {line}"


async def prepare_demo(config: Config) -> str:
    """Create the demo data before workers start; returns ``demo_message``."""
    async with open_store(config, create_master_key=True) as store:
        return demo_message(config, *await ensure_demo(store))


async def serve(config: Config, *, demo: bool = False, worker: int | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    dictionary = load_dictionaries(config.dictionary_dirs)
    async with open_store(config, create_master_key=demo) as store:
        configure_logging(
            pseudonymizer=store.keys.pseudonymizer,
            json=None if config.logging.format == "auto" else config.logging.format == "json",
            level=config.logging.level,
        )
        log = structlog.get_logger("ispcare_radius")
        if worker is not None:
            structlog.contextvars.bind_contextvars(worker=worker)
        demo_line = None
        if demo:
            demo_line = demo_message(config, *await ensure_demo(store))
        svc = await build(config, store, dictionary)
        await ensure_partitions(store.pool, now=datetime.now(UTC))
        await svc.directory.start_listening()
        svc.events.start()
        if svc.detector is not None and svc.flags is not None:
            await _rebuild_detector(store, svc.detector)
            svc.flags.start()
        svc.spooling.start()
        svc.sessions.start()
        relay = build_relay(store.pool, config.feeds)  # feeds to billing ([feeds] sinks)
        if relay is not None:
            relay.start()
        background = [
            _every(config.nas_reload_interval, lambda: _reload_nas(store, svc.clients)),
            _every(MAINTENANCE_INTERVAL, lambda: _maintenance(store, config)),
            start_stale_check(store.pool, config.accounting),
        ]
        if relay is not None:
            background.append(
                _every(MAINTENANCE_INTERVAL, lambda: prune_job(store.pool, config.feeds))
            )
        if config.cache.prewarm:
            # Serve at once; until the cache is warm, misses go to the database.
            background.append(asyncio.create_task(_prewarm(svc.directory, config)))
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP,
                lambda: asyncio.ensure_future(_reload_nas(store, svc.clients, asked=True)),
            )
        try:
            await svc.server.start()
            ports = svc.server.bound_ports
            log.info(
                "started",
                auth=[f"{h}:{p}" for h, p in ports.get("auth", [])],
                acct=[f"{h}:{p}" for h, p in ports.get("acct", [])],
                nas=len(svc.clients),
            )
            if demo_line:
                print(demo_line, flush=True)
            await svc.server.serve_forever()
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await svc.server.stop()
            await svc.spooling.close()
            await svc.accounting.close()
            await svc.sessions.close()
            if relay is not None:
                await relay.close()
            await svc.events.stop()
            if svc.flags is not None:
                await svc.flags.stop()
            await svc.directory.stop()
            log.info("stopped")
    return 0


async def _rebuild_detector(store: Store, detector: Detector) -> None:
    """Replay recent auth events into the detector before serving (store/flags.py).

    Windows and cool-downs of the previous run come back; a failure is
    logged and the detector starts empty rather than the server not at all.
    """
    log = structlog.get_logger("ispcare_radius")
    started = time.monotonic()
    try:
        count = await rebuild(store.pool, detector, now=datetime.now(UTC))
    except Exception as exc:
        log.warning("detector_rebuild_failed", error=type(exc).__name__)
        return
    log.info(
        "detector_rebuilt",
        signals=count,
        holds=detector.holds,
        seconds=round(time.monotonic() - started, 2),
    )


def _every(interval: float, job: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            await job()

    return asyncio.create_task(loop())


async def _prewarm(directory: CachedSubscriberDirectory, config: Config) -> None:
    log = structlog.get_logger("ispcare_radius")
    started = time.monotonic()
    try:
        count = await directory.prewarm(config.cache.max_entries)
    except Exception as exc:  # a cold cache is slower, not wrong
        log.warning("cache_prewarm_failed", error=type(exc).__name__)
        return
    log.info("cache_prewarmed", subscribers=count, seconds=round(time.monotonic() - started, 1))


async def _maintenance(store: Store, config: Config) -> None:
    """Partitions ahead of the clock, retention behind it."""
    log = structlog.get_logger("ispcare_radius")
    now = datetime.now(UTC)
    retention = config.retention
    try:
        await ensure_partitions(store.pool, now=now)
        dropped = await apply_retention(
            store.pool,
            now=now,
            auth_events_days=retention.auth_events_days,
            unknown_rejects_days=retention.unknown_rejects_days,
            closed_sessions_days=retention.closed_sessions_days,
            acct_records_days=retention.acct_records_days,
        )
        pruned = await prune_record_keys(
            store.pool, before=now - timedelta(days=retention.acct_duplicate_keys_days)
        )
        deleted = await apply_row_retention(
            store.pool,
            now=now,
            flags_days=retention.flags_days,
            audit_log_days=retention.audit_log_days,
        )
        destroyed = await destroy_expired_epoch_keys(
            store.pool, now=now, keep_days=epoch_keep_days(retention)
        )
        # A new primary master key (keys rotate) wraps the epoch keys made
        # from now on; destroyed epoch keys leave this process's memory too.
        store.data_keys.reload_masters()
        await refresh_epoch_keys(store.pool, store.data_keys.masters, store.keys.epoch, now=now)
    except Exception as exc:  # rows still land in the default partitions
        log.warning("maintenance_failed", error=type(exc).__name__)
    else:
        log.info(
            "maintenance",
            partitions_dropped=len(dropped),
            acct_keys_pruned=pruned,
            rows_deleted=deleted,
            epoch_keys_destroyed=len(destroyed),
        )
    await erase_due_subscribers(store, config, now=now)


def epoch_keep_days(retention: RetentionConfig) -> int:
    """How long an epoch key outlives its period: the longest retention of what it seals.

    Epoch keys seal unknown-user rejects, unattributed accounting records and
    the sessions built from them, and flags without a subscriber; once every
    such row is past its retention the key is destroyed, and with it any copy
    of those rows (crypto-shredding).
    """
    return max(
        retention.unknown_rejects_days,
        retention.acct_records_days,
        retention.closed_sessions_days,
        retention.flags_days,
    )


async def erase_due_subscribers(store: Store, config: Config, *, now: datetime) -> int:
    """The erasure job (store/lifecycle.py) with the configured grace; the count erased.

    A failed run is logged and the next maintenance run tries again: erasure
    is late then, never skipped.
    """
    log = structlog.get_logger("ispcare_radius")
    try:
        report = await erase_due(
            store.pool, store.data_keys, now=now, grace_days=config.privacy.erasure_grace_days
        )
    except Exception as exc:
        log.warning("erasure_failed", error=type(exc).__name__)
        return 0
    return len(report.erased)


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def close_stale_sessions(pool: Pool, settings: AccountingConfig, *, now: datetime) -> int:
    """One pass of the stale-session job; returns how many sessions it closed.

    A NAS that reboots without Accounting-On, or loses its link, never sends
    the Stop: without this its sessions would stay active for ever and count
    against Simultaneous-Use. Only the count is logged (no personal data);
    a failed pass is logged and the next one tries again.
    """
    log = structlog.get_logger("ispcare_radius")
    try:
        closed = await close_stale(
            pool,
            now=now,
            grace=settings.stale_grace,
            default_interval=settings.default_interim_interval,
        )
    except Exception as exc:  # sessions stay active until a pass succeeds
        log.warning("stale_sessions_failed", error=type(exc).__name__)
        return 0
    if closed:
        log.info("stale_sessions_closed", sessions=closed)
    return closed


def start_stale_check(
    pool: Pool, settings: AccountingConfig, *, clock: Callable[[], datetime] = _utc_now
) -> asyncio.Task[None]:
    """Run ``close_stale_sessions`` every ``settings.stale_check_interval`` seconds."""

    async def one_pass() -> None:
        await close_stale_sessions(pool, settings, now=clock())

    return _every(settings.stale_check_interval, one_pass)


async def _reload_nas(store: Store, clients: ClientTable, *, asked: bool = False) -> None:
    """Re-read the NAS table; a reload ``asked`` for (SIGHUP) says when it has taken effect."""
    log = structlog.get_logger("ispcare_radius")
    try:
        nas = await store.nas.list()
        clients.replace(nas)
    except Exception as exc:  # keep the old table; the next reload tries again
        log.warning("nas_reload_failed", error=type(exc).__name__)
        return
    if asked:
        log.info("nas_reloaded", nas=len(nas))
