"""DICOM files (PS3.10 7.1): the File Meta Information, and a whole file scanned for its header.

`read_file_meta` reads the meta group from a file's first bytes (a STOW-RS part, a C-GET
sub-operation, a file in the spool). `read_header` and `scan_file` walk the data set after it to
its end with `node.scan.DataSetScan`, so an instance read back from bytes or from disk passes the
same checks as one received, with the same bounded memory (a file is read in pieces).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from node.header import Header, MismatchedInstance, UnreadableInstance, header_from_elements
from node.scan import DataSetScan, ScanLimits, is_image_storage

PART10_PREFIX = b"\0" * 128 + b"DICM"  # PS3.10 7.1: preamble and prefix
MAX_META = 64 * 1024  # a File Meta Information group is a few hundred bytes
READ_STEP = 1 << 20
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


@dataclass(frozen=True)
class FileMeta:
    """What the File Meta Information (PS3.10 7.1) of a file says."""

    raw: bytes  # preamble, prefix and meta group as stored: as received, the preamble added if absent
    consumed: int  # bytes of the file that `raw` stands for; the data set follows them
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str


def _ui(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\0 ").strip()


def read_file_meta(data: bytes, complete: bool = False) -> FileMeta | None:
    """The file meta of the DICOM file starting `data`; None while `data` is too short to tell
    (`complete`: there are no more bytes).

    A Part 10 file (preamble, "DICM", meta group) is kept as it is. A file that starts directly
    with its meta group, as pydicom writes a data set read from no file (and so as dicomweb-client
    sends one), gets the 128-byte preamble and "DICM" it lacks, so that every reader takes it.
    Raises UnreadableInstance for anything else. The group is walked element by element
    (explicit VR little endian, PS3.10 7.1) up to the first element outside group 0002, so a
    missing or wrong group length (0002,0000) does no harm.
    """
    if len(data) < len(PART10_PREFIX) and not complete:
        return None
    start, added = _meta_start(data)
    pos = start
    values: dict[int, bytes] = {}
    while True:
        if pos + 8 > len(data):
            if pos > MAX_META:
                raise UnreadableInstance("the File Meta Information never ends")
            _refuse_if(complete)
            return None
        group, element, vr = struct.unpack_from("<HH2s", data, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                _refuse_if(complete)
                return None
            length, value = struct.unpack_from("<L", data, pos + 8)[0], pos + 12
        elif vr.isalpha() and vr.isupper():
            length, value = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        else:
            raise UnreadableInstance(f"File Meta Information element (0002,{element:04X}) is not explicit VR")
        if value + length > len(data):
            if value + length > MAX_META:
                raise UnreadableInstance("a File Meta Information element is too long")
            _refuse_if(complete)
            return None
        values[element] = bytes(data[value : value + length])
        pos = value + length
    if 0x0010 not in values:
        raise UnreadableInstance("the File Meta Information has no Transfer Syntax UID (0002,0010)")
    return FileMeta(
        added + bytes(data[:pos]), pos, _ui(values[0x0010]), _ui(values.get(0x0002, b"")), _ui(values.get(0x0003, b""))
    )


def _meta_start(data: bytes) -> tuple[int, bytes]:
    """Where the File Meta Information starts in `data`, and the prefix it lacks (PS3.10 7.1)."""
    if data[128:132] == b"DICM":
        return len(PART10_PREFIX), b""
    if data[:2] == b"\x02\x00":
        return 0, PART10_PREFIX
    raise UnreadableInstance(
        "not a DICOM file: neither 'DICM' after a 128-byte preamble (PS3.10 7.1) nor a"
        " File Meta Information group at the start"
    )


def _refuse_if(complete: bool) -> None:
    if complete:
        raise UnreadableInstance("the file ends inside its File Meta Information")


def header_of(scan: DataSetScan, meta: FileMeta, expected_sop_instance_uid: str | None = None) -> Header:
    """The header of a finished scan, checked against the meta group (and the sender's UID)."""
    if expected_sop_instance_uid and meta.sop_instance_uid not in ("", expected_sop_instance_uid):
        raise MismatchedInstance(
            "the File Meta Information's Media Storage SOP Instance UID"
            f" {meta.sop_instance_uid} is not the request's {expected_sop_instance_uid}"
        )
    header = header_from_elements(
        scan.elements,
        meta.transfer_syntax,
        meta.sop_class_uid or None,
        expected_sop_instance_uid or meta.sop_instance_uid or None,
        "request" if expected_sop_instance_uid else "File Meta Information",
    )
    scan.check_pixel_data(is_image_storage(header.sop_class_uid))
    return header


def read_header(raw: bytes, expected_sop_instance_uid: str | None = None, limits: ScanLimits | None = None) -> Header:
    """The header of a whole DICOM file in memory; UnreadableInstance unless the file is whole."""
    meta = read_file_meta(raw[: MAX_META + len(PART10_PREFIX)], complete=True)
    assert meta is not None  # complete=True raises instead
    scan = DataSetScan(meta.transfer_syntax, limits)
    scan.feed(memoryview(raw)[meta.consumed :])
    scan.finish()
    return header_of(scan, meta, expected_sop_instance_uid)


def scan_file(path: Path, limits: ScanLimits | None = None) -> tuple[Header, int]:
    """(header, size) of a DICOM file on disk, read in pieces; UnreadableInstance unless whole."""
    with path.open("rb") as f:
        start = f.read(MAX_META + len(PART10_PREFIX))
        meta = read_file_meta(start, complete=True)
        assert meta is not None
        scan = DataSetScan(meta.transfer_syntax, limits)
        scan.feed(memoryview(start)[meta.consumed :])
        size = len(start)
        while chunk := f.read(READ_STEP):
            scan.feed(chunk)
            size += len(chunk)
    scan.finish()
    return header_of(scan, meta), size
