"""Key hierarchy life cycle on a real PostgreSQL: KEK rotation (re-wrap), data-key
re-encryption (interrupted and resumed), KEK retirement, epoch keys per period
and their destruction (crypto-shredding), and the ``keys`` commands."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ispcare_radius.cli.main import run
from ispcare_radius.privacy.crypto import (
    DecryptError,
    DecryptFailure,
    FieldCipher,
    key_version,
    unwrap_payload,
    wrap_payload,
)
from ispcare_radius.privacy.keys import MasterKeys, add_key_version, load_master_keys
from ispcare_radius.store import fields, rotation
from ispcare_radius.store.db import Pool
from ispcare_radius.store.devices import DeviceRepository
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import (
    DataKeyCache,
    SystemKeys,
    destroy_expired_epoch_keys,
    live_subscriber_ciphers,
    load_system_keys,
    refresh_epoch_keys,
    subscriber_key_purpose,
    unwrap_data_key,
)
from ispcare_radius.store.subscribers import SubscriberRepository

# Synthetic subscribers: (user name, password, static IPv4, device MAC).
PEOPLE = [(f"user{i}@example.test", f"pw-{i}-secret", f"10.9.0.{i + 1}", i) for i in range(6)]


def _mac(i: int) -> str:
    return f"02:00:5e:00:01:{i:02x}"


@pytest.fixture
def key_path(tmp_path: Path, master_keys: MasterKeys) -> Path:
    # conftest's master_keys fixture wrote this file.
    return tmp_path / "keys" / "master.json"


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys)


async def _people(repo: SubscriberRepository, devices: DeviceRepository) -> dict[str, int]:
    ids = {}
    for name, password, ip, i in PEOPLE:
        await repo.add(name, password, plan=None, static_ipv4=ip, mac_lock=_mac(100 + i))
        await devices.add(_mac(i), subscriber=name)
        view = await repo.get(name)
        assert view is not None
        ids[name] = view.id
    return ids


async def _seal_rows(pool: Pool, data_keys: DataKeyCache, sid: int, n: int) -> None:
    """Accounting, session, auth-event and flag rows sealed with the subscriber's key,
    the way their writers seal them (same associated data)."""
    wrapped = await pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
    cipher = data_keys.cipher(sid, bytes(wrapped))
    now = datetime.now(UTC)
    for spec in rotation.SUBSCRIBER_TABLES:
        if spec.table == "devices":
            continue
        for k in range(n):
            row: dict[str, Any] = {
                "id": uuid.uuid4() if spec.table != "flags" else None,
                "rule": "burst",
                "subject_kind": "account",
                "subject": bytes([sid % 256, k]),
                "bucket": k,
            }
            values = {
                f"{c}_enc": cipher.seal(
                    f"{spec.table}-{c}-{sid}-{k}".encode(), spec.aad(row, c, sid)
                )
                for c in spec.columns
            }
            await _insert(pool, spec.table, sid, row, values, now - timedelta(minutes=k))


async def _insert(
    pool: Any, table: str, sid: int, row: dict[str, Any], values: dict[str, bytes], at: datetime
) -> None:
    base: dict[str, Any]
    if table == "auth_events":
        base = {"time": at, "id": row["id"], "nas_id": 1, "result": "reject"}
        base |= {"reason": "bad_password", "method": "pap"}
    elif table == "acct_records":
        base = {"time": at, "id": row["id"], "attribution": "subscriber", "nas_id": 1}
        base |= {"status_type": 3, "record_key": uuid.uuid4().bytes, "event_time": at}
    elif table in ("sessions_active", "sessions_closed"):
        base = {"id": row["id"], "session_key": uuid.uuid4().bytes, "nas_id": 1}
        base |= {"started_at": at, "updated_at": at, "last_seen": at, "start_seen": True}
        if table == "sessions_closed":
            base |= {"stopped_at": at, "close_reason": "stop"}
    else:  # flags
        base = {"time": at, "rule": row["rule"], "severity": "low", "score": 1.0}
        base |= {"action": "flag", "subject_kind": "account", "subject": row["subject"]}
        base |= {"bucket": row["bucket"]}
    columns = {"subscriber_id": sid, **base, **values}
    names = ", ".join(columns)
    marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
    await pool.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", *columns.values())


async def _open_everything(pool: Pool, sid: int, cipher: FieldCipher) -> int:
    """Open every sealed value of ``sid`` with ``cipher``; the number opened."""
    opened = 0
    row = await pool.fetchrow("SELECT * FROM subscribers WHERE id = $1", sid)
    assert row is not None
    for column in fields.Column:
        blob = row[f"{column.value}_enc"]
        if blob is not None:
            cipher.open(bytes(blob), fields.aad(column, sid))
            opened += 1
    for spec in rotation.SUBSCRIBER_TABLES:
        for r in await pool.fetch(f"SELECT * FROM {spec.table} WHERE subscriber_id = $1", sid):
            for c in spec.columns:
                if r[f"{c}_enc"] is not None:
                    cipher.open(bytes(r[f"{c}_enc"]), spec.aad(r, c, sid))
                    opened += 1
    return opened


# --- KEK rotation ---------------------------------------------------------------


async def test_rotate_rewraps_everything_and_a_running_server_follows(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    key_path: Path,
    repo: SubscriberRepository,
) -> None:
    """After a rotation every key is under the new KEK; a server started before it
    (old key ring, reload wired) still authenticates everyone; one without the
    reload cannot unwrap the re-wrapped keys."""
    devices = DeviceRepository(pg_pool, system_keys.blind_index, DataKeyCache(master_keys))
    await _people(repo, devices)
    server_keys = DataKeyCache(master_keys, reload=lambda: load_master_keys(key_path, env={}))
    stale_keys = DataKeyCache(master_keys)
    server = CachedSubscriberDirectory(pg_pool, system_keys, server_keys, poll_interval=None)
    stale = CachedSubscriberDirectory(pg_pool, system_keys, stale_keys, poll_interval=None)

    assert add_key_version(key_path) == 2
    rotated = load_master_keys(key_path, env={})
    seen: list[int] = []
    report = await rotation.rewrap_all(pg_pool, rotated, batch_size=4, progress=seen.append)
    assert (report.subscribers, report.system_keys, report.remaining) == (len(PEOPLE), 3, 0)
    assert report.epoch_keys == 2 and sum(seen) == len(PEOPLE) and not report.failed
    for table in ("subscribers", "system_keys", "epoch_keys"):
        versions = await pg_pool.fetch(f"SELECT DISTINCT kek_version FROM {table}")
        assert [r["kek_version"] for r in versions] == [2], table
    for wrapped in await pg_pool.fetch("SELECT wrapped_key FROM subscribers"):
        assert key_version(bytes(wrapped["wrapped_key"])) == 2

    for name, password, _, _ in PEOPLE:
        subscriber = await server.by_user_name(name)
        assert subscriber is not None and subscriber.password is not None
        assert subscriber.password.reveal() == password.encode()
    assert server_keys.masters.primary_version == 2
    with pytest.raises(Exception) as caught:
        await stale.by_user_name(PEOPLE[0][0])
    assert isinstance(caught.value.__cause__, DecryptError)
    # System and epoch keys load under the new ring alone.
    fresh = await load_system_keys(pg_pool, MasterKeys(2, {2: rotated.keys[2]}))
    assert fresh.nas.open(system_keys.nas.seal(b"s", b"a"), b"a") == b"s"
    assert fresh.epoch.open(system_keys.epoch.seal(b"e", b"a"), b"a") == b"e"
    audit = await pg_pool.fetch("SELECT action FROM audit_log WHERE action LIKE 'keys.%'")
    assert {r["action"] for r in audit} == {"keys.rotate_start", "keys.rotate"}


class _Stop(Exception):
    pass


async def test_rotate_stopped_half_way_resumes(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    key_path: Path,
    repo: SubscriberRepository,
) -> None:
    """A rotation killed after its first batch has committed that batch; the next
    run re-wraps only what is left."""
    devices = DeviceRepository(pg_pool, system_keys.blind_index, DataKeyCache(master_keys))
    await _people(repo, devices)
    add_key_version(key_path)
    rotated = load_master_keys(key_path, env={})

    def crash(n: int) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        await rotation.rewrap_all(pg_pool, rotated, batch_size=2, progress=crash)
    assert await rotation.unfinished_rotation(pg_pool, 2) == len(PEOPLE) - 2
    report = await rotation.rewrap_all(pg_pool, rotated, batch_size=2)
    assert report.subscribers == len(PEOPLE) - 2 and report.remaining == 0
    cache = DataKeyCache(rotated)
    for row in await pg_pool.fetch("SELECT id, wrapped_key FROM subscribers"):
        cipher = cache.cipher(row["id"], bytes(row["wrapped_key"]))
        assert await _open_everything(pg_pool, row["id"], cipher) >= 3


# --- data-key re-encryption -----------------------------------------------------


async def test_reencrypt_interrupted_then_resumed_uses_only_new_keys(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    repo: SubscriberRepository,
) -> None:
    """Every subscriber gets data key version 2; every value in every table opens
    with it, and none opens with the old key (even forced to the new version)."""
    writer_keys = DataKeyCache(master_keys)
    devices = DeviceRepository(pg_pool, system_keys.blind_index, writer_keys)
    ids = await _people(repo, devices)
    old_keys: dict[int, bytes] = {}
    before: dict[int, int] = {}
    for sid in ids.values():
        await _seal_rows(pg_pool, writer_keys, sid, 3)
        wrapped = await pg_pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
        old_keys[sid] = unwrap_payload(
            master_keys, bytes(wrapped), purpose=subscriber_key_purpose(sid)
        )
        before[sid] = await _open_everything(pg_pool, sid, writer_keys.cipher(sid, bytes(wrapped)))
    assert all(n > 3 * 20 for n in before.values())

    marked, resumed = await rotation.start_reencrypt(pg_pool)
    assert (marked, resumed) == (len(PEOPLE), False)
    first = await rotation.reencrypt_pending(pg_pool, master_keys, batch_size=2, limit=3)
    assert first.subscribers == 3 and first.pending == len(PEOPLE) - 3
    # Restarted: nothing new is marked, the rest is done.
    assert await rotation.start_reencrypt(pg_pool) == (len(PEOPLE) - 3, True)
    second = await rotation.reencrypt_pending(pg_pool, master_keys, batch_size=2)
    assert second.subscribers == len(PEOPLE) - 3 and second.pending == 0
    assert first.values + second.values == sum(before.values())

    reader_keys = DataKeyCache(master_keys)
    for sid in ids.values():
        row = await pg_pool.fetchrow(
            "SELECT wrapped_key, data_key_version, reencrypt_pending FROM subscribers"
            " WHERE id = $1",
            sid,
        )
        assert row is not None
        assert (row["data_key_version"], row["reencrypt_pending"]) == (2, False)
        new = reader_keys.cipher(sid, bytes(row["wrapped_key"]))
        assert new.version == 2
        assert await _open_everything(pg_pool, sid, new) == before[sid]
        with pytest.raises(DecryptError) as wrong_version:
            await _open_everything(pg_pool, sid, FieldCipher(old_keys[sid], 1))
        assert wrong_version.value.reason is DecryptFailure.KEY_VERSION
        with pytest.raises(DecryptError) as wrong_key:
            await _open_everything(pg_pool, sid, FieldCipher(old_keys[sid], 2))
        assert wrong_key.value.reason is DecryptFailure.AUTHENTICATION
    # The production readers follow: the repository, the device list, the directory.
    name, password, ip, i = PEOPLE[0]
    view = await repo.get(name)
    assert view is not None and str(view.static_ipv4) == ip
    assert [d.mac for d in await devices.list(subscriber=name)] == [_mac(i)]
    directory = CachedSubscriberDirectory(pg_pool, system_keys, writer_keys, poll_interval=None)
    found = await directory.by_user_name(name)
    assert found is not None and found.password is not None
    assert found.password.reveal() == password.encode()
    audit = await pg_pool.fetch(
        "SELECT action, detail FROM audit_log WHERE action LIKE 'keys.reencrypt%' ORDER BY id"
    )
    assert [r["action"] for r in audit] == [
        "keys.reencrypt_start",
        "keys.reencrypt",
        "keys.reencrypt",
    ]


async def _acct_row(conn: Any, cipher: FieldCipher, sid: int, text: bytes) -> None:
    spec = next(t for t in rotation.SUBSCRIBER_TABLES if t.table == "acct_records")
    row = {"id": uuid.uuid4()}
    values = {"user_name_enc": cipher.seal(text, spec.aad(row, "user_name", sid))}
    await _insert(conn, "acct_records", sid, row, values, datetime.now(UTC))


async def test_write_in_flight_is_skipped_then_reencrypted(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, repo: SubscriberRepository
) -> None:
    """A writer holding the subscriber row (FOR KEY SHARE, sealing with the old key)
    makes the re-encryption pass that subscriber by; the next pass re-seals what
    the writer committed."""
    writer_keys = DataKeyCache(master_keys)
    ids = await _people(repo, DeviceRepository(pg_pool, system_keys.blind_index, writer_keys))
    sid = ids[PEOPLE[1][0]]
    await rotation.start_reencrypt(pg_pool)
    async with pg_pool.acquire() as conn, conn.transaction():
        ciphers, _ = await live_subscriber_ciphers(conn, writer_keys, [sid])
        assert ciphers[sid].version == 1
        await _acct_row(conn, ciphers[sid], sid, b"in-flight")
        first = await rotation.reencrypt_pending(pg_pool, master_keys)
        assert first.subscribers == len(PEOPLE) - 1 and first.pending == 1
    second = await rotation.reencrypt_pending(pg_pool, master_keys)
    assert second.subscribers == 1 and second.pending == 0
    wrapped = await pg_pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
    new = DataKeyCache(master_keys).cipher(sid, bytes(wrapped))
    assert new.version == 2 and await _open_everything(pg_pool, sid, new) > 0


async def test_writer_waiting_on_a_reencryption_seals_with_the_new_key(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, repo: SubscriberRepository
) -> None:
    """A writer that reaches the subscriber row while it is being re-keyed waits
    for the commit and then gets the new key, even from a cache holding the old."""
    import asyncio

    writer_keys = DataKeyCache(master_keys)
    ids = await _people(repo, DeviceRepository(pg_pool, system_keys.blind_index, writer_keys))
    sid = ids[PEOPLE[2][0]]
    tables = list(rotation.SUBSCRIBER_TABLES)
    enc = ", ".join(f"{c.value}_enc" for c in fields.Column)
    written = asyncio.Event()

    async def writer() -> int:
        async with pg_pool.acquire() as conn, conn.transaction():
            ciphers, _ = await live_subscriber_ciphers(conn, writer_keys, [sid])
            await _acct_row(conn, ciphers[sid], sid, b"after-rekey")
            written.set()
            return ciphers[sid].version

    async with pg_pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(
                f"SELECT id, wrapped_key, data_key_version, {enc} FROM subscribers"
                " WHERE id = $1 FOR UPDATE",
                sid,
            )
            task = asyncio.create_task(writer())
            deadline = asyncio.get_running_loop().time() + 10
            waiting = 0
            while not waiting and asyncio.get_running_loop().time() < deadline:
                waiting = await conn.fetchval(  # the writer waits on the row lock
                    "SELECT count(*) FROM pg_locks"
                    " WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                )
            assert waiting, "the writer never waited for the re-encryption's lock"
            assert not written.is_set()
            await rotation._reencrypt_one(conn, master_keys, row, tables)
        assert await asyncio.wait_for(task, 10) == 2
    wrapped = await pg_pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
    new = DataKeyCache(master_keys).cipher(sid, bytes(wrapped))
    assert await _open_everything(pg_pool, sid, new) > 0


async def test_reencrypt_commits_each_subscriber_and_pages_their_rows(
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    repo: SubscriberRepository,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the re-encryption waits on one subscriber's rows, the subscribers
    before it are already committed: an accounting writer waits for at most
    one subscriber, never a batch. Rows are read a page at a time (pages of
    2 here) and every page is re-sealed with the new key."""
    import asyncio

    # Long enough that the wait below is seen before the re-encryption gives up.
    monkeypatch.setattr(rotation, "_LOCK_TIMEOUT", "60s")
    writer_keys = DataKeyCache(master_keys)
    ids = await _people(repo, DeviceRepository(pg_pool, system_keys.blind_index, writer_keys))
    order = sorted(ids.values())
    before: dict[int, int] = {}
    for sid in order:
        await _seal_rows(pg_pool, writer_keys, sid, 5)
        wrapped = await pg_pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
        before[sid] = await _open_everything(pg_pool, sid, writer_keys.cipher(sid, bytes(wrapped)))
    held = order[3]
    await rotation.start_reencrypt(pg_pool)
    loop = asyncio.get_running_loop()
    async with pg_pool.acquire() as blocker:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "SELECT 1 FROM acct_records WHERE subscriber_id = $1 FOR UPDATE", held
        )
        task = asyncio.create_task(
            rotation.reencrypt_pending(pg_pool, master_keys, batch_size=100, chunk_rows=2)
        )
        deadline = loop.time() + 10
        waiting = 0
        while not waiting and loop.time() < deadline and not task.done():
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
        assert waiting, "the re-encryption never waited for the held rows"
        done = await pg_pool.fetch(
            "SELECT id FROM subscribers WHERE NOT reencrypt_pending ORDER BY id"
        )
        await tx.commit()
    assert [int(r["id"]) for r in done] == order[:3]
    report = await asyncio.wait_for(task, 30)
    assert (report.subscribers, report.pending, report.skipped) == (len(PEOPLE), 0, [])
    assert report.values == sum(before.values())
    for sid in order:
        wrapped = await pg_pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
        new = DataKeyCache(master_keys).cipher(sid, bytes(wrapped))
        assert new.version == 2
        assert await _open_everything(pg_pool, sid, new) == before[sid]


async def test_reencrypt_marks_named_subscribers_even_when_resuming(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, repo: SubscriberRepository
) -> None:
    """``keys reencrypt --subscriber-id N`` with a stopped run still pending: the
    run is resumed and N is done too, not silently left out."""
    ids = await _people(
        repo, DeviceRepository(pg_pool, system_keys.blind_index, DataKeyCache(master_keys))
    )
    order = sorted(ids.values())
    assert await rotation.start_reencrypt(pg_pool, subscriber_ids=order[:2]) == (2, False)
    assert await rotation.start_reencrypt(pg_pool, subscriber_ids=[order[4]]) == (3, True)
    # Naming an already pending subscriber adds nothing.
    assert await rotation.start_reencrypt(pg_pool, subscriber_ids=[order[0]]) == (3, True)
    assert await rotation.start_reencrypt(pg_pool) == (3, True)
    report = await rotation.reencrypt_pending(pg_pool, master_keys)
    assert (report.subscribers, report.pending) == (3, 0)
    rows = await pg_pool.fetch("SELECT id FROM subscribers WHERE data_key_version = 2 ORDER BY id")
    assert [int(r["id"]) for r in rows] == [order[0], order[1], order[4]]
    audit = await pg_pool.fetch(
        "SELECT detail FROM audit_log WHERE action = 'keys.reencrypt_start' ORDER BY id"
    )
    assert [r["detail"] for r in audit] == [{"subscribers": 2}, {"subscribers": 1, "resumed": 2}]


async def test_new_subscribers_record_the_master_key_that_wrapped_them(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, key_path: Path
) -> None:
    """A process that re-read the key file after ``keys rotate`` added version 2
    wraps new data keys under 2, and ``kek_version`` says 2 (not the version
    loaded at start), so ``keys retire 1`` does not count them nor miss them."""
    from ispcare_radius.store.importer import ImportRow

    cache = DataKeyCache(master_keys, reload=lambda: load_master_keys(key_path, env={}))
    repo = SubscriberRepository(pg_pool, system_keys, master_keys, cache)
    assert add_key_version(key_path) == 2
    assert cache.reload_masters()
    await repo.add("fresh@example.test", "pw-fresh-secret", plan=None)
    assert await repo.import_rows([ImportRow(user_name="bulk@example.test", password="pw-b")]) == 1
    rows = await pg_pool.fetch("SELECT kek_version, wrapped_key FROM subscribers")
    assert len(rows) == 2
    for row in rows:
        assert key_version(bytes(row["wrapped_key"])) == row["kek_version"] == 2
    assert (await rotation.kek_usage(pg_pool, 1))["data_keys"] == 0


async def test_every_sealed_column_has_a_known_key(pg_pool: Pool) -> None:
    """Each ``*_enc`` column in the schema is either re-encrypted with its
    subscriber's data key or listed with the key that seals it: a new sealed
    column cannot be forgotten by the re-encryption."""
    rows = await pg_pool.fetch(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN pg_class t ON t.relname = c.table_name AND NOT t.relispartition"
        " WHERE c.table_schema = 'public' AND c.column_name LIKE '%\\_enc'"
    )
    known = {("subscribers", f"{c.value}_enc") for c in fields.Column}
    known |= {(t.table, f"{c}_enc") for t in rotation.SUBSCRIBER_TABLES for c in t.columns}
    known |= set(rotation.OTHER_SEALED)
    found = {(r["table_name"], r["column_name"]) for r in rows}
    assert found - known == set()
    assert ("subscribers", "password_enc") in found


# --- epoch keys -----------------------------------------------------------------


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_epoch_keys_rotate_monthly_and_expire(pg_pool: Pool, master_keys: MasterKeys) -> None:
    """Data sealed in January opens in February (and in another process); once
    its key expires and is destroyed it no longer opens anywhere."""
    clock = _Clock(datetime(2026, 1, 20, 12, tzinfo=UTC))
    keys = await load_system_keys(pg_pool, master_keys, clock=clock)
    assert keys.epoch.version == 202601
    january = keys.epoch.seal(b"unknown-user-jan", b"aad")
    assert key_version(january) == 202601

    clock.now = datetime(2026, 2, 3, tzinfo=UTC)  # the month turned: no database needed
    assert keys.epoch.version == 202602
    february = keys.epoch.seal(b"unknown-user-feb", b"aad")
    assert key_version(february) == 202602
    assert keys.epoch.open(january, b"aad") == b"unknown-user-jan"
    await refresh_epoch_keys(pg_pool, master_keys, keys.epoch, now=clock.now)
    assert 202603 in keys.epoch.versions()
    other = await load_system_keys(pg_pool, master_keys, clock=clock)
    assert other.epoch.open(january, b"aad") == b"unknown-user-jan"

    # Retention of epoch-sealed data: 30 days after a period ends.
    early = await destroy_expired_epoch_keys(
        pg_pool, now=datetime(2026, 3, 2, tzinfo=UTC), keep_days=30
    )
    assert early == []
    later = datetime(2026, 3, 5, tzinfo=UTC)
    assert await destroy_expired_epoch_keys(pg_pool, now=later, keep_days=30) == ["2026-01"]
    await refresh_epoch_keys(pg_pool, master_keys, keys.epoch, now=later)
    with pytest.raises(DecryptError) as shredded:
        keys.epoch.open(january, b"aad")
    assert shredded.value.reason is DecryptFailure.KEY_VERSION
    clock.now = later
    restarted = await load_system_keys(pg_pool, master_keys, clock=clock)
    with pytest.raises(DecryptError):
        restarted.epoch.open(january, b"aad")
    assert restarted.epoch.open(february, b"aad") == b"unknown-user-feb"
    audit = await pg_pool.fetchval(
        "SELECT detail FROM audit_log WHERE action = 'keys.epoch_destroy'"
    )
    assert audit["periods"] == ["2026-01"]


async def test_epoch_data_moved_to_the_current_key_survives_the_old_one(
    pg_pool: Pool, master_keys: MasterKeys
) -> None:
    """``keys reencrypt --epoch``: January's unknown-user rejects and unattributed
    accounting are re-sealed under February's key and outlive January's key."""
    from ispcare_radius.store.events import UNKNOWN_TABLE, event_aad

    clock = _Clock(datetime(2026, 1, 20, tzinfo=UTC))
    keys = await load_system_keys(pg_pool, master_keys, clock=clock)
    reject_id = uuid.uuid4()
    await pg_pool.execute(
        "INSERT INTO auth_rejects_unknown (time, id, nas_id, reason, method, user_name_enc)"
        " VALUES ($1, $2, 1, 'unknown_user', 'pap', $3)",
        clock.now,
        reject_id,
        keys.epoch.seal(
            b"nobody@example.test", event_aad(UNKNOWN_TABLE, "user_name", reject_id, None)
        ),
    )
    await _acct_row(pg_pool, keys.epoch, 0, b"unattributed")
    clock.now = datetime(2026, 2, 2, tzinfo=UTC)
    await refresh_epoch_keys(pg_pool, master_keys, keys.epoch, now=clock.now)

    report = await rotation.reencrypt_epoch_data(pg_pool, keys.epoch, batch_size=1)
    assert (report.version, report.values, report.unreadable) == (202602, 2, 0)
    again = await rotation.reencrypt_epoch_data(pg_pool, keys.epoch)
    assert again.values == 0
    later = datetime(2026, 3, 5, tzinfo=UTC)
    assert await destroy_expired_epoch_keys(pg_pool, now=later, keep_days=30) == ["2026-01"]
    await refresh_epoch_keys(pg_pool, master_keys, keys.epoch, now=later)
    blob = await pg_pool.fetchval("SELECT user_name_enc FROM auth_rejects_unknown")
    aad = event_aad(UNKNOWN_TABLE, "user_name", reject_id, None)
    assert key_version(bytes(blob)) == 202602
    assert keys.epoch.open(bytes(blob), aad) == b"nobody@example.test"
    spec = next(t for t in rotation.SUBSCRIBER_TABLES if t.table == "acct_records")
    row = await pg_pool.fetchrow("SELECT id, user_name_enc FROM acct_records")
    assert row is not None
    opened = keys.epoch.open(bytes(row["user_name_enc"]), spec.aad(row, "user_name", 0))
    assert opened == b"unattributed"


async def test_legacy_epoch_key_still_opens_its_data(
    pg_pool: Pool, master_keys: MasterKeys
) -> None:
    """The single epoch key of earlier releases (version 1, moved to epoch_keys by
    migration 0010) opens what it sealed, and stops sealing."""
    from ispcare_radius.privacy.crypto import new_data_key, wrap_key

    key = new_data_key()
    now = datetime.now(UTC)
    await pg_pool.execute(
        "INSERT INTO epoch_keys (version, period, starts_at, ends_at, wrapped)"
        " VALUES (1, 'legacy-v1', $1, $2, $3)",
        now - timedelta(days=400),
        now - timedelta(days=40),
        wrap_key(master_keys, key, purpose="system:epoch"),
    )
    old_blob = FieldCipher(key, 1).seal(b"old reject", b"aad")
    keys = await load_system_keys(pg_pool, master_keys)
    assert keys.epoch.open(old_blob, b"aad") == b"old reject"
    assert keys.epoch.version != 1
    # Its retention (7 days after it stopped sealing) is over; the current
    # month's key, whatever day of the month this runs, is still in use.
    assert await destroy_expired_epoch_keys(pg_pool, now=now, keep_days=7) == ["legacy-v1"]


def test_data_key_payload_names_its_version(master_keys: MasterKeys) -> None:
    """A version-1 key is wrapped bare (as before re-encryption existed); later
    versions carry their number, so ``wrapped_key`` alone builds the right cipher."""
    cache = DataKeyCache(master_keys)
    wrapped1, _ = cache.new_key(5)
    wrapped3, c3 = cache.new_key(5, version=3)
    assert len(unwrap_payload(master_keys, wrapped1, purpose="subscriber:5")) == 32
    assert unwrap_data_key(master_keys, 5, wrapped3).version == 3
    blob = c3.seal(b"v", b"a")
    assert DataKeyCache(master_keys).cipher(5, wrapped3).open(blob, b"a") == b"v"
    assert DataKeyCache(master_keys).cipher(5, wrapped1).version == 1
    with pytest.raises(DecryptError):
        unwrap_data_key(master_keys, 6, wrapped3)  # another subscriber's key


def test_master_keys_reload_is_rate_limited(key_path: Path, master_keys: MasterKeys) -> None:
    """A cache re-reads the key file after a rotation, at most once per interval."""
    now = [100.0]
    cache = DataKeyCache(
        master_keys,
        reload=lambda: load_master_keys(key_path, env={}),
        reload_interval=5.0,
        clock=lambda: now[0],
    )
    add_key_version(key_path)
    assert cache.reload_masters() and cache.masters.primary_version == 2
    add_key_version(key_path)
    now[0] += 1
    assert not cache.reload_masters() and cache.masters.primary_version == 2
    now[0] += 5
    assert cache.reload_masters() and cache.masters.primary_version == 3
    assert DataKeyCache(master_keys).reload_masters() is False  # nothing to reload from


# --- the commands ---------------------------------------------------------------


def _keys_cli(dsn: str, key_path: Path, *args: str) -> int:
    try:
        return run(["--dsn", dsn, "--master-key-file", str(key_path), "keys", *args])
    except SystemExit as exc:  # die(): one line on stderr, then exit
        return int(exc.code or 0)


async def test_keys_commands_rotate_retire_status(
    pg_dsn: str,
    pg_pool: Pool,
    system_keys: SystemKeys,
    master_keys: MasterKeys,
    key_path: Path,
    repo: SubscriberRepository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """retire refuses (one line, exit 1, with counts) while version 1 wraps
    anything, and destroys it after ``rotate``; ``status`` shows the counts."""
    import asyncio

    for name in ("ISPCARE_CONFIG", "ISPCARE_MASTER_KEY", "ISPCARE_DSN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ISPCARE_STATE_DIR", str(tmp_path / "state"))
    devices = DeviceRepository(pg_pool, system_keys.blind_index, DataKeyCache(master_keys))
    ids = await _people(repo, devices)

    def cli(*args: str) -> int:
        return _keys_cli(pg_dsn, key_path, *args)

    loop_free = asyncio.to_thread
    assert await loop_free(cli, "retire", "1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the primary" in err[0]

    assert await loop_free(cli, "rotate", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "version 2 added" in out and f"{len(PEOPLE)} data keys" in out

    # A key wrapped under version 1 appears (a process that had not re-read the file).
    sid = ids[PEOPLE[0][0]]
    wrapped = await pg_pool.fetchval("SELECT wrapped_key FROM subscribers WHERE id = $1", sid)
    purpose = subscriber_key_purpose(sid)
    key = unwrap_payload(load_master_keys(key_path, env={}), bytes(wrapped), purpose=purpose)
    await pg_pool.execute(
        "UPDATE subscribers SET wrapped_key = $2, kek_version = 1 WHERE id = $1",
        sid,
        wrap_payload(master_keys, key, purpose=purpose),
    )
    assert await loop_free(cli, "retire", "1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "still in use (1 data keys, 0 system keys" in err[0]
    assert await loop_free(cli, "rotate", "--no-progress") == 1  # unfinished: --resume first
    capsys.readouterr()
    assert await loop_free(cli, "rotate", "--resume", "--no-progress") == 0
    assert await loop_free(cli, "retire", "1") == 0
    assert "destroyed" in capsys.readouterr().out
    assert sorted(load_master_keys(key_path, env={}).keys) == [2]
    assert await loop_free(cli, "status") == 0
    out = capsys.readouterr().out
    assert f"version 2: {len(PEOPLE)} data keys, 3 system keys, 2 epoch keys" in out
    actions = await pg_pool.fetch("SELECT action FROM audit_log WHERE action = 'keys.retire'")
    assert len(actions) == 1

    assert await loop_free(cli, "reencrypt", "--no-progress", "--limit", "2") == 1
    assert "2 subscribers re-encrypted" in capsys.readouterr().out
    assert await loop_free(cli, "reencrypt", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "resuming" in out and f"{len(PEOPLE) - 2} subscribers re-encrypted" in out
    assert await loop_free(cli, "status") == 0
    assert f"data key versions: v2: {len(PEOPLE)}" in capsys.readouterr().out
