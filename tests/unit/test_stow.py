"""STOW-RS pieces that are pure functions: reading a part's file meta (PS3.10), the response (PS3.18)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from io import BytesIO

import pytest
from pydicom import Dataset, dcmwrite

from node.header import UnreadableInstance
from node.ingest.stow import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_OUT_OF_RESOURCES,
    PartOutcome,
    calling_ae_for,
)
from node.part10 import PART10_PREFIX, read_file_meta
from node.web.stow import (
    DICOM_JSON,
    DICOM_XML,
    native_xml,
    response_dataset,
    response_media_type,
    response_status,
)
from tests.support import dicomgen

CT = dicomgen.ct_series(1)[0]


def encoded(ds: Dataset, file_format: bool) -> bytes:
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=file_format)
    return out.getvalue()


def test_the_file_meta_of_a_part10_file_is_kept_as_received():
    raw = encoded(CT, file_format=True)
    meta = read_file_meta(raw)
    assert meta is not None
    assert raw.startswith(meta.raw) and meta.consumed == len(meta.raw)
    assert (meta.transfer_syntax, meta.sop_class_uid, meta.sop_instance_uid) == (
        "1.2.840.10008.1.2.1",
        CT.SOPClassUID,
        CT.SOPInstanceUID,
    )
    assert raw[meta.consumed : meta.consumed + 2] == b"\x08\x00"  # the data set starts in group 0008


def test_a_file_without_preamble_gets_one_added_in_front_of_its_meta():
    raw = encoded(CT, file_format=False)
    assert raw[:2] == b"\x02\x00"  # what pydicom (and so dicomweb-client) writes for this data set
    meta = read_file_meta(raw)
    assert meta is not None
    assert meta.raw == PART10_PREFIX + raw[: meta.consumed]


@pytest.mark.parametrize("length", [0, 1, 100, 131, 140, 200])
def test_too_few_bytes_to_tell_ask_for_more(length):
    assert read_file_meta(encoded(CT, file_format=True)[:length]) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"GIF89a" + b"\0" * 300, "not a DICOM file"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00\x12\x00\x00\x001.2.840.10008.1.2\x00", "not explicit VR"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x02\x00UI\x04\x001.23\x08\x00\x05\x00CS\x00\x00", "no Transfer Syntax"),
    ],
)
def test_what_is_no_dicom_file_is_refused_as_cannot_understand(raw, message):
    with pytest.raises(UnreadableInstance, match=message):  # 0xC210 at the STOW-RS edge
        read_file_meta(raw)


def test_a_part_that_ends_inside_its_meta_is_refused_once_complete():
    raw = encoded(CT, file_format=True)[:150]
    assert read_file_meta(raw) is None
    with pytest.raises(UnreadableInstance, match="ends inside"):
        read_file_meta(raw, complete=True)


def test_the_recorded_source_fits_an_ae_title():
    assert calling_ae_for("token-1") == "STOW:token-1"
    assert len(calling_ae_for("a-very-long-user-name")) == 16


STORED = PartOutcome(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3")
FAILED = PartOutcome(2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", failure=FAILURE_OUT_OF_RESOURCES, reason="disk full")
GARBAGE = PartOutcome(3, "", "", failure=FAILURE_CANNOT_UNDERSTAND, reason="not DICOM")


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [([STORED], 200), ([STORED, FAILED], 202), ([FAILED, GARBAGE], 409), ([GARBAGE], 409)],
)
def test_status_codes_follow_ps3_18_table_10_5_3_1(outcomes, status):
    assert response_status(outcomes) == status


def test_the_response_module_references_stored_and_failed_instances():
    body = response_dataset([STORED, FAILED, GARBAGE]).to_json_dict()
    assert body["00081190"] == {"vr": "UR"}  # Retrieve URL, type 2: no retrieve service here
    [referenced] = body["00081199"]["Value"]
    assert referenced["00081155"]["Value"] == ["1.2.3.4"]
    failed = body["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[0xA700], [0xC210]]
    assert failed[1]["00081155"] == {"vr": "UI"}  # a part without UIDs still has its reason


def test_the_xml_response_is_the_native_dicom_model():
    root = ET.fromstring(native_xml(response_dataset([STORED, FAILED])))
    ns = {"n": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    reason = root.find(
        "n:DicomAttribute[@keyword='FailedSOPSequence']/n:Item/n:DicomAttribute[@tag='00081197']/n:Value", ns
    )
    assert reason is not None and reason.text == str(0xA700)
    assert root.find("n:DicomAttribute[@tag='00081190']", ns).get("vr") == "UR"


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, DICOM_JSON),
        ("*/*", DICOM_JSON),
        ("application/json", DICOM_JSON),
        (DICOM_XML, DICOM_XML),
        (f"{DICOM_XML}, {DICOM_JSON};q=0.9", DICOM_XML),
        (f"{DICOM_XML};q=0.5, */*;q=0.5", DICOM_JSON),
        (f"{DICOM_JSON};q=0, {DICOM_XML};q=0.1", DICOM_XML),
        ("text/html", None),
        (f"{DICOM_JSON};q=0", None),
    ],
)
def test_accept_picks_json_or_xml(accept, media_type):
    assert response_media_type(accept) == media_type
