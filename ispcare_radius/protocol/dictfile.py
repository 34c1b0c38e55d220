"""FreeRADIUS-format dictionary file reader producing a Dictionary; reads files, no other I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .attrtypes import AttrDef, AttrType, VendorDef
from .dictionary import Dictionary

__all__ = ["load_dictionary"]

_TYPE_ALIASES = {
    "uint8": AttrType.BYTE,
    "uint16": AttrType.SHORT,
    "uint32": AttrType.INTEGER,
    "uint64": AttrType.INTEGER64,
    "int32": AttrType.SIGNED,
    "ipv4addr": AttrType.IPADDR,
}
_KNOWN_TYPES = {t.value: t for t in AttrType} | _TYPE_ALIASES
# Flags that change nothing on the wire for us.
_IGNORED_FLAGS = frozenset({"virtual", "secret", "internal"})
_MAX_INCLUDE_DEPTH = 32


@dataclass(slots=True)
class _Attr:
    name: str
    vendor: int
    code: int
    parent: tuple[int, ...]
    type: AttrType
    has_tag: bool = False
    encrypt: int = 0
    concat: bool = False
    array: bool = False


@dataclass(slots=True)
class _Value:
    attr: str
    name: str
    number: int
    where: str


@dataclass(slots=True)
class _FileState:
    vendor: VendorDef | None = None
    bad_vendor: bool = False
    tlv: list[tuple[int, ...]] = field(default_factory=list)
    skip_protocol: bool = False


def _number(text: str) -> int:
    if text[:2].lower() == "0x":
        return int(text[2:], 16)
    return int(text, 10)


class _Loader:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.vendors: dict[str, VendorDef] = {}
        self.attrs: list[_Attr] = []
        self.attr_by_name: dict[str, _Attr] = {}
        self.values: list[_Value] = []
        self.stack: list[Path] = []

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{where}: {message}")

    def load_file(self, path: Path, *, optional: bool, where: str) -> None:
        try:
            resolved = path.resolve()
            if resolved in self.stack:
                self.warn(where, f"include loop on {path.name}")
                return
            if len(self.stack) >= _MAX_INCLUDE_DEPTH:
                self.warn(where, "includes nested too deeply")
                return
            text = resolved.read_text(encoding="utf-8", errors="replace")
        except OSError:
            if not optional:
                self.warn(where, f"cannot read {path}")
            return
        self.stack.append(resolved)
        state = _FileState()
        try:
            for lineno, line in enumerate(text.splitlines(), 1):
                tokens = line.split("#", 1)[0].split()
                if tokens:
                    self.line(tokens, state, resolved, f"{path}:{lineno}")
        finally:
            self.stack.pop()
        if state.vendor is not None or state.bad_vendor:
            self.warn(f"{path}", "BEGIN-VENDOR without END-VENDOR")

    def line(self, tokens: list[str], state: _FileState, path: Path, where: str) -> None:
        keyword = tokens[0]
        if state.skip_protocol:
            if keyword == "END-PROTOCOL":
                state.skip_protocol = False
            return
        if keyword in ("$INCLUDE", "$INCLUDE-"):
            if len(tokens) != 2:
                self.warn(where, "$INCLUDE needs one path")
                return
            target = Path(tokens[1])
            if not target.is_absolute():
                target = path.parent / target
            self.load_file(target, optional=keyword == "$INCLUDE-", where=where)
        elif keyword == "ATTRIBUTE":
            self.attribute(tokens, state, where)
        elif keyword == "VALUE":
            if len(tokens) != 4:
                self.warn(where, "VALUE needs an attribute, a name and a number")
                return
            try:
                number = _number(tokens[3])
            except ValueError:
                self.warn(where, "VALUE number is not a number")
                return
            self.values.append(_Value(tokens[1], tokens[2], number, where))
        elif keyword == "VENDOR":
            self.vendor(tokens, where)
        elif keyword == "BEGIN-VENDOR":
            self.begin_vendor(tokens, state, where)
        elif keyword == "END-VENDOR":
            state.vendor = None
            state.bad_vendor = False
        elif keyword == "BEGIN-TLV":
            parent = self.attr_by_name.get(tokens[1].lower()) if len(tokens) > 1 else None
            if parent is None or parent.type is not AttrType.TLV:
                self.warn(where, "BEGIN-TLV names no known tlv attribute")
                state.tlv.append(())
            else:
                state.tlv.append((*parent.parent, parent.code))
        elif keyword == "END-TLV":
            if state.tlv:
                state.tlv.pop()
        elif keyword == "BEGIN-PROTOCOL":
            state.skip_protocol = len(tokens) < 2 or tokens[1].upper() != "RADIUS"
        elif keyword in ("PROTOCOL", "END-PROTOCOL"):
            return
        else:
            self.warn(where, f"unsupported keyword {keyword}")

    def vendor(self, tokens: list[str], where: str) -> None:
        if len(tokens) not in (3, 4):
            self.warn(where, "VENDOR needs a name and a number")
            return
        try:
            vid = _number(tokens[2])
            ts, ls, cont = 1, 1, False
            if len(tokens) == 4:
                if not tokens[3].startswith("format="):
                    raise ValueError
                parts = tokens[3][len("format=") :].split(",")
                ts, ls = int(parts[0]), int(parts[1])
                cont = parts[2:] == ["c"]
                if ts not in (1, 2, 4) or ls not in (0, 1, 2) or len(parts) > 3:
                    raise ValueError
                if len(parts) == 3 and not cont:
                    raise ValueError
        except (ValueError, IndexError):
            self.warn(where, "VENDOR has a bad number or format")
            return
        self.vendors[tokens[1].lower()] = VendorDef(tokens[1], vid, ts, ls, cont)

    def begin_vendor(self, tokens: list[str], state: _FileState, where: str) -> None:
        found = self.vendors.get(tokens[1].lower()) if len(tokens) > 1 else None
        if found is None:
            self.warn(where, "BEGIN-VENDOR names an unknown vendor; its block is skipped")
            state.bad_vendor = True
            return
        if len(tokens) > 2:
            fmt = tokens[2]
            prefix = "format=Extended-Vendor-Specific-"
            if not fmt.startswith(prefix) or fmt[len(prefix) :] not in "123456":
                self.warn(where, "BEGIN-VENDOR has an unknown format; its block is skipped")
                state.bad_vendor = True
                return
            found = VendorDef(found.name, found.id, 1, 1, False, 240 + int(fmt[len(prefix) :]))
        state.vendor = found
        state.bad_vendor = False

    def attribute(self, tokens: list[str], state: _FileState, where: str) -> None:
        if state.bad_vendor:
            self.warn(where, "ATTRIBUTE inside a skipped vendor block")
            return
        if len(tokens) < 4:
            self.warn(where, "ATTRIBUTE needs a name, a number and a type")
            return
        name, code_text, type_text = tokens[1], tokens[2], tokens[3].lower()
        if "[" in type_text and type_text.endswith("]"):
            type_text = type_text.split("[", 1)[0]  # fixed-size octets[N]
        type_ = _KNOWN_TYPES.get(type_text)
        if type_ is None:
            self.warn(where, f"ATTRIBUTE {name} has unsupported type {tokens[3]}")
            return
        try:
            path = tuple(_number(p) for p in code_text.split("."))
        except ValueError:
            self.warn(where, f"ATTRIBUTE {name} has a bad number")
            return
        vendor = state.vendor
        attr = _Attr(name, vendor.id if vendor else 0, path[-1], path[:-1], type_)
        for flag in ",".join(tokens[4:]).split(",") if len(tokens) > 4 else ():
            if not self.flag(attr, flag):
                self.warn(where, f"ATTRIBUTE {name} has unsupported flag {flag}")
                return
        if state.tlv:
            attr.parent = state.tlv[-1] + attr.parent
        if vendor is not None and vendor.evs_parent is not None:
            attr.parent = (vendor.evs_parent, 26, *attr.parent)
        limit = 1 << (8 * vendor.type_size) if vendor is not None else 1 << 16
        if not 0 <= attr.code < limit or any(not 0 <= p <= 255 for p in attr.parent):
            self.warn(where, f"ATTRIBUTE {name} number out of range")
            return
        self.attrs.append(attr)
        self.attr_by_name[name.lower()] = attr

    def flag(self, attr: _Attr, flag: str) -> bool:
        if flag == "has_tag":
            attr.has_tag = True
        elif flag in ("encrypt=1", "encrypt=2", "encrypt=3"):
            attr.encrypt = int(flag[-1])
        elif flag == "concat":
            attr.concat = True
        elif flag == "array":
            attr.array = True
        elif flag in _IGNORED_FLAGS or flag == "":
            pass
        elif flag.lower() in self.vendors and attr.vendor == 0:
            # Old layout: the fifth field names the vendor.
            attr.vendor = self.vendors[flag.lower()].id
        else:
            return False
        return True

    def compile(self) -> Dictionary:
        values: dict[str, dict[str, int]] = {}
        for v in self.values:
            if v.attr.lower() not in self.attr_by_name:
                self.warn(v.where, f"VALUE {v.name} for unknown attribute {v.attr}")
                continue
            values.setdefault(v.attr.lower(), {})[v.name] = v.number
        by_name: dict[str, AttrDef] = {}
        top: dict[tuple[int, int], AttrDef] = {}
        nested: dict[tuple[int, tuple[int, ...]], AttrDef] = {}
        for a in self.attrs:
            vals = values.get(a.name.lower(), {})
            defn = AttrDef(
                name=a.name,
                vendor=a.vendor,
                code=a.code,
                type=a.type,
                has_tag=a.has_tag,
                encrypt=a.encrypt,
                concat=a.concat,
                values=MappingProxyType(vals),
                array=a.array,
                parent=a.parent,
                value_names=MappingProxyType({n: k for k, n in vals.items()}),
            )
            by_name[a.name.lower()] = defn
            if a.parent:
                nested[(a.vendor, (*a.parent, a.code))] = defn
            else:
                top[(a.vendor, a.code)] = defn
        return Dictionary(by_name, top, nested, self.vendors)


def load_dictionary(paths: Sequence[Path]) -> tuple[Dictionary, list[str]]:
    """Load FreeRADIUS-format dictionary files into an immutable :class:`Dictionary`.

    Returns the dictionary and one human-readable warning per line that could
    not be used. A name defined again later in the load order overrides the
    earlier definition, as does a later definition of the same number.
    """
    loader = _Loader()
    for path in paths:
        loader.load_file(Path(path), optional=False, where=str(path))
    return loader.compile(), loader.warnings
