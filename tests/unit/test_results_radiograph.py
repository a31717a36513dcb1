"""build_results for whole studies: which objects, how they refer to each other, all valid by dciodvfy.

By default a study gets its SR only; GSPS, secondary capture and the radiograph SEG are optional
objects a destination asks for (`overlays`), the SEG because OHIF cannot display it.
"""

from __future__ import annotations

import highdicom as hd
import pytest
from pydicom import dcmread

from node.pipelines.radiograph.results import build_results
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.findings import (
    cr_fracture_study,
    dx_image,
    image_finding,
    saved,
    square,
    study_findings,
)

SR, SEG, GSPS, SC = (
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.11.1",
    "1.2.840.10008.5.1.4.1.1.7",
)
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
FRACTURE = hd.sr.CodedConcept("72704001", "SCT", "Fracture")


def written(datasets, folder):  # type: ignore[no-untyped-def]
    return [saved(ds, folder, f"{i:02d}-{ds.Modality}") for i, ds in enumerate(datasets)]


def evaluation(group) -> hd.sr.CodedConcept:  # type: ignore[no-untyped-def]
    return group.get_qualitative_evaluations(name=FRACTURE)[0].value


@pytest.fixture(scope="module")
def cr_results(cr_sample, tmp_path_factory):
    source, findings = cr_fracture_study(cr_sample)
    datasets = build_results(
        findings, {source.SOPInstanceUID: source}, {"gsps", "secondary_capture", "radiograph_seg"}
    )
    return source, datasets, written(datasets, tmp_path_factory.mktemp("results"))


def test_fracture_study_gets_seg_sr_and_the_requested_optional_objects(cr_results):
    _, datasets, _ = cr_results
    assert [ds.SOPClassUID for ds in datasets] == [SEG, SR, GSPS, SC]


def test_every_object_passes_dciodvfy(cr_results):
    *_, paths = cr_results
    assert {path.name: dciodvfy_errors(path) for path in paths} == {path.name: [] for path in paths}


def test_every_object_is_new_in_the_source_study_and_identifies_the_ai(cr_results):
    source, datasets, _ = cr_results
    assert (
        len({ds.SOPInstanceUID for ds in datasets} | {source.SOPInstanceUID}) == len(datasets) + 1
    )
    assert (
        len({ds.SeriesInstanceUID for ds in datasets} | {source.SeriesInstanceUID})
        == len(datasets) + 1
    )
    for ds in datasets:
        assert (ds.StudyInstanceUID, ds.PatientID, ds.PatientName) == (
            source.StudyInstanceUID,
            source.PatientID,
            source.PatientName,
        )
        assert ds.AccessionNumber == source.AccessionNumber
        assert ds.Manufacturer == "fracnode"
        assert "fracnode" in ds.SeriesDescription
    assert [ds.SeriesNumber for ds in datasets] == [9102, 9101, 9103, 9104]


def test_sr_references_the_seg_and_shares_its_tracking_uid(cr_results):
    _, _, paths = cr_results
    seg = hd.seg.segread(paths[0])
    sr = hd.sr.srread(paths[1])
    assert seg.SOPInstanceUID in {uid for _, _, uid, _ in sr.get_evidence()}
    (finding,) = sr.content.get_image_measurement_groups()
    assert seg.get_segment_description(1).tracking_uid == finding.tracking_uid


def test_by_default_a_fracture_study_gets_only_its_sr(cr_sample):
    source, findings = cr_fracture_study(cr_sample)
    assert [ds.SOPClassUID for ds in build_results(findings, {source.SOPInstanceUID: source})] == [
        SR
    ]


def test_negative_study_gets_an_absent_finding_and_no_seg(tmp_path):
    source = dx_image()
    findings = study_findings(
        image_finding(source, "negative", 0.04), study_uid=source.StudyInstanceUID
    )
    (sr,) = build_results(findings, {source.SOPInstanceUID: source})
    (path,) = written([sr], tmp_path)
    assert dciodvfy_errors(path) == []
    report = hd.sr.srread(path)
    (group,) = report.content.get_image_measurement_groups()
    assert evaluation(group) == ABSENT
    assert group.get_measurements()[0].value == pytest.approx(4.0)  # percent
    assert report.content.get_planar_roi_measurement_groups() == []
    assert [uid for _, _, uid, _ in report.get_evidence()] == [source.SOPInstanceUID]


def test_study_with_two_images_of_different_size_reports_both(tmp_path):
    broken = dx_image(rows=96, columns=80)
    normal = dx_image(study_uid=broken.StudyInstanceUID, rows=72, columns=64)
    findings = study_findings(
        image_finding(
            broken, "fracture", 0.91, (square(20.0, 30.0, 16.0, 0.88),), body_region="hand"
        ),
        image_finding(normal, "negative", 0.07, body_region="hand"),
        study_uid=broken.StudyInstanceUID,
    )
    sources = {ds.SOPInstanceUID: ds for ds in (broken, normal)}
    datasets = build_results(findings, sources, {"gsps", "secondary_capture", "radiograph_seg"})
    assert [ds.SOPClassUID for ds in datasets] == [SEG, SR, GSPS, GSPS, SC, SC]
    paths = written(datasets, tmp_path)
    assert all(dciodvfy_errors(path) == [] for path in paths)

    seg, report = hd.seg.segread(paths[0]), hd.sr.srread(paths[1])
    assert [uid for _, _, uid in seg.get_source_image_uids()] == [broken.SOPInstanceUID]
    groups = report.content.get_image_measurement_groups()
    assert [g.source_images[0].referenced_sop_instance_uid for g in groups] == [
        broken.SOPInstanceUID,
        normal.SOPInstanceUID,
    ]
    assert [evaluation(g) for g in groups] == [PRESENT, ABSENT]
    assert [g.tracking_identifier for g in groups] == [
        "fracture finding, image 1",
        "fracture finding, image 2",
    ]
    (roi,) = report.content.get_planar_roi_measurement_groups()
    assert roi.roi.ContentSequence[0].referenced_sop_instance_uid == broken.SOPInstanceUID
    evidence = {uid for _, _, uid, _ in report.get_evidence()}
    assert evidence == {broken.SOPInstanceUID, normal.SOPInstanceUID, seg.SOPInstanceUID}
    # one series per kind of object; overlays numbered per image in study order
    gsps = [dcmread(p) for p in paths[2:4]]
    assert gsps[0].SeriesInstanceUID == gsps[1].SeriesInstanceUID
    assert [g.InstanceNumber for g in gsps] == [1, 2]
    assert [
        g.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
        for g in gsps
    ] == [
        broken.SOPInstanceUID,
        normal.SOPInstanceUID,
    ]


def test_source_without_imager_pixel_spacing_or_orientation_still_gets_valid_results(tmp_path):
    source = dx_image(imager_pixel_spacing=False, patient_orientation=False, window=None)
    findings = study_findings(
        image_finding(
            source, "fracture", 0.8, (square(8.0, 8.0, 24.0, 0.75),), body_region="shoulder"
        ),
        study_uid=source.StudyInstanceUID,
    )
    datasets = build_results(
        findings, {source.SOPInstanceUID: source}, {"gsps", "secondary_capture", "radiograph_seg"}
    )
    paths = written(datasets, tmp_path)
    assert {p.name: dciodvfy_errors(p) for p in paths} == {p.name: [] for p in paths}
    report = hd.sr.srread(paths[1])
    (image,) = report.content.get_image_measurement_groups()
    assert image.finding_sites[0].value == hd.sr.CodedConcept("16982005", "SCT", "Shoulder")
    assert not datasets[0].PatientOrientation


def test_every_object_accepts_an_undetermined_site(tmp_path):
    source = dx_image()
    findings = study_findings(
        image_finding(source, "fracture", 0.8, (square(8.0, 8.0, 24.0, 0.75),), body_region=""),
        study_uid=source.StudyInstanceUID,
    )
    datasets = build_results(
        findings, {source.SOPInstanceUID: source}, {"gsps", "secondary_capture", "radiograph_seg"}
    )
    assert [ds.SOPClassUID for ds in datasets] == [SEG, SR, GSPS, SC]
    paths = written(datasets, tmp_path)
    assert {p.name: dciodvfy_errors(p) for p in paths} == {p.name: [] for p in paths}
    seg = hd.seg.segread(paths[0])
    assert "AnatomicRegionSequence" not in seg.SegmentSequence[0]
    assert hd.sr.srread(paths[1]).content.get_image_measurement_groups()[0].finding_sites == []
    label = "AI: fracture likely (80 %), site not determined"
    gsps, sc = dcmread(paths[2]), dcmread(paths[3])
    assert gsps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == label
    assert sc.DerivationDescription.startswith(label)


def test_unknown_overlay_is_refused():
    source = dx_image()
    findings = study_findings(
        image_finding(source, "negative", 0.1), study_uid=source.StudyInstanceUID
    )
    with pytest.raises(ValueError, match=r"overlays: unknown \['png'\]"):
        build_results(findings, {source.SOPInstanceUID: source}, {"gsps", "png"})


def test_finding_without_its_source_is_refused():
    source = dx_image()
    findings = study_findings(
        image_finding(source, "negative", 0.1), study_uid=source.StudyInstanceUID
    )
    with pytest.raises(
        ValueError, match=f"finding for {source.SOPInstanceUID} has no source dataset"
    ):
        build_results(findings, {})


def test_source_from_another_study_is_refused():
    source = dx_image()
    findings = study_findings(image_finding(source, "negative", 0.1), study_uid="1.2.3.999")
    with pytest.raises(ValueError, match="findings are for 1.2.3.999"):
        build_results(findings, {source.SOPInstanceUID: source})


def test_unknown_category_is_refused():
    source = dx_image()
    findings = study_findings(
        image_finding(source, "maybe", 0.1), study_uid=source.StudyInstanceUID
    )
    with pytest.raises(ValueError, match="unknown category 'maybe'"):
        build_results(findings, {source.SOPInstanceUID: source})
