"""The stale-session job of ``serve``: its settings, and that its loop closes silent sessions.

The job runs ``store.sessions.close_stale`` on a timer; the tests drive it
with a short interval and a clock they set, wait for the pass's log line
(no sleeping for time to pass), then read the result from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ispcare_radius.cli.config import ConfigError, load_config
from ispcare_radius.cli.config_sections import AccountingConfig
from ispcare_radius.cli.serve import close_stale_sessions, start_stale_check
from ispcare_radius.store.db import Pool, connect
from tests.support.logwatch import watch_logs

T0 = datetime(2030, 5, 6, 7, 0, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, text: str | None) -> AccountingConfig:
    cfg = None
    if text is not None:
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
    return load_config(cfg, env={"ISPCARE_STATE_DIR": str(tmp_path)}).accounting


def test_stale_settings_default_and_load(tmp_path: Path) -> None:
    """Defaults: every 60 s, 120 s grace, 600 s without a plan interval; 400 days of history."""
    defaults = load(tmp_path, None)
    assert (
        defaults.stale_check_interval,
        defaults.stale_grace,
        defaults.default_interim_interval,
    ) == (60.0, 120, 600)
    shipped = load_config(ROOT / "config" / "ispcare-radius.toml", env={"ISPCARE_STATE_DIR": "/x"})
    assert shipped.accounting.stale_grace == 120 and shipped.retention.closed_sessions_days == 400
    assert load_config(None, env={"ISPCARE_STATE_DIR": "/x"}).retention.closed_sessions_days == 400
    custom = load(
        tmp_path,
        "[accounting]\nstale_check_interval = 0.5\nstale_grace = 0\n"
        "default_interim_interval = 60\n",
    )
    assert (custom.stale_check_interval, custom.stale_grace, custom.default_interim_interval) == (
        0.5,
        0,
        60,
    )
    cfg = tmp_path / "r.toml"
    cfg.write_text("[retention]\nclosed_sessions_days = 730\n")
    assert load_config(cfg, env={}).retention.closed_sessions_days == 730


@pytest.mark.parametrize(
    ("section", "line", "setting"),
    [
        ("accounting", "stale_check_interval = 0", "stale_check_interval"),
        ("accounting", "stale_check_interval = -1.5", "stale_check_interval"),
        ("accounting", 'stale_check_interval = "60"', "stale_check_interval"),
        ("accounting", "stale_grace = -1", "stale_grace"),
        ("accounting", "stale_grace = 1.5", "stale_grace"),
        ("accounting", "stale_grace = 604801", "stale_grace"),
        ("accounting", "default_interim_interval = 59", "default_interim_interval"),
        ("accounting", "default_interim_interval = 86401", "default_interim_interval"),
        ("accounting", "default_interim_interval = true", "default_interim_interval"),
        ("retention", "closed_sessions_days = 0", "closed_sessions_days"),
        ("retention", "closed_sessions_days = 400.5", "closed_sessions_days"),
    ],
)
def test_bad_stale_settings_are_one_line_config_errors(
    tmp_path: Path, section: str, line: str, setting: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match=rf"{section}\.{setting}") as info:
        load_config(cfg, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert "\n" not in str(info.value)


async def add_active(
    pool: Pool, *, last_seen: datetime, interim_interval: int | None = None
) -> uuid.UUID:
    row_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO sessions_active (id, subscriber_id, session_key, nas_id, started_at,"
        " updated_at, last_seen, start_seen, interim_interval)"
        " VALUES ($1, 7, $2, 1, $3, $3, $3, true, $4)",
        row_id,
        uuid.uuid4().bytes,
        last_seen,
        interim_interval,
    )
    return row_id


async def test_the_serve_job_closes_a_stale_session_and_logs_the_count(pg_pool: Pool) -> None:
    """Silent past 2 x interval + grace: closed as stale by the running job; others stay."""
    stale = await add_active(pg_pool, last_seen=T0 - timedelta(seconds=2 * 600 + 121))
    # Just inside the default's bound, and inside a plan's longer interval.
    fresh = await add_active(pg_pool, last_seen=T0 - timedelta(seconds=2 * 600 + 119))
    slow = await add_active(pg_pool, last_seen=T0 - timedelta(hours=1), interim_interval=3600)
    settings = AccountingConfig(
        stale_check_interval=0.01, stale_grace=120, default_interim_interval=600
    )
    with watch_logs() as watch:
        job = start_stale_check(pg_pool, settings, clock=lambda: T0)
        try:
            # A pass logs its count once its transaction has committed.
            await watch.wait_for("stale_sessions_closed", timeout=10)
        finally:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    logs = watch.entries
    [row] = await pg_pool.fetch("SELECT id, close_reason, stopped_at FROM sessions_closed")
    assert (row["id"], row["close_reason"]) == (stale, "stale")
    assert row["stopped_at"] == T0 - timedelta(seconds=2 * 600 + 121)  # its last event
    left = {r["id"] for r in await pg_pool.fetch("SELECT id FROM sessions_active")}
    assert left == {fresh, slow}
    closed_logs = [e for e in logs if e["event"] == "stale_sessions_closed"]
    assert closed_logs and closed_logs[0]["sessions"] == 1
    assert set(closed_logs[0]) == {"event", "sessions", "log_level"}


async def test_a_failed_pass_is_logged_and_the_job_goes_on(pg_dsn: str) -> None:
    """A pass that cannot reach the database logs the error class and returns 0."""
    pool = await connect(pg_dsn, min_size=1, max_size=1)
    await pool.close()
    with capture_logs() as logs:
        closed = await close_stale_sessions(pool, AccountingConfig(), now=T0)
    assert closed == 0
    assert [e["event"] for e in logs] == ["stale_sessions_failed"]
