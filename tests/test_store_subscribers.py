"""Subscriber repository against a real PostgreSQL: provisioning, encryption at rest, erasure."""

from __future__ import annotations

import ipaddress
import subprocess
import warnings
from datetime import UTC, datetime

import pytest

from ispcare_radius.aaa.model import SubscriberStatus
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store import fields
from ispcare_radius.store.db import Pool
from ispcare_radius.store.fields import IndexKind, LookupKind
from ispcare_radius.store.importer import ImportRow
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository

USER = "Synthetic.User@example.test"
PASSWORD = "pw-Zq81!synthetic"
MAC = "02:1a:2b:3c:4d:5e"
IPV4 = "203.0.113.77"


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys, actor="test")


async def add_full(repo: SubscriberRepository, pool: Pool) -> int:
    await PlanRepository(pool).add("basic", download_kbps=10_000)
    return await repo.add(
        USER,
        PASSWORD,
        plan="basic",
        expires_at=datetime(2031, 1, 2, 3, 4, tzinfo=UTC),
        static_ipv4=IPV4,
        static_ipv6_prefix="2001:db8:77::/56",
        mac_lock=MAC,
        account_ref="ACC-1",
    )


async def test_add_then_get(repo: SubscriberRepository, pg_pool: Pool) -> None:
    """A subscriber added is shown by get() with every field, but only has_password."""
    sid = await add_full(repo, pg_pool)
    view = await repo.get(USER)
    assert view is not None
    assert view.id == sid
    assert view.user_name == USER
    assert view.status is SubscriberStatus.ACTIVE
    assert view.plan == "basic"
    assert view.expires_at == datetime(2031, 1, 2, 3, 4, tzinfo=UTC)
    assert view.static_ipv4 == ipaddress.IPv4Address(IPV4)
    assert view.static_ipv6_prefix == ipaddress.IPv6Network("2001:db8:77::/56")
    assert view.mac_lock == MAC
    assert view.account_ref == "ACC-1"
    assert view.has_password is True
    assert not hasattr(view, "password")
    assert USER not in repr(view) and MAC not in repr(view) and IPV4 not in repr(view)


async def test_get_normalises_the_user_name(repo: SubscriberRepository, pg_pool: Pool) -> None:
    """get() finds the subscriber under a case/width variant of the name; unknown -> None."""
    await add_full(repo, pg_pool)
    assert await repo.get(USER.upper()) is not None
    assert await repo.get("\uff33ynthetic.User@example.test") is not None  # fullwidth S
    assert await repo.get("someone.else@example.test") is None


async def test_duplicate_user_name_refused(repo: SubscriberRepository, pg_pool: Pool) -> None:
    """A second subscriber with the same (normalised) user name raises without the value."""
    await add_full(repo, pg_pool)
    with pytest.raises(ValueError) as info:
        await repo.add(USER.lower(), "other", plan=None)
    assert str(info.value) == "user name already exists"
    count = await pg_pool.fetchval("SELECT count(*) FROM subscribers")
    assert count == 1


async def test_duplicate_mac_lock_and_static_ip_refused(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A MAC lock or static IPv4 already used by another subscriber is refused."""
    await add_full(repo, pg_pool)
    with pytest.raises(ValueError, match="MAC lock already in use"):
        await repo.add("u2", "p", plan=None, mac_lock="02-1A-2B-3C-4D-5E")
    with pytest.raises(ValueError, match="static IPv4 already in use"):
        await repo.add("u3", "p", plan=None, static_ipv4=IPV4)
    assert await repo.get("u2") is None and await repo.get("u3") is None


async def test_bad_values_refused(repo: SubscriberRepository) -> None:
    """Invalid MAC, IP, status or plan raise ValueError that does not echo the value."""
    with pytest.raises(ValueError) as info:
        await repo.add("u", "p", plan=None, mac_lock="zz:zz:secretish")
    assert "secretish" not in str(info.value)
    with pytest.raises(ValueError, match="IPv4"):
        await repo.add("u", "p", plan=None, static_ipv4="10.0.0.999")
    with pytest.raises(ValueError):
        await repo.add("u", "p", plan=None, status="sleeping")
    with pytest.raises(ValueError, match="unknown plan"):
        await repo.add("u", "p", plan="missing")


async def test_set_changes_fields(repo: SubscriberRepository, pg_pool: Pool) -> None:
    """set() changes status, plan, password, MAC and IP, and clears with None."""
    await add_full(repo, pg_pool)
    await PlanRepository(pg_pool).add("fast")
    assert await repo.set(USER, status="suspended", plan="fast", mac_lock="02:00:00:00:00:01")
    view = await repo.get(USER)
    assert view is not None
    assert (view.status, view.plan, view.mac_lock) == (
        SubscriberStatus.SUSPENDED,
        "fast",
        "02:00:00:00:00:01",
    )
    # the old MAC lock is free again, the new one is taken
    await repo.add("other", "p", plan=None, mac_lock=MAC)
    with pytest.raises(ValueError, match="MAC lock already in use"):
        await repo.add("third", "p", plan=None, mac_lock="02:00:00:00:00:01")
    assert await repo.set(USER, password=None, static_ipv4=None, plan=None, expires_at=None)
    view = await repo.get(USER)
    assert view is not None
    assert (view.has_password, view.static_ipv4, view.plan, view.expires_at) == (
        False,
        None,
        None,
        None,
    )
    assert view.updated_at >= view.created_at
    assert await repo.set("nobody", status="active") is False
    actions = await pg_pool.fetch(
        "SELECT detail FROM audit_log WHERE action = 'subscriber.set' ORDER BY time, id"
    )
    assert len(actions) == 2
    assert actions[-1]["detail"] == {"fields": ["expires_at", "password", "plan", "static_ipv4"]}


async def test_list_filters_and_pages(repo: SubscriberRepository) -> None:
    """list() returns subscribers by id, filtered by status, with limit and offset."""
    ids = [await repo.add(f"user{i}", "p", plan=None) for i in range(5)]
    await repo.set("user1", status="suspended")
    assert [v.id for v in await repo.list()] == ids
    assert [v.user_name for v in await repo.list(status="suspended")] == ["user1"]
    assert [v.id for v in await repo.list(limit=2, offset=2)] == ids[2:4]


async def test_remove_erases_row_and_lookups(repo: SubscriberRepository, pg_pool: Pool) -> None:
    """remove() deletes the row, its wrapped key and every lookup entry; the name is free."""
    sid = await add_full(repo, pg_pool)
    assert await repo.remove(USER) is True
    assert await repo.remove(USER) is False
    assert await repo.get(USER) is None
    assert await pg_pool.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await pg_pool.fetchval("SELECT count(*) FROM subscriber_lookup") == 0
    # the name, MAC and IP can be used again
    assert await repo.add(USER, "p", plan=None, mac_lock=MAC, static_ipv4=IPV4) != sid


async def test_value_copied_to_another_subscriber_fails(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A ciphertext copied into another subscriber's row does not decrypt there."""
    await add_full(repo, pg_pool)
    await repo.add("victim", "victim-pw", plan=None)
    await pg_pool.execute(
        "UPDATE subscribers SET static_ipv4_enc ="
        " (SELECT static_ipv4_enc FROM subscribers WHERE account_ref = 'ACC-1')"
        " WHERE account_ref IS NULL"
    )
    with pytest.raises(DecryptError):
        await repo.get("victim")


async def test_value_copied_to_another_column_fails(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A ciphertext moved to another column of the same row does not decrypt."""
    await add_full(repo, pg_pool)
    await pg_pool.execute("UPDATE subscribers SET user_name_enc = password_enc")
    with pytest.raises(DecryptError):
        await repo.get(USER)


def _needles() -> list[str]:
    values = [USER, PASSWORD, IPV4, MAC, "2001:db8:77::/56"]
    raw = [v.encode() for v in values] + [
        ipaddress.IPv4Address(IPV4).packed,
        bytes.fromhex(MAC.replace(":", "")),
    ]
    return values + [USER.lower()] + [r.hex() for r in raw]


async def test_no_plaintext_anywhere_in_the_database(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """No row of any table, as text, holds the user name, password, MAC or IP (or their hex)."""
    await add_full(repo, pg_pool)
    await repo.set(USER, status="suspended")
    tables = await pg_pool.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
    )
    dump: list[str] = []
    for t in tables:
        rows = await pg_pool.fetch(f'SELECT t::text AS r FROM "{t["relname"]}" t')
        dump.extend(r["r"].lower() for r in rows)
    text = "\n".join(dump)
    assert "suspended" in text  # the scan does see the rows
    for needle in _needles():
        assert needle.lower() not in text, needle


async def test_pg_dump_holds_no_plaintext(
    repo: SubscriberRepository, pg_pool: Pool, pg_dsn: str
) -> None:
    """A real pg_dump of the database holds none of the personal values."""
    with warnings.catch_warnings():  # pgserver warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH

    await add_full(repo, pg_pool)
    out = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_dump"), "--data-only", pg_dsn],
        check=True,
        capture_output=True,
    ).stdout.decode()
    assert "ACC-1" in out  # non-personal values are there
    for needle in _needles():
        assert needle.lower() not in out.lower(), needle


def test_blind_index_kinds_are_domain_separated(system_keys: SystemKeys) -> None:
    """The same bytes under two kinds (user name, MAC lock, static IPv4, device MAC) differ."""
    index = system_keys.blind_index
    value = b"abcd\x00\x01"
    blinds = {kind: fields.blind(index, kind, value) for kind in IndexKind}
    assert len(set(blinds.values())) == len(IndexKind) == 4
    assert index.full(value) not in blinds.values()
    assert fields.blind(index, LookupKind.MAC_LOCK, value) == blinds[IndexKind.MAC_LOCK]
    # the kind ends at its NUL: shifting bytes between kind and value cannot collide
    assert fields.blind(index, IndexKind.USER_NAME, b"x") != index.full(b"user_name\x00x\x00")
    searches = {fields.device_mac_search(index, bytes([0x02, 0, 0, 0, 0, i])) for i in range(64)}
    assert all(0 <= s < 2**16 for s in searches) and len(searches) > 1


async def test_equal_bytes_of_two_kinds_get_different_lookup_rows(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A user name equal to another subscriber's IPv4 or MAC bytes shares no blind index with it."""
    # "abcd" is the packed form of 97.98.99.100, "abcdef" that of 61:62:63:64:65:66.
    await repo.add("abcd", "p", plan=None, static_ipv4="97.98.99.100")
    await repo.add("abcdef", "p", plan=None, mac_lock="61:62:63:64:65:66")
    await repo.import_rows([ImportRow(user_name="wxyz", static_ipv4="119.120.121.122")])
    await repo.set("abcdef", static_ipv4="119.120.121.123")
    kinds = await pg_pool.fetch("SELECT kind, count(*) AS n FROM subscriber_lookup GROUP BY kind")
    assert {r["kind"]: r["n"] for r in kinds} == {"user_name": 3, "static_ipv4": 3, "mac_lock": 1}
    shared = await pg_pool.fetchval(
        "SELECT count(*) FROM (SELECT blind FROM subscriber_lookup"
        " GROUP BY blind HAVING count(*) > 1) s"
    )
    assert shared == 0


async def test_repointed_lookup_row_reaches_no_other_subscriber(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """A user-name lookup row repointed to another subscriber makes get/set/remove find nobody."""
    a = await repo.add("quinn", "pw-q", plan=None)
    b = await repo.add("rosa", "pw-r", plan=None)
    await pg_pool.execute(
        "UPDATE subscriber_lookup SET subscriber_id = $2"
        " WHERE kind = 'user_name' AND subscriber_id = $1",
        a,
        b,
    )
    assert await repo.get("quinn") is None
    assert await repo.set("quinn", status="suspended") is False
    assert await repo.remove("quinn") is False
    rosa = await repo.get("rosa")
    assert rosa is not None and rosa.id == b and rosa.status is SubscriberStatus.ACTIVE
