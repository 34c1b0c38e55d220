"""Reply-policy fields in PostgreSQL: plan hours/garden/IPv6, subscriber addressing, overrides."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ispcare_radius.aaa.model import Overrides
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.store.db import Pool, acquire
from ispcare_radius.store.directory import CachedSubscriberDirectory
from ispcare_radius.store.keyring import DataKeyCache, SystemKeys
from ispcare_radius.store.plans import PlanRepository
from ispcare_radius.store.subscribers import SubscriberRepository
from tests.support.server_proc import ServerProcess, create_database, drop_database

USER = "policy.user@example.test"
ROUTE = "198.51.100.0/28 0.0.0.0 1"
DELEGATED = "2001:db8:aa00::/56"
V6ADDR = "2001:db8:1::77"


@pytest.fixture
def repo(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys, data_keys: DataKeyCache
) -> SubscriberRepository:
    return SubscriberRepository(pg_pool, system_keys, master_keys, data_keys, actor="test")


@pytest.fixture
def directory(
    pg_pool: Pool, system_keys: SystemKeys, master_keys: MasterKeys
) -> CachedSubscriberDirectory:
    return CachedSubscriberDirectory(
        pg_pool, system_keys, DataKeyCache(master_keys), clock=lambda: 1000.0
    )


async def test_plan_policy_fields_round_trip(pg_pool: Pool) -> None:
    """A plan's login hours, time zone, walled garden, IPv6 DNS and address pool are stored."""
    plans = PlanRepository(pg_pool)
    await plans.add(
        "office",
        login_hours="Wk0800-1800,Sa0900-1300",
        time_zone="Europe/Berlin",
        walled_garden="unpaid",
        dns_ipv6=["2001:db8::53", "2001:db8::5353"],
        ipv6_address_pool="v6-office",
    )
    plan = await plans.get("office")
    assert plan is not None
    assert plan.login_hours == "Wk0800-1800,Sa0900-1300"
    assert plan.time_zone == "Europe/Berlin"
    assert plan.walled_garden == "unpaid"
    assert plan.dns_ipv6 == (
        ipaddress.IPv6Address("2001:db8::53"),
        ipaddress.IPv6Address("2001:db8::5353"),
    )
    assert plan.ipv6_address_pool == "v6-office"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"login_hours": "Xx0800-1800"},
        {"login_hours": "Wk2500-2600"},
        {"time_zone": "Mars/Olympus"},
        {"dns_ipv6": ["192.0.2.53"]},
    ],
)
async def test_plan_rejects_bad_policy_values(pg_pool: Pool, kwargs: dict[str, object]) -> None:
    """Unreadable login hours, unknown zones and non-IPv6 DNS servers are refused at add."""
    with pytest.raises(ValueError):
        await PlanRepository(pg_pool).add("bad", **kwargs)  # type: ignore[arg-type]
    assert await PlanRepository(pg_pool).get("bad") is None


async def test_subscriber_addressing_and_overrides_round_trip(
    repo: SubscriberRepository, pg_pool: Pool, directory: CachedSubscriberDirectory
) -> None:
    """add() stores addressing and overrides; get() and the directory both read them back."""
    await PlanRepository(pg_pool).add("basic", download_kbps=10_000, session_timeout=86_400)
    await repo.add(
        USER,
        "pw-synthetic",
        plan="basic",
        static_ipv4="203.0.113.10",
        framed_netmask="255.255.255.248",
        framed_routes=["198.51.100.0/28", "198.51.100.64/27 203.0.113.10 5"],
        delegated_ipv6_prefix=DELEGATED,
        framed_ipv6_address=V6ADDR,
        download_kbps=20_000,
        session_timeout=3600,
    )
    routes = (ROUTE, "198.51.100.64/27 203.0.113.10 5")
    expected = Overrides(download_kbps=20_000, session_timeout=3600)
    view = await repo.get(USER)
    assert view is not None
    assert view.framed_netmask == ipaddress.IPv4Address("255.255.255.248")
    assert view.framed_routes == routes
    assert view.delegated_ipv6_prefix == ipaddress.IPv6Network(DELEGATED)
    assert view.framed_ipv6_address == ipaddress.IPv6Address(V6ADDR)
    assert view.overrides == expected
    assert "198.51.100" not in repr(view) and "2001:db8" not in repr(view)
    sub = await directory.by_user_name(USER)
    assert sub is not None
    assert sub.framed_routes == routes
    assert sub.delegated_ipv6_prefix == ipaddress.IPv6Network(DELEGATED)
    assert sub.overrides == expected
    assert "198.51.100" not in repr(sub) and "2001:db8" not in repr(sub)


async def test_personal_addressing_is_encrypted_at_rest(
    repo: SubscriberRepository, pg_pool: Pool
) -> None:
    """Routes, netmask and IPv6 values are ciphertext in the row, never their text."""
    await repo.add(
        USER,
        None,
        plan=None,
        framed_netmask="/29",
        framed_routes=[ROUTE],
        delegated_ipv6_prefix=DELEGATED,
        framed_ipv6_address=V6ADDR,
    )
    async with acquire(pg_pool) as conn:
        row = await conn.fetchrow(
            "SELECT framed_netmask_enc, framed_routes_enc, delegated_ipv6_enc,"
            " framed_ipv6_address_enc FROM subscribers"
        )
    assert row is not None
    blobs = [bytes(v) for v in row.values()]
    assert all(blobs)
    for blob in blobs:
        assert b"198.51.100" not in blob and b"2001:db8" not in blob
        assert ipaddress.IPv6Address(V6ADDR).packed not in blob
        assert bytes((255, 255, 255, 248)) not in blob


async def test_set_changes_and_clears_policy_fields(repo: SubscriberRepository) -> None:
    """set() replaces routes, clears a netmask with None, and sets or clears an override."""
    await repo.add(USER, None, plan=None, framed_netmask="/30", framed_routes=[ROUTE])
    assert await repo.set(
        USER, framed_netmask=None, framed_routes=["192.0.2.128/25"], idle_timeout=600
    )
    view = await repo.get(USER)
    assert view is not None
    assert view.framed_netmask is None
    assert view.framed_routes == ("192.0.2.128/25 0.0.0.0 1",)
    assert view.overrides == Overrides(idle_timeout=600)
    assert await repo.set(USER, framed_routes=None, idle_timeout=None)
    view = await repo.get(USER)
    assert view is not None
    assert view.framed_routes == ()
    assert view.overrides is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"framed_netmask": "255.0.255.0"},
        {"framed_routes": ["198.51.100.1/28"]},
        {"framed_routes": ["198.51.100.0/28 gateway"]},
        {"delegated_ipv6_prefix": "2001:db8::1/56"},
        {"framed_ipv6_address": "203.0.113.1"},
        {"download_kbps": -1},
    ],
)
async def test_bad_policy_values_are_refused_without_echoing_them(
    repo: SubscriberRepository, kwargs: dict[str, object]
) -> None:
    """A malformed netmask, route, prefix, address or override is a ValueError naming no value."""
    with pytest.raises(ValueError) as info:
        await repo.add(USER, None, plan=None, **kwargs)  # type: ignore[arg-type]
    for value in kwargs.values():
        assert str(value) not in str(info.value)
    assert await repo.get(USER) is None


def test_cli_sets_plan_policy_and_subscriber_overrides(pg_admin_dsn: str, tmp_path: Path) -> None:
    """plan add and subscriber add/set take the policy options; show prints them back."""
    dsn, name = create_database(pg_admin_dsn)
    srv = ServerProcess(tmp_path, dsn)
    try:
        srv.setup()
        srv.cli(
            "plan",
            "add",
            "office",
            "--login-hours",
            "Wk0800-1800",
            "--time-zone",
            "Europe/Berlin",
            "--walled-garden",
            "unpaid",
            "--dns-ipv6",
            "2001:db8::53",
            "--ipv6-address-pool",
            "v6-a",
        )
        listed = srv.cli("plan", "list")
        assert "login_hours=Wk0800-1800" in listed and "walled_garden=unpaid" in listed
        bad = srv.run_cli("plan", "add", "night", "--login-hours", "Xx0100-0200")
        assert bad.returncode != 0 and "login hours" in bad.stderr
        srv.cli(
            "subscriber",
            "add",
            "cli-policy-1",
            "--plan",
            "office",
            "--password",
            "pw-1",
            "--static-ip",
            "203.0.113.9",
            "--netmask",
            "/29",
            "--route",
            "198.51.100.0/28",
            "--route",
            "198.51.100.64/27 203.0.113.9 2",
            "--download",
            "100M",
        )
        shown = srv.cli("subscriber", "show", "cli-policy-1")
        assert "framed_netmask: 255.255.255.248" in shown
        assert "198.51.100.64/27 203.0.113.9 2" in shown
        assert "'download_kbps': 100000" in shown
        srv.cli(
            "subscriber",
            "set",
            "cli-policy-1",
            "--clear",
            "routes",
            "--clear",
            "download",
            "--session-timeout",
            "3600",
            "--delegated-prefix",
            "2001:db8:aa00::/56",
        )
        shown = srv.cli("subscriber", "show", "cli-policy-1")
        assert "198.51.100" not in shown and "'download_kbps': None" in shown
        assert "'session_timeout': 3600" in shown
        assert "delegated_ipv6_prefix: 2001:db8:aa00::/56" in shown
    finally:
        drop_database(pg_admin_dsn, name)
