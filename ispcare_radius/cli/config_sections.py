"""The configuration file's shape: the settings each section may hold, and their values.

``SCHEMA`` gives each section's settings and their types, checked by
``cli/config.py`` before any value is read; the dataclasses are the frozen
values of the sections that no package's own settings object covers.
Imports privacy.secret only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ispcare_radius.privacy.secret import Secret


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    dsn: str | None
    embedded_dir: Path
    pool_min: int = 2
    pool_max: int = 10
    command_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class CacheConfig:
    ttl: float = 3600.0
    max_entries: int = 200_000
    prewarm: bool = True
    poll_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    # The stale-session job: runs every stale_check_interval seconds and closes
    # sessions silent for 2 x interim interval + stale_grace seconds, with
    # default_interim_interval for sessions whose plan sets none.
    stale_check_interval: float = 60.0
    stale_grace: int = 120
    default_interim_interval: int = 600
    batch_size: int = 500
    max_delay: float = 0.005
    spool_dir: Path = Path("spool")
    spool_after: float = 2.0
    spool_max_mb: int = 1024


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    auth_events_days: int = 180
    unknown_rejects_days: int = 7
    acct_duplicate_keys_days: int = 30
    closed_sessions_days: int = 400
    # The raw accounting log (partitions dropped), suspicious-login flags and
    # the audit log (batched deletes: neither is partitioned by day).
    acct_records_days: int = 400
    flags_days: int = 365
    audit_log_days: int = 730


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    # Days between deactivation and erasure (crypto-shredding); 0 erases at
    # the next run of the job.
    erasure_grace_days: int = 30


@dataclass(frozen=True, slots=True)
class EventsConfig:
    batch_size: int = 1000
    flush_interval: float = 0.2
    max_queue: int = 100_000
    give_up_after: float = 300.0


@dataclass(frozen=True, slots=True)
class GeoConfig:
    """[detect] data files: a GeoIP City/Country database, the IEEE MAC registry.

    ``geoip_db`` None: logins are placed by their NAS location only.
    ``oui_files`` None: Debian's ieee-data registries where installed; ():
    no MAC vendor.
    """

    geoip_db: Path | None = None
    oui_files: tuple[Path, ...] | None = None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto | json | console


@dataclass(frozen=True, slots=True)
class FeedsConfig:
    """[feeds]: where the outbox relay delivers (store/feeds.py) and how it retries.

    No sink enabled: usage changes are not queued as events (they would only
    pile up; billing reads the usage tables through the feed_usage view);
    quota, flag and status events still are.
    """

    sinks: tuple[str, ...] = ()
    webhook_url: str | None = field(default=None, repr=False)
    webhook_secret: Secret | None = None
    webhook_timeout: float = 10.0
    max_attempts: int = 12
    backoff_base: float = 5.0
    backoff_max: float = 3600.0
    batch_size: int = 100
    poll_interval: float = 5.0
    ndjson_dir: Path = Path("feed")
    keep_days: int = 30


# section -> key -> expected Python type(s); anything else is an error.
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "server": {
        "auth_listen": (list,),
        "acct_listen": (list,),
        "reply_cache_ttl": (int, float),
        "reply_cache_max": (int,),
        "max_in_flight": (int,),
        "recv_buffer_bytes": (int,),
        "reuse_port": (bool,),
        "shutdown_grace": (int, float),
        "log_requests": (bool,),
        "reject_delay": (int, float),
        "nas_reload_interval": (int, float),
        "workers": (int, str),
    },
    "database": {
        "dsn": (str,),
        "embedded_dir": (str,),
        "pool_min": (int,),
        "pool_max": (int,),
        "command_timeout": (int, float),
    },
    "keys": {"master_key_file": (str,)},
    "dictionaries": {"extra_dirs": (list,)},
    "auth": {
        "on_store_failure": (str,),
        "cache_ttl": (int, float),
        "cache_max_entries": (int,),
        "cache_prewarm": (bool,),
        "cache_poll_interval": (int, float),
        "methods": (list,),
        "simultaneous_use_policy": (str,),
        "mac_auth_password": (str,),
        "scrypt_n": (int,),
        "scrypt_r": (int,),
        "scrypt_p": (int,),
        "reservation_ttl": (int, float),
    },
    "auth_events": {
        "batch_size": (int,),
        "flush_interval": (int, float),
        "max_queue": (int,),
        "give_up_after": (int, float),
    },
    "accounting": {
        "batch_size": (int,),
        "stale_check_interval": (int, float),
        "stale_grace": (int,),
        "default_interim_interval": (int,),
        "max_delay": (int, float),
        "spool_dir": (str,),
        "spool_after": (int, float),
        "spool_max_mb": (int,),
    },
    "retention": {
        "auth_events_days": (int,),
        "unknown_rejects_days": (int,),
        "acct_duplicate_keys_days": (int,),
        "closed_sessions_days": (int,),
        "acct_records_days": (int,),
        "flags_days": (int,),
        "audit_log_days": (int,),
    },
    "privacy": {"erasure_grace_days": (int,)},
    "stats": {
        "k": (int,),
        "max_sessions": (int,),
        "max_bytes": (int,),
        "max_seconds": (int,),
        "release_delay": (int,),
    },
    "logging": {"level": (str,), "format": (str,)},
    "feeds": {
        "sinks": (list,),
        "webhook_url": (str,),
        "webhook_secret": (str,),
        "webhook_timeout": (int, float),
        "max_attempts": (int,),
        "backoff_base": (int, float),
        "backoff_max": (int, float),
        "batch_size": (int,),
        "poll_interval": (int, float),
        "ndjson_dir": (str,),
        "keep_days": (int,),
    },
}
