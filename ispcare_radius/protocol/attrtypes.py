"""Attribute data types and the immutable attribute/vendor definitions; stdlib only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = ["EMPTY_VALUES", "AttrDef", "AttrType", "VendorDef"]


class AttrType(StrEnum):
    """Data types of attribute values, named as in FreeRADIUS dictionaries."""

    STRING = "string"
    OCTETS = "octets"
    IPADDR = "ipaddr"
    IPV6ADDR = "ipv6addr"
    IPV6PREFIX = "ipv6prefix"
    IPV4PREFIX = "ipv4prefix"
    IFID = "ifid"
    INTEGER = "integer"
    INTEGER64 = "integer64"
    DATE = "date"
    BYTE = "byte"
    SHORT = "short"
    SIGNED = "signed"
    ETHER = "ether"
    ABINARY = "abinary"
    COMBO_IP = "combo-ip"
    TLV = "tlv"
    VSA = "vsa"
    EXTENDED = "extended"
    LONG_EXTENDED = "long-extended"
    EVS = "evs"


EMPTY_VALUES: Mapping[str, int] = MappingProxyType({})
_EMPTY_NAMES: Mapping[int, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AttrDef:
    """One attribute definition.

    ``code`` is the attribute's own number; ``parent`` holds the numbers above
    it for nested attributes: ``(241,)`` for extended attribute 241.1,
    ``(245, 26)`` for an Extended-Vendor-Specific attribute, ``(173,)`` for a
    TLV member. Top-level and classic vendor attributes have ``parent == ()``.
    Equality and hashing ignore the VALUE tables.
    """

    name: str
    vendor: int
    code: int
    type: AttrType
    has_tag: bool = False
    encrypt: int = 0
    concat: bool = False
    values: Mapping[str, int] = field(default_factory=lambda: EMPTY_VALUES, compare=False)
    array: bool = False
    parent: tuple[int, ...] = ()
    value_names: Mapping[int, str] = field(
        default_factory=lambda: _EMPTY_NAMES, repr=False, compare=False
    )
    plain: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Decoders take a fast path for values with no tag, hiding or array packing.
        plain = not (self.has_tag or self.encrypt or self.array)
        object.__setattr__(self, "plain", plain)


@dataclass(frozen=True, slots=True)
class VendorDef:
    """A vendor and the layout of its Vendor-Specific sub-attributes.

    ``type_size``/``length_size`` come from ``format=t,l[,c]`` (RFC 2865
    section 5.26 suggests 1,1); ``continuation`` is the WiMAX-style flag
    octet; ``evs_parent`` names the extended attribute (241..246) that
    carries the vendor's attributes as Extended-Vendor-Specific (RFC 6929).
    """

    name: str
    id: int
    type_size: int = 1
    length_size: int = 1
    continuation: bool = False
    evs_parent: int | None = None
