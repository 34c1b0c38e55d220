"""The accounting spool with real files, and its replay into a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import stat
import threading
import types
import typing
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ispcare_radius.aaa.accounting import AcctRecord, AcctStatus, Attribution, Recorded
from ispcare_radius.aaa.ports import AccountingRecorder, StoreUnavailable
from ispcare_radius.cli.config import ConfigError, load_config
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store import spoolcodec as codec
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.db import Pool
from ispcare_radius.store.durable import SpoolingRecorder, replayed_prefix
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.spool import SEGMENT_SUFFIX, Spool, SpoolError, SpoolFull
from tests.support.logwatch import watch_logs

T0 = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
MB = 1 << 20
# Synthetic personal values: none may appear in clear in the spool files.
USER = b"spool-user-Synthetic-4417"
MAC = b"02-AA-BB-CC-DD-EE"


def record(i: int) -> AcctRecord:
    """A storable Interim-Update, distinct per ``i``."""
    return AcctRecord(
        received_at=T0 + timedelta(seconds=i),
        nas_id=1,
        status=int(AcctStatus.INTERIM_UPDATE),
        event_time=T0 + timedelta(seconds=i),
        content_digest=i.to_bytes(32, "big"),
        subscriber_id=0,
        attribution=Attribution.UNKNOWN_USER,
        input_octets=i * 1000,
        output_octets=i * 10,
        session_time=i,
        session_id=b"S-%06d" % i,
        user_name=USER,
        calling_station_id=MAC,
        framed_ip="100.64.1.2",
        nas_ip="198.51.100.1",
    )


def _sample(annotation: Any, i: int) -> Any:
    """A non-default value of ``annotation``'s type, so a field the codec drops shows."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, Attribution):
        return list(annotation)[-1]
    samples: dict[Any, object] = {
        datetime: T0 + timedelta(seconds=i, microseconds=i),
        bytes: bytes(range(i % 7, i % 7 + 9)),
        bool: True,
        int: 1000 + i,
        str: f"value-{i}-\u00e9",
        float: 0.5 + i,
    }
    if annotation not in samples:
        raise AssertionError(f"test cannot fill a field of type {annotation!r}: extend _sample")
    return samples[annotation]


def every_field_record() -> AcctRecord:
    """An AcctRecord with every field set from its annotation (fields added later included)."""
    hints = typing.get_type_hints(AcctRecord)
    return AcctRecord(
        **{f.name: _sample(hints[f.name], i) for i, f in enumerate(dataclasses.fields(AcctRecord))}
    )


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def open_spool(directory: Path, masters: MasterKeys, **kwargs: Any) -> Spool:
    return Spool.open(directory, masters, max_bytes=kwargs.pop("max_bytes", 64 * MB), **kwargs)


async def drain(spool: Spool) -> list[AcctRecord]:
    """Every record left in ``spool``, marking each replayed."""
    out: list[AcctRecord] = []
    while entries := await spool.read(1000):
        out.extend(e.record for e in entries)
        await spool.advance(entries[-1])
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


# -- codec ------------------------------------------------------------------


def test_every_field_round_trips_through_the_codec() -> None:
    """Each AcctRecord field, whatever fields exist now, survives encode/decode unchanged."""
    original = every_field_record()
    assert codec.decode_record(codec.encode_record(original)) == original


def test_a_record_from_an_older_or_newer_release_still_decodes() -> None:
    """Missing fields take their defaults and unknown ones are ignored."""
    import json

    body = json.loads(codec.encode_record(record(3)))
    del body["session_time"]
    body["field_from_the_future"] = 1
    decoded = codec.decode_record(json.dumps(body).encode())
    assert decoded == dataclasses.replace(record(3), session_time=None)


# -- appends ----------------------------------------------------------------


async def test_appends_keep_order_and_are_on_disk_when_they_return(
    spool_dir: Path, master_keys: MasterKeys, tmp_path: Path
) -> None:
    """Sequence numbers follow call order; a copy taken right after the appends holds them all."""
    spool = open_spool(spool_dir, master_keys)
    seqs = await asyncio.gather(*(spool.append(record(i)) for i in range(50)))
    assert seqs == list(range(50))
    copy = tmp_path / "copy"
    shutil.copytree(spool_dir, copy, ignore=shutil.ignore_patterns("lock"))
    await spool.close()
    reopened = open_spool(copy, master_keys)
    assert reopened.pending == 50
    assert await drain(reopened) == [record(i) for i in range(50)]
    await reopened.close()


async def test_files_are_private_and_hold_no_personal_value_in_clear(
    spool_dir: Path, master_keys: MasterKeys
) -> None:
    """Directory 0700, files 0600; the user name and MAC are sealed."""
    spool = open_spool(spool_dir, master_keys)
    await spool.append(record(1))
    await spool.close()
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    for path in spool_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        data = path.read_bytes()
        assert USER not in data and MAC not in data and b"S-000001" not in data


async def test_appends_in_one_loop_turn_share_one_fsync(
    spool_dir: Path, master_keys: MasterKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 concurrent appends cost one segment creation plus one group fsync."""
    spool = open_spool(spool_dir, master_keys)
    calls: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    await asyncio.gather(*(spool.append(record(i)) for i in range(200)))
    # New segment: its temp file and directory (2); the frames themselves: 1.
    assert len(calls) == 3
    calls.clear()
    await asyncio.gather(*(spool.append(record(i)) for i in range(200, 400)))
    assert len(calls) == 1
    await spool.close()


async def test_append_returns_only_after_its_fsync(
    spool_dir: Path, master_keys: MasterKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the covering fsync is blocked, the append has not returned."""
    spool = open_spool(spool_dir, master_keys)
    await spool.append(record(0))  # creates the segment outside the blocked fsync
    entered = threading.Event()
    release = threading.Event()
    real_fsync = os.fsync

    def blocking(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", blocking)
    task = asyncio.ensure_future(spool.append(record(1)))
    assert await asyncio.to_thread(entered.wait, 10)
    assert not task.done()
    release.set()
    assert await task == 1
    await spool.close()


async def test_a_second_process_cannot_open_the_same_spool(
    spool_dir: Path, master_keys: MasterKeys
) -> None:
    """The directory lock refuses a second opener with a clear error."""
    spool = open_spool(spool_dir, master_keys)
    with pytest.raises(SpoolError, match="in use"):
        open_spool(spool_dir, master_keys)
    await spool.close()


# -- crashes ----------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 5, 17, 30])
async def test_a_torn_last_frame_is_dropped_on_open(
    spool_dir: Path, master_keys: MasterKeys, cut: int
) -> None:
    """A last frame cut short (crash mid-write) is dropped; earlier ones and new appends survive."""
    spool = open_spool(spool_dir, master_keys)
    for i in range(3):
        await spool.append(record(i))
    await spool.close()
    (path,) = segments(spool_dir)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size - cut)
    reopened = open_spool(spool_dir, master_keys)
    assert reopened.pending == 2
    assert await reopened.append(record(9)) == 2
    assert await drain(reopened) == [record(0), record(1), record(9)]
    await reopened.close()


async def test_a_segment_left_without_a_whole_frame_is_replaced(
    spool_dir: Path, master_keys: MasterKeys
) -> None:
    """A crash during the very first append leaves nothing to replay; appends go on."""
    spool = open_spool(spool_dir, master_keys)
    await spool.append(record(0))
    await spool.close()
    (path,) = segments(spool_dir)
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 3)
    reopened = open_spool(spool_dir, master_keys)
    assert reopened.pending == 0
    assert await reopened.append(record(5)) == 0
    assert await drain(reopened) == [record(5)]
    await reopened.close()


async def test_garbage_after_the_last_frame_is_dropped(
    spool_dir: Path, master_keys: MasterKeys
) -> None:
    """Bytes that never made a whole frame (bad checksum) are cut off on open."""
    spool = open_spool(spool_dir, master_keys)
    await spool.append(record(0))
    await spool.close()
    (path,) = segments(spool_dir)
    good = path.stat().st_size
    frame = bytearray(codec.encode_frame(1, b"x" * 40))
    frame[-1] ^= 0xFF
    with path.open("ab") as fh:
        fh.write(bytes(frame))
    reopened = open_spool(spool_dir, master_keys)
    assert path.stat().st_size == good
    assert await drain(reopened) == [record(0)]
    await reopened.close()


async def test_replayed_records_stay_replayed_across_restarts(
    spool_dir: Path, master_keys: MasterKeys
) -> None:
    """The replay offset is persisted; replayed segments are deleted."""
    spool = open_spool(spool_dir, master_keys, segment_bytes=2000)
    for i in range(40):
        await spool.append(record(i))
    assert len(segments(spool_dir)) > 2
    entries = await spool.read(25)
    await spool.advance(entries[-1])
    await spool.close()
    reopened = open_spool(spool_dir, master_keys, segment_bytes=2000)
    assert reopened.pending == 15
    assert await drain(reopened) == [record(i) for i in range(25, 40)]
    assert reopened.pending == 0
    assert segments(spool_dir) == []
    assert await reopened.append(record(99)) == 40
    await reopened.close()


async def test_a_full_spool_refuses_instead_of_dropping(
    spool_dir: Path, master_keys: MasterKeys
) -> None:
    """Beyond max_bytes an append raises SpoolFull (a StoreUnavailable); space frees on replay."""
    spool = open_spool(spool_dir, master_keys, max_bytes=4000)
    accepted = 0
    with pytest.raises(SpoolFull):
        for i in range(100):
            await spool.append(record(i))
            accepted += 1
    assert 0 < accepted < 100
    assert issubclass(SpoolFull, StoreUnavailable)
    assert spool.size <= 4000
    assert spool.rejected == 1
    assert await drain(spool) == [record(i) for i in range(accepted)]
    await spool.append(record(100))
    await spool.close()


# -- replay into PostgreSQL -------------------------------------------------


@pytest.fixture
async def writer(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> AsyncIterator[AccountingWriter]:
    w = AccountingWriter(pg_pool, system_keys, DataKeyCache(master_keys))
    yield w
    await w.close()


@pytest.fixture
async def other(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def row_counts(conn: asyncpg.Connection[asyncpg.Record]) -> dict[int, int]:
    rows = await conn.fetch("SELECT session_time, count(*) AS n FROM acct_records GROUP BY 1")
    return {int(r["session_time"]): int(r["n"]) for r in rows}


async def test_spooling_recorder_implements_the_port(
    writer: AccountingWriter, spool_dir: Path, master_keys: MasterKeys
) -> None:
    """SpoolingRecorder satisfies aaa.ports.AccountingRecorder (checked by mypy)."""
    spooling = SpoolingRecorder(writer, open_spool(spool_dir, master_keys))
    recorder: AccountingRecorder = spooling
    assert await recorder.record(record(1)) is Recorded.STORED
    await spooling.close()


def test_the_offset_passes_only_records_in_the_database() -> None:
    """A failure in the middle of a batch stops the offset before it."""
    ok: list[Recorded | BaseException] = [
        Recorded.STORED,
        Recorded.DUPLICATE,
        StoreUnavailable("x"),
        Recorded.STORED,
    ]
    assert replayed_prefix(ok) == 2
    assert replayed_prefix(ok[:2]) == 2
    assert replayed_prefix([Recorded.SPOOLED]) == 0


async def test_a_spool_left_by_a_previous_run_replays_once_even_twice(
    spool_dir: Path,
    master_keys: MasterKeys,
    writer: AccountingWriter,
    other: asyncpg.Connection[asyncpg.Record],
    tmp_path: Path,
) -> None:
    """Records spooled before a restart reach the database; replaying a copy adds no row."""
    spool = open_spool(spool_dir, master_keys)
    for i in range(120):
        await spool.append(record(i))
    await spool.close()
    copy = tmp_path / "copy"
    shutil.copytree(spool_dir, copy, ignore=shutil.ignore_patterns("lock"))

    for directory in (spool_dir, copy):
        recorder = SpoolingRecorder(
            writer, open_spool(directory, master_keys), batch_size=50, probe_initial=0.01
        )
        with watch_logs() as logs:
            recorder.start()
            # The replay logs as it drains: re-checked after each line.
            await logs.until(lambda r=recorder: r.replayed == 120, "the replay")  # type: ignore[misc]
        assert recorder.spool_pending == 0
        await recorder.close()
        assert await row_counts(other) == dict.fromkeys(range(120), 1)
    assert segments(spool_dir) == []


async def test_a_slow_database_spools_keeps_order_and_replays_once(
    spool_dir: Path,
    master_keys: MasterKeys,
    writer: AccountingWriter,
    other: asyncpg.Connection[asyncpg.Record],
    pg_dsn: str,
) -> None:
    """Writes blocked past spool_after are answered SPOOLED; later records follow them into
    the spool; once the database frees up every record is stored exactly once."""
    recorder = SpoolingRecorder(
        writer, open_spool(spool_dir, master_keys), spool_after=0.2, probe_initial=0.01
    )
    with watch_logs() as logs:
        recorder.start()
        assert await recorder.record(record(0)) is Recorded.STORED
        blocker: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(pg_dsn)
        try:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE acct_record_keys IN ACCESS EXCLUSIVE MODE")
            results = await asyncio.gather(*(recorder.record(record(i)) for i in range(1, 21)))
            assert results == [Recorded.SPOOLED] * 20
            # The spool still holds records: the next one joins them at once.
            assert await recorder.record(record(21)) is Recorded.SPOOLED
            assert recorder.spooled == 21
            await lock.rollback()
        finally:
            await blocker.close()
        # The replay logs as it drains: re-checked after each line.
        await logs.until(lambda: recorder.replayed == 21, "the replay")
    assert await recorder.record(record(22)) is Recorded.STORED
    await recorder.close()
    assert await row_counts(other) == dict.fromkeys(range(23), 1)
    assert recorder.spool_bytes == 0


async def test_a_closed_database_writer_spools_and_a_full_spool_refuses(
    spool_dir: Path, master_keys: MasterKeys, writer: AccountingWriter
) -> None:
    """StoreUnavailable from the writer spools the record; a full spool raises StoreUnavailable."""
    await writer.close()  # every record() now raises StoreUnavailable
    recorder = SpoolingRecorder(writer, open_spool(spool_dir, master_keys, max_bytes=3000))
    answered = 0
    with pytest.raises(StoreUnavailable):
        for i in range(100):
            assert await recorder.record(record(i)) is Recorded.SPOOLED
            answered += 1
    assert 0 < answered == recorder.spooled == recorder.spool_pending
    await recorder.close()


# -- configuration ----------------------------------------------------------


def test_spool_settings_default_under_the_state_dir(tmp_path: Path) -> None:
    """Without settings the spool lives in <state dir>/spool, 2 s bound, 1024 MB cap."""
    config = load_config(None, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert config.accounting.spool_dir == tmp_path / "spool"
    assert (config.accounting.spool_after, config.accounting.spool_max_mb) == (2.0, 1024)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("spool_after = 0", "accounting.spool_after must be positive"),
        ("spool_max_mb = -1", "accounting.spool_max_mb must be positive"),
        ("spool_max_mb = 1.5", "accounting.spool_max_mb: wrong type"),
        ('spool_after = "2"', "accounting.spool_after: wrong type"),
    ],
)
def test_bad_spool_settings_are_one_line_errors(tmp_path: Path, line: str, message: str) -> None:
    """Each bad value names its setting in a one-line ConfigError."""
    path = tmp_path / "c.toml"
    path.write_text(f"[accounting]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"ISPCARE_STATE_DIR": str(tmp_path)})
    assert str(info.value) == message
