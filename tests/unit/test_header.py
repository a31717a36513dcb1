"""The byte scan of a data set's first fragment gives the same Header as pydicom's full parse."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from node.header import (
    NotScannable,
    UnreadableInstance,
    header_from_elements,
    read_header,
    scan_elements,
)
from tests.support import dicomgen

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def encoded(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> tuple[bytes, int]:
    """(the whole file, the offset where the data set starts) of `ds` in `syntax`."""
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw, 132 + 12 + group_length


def scanned(raw: bytes, offset: int, syntax: str, media_class: str = "") -> object:
    elements = scan_elements(raw[offset:], syntax)
    assert elements is not None
    return header_from_elements(elements, syntax, media_class)


def with_sequences(ds: Dataset, undefined: bool) -> Dataset:
    """Sequences (nested, one of them private) before the indexed tags, as modalities send them."""
    code = Dataset()
    code.CodeValue = "T-D1100"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Head"
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5"
    inner.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([inner, Dataset()])
    ds.ProcedureCodeSequence = Sequence([code])
    block = ds.private_block(0x0009, "ACME", create=True)  # private elements between indexed tags
    block.add_new(0x10, "LO", "vendor value")
    for element in (ds["ReferencedImageSequence"], ds["ProcedureCodeSequence"],
                    inner["PurposeOfReferenceCodeSequence"]):
        element.is_undefined_length = undefined
        for item in element.value:
            item.is_undefined_length_sequence_item = undefined
    return ds


CASES = {
    "ct": lambda: dicomgen.ct_series(1, size=8)[0],
    "cr": lambda: dicomgen.cr_image(size=8),
    "undefined-length sequences": lambda: with_sequences(dicomgen.ct_series(1, size=8)[0], True),
    "defined-length sequences": lambda: with_sequences(dicomgen.ct_series(1, size=8)[0], False),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_scan_gives_the_header_pydicom_reads(case: str, syntax: str) -> None:
    raw, offset = encoded(CASES[case](), syntax)
    assert scanned(raw, offset, syntax) == read_header(raw)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on its deliberately odd files
def test_scan_agrees_with_pydicom_on_its_own_test_files() -> None:
    agreed = 0
    for path in sorted(PYDICOM_TEST_FILES.rglob("*.dcm")):
        raw = path.read_bytes()
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            offset = 132 + 12 + int(meta.FileMetaInformationGroupLength)
            syntax = str(meta.TransferSyntaxUID)
            elements = scan_elements(raw[offset:], syntax)
        except (NotScannable, AttributeError, pydicom.errors.InvalidDicomError):
            continue  # deflated, big endian, no file meta: read by pydicom as a whole
        if elements is None:
            continue
        media_class = str(meta.get("MediaStorageSOPClassUID", ""))
        try:
            expected: object = read_header(raw)
        except UnreadableInstance as exc:
            expected = str(exc)
        try:
            found: object = header_from_elements(elements, syntax, media_class)
        except UnreadableInstance as exc:
            found = str(exc)
        assert found == expected, path.name
        agreed += 1
    assert agreed >= 40  # the comparison really ran over most of the files


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_prefix_too_short_for_the_header_asks_for_more(syntax: str) -> None:
    raw, offset = encoded(with_sequences(dicomgen.ct_series(1, size=8)[0], True), syntax)
    data = raw[offset:]
    complete = scan_elements(data, syntax)
    assert complete is not None
    needed = next(n for n in range(len(data) + 1) if scan_elements(data[:n], syntax) is not None)
    assert needed < len(data) - 8 * 8 * 2  # found before the pixel data
    for n in range(needed):
        assert scan_elements(data[:n], syntax) is None, n
    assert scan_elements(data[:needed], syntax) == complete


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_deflated_and_big_endian_data_sets_are_left_to_pydicom(syntax: str) -> None:
    with pytest.raises(NotScannable):
        scan_elements(b"\x08\x00\x16\x00UI\x04\x001.2\0", syntax)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bytes(range(7, 256)) * 4, id="garbage"),
        pytest.param(b"\x08\x00\x05\x00\x01\x02\x04\x00abcd", id="unknown-vr"),
        pytest.param(b"\x08\x00\x16\x00SQ\0\0\xff\xff\xff\xff\x08\x00\x18\x00", id="broken-sequence"),
        pytest.param(b"\xfe\xff\x00\xe0\x00\x00\x00\x00", id="item-at-top-level"),
    ],
)
def test_bytes_that_are_no_data_set_never_give_a_header(data: bytes) -> None:
    try:
        elements = scan_elements(data, ExplicitVRLittleEndian)
    except NotScannable:
        return  # pydicom reads the whole data set and refuses it
    assert elements is not None
    with pytest.raises(UnreadableInstance):
        header_from_elements(elements, ExplicitVRLittleEndian, "", "1.2.3")


@pytest.mark.parametrize(
    "changes",
    [
        {"SeriesDescription": "  leading and trailing  "},
        {"SeriesDescription": "first\\second "},
        {"SeriesDescription": "", "ProtocolName": "x\\"},
        {"Modality": "CT", "BodyPartExamined": "HEAD "},
        {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL", "HELIX"]},
        {"ImageType": ["DERIVED", ""]},
        {"SpecificCharacterSet": "ISO_IR 192", "SeriesDescription": "Schädel nativ"},
        {"SpecificCharacterSet": "ISO_IR 100", "ProtocolName": "Hüfte links"},
        {"StudyInstanceUID": None},
        {"SeriesInstanceUID": "1.2.03"},
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # pydicom, while reading
def test_values_are_converted_as_pydicom_converts_them(changes: dict[str, object]) -> None:
    (ds,) = dicomgen.ct_series(1, size=8)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    raw, offset = encoded(ds)
    try:
        expected: object = read_header(raw)
    except UnreadableInstance as exc:
        expected = str(exc)
    try:
        found: object = scanned(raw, offset, ExplicitVRLittleEndian)
    except UnreadableInstance as exc:
        found = str(exc)
    assert found == expected
