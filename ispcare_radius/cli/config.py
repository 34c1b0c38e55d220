"""Reads the TOML configuration and the environment into each package's settings.

The composition root's half: every value is validated here, once, and a bad
one becomes a ``ConfigError`` with a one-line message naming the setting.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ispcare_radius.aaa.methods import DEFAULT_METHODS
from ispcare_radius.aaa.methods.credentials import ScryptCost
from ispcare_radius.aaa.outcome import SimultaneousUsePolicy, StoreFailureAction
from ispcare_radius.aaa.pipeline import AuthSettings
from ispcare_radius.cli.config_sections import (
    SCHEMA,
    AccountingConfig,
    CacheConfig,
    DatabaseConfig,
    EventsConfig,
    FeedsConfig,
    GeoConfig,
    LoggingConfig,
    PrivacyConfig,
    RetentionConfig,
)
from ispcare_radius.detect.settings import DetectSettings, settings_from_toml
from ispcare_radius.privacy.anon import StatsSettings
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.server.settings import ServerSettings


class ConfigError(Exception):
    """The configuration or command line is wrong; the message is one line."""


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where keys and the embedded database live unless configured."""
    if env.get("ISPCARE_STATE_DIR"):
        return Path(env["ISPCARE_STATE_DIR"])
    if os.geteuid() == 0:
        # A service's place; also keeps the embedded PostgreSQL, which opens
        # up its parent directories for its own user, out of /root.
        return Path("/var/lib/ispcare-radius")
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/root")) / ".local" / "state")
    return Path(base) / "ispcare-radius"


def ipv6_available() -> bool:
    """Whether this host can open an IPv6 UDP socket (some have IPv6 disabled)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def repo_dictionaries() -> Path:
    """The dictionaries shipped with the project."""
    return Path(__file__).resolve().parents[2] / "dictionaries"


# The [detect] settings read here; the rest of [detect] is the rules' (detect/settings.py).
GEO_KEYS = frozenset({"geoip_db", "oui_file"})


def split_detect(section: Mapping[str, Any]) -> tuple[GeoConfig, dict[str, Any]]:
    """[detect] -> (its data files, the remaining rule settings)."""
    for key in GEO_KEYS & section.keys():
        if not isinstance(section[key], str):
            raise ConfigError(f"detect.{key}: wrong type")
    geo = GeoConfig()
    db = section.get("geoip_db", "")
    if db:
        path = Path(db).expanduser()
        if not path.is_file():
            raise ConfigError(f"detect.geoip_db: {path} is not a file")
        geo = GeoConfig(geoip_db=path)
    if "oui_file" in section:
        oui = str(section["oui_file"])
        files = tuple(Path(p).expanduser() for p in oui.split(",") if p.strip()) if oui else ()
        for path in files:
            if not path.is_file():
                raise ConfigError(f"detect.oui_file: {path} is not a file")
        geo = GeoConfig(geoip_db=geo.geoip_db, oui_files=files)
    rest = {k: v for k, v in section.items() if k not in GEO_KEYS}
    return geo, rest


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings
    auth: AuthSettings
    database: DatabaseConfig
    master_key_file: Path
    dictionary_dirs: tuple[Path, ...]
    cache: CacheConfig = field(default_factory=CacheConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    # Suspicious-login rules, thresholds and actions ([detect], detect/settings.py).
    detect: DetectSettings = field(default_factory=DetectSettings)
    nas_reload_interval: float = 60.0
    # Server processes sharing the listening ports (SO_REUSEPORT); 1 = this process.
    workers: int = 1
    # Work factors of the scrypt hashes ``subscriber add/set --password-hash``
    # stores (verification reads them from each stored hash).
    password_hash: ScryptCost = field(default_factory=ScryptCost)
    # Anonymised statistics: k (never below 5) and per-subscriber caps ([stats]).
    stats: StatsSettings = field(default_factory=StatsSettings)
    # Feeds to billing: the outbox relay's sinks and retries ([feeds]).
    feeds: FeedsConfig = field(default_factory=FeedsConfig)


def parse_listen(text: str, setting: str) -> tuple[str, int]:
    """``"0.0.0.0:1812"`` or ``"[::]:1812"`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{setting}: bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{setting}: port out of range in {text!r}")
    return host, port


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except PermissionError:
        raise ConfigError(f"config file not readable: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _validate(doc: Mapping[str, Any]) -> None:
    for section, body in doc.items():
        if section == "detect":
            continue  # nested rule tables: checked by split_detect and detect.settings
        keys = SCHEMA.get(section)
        if keys is None:
            raise ConfigError(f"unknown config section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key, value in body.items():
            types = keys.get(key)
            if types is None:
                raise ConfigError(f"unknown setting {section}.{key}")
            if isinstance(value, bool) and bool not in types:
                raise ConfigError(f"{section}.{key}: wrong type")
            if not isinstance(value, types):
                raise ConfigError(f"{section}.{key}: wrong type")


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """The configuration from ``path`` (or ``$ISPCARE_CONFIG``), env and overrides."""
    env = os.environ if env is None else env
    if path is None and env.get("ISPCARE_CONFIG"):
        path = Path(env["ISPCARE_CONFIG"])
    doc: dict[str, Any] = _read_toml(path) if path is not None else {}
    _validate(doc)
    srv = dict(doc.get("server", {}))
    db = doc.get("database", {})
    auth = doc.get("auth", {})
    ev = doc.get("auth_events", {})
    acct = doc.get("accounting", {})
    ret = doc.get("retention", {})
    lg = doc.get("logging", {})
    state = default_state_dir(env)
    overrides = overrides or {}

    server_kwargs: dict[str, Any] = {}
    for key, port in (("auth_listen", 1812), ("acct_listen", 1813)):
        if key in srv:
            server_kwargs[key] = tuple(parse_listen(str(v), f"server.{key}") for v in srv[key])
        elif not ipv6_available():
            # The default listens on IPv6 too, where the host has it at all.
            server_kwargs[key] = (("0.0.0.0", port),)
    for key in (
        "reply_cache_ttl",
        "reply_cache_max",
        "max_in_flight",
        "recv_buffer_bytes",
        "reuse_port",
        "shutdown_grace",
        "log_requests",
        "reject_delay",
    ):
        if key in srv:
            server_kwargs[key] = srv[key]
    server_kwargs.update(overrides.get("server", {}))
    try:
        server = ServerSettings(**server_kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[server]: {exc}") from None

    try:
        on_failure = StoreFailureAction(auth.get("on_store_failure", "reject"))
    except ValueError:
        raise ConfigError("auth.on_store_failure must be 'reject' or 'no_reply'") from None
    try:
        limit_policy = SimultaneousUsePolicy(auth.get("simultaneous_use_policy", "reject"))
    except ValueError:
        raise ConfigError(
            "auth.simultaneous_use_policy must be 'reject' or 'disconnect_oldest'"
        ) from None
    reservation_ttl = float(auth.get("reservation_ttl", 120.0))
    if reservation_ttl <= 0:
        raise ConfigError("auth.reservation_ttl must be positive")
    try:
        auth_settings = AuthSettings(
            on_store_failure=on_failure,
            methods=tuple(str(m) for m in auth.get("methods", DEFAULT_METHODS)),
            simultaneous_use_policy=limit_policy,
            reservation_ttl=reservation_ttl,
            mac_auth_password=_mac_auth_password(auth),
        )
    except ValueError as exc:
        raise ConfigError(f"auth.methods: {exc}") from None
    try:
        default = ScryptCost()
        scrypt_cost = ScryptCost(
            n=int(auth.get("scrypt_n", default.n)),
            r=int(auth.get("scrypt_r", default.r)),
            p=int(auth.get("scrypt_p", default.p)),
        )
    except ValueError as exc:
        raise ConfigError(f"auth.scrypt_n/r/p: {exc}") from None

    dsn = overrides.get("dsn") or env.get("ISPCARE_DSN") or db.get("dsn") or None
    database = DatabaseConfig(
        dsn=dsn,
        embedded_dir=Path(db.get("embedded_dir") or state / "pgdata").expanduser(),
        pool_min=int(db.get("pool_min", 2)),
        pool_max=int(db.get("pool_max", 10)),
        command_timeout=float(db.get("command_timeout", 5.0)),
    )
    if database.pool_min < 1 or database.pool_max < database.pool_min:
        raise ConfigError("database.pool_min must be >= 1 and <= database.pool_max")
    if database.command_timeout <= 0:
        raise ConfigError("database.command_timeout must be positive")
    for name, count in (
        ("auth.cache_max_entries", auth.get("cache_max_entries", 1)),
        ("auth_events.max_queue", ev.get("max_queue", 1)),
    ):
        if int(count) < 1:
            raise ConfigError(f"{name} must be at least 1")

    key_file = (
        overrides.get("master_key_file")
        or env.get("ISPCARE_MASTER_KEY_FILE")
        or doc.get("keys", {}).get("master_key_file")
        or state / "master.key"
    )
    extra = tuple(
        Path(str(p)).expanduser() for p in doc.get("dictionaries", {}).get("extra_dirs", [])
    )
    for d in extra:
        if not d.exists():
            raise ConfigError(f"dictionaries.extra_dirs: {d} does not exist")
    fmt = str(lg.get("format", "auto"))
    if fmt not in ("auto", "json", "console"):
        raise ConfigError("logging.format must be 'auto', 'json' or 'console'")
    level = str(lg.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("logging.level must be debug, info, warning or error")
    positive = {
        "auth.cache_ttl": float(auth.get("cache_ttl", 3600.0)),
        "auth_events.flush_interval": float(ev.get("flush_interval", 0.2)),
        "auth_events.batch_size": float(ev.get("batch_size", 1000)),
        "server.nas_reload_interval": float(srv.get("nas_reload_interval", 60.0)),
        "auth.cache_poll_interval": float(auth.get("cache_poll_interval", 5.0)),
        "auth_events.give_up_after": float(ev.get("give_up_after", 300.0)),
        "accounting.batch_size": float(acct.get("batch_size", 500)),
        "accounting.max_delay": float(acct.get("max_delay", 0.005)),
        "accounting.spool_after": float(acct.get("spool_after", 2.0)),
        "accounting.spool_max_mb": float(acct.get("spool_max_mb", 1024)),
        "retention.auth_events_days": float(ret.get("auth_events_days", 180)),
        "retention.unknown_rejects_days": float(ret.get("unknown_rejects_days", 7)),
        "retention.acct_duplicate_keys_days": float(ret.get("acct_duplicate_keys_days", 30)),
        "retention.closed_sessions_days": float(ret.get("closed_sessions_days", 400)),
        "retention.acct_records_days": float(ret.get("acct_records_days", 400)),
        "retention.flags_days": float(ret.get("flags_days", 365)),
        "retention.audit_log_days": float(ret.get("audit_log_days", 730)),
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive")
    stale_interval, stale_grace, default_interim = _stale_settings(acct)
    return Config(
        server=server,
        auth=auth_settings,
        database=database,
        master_key_file=Path(key_file).expanduser(),
        dictionary_dirs=(repo_dictionaries(), *extra),
        cache=CacheConfig(
            ttl=positive["auth.cache_ttl"],
            max_entries=int(auth.get("cache_max_entries", 200_000)),
            prewarm=bool(auth.get("cache_prewarm", True)),
            poll_interval=positive["auth.cache_poll_interval"],
        ),
        events=EventsConfig(
            batch_size=int(ev.get("batch_size", 1000)),
            flush_interval=positive["auth_events.flush_interval"],
            max_queue=int(ev.get("max_queue", 100_000)),
            give_up_after=positive["auth_events.give_up_after"],
        ),
        accounting=AccountingConfig(
            batch_size=int(positive["accounting.batch_size"]),
            max_delay=positive["accounting.max_delay"],
            stale_check_interval=stale_interval,
            stale_grace=stale_grace,
            default_interim_interval=default_interim,
            spool_dir=Path(acct.get("spool_dir") or state / "spool").expanduser(),
            spool_after=positive["accounting.spool_after"],
            spool_max_mb=int(positive["accounting.spool_max_mb"]),
        ),
        retention=RetentionConfig(
            auth_events_days=int(positive["retention.auth_events_days"]),
            unknown_rejects_days=int(positive["retention.unknown_rejects_days"]),
            acct_duplicate_keys_days=int(positive["retention.acct_duplicate_keys_days"]),
            closed_sessions_days=int(positive["retention.closed_sessions_days"]),
            acct_records_days=int(positive["retention.acct_records_days"]),
            flags_days=int(positive["retention.flags_days"]),
            audit_log_days=int(positive["retention.audit_log_days"]),
        ),
        privacy=_privacy(doc.get("privacy", {})),
        logging=LoggingConfig(level=level, format=fmt),
        geo=_geo(doc),
        detect=_detect(doc),
        nas_reload_interval=positive["server.nas_reload_interval"],
        workers=_workers(srv.get("workers", 1)),
        password_hash=scrypt_cost,
        stats=_stats(doc.get("stats", {})),
        feeds=feeds_config(doc.get("feeds", {}), state, env),
    )


MAX_WORKERS = 64


def _workers(value: object) -> int:
    """``[server] workers``: a count, or "auto" for one per CPU."""
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f'server.workers must be "auto" or a number from 1 to {MAX_WORKERS}')
    return value


def _privacy(section: Mapping[str, Any]) -> PrivacyConfig:
    """[privacy]: the erasure grace, 0 to 3650 days."""
    grace = int(section.get("erasure_grace_days", 30))
    if not 0 <= grace <= 3650:
        raise ConfigError("privacy.erasure_grace_days must be between 0 and 3650")
    return PrivacyConfig(erasure_grace_days=grace)


def _stats(section: Mapping[str, Any]) -> StatsSettings:
    """[stats]: k (at least 5: a lower k is refused, never clamped) and the caps."""
    try:
        return StatsSettings(**{k: int(v) for k, v in section.items()})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _geo(doc: Mapping[str, Any]) -> GeoConfig:
    section = doc.get("detect", {})
    if not isinstance(section, dict):
        raise ConfigError("[detect] must be a table")
    return split_detect(section)[0]


def _detect(doc: Mapping[str, Any]) -> DetectSettings:
    """[detect] rule settings (detect/settings.py checks them), without the data files."""
    section = doc.get("detect", {})
    if not isinstance(section, dict):
        raise ConfigError("[detect] must be a table")
    try:
        return settings_from_toml(split_detect(section)[1])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _mac_auth_password(auth: Mapping[str, Any]) -> Secret | None:
    """``auth.mac_auth_password`` as a ``Secret`` (never printed); None when unset or empty."""
    value = str(auth.get("mac_auth_password", ""))
    return Secret(value) if value else None


def _stale_settings(acct: Mapping[str, Any]) -> tuple[float, int, int]:
    """(stale_check_interval, stale_grace, default_interim_interval) from [accounting].

    RFC 2869 section 5.16: a NAS uses no interim interval below 60 seconds,
    so a smaller default would close live sessions. The upper bounds keep
    2 x interval + grace well inside the database's integer seconds.
    """
    interval = float(acct.get("stale_check_interval", 60.0))
    if interval <= 0:
        raise ConfigError("accounting.stale_check_interval must be positive")
    grace = int(acct.get("stale_grace", 120))
    if not 0 <= grace <= 7 * 86_400:
        raise ConfigError("accounting.stale_grace must be between 0 and 604800 seconds")
    default_interim = int(acct.get("default_interim_interval", 600))
    if not 60 <= default_interim <= 86_400:
        raise ConfigError(
            "accounting.default_interim_interval must be between 60 and 86400 seconds"
        )
    return interval, grace, default_interim


FEED_SINKS = ("webhook", "ndjson")


def feeds_config(section: Mapping[str, Any], state: Path, env: Mapping[str, str]) -> FeedsConfig:
    """[feeds], checked; the secret may come from ``$ISPCARE_FEED_WEBHOOK_SECRET`` instead."""
    sinks = tuple(str(s) for s in section.get("sinks", []))
    for sink in sinks:
        if sink not in FEED_SINKS:
            raise ConfigError(f"feeds.sinks: unknown sink {sink!r} (webhook, ndjson)")
    url = str(section.get("webhook_url", "")) or None
    secret_text = env.get("ISPCARE_FEED_WEBHOOK_SECRET") or str(section.get("webhook_secret", ""))
    secret = Secret(secret_text) if secret_text else None
    if "webhook" in sinks:
        if url is None or not url.startswith(("http://", "https://")):
            raise ConfigError("feeds.webhook_url: an http:// or https:// URL is needed")
        if secret is None or len(secret) < 16:
            raise ConfigError("feeds.webhook_secret: at least 16 characters are needed")
    config = FeedsConfig(
        sinks=sinks,
        webhook_url=url,
        webhook_secret=secret,
        webhook_timeout=float(section.get("webhook_timeout", 10.0)),
        max_attempts=int(section.get("max_attempts", 12)),
        backoff_base=float(section.get("backoff_base", 5.0)),
        backoff_max=float(section.get("backoff_max", 3600.0)),
        batch_size=int(section.get("batch_size", 100)),
        poll_interval=float(section.get("poll_interval", 5.0)),
        ndjson_dir=Path(section.get("ndjson_dir") or state / "feed").expanduser(),
        keep_days=int(section.get("keep_days", 30)),
    )
    if min(config.webhook_timeout, config.backoff_base, config.poll_interval) <= 0:
        raise ConfigError("feeds.webhook_timeout, backoff_base and poll_interval must be positive")
    if config.backoff_max < config.backoff_base:
        raise ConfigError("feeds.backoff_max must not be below feeds.backoff_base")
    if config.max_attempts < 1 or config.batch_size < 1 or config.keep_days < 1:
        raise ConfigError("feeds.max_attempts, batch_size and keep_days must be at least 1")
    return config
