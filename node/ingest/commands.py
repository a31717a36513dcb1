"""DIMSE command sets as the node reads and writes them (PS3.7 6.3, 9.3.1, 9.3.5).

A command set is always Implicit VR Little Endian (PS3.7 6.3.1) and its elements are all in
group 0000, so a few structs read and write it: the node needs four fields of a request and
writes fixed-shape C-STORE and C-ECHO responses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# PS3.7 E.1-1: Command Field values
C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000
NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 E.1-1)

_AFFECTED_SOP_CLASS_UID = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
_COMMAND_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE_UID = 0x1000
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
ERROR_COMMENT_MAX = 64  # LO (PS3.5 6.2)


class MalformedCommand(ValueError):
    """The bytes are not a command set the node can read (PS3.7 6.3)."""


@dataclass(frozen=True)
class Command:
    command_field: int
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    has_data_set: bool


def decode(data: bytes) -> Command:
    """Read a request's command set; raise MalformedCommand when it cannot be read."""
    values: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            raise MalformedCommand("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or pos + length > len(data):
            raise MalformedCommand(f"({group:04X},{element:04X}) does not fit a command set")
        values[element] = data[pos : pos + length]
        pos += length

    def us(element: int) -> int:
        value = values.get(element)
        if value is None or len(value) != 2:
            raise MalformedCommand(f"(0000,{element:04X}) is missing or not a US value")
        return int(_US.unpack(value)[0])

    def ui(element: int) -> str:
        return values.get(element, b"").rstrip(b"\0 ").decode("ascii", "replace")

    field = us(_COMMAND_FIELD)
    return Command(
        command_field=field,
        message_id=us(_MESSAGE_ID) if field != C_CANCEL_RQ else us(_MESSAGE_ID_BEING_RESPONDED_TO),
        affected_sop_class_uid=ui(_AFFECTED_SOP_CLASS_UID),
        affected_sop_instance_uid=ui(_AFFECTED_SOP_INSTANCE_UID),
        has_data_set=us(_COMMAND_DATA_SET_TYPE) != NO_DATA_SET,
    )


def _element(element: int, value: bytes, pad: bytes = b"\0") -> bytes:
    if len(value) % 2:
        value += pad
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _error_comment(text: str) -> bytes:
    # LO: 64 characters, no backslash (the value separator); the default character repertoire
    cleaned = text.replace("\\", "/").encode("ascii", "replace")
    return cleaned[:ERROR_COMMENT_MAX]


def encode_response(request: Command, status: int, error_comment: str = "") -> bytes:
    """The response command set to `request` (PS3.7 9.3.1.2 C-STORE-RSP, 9.3.5.2 C-ECHO-RSP)."""
    elements = []
    if request.affected_sop_class_uid:
        elements.append(_element(_AFFECTED_SOP_CLASS_UID, request.affected_sop_class_uid.encode("ascii", "replace")))
    elements.append(_element(_COMMAND_FIELD, _US.pack(request.command_field | RESPONSE_BIT)))
    elements.append(_element(_MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(request.message_id)))
    elements.append(_element(_COMMAND_DATA_SET_TYPE, _US.pack(NO_DATA_SET)))
    elements.append(_element(_STATUS, _US.pack(status)))
    if error_comment:
        elements.append(_element(_ERROR_COMMENT, _error_comment(error_comment), b" "))
    if request.affected_sop_instance_uid and request.command_field == C_STORE_RQ:
        elements.append(
            _element(_AFFECTED_SOP_INSTANCE_UID, request.affected_sop_instance_uid.encode("ascii", "replace"))
        )
    body = b"".join(elements)
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body
