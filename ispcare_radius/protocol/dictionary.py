"""The compiled, immutable attribute table and packet-level encode/decode; stdlib only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from .attrtypes import AttrDef, AttrType, VendorDef
from .authenticator import (
    hide_password,
    hide_tunnel_password,
    unhide_password,
    unhide_tunnel_password,
)
from .codes import DecodeError, DropReason
from .packet import MAX_ATTRIBUTE_VALUE, VENDOR_SPECIFIC, Packet, encode_attributes
from .values import (
    DECODERS,
    Value,
    decode_plain,
    decode_tagged,
    encode_plain,
    encode_value,
    parse_text_value,
)

__all__ = ["Decoded", "Dictionary"]

Decoded = tuple[AttrDef, Value, int | None]

_MORE = 0x80  # RFC 6929 section 2.2: the "M" (More) flag of long extended attributes.
_EVS = 26  # RFC 6929 section 2.4: Extended-Type 26 is Extended-Vendor-Specific.


def _raw_def(vendor: int, parent: tuple[int, ...], code: int) -> AttrDef:
    """A synthetic octets definition for an unknown or undecodable attribute."""
    if vendor and parent:
        name = f"Attr-{parent[0]}.26.{vendor}.{code}"
    elif vendor:
        name = f"Attr-26.{vendor}.{code}"
    else:
        name = "Attr-" + ".".join(str(p) for p in (*parent, code))
    return AttrDef(name=name, vendor=vendor, code=code, type=AttrType.OCTETS, parent=parent)


class Dictionary:
    """An immutable attribute table built by :func:`load_dictionary`."""

    __slots__ = ("_by_name", "_nested", "_std", "_top", "_values", "_vendors", "_vendors_by_id")

    def __init__(
        self,
        by_name: Mapping[str, AttrDef],
        top: Mapping[tuple[int, int], AttrDef],
        nested: Mapping[tuple[int, tuple[int, ...]], AttrDef],
        vendors: Mapping[str, VendorDef],
    ) -> None:
        self._by_name = MappingProxyType({k.lower(): v for k, v in by_name.items()})
        self._top = MappingProxyType(dict(top))
        self._nested = MappingProxyType(dict(nested))
        self._vendors = MappingProxyType({k.lower(): v for k, v in vendors.items()})
        self._vendors_by_id = MappingProxyType({v.id: v for v in vendors.values()})
        std: list[AttrDef | None] = [None] * 256
        for (vendor, code), defn in self._top.items():
            if vendor == 0 and 0 <= code <= 255:
                std[code] = defn
        self._std = tuple(std)
        self._values = MappingProxyType(
            {
                (d.name.lower(), k.lower()): n
                for d in self._by_name.values()
                for k, n in d.values.items()
            }
        )

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[AttrDef]:
        return iter(self._by_name.values())

    def __repr__(self) -> str:
        return f"Dictionary({len(self._by_name)} names, {len(self._vendors)} vendors)"

    def by_name(self, name: str) -> AttrDef:
        """Return the definition named ``name`` (case-insensitive); KeyError if unknown."""
        return self._by_name[name.lower()]

    def find(self, vendor: int, code: int) -> AttrDef | None:
        """Return the top-level (vendor 0) or Vendor-Specific definition, or None."""
        if vendor == 0 and 0 <= code <= 255:
            return self._std[code]
        return self._top.get((vendor, code))

    def find_nested(self, vendor: int, path: tuple[int, ...]) -> AttrDef | None:
        """Return a nested definition by its full number path, e.g. ``(0, (241, 1))``."""
        return self._nested.get((vendor, path))

    def vendor_id(self, name: str) -> int:
        """Return the IANA enterprise number of vendor ``name``; KeyError if unknown."""
        return self._vendors[name.lower()].id

    def vendor(self, vendor_id: int) -> VendorDef | None:
        """Return the vendor definition for an enterprise number, or None."""
        return self._vendors_by_id.get(vendor_id)

    def value_of(self, attr_name: str, value_name: str) -> int:
        """Return the number of VALUE ``value_name`` of ``attr_name``; KeyError if unknown."""
        return self._values[(attr_name.lower(), value_name.lower())]

    # -- encoding -------------------------------------------------------------

    def encode(
        self,
        name: str,
        value: Value | str,
        *,
        tag: int | None = None,
        secret: bytes | None = None,
        authenticator: bytes | None = None,
    ) -> bytes:
        """Encode one attribute as complete wire attribute(s).

        Text is parsed per the attribute type ("10.0.0.1", "Framed-User",
        "0x0102"). Vendor attributes are wrapped in Vendor-Specific (26) with
        the vendor's format; ``concat`` values over 253 octets are split;
        extended and long-extended attributes follow RFC 6929. Hidden
        attributes (``encrypt=1|2``) need ``secret`` and the Request
        Authenticator of the request (being answered) as ``authenticator``.
        """
        defn = self.by_name(name)
        if isinstance(value, str) and defn.type is not AttrType.STRING:
            value = parse_text_value(defn, value)
        if defn.encrypt:
            data = self._hide(defn, value, tag, secret, authenticator)
        else:
            data = encode_value(defn, value, tag=tag)
        return self.wrap(defn, data)

    def _hide(
        self,
        defn: AttrDef,
        value: Value,
        tag: int | None,
        secret: bytes | None,
        authenticator: bytes | None,
    ) -> bytes:
        if secret is None or authenticator is None:
            raise ValueError(f"{defn.name} is hidden: secret and authenticator are needed")
        plain = encode_plain(defn, value)
        if defn.encrypt == 1:
            return hide_password(plain, secret, authenticator)
        if defn.encrypt == 2:
            hidden = hide_tunnel_password(plain, secret, authenticator)
            # RFC 2868 section 3.5: the Tag field of Tunnel-Password is always present.
            return bytes((tag or 0,)) + hidden if defn.has_tag else hidden
        raise ValueError(f"{defn.name}: encrypt={defn.encrypt} is not supported")

    def wrap(self, defn: AttrDef, data: bytes) -> bytes:
        """Wrap an encoded value of ``defn`` in its wire attribute header(s)."""
        parent = defn.parent
        if not parent:
            if defn.vendor:
                return self._wrap_vsa(defn, data)
            if defn.concat:
                step = MAX_ATTRIBUTE_VALUE
                chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
                return encode_attributes((defn.code, c) for c in chunks)
            return encode_attributes(((defn.code, data),))
        top = self._std[parent[0]] if 0 <= parent[0] <= 255 else None
        if top is None or top.type not in (AttrType.EXTENDED, AttrType.LONG_EXTENDED):
            raise ValueError(f"{defn.name}: encode its parent TLV instead")
        if defn.vendor:
            if parent[1:] != (_EVS,):
                raise ValueError(f"{defn.name}: nested vendor TLVs are not supported")
            head = bytes((_EVS,)) + defn.vendor.to_bytes(4) + bytes((defn.code,))
        elif len(parent) == 1:
            head = bytes((defn.code,))
        else:
            raise ValueError(f"{defn.name}: encode its parent TLV instead")
        if top.type is AttrType.EXTENDED:
            # RFC 6929 section 2.1: Type, Length, Extended-Type, Value.
            return encode_attributes(((top.code, head + data),))
        # RFC 6929 section 2.2: Type, Length, Extended-Type, Flags, Value; the
        # Value of fragments is concatenated, the M flag set on all but the last.
        payload = head[1:] + data
        step = MAX_ATTRIBUTE_VALUE - 2
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        last = len(chunks) - 1
        return encode_attributes(
            (top.code, bytes((head[0], _MORE if i < last else 0)) + c) for i, c in enumerate(chunks)
        )

    def _wrap_vsa(self, defn: AttrDef, data: bytes) -> bytes:
        # RFC 2865 section 5.26: Vendor-Id (4 octets) then the vendor's own
        # sub-attribute layout, normally type (1), length (1), value.
        vd = self._vendors_by_id.get(defn.vendor)
        ts, ls, cont = (vd.type_size, vd.length_size, vd.continuation) if vd else (1, 1, False)
        head_len = ts + ls + (1 if cont else 0)
        room = MAX_ATTRIBUTE_VALUE - 4 - head_len
        chunks = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
        if len(chunks) > 1 and not cont:
            raise ValueError(f"{defn.name}: value too long for one Vendor-Specific attribute")
        vid = defn.vendor.to_bytes(4)
        pairs = []
        for i, chunk in enumerate(chunks):
            sub = defn.code.to_bytes(ts)
            if ls:
                sub += (head_len + len(chunk)).to_bytes(ls)
            if cont:
                sub += bytes((_MORE if i < len(chunks) - 1 else 0,))
            pairs.append((VENDOR_SPECIFIC, vid + sub + chunk))
        return encode_attributes(pairs)

    # -- decoding -------------------------------------------------------------

    def decode(
        self,
        packet: Packet,
        *,
        secret: bytes | None = None,
        request_authenticator: bytes | None = None,
    ) -> list[Decoded]:
        """Decode every attribute of ``packet`` to (definition, value, tag).

        ``concat`` attributes (e.g. EAP-Message) are joined into one value at
        the place of the first; long extended fragments are joined. Unknown
        or malformed attributes come back as synthetic octets definitions
        named like ``Attr-26.14988.99``. Hidden attributes are unhidden when
        ``secret`` is given (responses also need ``request_authenticator``),
        else returned as their hidden octets.
        """
        items: list[tuple[AttrDef, bytes]] = []
        concat_at: dict[int, int] = {}
        std = self._std
        attrs = packet.attributes
        n = len(attrs)
        i = 0
        while i < n:
            t, v = attrs[i]
            i += 1
            if t == VENDOR_SPECIFIC:
                self._split_vsa(v, items)
                continue
            defn = std[t]
            if defn is None:
                items.append((_raw_def(0, (), t), v))
            elif defn.concat:
                at = concat_at.get(t)
                if at is None:
                    concat_at[t] = len(items)
                    items.append((defn, v))
                else:
                    items[at] = (defn, items[at][1] + v)
            elif defn.type is AttrType.EXTENDED:
                items.append(self._extended(t, v, v[1:] if v else b""))
            elif defn.type is AttrType.LONG_EXTENDED:
                i = self._long_extended(attrs, i - 1, items)
            else:
                items.append((defn, v))
        auth = packet.authenticator if request_authenticator is None else request_authenticator
        out: list[Decoded] = []
        decoders = DECODERS
        for defn, data in items:
            try:
                if defn.plain:
                    out.append((defn, decoders[defn.type](data), None))
                elif defn.encrypt:
                    out.append(self._unhide(defn, data, secret, auth))
                else:
                    value, tag = decode_tagged(defn, data)
                    out.append((defn, value, tag))
            except DecodeError:
                out.append((_raw_def(defn.vendor, defn.parent, defn.code), data, None))
        return out

    def _unhide(self, defn: AttrDef, data: bytes, secret: bytes | None, auth: bytes) -> Decoded:
        tag: int | None = None
        if defn.has_tag:
            if not data:
                raise DecodeError(DropReason.MALFORMED_ATTRIBUTE)
            tag, data = data[0] or None, data[1:]
        if secret is None or defn.encrypt not in (1, 2):
            return defn, data, tag
        if defn.encrypt == 1:
            plain = unhide_password(data, secret, auth)
        else:
            plain = unhide_tunnel_password(data, secret, auth)
        return defn, decode_plain(defn.type, plain), tag

    def _extended(self, t: int, v: bytes, data: bytes) -> tuple[AttrDef, bytes]:
        if not v:
            return _raw_def(0, (), t), v
        ext = v[0]
        if ext == _EVS:
            if len(data) < 5:
                return _raw_def(0, (t,), ext), data
            vid = int.from_bytes(data[:4])
            evs_type = data[4]
            found = self._nested.get((vid, (t, _EVS, evs_type)))
            return (found or _raw_def(vid, (t, _EVS), evs_type)), data[5:]
        found = self._nested.get((0, (t, ext)))
        return (found or _raw_def(0, (t,), ext)), data

    def _long_extended(
        self, attrs: tuple[tuple[int, bytes], ...], i: int, items: list[tuple[AttrDef, bytes]]
    ) -> int:
        t, v = attrs[i]
        if len(v) < 2:
            items.append((_raw_def(0, (), t), v))
            return i + 1
        ext, flags = v[0], v[1]
        parts = [v[2:]]
        i += 1
        while flags & _MORE:
            # RFC 6929 section 2.2: fragments MUST be consecutive attributes of
            # the same Type and Extended-Type.
            if i >= len(attrs) or attrs[i][0] != t or len(attrs[i][1]) < 2 or attrs[i][1][0] != ext:
                items.append((_raw_def(0, (t,), ext), b"".join(parts)))
                return i
            flags = attrs[i][1][1]
            parts.append(attrs[i][1][2:])
            i += 1
        items.append(self._extended(t, bytes((ext,)), b"".join(parts)))
        return i

    def _split_vsa(self, v: bytes, items: list[tuple[AttrDef, bytes]]) -> None:
        if len(v) < 5:
            items.append((_raw_def(0, (), VENDOR_SPECIFIC), v))
            return
        vid = int.from_bytes(v[:4])
        vd = self._vendors_by_id.get(vid)
        ts, ls, cont = (vd.type_size, vd.length_size, vd.continuation) if vd else (1, 1, False)
        head = ts + ls + (1 if cont else 0)
        found: list[tuple[AttrDef, bytes]] = []
        pos, end = 4, len(v)
        top = self._top
        while pos < end:
            if end - pos < head:
                break
            code = int.from_bytes(v[pos : pos + ts])
            sub_len = int.from_bytes(v[pos + ts : pos + ts + ls]) if ls else end - pos
            if sub_len < head or pos + sub_len > end:
                break
            defn = top.get((vid, code)) or _raw_def(vid, (), code)
            found.append((defn, v[pos + head : pos + sub_len]))
            pos += sub_len
        else:
            items.extend(found)
            return
        # RFC 2865 section 5.26 leaves the inner layout to the vendor; one we
        # cannot walk is kept whole rather than half-decoded.
        items.append((_raw_def(0, (), VENDOR_SPECIFIC), v))
