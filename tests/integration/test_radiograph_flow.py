"""The radiograph fracture pipeline end to end: storescu → fracnode serve → SR, SEG, GSPS, SC in a real Orthanc.

The shipped model runs for real. A copy of its bundle with both operating points and the
region threshold at zero makes the pipeline report a region on any image, so every result
object is exercised whatever the model thinks of the sample; the weights and their sha256
check are the shipped ones.
"""

from __future__ import annotations

import json
import shutil
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from node.config import InferenceSettings
from tests.conftest import node_config, wait_until
from tests.integration.test_flow import storescu
from tests.support.dciodvfy import dciodvfy_errors

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"

pytestmark = pytest.mark.slow


@pytest.fixture
def eager_models(tmp_path: Path) -> Path:
    """The shipped models folder, with the radiograph bundle's thresholds at zero."""
    shipped = InferenceSettings().bundle("radiograph_fracture")
    models = tmp_path / "models"
    bundle = models / "radiograph_fracture"
    shutil.copytree(shipped, bundle)
    metadata_path = bundle / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["fracnode"]["operating_points"] = {"suspicious": 0.0, "fracture": 0.0}
    metadata["fracnode"]["region_threshold"] = 0.0
    metadata_path.write_text(json.dumps(metadata))
    return models


def _sop_classes(orthanc) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {orthanc.instance_tags(i)["SOPClassUID"]: i for i in orthanc.instances()}


def test_a_cr_study_gets_sr_seg_and_overlays_in_orthanc(tmp_path, start_node, orthanc, cr_sample, eager_models):
    config = node_config(
        tmp_path / "data",
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
        destinations=[
            {
                "name": "pacs",
                "type": "dimse",
                "peer": "pacs",
                "overlays": ["gsps", "secondary_capture", "radiograph_seg"],
            },
            {"name": "results-folder", "type": "folder", "path": str(tmp_path / "results")},
        ],
        routes=[
            {
                "name": "radiographs",
                "match": {"modality": ["CR", "DX"]},
                "pipeline": "radiograph-fracture",
                "destinations": ["pacs", "results-folder"],
            }
        ],
        inference={"models_dir": str(eager_models), "device": "cpu"},
    )
    node = start_node(config)
    assert storescu(node.ingest.port, [cr_sample], "-xv").returncode == 0
    source = dcmread(cr_sample)

    wait_until(lambda: {SR_CLASS, SEG_CLASS, GSPS_CLASS, SC_CLASS} <= set(_sop_classes(orthanc)), timeout_s=120)
    stored = _sop_classes(orthanc)

    sr = hd.sr.srread(BytesIO(orthanc.rest_bytes(f"/instances/{stored[SR_CLASS]}/file")))
    seg = hd.seg.segread(BytesIO(orthanc.rest_bytes(f"/instances/{stored[SEG_CLASS]}/file")))
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    rois = sr.content.get_planar_roi_measurement_groups()
    assert rois, "the SR has no planar ROI for the reported region"
    assert all(group.reference_type == hd.sr.CodedConcept("111030", "DCM", "Image Region") for group in rois)
    assert rois[0].roi.ContentSequence[0].referenced_sop_instance_uid == source.SOPInstanceUID
    assert seg.get_source_image_uids()[0][2] == source.SOPInstanceUID

    # the folder destination asks for no optional object: the SR only (no radiograph SEG, which
    # OHIF cannot display, unless a destination asks for it)
    folder = wait_until(lambda: sorted((tmp_path / "results").rglob("*.dcm")))
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in folder}
    assert classes == {SR_CLASS}

    # every object the node produced passes dciodvfy (read back from where it was delivered:
    # a delivered result leaves the outbox)
    produced = tmp_path / "produced"
    produced.mkdir()
    for orthanc_id in stored.values():
        (produced / f"{orthanc_id}.dcm").write_bytes(orthanc.rest_bytes(f"/instances/{orthanc_id}/file"))
    paths = sorted(produced.glob("*.dcm"))
    assert len(paths) == 4
    for path in paths:
        assert not dciodvfy_errors(path), path.name
    assert not list((tmp_path / "data" / "outbox").rglob("*.dcm"))


def test_shipped_thresholds_still_report_every_image(tmp_path, start_node, orthanc, cr_sample):
    """With the shipped bundle as is: an SR for the study, whatever the finding."""
    config = node_config(
        tmp_path / "data",
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
        destinations=[{"name": "pacs", "type": "dimse", "peer": "pacs"}],
        routes=[
            {
                "name": "radiographs",
                "match": {"modality": ["CR", "DX"]},
                "pipeline": "radiograph-fracture",
                "destinations": ["pacs"],
            }
        ],
    )
    node = start_node(config)
    assert storescu(node.ingest.port, [cr_sample], "-xv").returncode == 0
    wait_until(lambda: SR_CLASS in _sop_classes(orthanc), timeout_s=120)
    job = node.db.query("SELECT state, summary FROM jobs")[0]
    assert job["state"] == "done" and job["summary"].startswith("1 image(s):")
