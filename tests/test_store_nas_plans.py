"""NAS and plan repositories against a real PostgreSQL."""

from __future__ import annotations

import ipaddress

import pytest

from ispcare_radius.aaa.model import MessageAuthenticatorPolicy
from ispcare_radius.privacy.crypto import DecryptError
from ispcare_radius.store.db import Pool
from ispcare_radius.store.keyring import SystemKeys
from ispcare_radius.store.nas import NasRepository, secret_aad
from ispcare_radius.store.plans import PlanRepository

SECRET = "synthetic-shared-secret-4711"


async def test_nas_round_trip(pg_pool: Pool, system_keys: SystemKeys) -> None:
    """A NAS added is listed with its secret equal, and removed once."""
    repo = NasRepository(pg_pool, system_keys)
    added = await repo.add(
        "edge-1",
        "192.0.2.0/24",
        SECRET,
        vendor="mikrotik",
        ma_policy="require",
        coa_port=1700,
        latitude=52.5,
        longitude=13.4,
        country="DE",
        city="Berlin",
    )
    [listed] = await repo.list()
    assert listed == added
    assert listed.address == ipaddress.ip_network("192.0.2.0/24")
    assert listed.secret.equals(SECRET.encode())
    assert listed.ma_policy is MessageAuthenticatorPolicy.REQUIRE
    assert (listed.coa_port, listed.vendor, listed.city) == (1700, "mikrotik", "Berlin")
    assert SECRET not in repr(listed)
    assert await repo.remove("edge-1") is True
    assert await repo.remove("edge-1") is False
    assert await repo.list() == []


async def test_nas_secret_is_stored_encrypted(pg_pool: Pool, system_keys: SystemKeys) -> None:
    """The secret_enc column holds ciphertext that does not contain the secret."""
    await NasRepository(pg_pool, system_keys).add("edge-2", "2001:db8::1", SECRET)
    stored = await pg_pool.fetchval("SELECT secret_enc FROM nas WHERE name = 'edge-2'")
    assert SECRET.encode() not in stored
    assert system_keys.nas.open(stored, secret_aad("edge-2")) == SECRET.encode()


async def test_nas_secret_bound_to_its_name(pg_pool: Pool, system_keys: SystemKeys) -> None:
    """A secret copied onto another NAS row fails to decrypt."""
    repo = NasRepository(pg_pool, system_keys)
    await repo.add("a", "198.51.100.1", SECRET)
    await repo.add("b", "198.51.100.2", "another-secret")
    await pg_pool.execute(
        "UPDATE nas SET secret_enc = (SELECT secret_enc FROM nas WHERE name = 'a') WHERE name = 'b'"
    )
    with pytest.raises(DecryptError):
        await repo.list()


@pytest.mark.parametrize("address", ["not-an-ip", "192.0.2.1/24", "300.1.1.1", ""])
async def test_nas_bad_address_refused(
    pg_pool: Pool, system_keys: SystemKeys, address: str
) -> None:
    """An address that is neither an IP nor a CIDR network raises a clear ValueError."""
    with pytest.raises(ValueError, match="IP address or a CIDR network"):
        await NasRepository(pg_pool, system_keys).add("x", address, SECRET)


async def test_nas_duplicate_and_bad_values_refused(pg_pool: Pool, system_keys: SystemKeys) -> None:
    """A taken name, empty secret, unknown policy or bad port raises ValueError."""
    repo = NasRepository(pg_pool, system_keys)
    await repo.add("edge", "192.0.2.1", SECRET)
    with pytest.raises(ValueError, match="already exists"):
        await repo.add("edge", "192.0.2.2", SECRET)
    with pytest.raises(ValueError, match="must not be empty"):
        await repo.add("edge-x", "192.0.2.3", "")
    with pytest.raises(ValueError, match="ma_policy"):
        await repo.add("edge-y", "192.0.2.4", SECRET, ma_policy="maybe")
    with pytest.raises(ValueError, match="coa_port"):
        await repo.add("edge-z", "192.0.2.5", SECRET, coa_port=70000)


async def test_plan_round_trip(pg_pool: Pool) -> None:
    """A plan added is returned by get() and list() with every field intact."""
    repo = PlanRepository(pg_pool)
    plan = await repo.add(
        "home-50",
        download_kbps=50_000,
        upload_kbps=10_000,
        burst_download_kbps=60_000,
        session_timeout=86_400,
        simultaneous_use=1,
        ipv4_pool="pool-a",
        extra_reply=[("Mikrotik-Address-List", "home"), ("Filter-Id", "std")],
    )
    assert plan.id > 0
    assert plan.extra_reply == (("Mikrotik-Address-List", "home"), ("Filter-Id", "std"))
    assert await repo.get("home-50") == plan
    assert await repo.get("nope") is None
    assert await repo.list() == [plan]
    with pytest.raises(ValueError, match="already exists"):
        await repo.add("home-50")
    with pytest.raises(ValueError, match="non-negative"):
        await repo.add("bad", download_kbps=-1)
    assert await repo.remove("home-50") is True
    assert await repo.list() == []


async def test_nas_address_must_be_unique(pg_pool: Pool, system_keys: SystemKeys) -> None:
    """A second NAS on an existing address or network is refused; other addresses are fine."""
    repo = NasRepository(pg_pool, system_keys)
    await repo.add("edge-a", "192.0.2.1", SECRET)
    await repo.add("edge-net", "198.51.100.0/24", SECRET)
    with pytest.raises(ValueError, match=r"^a NAS with that address exists$"):
        await repo.add("edge-b", "192.0.2.1", SECRET)
    with pytest.raises(ValueError, match=r"^a NAS with that address exists$"):
        await repo.add("edge-c", " 198.51.100.0/24", SECRET)
    with pytest.raises(ValueError, match=r"^NAS name already exists$"):
        await repo.add("edge-a", "192.0.2.9", SECRET)
    await repo.add("edge-d", "192.0.2.2", SECRET)
    await repo.add("edge-host-in-net", "198.51.100.7", SECRET)  # a host is not the network
    assert [n.name for n in await repo.list()] == [
        "edge-a",
        "edge-d",
        "edge-host-in-net",
        "edge-net",
    ]


async def test_plan_keeps_vendor_names(pg_pool: Pool) -> None:
    """A plan's address list and QoS profile name survive the round trip."""
    repo = PlanRepository(pg_pool)
    added = await repo.add("vend", download_kbps=50_000, address_list="paying", qos_profile="gold")
    got = await repo.get("vend")
    assert got == added
    assert got is not None and (got.address_list, got.qos_profile) == ("paying", "gold")


async def test_plan_quota_and_billing_cycle_round_trip(pg_pool: Pool) -> None:
    """Quota fields are stored; the period and billing day default to cycle / 1."""
    plans = PlanRepository(pg_pool)
    plain = await plans.add("no-quota")
    assert (plain.quota_bytes, plain.quota_seconds) == (None, None)
    assert (plain.quota_period, plain.billing_day) == ("cycle", 1)
    capped = await plans.add(
        "capped", quota_bytes=50 * 10**9, quota_seconds=3600, quota_period="day", billing_day=15
    )
    assert await plans.get("capped") == capped
    assert (capped.quota_bytes, capped.quota_seconds) == (50 * 10**9, 3600)
    assert (capped.quota_period, capped.billing_day) == ("day", 15)
    for bad in ({"quota_period": "week"}, {"billing_day": 29}, {"quota_bytes": 0}):
        with pytest.raises(ValueError):
            await plans.add("bad", **bad)  # type: ignore[arg-type]
