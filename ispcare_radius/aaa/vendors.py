"""Vendor profiles: how a plan's speeds, pools and lists become one NAS kind's attributes.

A profile implements ``VendorProfile`` and registers by name; the ``nas``
table's ``vendor`` column names it. Pure: imports the aaa model only (no
protocol, store, asyncio). docs/vendors.md gives each profile's sources.

Every profile answers in dictionary names (see ``dictionaries/``); the reply
renderer encodes and caches the result per (plan, vendor). The RFC forms of
the pools (Framed-Pool, RFC 2869 section 5.18; Delegated-IPv6-Prefix-Pool,
RFC 6911 section 3.4) are added by the renderer for every vendor; a profile
adds its vendor's own form next to them, never instead of them, so a NAS that
reads either finds the same pool name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

from ispcare_radius.aaa.model import Plan

# (dictionary attribute name, value as text or int)
AttributeValues = list[tuple[str, str | int]]

# RADIUS "integer" is 32 bits unsigned (RFC 2865 section 5): the largest
# bit/s value a 32-bit rate attribute can carry, about 4.29 Gbit/s.
_MAX_U32 = 0xFFFF_FFFF


class VendorProfile(Protocol):
    """What the server sends one kind of NAS for a plan."""

    name: str

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """The vendor attributes carrying ``plan``'s speeds; empty if none.

        Used alone where only the speed changes (CoA).
        """
        ...

    def render(self, plan: Plan) -> AttributeValues:
        """Every vendor attribute of an Access-Accept for ``plan``: speeds first."""
        ...

    def walled_garden(self, name: str) -> AttributeValues:
        """The attributes that put a session in the walled-garden profile ``name``."""
        ...


def _filter_id(name: str) -> AttributeValues:
    # RFC 2865 section 5.11: Filter-Id "indicates the name of the filter list
    # for this user"; the NAS maps the name to its walled-garden filter.
    return [("Filter-Id", name)]


def _k(kbps: int) -> str:
    return f"{kbps}k"


def _bps(kbps: int) -> int:
    """kbit/s to bit/s (1 kbit = 1000 bit), capped at the 32-bit maximum."""
    return min(kbps * 1000, _MAX_U32)


class Generic:
    """RFC attributes only: no vendor attributes, so speeds are not sent."""

    name = "generic"

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """Nothing: RFC 2865 has no rate-limit attribute."""
        return []

    def render(self, plan: Plan) -> AttributeValues:
        """Nothing beyond the RFC attributes the renderer adds itself."""
        return []

    def walled_garden(self, name: str) -> AttributeValues:
        """``Filter-Id`` naming the walled-garden filter."""
        return _filter_id(name)


class Mikrotik:
    """RouterOS ``Mikrotik-Rate-Limit``: ``rx/tx [burst-rx/tx [thr-rx/tx [time-rx/tx]]]``.

    RouterOS names directions from the router's side: rx is what it receives
    from the subscriber (upload), tx what it sends (download).
    """

    name = "mikrotik"

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """``Mikrotik-Rate-Limit`` in k units, with burst when all four burst values are set."""
        up, down = plan.upload_kbps, plan.download_kbps
        if up is None or down is None:
            return []
        parts = [f"{_k(up)}/{_k(down)}"]
        bu, bd = plan.burst_upload_kbps, plan.burst_download_kbps
        tu, td = plan.burst_threshold_upload_kbps, plan.burst_threshold_download_kbps
        if bu is not None and bd is not None and tu is not None and td is not None:
            t = plan.burst_time_s or 1
            parts += [f"{_k(bu)}/{_k(bd)}", f"{_k(tu)}/{_k(td)}", f"{t}/{t}"]
        return [("Mikrotik-Rate-Limit", " ".join(parts))]

    def render(self, plan: Plan) -> AttributeValues:
        """Rate limit, then the address list and the IPv6 prefix-delegation pool."""
        out = self.rate_limit(plan)
        if plan.address_list:
            out.append(("Mikrotik-Address-List", plan.address_list))
        if plan.ipv6_pool:
            out.append(("Mikrotik-Delegated-IPv6-Pool", plan.ipv6_pool))
        return out

    def walled_garden(self, name: str) -> AttributeValues:
        """``Mikrotik-Address-List``: the firewall confines addresses on that list."""
        return [("Mikrotik-Address-List", name)]


class Cisco:
    """Cisco-AVPair QoS policy names and address pool.

    The policy-maps must exist on the router; the server only names them:
    ``<prefix>:sub-qos-policy-in=<name>`` polices what the subscriber sends
    (upload), ``...-out=`` what it receives (download). Names are the plan's
    ``qos_profile`` plus ``-in`` / ``-out`` when set, else derived from the
    speed: ``ispcare-in-10000k`` / ``ispcare-out-50000k``, one policy-map per
    speed tier. IOS / IOS XE use the ``ip:`` prefix and ``ip:addr-pool``; IOS
    XR BNG uses ``subscriber:`` and reads the pool from Framed-Pool.
    """

    def __init__(
        self, name: str = "cisco", *, prefix: str = "ip", pool_avpair: bool = True
    ) -> None:
        self.name = name
        self._prefix = prefix
        self._pool_avpair = pool_avpair

    def policy_names(self, plan: Plan) -> tuple[str | None, str | None]:
        """The (input, output) policy-map names for ``plan``; None where no speed is set."""
        if plan.qos_profile:
            return f"{plan.qos_profile}-in", f"{plan.qos_profile}-out"
        up, down = plan.upload_kbps, plan.download_kbps
        return (
            None if up is None else f"ispcare-in-{_k(up)}",
            None if down is None else f"ispcare-out-{_k(down)}",
        )

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """One Cisco-AVPair per direction naming its QoS policy-map."""
        p_in, p_out = self.policy_names(plan)
        out: AttributeValues = []
        if p_in is not None:
            out.append(("Cisco-AVPair", f"{self._prefix}:sub-qos-policy-in={p_in}"))
        if p_out is not None:
            out.append(("Cisco-AVPair", f"{self._prefix}:sub-qos-policy-out={p_out}"))
        return out

    def render(self, plan: Plan) -> AttributeValues:
        """QoS policies, then ``ip:addr-pool`` for the IPv4 pool (IOS / IOS XE)."""
        out = self.rate_limit(plan)
        if self._pool_avpair and plan.ipv4_pool:
            out.append(("Cisco-AVPair", f"ip:addr-pool={plan.ipv4_pool}"))
        return out

    def walled_garden(self, name: str) -> AttributeValues:
        """An address pool named ``name`` (ACLs on the router confine its range)."""
        if self._pool_avpair:
            return [("Cisco-AVPair", f"ip:addr-pool={name}")]
        return [("Framed-Pool", name)]


class Juniper:
    """Juniper (Unisphere / ERX, vendor 4874) QoS profile and address pool names.

    Junos and JunosE apply a QoS profile configured on the router by name.
    The name is the plan's ``qos_profile`` when set, else derived from both
    speeds: ``ispcare-down-50000k-up-10000k``.
    """

    def __init__(self, name: str = "juniper") -> None:
        self.name = name

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """``ERX-Qos-Profile-Name``; nothing without a profile or both speeds."""
        if plan.qos_profile:
            return [("ERX-Qos-Profile-Name", plan.qos_profile)]
        up, down = plan.upload_kbps, plan.download_kbps
        if up is None or down is None:
            return []
        return [("ERX-Qos-Profile-Name", f"ispcare-down-{_k(down)}-up-{_k(up)}")]

    def render(self, plan: Plan) -> AttributeValues:
        """QoS profile, ``ERX-Address-Pool-Name`` for the IPv4 pool and
        ``ERX-IPv6-Delegated-Pool-Name`` for the delegated IPv6 prefix pool.

        The renderer sends the IPv6 pool as RFC 6911 Delegated-IPv6-Prefix-Pool
        too; JunosE releases older than RFC 6911 support read only the VSA.
        """
        out = self.rate_limit(plan)
        if plan.ipv4_pool:
            out.append(("ERX-Address-Pool-Name", plan.ipv4_pool))
        if plan.ipv6_pool:
            out.append(("ERX-IPv6-Delegated-Pool-Name", plan.ipv6_pool))
        return out

    def walled_garden(self, name: str) -> AttributeValues:
        """``ERX-Address-Pool-Name``: a pool whose range the router confines."""
        return [("ERX-Address-Pool-Name", name)]


class Huawei:
    """Huawei BRAS policing rates, in bit/s.

    Huawei names directions from the BRAS's side: input is what it receives
    from the subscriber (upload), output what it sends (download). Average
    is the plan speed, peak the burst speed when set.
    """

    name = "huawei"

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """Average and peak rates per direction, kbit/s x 1000, capped at 2**32 - 1."""
        out: AttributeValues = []
        if plan.upload_kbps is not None:
            out.append(("Huawei-Input-Average-Rate", _bps(plan.upload_kbps)))
        if plan.burst_upload_kbps is not None:
            out.append(("Huawei-Input-Peak-Rate", _bps(plan.burst_upload_kbps)))
        if plan.download_kbps is not None:
            out.append(("Huawei-Output-Average-Rate", _bps(plan.download_kbps)))
        if plan.burst_download_kbps is not None:
            out.append(("Huawei-Output-Peak-Rate", _bps(plan.burst_download_kbps)))
        return out

    def render(self, plan: Plan) -> AttributeValues:
        """Rates, then ``Huawei-QoS-Profile-Name`` when the plan names one."""
        out = self.rate_limit(plan)
        if plan.qos_profile:
            out.append(("Huawei-QoS-Profile-Name", plan.qos_profile))
        return out

    def walled_garden(self, name: str) -> AttributeValues:
        """``Filter-Id`` naming the walled-garden ACL / user group."""
        return _filter_id(name)


class Wispr:
    """WISPr 1.0 bandwidth limits in bit/s (Ubiquiti EdgeOS / UniFi hotspots).

    Up is what the subscriber sends (upload), down what it receives.
    """

    name = "ubiquiti"

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """``WISPr-Bandwidth-Max-Up`` / ``-Down``, kbit/s x 1000, capped at 2**32 - 1."""
        out: AttributeValues = []
        if plan.upload_kbps is not None:
            out.append(("WISPr-Bandwidth-Max-Up", _bps(plan.upload_kbps)))
        if plan.download_kbps is not None:
            out.append(("WISPr-Bandwidth-Max-Down", _bps(plan.download_kbps)))
        return out

    def render(self, plan: Plan) -> AttributeValues:
        """Only the bandwidth limits."""
        return self.rate_limit(plan)

    def walled_garden(self, name: str) -> AttributeValues:
        """``Filter-Id`` naming the walled-garden filter."""
        return _filter_id(name)


class ChilliSpot:
    """ChilliSpot / CoovaChilli bandwidth limits in kbit/s.

    CoovaChilli multiplies ChilliSpot-Bandwidth-Max-Up/-Down by 1000 on
    receipt (unlike the WISPr pair, read as bit/s), so the plan's kbit/s go
    out unchanged. Up is the subscriber's upload.
    """

    def __init__(self, name: str = "chillispot") -> None:
        self.name = name

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """``ChilliSpot-Bandwidth-Max-Up`` / ``-Down`` in kbit/s."""
        out: AttributeValues = []
        if plan.upload_kbps is not None:
            out.append(("ChilliSpot-Bandwidth-Max-Up", min(plan.upload_kbps, _MAX_U32)))
        if plan.download_kbps is not None:
            out.append(("ChilliSpot-Bandwidth-Max-Down", min(plan.download_kbps, _MAX_U32)))
        return out

    def render(self, plan: Plan) -> AttributeValues:
        """Only the bandwidth limits."""
        return self.rate_limit(plan)

    def walled_garden(self, name: str) -> AttributeValues:
        """``Filter-Id`` naming the walled-garden filter."""
        return _filter_id(name)


class AccelPpp:
    """accel-ppp's default shaper input: ``Filter-Id = "<down>/<up>"`` in kbit/s.

    With accel-ppp's default ``[shaper] attr=Filter-Id`` the first number is
    the download (towards the subscriber), the second the upload. Burst is
    computed by accel-ppp itself (``burst-factor``), so none is sent.
    """

    name = "accel-ppp"

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """``Filter-Id`` with both speeds; nothing unless both are set."""
        up, down = plan.upload_kbps, plan.download_kbps
        if up is None or down is None:
            return []
        return [("Filter-Id", f"{down}/{up}")]

    def render(self, plan: Plan) -> AttributeValues:
        """Only the shaper Filter-Id (pools travel as Framed-Pool)."""
        return self.rate_limit(plan)

    def walled_garden(self, name: str) -> AttributeValues:
        """``Framed-Pool``: Filter-Id is the shaper's input here, so the pool confines."""
        return [("Framed-Pool", name)]


_REGISTRY: dict[str, Callable[[], VendorProfile]] = {
    "generic": Generic,
    "mikrotik": Mikrotik,
    "cisco": Cisco,
    "cisco-bng": lambda: Cisco("cisco-bng", prefix="subscriber", pool_avpair=False),
    "juniper": Juniper,
    "erx": lambda: Juniper("erx"),
    "huawei": Huawei,
    "ubiquiti": Wispr,
    "chillispot": ChilliSpot,
    "coovachilli": lambda: ChilliSpot("coovachilli"),
    "accel-ppp": AccelPpp,
}


def profiles() -> Mapping[str, VendorProfile]:
    """Every registered profile, by name."""
    return MappingProxyType({name: factory() for name, factory in _REGISTRY.items()})


def profile(name: str) -> VendorProfile:
    """The profile called ``name``; unknown names fall back to ``generic``."""
    factory = _REGISTRY.get(name, Generic)
    return factory()


def known_vendors() -> tuple[str, ...]:
    """The registered profile names, sorted (the CLI's ``--vendor`` choices)."""
    return tuple(sorted(_REGISTRY))
