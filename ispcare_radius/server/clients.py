"""The NAS client table: source address -> ``Nas``; imports only aaa.model, never store.

Exact host entries (/32, /128) sit in one dict; network entries sit in one
dict per prefix length, searched from the longest prefix down, so a lookup
costs one dict probe per distinct prefix length in use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ispcare_radius.aaa.model import Nas

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Keys are (IP version, address as int) so v4 and v6 never collide.
_Key = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Index:
    """One immutable generation of the table; swapped whole by ``replace``."""

    entries: tuple[Nas, ...]
    hosts: dict[_Key, Nas]
    # Host entries also keyed by their canonical text: the event loop hands
    # us the source address as text, and most lookups end here.
    hosts_by_text: dict[str, Nas]
    # (version, netmask as int, {network as int: Nas}), longest prefix first.
    networks: tuple[tuple[int, int, dict[int, Nas]], ...]


def _build(nas_list: Iterable[Nas]) -> _Index:
    entries = tuple(nas_list)
    hosts: dict[_Key, Nas] = {}
    hosts_by_text: dict[str, Nas] = {}
    by_len: dict[tuple[int, int], dict[int, Nas]] = {}
    for nas in entries:
        net = nas.address
        version = net.version
        if net.prefixlen == net.max_prefixlen:
            key = (version, int(net.network_address))
            other = hosts.get(key)
            if other is not None:
                raise ValueError(f"NAS {nas.name!r} and {other.name!r} have the same address")
            hosts[key] = nas
            hosts_by_text[str(net.network_address)] = nas
            continue
        bucket = by_len.setdefault((version, net.prefixlen), {})
        net_int = int(net.network_address)
        other = bucket.get(net_int)
        if other is not None:
            raise ValueError(f"NAS {nas.name!r} and {other.name!r} have the same network")
        bucket[net_int] = nas
    networks = tuple(
        (version, _mask(version, plen), bucket)
        for (version, plen), bucket in sorted(by_len.items(), key=lambda kv: -kv[0][1])
    )
    return _Index(entries, hosts, hosts_by_text, networks)


def _mask(version: int, prefixlen: int) -> int:
    bits = 32 if version == 4 else 128
    return ((1 << prefixlen) - 1) << (bits - prefixlen)


class ClientTable:
    """NAS lookup by source address: exact host entries first, then longest prefix.

    ``replace`` builds a new index and swaps it in one assignment, so a lookup
    running in the same event loop sees either the old or the new table.
    """

    __slots__ = ("_index",)

    def __init__(self, nas: Iterable[Nas] = ()) -> None:
        self._index = _build(nas)

    def replace(self, nas: Iterable[Nas]) -> None:
        """Swap in a new set of NAS entries atomically; raises ValueError on duplicates."""
        self._index = _build(nas)

    @property
    def entries(self) -> tuple[Nas, ...]:
        """The NAS entries of the current table, in the order given."""
        return self._index.entries

    def __len__(self) -> int:
        return len(self._index.entries)

    def __repr__(self) -> str:
        return f"ClientTable({len(self._index.entries)} NAS)"

    def match(self, address: str | IPAddress) -> Nas | None:
        """The NAS for a source ``address``, or None when no entry covers it.

        IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) match IPv4 entries.
        """
        index = self._index
        if isinstance(address, str):
            nas = index.hosts_by_text.get(address)
            if nas is not None:
                return nas
            try:
                ip: IPAddress = ipaddress.ip_address(address.partition("%")[0])
            except ValueError:
                return None
        else:
            ip = address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        version = ip.version
        value = int(ip)
        nas = index.hosts.get((version, value))
        if nas is not None:
            return nas
        for net_version, mask, bucket in index.networks:
            if net_version != version:
                continue
            nas = bucket.get(value & mask)
            if nas is not None:
                return nas
        return None
