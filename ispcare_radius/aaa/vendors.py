"""Vendor profiles: how a plan's speeds become reply attributes for one NAS kind.

A profile implements ``VendorProfile`` and registers by name; the ``nas``
table's ``vendor`` column names it. Pure: imports the aaa model only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

from ispcare_radius.aaa.model import Plan

# (dictionary attribute name, value as text or int)
AttributeValues = list[tuple[str, str | int]]


class VendorProfile(Protocol):
    name: str

    def rate_limit(self, plan: Plan) -> AttributeValues:
        """The vendor attributes carrying ``plan``'s speeds; empty if none."""
        ...


def _k(kbps: int) -> str:
    return f"{kbps}k"


class Generic:
    """A NAS with no vendor rate-limit attributes (speeds not sent)."""

    name = "generic"

    def rate_limit(self, plan: Plan) -> AttributeValues:
        return []


class Mikrotik:
    """RouterOS ``Mikrotik-Rate-Limit``: ``rx/tx [burst-rx/tx [thr-rx/tx [time-rx/tx]]]``.

    RouterOS names directions from the router's side: rx is what it receives
    from the subscriber (upload), tx what it sends (download).
    """

    name = "mikrotik"

    def rate_limit(self, plan: Plan) -> AttributeValues:
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


_REGISTRY: dict[str, Callable[[], VendorProfile]] = {
    "generic": Generic,
    "mikrotik": Mikrotik,
}


def profiles() -> Mapping[str, VendorProfile]:
    """Every registered profile, by name."""
    return MappingProxyType({name: factory() for name, factory in _REGISTRY.items()})


def profile(name: str) -> VendorProfile:
    """The profile called ``name``; unknown names fall back to ``generic``."""
    factory = _REGISTRY.get(name, Generic)
    return factory()


def known_vendors() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))
