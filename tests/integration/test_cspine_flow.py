"""The cervical spine CT pipeline end to end: storescu → fracnode serve → SEG + SR in a real Orthanc.

A synthetic cervical spine CT study (training.phantom.generate: a thin axial bone series of
300 slices of 256×256, plus a localizer and a 5 mm reconstruction of the same scan) is sent with
DCMTK storescu to a node started in this process; the shipped vertebra and fracture models run
for real on the CPU; the node sends the SEG and the SR to a real Orthanc with no manual step. The
objects are read back from Orthanc with highdicom and checked item by item against what the job
recorded and against the phantom's known anatomy. An abdomen CT (no cervical vertebra in it) ends
as "not applicable" with the reason and produces no object; so does a real abdomen CT whose
headers lack the UIDs.
"""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from node.config import Config
from node.pipelines.cspine.findings import VERTEBRAE
from node.pipelines.cspine.pipeline import (
    NO_CERVICAL_VERTEBRAE,
    NO_SERIES,
    CSpineFracturePipeline,
    _factory,
)
from node.pipelines.cspine.select import SelectionRules
from node.records import PipelineInput, SeriesAttributes, SeriesInput
from tests.conftest import SHARED_DATA, node_config, wait_until
from tests.integration.test_flow import storescu
from tests.support import dicomgen
from tests.support.dciodvfy import dciodvfy_errors
from training.phantom.generate import PhantomSpec, PhantomStudy, generate_study

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SLICES, SIZE = 300, 256
MAX_CENTRE_ERROR_MM = 8.0  # a cervical vertebral body is about 15 mm high
VERTEBRA_CODES = {"C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002",
                  "C5": "36978003", "C6": "36054005", "C7": "87391001"}
CERVICAL_SPINE = "122494005"
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
REAL_ABDOMEN_CT = SHARED_DATA / "spine_ct_samples" / "totalsegmentator_example" / "example_ct_dicom"

pytestmark = pytest.mark.slow


# -- the study: a thin axial series, its localizer and a thick reconstruction --------------------


def localizer(study: PhantomStudy) -> Dataset:
    """A coronal scout of the phantom (ImageType …\\LOCALIZER), in its own series."""
    ds = copy.deepcopy(study.datasets[0])
    volume = np.stack([d.pixel_array for d in study.datasets])  # (slices, rows, columns)
    scout = volume.mean(axis=1).astype(np.int16)  # (slices, columns)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SeriesDescription = "Topogram 0.6 T20f"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.Rows, ds.Columns = scout.shape
    ds.PixelSpacing = [study.geometry.spacing[0], study.geometry.spacing[2]]
    ds.PixelData = scout.tobytes()
    return ds


def thick_series(study: PhantomStudy, every: int = 8) -> list[Dataset]:
    """Every `every`-th slice as a 5 mm reconstruction in its own series."""
    series_uid = generate_uid()
    thick = []
    for number, source in enumerate(study.datasets[::every], start=1):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber, ds.InstanceNumber = 3, number
        ds.SeriesDescription = "C-Spine 5.0 Standard"
        ds.SliceThickness = study.geometry.spacing[0] * every
        thick.append(ds)
    return thick


def true_centre(study: PhantomStudy, label: int) -> np.ndarray:
    """Centre of a vertebra's phantom label in patient coordinates (x, y, z) mm."""
    k, j, i = (float(a.mean()) for a in np.nonzero(study.labels == label))
    g = study.geometry
    axes = np.asarray(g.direction, float)  # columns: row, column and slice directions
    return np.asarray(g.origin, float) + axes @ np.array([i * g.spacing[2], j * g.spacing[1], k * g.spacing[0]])


def index_to_patient(first: Dataset, spacing_z: float, normal: np.ndarray, kji: np.ndarray) -> np.ndarray:
    row, column = np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float)
    dy, dx = (float(v) for v in first.PixelSpacing)
    return (np.asarray(first.ImagePositionPatient, float) + kji[2] * dx * row + kji[1] * dy * column
            + kji[0] * spacing_z * normal)


# -- the node -------------------------------------------------------------------------------------


def cspine_node(tmp_path: Path, start_node, orthanc):  # type: ignore[no-untyped-def]
    config = node_config(
        tmp_path / "data",
        # complete when storescu releases, never on a pause mid-transfer (the tests' 0.5 s quiet period
        # split a loaded run's study in two, and the first, partial job was the one checked)
        assembly={"complete_on_release": True, "quiet_period_s": 60},
        peers=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
        destinations=[{"name": "pacs", "type": "dimse", "peer": "pacs"}],
        routes=[{"name": "ct", "match": {"modality": ["CT"]}, "pipeline": "cspine-fracture",
                 "destinations": ["pacs"]}],
        inference={"device": "cpu"},
    )
    return start_node(config)


def final_job(node, study_uid: str):  # type: ignore[no-untyped-def]
    rows = node.db.query("SELECT id, state, summary, last_error FROM jobs WHERE study_uid = ?", (study_uid,))
    return rows[0] if rows and rows[0]["state"] in ("done", "failed", "not_applicable") else None


def test_cervical_ct_study_gets_seg_and_sr_in_orthanc(tmp_path, start_node, orthanc):
    study = generate_study(11, PhantomSpec(size=SIZE, slices=SLICES, region="neck"))
    scout, thick = localizer(study), thick_series(study)
    files = dicomgen.write([scout, *thick, *study.datasets], tmp_path / "study")
    node = cspine_node(tmp_path, start_node, orthanc)
    sent = storescu(node.ingest.port, files, "-xe")
    assert sent.returncode == 0, sent.stderr

    job = wait_until(lambda: final_job(node, study.study_instance_uid), timeout_s=300)
    assert job["state"] == "done", job["last_error"] or job["summary"]
    recorded = node.outcomes.get(job["id"]).findings
    assert recorded["kind"] == "CSpineFindings"

    # series selection: the thin axial series is analysed, the others are skipped with reasons
    assert recorded["series_instance_uid"] == study.series_instance_uid
    skipped = dict(recorded["skipped"])
    assert set(skipped) == {scout.SeriesInstanceUID, thick[0].SeriesInstanceUID}
    assert skipped[scout.SeriesInstanceUID].startswith("localizer (scout) images")
    assert skipped[thick[0].SeriesInstanceUID] == "slices 5 mm thick (at most 3 mm)"
    assert job["summary"].startswith(f"cervical spine {recorded['category']} ")
    for uid, reason in skipped.items():
        assert f"series {uid}: {reason}" in job["summary"]
    stages = dict(recorded["seconds"])
    assert {"select", "volume", "analyze", "model_sliding_window", "model_fracture", "results"} <= set(stages)

    def stored() -> dict[str, str]:
        return {orthanc.instance_tags(i)["SOPClassUID"]: i for i in orthanc.instances()}

    objects = wait_until(lambda: (s := stored()) and {SR_CLASS, SEG_CLASS} <= set(s) and s, timeout_s=120)
    assert len(orthanc.instances()) == 2  # the SEG and the SR, nothing else
    raw = {cls: orthanc.rest_bytes(f"/instances/{objects[cls]}/file") for cls in (SEG_CLASS, SR_CLASS)}
    for cls, data in raw.items():  # what Orthanc holds passes dciodvfy
        path = tmp_path / f"{cls}.dcm"
        path.write_bytes(data)
        assert not dciodvfy_errors(path), cls
    seg = hd.seg.segread(BytesIO(raw[SEG_CLASS]))
    sr = hd.sr.srread(BytesIO(raw[SR_CLASS]))
    ct = study.datasets

    # both in the CT's study and patient, the SEG on the thin CT series, every slice referenced
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study.study_instance_uid
    assert seg.PatientID == sr.PatientID == ct[0].PatientID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == study.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in ct}
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID

    # one segment per vertebra found, in label order, SNOMED CT C1–C7; none for absent vertebrae
    vertebrae = recorded["vertebrae"]
    names = [VERTEBRAE[v["label"] - 1] for v in vertebrae]
    assert len(names) >= 5, f"the vertebra model found only {names} in a neck CT"
    assert seg.segment_numbers == list(range(1, len(names) + 1))
    for number, name in enumerate(names, start=1):
        description = seg.get_segment_description(number)
        assert description.segmented_property_type.value == VERTEBRA_CODES[name]
        assert description.segmented_property_type.scheme_designator == "SCT"
        assert description.segment_label == f"{name} vertebra"

    # SEG pixels: each segment is the vertebra the job counted; where the phantom has it
    labelmap = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in ct],
        segment_numbers=list(range(1, len(names) + 1)),
        combine_segments=True,
        ignore_spatial_locations=True,
    )
    normal = np.cross(np.asarray(ct[0].ImageOrientationPatient[:3], float),
                      np.asarray(ct[0].ImageOrientationPatient[3:], float))
    step = float(np.dot(np.asarray(ct[1].ImagePositionPatient, float) - np.asarray(ct[0].ImagePositionPatient, float), normal))
    segment_centres = {}
    for number, vertebra in enumerate(vertebrae, start=1):
        mask = labelmap == number
        assert int(mask.sum()) == vertebra["voxels"], names[number - 1]
        truth = study.labels == vertebra["label"]
        dice = 2 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())
        assert dice > 0.5, f"{names[number - 1]}: Dice {dice:.2f} with the phantom"
        kji = np.array([a.mean() for a in np.nonzero(mask)])
        segment_centres[number] = index_to_patient(ct[0], step, normal, kji)

    # SR: per vertebra a volumetric ROI on its segment and a location group (outline on a slice and
    # centre point) with the probability as recorded, in percent
    rois = sr.content.get_volumetric_roi_measurement_groups()
    points = [g for g in sr.content.get_image_measurement_groups()
              if g.finding_sites[0].value.value != CERVICAL_SPINE]
    assert len(rois) == len(points) == len(names)
    for number, (roi, point_group, vertebra) in enumerate(zip(rois, points, vertebrae, strict=True), start=1):
        name = names[number - 1]
        assert roi.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert roi.referenced_segment.referenced_segment_numbers == [number]
        assert roi.tracking_uid == seg.get_segment_description(number).tracking_uid == point_group.tracking_uid
        assert roi.finding_sites[0].value.value == VERTEBRA_CODES[name]
        assert point_group.finding_sites[0].value.value == VERTEBRA_CODES[name]
        assert roi.get_measurements() == []  # written once, in the location group
        (point_probability,) = point_group.get_measurements(name=PROBABILITY)
        assert point_probability.value == pytest.approx(100 * vertebra["fracture_probability"], abs=1e-4)
        outline, point = point_probability.referenced_coordinates
        assert outline.GraphicType == "POLYLINE"  # the vertebra on its nearest slice, for viewers
        assert outline.ContentSequence[0].referenced_sop_instance_uid in {ds.SOPInstanceUID for ds in ct}
        assert point.GraphicType == "POINT" and point.ReferencedFrameOfReferenceUID == ct[0].FrameOfReferenceUID
        centre = np.asarray(point.GraphicData, float)
        assert np.allclose(centre, vertebra["centre"], atol=1e-3)
        assert np.linalg.norm(centre - segment_centres[number]) < 0.5, name  # the centre of its segment
        assert np.linalg.norm(centre - true_centre(study, vertebra["label"])) < MAX_CENTRE_ERROR_MM, name

    # the patient-level finding and every CT slice of the analysed series (and the SEG) as evidence
    (patient,) = [g for g in sr.content.get_image_measurement_groups()
                  if g.finding_sites[0].value.value == CERVICAL_SPINE]
    (probability,) = patient.get_measurements(name=PROBABILITY)
    assert probability.value == pytest.approx(100 * recorded["fracture_probability"], abs=1e-4)
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {ds.SOPInstanceUID for ds in ct} | {seg.SOPInstanceUID}
    names_in_sr = hd.sr.utils.find_content_items(
        sr, name=hd.sr.CodedConcept("111001", "DCM", "Algorithm Name"), recursive=True)
    assert {n.TextValue for n in names_in_sr} == {recorded["fracture_algorithm"]["name"]}
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == (
        recorded["segmentation_algorithm"]["name"])


def test_ct_without_the_neck_is_not_applicable_and_sends_nothing(tmp_path, start_node, orthanc):
    study = generate_study(12, PhantomSpec(size=SIZE, slices=200, region="abdomen"))
    files = dicomgen.write(list(study.datasets), tmp_path / "abdomen")
    node = cspine_node(tmp_path, start_node, orthanc)
    assert storescu(node.ingest.port, files, "-xe").returncode == 0

    job = wait_until(lambda: final_job(node, study.study_instance_uid), timeout_s=300)
    assert job["state"] == "not_applicable", job["last_error"] or job["summary"]
    # the reason, and any vertebra-like specks the model dropped as too small
    assert job["summary"].startswith(f"{NO_CERVICAL_VERTEBRAE} in series {study.series_instance_uid}")
    assert node.db.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0
    assert orthanc.instances() == []


# -- the pipeline on a real CT (abdomen, no neck, UIDs missing from its headers) -----------------


@pytest.fixture(scope="module")
def pipeline() -> CSpineFracturePipeline:
    config = Config.model_validate({"inference": {"device": "cpu"}, "routes": []})
    return _factory(config)


def real_abdomen_ct() -> PipelineInput:
    """The routed input the node would make of these files (their headers say which series)."""
    paths = tuple(sorted(p for p in REAL_ABDOMEN_CT.iterdir() if p.is_file()))
    if not paths:
        pytest.fail(f"{REAL_ABDOMEN_CT} is missing: the tests read ../shared/data beside the repository")
    ds = dcmread(paths[0], stop_before_pixels=True)
    attributes = SeriesAttributes(
        series_instance_uid=str(ds.SeriesInstanceUID), modality=ds.Modality,
        body_part_examined=ds.BodyPartExamined, series_description=ds.SeriesDescription,
        protocol_name=ds.ProtocolName, sop_class_uids=(str(ds.file_meta.MediaStorageSOPClassUID),),
        image_types=("\\".join(ds.ImageType),), instance_count=len(paths),
    )
    return PipelineInput(str(ds.StudyInstanceUID), 1, "", (SeriesInput(attributes, paths),))


def test_real_abdomen_ct_is_not_applicable_for_its_few_slices(pipeline):
    outcome = pipeline.run(real_abdomen_ct())
    assert outcome.datasets == () and outcome.findings is None
    assert outcome.not_applicable == (
        f"{NO_SERIES} (series (no SeriesInstanceUID): 20 slice(s), at least 30 needed to cover the neck)")


def test_real_ct_without_uids_is_not_applicable_even_when_its_slices_would_do(pipeline):
    """With fewer slices allowed the series is built into a volume (JPEG 2000, empty UIDs
    worked around), and then refused because results could not reference it."""
    lenient = CSpineFracturePipeline(pipeline.models, SelectionRules(min_slices=10))
    outcome = lenient.run(real_abdomen_ct())
    assert outcome.datasets == () and outcome.findings is None
    assert outcome.not_applicable == (
        f"{NO_SERIES} (series (no SeriesInstanceUID): StudyInstanceUID and SeriesInstanceUID missing:"
        " a SEG and SR could not reference the series)")
