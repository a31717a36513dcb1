"""Error texts, log records and warnings name tags and types, never values; a malformed header
attribute is dropped by name before a pipeline uses the source."""

from __future__ import annotations

import io
import json
import logging
import warnings

import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.valuerep import DA

from node import logs
from node.header import UnreadableInstance
from node.part10 import read_file_meta
from node.redact import error_text, format_exception, withhold_values
from node.sources import drop_malformed

SECRET = "Zebulon^Secretname"


def library_error() -> Exception:
    try:
        DA(SECRET)  # pydicom: "Unable to convert 'Zebulon^Secretname' to 'DA' object"
    except ValueError as exc:
        return exc
    raise AssertionError("pydicom accepted it")


def test_a_library_message_is_withheld_and_the_nodes_own_kept() -> None:
    foreign = library_error()
    assert SECRET in str(foreign)  # what used to reach jobs.last_error
    text = error_text(foreign)
    assert SECRET not in text and text.startswith("ValueError raised in")
    try:
        read_file_meta(b"GIF89a" + bytes(300), complete=True)
    except UnreadableInstance as own:  # raised in the node's code: its message names no value
        assert error_text(own).startswith("UnreadableInstance: not a DICOM file")


def test_a_traceback_keeps_frames_and_withholds_chained_library_messages() -> None:
    try:
        read_file_meta(b"GIF89a" + bytes(300), complete=True)
    except UnreadableInstance as outer:
        outer.__cause__ = library_error()
        text = format_exception(outer)
    assert SECRET not in text
    assert "valuerep.py" in text and "part10.py" in text and "UnreadableInstance: not a DICOM file" in text
    assert "The above exception led to:" in text


def test_quoted_values_of_third_party_messages_are_withheld() -> None:
    assert withhold_values(f"Invalid value for VR DA: '{SECRET}'.") == "Invalid value for VR DA: <withheld>."
    assert withhold_values(f"copy \"{SECRET}\" and b'{SECRET}'") == "copy <withheld> and <withheld>"


def test_warnings_and_library_records_reach_the_json_log_without_values() -> None:
    stream = io.StringIO()
    logs.setup("DEBUG", "json", stream)
    try:
        warnings.warn(f"Invalid value for VR DA: '{SECRET}'", UserWarning, stacklevel=1)
        logging.getLogger("pydicom").warning("Unable to convert '%s' to 'DA'", SECRET)
        logging.getLogger("fracnode.test").error("job failed", exc_info=library_error())
    finally:
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["py.warnings", "pydicom", "fracnode.test"]
    assert "Invalid value for VR DA: <withheld>" in lines[0]["event"]
    assert SECRET not in stream.getvalue()


def test_malformed_attributes_are_emptied_or_removed_by_tag() -> None:
    ds = Dataset()
    for keyword, vr, value in (
        ("PatientBirthDate", "DA", SECRET),
        ("StudyTime", "TM", "25:99"),
        ("PatientAge", "AS", "ABCDEFG"),
        ("PatientID", "LO", "ok-id"),
        ("SeriesNumber", "IS", "7"),
        ("WindowCenter", "DS", "40.5"),
    ):
        raw = value.encode()
        ds[Tag(keyword)] = RawDataElement(Tag(keyword), vr, len(raw), raw, 0, False, True)
    assert sorted(drop_malformed(ds)) == [
        "PatientAge (0010,1010)",
        "PatientBirthDate (0010,0030)",
        "StudyTime (0008,0030)",
    ]
    assert ds.PatientBirthDate is None and ds.StudyTime is None  # Type 2: kept, empty
    assert "PatientAge" not in ds
    assert (ds.PatientID, int(ds.SeriesNumber), float(ds.WindowCenter)) == ("ok-id", 7, 40.5)


@pytest.fixture(autouse=True)
def _restore_logging():  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
