"""Byte layouts of the accounting spool: record bodies, frames, segment headers, replay offset.

Pure: no file, clock or event loop. Imports aaa (the ``AcctRecord`` value) and
privacy (AEAD helpers); never server or cli. The spool (``store.spool``) owns
the files these bytes live in.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import json
import struct
import types
import typing
import zlib
from datetime import datetime
from typing import Any, Final

from ispcare_radius.aaa.accounting import AcctRecord
from ispcare_radius.privacy.crypto import field_aad

SEGMENT_MAGIC: Final = b"ISPSPOOL"
SEGMENT_FORMAT: Final = 1
# magic | format (u16) | wrapped key length (u16), then the wrapped key, then crc32 (u32)
_SEGMENT_HEAD: Final = struct.Struct(">8sHH")
_CRC: Final = struct.Struct(">I")
# payload length (u32) | sequence number (u64) | crc32 over length, sequence and payload (u32)
FRAME_HEAD: Final = struct.Struct(">IQI")
MAX_PAYLOAD: Final = 1 << 20
_REPLAY: Final = struct.Struct(">QI")
AAD_TABLE: Final = "acct_spool"


class CodecError(Exception):
    """Bytes that do not decode to what they claim; the message names no content."""


def segment_key_purpose(first_seq: int) -> str:
    """Wrap purpose of a segment's data key: the key opens only its own segment."""
    return f"acct_spool:{first_seq}"


def frame_aad(seq: int) -> bytes:
    """Associated data of a sealed record: the spool and the frame's sequence number."""
    return field_aad(AAD_TABLE, "record", seq, None)


# -- segment header -------------------------------------------------------


def encode_segment_header(wrapped_key: bytes) -> bytes:
    """The bytes that open a segment file: format and the segment's wrapped data key."""
    head = _SEGMENT_HEAD.pack(SEGMENT_MAGIC, SEGMENT_FORMAT, len(wrapped_key)) + wrapped_key
    return head + _CRC.pack(zlib.crc32(head))


def decode_segment_header(data: bytes) -> tuple[bytes, int]:
    """(wrapped key, header length) from the first bytes of a segment file."""
    if len(data) < _SEGMENT_HEAD.size:
        raise CodecError("segment header truncated")
    magic, fmt, key_len = _SEGMENT_HEAD.unpack_from(data)
    if magic != SEGMENT_MAGIC or fmt != SEGMENT_FORMAT:
        raise CodecError("not a spool segment of a known format")
    end = _SEGMENT_HEAD.size + key_len
    if len(data) < end + _CRC.size:
        raise CodecError("segment header truncated")
    (crc,) = _CRC.unpack_from(data, end)
    if crc != zlib.crc32(data[:end]):
        raise CodecError("segment header checksum mismatch")
    return bytes(data[_SEGMENT_HEAD.size : end]), end + _CRC.size


# -- frames ---------------------------------------------------------------


def _frame_crc(length: int, seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack(">IQ", length, seq)))


def encode_frame(seq: int, payload: bytes) -> bytes:
    """One length-prefixed, checksummed frame."""
    if len(payload) > MAX_PAYLOAD:
        raise CodecError("spool record too large")
    return FRAME_HEAD.pack(len(payload), seq, _frame_crc(len(payload), seq, payload)) + payload


def frame_head(data: bytes) -> tuple[int, int, int]:
    """(payload length, sequence number, checksum) of a frame header."""
    if len(data) < FRAME_HEAD.size:
        raise CodecError("frame header truncated")
    length, seq, crc = FRAME_HEAD.unpack_from(data)
    if length > MAX_PAYLOAD:
        raise CodecError("frame length out of range")
    return int(length), int(seq), int(crc)


def check_frame(length: int, seq: int, crc: int, payload: bytes) -> None:
    """Raise ``CodecError`` unless ``payload`` is whole and matches its checksum."""
    if len(payload) != length or _frame_crc(length, seq, payload) != crc:
        raise CodecError("frame checksum mismatch")


# -- replay offset --------------------------------------------------------


def encode_replay_offset(seq: int) -> bytes:
    """The persisted replay offset: every record below ``seq`` is in the database."""
    return _REPLAY.pack(seq, zlib.crc32(seq.to_bytes(8, "big")))


def decode_replay_offset(data: bytes) -> int:
    if len(data) != _REPLAY.size:
        raise CodecError("replay offset truncated")
    seq, crc = _REPLAY.unpack(data)
    if crc != zlib.crc32(int(seq).to_bytes(8, "big")):
        raise CodecError("replay offset checksum mismatch")
    return int(seq)


# -- records --------------------------------------------------------------
#
# Generic over dataclasses.fields(AcctRecord), so fields added to the record
# travel without changes here. Values are JSON with tagged forms for the
# types JSON lacks; enums are stored by value and rebuilt from the annotation.


def _encode_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise CodecError("naive datetime in an accounting record")
        return {"t": value.isoformat()}
    raise CodecError(f"cannot spool a value of type {type(value).__name__}")


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(AcctRecord)


def _enum_of(annotation: Any) -> type[enum.Enum] | None:
    """The enum class in an annotation such as ``Attribution`` or ``Attribution | None``."""
    candidates = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return candidate
    return None


def _decode_value(raw: object, annotation: Any) -> object:
    if isinstance(raw, dict):
        if set(raw) == {"b"}:
            return base64.b64decode(raw["b"], validate=True)
        if set(raw) == {"t"}:
            return datetime.fromisoformat(raw["t"])
        raise CodecError("unknown tagged value")
    enum_type = _enum_of(annotation)
    if raw is not None and enum_type is not None:
        return enum_type(raw)
    return raw


def encode_record(record: AcctRecord) -> bytes:
    """Serialise every field of ``record`` (the plaintext that gets sealed)."""
    body = {f.name: _encode_value(getattr(record, f.name)) for f in dataclasses.fields(record)}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_record(data: bytes) -> AcctRecord:
    """The record ``encode_record`` wrote; fields absent (spooled by an older
    release) take their defaults, fields unknown to this release are ignored."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict):
            raise CodecError("record body is not an object")
        hints = _field_types()
        values: dict[str, Any] = {
            f.name: _decode_value(body[f.name], hints[f.name])
            for f in dataclasses.fields(AcctRecord)
            if f.name in body
        }
        return AcctRecord(**values)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CodecError(f"record body does not decode ({type(exc).__name__})") from None
