"""The attributes the node indexes for each received instance, and two ways to read them.

`read_header` parses a whole DICOM file with pydicom. `scan_elements` walks the first bytes of
an encoded data set (PS3.5 7.1: tag, VR, length, value; elements in ascending tag order) and
picks out the indexed elements without decoding anything else, so the C-STORE receive path can
name the instance's file from its first fragment. Both hand the same raw elements to pydicom for
value conversion (character sets, multi-values, padding), so both give the same `Header`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import cast

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import RE_VALID_UID

HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
]
# elements are encoded in ascending tag order (PS3.5 7.1): parsing stops after the last one we index
_HEADER_TAG_NUMBERS: list[BaseTag | int] = [Tag(keyword) for keyword in HEADER_TAGS]
LAST_HEADER_TAG = max(_HEADER_TAG_NUMBERS)
SPECIFIC_CHARACTER_SET = 0x00080005  # needed to convert the text values (PS3.5 6.1.2.3)
_WANTED = frozenset(int(t) for t in _HEADER_TAG_NUMBERS) | {SPECIFIC_CHARACTER_SET}
# (keyword, tag, VR from the data dictionary) of each indexed attribute
_INDEXED = [(keyword, int(Tag(keyword)), dictionary_VR(keyword)) for keyword in HEADER_TAGS]
_VALID_UID = re.compile(RE_VALID_UID)

# PS3.5 Table 7.1-1: VRs whose explicit encoding has 2 reserved bytes and a 32-bit length
_LONG_VRS = frozenset(
    b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()
)
_SHORT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split()
)
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_NESTING = 16
_TAG = struct.Struct("<HH")
_TAG_LENGTH = struct.Struct("<HHL")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_U32 = struct.Struct("<L")

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# PS3.5 A.1-A.5: every accepted syntax but these encodes the data set as Explicit VR Little Endian
_NOT_SCANNED_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian: the bytes are zlib data
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
})


class UnreadableInstance(Exception):
    """The bytes are not a DICOM dataset the node can index (missing UIDs, garbage)."""


class NotScannable(Exception):
    """The data set uses an encoding the byte scan does not walk; pydicom reads it instead."""


@dataclass(frozen=True)
class Header:
    """The few attributes the node indexes; read without touching pixel data."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: str = ""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in cast(Iterable[object], value))
    return str(value).strip()


def _past_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > LAST_HEADER_TAG


def _validated(
    values: Mapping[str, str],
    transfer_syntax: str,
    media_class: str,
    expected_sop_instance_uid: str | None,
) -> Header:
    sop_instance = values["SOPInstanceUID"] or (expected_sop_instance_uid or "")
    if expected_sop_instance_uid and sop_instance != expected_sop_instance_uid:
        raise UnreadableInstance(
            f"SOPInstanceUID in the dataset ({sop_instance}) differs from the request's"
            f" Affected SOP Instance UID ({expected_sop_instance_uid})"
        )
    header = Header(
        sop_class_uid=values["SOPClassUID"] or media_class,
        sop_instance_uid=sop_instance,
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        modality=values["Modality"],
        body_part=values["BodyPartExamined"],
        series_description=values["SeriesDescription"],
        protocol_name=values["ProtocolName"],
        image_type=values["ImageType"],
    )
    for name in ("sop_instance_uid", "study_uid", "series_uid", "sop_class_uid"):
        uid = getattr(header, name)
        if not uid:
            raise UnreadableInstance(f"the dataset has no {name.replace('_', ' ')}")
        if not _is_valid_uid(uid):
            raise UnreadableInstance(f"{name.replace('_', ' ')} {uid!r} is not a valid UID")
    return header


def _is_valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and _VALID_UID.match(uid) is not None  # what pydicom's UID.is_valid checks


def _dataset_values(ds: Dataset) -> dict[str, str]:
    try:
        return {keyword: _text(ds.get(keyword)) for keyword in HEADER_TAGS}
    except Exception as exc:  # pydicom raises many kinds on garbage; all mean "cannot understand"
        raise UnreadableInstance(f"cannot parse the dataset: {type(exc).__name__}: {exc}") from exc


def read_header(raw: bytes, expected_sop_instance_uid: str | None = None) -> Header:
    """Parse the indexing attributes from a DICOM file's bytes (preamble + meta + dataset)."""
    try:
        # what dcmread(stop_before_pixels=True) does, but stopping at the last indexed tag
        ds = read_partial(BytesIO(raw), stop_when=_past_header, specific_tags=_HEADER_TAG_NUMBERS)
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    except (InvalidDicomError, ValueError, KeyError, EOFError, OverflowError, TypeError) as exc:
        raise UnreadableInstance(f"cannot parse the dataset: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on garbage; all mean "cannot understand"
        raise UnreadableInstance(f"cannot parse the dataset: {type(exc).__name__}: {exc}") from exc
    return _validated(_dataset_values(ds), transfer_syntax, media_class, expected_sop_instance_uid)


def _ascii_values(elements: Mapping[int, RawDataElement]) -> dict[str, str] | None:
    """What pydicom's conversion and `_text` make of plain ASCII values; None for anything else.

    UI and CS (PS3.5 6.2): trailing spaces and NULs are padding, then values split at "\\";
    LO: split first, each value loses its trailing padding. A single value is also stripped.
    """
    values: dict[str, str] = {}
    for keyword, tag, vr in _INDEXED:
        element = elements.get(tag)
        if element is None:
            values[keyword] = ""
            continue
        raw = element.value
        if (element.VR is not None and element.VR != vr) or raw is None:
            return None
        if not raw.isascii() or b"\x1b" in raw:  # other character sets: pydicom decodes them
            return None
        text = raw.decode("ascii")
        if vr == "LO":
            parts = [part.rstrip("\0 ") for part in text.split("\\")]
        else:
            parts = text.rstrip(" \0").split("\\")
        values[keyword] = parts[0].strip() if len(parts) == 1 else "\\".join(parts)
    return values


def header_from_elements(
    elements: Mapping[int, RawDataElement],
    transfer_syntax: str,
    media_class: str,
    expected_sop_instance_uid: str | None = None,
) -> Header:
    """The `Header` of a data set whose indexed elements `scan_elements` found."""
    values = _ascii_values(elements)
    if values is None:
        # pydicom converts each raw value on access, with the data set's (0008,0005) as read_partial does
        ds = Dataset({BaseTag(tag): element for tag, element in elements.items()})
        values = _dataset_values(ds)
    return _validated(values, transfer_syntax, media_class, expected_sop_instance_uid)


def is_scannable(transfer_syntax: str) -> bool:
    return transfer_syntax not in _NOT_SCANNED_SYNTAXES


# -- the byte scan ----------------------------------------------------------------------------


def _element(buf: memoryview, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int] | None:
    """(tag, VR, value length, value offset) of the element at `pos`; None if `buf` ends first."""
    end = len(buf)
    if pos + 8 > end:
        return None
    if implicit:
        group, number, length = _TAG_LENGTH.unpack_from(buf, pos)
        return group << 16 | number, None, length, pos + 8
    group, number, vr, length = _EXPLICIT_SHORT.unpack_from(buf, pos)
    tag = group << 16 | number
    if group == 0xFFFE:  # item and delimiter tags have no VR in either encoding (PS3.5 7.5)
        group, number, length = _TAG_LENGTH.unpack_from(buf, pos)
        return tag, None, length, pos + 8
    if vr in _SHORT_VRS:
        return tag, vr, length, pos + 8
    if vr not in _LONG_VRS:
        raise NotScannable(f"unknown VR {bytes(vr)!r} in ({group:04X},{number:04X})")
    if pos + 12 > end:
        return None
    return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12


def _skip_sequence(buf: memoryview, pos: int, implicit: bool, depth: int) -> int | None:
    """Offset after the undefined-length sequence whose first item starts at `pos`."""
    if depth > _MAX_NESTING:
        raise NotScannable("sequences nested too deeply")
    while True:
        if pos + 8 > len(buf):
            return None
        group, number, length = _TAG_LENGTH.unpack_from(buf, pos)
        tag = group << 16 | number
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise NotScannable(f"({group:04X},{number:04X}) where a sequence item belongs")
        if length != UNDEFINED_LENGTH:
            pos += length
            continue
        while True:  # an undefined-length item: its elements up to the item delimiter
            found = _element(buf, pos, implicit)
            if found is None:
                return None
            tag, vr, length, value = found
            if tag == _ITEM_END:
                pos = value
                break
            if length == UNDEFINED_LENGTH:
                skipped = _skip_sequence(buf, value, implicit or vr == b"UN", depth + 1)
                if skipped is None:
                    return None
                pos = skipped
            else:
                pos = value + length


def scan_elements(data: bytes | bytearray | memoryview, transfer_syntax: str) -> dict[int, RawDataElement] | None:
    """The indexed top-level elements (and the character set) of an encoded data set.

    `data` is the start of the data set (no file meta). Returns None when `data` ends before
    the first element past the last indexed tag; raises NotScannable for encodings the scan does
    not walk, including bytes that are no data set at all (pydicom then decides what they are).
    """
    if not is_scannable(transfer_syntax):
        raise NotScannable(f"transfer syntax {transfer_syntax}")
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    buf = memoryview(data)
    found: dict[int, RawDataElement] = {}
    pos = 0
    while True:
        if pos + 4 > len(buf):
            return None
        group, number = _TAG.unpack_from(buf, pos)
        tag = group << 16 | number
        if tag > LAST_HEADER_TAG:
            return found
        element = _element(buf, pos, implicit)
        if element is None:
            return None
        tag, vr, length, value = element
        if group == 0xFFFE:
            raise NotScannable(f"({group:04X},{number:04X}) at the top level of the data set")
        if length == UNDEFINED_LENGTH:
            if tag in _WANTED:
                raise NotScannable(f"({group:04X},{number:04X}) has an undefined length")
            skipped = _skip_sequence(buf, value, implicit or vr == b"UN", 1)
            if skipped is None:
                return None
            pos = skipped
            continue
        if tag in _WANTED:
            if value + length > len(buf):
                return None
            vr_text = vr.decode() if vr is not None else None
            found[tag] = RawDataElement(
                BaseTag(tag), vr_text, length, bytes(buf[value : value + length]), value, implicit, True
            )
        pos = value + length
