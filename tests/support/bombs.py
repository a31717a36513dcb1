"""Hostile data sets: deflate bombs (Deflated Explicit VR Little Endian, PS3.5 A.5, a few MB
that inflate to gigabytes, made in a blink by repeating one compressed block of zeros) and
sequences nested deeper than anyone reads back."""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from io import BytesIO

from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from tests.support import dicomgen

BLOCK = 1 << 20
_MARKER = b"BOMB-PLACEHOLDER"


def _zeros_stream(prefix: bytes, zeros: int, suffix: bytes) -> bytes:
    """Raw deflate of prefix + `zeros` zero bytes + suffix; after two blocks every further block of
    zeros compresses (with a sync flush) to the same bytes, so they are repeated, not computed."""
    squeeze = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [squeeze.compress(prefix) + squeeze.flush(zlib.Z_SYNC_FLUSH)]
    blocks, rest = divmod(zeros, BLOCK)
    block = bytes(BLOCK)
    made = [squeeze.compress(block) + squeeze.flush(zlib.Z_SYNC_FLUSH) for _ in range(min(blocks, 3))]
    parts += made
    if blocks > 3:
        parts.append(made[-1] * (blocks - 3))
    parts.append(squeeze.compress(bytes(rest) + suffix))
    parts.append(squeeze.flush())
    return b"".join(parts)


@lru_cache(maxsize=4)
def bomb_instance(inflated_size: int = 2 << 30) -> tuple[Dataset, bytes]:
    """(the data set's header attributes, its deflated encoding): a small CT slice whose private
    element (0029,1010) OB holds `inflated_size` zero bytes."""
    (ds,) = dicomgen.ct_series(1, size=8)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    block = ds.private_block(0x0029, "FRACNODE BOMB", create=True)
    block.add_new(0x10, "OB", _MARKER)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    data = raw[132 + 12 + group_length :]
    at = data.index(_MARKER)
    prefix = bytearray(data[:at])
    struct.pack_into("<L", prefix, at - 4, inflated_size)  # the OB element's 32-bit length
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(header, keyword, getattr(ds, keyword))
    header.file_meta = ds.file_meta
    header.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return header, _zeros_stream(bytes(prefix), inflated_size, data[at + len(_MARKER) :])


def nested(depth: int) -> Dataset:
    """A CT slice with sequences nested `depth` deep (Referenced Image Sequence in itself)."""
    (ds,) = dicomgen.ct_series(1, size=8)
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([inner])
        inner = outer
    ds.ReferencedImageSequence = Sequence([inner])
    return ds
