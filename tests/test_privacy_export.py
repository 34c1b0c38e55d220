"""Lawful export (store/export.py, ``privacy export``) and self-care (store/selfcare.py).

Data is made by the real repositories, auth-event writer and accounting
pipeline on a real PostgreSQL; the export must hold every personal value
written for the subject, decrypted, none of another subscriber's, and leave
an audit row without personal values.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ispcare_radius.aaa.accounting import AccountingHandler, AcctStatus
from ispcare_radius.aaa.methods.credentials import ScryptCost, parse_scrypt
from ispcare_radius.aaa.model import AuthEvent, AuthResult
from ispcare_radius.aaa.request import Request
from ispcare_radius.cli.main import run
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.protocol.authenticator import build_request
from ispcare_radius.protocol.codes import Code
from ispcare_radius.protocol.packet import encode_attributes, parse
from ispcare_radius.store import export, fields, selfcare
from ispcare_radius.store.accounting import AccountingWriter
from ispcare_radius.store.applier import SessionApplier
from ispcare_radius.store.db import Pool
from ispcare_radius.store.devices import DeviceRepository
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.events import AuthEventWriter
from ispcare_radius.store.fields import Column
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.nas import NasRepository
from ispcare_radius.store.sessions import SessionTracker
from ispcare_radius.store.subscribers import SubscriberRepository

SECRET = "ex-nas-secret-Rt5"
T0 = datetime(2026, 6, 1, 8, 0, 0, tzinfo=UTC)
# Synthetic values for the subject; every one must come back in the export.
ANNA = {
    "user_name": "ex-anna-k41",
    "password": "ex-pw-Zq81",
    "static_ipv4": "198.51.100.41",
    "static_ipv6_prefix": "2001:db8:41::/48",
    "mac_lock": "02:41:00:aa:bb:01",
    "framed_netmask": "255.255.255.252",
    "delegated_ipv6_prefix": "2001:db8:4100::/56",
    "framed_ipv6_address": "2001:db8:41::9",
    "account_ref": "ACC-EX-41",
}
ANNA_DEVICE = "02-41-00-AA-BB-02"
ANNA_STATION = "02-41-00-AA-BB-03"
ANNA_SESSION_ID = "ex-sess-41-a"
ANNA_FRAMED_IP = "100.64.41.7"
NAS_IP = "192.0.2.41"
BORIS = {"user_name": "ex-boris-k52", "password": "ex-pw-Yu52", "account_ref": "ACC-EX-52"}
BORIS_STATION = "02-52-00-CC-DD-01"


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def acct(status: AcctStatus, user: str, at: datetime, **extra: Any) -> list[tuple[int, bytes]]:
    attrs: list[tuple[int, bytes]] = [
        (40, u32(int(status))),
        (44, extra.get("session", ANNA_SESSION_ID).encode()),
        (1, user.encode()),
        (4, ipaddress.IPv4Address(NAS_IP).packed),
        (5, u32(extra.get("port", 3))),
        (31, extra.get("station", ANNA_STATION).encode()),
        (8, ipaddress.IPv4Address(extra.get("framed", ANNA_FRAMED_IP)).packed),
        (55, u32(int(at.timestamp()))),
    ]
    if "octets" in extra:
        attrs += [(42, u32(extra["octets"][0])), (43, u32(extra["octets"][1]))]
        attrs.append((46, u32(extra.get("seconds", 60))))
    return attrs


@dataclass
class Day:
    """A small day of data for two subscribers, made by the real writers."""

    anna: int
    boris: int
    repo: SubscriberRepository


@pytest.fixture
async def day(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> AsyncIterator[Day]:
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys, actor="test")
    anna = await repo.add(
        ANNA["user_name"],
        ANNA["password"],
        plan=None,
        static_ipv4=ANNA["static_ipv4"],
        static_ipv6_prefix=ANNA["static_ipv6_prefix"],
        mac_lock=ANNA["mac_lock"],
        framed_netmask=ANNA["framed_netmask"],
        framed_routes=["203.0.113.40/30"],
        delegated_ipv6_prefix=ANNA["delegated_ipv6_prefix"],
        framed_ipv6_address=ANNA["framed_ipv6_address"],
        account_ref=ANNA["account_ref"],
    )
    boris = await repo.add(
        BORIS["user_name"], BORIS["password"], plan=None, account_ref=BORIS["account_ref"]
    )
    await DeviceRepository(pg_pool, system_keys.blind_index, data_keys).add(
        ANNA_DEVICE, subscriber=ANNA["user_name"]
    )
    nas = await NasRepository(pg_pool, system_keys).add("ex-bras", "127.0.0.1", SECRET)
    events = AuthEventWriter(pg_pool, system_keys, data_keys)
    for sid, user, station, result in (
        (anna, ANNA["user_name"], ANNA_STATION, AuthResult.ACCEPT),
        (anna, ANNA["user_name"], ANNA_STATION, AuthResult.REJECT),
        (boris, BORIS["user_name"], BORIS_STATION, AuthResult.ACCEPT),
    ):
        events.submit(
            AuthEvent(
                time=T0,
                subscriber_id=sid,
                nas_id=nas.id,
                result=result,
                reason="ok" if result is AuthResult.ACCEPT else "bad_password",
                user_name=user,
                calling_station_id=station,
                nas_ip=NAS_IP,
            )
        )
    await events.flush()
    assert events.written == 3
    writer = AccountingWriter(pg_pool, system_keys, DataKeyCache(master_keys))
    try:
        directory = CachedSubscriberDirectory(pg_pool, system_keys, data_keys)
        clock = iter(range(int(T0.timestamp()) + 1, int(T0.timestamp()) + 100))
        handler = AccountingHandler(
            recorder=writer, directory=directory, clock=lambda: float(next(clock))
        )
        applier = SessionApplier(pg_pool, SessionTracker(system_keys.blind_index))
        packets = [
            acct(AcctStatus.START, ANNA["user_name"], T0),
            acct(AcctStatus.STOP, ANNA["user_name"], T0 + timedelta(minutes=1), octets=(10, 20)),
            acct(
                AcctStatus.START,
                BORIS["user_name"],
                T0,
                session="ex-sess-52",
                station=BORIS_STATION,
                framed="100.64.52.7",
                port=4,
            ),
        ]
        for ident, attrs in enumerate(packets):
            data = build_request(
                int(Code.ACCOUNTING_REQUEST),
                ident,
                encode_attributes(attrs),
                SECRET.encode(),
                message_authenticator=False,
            )
            reply = await handler.handle(Request(parse(data), nas, ("127.0.0.1", 41000), 0.0, None))
            assert reply.code == int(Code.ACCOUNTING_RESPONSE), reply.reason
        await applier.drain()
    finally:
        await writer.close()
    yield Day(anna, boris, repo)


async def _export(
    pool: Pool, keys: SystemKeys, data_keys: DataKeyCache, user: str, reason: str = "court-7"
) -> dict[str, Any]:
    async def find(conn: Any) -> export.Subject:
        return await export.find_by_user_name(conn, keys, data_keys, user)

    return await export.export_subject(
        pool, data_keys, find, reason=reason, actor="test-op", now=T0 + timedelta(days=1)
    )


async def _audit(pool: Pool, action: str) -> list[Any]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT actor, subscriber_id, detail FROM audit_log WHERE action = $1", action
            )
        )


async def test_export_holds_every_value_written_for_the_subject(
    day: Day, pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """Profile, devices, login history, sessions, records and usage, decrypted; nobody else's."""
    doc = await _export(pg_pool, system_keys, data_keys, ANNA["user_name"])
    text = json.dumps(doc)
    personal = [v for k, v in ANNA.items() if k != "password"]
    for value in (*personal, ANNA_SESSION_ID, ANNA_FRAMED_IP, NAS_IP, "203.0.113.40/30"):
        assert value in text, value
    # MACs are exported normalised and, for devices, as registered.
    assert "02:41:00:aa:bb:02" in text and ANNA_DEVICE in text and ANNA_STATION in text
    for value in (*BORIS.values(), BORIS_STATION, "ex-sess-52", "100.64.52.7"):
        assert value not in text, value
    # Credentials are reported, never exported.
    assert ANNA["password"] not in text
    assert doc["profile"]["credentials"] == {
        "password": True,
        "nt_hash": False,
        "scrypt_hash": False,
    }

    assert doc["subscriber_id"] == day.anna
    # Both events share T0, so their order (time, then a random id) is not fixed.
    assert sorted(e["result"] for e in doc["login_history"]) == ["accept", "reject"]
    assert {e["calling_station_id"] for e in doc["login_history"]} == {ANNA_STATION}
    [session] = doc["sessions"]
    assert session["state"] == "closed" and session["readable"] == "ok"
    assert (session["input_octets"], session["output_octets"]) == (10, 20)
    assert session["session_id"] == ANNA_SESSION_ID and session["framed_ip"] == ANNA_FRAMED_IP
    assert [r["session_id"] for r in doc["accounting_records"]] == [ANNA_SESSION_ID] * 2
    assert {u["period"] for u in doc["usage"]} >= {"day"}
    assert [d["mac"] for d in doc["devices"]] == ["02:41:00:aa:bb:02"]
    assert doc["flags"] == []  # none raised


async def test_export_writes_one_audit_row_without_personal_values(
    day: Day, pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """The audit row names the subject by id, the reason and the section counts."""
    doc = await _export(pg_pool, system_keys, data_keys, ANNA["user_name"], reason="LEA-2026-17")
    [row] = await _audit(pg_pool, export.EXPORT_ACTION)
    assert (row["actor"], row["subscriber_id"]) == ("test-op", day.anna)
    detail = row["detail"]
    assert detail["reason"] == "LEA-2026-17"
    assert detail["counts"] == export.counts({k: v for k, v in doc.items() if k != "profile"})
    assert detail["counts"]["login_history"] == 2
    text = json.dumps(detail)
    for value in (*ANNA.values(), ANNA_STATION, ANNA_SESSION_ID, ANNA_FRAMED_IP, NAS_IP):
        assert value not in text


async def test_export_needs_a_reason_and_an_existing_subject(
    day: Day, pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """No reason, an unknown name or an ambiguous account ref: nothing exported or audited."""
    with pytest.raises(ValueError, match="reason"):
        await _export(pg_pool, system_keys, data_keys, ANNA["user_name"], reason="  ")
    with pytest.raises(export.SubjectNotFound):
        await _export(pg_pool, system_keys, data_keys, "ex-nobody-00")
    await day.repo.set(BORIS["user_name"], account_ref=ANNA["account_ref"])

    async def by_ref(conn: Any) -> export.Subject:
        return await export.find_by_account_ref(conn, ANNA["account_ref"])

    with pytest.raises(export.SubjectNotFound, match="several"):
        await export.export_subject(pg_pool, data_keys, by_ref, reason="r", actor="t", now=T0)
    assert await _audit(pg_pool, export.EXPORT_ACTION) == []


class _Cli:
    def __init__(self, base: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        self.base = base
        self.capsys = capsys

    def _call(self, args: tuple[str, ...]) -> int:
        try:
            return run([*self.base, *args])
        except SystemExit as exc:
            return int(exc.code or 0)

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(self._call, args)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(
    pg_dsn: str,
    tmp_path: Path,
    master_keys: MasterKeys,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> _Cli:
    for name in ("ISPCARE_CONFIG", "ISPCARE_DSN", "ISPCARE_MASTER_KEY", "ISPCARE_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ISPCARE_STATE_DIR", str(tmp_path / "state"))
    key_file = tmp_path / "keys" / "master.json"
    return _Cli(["--dsn", pg_dsn, "--master-key-file", str(key_file)], capsys)


async def test_cli_export_writes_a_private_file_after_confirmation(
    day: Day,
    pg_pool: Pool,
    cli: _Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Typing the user name confirms; the file is 0600 JSON; an existing file is refused."""
    out = tmp_path / "export.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(ANNA["user_name"] + "\n"))
    code, _, err = await cli(
        "privacy", "export", ANNA["user_name"], "--reason", "court-9", "--out", str(out)
    )
    assert code == 0, err
    assert "Type the subject again" in err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = json.loads(out.read_text())
    assert doc["profile"]["user_name"] == ANNA["user_name"]
    assert doc["reason"] == "court-9"
    assert len(await _audit(pg_pool, export.EXPORT_ACTION)) == 1

    code, _, err = await cli(
        "privacy", "export", ANNA["user_name"], "--reason", "again", "--yes", "--out", str(out)
    )
    assert code == 1 and "exists" in err
    assert len(await _audit(pg_pool, export.EXPORT_ACTION)) == 1


async def test_cli_export_refuses_without_confirmation(
    day: Day,
    pg_pool: Pool,
    cli: _Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong confirmation exports nothing; a missing reason is an argument error."""
    out = tmp_path / "no.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO("someone-else\n"))
    code, stdout, err = await cli(
        "privacy", "export", ANNA["user_name"], "--reason", "court-9", "--out", str(out)
    )
    assert code == 1 and "not confirmed" in err
    assert not out.exists() and stdout == ""
    code, _, _ = await cli("privacy", "export", ANNA["user_name"], "--yes")
    assert code == 2
    assert await _audit(pg_pool, export.EXPORT_ACTION) == []


async def test_cli_export_by_account_ref_to_stdout(day: Day, cli: _Cli) -> None:
    """``--account-ref`` finds the subscriber; without ``--out`` the JSON goes to stdout."""
    code, out, err = await cli(
        "privacy", "export", "--account-ref", ANNA["account_ref"], "--reason", "r-1", "--yes"
    )
    assert code == 0, err
    assert json.loads(out)["subscriber_id"] == day.anna
    code, _, err = await cli("privacy", "export", "ex-nobody-00", "--reason", "r-2", "--yes")
    assert code == 1 and "no such subscriber" in err


# --- self-care ----------------------------------------------------------------


async def test_read_own_data_is_the_subjects_export(
    day: Day, pg_pool: Pool, system_keys: SystemKeys, data_keys: DataKeyCache
) -> None:
    """The subscriber sees their own decrypted data; no audit row, nothing of others."""
    own = await selfcare.read_own_data(pg_pool, system_keys, data_keys, day.anna)
    assert own["profile"]["user_name"] == ANNA["user_name"]
    assert own["profile"]["mac_lock"] == ANNA["mac_lock"]
    assert BORIS["user_name"] not in json.dumps(own)
    assert await _audit(pg_pool, export.EXPORT_ACTION) == []
    with pytest.raises(export.SubjectNotFound):
        await selfcare.read_own_data(pg_pool, system_keys, data_keys, 999_999)


async def _stored(pool: Pool, data_keys: DataKeyCache, sid: int, column: Column) -> bytes | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT wrapped_key, {column.value}_enc AS v FROM subscribers WHERE id = $1", sid
        )
    assert row is not None
    cipher = data_keys.cipher(sid, bytes(row["wrapped_key"]))
    return fields.unseal(cipher, column, sid, row["v"])


async def test_update_own_password_and_mac_lock_is_audited(
    day: Day,
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
) -> None:
    """The subscriber changes their password and replaces their device lock."""
    changed = await selfcare.update_own_data(
        pg_pool,
        system_keys,
        master_keys,
        data_keys,
        day.anna,
        changes={"password": "ex-new-Pw-77", "mac_lock": "02-41-00-aa-bb-99"},
    )
    assert changed == ["mac_lock", "password"]
    assert await _stored(pg_pool, data_keys, day.anna, Column.PASSWORD) == b"ex-new-Pw-77"
    assert await _stored(pg_pool, data_keys, day.anna, Column.MAC_LOCK) == bytes.fromhex(
        "024100aabb99"
    )
    [row] = await _audit(pg_pool, "subscriber.set")
    assert row["actor"] == f"selfcare:{day.anna}" and row["subscriber_id"] == day.anna
    assert "ex-new-Pw-77" not in json.dumps(row["detail"])
    # The new lock is what the directory sees for a login.
    view = await day.repo.get(ANNA["user_name"])
    assert view is not None and view.mac_lock == "02:41:00:aa:bb:99"


async def test_update_own_data_refuses_what_is_not_the_subscribers(
    day: Day,
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
) -> None:
    """Static IPs, a lock on an unbound line, removing an operator's lock: refused, unchanged."""

    async def update(sid: int, **changes: Any) -> list[str]:
        return await selfcare.update_own_data(
            pg_pool, system_keys, master_keys, data_keys, sid, changes=changes
        )

    with pytest.raises(PermissionError, match="static_ipv4"):
        await update(day.anna, static_ipv4="198.51.100.99")
    with pytest.raises(PermissionError, match="not bound"):
        await update(day.boris, mac_lock="02:52:00:00:00:01")
    with pytest.raises(PermissionError, match="replaced, not removed"):
        await update(day.anna, mac_lock=None)
    with pytest.raises(ValueError, match="MAC"):
        await update(day.anna, mac_lock="not-a-mac")
    with pytest.raises(ValueError, match="empty"):
        await update(day.anna, password="")
    with pytest.raises(export.SubjectNotFound):
        await update(999_999, password="x-pw-1")
    assert await _audit(pg_pool, "subscriber.set") == []
    assert await _stored(pg_pool, data_keys, day.anna, Column.PASSWORD) == ANNA["password"].encode()


async def test_update_own_data_never_lands_on_who_holds_the_name_now(
    day: Day,
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
) -> None:
    """Anna is found by id and her change is made by user name. Here her name
    has since passed to another subscriber (the state a rename in between
    leaves: her row still holds the name read, the lookup points elsewhere).
    The change is refused; neither Anna nor the newcomer is touched."""
    await pg_pool.execute(
        "DELETE FROM subscriber_lookup WHERE subscriber_id = $1 AND kind = 'user_name'", day.anna
    )
    other = await day.repo.add(ANNA["user_name"], "ex-pw-Zo77", plan=None)
    with pytest.raises(selfcare.SubjectChanged):
        await selfcare.update_own_data(
            pg_pool,
            system_keys,
            master_keys,
            data_keys,
            day.anna,
            changes={"password": "ex-new-Pw-41"},
        )
    assert await _stored(pg_pool, data_keys, other, Column.PASSWORD) == b"ex-pw-Zo77"
    assert await _stored(pg_pool, data_keys, day.anna, Column.PASSWORD) == ANNA["password"].encode()
    assert await _audit(pg_pool, "subscriber.set") == []
    # The repository's guard itself: the expected id must be the one found.
    assert not await day.repo.set(ANNA["user_name"], subscriber_id=day.anna, password="ex-pw-1")
    assert await day.repo.set(ANNA["user_name"], subscriber_id=other, password="ex-pw-Zo78")
    assert await _stored(pg_pool, data_keys, other, Column.PASSWORD) == b"ex-pw-Zo78"


async def test_update_own_password_keeps_the_credential_forms(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    data_keys: DataKeyCache,
) -> None:
    """A scrypt-only subscriber stays scrypt-only: no reversible password appears."""
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)
    cost = ScryptCost(n=2, r=1, p=1)
    from ispcare_radius.aaa.methods.credentials import scrypt_hash

    sid = await repo.add(
        "ex-scrypt-k63",
        None,
        plan=None,
        password_hash=scrypt_hash(b"ex-old-Pw-63", cost),
    )
    await selfcare.update_own_data(
        pg_pool,
        system_keys,
        master_keys,
        data_keys,
        sid,
        changes={"password": "ex-new-Pw-63"},
        scrypt_cost=cost,
    )
    assert await _stored(pg_pool, data_keys, sid, Column.PASSWORD) is None
    slow = await _stored(pg_pool, data_keys, sid, Column.SLOW_HASH)
    assert slow is not None
    assert parse_scrypt(slow.decode()).matches(b"ex-new-Pw-63")
    assert not parse_scrypt(slow.decode()).matches(b"ex-old-Pw-63")
