"""Key status and KEK retirement: what is wrapped under which master key version.

Counts for ``keys status`` and for the check before ``keys retire`` destroys
a version; no key material is read. Imports privacy and store; never server
or cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ispcare_radius.privacy.crypto import key_version
from ispcare_radius.store.db import Pool, acquire
from ispcare_radius.store.subscribers import audit


async def kek_usage(pool: Pool, version: int) -> dict[str, int]:
    """What in the database is still wrapped under master key ``version``."""
    async with acquire(pool) as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM subscribers WHERE kek_version = $1) AS data_keys,"
            " (SELECT count(*) FROM system_keys WHERE kek_version = $1) AS system_keys,"
            " (SELECT count(*) FROM epoch_keys WHERE kek_version = $1) AS epoch_keys",
            version,
        )
    assert row is not None
    return {name: int(row[name]) for name in ("data_keys", "system_keys", "epoch_keys")}


async def audit_retire(pool: Pool, version: int, *, actor: str = "system") -> None:
    """Record that master key ``version`` was destroyed."""
    async with acquire(pool) as conn:
        await audit(conn, actor, "keys.retire", None, {"kek_version": version})


@dataclass(frozen=True, slots=True)
class EpochKeyInfo:
    """One stored epoch key (no key material)."""

    period: str
    version: int
    kek_version: int
    starts_at: Any
    ends_at: Any


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """Counts per master key version and the epoch keys, for ``keys status``."""

    data_keys_by_kek: dict[int, int]
    data_key_versions: dict[int, int]
    system_keys_by_kek: dict[int, int]
    epoch_keys: list[EpochKeyInfo]
    reencrypt_pending: int


async def key_status(pool: Pool) -> KeyStatus:
    """What is wrapped under which master key version, and the epoch keys."""
    async with acquire(pool) as conn:
        by_kek = await conn.fetch(
            "SELECT kek_version AS v, count(*) AS n FROM subscribers GROUP BY 1 ORDER BY 1"
        )
        by_version = await conn.fetch(
            "SELECT data_key_version AS v, count(*) AS n FROM subscribers GROUP BY 1 ORDER BY 1"
        )
        system = await conn.fetch(
            "SELECT kek_version AS v, count(*) AS n FROM system_keys GROUP BY 1 ORDER BY 1"
        )
        epochs = await conn.fetch(
            "SELECT period, version, kek_version, starts_at, ends_at FROM epoch_keys"
            " ORDER BY starts_at, version"
        )
        pending = await conn.fetchval("SELECT count(*) FROM subscribers WHERE reencrypt_pending")
    return KeyStatus(
        data_keys_by_kek={int(r["v"]): int(r["n"]) for r in by_kek},
        data_key_versions={int(r["v"]): int(r["n"]) for r in by_version},
        system_keys_by_kek={int(r["v"]): int(r["n"]) for r in system},
        epoch_keys=[
            EpochKeyInfo(
                str(r["period"]),
                int(r["version"]),
                int(r["kek_version"]),
                r["starts_at"],
                r["ends_at"],
            )
            for r in epochs
        ],
        reencrypt_pending=int(pending),
    )


def wrapped_kek_version(wrapped: bytes) -> int:
    """The master key version of a wrapped key (e.g. a spool segment's)."""
    return key_version(wrapped)
