"""Bulk subscriber import: CSV parsing and batched encrypted COPY into a real PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Pool
from ispcare_radius.store.importer import ImportRow, parse_import_csv
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository

HEADER = "user_name,password,plan,status,expires_at,static_ipv4,mac_lock,account_ref\n"


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)


def write_csv(path: Path, count: int, *, extra: str = "") -> Path:
    lines = [HEADER]
    for i in range(count):
        mac = f"02:00:00:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
        ip = f"10.{i >> 16 & 0xFF}.{i >> 8 & 0xFF}.{i & 0xFF}"
        status = "suspended" if i % 10 == 0 else "active"
        lines.append(f"user{i:06d},pw{i},basic,{status},2030-01-01T00:00:00Z,{ip},{mac},A{i}\n")
    lines.append(extra)
    path.write_text("".join(lines))
    return path


async def test_import_2000_rows(repo: SubscriberRepository, pg_pool: Pool, tmp_path: Path) -> None:
    """2,000 CSV rows import in batches, reporting progress, and read back decrypted."""
    await PlanRepository(pg_pool).add("basic")
    seen: list[int] = []
    count = await repo.import_rows(
        parse_import_csv(write_csv(tmp_path / "s.csv", 2000)), progress=seen.append, batch_size=500
    )
    assert count == 2000
    assert seen == [500, 1000, 1500, 2000]
    assert await pg_pool.fetchval("SELECT count(*) FROM subscribers") == 2000
    assert await pg_pool.fetchval("SELECT count(*) FROM subscriber_lookup") == 6000
    view = await repo.get("USER001234")
    assert view is not None
    assert (view.user_name, view.plan, view.account_ref) == ("user001234", "basic", "A1234")
    assert view.mac_lock == "02:00:00:00:04:d2"
    assert str(view.static_ipv4) == "10.0.4.210"
    assert view.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert len(await repo.list(status="suspended", limit=1000)) == 200


async def test_bad_line_is_named(repo: SubscriberRepository, pg_pool: Pool, tmp_path: Path) -> None:
    """A bad MAC on one line fails the whole import with that line number, not the value."""
    await PlanRepository(pg_pool).add("basic")
    path = write_csv(tmp_path / "s.csv", 10, extra="baduser,pw,basic,active,,,not-a-mac,\n")
    with pytest.raises(ValueError) as info:
        await repo.import_rows(parse_import_csv(path))
    assert str(info.value).startswith("line 12:")
    assert "not-a-mac" not in str(info.value) and "baduser" not in str(info.value)
    assert await pg_pool.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_duplicate_inside_import_names_both_lines(
    repo: SubscriberRepository, tmp_path: Path
) -> None:
    """A user name repeated (in another case) inside one file names the line it repeats."""
    path = tmp_path / "d.csv"
    path.write_text("user_name,password\nalice,a\nbob,b\nALICE,c\n")
    with pytest.raises(ValueError, match=r"^line 4: user name repeats line 2$"):
        await repo.import_rows(parse_import_csv(path), batch_size=1)


async def test_duplicate_against_existing_rows(
    repo: SubscriberRepository, pg_pool: Pool, tmp_path: Path
) -> None:
    """A user name that already exists in the database fails the import at its line."""
    await repo.add("carol", "x", plan=None)
    path = tmp_path / "d.csv"
    path.write_text("user_name,password\ndave,a\ncarol,b\n")
    with pytest.raises(ValueError, match=r"^line 3: user name already exists$"):
        await repo.import_rows(parse_import_csv(path))
    assert await pg_pool.fetchval("SELECT count(*) FROM subscribers") == 1


def test_csv_header_and_line_errors(tmp_path: Path) -> None:
    """Missing required columns, unknown columns, bad dates and field counts are line-numbered."""
    cases = {
        "user_name\nx\n": "line 1: required column password is missing",
        "user_name,password,colour\n": "line 1: unknown column(s) colour",
        "user_name,password,expires_at\nu,p,tomorrow\n": "line 2: expires_at is not an ISO",
        "user_name,password\nu,p\nv\n": "line 3: expected 2 fields, got 1",
        "user_name,password\n,p\n": "line 2: user_name is empty",
    }
    for text, message in cases.items():
        path = tmp_path / "c.csv"
        path.write_text(text)
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            list(parse_import_csv(path))


def test_csv_minimal_columns(tmp_path: Path) -> None:
    """A file with only user_name and password gives rows with the other fields unset."""
    path = tmp_path / "m.csv"
    path.write_text("password,user_name\n\n s3cret ,émile\nx,y\n")
    rows = list(parse_import_csv(path))
    assert rows == [
        ImportRow(user_name="émile", password=" s3cret ", line=3),
        ImportRow(user_name="y", password="x", line=4),
    ]
    assert "émile" not in repr(rows[0]) and "s3cret" not in repr(rows[0])
