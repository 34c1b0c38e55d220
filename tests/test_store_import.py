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


async def test_csv_with_credential_binding_and_policy_columns(
    repo: SubscriberRepository, pg_pool: Pool, tmp_path: Path
) -> None:
    """nt_hash, password_hash, mac_binding, the IPv6 prefix, netmask, routes, delegated
    prefix, IPv6 address and the overrides import and read back as set."""
    from ispcare_radius.aaa.methods.credentials import ScryptCost, scrypt_hash
    from ispcare_radius.aaa.methods.mscrypto import nt_password_hash
    from ispcare_radius.aaa.model import MacBinding, Overrides

    nt = nt_password_hash("imported-Pw-1").hex()
    slow = scrypt_hash(b"imported-Pw-2", ScryptCost(n=16, r=1, p=1))
    path = tmp_path / "full.csv"
    path.write_text(
        "user_name,nt_hash,password_hash,mac_binding,mac_lock,static_ipv6_prefix,"
        "framed_netmask,framed_routes,delegated_ipv6_prefix,framed_ipv6_address,"
        "download_kbps,upload_kbps,session_timeout,idle_timeout\n"
        f"nt-only,{nt},,first_login,,2001:db8:1::/48,/29,"
        "198.51.100.0/28;203.0.113.0/29 192.0.2.1 5,2001:db8:2::/56,2001:db8::9,"
        "20000,5000,7200,600\n"
        # The scrypt text holds commas: quoted, as CSV does.
        f'slow-only,,"{slow}",lock,02:00:00:00:00:07,,,,,,,,,\n'
    )
    assert await repo.import_rows(parse_import_csv(path)) == 2
    view = await repo.get("nt-only")
    assert view is not None
    assert (view.has_password, view.has_nt_hash, view.has_slow_hash) == (False, True, False)
    assert view.methods == ("pap", "mschap", "mschapv2")
    assert (view.mac_binding, view.mac_lock) == (MacBinding.FIRST_LOGIN, None)
    assert str(view.static_ipv6_prefix) == "2001:db8:1::/48"
    assert str(view.framed_netmask) == "255.255.255.248"
    assert view.framed_routes == ("198.51.100.0/28 0.0.0.0 1", "203.0.113.0/29 192.0.2.1 5")
    assert str(view.delegated_ipv6_prefix) == "2001:db8:2::/56"
    assert str(view.framed_ipv6_address) == "2001:db8::9"
    assert view.overrides == Overrides(
        download_kbps=20000, upload_kbps=5000, session_timeout=7200, idle_timeout=600
    )
    slow_view = await repo.get("slow-only")
    assert slow_view is not None and slow_view.methods == ("pap",)
    assert (slow_view.mac_binding, slow_view.mac_lock) == (MacBinding.LOCK, "02:00:00:00:00:07")
    # No credential or address in clear in the rows.
    row = await pg_pool.fetchrow("SELECT * FROM subscribers WHERE slow_hash_enc IS NOT NULL")
    assert row is not None
    blob = b"".join(bytes(v) for v in row.values() if isinstance(v, bytes | bytearray))
    assert slow.encode() not in blob and bytes.fromhex(nt) not in blob


def test_csv_new_columns_are_checked_by_line(tmp_path: Path) -> None:
    """A credential column is needed; bad numbers name their line (the value never)."""
    cases = {
        "user_name,plan\nu,p\n": "line 1: required column password is missing",
        "user_name,nt_hash,download_kbps\nu,00,ten\n": "line 2: download_kbps is not a whole",
        "user_name,password,idle_timeout\nu,p,-5\n": "line 2: idle_timeout must not be negative",
    }
    for text, message in cases.items():
        path = tmp_path / "c.csv"
        path.write_text(text)
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            list(parse_import_csv(path))


@pytest.mark.parametrize(
    ("columns", "cells", "message"),
    [
        ("nt_hash", "abcd", "line 2: NT hash must be 32 hex digits"),
        ("password,password_hash", "p,$md5$x", "line 2: password hash is not"),
        ("password,mac_binding", "p,lock", "line 2: mac_binding lock needs a mac_lock"),
        ("password,mac_binding", "p,sometimes", "line 2: MAC binding must be one of"),
        ("password,framed_routes", "p,10.0.0.0/33", "line 2: route is not"),
    ],
)
async def test_bad_new_fields_stop_the_import_by_line(
    repo: SubscriberRepository,
    pg_pool: Pool,
    tmp_path: Path,
    columns: str,
    cells: str,
    message: str,
) -> None:
    """A malformed NT hash, scrypt string, binding or route fails the whole import,
    naming the line and never the value."""
    path = tmp_path / "bad.csv"
    path.write_text(f"user_name,{columns}\nsomeone,{cells}\n")
    with pytest.raises(ValueError, match="^" + re.escape(message)) as info:
        await repo.import_rows(parse_import_csv(path))
    if "mac_binding" not in columns:  # binding names are not personal values
        assert cells.split(",")[-1] not in str(info.value)
    assert await pg_pool.fetchval("SELECT count(*) FROM subscribers") == 0
