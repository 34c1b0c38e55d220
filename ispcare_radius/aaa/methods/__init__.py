"""Authentication methods as plug-ins, registered by name; imports the method modules only.

``AuthSettings.methods`` names the enabled ones; ``resolve`` turns the names
into method objects once, at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ispcare_radius.aaa.methods.base import Attempt, Method
from ispcare_radius.aaa.methods.chap import Chap
from ispcare_radius.aaa.methods.mac import Mac
from ispcare_radius.aaa.methods.mschap import MsChapV1, MsChapV2
from ispcare_radius.aaa.methods.pap import Pap
from ispcare_radius.privacy.secret import Secret

__all__ = [
    "DEFAULT_METHODS",
    "REGISTRY",
    "Attempt",
    "Method",
    "configure",
    "enabled",
    "resolve",
]

# Every method the server knows, by the name configuration uses. The order is
# the order in which they are asked whether they claim a request.
REGISTRY: Mapping[str, Method] = MappingProxyType(
    {m.name: m for m in (Pap(), Chap(), MsChapV1(), MsChapV2(), Mac())}
)

# MAC auth is opt-in (``methods = [..., "mac"]``): enabled, it turns a PAP
# login whose user name and password are the same MAC into a device lookup
# (see methods/mac.py), which an installation provisioning such devices as
# ordinary subscribers would not expect.
DEFAULT_METHODS: tuple[str, ...] = ("pap", "chap", "mschap", "mschapv2")


def resolve(names: Iterable[str]) -> tuple[Method, ...]:
    """The methods named, in registry order; ValueError naming any unknown name."""
    wanted = tuple(names)
    unknown = sorted(set(wanted) - set(REGISTRY))
    if unknown:
        raise ValueError(
            f"unknown authentication method(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}"
        )
    return tuple(m for name, m in REGISTRY.items() if name in wanted)


def configure(
    methods: tuple[Method, ...], *, mac_auth_password: Secret | None = None
) -> tuple[Method, ...]:
    """``methods`` with their settings applied: MAC auth accepting the fixed password.

    Methods are matched by name, so a configured instance stands in for the
    registry's one.
    """
    if mac_auth_password is None:
        return methods
    return tuple(Mac(mac_auth_password) if m.name == "mac" else m for m in methods)


_DEFAULT = resolve(DEFAULT_METHODS)


def enabled() -> tuple[Method, ...]:
    """The methods enabled by default."""
    return _DEFAULT
