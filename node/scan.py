"""A data set read from its first byte to its last as it arrives: is it whole? (PS3.5 7.1-7.5)

`DataSetScan` is fed the encoded data set in pieces of any size (a C-STORE's P-DATA fragments,
a STOW-RS part, a file read in chunks) and walks every element header: tag, VR, length. Values
are skipped by count, except the few the node indexes, which are kept (a few bytes each). It
holds a few dozen bytes of state whatever the data set's size, so nothing is ever buffered whole.
The element walk is `node.walk.Walker`; this module inflates deflated data sets for it and
checks Pixel Data against the Image Pixel module at the end.

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

import zlib
from functools import lru_cache

from pydicom.dataelem import RawDataElement
from pydicom.uid import UID

from node.walk import (
    BITS_ALLOCATED,
    COLUMNS,
    NUMBER_OF_FRAMES,
    PHOTOMETRIC,
    ROWS,
    SAMPLES_PER_PIXEL,
    UNDEFINED_LENGTH,
    BrokenDataSet,
    ScanLimits,
    Walker,
)

__all__ = ["BrokenDataSet", "DataSetScan", "ScanLimits", "is_image_storage"]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
MAX_DEFLATE_TRAILER = 8  # a zlib or gzip checksum some writers leave after the stream
INFLATE_STEP = 1 << 18  # a deflated data set is inflated this many bytes at a time


@lru_cache(maxsize=512)
def is_image_storage(sop_class_uid: str) -> bool:
    """An image SOP class: its PS3.6 Annex A name says "Image Storage" (CT, CR, DX, SC...)."""
    return "Image Storage" in UID(sop_class_uid).name


def check_pixel_data(walker: Walker, image_storage: bool) -> None:
    """Pixel Data is there and as long as the Image Pixel module says (PS3.3 C.7.6.3,
    PS3.5 8.1.1): a data set cut short between two elements is caught here."""
    if walker.pixel_data is None:
        if image_storage:
            raise BrokenDataSet("an image without Pixel Data (7FE0,0010)")
        return
    if walker.pixel_data == UNDEFINED_LENGTH:
        if walker.fragments < 2:  # the Basic Offset Table, then at least one fragment (PS3.5 A.4)
            raise BrokenDataSet("encapsulated Pixel Data (7FE0,0010) without a fragment")
        return
    needed = _native_pixel_bytes(walker)
    if needed is not None and walker.pixel_data < needed:
        raise BrokenDataSet(
            f"Pixel Data (7FE0,0010) holds {walker.pixel_data} bytes; Rows, Columns,"
            f" Samples per Pixel, Bits Allocated and Number of Frames need {needed}"
        )


def _native_pixel_bytes(walker: Walker) -> int | None:
    def us(tag: int, default: int | None) -> int | None:
        value = walker.image.get(tag)
        return default if value is None or len(value) != 2 else int(walker.us.unpack(value)[0])

    rows, columns = us(ROWS, None), us(COLUMNS, None)
    bits, samples = us(BITS_ALLOCATED, None), us(SAMPLES_PER_PIXEL, 1)
    if rows is None or columns is None or bits is None or samples is None:
        return None
    try:
        frames = int(walker.image.get(NUMBER_OF_FRAMES, b"1").decode("ascii").strip(" \0") or 1)
    except (UnicodeDecodeError, ValueError):
        return None
    if walker.image.get(PHOTOMETRIC, b"").startswith((b"YBR_FULL_422", b"YBR_PARTIAL_422")):
        samples = 2  # two luminance samples share one pair of chrominance ones (PS3.3 C.7.6.3.1.2)
    total_bits = rows * columns * samples * max(frames, 1) * bits
    return (total_bits + 7) // 8


class _Inflater:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): raw deflate, inflated piece by piece."""

    def __init__(self, walker: Walker, limits: ScanLimits) -> None:
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
            raise BrokenDataSet(
                f"the deflated data set inflates to more than"
                f" {limits.max_inflated_bytes >> 20} MiB (storage.max_inflated_mb)"
            )
        if self._inflated > limits.max_inflation_ratio * self._consumed + (1 << 20):
            raise BrokenDataSet(
                f"the deflated data set inflates more than {limits.max_inflation_ratio:g}:1"
                " (storage.max_inflation_ratio)"
            )

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
        self._walker = Walker(
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
        check_pixel_data(self._walker, image_storage)

    @property
    def header_ready(self) -> bool:
        """Every indexed attribute the data set holds has arrived (`elements` is final)."""
        return self._walker.past_header

    @property
    def elements(self) -> dict[int, RawDataElement]:
        """The indexed top-level elements (and the character set) found so far."""
        return self._walker.elements
