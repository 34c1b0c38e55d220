"""Sans-IO RADIUS codec: framing, authenticators, dictionaries, typed values; imports no I/O."""

from .attrtypes import AttrDef, AttrType, VendorDef
from .authenticator import (
    build_request,
    build_response,
    hide_password,
    hide_tunnel_password,
    message_authenticator_ok,
    random_authenticator,
    request_authenticator_ok,
    response_authenticator,
    unhide_password,
    unhide_tunnel_password,
    verify_response,
)
from .codes import Code, DecodeError, DropReason
from .dictfile import load_dictionary
from .dictionary import Decoded, Dictionary
from .packet import Packet, build_packet, encode_attributes, parse
from .values import Value, decode_tagged, decode_value, encode_value, parse_text_value

__all__ = [
    "AttrDef",
    "AttrType",
    "Code",
    "DecodeError",
    "Decoded",
    "Dictionary",
    "DropReason",
    "Packet",
    "Value",
    "VendorDef",
    "build_packet",
    "build_request",
    "build_response",
    "decode_tagged",
    "decode_value",
    "encode_attributes",
    "encode_value",
    "hide_password",
    "hide_tunnel_password",
    "load_dictionary",
    "message_authenticator_ok",
    "parse",
    "parse_text_value",
    "random_authenticator",
    "request_authenticator_ok",
    "response_authenticator",
    "unhide_password",
    "unhide_tunnel_password",
    "verify_response",
]
