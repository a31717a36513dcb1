"""The element walk of a data set as it arrives (PS3.5 7.1-7.5), for `node.scan.DataSetScan`.

`Walker` is fed the uncompressed encoding (explicit or implicit VR, either byte order) in pieces
of any size and parses every element header: tag, VR, length. Values are skipped by count,
except the few the node indexes (a few bytes each), so it holds a few dozen bytes of state
whatever the data set's size. What it refuses is listed in node/scan.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from node.header import LAST_HEADER_TAG, WANTED_TAGS, UnreadableInstance

# PS3.5 Table 7.1-1: explicit VRs with 2 reserved bytes and a 32-bit length, and the others
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# PS3.3 C.7.6.3 Image Pixel module: what Pixel Data's length must agree with
SAMPLES_PER_PIXEL, PHOTOMETRIC, NUMBER_OF_FRAMES, ROWS, COLUMNS, BITS_ALLOCATED = (
    0x00280002,
    0x00280004,
    0x00280008,
    0x00280010,
    0x00280011,
    0x00280100,
)
IMAGE_TAGS = frozenset({SAMPLES_PER_PIXEL, PHOTOMETRIC, NUMBER_OF_FRAMES, ROWS, COLUMNS, BITS_ALLOCATED})
_TOP_LEVEL_TAGS = WANTED_TAGS | IMAGE_TAGS | {PIXEL_DATA}  # top-level elements the walk records
_LAST_HEADER_TAG = int(LAST_HEADER_TAG)
MAX_INDEXED_VALUE = 1 << 16  # the indexed attributes are UI, CS, LO: a few dozen bytes each

# frame kinds: a data set (the top level or an item's), a sequence's items, encapsulated fragments
_DATASET, _SEQUENCE, _FRAGMENTS = 0, 1, 2
_NO_END = -1


class BrokenDataSet(UnreadableInstance):
    """The bytes are not one whole data set (PS3.5 7); the message names tags, never values."""


@dataclass(frozen=True)
class ScanLimits:
    max_depth: int = 32  # nested sequences (a TID 1500 SR needs about 8)
    max_inflated_bytes: int = 1 << 31
    max_inflation_ratio: float = 200.0  # deflated images reach about 5:1, text about 20:1

    def __post_init__(self) -> None:
        if self.max_depth < 1 or self.max_inflated_bytes < 1 or self.max_inflation_ratio < 1:
            raise ValueError(f"scan limits must be positive: {self}")


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _is_sequence_in_dictionary(tag: int) -> bool:
    entry = DicomDictionary.get(tag)
    return entry is not None and entry[0] == "SQ"


@lru_cache(maxsize=1024)
def _implicit_vr(tag: int) -> str | None:
    """The VR an implicit VR element has by its tag alone (PS3.5 7.1.3), None when unknown."""
    group, number = tag >> 16, tag & 0xFFFF
    if number == 0x0000:
        return "UL"  # Group Length, of any group (PS3.5 7.2)
    if group & 1:
        return "LO" if 0x0010 <= number <= 0x00FF else None  # Private Creator (PS3.5 7.8.1)
    try:
        return str(dictionary_VR(tag))  # repeating groups (50xx, 60xx) included
    except KeyError:
        return None


def _may_be_undefined_in_implicit_vr(tag: int) -> bool:
    """Only a sequence may have an undefined length in implicit VR (PS3.5 7.1.1): one by the data
    dictionary, or an element it does not know, whose VR is then UN (an implicit VR sequence,
    PS3.5 6.2.2). DCMTK reads them the same way."""
    vr = _implicit_vr(tag)
    return vr is None or vr in ("SQ", "UN")


class _Frame:
    __slots__ = ("end", "implicit", "kind", "tag")

    def __init__(self, kind: int, end: int, implicit: bool, tag: int) -> None:
        self.kind = kind
        self.end = end  # absolute offset where a defined-length frame ends, or _NO_END
        self.implicit = implicit
        self.tag = tag  # the sequence or item that opened the frame (for messages)


_STRUCTS = {  # byte order: (tag + 32-bit length, explicit VR header, 32-bit length, US)
    little: (
        struct.Struct(f"{order}HHL"),
        struct.Struct(f"{order}HH2sH"),
        struct.Struct(f"{order}L"),
        struct.Struct(f"{order}H"),
    )
    for little, order in ((True, "<"), (False, ">"))
}


class Walker:
    """The element walk of an uncompressed encoding (explicit or implicit VR, either byte order).

    `feed` parses as many element headers as a piece holds in one loop with local variables
    (an element costs about a microsecond: a CT slice has 100-300); sequences, items, delimiters,
    kept values and headers split between pieces take the slower paths.
    """

    def __init__(self, implicit: bool, little_endian: bool, limits: ScanLimits) -> None:
        self._tag_length, self._explicit, self._u32, self.us = _STRUCTS[little_endian]
        self.little_endian = little_endian
        self._limits = limits
        self._stack = [_Frame(_DATASET, _NO_END, implicit, 0)]
        self._pos = 0  # absolute offset of the next byte to parse
        self._carry = b""  # an element header split between two pieces
        self._skip = 0  # value bytes still to pass over
        self._value_tag = 0  # the element whose value is being passed over or kept
        self._keep: bytearray | None = None  # an indexed value being kept
        self._keep_vr: str | None = None
        self.elements: dict[int, RawDataElement] = {}  # indexed attributes
        self.image: dict[int, bytes] = {}  # Image Pixel module attributes (IMAGE_TAGS)
        self.pixel_data: int | None = None  # Pixel Data's length; UNDEFINED_LENGTH: encapsulated
        self.fragments = 0  # items of encapsulated Pixel Data, the Basic Offset Table included
        self.past_header = False  # every indexed attribute that the data set has is in `elements`
        self._past_header_tag = 0  # the top-level element that made `past_header` true

    @property
    def depth(self) -> int:
        return sum(1 for frame in self._stack if frame.kind == _SEQUENCE)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        size = len(view)
        i = 0
        while i < size:
            if self._skip:
                take = min(self._skip, size - i)
                if self._keep is not None:
                    self._keep += view[i : i + take]
                self._skip -= take
                i += take
                self._pos += take
                if not self._skip:
                    self._value_done()
            elif self._carry:
                i = self._header_from_carry(view, i)
            else:
                i = self._headers(view, i, size)

    def _headers(self, view: memoryview, i: int, size: int) -> int:
        """Plain elements of the current data set, back to back: the fast path."""
        frame = self._stack[-1]
        if frame.kind != _DATASET or frame.implicit:
            return i + self._header(view, i, size)
        unpack_explicit = self._explicit.unpack_from
        unpack_u32 = self._u32.unpack_from
        end = frame.end
        top = len(self._stack) == 1
        watch = top and not self.past_header
        pos = self._pos
        start = i
        while True:
            if i + 8 > size:
                break
            group, number, vr, length = unpack_explicit(view, i)
            if vr in _SHORT_VRS:
                used = 8
            elif vr in _LONG_VRS and vr != b"SQ" and i + 12 <= size:
                length = unpack_u32(view, i + 8)[0]
                used = 12
            else:
                break  # sequences, delimiters, unknown VRs, split headers: the careful path
            tag = group << 16 | number
            value_end = pos + (i - start) + used + length
            if (
                length == UNDEFINED_LENGTH
                or (end != _NO_END and value_end > end)
                or (top and (tag in _TOP_LEVEL_TAGS or (watch and tag > _LAST_HEADER_TAG)))
            ):
                break
            if value_end - pos + start > size:  # the value continues in the next piece
                self._pos = pos + (i - start) + used
                self._value_tag = tag
                self._skip = length
                return i + used
            i += used + length
            if end != _NO_END and pos + (i - start) == end:
                break
        self._pos = pos + (i - start)
        if i == start:
            return i + self._header(view, i, size)
        if end != _NO_END and self._pos == end:
            self._frames_done()
        return i

    def _header_from_carry(self, view: memoryview, i: int) -> int:
        """Parse a header whose first bytes came with the previous piece; returns the new `i`."""
        carried = len(self._carry)
        joined = self._carry + bytes(view[i : i + 12])
        start = self._pos - carried
        self._pos = start
        used = self._header(memoryview(joined), 0, len(joined))
        if used == 0:
            self._carry = joined
            self._pos = start + len(joined)
            return i + len(joined) - carried
        self._carry = b""
        return i + used - carried

    def _header(self, buf: memoryview, i: int, size: int) -> int:
        """Parse the element header at `buf[i]`; the bytes it took. When `buf` ends first, the
        rest of it becomes the carry and all of it is taken."""
        if i + 8 > size:
            return self._to_carry(buf, i, size)
        frame = self._stack[-1]
        group, number, vr, short_length = self._explicit.unpack_from(buf, i)
        tag = group << 16 | number
        if group == 0xFFFE or frame.implicit:  # item and delimiter tags have no VR (PS3.5 7.5)
            length = self._tag_length.unpack_from(buf, i)[2]
            vr_text = None
            used = 8
        elif vr in _SHORT_VRS:
            length, vr_text, used = short_length, vr.decode(), 8
        elif vr in _LONG_VRS:
            if i + 12 > size:
                return self._to_carry(buf, i, size)
            length, vr_text, used = self._u32.unpack_from(buf, i + 8)[0], vr.decode(), 12
        else:
            raise BrokenDataSet(f"{_tag_text(tag)} at byte {self._pos} has no valid explicit VR")
        self._pos += used
        self._element(frame, tag, vr_text, length)
        return used

    def _to_carry(self, buf: memoryview, i: int, size: int) -> int:
        if self._carry:  # called from _header_from_carry: it keeps the joined bytes itself
            return 0
        self._carry = bytes(buf[i:size])
        self._pos += size - i
        return size - i

    def _element(self, frame: _Frame, tag: int, vr: str | None, length: int) -> None:
        if frame.end != _NO_END and self._pos > frame.end:
            raise BrokenDataSet(f"{_tag_text(tag)} runs past the end of {_tag_text(frame.tag)}")
        if frame.kind == _SEQUENCE:
            self._in_sequence(frame, tag, length)
        elif frame.kind == _FRAGMENTS:
            self._in_fragments(frame, tag, length)
        elif tag >> 16 == 0xFFFE:
            if tag != ITEM_END or len(self._stack) == 1:
                raise BrokenDataSet(f"{_tag_text(tag)} at byte {self._pos - 8} where an element belongs")
            if frame.end == _NO_END:  # the end of an undefined-length item
                self._stack.pop()
            self._frames_done()  # in a defined-length item a delimiter is redundant, not wrong
        else:
            self._data_element(frame, tag, vr, length)

    def _data_element(self, frame: _Frame, tag: int, vr: str | None, length: int) -> None:
        top = len(self._stack) == 1
        if top and not self.past_header and tag > _LAST_HEADER_TAG:
            self.past_header = True
            self._past_header_tag = tag
        elif top and self.past_header and tag in WANTED_TAGS:
            # indexed or not depending on where the sender's fragments end: refused either way
            raise BrokenDataSet(
                f"{_tag_text(tag)} comes after {_tag_text(self._past_header_tag)}:"
                " elements are in ascending tag order (PS3.5 7.1)"
            )
        if top and tag == PIXEL_DATA:
            self.pixel_data = length
        if length == UNDEFINED_LENGTH:
            if vr in ("OB", "OW") or (tag == PIXEL_DATA and vr is None):
                self._stack.append(_Frame(_FRAGMENTS, _NO_END, frame.implicit, tag))  # PS3.5 A.4
            elif vr in ("SQ", "UN") or (vr is None and _may_be_undefined_in_implicit_vr(tag)):
                # UN: an implicit VR sequence inside (PS3.5 6.2.2), Pixel Data included:
                # encapsulated, it is OB (A.4), as DCMTK reads it too
                self._open_sequence(tag, _NO_END, frame.implicit or vr == "UN")
            else:
                raise BrokenDataSet(f"{_tag_text(tag)} ({vr or _implicit_vr(tag)}) has an undefined length")
            return
        end = self._pos + length
        if frame.end != _NO_END and end > frame.end:
            raise BrokenDataSet(f"{_tag_text(tag)} ({length} bytes) runs past the end of {_tag_text(frame.tag)}")
        if length and (vr == "SQ" or (vr is None and _is_sequence_in_dictionary(tag))):
            self._open_sequence(tag, end, frame.implicit)
            return
        self._value_tag = tag
        if top and (tag in WANTED_TAGS or tag in IMAGE_TAGS):
            if length > MAX_INDEXED_VALUE:
                raise BrokenDataSet(
                    f"{_tag_text(tag)} is {length} bytes long; an indexed attribute has at most {MAX_INDEXED_VALUE}"
                )
            self._keep, self._keep_vr = bytearray(), vr
        if length:
            self._skip = length
        else:
            self._value_done()

    def _open_sequence(self, tag: int, end: int, implicit: bool) -> None:
        if self.depth >= self._limits.max_depth:
            raise BrokenDataSet(
                f"sequences are nested more than {self._limits.max_depth} deep at"
                f" {_tag_text(tag)} (storage.max_sequence_depth)"
            )
        self._stack.append(_Frame(_SEQUENCE, end, implicit, tag))
        if end == self._pos:
            self._frames_done()

    def _in_sequence(self, frame: _Frame, tag: int, length: int) -> None:
        if tag == ITEM:
            end = _NO_END if length == UNDEFINED_LENGTH else self._pos + length
            if end != _NO_END and frame.end != _NO_END and end > frame.end:
                raise BrokenDataSet(f"an item ({length} bytes) runs past the end of {_tag_text(frame.tag)}")
            self._stack.append(_Frame(_DATASET, end, frame.implicit, ITEM))
            if end == self._pos:
                self._frames_done()
        elif tag == SEQUENCE_END and frame.end == _NO_END:
            self._stack.pop()
            self._frames_done()
        else:
            raise BrokenDataSet(f"{_tag_text(tag)} where an item of {_tag_text(frame.tag)} belongs")

    def _in_fragments(self, frame: _Frame, tag: int, length: int) -> None:
        if tag == ITEM and length != UNDEFINED_LENGTH:
            self._value_tag = tag
            if frame.tag == PIXEL_DATA and len(self._stack) == 2:
                self.fragments += 1
            if length:
                self._skip = length
            return
        if tag == SEQUENCE_END:
            self._stack.pop()
            self._frames_done()
            return
        raise BrokenDataSet(f"{_tag_text(tag)} where a fragment of {_tag_text(frame.tag)} belongs")

    def _value_done(self) -> None:
        if self._keep is not None:
            tag, value = self._value_tag, bytes(self._keep)
            if tag in IMAGE_TAGS:
                self.image[tag] = value
            else:
                self.elements[tag] = RawDataElement(
                    BaseTag(tag), self._keep_vr, len(value), value, 0, self._stack[0].implicit, self.little_endian
                )
            self._keep = None
        self._frames_done()

    def _frames_done(self) -> None:
        """Close every defined-length item and sequence that ends here."""
        while len(self._stack) > 1:
            frame = self._stack[-1]
            if frame.end == _NO_END or self._pos < frame.end:
                return
            if self._pos > frame.end:
                raise BrokenDataSet(f"an element runs past the end of {_tag_text(frame.tag)}")
            self._stack.pop()

    def finish(self) -> None:
        """The data set has ended: it must end between two top-level elements."""
        if self._skip:
            raise BrokenDataSet(
                f"the data set ends inside {_tag_text(self._value_tag)}: {self._skip} bytes of its value are missing"
            )
        if self._carry:
            raise BrokenDataSet(f"the data set ends inside an element header at byte {self._pos}")
        if len(self._stack) > 1:
            open_frame = self._stack[-1]
            what = "an item" if open_frame.tag == ITEM else _tag_text(open_frame.tag)
            raise BrokenDataSet(f"the data set ends inside {what} (nesting level {len(self._stack) - 1})")
        self.past_header = True
