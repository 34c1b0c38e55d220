"""NAS clients in the ``nas`` reference table, shared secrets sealed under the NAS system key.

Imports aaa.model, privacy and store; never server or cli.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

import asyncpg

from ispcare_radius.aaa.model import IPNetwork, MessageAuthenticatorPolicy, Nas
from ispcare_radius.detect.location import NasType, country_code
from ispcare_radius.privacy.crypto import field_aad
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.store.db import Pool, acquire
from ispcare_radius.store.keyring import SystemKeys

# The unique constraint on nas.address (migration 0003).
ADDRESS_CONSTRAINT: Final = "nas_address_key"
_COLUMNS = (
    "id, name, address, secret_enc, vendor, ma_policy, coa_port, latitude, longitude, country,"
    " city, nas_type, pools"
)


def secret_aad(name: str) -> bytes:
    """Associated data of a NAS secret: bound to the NAS by its unique name."""
    return field_aad("nas", "secret", name, None)


def parse_nas_address(address: str) -> IPNetwork:
    """An IP address or CIDR network; ValueError with a clear message otherwise."""
    try:
        return ipaddress.ip_network(address.strip(), strict=True)
    except ValueError:
        raise ValueError(
            "NAS address must be an IP address or a CIDR network without host bits"
            " (e.g. 192.0.2.1, 192.0.2.0/24, 2001:db8::/64)"
        ) from None


class NasRepository:
    """Create, list and remove NAS clients."""

    def __init__(self, pool: Pool, keys: SystemKeys) -> None:
        self._pool = pool
        self._cipher = keys.nas

    def _to_nas(self, record: asyncpg.Record) -> Nas:
        name = str(record["name"])
        secret = self._cipher.open(bytes(record["secret_enc"]), secret_aad(name))
        return Nas(
            id=int(record["id"]),
            name=name,
            address=record["address"],
            secret=Secret(secret),
            vendor=str(record["vendor"]),
            ma_policy=MessageAuthenticatorPolicy(record["ma_policy"]),
            coa_port=int(record["coa_port"]),
            latitude=record["latitude"],
            longitude=record["longitude"],
            country=record["country"],
            city=record["city"],
            nas_type=NasType(record["nas_type"]),
            pools=tuple(record["pools"]),
        )

    async def add(
        self,
        name: str,
        address: str,
        secret: str,
        *,
        vendor: str = "generic",
        ma_policy: str = "observe",
        coa_port: int = 3799,
        latitude: float | None = None,
        longitude: float | None = None,
        country: str | None = None,
        city: str | None = None,
        nas_type: str = "pppoe",
        pools: tuple[str, ...] = (),
    ) -> Nas:
        """Store a new NAS; ValueError for a bad address, policy, port, or a taken name/address."""
        if not name or not name.strip():
            raise ValueError("NAS name must not be empty")
        network = parse_nas_address(address)
        # RFC 2865 section 3: "The secret (password) shared between the client
        # and the RADIUS server SHOULD be at least as large and unguessable as
        # a well-chosen password"; an empty one lets anyone forge packets.
        if not secret:
            raise ValueError("NAS shared secret must not be empty")
        try:
            policy = MessageAuthenticatorPolicy(ma_policy)
        except ValueError:
            raise ValueError("ma_policy must be one of: no, observe, require") from None
        if not 1 <= coa_port <= 65535:
            raise ValueError("coa_port must be between 1 and 65535")
        if latitude is not None and not -90.0 <= latitude <= 90.0:
            raise ValueError("latitude must be between -90 and 90")
        if longitude is not None and not -180.0 <= longitude <= 180.0:
            raise ValueError("longitude must be between -180 and 180")
        if country is not None:
            country = country_code(country)
            if country is None:
                raise ValueError("country must be an ISO 3166-1 alpha-2 code (e.g. GB)")
        try:
            kind = NasType(nas_type)
        except ValueError:
            raise ValueError(
                "NAS type must be one of: " + ", ".join(t.value for t in NasType)
            ) from None
        try:
            networks = [ipaddress.ip_network(p.strip(), strict=True) for p in pools]
        except ValueError:
            raise ValueError(
                "NAS pool must be a CIDR network without host bits (e.g. 100.64.0.0/22)"
            ) from None
        sealed = self._cipher.seal(secret.encode("utf-8"), secret_aad(name))
        params: list[Any] = [
            name,
            network,
            sealed,
            vendor,
            policy.value,
            coa_port,
            latitude,
            longitude,
            country,
            city,
            kind.value,
            networks,
        ]
        async with acquire(self._pool) as conn:
            try:
                record = await conn.fetchrow(
                    "INSERT INTO nas (name, address, secret_enc, vendor, ma_policy, coa_port,"
                    " latitude, longitude, country, city, nas_type, pools)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                    f" RETURNING {_COLUMNS}",
                    *params,
                )
            except asyncpg.UniqueViolationError as exc:
                # Told apart by constraint name, never by message text. Two
                # NAS on one address would make the source-address match (and
                # so the shared secret used) ambiguous.
                if exc.constraint_name == ADDRESS_CONSTRAINT:
                    raise ValueError("a NAS with that address exists") from None
                raise ValueError("NAS name already exists") from None
        assert record is not None
        return self._to_nas(record)

    async def list(self) -> list[Nas]:
        """All NAS clients, secrets decrypted into ``Secret``."""
        async with acquire(self._pool) as conn:
            records = await conn.fetch(f"SELECT {_COLUMNS} FROM nas ORDER BY name")
        return [self._to_nas(r) for r in records]

    async def remove(self, name: str) -> bool:
        """Delete the NAS ``name``; False if there was none."""
        async with acquire(self._pool) as conn:
            status = await conn.execute("DELETE FROM nas WHERE name = $1", name)
        return status.endswith(" 1")
