"""ClientTable: exact hosts, CIDR, longest prefix, IPv4-mapped IPv6, no match, replace."""

from __future__ import annotations

import ipaddress

import pytest

from ispcare_radius.aaa.model import Nas
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.server.clients import ClientTable


def nas(nas_id: int, name: str, address: str) -> Nas:
    return Nas(
        id=nas_id,
        name=name,
        address=ipaddress.ip_network(address),
        secret=Secret(b"synthetic-secret"),
    )


@pytest.fixture
def table() -> ClientTable:
    return ClientTable(
        [
            nas(1, "wide", "10.0.0.0/8"),
            nas(2, "site", "10.1.0.0/16"),
            nas(3, "rack", "10.1.2.0/24"),
            nas(4, "host", "10.1.2.3/32"),
            nas(5, "v6net", "2001:db8::/32"),
            nas(6, "v6host", "2001:db8::1/128"),
            nas(7, "v6lan", "2001:db8:1::/48"),
        ]
    )


def test_exact_host_entry_wins_over_every_network(table: ClientTable) -> None:
    """A /32 entry beats the /24, /16 and /8 networks that also cover the address."""
    assert (m := table.match("10.1.2.3")) is not None and m.name == "host"


def test_longest_prefix_wins_among_networks(table: ClientTable) -> None:
    """Among covering networks the one with the longest prefix is chosen."""
    assert (m := table.match("10.1.2.4")) is not None and m.name == "rack"
    assert (m := table.match("10.1.3.4")) is not None and m.name == "site"
    assert (m := table.match("10.200.0.1")) is not None and m.name == "wide"


def test_ipv6_exact_and_prefix(table: ClientTable) -> None:
    """IPv6 entries follow the same exact-then-longest-prefix rule."""
    assert (m := table.match("2001:db8::1")) is not None and m.name == "v6host"
    assert (m := table.match("2001:db8:1::9")) is not None and m.name == "v6lan"
    assert (m := table.match("2001:db8:ffff::9")) is not None and m.name == "v6net"


def test_ipv4_mapped_ipv6_source_matches_ipv4_entries(table: ClientTable) -> None:
    """::ffff:a.b.c.d is looked up as a.b.c.d, as text and as an address object."""
    assert (m := table.match("::ffff:10.1.2.3")) is not None and m.name == "host"
    mapped = ipaddress.IPv6Address("::ffff:10.1.2.77")
    assert (m := table.match(mapped)) is not None and m.name == "rack"


def test_address_objects_are_accepted(table: ClientTable) -> None:
    """match takes IPv4Address / IPv6Address as well as text."""
    assert (m := table.match(ipaddress.IPv4Address("10.1.2.3"))) is not None
    assert m.name == "host"
    assert (m := table.match(ipaddress.IPv6Address("2001:db8::1"))) is not None
    assert m.name == "v6host"


def test_no_match_returns_none(table: ClientTable) -> None:
    """Addresses outside every entry, other families and junk text give None."""
    assert table.match("192.0.2.1") is None
    assert table.match("2001:db9::1") is None
    assert table.match("::ffff:192.0.2.1") is None
    assert table.match("not-an-address") is None
    assert ClientTable().match("10.1.2.3") is None


def test_ipv4_entry_does_not_match_ipv6_with_same_integer_value() -> None:
    """An IPv4 /8 does not cover the IPv6 address with the same low bits."""
    t = ClientTable([nas(1, "v4", "0.0.0.0/0")])
    assert t.match("::1") is None
    assert (m := t.match("203.0.113.9")) is not None and m.name == "v4"


def test_scoped_ipv6_text_is_matched_without_scope() -> None:
    """A link-local source with a %scope suffix matches its network."""
    t = ClientTable([nas(1, "ll", "fe80::/64")])
    assert (m := t.match("fe80::1%eth0")) is not None and m.name == "ll"


def test_replace_swaps_the_whole_table(table: ClientTable) -> None:
    """After replace the old entries are gone and the new ones match."""
    table.replace([nas(9, "new", "192.0.2.0/24")])
    assert table.match("10.1.2.3") is None
    assert (m := table.match("192.0.2.7")) is not None and m.name == "new"
    assert len(table) == 1


def test_duplicate_address_is_a_configuration_error_naming_no_address() -> None:
    """Two NAS with one address fail at build time; the message names the NAS only."""
    with pytest.raises(ValueError, match=r"'a' and 'b'|'b' and 'a'") as info:
        ClientTable([nas(1, "a", "10.9.9.9/32"), nas(2, "b", "10.9.9.9/32")])
    assert "10.9.9.9" not in str(info.value)
    with pytest.raises(ValueError):
        ClientTable([nas(1, "a", "10.9.0.0/16"), nas(2, "b", "10.9.0.0/16")])


def test_failed_replace_keeps_the_old_table(table: ClientTable) -> None:
    """A replace that fails validation leaves the previous table in service."""
    with pytest.raises(ValueError):
        table.replace([nas(1, "a", "10.9.9.9/32"), nas(2, "b", "10.9.9.9/32")])
    assert (m := table.match("10.1.2.3")) is not None and m.name == "host"


def test_repr_shows_no_addresses(table: ClientTable) -> None:
    """The table's repr holds only the count."""
    assert repr(table) == "ClientTable(7 NAS)"
