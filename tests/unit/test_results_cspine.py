"""Cervical spine CT results: the vertebra SEG and the TID 1500 SR, read back with highdicom and
checked item by item, and validated by dciodvfy.

No model runs: the tests paint a label volume on a synthetic CT series (C2, C3 and C5 present,
C1/C4/C6/C7 absent) and say what the "models" concluded per vertebra.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import yaml
from pydicom import Dataset

from node.pipelines.cspine import CSpineFindings, VertebraFinding
from node.pipelines.cspine.findings import VERTEBRAE
from node.pipelines.cspine.results import build_cspine_results
from node.pipelines.cspine.template import load_cspine_template, shipped_cspine_template
from node.records import Algorithm
from node.results.templates import TEMPLATES_DIR, TemplateError
from tests.support import dicomgen
from tests.support.dciodvfy import dciodvfy_errors

SLICES, SIZE = 40, 64
VERTEBRA_MODEL = Algorithm("cspine_vertebrae", "0.3.0", "a1" * 32)
FRACTURE_MODEL = Algorithm("cspine_fracture", "0.4.1", "b2" * 32)
THRESHOLDS = (("fracture", 0.6), ("suspicious", 0.25))
# label → (slices, fracture probability, category)
PAINTED = {2: (range(4, 12), 0.12, "negative"), 3: (range(12, 19), 0.83, "fracture"),
           5: (range(25, 30), 0.31, "suspicious")}

FRACTURE = hd.sr.CodedConcept("72704001", "SCT", "Fracture")
CERVICAL_SPINE = hd.sr.CodedConcept("122494005", "SCT", "Cervical spine")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
PRESENCE = {"fracture": hd.sr.CodedConcept("52101004", "SCT", "Present"),
            "suspicious": hd.sr.CodedConcept("415684004", "SCT", "Suspected"),
            "negative": hd.sr.CodedConcept("272519000", "SCT", "Absent")}
VERTEBRA_CODES = {"C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002",
                  "C5": "36978003", "C6": "36054005", "C7": "87391001"}
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def centre(ct: list[Dataset], labels: np.ndarray, label: int) -> tuple[float, float, float]:
    """Centre of a label in patient coordinates (axial slices, no tilt: x = column, y = row)."""
    z, y, x = (float(a.mean()) for a in np.nonzero(labels == label))
    first = ct[0]
    spacing = float(first.PixelSpacing[0])
    origin = [float(v) for v in first.ImagePositionPatient]
    return origin[0] + x * spacing, origin[1] + y * spacing, origin[2] + z


def cspine_case() -> tuple[list[Dataset], np.ndarray, CSpineFindings]:
    ct = dicomgen.ct_series(SLICES, size=SIZE)
    labels = np.zeros((SLICES, SIZE, SIZE), np.uint8)
    for label, (slices, _, _) in PAINTED.items():
        labels[slices.start:slices.stop, 20 + label:40, 18:44 - label] = label
    findings = CSpineFindings(
        study_instance_uid=ct[0].StudyInstanceUID,
        series_instance_uid=ct[0].SeriesInstanceUID,
        frame_of_reference_uid=ct[0].FrameOfReferenceUID,
        segmentation_algorithm=VERTEBRA_MODEL,
        fracture_algorithm=FRACTURE_MODEL,
        fracture_probability=0.83,
        category="fracture",
        vertebrae=tuple(
            VertebraFinding(label, probability, category, centre(ct, labels, label),
                            int((labels == label).sum()))
            for label, (_, probability, category) in PAINTED.items()
        ),
        thresholds=THRESHOLDS,
    )
    return ct, labels, findings


@pytest.fixture(scope="module")
def results(tmp_path_factory):  # type: ignore[no-untyped-def]
    ct, labels, findings = cspine_case()
    seg, sr = build_cspine_results(findings, ct, labels)
    folder = tmp_path_factory.mktemp("cspine")
    seg_path, sr_path = folder / "seg.dcm", folder / "sr.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    sr.save_as(sr_path, enforce_file_format=True)
    return {"ct": ct, "labels": labels, "findings": findings, "seg_path": seg_path,
            "sr_path": sr_path, "seg": hd.seg.segread(seg_path), "sr": hd.sr.srread(sr_path)}


def code(concept) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    return concept.value, concept.scheme_designator


def comments(group) -> list[str]:  # type: ignore[no-untyped-def]
    return [item.TextValue for item in hd.sr.utils.find_content_items(group[0], name=COMMENT)]


def nearest_painted_slice(ct: list[Dataset], label: int, z: float) -> int:
    """The painted slice of `label` nearest `z` (axial series, no tilt)."""
    slices = PAINTED[label][0]
    return min(slices, key=lambda k: abs(float(ct[k].ImagePositionPatient[2]) - z))


# -- validity ----------------------------------------------------------------------------------


def test_seg_passes_dciodvfy(results):
    assert dciodvfy_errors(results["seg_path"]) == []


def test_sr_passes_dciodvfy(results):
    assert dciodvfy_errors(results["sr_path"]) == []


def test_both_objects_are_new_series_in_the_source_study(results):
    ct, seg, sr = results["ct"], results["seg"], results["sr"]
    for obj in (seg, sr):
        assert obj.StudyInstanceUID == ct[0].StudyInstanceUID
        assert (obj.PatientID, obj.PatientName) == (ct[0].PatientID, ct[0].PatientName)
        assert obj.SeriesInstanceUID != ct[0].SeriesInstanceUID
        assert obj.Manufacturer == "fracnode"
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID
    assert (seg.SeriesNumber, seg.SeriesDescription) == (
        9112, "AI cervical vertebrae segmentation (fracnode)")
    assert (sr.SeriesNumber, sr.SeriesDescription) == (
        9111, "AI cervical spine fracture report (fracnode)")
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID


# -- SEG -----------------------------------------------------------------------------------------


def test_seg_has_one_segment_per_present_vertebra_only(results):
    seg = results["seg"]
    assert seg.SegmentationType == "BINARY"
    assert seg.number_of_segments == 3  # C2, C3, C5: absent vertebrae get no empty segment
    descriptions = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert [d.segment_number for d in descriptions] == [1, 2, 3]
    assert [d.segment_label for d in descriptions] == ["C2 vertebra", "C3 vertebra", "C5 vertebra"]
    assert [code(d.segmented_property_type) for d in descriptions] == [
        (VERTEBRA_CODES[v], "SCT") for v in ("C2", "C3", "C5")]
    for description in descriptions:
        assert code(description.segmented_property_category) == ("91723000", "SCT")
        assert [code(r) for r in description.anatomic_regions] == [("122494005", "SCT")]
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("cspine_vertebrae", "0.3.0")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert "weights_sha256=" + "a1" * 32 in algorithm.AlgorithmParameters


def test_seg_references_every_slice_of_the_ct_series(results):
    ct, seg = results["ct"], results["seg"]
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in ct}


def test_seg_frames_only_where_a_vertebra_is(results):
    seg = results["seg"]
    assert seg.NumberOfFrames == sum(len(s) for s, _, _ in PAINTED.values())


def test_seg_masks_equal_the_label_volume(results):
    ct, labels, seg = results["ct"], results["labels"], results["seg"]
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in ct],
        segment_numbers=[1, 2, 3],
        ignore_spatial_locations=True,
    )
    for number, label in enumerate(PAINTED, start=1):
        assert np.array_equal(masks[..., number - 1].astype(bool), labels == label), label


# -- SR ------------------------------------------------------------------------------------------


def test_sr_is_a_tid_1500_report(results):
    sr = results["sr"]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    (procedure,) = hd.sr.utils.find_content_items(
        sr, name=hd.sr.CodedConcept("121058", "DCM", "Procedure reported"))
    assert code(procedure.ConceptCodeSequence[0]) == ("77477000", "SCT")


def test_patient_level_finding_is_cervical_spine_fracture_with_probability(results):
    sr = results["sr"]
    patient = [g for g in sr.content.get_image_measurement_groups()
               if g.finding_sites[0].value == CERVICAL_SPINE]
    assert len(patient) == 1
    group = patient[0]
    assert group.finding_type == FRACTURE
    assert group.tracking_identifier == "cervical spine fracture finding"
    (evaluation,) = group.get_qualitative_evaluations(name=FRACTURE)
    assert evaluation.value == PRESENCE["fracture"]
    (probability,) = group.get_measurements(name=PROBABILITY)
    assert probability.value == pytest.approx(83.0)
    assert probability.unit == PERCENT
    assert comments(group) == ["AI: fracture likely, cervical spine"]


def test_patient_probability_is_inferred_from_each_vertebra_on_its_slice_top_one_first(results):
    ct, sr, findings = results["ct"], results["sr"], results["findings"]
    (group,) = [g for g in sr.content.get_image_measurement_groups()
                if g.finding_sites[0].value == CERVICAL_SPINE]
    (probability,) = group.get_measurements(name=PROBABILITY)
    points = probability.referenced_coordinates
    assert all(p.ValueType == "SCOORD" and p.GraphicType == "POINT" for p in points)
    by_probability = sorted(findings.vertebrae, key=lambda v: -v.fracture_probability)
    assert [v.label for v in by_probability] == [3, 5, 2]  # C3 (0.83) decided; a viewer shows it
    for point, vertebra in zip(points, by_probability, strict=True):
        k = nearest_painted_slice(ct, vertebra.label, vertebra.centre[2])
        assert point.ContentSequence[0].referenced_sop_instance_uid == ct[k].SOPInstanceUID
        spacing = float(ct[k].PixelSpacing[0])
        origin = [float(v) for v in ct[k].ImagePositionPatient]
        expected = [(vertebra.centre[0] - origin[0]) / spacing + 0.5,
                    (vertebra.centre[1] - origin[1]) / spacing + 0.5]
        np.testing.assert_allclose(point.value.reshape(-1), expected, atol=1e-4)


def test_each_vertebra_is_a_volumetric_roi_on_its_segment(results):
    sr, seg, findings = results["sr"], results["seg"], results["findings"]
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 3
    for group, (label, (_, probability, category)) in zip(groups, PAINTED.items()):
        name = VERTEBRAE[label - 1]
        number = [v.label for v in findings.vertebrae].index(label) + 1
        assert group.reference_type == hd.sr.CodedConcept("121191", "DCM", "Referenced Segment")
        assert group.finding_type == FRACTURE
        assert [code(s.value) for s in group.finding_sites] == [(VERTEBRA_CODES[name], "SCT")]
        assert group.tracking_identifier == f"{name} vertebra"
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_sop_class_uid == SEG_CLASS
        assert segment.referenced_segment_numbers == [number]
        assert group.tracking_uid == seg.get_segment_description(number).tracking_uid
        assert segment.source_series_for_segmentation.value == findings.series_instance_uid
        # the probability is written once per vertebra, in its TID 1501 group (viewers merge the
        # two groups by tracking UID and would print a copy twice)
        assert group.get_measurements() == []
        (evaluation,) = group.get_qualitative_evaluations(name=FRACTURE)
        assert evaluation.value == PRESENCE[category]


def test_each_vertebra_is_outlined_on_its_nearest_slice_and_placed_in_the_ct_frame(results):
    ct, sr, findings = results["ct"], results["sr"], results["findings"]
    by_uid = {g.tracking_uid: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    located = [g for g in sr.content.get_image_measurement_groups()
               if g.finding_sites[0].value != CERVICAL_SPINE]
    assert len(located) == 3
    for group, vertebra in zip(located, findings.vertebrae, strict=True):
        name = VERTEBRAE[vertebra.label - 1]
        assert group.tracking_uid in by_uid  # pairs with the vertebra's ROI group
        assert [code(s.value) for s in group.finding_sites] == [(VERTEBRA_CODES[name], "SCT")]
        (measured,) = group.get_measurements(name=PROBABILITY)
        assert (measured.value, measured.unit) == (
            pytest.approx(100 * vertebra.fracture_probability), PERCENT)
        outline, point = measured.referenced_coordinates
        k = nearest_painted_slice(ct, vertebra.label, vertebra.centre[2])
        assert outline.ValueType == "SCOORD" and outline.GraphicType == "POLYLINE"
        assert outline.ContentSequence[0].referenced_sop_instance_uid == ct[k].SOPInstanceUID
        corners = outline.value
        assert np.array_equal(corners[0], corners[-1])  # closed
        label = vertebra.label  # painted rows 20 + label … 39, columns 18 … 43 - label
        assert (corners.min(axis=0).tolist(), corners.max(axis=0).tolist()) == (
            [18.0, 20.0 + label], [44.0 - label, 40.0])
        assert point.ValueType == "SCOORD3D" and point.GraphicType == "POINT"
        assert point.ReferencedFrameOfReferenceUID == findings.frame_of_reference_uid
        assert np.allclose(point.GraphicData, vertebra.centre, atol=1e-3)
        category = PAINTED[vertebra.label][2]
        assert comments(group) == [{
            "negative": f"AI: no fracture found, {name} vertebra",
            "fracture": f"AI: fracture likely, {name} vertebra",
            "suspicious": f"AI: possible fracture, {name} vertebra",
        }[category]]


def test_sr_containers_are_separate_items(results):
    sr = results["sr"]
    containers = hd.sr.utils.find_content_items(
        sr, value_type=hd.sr.ValueTypeValues.CONTAINER, recursive=True)
    assert {c.ContinuityOfContent for c in [sr, *containers]} == {"SEPARATE"}


def test_algorithm_is_identified_with_version_and_weights_hash(results):
    sr = results["sr"]
    names = hd.sr.utils.find_content_items(
        sr, name=hd.sr.CodedConcept("111001", "DCM", "Algorithm Name"), recursive=True)
    versions = hd.sr.utils.find_content_items(
        sr, name=hd.sr.CodedConcept("111003", "DCM", "Algorithm Version"), recursive=True)
    parameters = hd.sr.utils.find_content_items(
        sr, name=hd.sr.CodedConcept("111002", "DCM", "Algorithm Parameters"), recursive=True)
    assert len(names) == 7  # patient group + two groups per vertebra
    assert {n.TextValue for n in names} == {"cspine_fracture"}
    assert {v.TextValue for v in versions} == {"0.4.1"}
    texts = {p.TextValue for p in parameters}
    assert {"weights_sha256=" + "b2" * 32, "threshold_fracture=0.6",
            "threshold_suspicious=0.25"} <= texts
    assert sr.DeviceSerialNumber == "b2" * 32


def test_evidence_lists_every_ct_slice_and_the_seg(results):
    ct, seg, sr = results["ct"], results["seg"], results["sr"]
    referenced = {
        (s.SeriesInstanceUID, i.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert referenced == {(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in ct} | {
        (seg.SeriesInstanceUID, seg.SOPInstanceUID)}


# -- inputs that must be refused --------------------------------------------------------------


def test_all_seven_vertebrae_number_segments_by_label():
    ct, labels, findings = cspine_case()
    labels[:] = 0
    vertebrae = []
    for label in range(1, 8):
        labels[label * 4:label * 4 + 3, 10:30, 10:30] = label
        vertebrae.append(VertebraFinding(label, 0.1, "negative", (5.0, 5.0, 4.0 * label + 1), 1200))
    seg, sr = build_cspine_results(replace(findings, vertebrae=tuple(vertebrae)), ct, labels)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [f"C{i} vertebra" for i in range(1, 8)]
    assert len(hd.sr.utils.find_content_items(
        sr, name=hd.sr.CodedConcept("121191", "DCM", "Referenced Segment"), recursive=True)) == 7


def test_finding_for_a_vertebra_missing_from_the_labels_is_refused():
    ct, labels, findings = cspine_case()
    extra = VertebraFinding(7, 0.5, "suspicious", (1.0, 2.0, 3.0), 10)
    with pytest.raises(ValueError, match=r"findings report vertebrae \['C2', 'C3', 'C5', 'C7'\]"):
        build_cspine_results(replace(findings, vertebrae=(*findings.vertebrae, extra)), ct, labels)


def test_label_volume_of_another_shape_is_refused():
    ct, labels, findings = cspine_case()
    with pytest.raises(ValueError, match=r"labels have shape \(39, 64, 64\)"):
        build_cspine_results(findings, ct, labels[1:])


def test_label_values_beyond_c7_are_refused():
    ct, labels, findings = cspine_case()
    labels[0, 0, 0] = 9
    with pytest.raises(ValueError, match="labels hold values outside 0..7"):
        build_cspine_results(findings, ct, labels)


def test_empty_label_volume_is_refused():
    ct, labels, findings = cspine_case()
    with pytest.raises(ValueError, match="no vertebra"):
        build_cspine_results(replace(findings, vertebrae=()), ct, np.zeros_like(labels))


def test_source_from_another_series_is_refused():
    ct, labels, findings = cspine_case()
    ct[3] = dicomgen.ct_series(1, size=SIZE, study_uid=findings.study_instance_uid)[0]
    with pytest.raises(ValueError, match=r"sources\[3\] is in series"):
        build_cspine_results(findings, ct, labels)


def test_probability_outside_unit_interval_is_refused():
    ct, labels, findings = cspine_case()
    with pytest.raises(ValueError, match="probability 1.5 is outside"):
        build_cspine_results(replace(findings, fracture_probability=1.5), ct, labels)


def test_non_finite_centre_is_refused():
    ct, labels, findings = cspine_case()
    broken = replace(findings.vertebrae[0], centre=(float("nan"), 0.0, 0.0))
    with pytest.raises(ValueError, match="vertebra label 2: centre must be three finite"):
        build_cspine_results(
            replace(findings, vertebrae=(broken, *findings.vertebrae[1:])), ct, labels)


# -- template ----------------------------------------------------------------------------------


def test_shipped_template_has_the_ps316_vertebra_codes():
    template = shipped_cspine_template()
    assert {name: code(c) for name, c in template.vertebrae.items()} == {
        name: (value, "SCT") for name, value in VERTEBRA_CODES.items()}
    # the codes are PS3.16's (CID 7603 Vertebra) as pydicom ships them
    from pydicom.sr.codedict import codes
    for name, concept in template.vertebrae.items():
        assert getattr(codes.cid7603, f"{name}Vertebra").value == concept.value
    assert code(template.finding_site) == ("122494005", "SCT")
    assert code(template.segment_category) == ("91723000", "SCT")
    assert code(template.finding) == ("72704001", "SCT")


def test_template_without_a_vertebra_names_the_key(tmp_path: Path):
    raw = yaml.safe_load((TEMPLATES_DIR / "cspine-fracture.yaml").read_text(encoding="utf-8"))
    del raw["vertebrae"]["C4"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(TemplateError, match=r"broken.yaml: vertebrae: .*needs exactly the vertebrae"):
        load_cspine_template(path)


def test_template_label_with_unknown_placeholder_is_refused(tmp_path: Path):
    raw = yaml.safe_load((TEMPLATES_DIR / "cspine-fracture.yaml").read_text(encoding="utf-8"))
    raw["segmentation"]["label"] = "{level} vertebra"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(TemplateError, match=r"segmentation.label: .*may use only \{vertebra\}"):
        load_cspine_template(path)
