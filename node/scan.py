"""A data set read from its first byte to its last as it arrives: is it whole? (PS3.5 7.1-7.5)

`DataSetScan` is fed the encoded data set in pieces of any size (a C-STORE's P-DATA fragments,
a STOW-RS part, a file read in chunks) and walks every element header: tag, VR, length. Values
are skipped by count, except the few the node indexes, which are kept (a few bytes each). It
holds a few dozen bytes of state whatever the data set's size, so nothing is ever buffered whole.

It refuses (`BrokenDataSet`, whose message names tags, offsets and sizes, never values):
- an element whose value runs past the end of its item or sequence (PS3.5 7.5),
- a sequence, item or encapsulated pixel data that is never closed, or closed where it was not
  opened (PS3.5 7.5.2, A.4),
- a data set that ends inside an element (its declared length is longer than what arrived),
- an explicit VR that is no VR (PS3.5 6.2),
- in implicit VR, an undefined length on an element whose VR the data dictionary fixes as other
  than SQ (a group length is UL, PS3.5 7.2; a private creator LO, 7.8.1): only a sequence, or an
  element the dictionary does not know (UN, an implicit VR sequence, 6.2.2), may have one (7.1.1),
- an indexed attribute after an element past the indexed ones: elements are in ascending tag
  order (PS3.5 7.1), and the index is final once an element past them has arrived,
- sequences nested deeper than `ScanLimits.max_depth`, as soon as the level is opened,
- a Deflated Explicit VR Little Endian data set (PS3.5 A.5) that is no deflate stream, ends
  before the stream does, or inflates past `max_inflated_bytes` or `max_inflation_ratio`: it is
  inflated in pieces of at most `INFLATE_STEP` bytes and walked as it inflates.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import UID

from node.header import LAST_HEADER_TAG, WANTED_TAGS, UnreadableInstance

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# PS3.5 Table 7.1-1: explicit VRs with 2 reserved bytes and a 32-bit length, and the others
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# PS3.3 C.7.6.3 Image Pixel module: what Pixel Data's length must agree with
SAMPLES_PER_PIXEL, PHOTOMETRIC, NUMBER_OF_FRAMES, ROWS, COLUMNS, BITS_ALLOCATED = (
    0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100)
IMAGE_TAGS = frozenset({SAMPLES_PER_PIXEL, PHOTOMETRIC, NUMBER_OF_FRAMES, ROWS, COLUMNS, BITS_ALLOCATED})
MAX_DEFLATE_TRAILER = 8  # a zlib or gzip checksum some writers leave after the stream
_TOP_LEVEL_TAGS = WANTED_TAGS | IMAGE_TAGS | {PIXEL_DATA}  # top-level elements the walk records
_LAST_HEADER_TAG = int(LAST_HEADER_TAG)
MAX_INDEXED_VALUE = 1 << 16  # the indexed attributes are UI, CS, LO: a few dozen bytes each
INFLATE_STEP = 1 << 18  # a deflated data set is inflated this many bytes at a time

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


@lru_cache(maxsize=512)
def is_image_storage(sop_class_uid: str) -> bool:
    """An image SOP class: its PS3.6 Annex A name says "Image Storage" (CT, CR, DX, SC...)."""
    return "Image Storage" in UID(sop_class_uid).name


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
    little: (struct.Struct(f"{order}HHL"), struct.Struct(f"{order}HH2sH"), struct.Struct(f"{order}L"),
             struct.Struct(f"{order}H"))
    for little, order in ((True, "<"), (False, ">"))
}


class _Walker:
    """The element walk of an uncompressed encoding (explicit or implicit VR, either byte order).

    `feed` parses as many element headers as a piece holds in one loop with local variables
    (an element costs about a microsecond: a CT slice has 100-300); sequences, items, delimiters,
    kept values and headers split between pieces take the slower paths.
    """

    def __init__(self, implicit: bool, little_endian: bool, limits: ScanLimits) -> None:
        self._tag_length, self._explicit, self._u32, self._us = _STRUCTS[little_endian]
        self._little_endian = little_endian
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
            if (length == UNDEFINED_LENGTH or (end != _NO_END and value_end > end)
                    or (top and (tag in _TOP_LEVEL_TAGS or (watch and tag > _LAST_HEADER_TAG)))):
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
            raise BrokenDataSet(f"{_tag_text(tag)} comes after {_tag_text(self._past_header_tag)}:"
                                " elements are in ascending tag order (PS3.5 7.1)")
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
            raise BrokenDataSet(f"{_tag_text(tag)} ({length} bytes) runs past the end of"
                                f" {_tag_text(frame.tag)}")
        if length and (vr == "SQ" or (vr is None and _is_sequence_in_dictionary(tag))):
            self._open_sequence(tag, end, frame.implicit)
            return
        self._value_tag = tag
        if top and (tag in WANTED_TAGS or tag in IMAGE_TAGS):
            if length > MAX_INDEXED_VALUE:
                raise BrokenDataSet(f"{_tag_text(tag)} is {length} bytes long; an indexed attribute"
                                    f" has at most {MAX_INDEXED_VALUE}")
            self._keep, self._keep_vr = bytearray(), vr
        if length:
            self._skip = length
        else:
            self._value_done()

    def _open_sequence(self, tag: int, end: int, implicit: bool) -> None:
        if self.depth >= self._limits.max_depth:
            raise BrokenDataSet(f"sequences are nested more than {self._limits.max_depth} deep at"
                                f" {_tag_text(tag)} (storage.max_sequence_depth)")
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
                self.elements[tag] = RawDataElement(BaseTag(tag), self._keep_vr, len(value), value, 0,
                                                    self._stack[0].implicit, self._little_endian)
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
            raise BrokenDataSet(f"the data set ends inside {_tag_text(self._value_tag)}:"
                                f" {self._skip} bytes of its value are missing")
        if self._carry:
            raise BrokenDataSet(f"the data set ends inside an element header at byte {self._pos}")
        if len(self._stack) > 1:
            open_frame = self._stack[-1]
            what = "an item" if open_frame.tag == ITEM else _tag_text(open_frame.tag)
            raise BrokenDataSet(f"the data set ends inside {what} (nesting level {len(self._stack) - 1})")
        self.past_header = True


    def check_pixel_data(self, image_storage: bool) -> None:
        """Pixel Data is there and as long as the Image Pixel module says (PS3.3 C.7.6.3,
        PS3.5 8.1.1): a data set cut short between two elements is caught here."""
        if self.pixel_data is None:
            if image_storage:
                raise BrokenDataSet("an image without Pixel Data (7FE0,0010)")
            return
        if self.pixel_data == UNDEFINED_LENGTH:
            if self.fragments < 2:  # the Basic Offset Table, then at least one fragment (PS3.5 A.4)
                raise BrokenDataSet("encapsulated Pixel Data (7FE0,0010) without a fragment")
            return
        needed = self._native_pixel_bytes()
        if needed is not None and self.pixel_data < needed:
            raise BrokenDataSet(f"Pixel Data (7FE0,0010) holds {self.pixel_data} bytes; Rows, Columns,"
                                f" Samples per Pixel, Bits Allocated and Number of Frames need {needed}")

    def _native_pixel_bytes(self) -> int | None:
        def us(tag: int, default: int | None) -> int | None:
            value = self.image.get(tag)
            return default if value is None or len(value) != 2 else int(self._us.unpack(value)[0])

        rows, columns = us(ROWS, None), us(COLUMNS, None)
        bits, samples = us(BITS_ALLOCATED, None), us(SAMPLES_PER_PIXEL, 1)
        if rows is None or columns is None or bits is None or samples is None:
            return None
        try:
            frames = int(self.image.get(NUMBER_OF_FRAMES, b"1").decode("ascii").strip(" \0") or 1)
        except (UnicodeDecodeError, ValueError):
            return None
        if self.image.get(PHOTOMETRIC, b"").startswith((b"YBR_FULL_422", b"YBR_PARTIAL_422")):
            samples = 2  # two luminance samples share one pair of chrominance ones (PS3.3 C.7.6.3.1.2)
        total_bits = rows * columns * samples * max(frames, 1) * bits
        return (total_bits + 7) // 8


class _Inflater:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): raw deflate, inflated piece by piece."""

    def __init__(self, walker: _Walker, limits: ScanLimits) -> None:
        self._walker = walker
        self._limits = limits
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self._consumed = 0
        self._inflated = 0
        self._trailing = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        pending = bytes(data)
        while True:
            if self._zlib.eof:
                if pending:
                    self._after_end(pending)
                return
            try:
                out = self._zlib.decompress(pending, INFLATE_STEP)
            except zlib.error as exc:
                raise BrokenDataSet("the deflated data set is no deflate stream") from exc
            rest = self._zlib.unconsumed_tail
            self._consumed += len(pending) - len(rest)
            if self._zlib.eof:  # what follows the stream's end is not part of it
                rest = self._zlib.unused_data
                self._consumed -= len(rest)
            self._count(len(out))
            self._walker.feed(out)
            pending = rest
            if not pending and len(out) < INFLATE_STEP:
                return

    def _count(self, size: int) -> None:
        self._inflated += size
        limits = self._limits
        if self._inflated > limits.max_inflated_bytes:
            raise BrokenDataSet(f"the deflated data set inflates to more than"
                                f" {limits.max_inflated_bytes >> 20} MiB (storage.max_inflated_mb)")
        if self._inflated > limits.max_inflation_ratio * self._consumed + (1 << 20):
            raise BrokenDataSet(f"the deflated data set inflates more than {limits.max_inflation_ratio:g}:1"
                                " (storage.max_inflation_ratio)")

    def _after_end(self, data: bytes) -> None:
        # PS3.5 A.5 pads an odd-length stream with one NUL; some writers leave a checksum
        self._trailing += len(data)
        if self._trailing > MAX_DEFLATE_TRAILER:
            raise BrokenDataSet(f"{self._trailing} bytes follow the end of the deflated data set")

    def finish(self) -> None:
        if not self._zlib.eof:
            try:
                out = self._zlib.flush()
            except zlib.error as exc:
                raise BrokenDataSet("the deflated data set is no deflate stream") from exc
            self._count(len(out))
            self._walker.feed(out)
        if not self._zlib.eof:
            raise BrokenDataSet("the deflated data set ends before its deflate stream does")
        self._walker.finish()


class DataSetScan:
    """Feed the encoded data set (no file meta) in pieces, then `finish()` (PS3.5 7)."""

    def __init__(self, transfer_syntax: str, limits: ScanLimits | None = None) -> None:
        limits = limits or ScanLimits()
        self.transfer_syntax = transfer_syntax
        self._walker = _Walker(
            implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
            little_endian=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
            limits=limits,
        )
        self._inflater = (
            _Inflater(self._walker, limits) if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN else None
        )
        self.size = 0  # bytes fed (as encoded, so deflated bytes for a deflated data set)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Raises BrokenDataSet as soon as the bytes cannot be part of one whole data set."""
        self.size += len(data)
        if self._inflater is not None:
            self._inflater.feed(data)
        else:
            self._walker.feed(data)

    def finish(self) -> None:
        """Raises BrokenDataSet unless the bytes fed were one whole data set."""
        if self._inflater is not None:
            self._inflater.finish()
        else:
            self._walker.finish()

    def check_pixel_data(self, image_storage: bool) -> None:
        """After `finish()`: BrokenDataSet when Pixel Data is missing from an image (an instance
        of an "Image Storage" SOP class, PS3.4 B.5) or shorter than its Image Pixel module says."""
        self._walker.check_pixel_data(image_storage)

    @property
    def header_ready(self) -> bool:
        """Every indexed attribute the data set holds has arrived (`elements` is final)."""
        return self._walker.past_header

    @property
    def elements(self) -> dict[int, RawDataElement]:
        """The indexed top-level elements (and the character set) found so far."""
        return self._walker.elements
