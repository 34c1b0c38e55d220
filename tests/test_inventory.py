"""The data inventory (store/inventory.py) against the live schema, and ``privacy inventory``.

The registry must declare every column of every table the migrations create,
so a column added without a declaration fails here; and what it declares
must hold: nothing personal is stored in plaintext.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ispcare_radius.cli.main import run
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store import fields, inventory
from ispcare_radius.store.db import Pool
from ispcare_radius.store.inventory import Classification, Protection
from ispcare_radius.store.sessions import SEALED

_SEALING = {
    Protection.SUBSCRIBER_KEY,
    Protection.SUBSCRIBER_OR_EPOCH,
    Protection.EPOCH_KEY,
    Protection.SYSTEM_KEY,
    Protection.MASTER_KEY,
}


async def test_every_live_column_is_declared_and_every_declaration_is_live(
    pg_pool: Pool,
) -> None:
    """After all migrations, the registry and the catalog list the same columns."""
    async with pg_pool.acquire() as conn:
        live = await inventory.live_columns(conn)
    assert "subscribers" in live and "sessions_closed" in live
    assert inventory.undeclared(live) == [], "declare these in store/inventory.py"
    assert inventory.stale(live) == [], "these declarations name no live column"


async def test_a_column_added_without_a_declaration_is_caught(pg_pool: Pool) -> None:
    """A new column, or a new table, shows up as undeclared; partitions do not."""
    async with pg_pool.acquire() as conn:
        await conn.execute("ALTER TABLE subscribers ADD COLUMN phone_enc bytea")
        await conn.execute("CREATE TABLE notes (subscriber_id bigint, body text)")
        await conn.execute(
            "CREATE TABLE auth_events_p20990101 PARTITION OF auth_events"
            " FOR VALUES FROM ('2099-01-01') TO ('2099-01-02')"
        )
        live = await inventory.live_columns(conn)
    assert inventory.undeclared(live) == [
        "notes.body",
        "notes.subscriber_id",
        "subscribers.phone_enc",
    ]


def test_no_personal_column_is_stored_in_plaintext() -> None:
    """Personal columns are sealed or blind indexes; sealed columns are declared personal."""
    for table, col in inventory.personal_columns():
        assert col.protection in _SEALING | {Protection.BLIND_INDEX}, f"{table}.{col.name}"
    for decl in inventory.TABLES:
        for col in decl.columns:
            if col.name.endswith("_enc") and col.protection is not Protection.SYSTEM_KEY:
                assert col.classification is Classification.PERSONAL, f"{decl.name}.{col.name}"
                assert col.protection in _SEALING, f"{decl.name}.{col.name}"
            if col.name.endswith("_blind"):
                assert col.protection is Protection.BLIND_INDEX, f"{decl.name}.{col.name}"


def test_sealed_columns_come_from_the_code_that_seals_them() -> None:
    """Every subscriber field the repository seals, and every sealed session field,
    is declared under the key it is sealed with."""
    subscribers = inventory.BY_NAME["subscribers"]
    for column in fields.Column:
        assert subscribers.column(f"{column.value}_enc").protection is Protection.SUBSCRIBER_KEY
    for table in ("sessions_active", "sessions_closed", "acct_records"):
        for name in SEALED:
            decl = inventory.BY_NAME[table].column(f"{name}_enc")
            assert decl.protection is Protection.SUBSCRIBER_OR_EPOCH
    for name in ("user_name", "calling_station_id", "nas_ip"):
        assert inventory.BY_NAME["auth_events"].column(f"{name}_enc").protection is (
            Protection.SUBSCRIBER_KEY
        )
        assert inventory.BY_NAME["auth_rejects_unknown"].column(f"{name}_enc").protection is (
            Protection.EPOCH_KEY
        )


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = run(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def base_args(
    pg_dsn: str,
    tmp_path: Path,
    master_keys: MasterKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> list[str]:
    for name in ("ISPCARE_CONFIG", "ISPCARE_DSN", "ISPCARE_MASTER_KEY", "ISPCARE_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ISPCARE_STATE_DIR", str(tmp_path / "state"))
    config = tmp_path / "inv.toml"
    config.write_text("[retention]\nauth_events_days = 42\n")
    return [
        "--config",
        str(config),
        "--dsn",
        pg_dsn,
        "--master-key-file",
        str(tmp_path / "keys" / "master.json"),
    ]


async def test_cli_prints_every_personal_column_with_protection_and_retention(
    base_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``privacy inventory`` lists each declared column, and the configured retention."""
    code, out, err = await asyncio.to_thread(_run, capsys, *base_args, "privacy", "inventory")
    assert code == 0, err
    blocks = {block.splitlines()[0].split(":")[0]: block for block in out.strip().split("\n\n")}
    assert set(blocks) == {t.name for t in inventory.TABLES}
    for table, col in inventory.personal_columns():
        line = next(line for line in blocks[table].splitlines() if line.split()[:1] == [col.name])
        assert "personal" in line and col.protection.value in line
    assert "auth_events: retention 42 days ([retention] auth_events_days)" in out
    assert "auth_rejects_unknown: retention 7 days ([retention] unknown_rejects_days)" in out

    code, only, _ = await asyncio.to_thread(
        _run, capsys, *base_args, "privacy", "inventory", "--personal"
    )
    assert code == 0
    assert "plans:" not in only and "subscribers:" in only
    assert " analytics " not in only and "user_name_enc" in only


async def test_cli_check_fails_on_an_undeclared_column(
    base_args: list[str], pg_pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """``privacy inventory --check`` exits 0 on the migrated schema, 1 after a stray column."""
    code, _, err = await asyncio.to_thread(
        _run, capsys, *base_args, "privacy", "inventory", "--check"
    )
    assert code == 0, err
    async with pg_pool.acquire() as conn:
        await conn.execute("ALTER TABLE devices ADD COLUMN owner_name text")
    code, _, err = await asyncio.to_thread(
        _run, capsys, *base_args, "privacy", "inventory", "--check"
    )
    assert code == 1
    assert "undeclared column: devices.owner_name" in err
