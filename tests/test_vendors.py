"""Vendor profiles: units, directions and attribute forms per NAS kind, encoded for real."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ispcare_radius.aaa.model import Nas, Plan, Subscriber, SubscriberStatus
from ispcare_radius.aaa.reply import ReplyRenderer
from ispcare_radius.aaa.vendors import (
    AccelPpp,
    ChilliSpot,
    Cisco,
    Generic,
    Huawei,
    Juniper,
    Mikrotik,
    VendorProfile,
    Wispr,
    known_vendors,
    profile,
    profiles,
)
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.protocol.dictfile import load_dictionary
from ispcare_radius.protocol.dictionary import Dictionary
from ispcare_radius.protocol.packet import build_packet, parse

ROOT = Path(__file__).resolve().parents[1]

# The example plan of docs/vendors.md: 50 Mbit/s down, 10 Mbit/s up, burst
# 100/20 Mbit/s above 40/8 Mbit/s for 16 s, IPv4 pool "pool-a", IPv6
# prefix-delegation pool "pd-a", RouterOS address list "paying".
PLAN = Plan(
    id=1,
    name="home-50",
    download_kbps=50_000,
    upload_kbps=10_000,
    burst_download_kbps=100_000,
    burst_upload_kbps=20_000,
    burst_threshold_download_kbps=40_000,
    burst_threshold_upload_kbps=8_000,
    burst_time_s=16,
    ipv4_pool="pool-a",
    ipv6_pool="pd-a",
    address_list="paying",
)
BARE = Plan(id=2, name="bare")
EXPECTED_VENDORS = {
    "accel-ppp",
    "chillispot",
    "cisco",
    "cisco-bng",
    "coovachilli",
    "erx",
    "generic",
    "huawei",
    "juniper",
    "mikrotik",
    "ubiquiti",
}


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d, warnings = load_dictionary([ROOT / "dictionaries" / "dictionary"])
    assert warnings == []
    return d


def _roundtrip(dictionary: Dictionary, attrs: bytes) -> list[tuple[str, object]]:
    packet = parse(build_packet(2, 1, b"\x00" * 16, attrs))
    return [(d.name, v) for d, v, _ in dictionary.decode(packet)]


def test_mikrotik_sends_k_units_rx_upload_first_with_burst_list_and_pd_pool() -> None:
    """RouterOS gets rx(upload)/tx(download) in k, then its address list and PD pool."""
    assert Mikrotik().render(PLAN) == [
        ("Mikrotik-Rate-Limit", "10000k/50000k 20000k/100000k 8000k/40000k 16/16"),
        ("Mikrotik-Address-List", "paying"),
        ("Mikrotik-Delegated-IPv6-Pool", "pd-a"),
    ]


def test_mikrotik_without_burst_threshold_sends_plain_rate() -> None:
    """Burst needs rate, threshold and time together; without a threshold only rx/tx go."""
    plan = Plan(3, "p", download_kbps=2_000, upload_kbps=512, burst_download_kbps=4_000)
    assert Mikrotik().render(plan) == [("Mikrotik-Rate-Limit", "512k/2000k")]


def test_huawei_rates_are_bit_per_second_input_is_upload() -> None:
    """Huawei input = from the subscriber (upload); kbit/s x 1000; peak = burst."""
    assert Huawei().rate_limit(PLAN) == [
        ("Huawei-Input-Average-Rate", 10_000_000),
        ("Huawei-Input-Peak-Rate", 20_000_000),
        ("Huawei-Output-Average-Rate", 50_000_000),
        ("Huawei-Output-Peak-Rate", 100_000_000),
    ]


def test_huawei_caps_rates_above_32_bits() -> None:
    """A 10 Gbit/s plan is sent as the 32-bit maximum, not an overflowing integer."""
    plan = Plan(4, "10g", download_kbps=10_000_000, upload_kbps=5_000)
    assert Huawei().rate_limit(plan) == [
        ("Huawei-Input-Average-Rate", 5_000_000),
        ("Huawei-Output-Average-Rate", 0xFFFF_FFFF),
    ]


def test_huawei_sends_qos_profile_name_when_the_plan_names_one() -> None:
    """A plan's qos_profile follows the rates as Huawei-QoS-Profile-Name."""
    plan = Plan(5, "q", download_kbps=1_000, qos_profile="gold")
    assert Huawei().render(plan) == [
        ("Huawei-Output-Average-Rate", 1_000_000),
        ("Huawei-QoS-Profile-Name", "gold"),
    ]


def test_ubiquiti_wispr_bandwidth_is_bit_per_second() -> None:
    """WISPr-Bandwidth-Max-Up is the upload in bit/s, -Down the download."""
    assert profile("ubiquiti").render(PLAN) == [
        ("WISPr-Bandwidth-Max-Up", 10_000_000),
        ("WISPr-Bandwidth-Max-Down", 50_000_000),
    ]


@pytest.mark.parametrize("name", ["chillispot", "coovachilli"])
def test_chillispot_bandwidth_is_kbit_per_second(name: str) -> None:
    """ChilliSpot-Bandwidth-Max-Up/-Down carry the plan's kbit/s unchanged, up = upload."""
    assert profile(name).render(PLAN) == [
        ("ChilliSpot-Bandwidth-Max-Up", 10_000),
        ("ChilliSpot-Bandwidth-Max-Down", 50_000),
    ]


def test_accel_ppp_filter_id_is_download_slash_upload_kbit() -> None:
    """accel-ppp's default shaper reads Filter-Id "<down>/<up>" in kbit/s."""
    assert AccelPpp().render(PLAN) == [("Filter-Id", "50000/10000")]


def test_cisco_names_policies_per_direction_and_the_pool() -> None:
    """IOS input policy = upload tier, output = download tier, then ip:addr-pool."""
    assert Cisco().render(PLAN) == [
        ("Cisco-AVPair", "ip:sub-qos-policy-in=ispcare-in-10000k"),
        ("Cisco-AVPair", "ip:sub-qos-policy-out=ispcare-out-50000k"),
        ("Cisco-AVPair", "ip:addr-pool=pool-a"),
    ]


def test_cisco_bng_uses_subscriber_prefix_and_plan_qos_profile() -> None:
    """IOS XR BNG gets subscriber: AV pairs; a qos_profile overrides the derived names."""
    plan = Plan(6, "q", download_kbps=1_000, upload_kbps=500, ipv4_pool="pool-a", qos_profile="g")
    assert profile("cisco-bng").render(plan) == [
        ("Cisco-AVPair", "subscriber:sub-qos-policy-in=g-in"),
        ("Cisco-AVPair", "subscriber:sub-qos-policy-out=g-out"),
    ]


@pytest.mark.parametrize("name", ["juniper", "erx"])
def test_juniper_qos_profile_name_and_address_pool(name: str) -> None:
    """ERX-Qos-Profile-Name is derived from both speeds; the IPv4 pool is ERX-Address-Pool-Name."""
    assert profile(name).render(PLAN) == [
        ("ERX-Qos-Profile-Name", "ispcare-down-50000k-up-10000k"),
        ("ERX-Address-Pool-Name", "pool-a"),
        ("ERX-IPv6-Delegated-Pool-Name", "pd-a"),
    ]
    assert Juniper().rate_limit(Plan(7, "q", qos_profile="gold")) == [
        ("ERX-Qos-Profile-Name", "gold")
    ]


def test_generic_sends_nothing_vendor_specific() -> None:
    """The generic profile adds no attribute, even for a plan with speeds and pools."""
    assert Generic().rate_limit(PLAN) == []
    assert Generic().render(PLAN) == []


@pytest.mark.parametrize("name", ["", "no-such-vendor", "MIKROTIK"])
def test_unknown_vendor_names_fall_back_to_generic(name: str) -> None:
    """A vendor name that is not registered (names are exact) renders as generic."""
    chosen = profile(name)
    assert chosen.name == "generic"
    assert chosen.render(PLAN) == []


def test_registry_lists_every_profile_under_its_own_name() -> None:
    """known_vendors() is sorted and each profile reports the name it is registered by."""
    assert set(known_vendors()) == EXPECTED_VENDORS
    assert list(known_vendors()) == sorted(known_vendors())
    assert {name: p.name for name, p in profiles().items()} == {n: n for n in EXPECTED_VENDORS}


@pytest.mark.parametrize("name", sorted(EXPECTED_VENDORS))
def test_a_plan_without_speeds_or_pools_renders_nothing(name: str) -> None:
    """No speeds, pools, list or QoS profile: no vendor attribute for any NAS kind."""
    assert profile(name).render(BARE) == []


def test_one_direction_only_is_sent_where_the_vendor_allows_it() -> None:
    """Per-direction attributes go alone; combined forms (rx/tx, down/up) need both speeds."""
    plan = Plan(8, "down-only", download_kbps=8_000)
    assert Mikrotik().rate_limit(plan) == []
    assert AccelPpp().rate_limit(plan) == []
    assert Juniper().rate_limit(plan) == []
    assert Wispr().rate_limit(plan) == [("WISPr-Bandwidth-Max-Down", 8_000_000)]
    assert ChilliSpot().rate_limit(plan) == [("ChilliSpot-Bandwidth-Max-Down", 8_000)]
    assert Cisco().rate_limit(plan) == [("Cisco-AVPair", "ip:sub-qos-policy-out=ispcare-out-8000k")]


@pytest.mark.parametrize("name", sorted(EXPECTED_VENDORS))
def test_render_starts_with_the_rate_limit(name: str) -> None:
    """render() is rate_limit() followed by the vendor's pool and list attributes."""
    chosen: VendorProfile = profile(name)
    rates = chosen.rate_limit(PLAN)
    assert chosen.render(PLAN)[: len(rates)] == rates


@pytest.mark.parametrize("name", sorted(EXPECTED_VENDORS))
def test_every_profile_encodes_with_the_shipped_dictionaries(
    dictionary: Dictionary, name: str
) -> None:
    """Each pair a profile produces encodes and decodes back to the same name and value."""
    pairs = profile(name).render(PLAN)
    wire = b"".join(dictionary.encode(attr, value) for attr, value in pairs)
    assert _roundtrip(dictionary, wire) == pairs


def test_accept_carries_rfc_pools_and_the_vendor_pool_together(dictionary: Dictionary) -> None:
    """A Juniper Access-Accept names pool-a twice: Framed-Pool and ERX-Address-Pool-Name."""
    nas = Nas(
        1, "mx-1", ipaddress.ip_network("192.0.2.1/32"), Secret(b"unit-secret"), vendor="juniper"
    )
    sub = Subscriber(7, SubscriberStatus.ACTIVE, PLAN, Secret(b"pw"))
    got = _roundtrip(dictionary, ReplyRenderer(dictionary).accept(sub, nas, now=0.0))
    assert got == [
        ("Framed-Pool", "pool-a"),
        ("Delegated-IPv6-Prefix-Pool", "pd-a"),
        ("ERX-Qos-Profile-Name", "ispcare-down-50000k-up-10000k"),
        ("ERX-Address-Pool-Name", "pool-a"),
        ("ERX-IPv6-Delegated-Pool-Name", "pd-a"),
    ]


def test_juniper_sends_the_ipv6_delegated_pool_as_vendor_attribute_161(
    dictionary: Dictionary,
) -> None:
    """ERX-IPv6-Delegated-Pool-Name is Juniper (4874) VSA 161 on the wire, and only
    the IPv6 pool makes the profile send it."""
    pairs = Juniper().render(Plan(10, "v6", ipv6_pool="pd-b"))
    assert pairs == [("ERX-IPv6-Delegated-Pool-Name", "pd-b")]
    wire = dictionary.encode(*pairs[0])
    # RFC 2865 section 5.26: type 26, length, Vendor-Id, then type, length, value.
    assert wire == bytes((26, 6 + 2 + 4)) + (4874).to_bytes(4) + bytes((161, 6)) + b"pd-b"
    assert Juniper().render(Plan(11, "v4", ipv4_pool="pool-b")) == [
        ("ERX-Address-Pool-Name", "pool-b")
    ]


def test_check_plan_accepts_the_example_plan_for_every_vendor(dictionary: Dictionary) -> None:
    """The renderer's plan check encodes the example plan for every registered vendor."""
    ReplyRenderer(dictionary).check_plan(PLAN)
    too_long = Plan(9, "x", address_list="a" * 300)
    with pytest.raises(ValueError):
        ReplyRenderer(dictionary).check_plan(too_long)
