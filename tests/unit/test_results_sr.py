"""The TID 1500 SR, read back with highdicom and checked item by item, and validated by dciodvfy.

What the tests pin down beyond validity is what viewers need (docs/viewing-results.md): every
measurement group has spatial coordinates on the source image, the image finding says in words
what was found, probabilities are in percent and region numbers are scores, not probabilities.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from node.pipelines.radiograph import RegionFinding
from node.pipelines.radiograph.results import build_results
from node.pipelines.radiograph.sr import library_images
from node.results.polylines import closed_polyline
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.findings import (
    ALGORITHM,
    cr_fracture_study,
    dx_image,
    image_finding,
    saved,
    square,
    study_findings,
)

FRACTURE = hd.sr.CodedConcept("72704001", "SCT", "Fracture")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
SUSPECTED = hd.sr.CodedConcept("415684004", "SCT", "Suspected")
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
REGION_SCORE = hd.sr.CodedConcept("REGION-SCORE", "99FRACNODE", "Fracture region score")
SCORE = hd.sr.CodedConcept("{score}", "UCUM", "score")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
LOWER_LIMB = hd.sr.CodedConcept("61685007", "SCT", "Lower limb")
IMAGE_REGION = hd.sr.CodedConcept("111030", "DCM", "Image Region")


@pytest.fixture(scope="module")
def cr_report(cr_sample, tmp_path_factory):
    source, findings = cr_fracture_study(cr_sample)
    seg, sr = build_results(findings, {source.SOPInstanceUID: source}, {"radiograph_seg"})
    path = saved(sr, tmp_path_factory.mktemp("sr"), "sr")
    return source, findings, seg, hd.sr.srread(path), path


def comments(group) -> list[str]:  # type: ignore[no-untyped-def]
    return [item.TextValue for item in hd.sr.utils.find_content_items(group[0], name=COMMENT)]


def one_report(tmp_path, image, source):  # type: ignore[no-untyped-def]
    """The SR of a one-image study, written and read back."""
    (sr,) = build_results(
        study_findings(image, study_uid=source.StudyInstanceUID), {source.SOPInstanceUID: source}
    )
    path = saved(sr, tmp_path, "sr")
    assert dciodvfy_errors(path) == []
    return hd.sr.srread(path)


def texts(sr: hd.sr.Comprehensive3DSR, name) -> list[str]:  # type: ignore[no-untyped-def]
    items = hd.sr.utils.find_content_items(sr, name=name, recursive=True)
    return [item.TextValue for item in items]


def test_sr_passes_dciodvfy(cr_report):
    *_, path = cr_report
    assert dciodvfy_errors(path) == []


def test_sr_is_a_tid_1500_report_in_the_source_study(cr_report):
    source, _, _, sr, _ = cr_report
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert (sr.PatientID, sr.PatientName) == (source.PatientID, source.PatientName)
    assert (
        sr.SOPInstanceUID != source.SOPInstanceUID
        and sr.SeriesInstanceUID != source.SeriesInstanceUID
    )
    assert (sr.SeriesNumber, sr.SeriesDescription) == (9101, "AI fracture report (fracnode)")
    assert sr.Manufacturer == "fracnode"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_image_finding_has_fracture_present_with_probability_in_percent_on_the_source(cr_report):
    source, findings, _, sr, _ = cr_report
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type == FRACTURE
    assert [site.value for site in group.finding_sites] == [LOWER_LIMB]
    ((evaluation,),) = [group.get_qualitative_evaluations(name=FRACTURE)]
    assert evaluation.value == PRESENT
    (probability,) = group.get_measurements(name=PROBABILITY)
    assert probability.value == pytest.approx(100 * findings.images[0].fracture_probability)
    assert probability.unit == PERCENT
    assert [ref.referenced_sop_instance_uid for ref in group.source_images] == [
        source.SOPInstanceUID
    ]
    assert group.tracking_identifier == "fracture finding, image 1"


def test_image_probability_is_inferred_from_a_frame_around_the_whole_source(cr_report):
    source, _, _, sr, _ = cr_report
    (group,) = sr.content.get_image_measurement_groups()
    (probability,) = group.get_measurements(name=PROBABILITY)
    (frame,) = probability.referenced_coordinates
    assert frame.relationship_type == hd.sr.RelationshipTypeValues.INFERRED_FROM
    assert frame.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    rows, columns = int(source.Rows), int(source.Columns)
    assert frame.value.tolist() == [[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]]
    assert frame.ContentSequence[0].referenced_sop_instance_uid == source.SOPInstanceUID


def test_image_finding_says_in_words_what_was_found(cr_report):
    *_, sr, _ = cr_report
    (group,) = sr.content.get_image_measurement_groups()
    assert comments(group) == ["AI: fracture likely, lower limb"]


def test_each_region_is_a_closed_polyline_on_the_source_image(cr_report):
    source, findings, _, sr, _ = cr_report
    groups = sr.content.get_planar_roi_measurement_groups()
    regions = findings.images[0].regions
    assert len(groups) == len(regions) == 2
    for group, region in zip(groups, regions):
        assert group.reference_type == IMAGE_REGION
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = group.roi.value
        assert np.array_equal(points[0], points[-1])
        np.testing.assert_allclose(points, [*region.polygon, region.polygon[0]])
        assert group.roi.ContentSequence[0].referenced_sop_instance_uid == source.SOPInstanceUID
        assert group.finding_type == FRACTURE
        assert group.get_qualitative_evaluations(name=FRACTURE)[0].value == PRESENT
        # the region's number is a score, not a second probability of the finding
        assert group.get_measurements(name=PROBABILITY) == []
        (score,) = group.get_measurements(name=REGION_SCORE)
        assert (score.value, score.unit) == (pytest.approx(region.probability), SCORE)
        assert group.finding_sites == []  # the image finding carries the site
    assert [g.tracking_identifier for g in groups] == [
        "fracture region 1, image 1",
        "fracture region 2, image 1",
    ]


def test_sources_and_segmentation_are_evidence(cr_report):
    source, _, seg, sr, _ = cr_report
    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}


def test_algorithm_name_version_and_weights_digest_are_recorded(cr_report):
    *_, sr, _ = cr_report
    assert set(texts(sr, codes.DCM.AlgorithmName)) == {ALGORITHM.name}
    assert set(texts(sr, codes.DCM.AlgorithmVersion)) == {ALGORITHM.version}
    parameters = set(texts(sr, codes.DCM.AlgorithmParameters))
    assert f"weights_sha256={ALGORITHM.weights_sha256}" in parameters
    assert {"threshold_fracture=0.6", "threshold_suspicious=0.2"} <= parameters
    observer = texts(sr, codes.DCM.DeviceObserverName)
    assert observer == [ALGORITHM.name]


def test_sr_lists_local_codes_and_is_rendered_as_separate_items(cr_report):
    *_, sr, _ = cr_report
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == "99FRACNODE"
    containers = hd.sr.utils.find_content_items(
        sr, value_type=hd.sr.ValueTypeValues.CONTAINER, recursive=True
    )
    assert {c.ContinuityOfContent for c in [sr, *containers]} == {"SEPARATE"}


@pytest.mark.parametrize(
    ("category", "probability", "value", "label"),
    [
        ("fracture", 0.87, PRESENT, "AI: fracture likely, hand"),
        ("suspicious", 0.31, SUSPECTED, "AI: possible fracture, hand"),
        ("negative", 0.04, ABSENT, "AI: no fracture found, hand"),
    ],
)
def test_category_decides_the_fracture_evaluation_and_the_words(
    tmp_path, category, probability, value, label
):
    source = dx_image()
    regions = () if category == "negative" else (square(10.0, 12.0, 20.0, 0.4),)
    report = one_report(tmp_path, image_finding(source, category, probability, regions), source)
    (image,) = report.content.get_image_measurement_groups()
    assert comments(image) == [label]
    groups = [
        *report.content.get_image_measurement_groups(),
        *report.content.get_planar_roi_measurement_groups(),
    ]
    assert len(groups) == (1 if category == "negative" else 2)
    assert all(g.get_qualitative_evaluations(name=FRACTURE)[0].value == value for g in groups)


def test_undetermined_site_gives_no_finding_site_and_says_so(tmp_path):
    source = dx_image()
    image = image_finding(
        source, "suspicious", 0.31, (square(10.0, 12.0, 20.0, 0.6),), body_region=""
    )
    report = one_report(tmp_path, image, source)
    (group,) = report.content.get_image_measurement_groups()
    assert group.finding_sites == []
    assert comments(group) == ["AI: possible fracture, site not determined"]
    (region,) = report.content.get_planar_roi_measurement_groups()
    assert region.finding_sites == []


def test_a_negative_image_with_regions_is_refused():
    source = dx_image()
    image = image_finding(source, "negative", 0.04, (square(10.0, 12.0, 20.0, 0.6),))
    with pytest.raises(ValueError, match="category 'negative' has regions"):
        build_results(
            study_findings(image, study_uid=source.StudyInstanceUID),
            {source.SOPInstanceUID: source},
        )


def test_image_library_holds_only_images_highdicom_can_describe():
    complete = dx_image()
    assert library_images(
        [complete, dx_image(imager_pixel_spacing=False), dx_image(patient_orientation=False)]
    ) == [complete]


def test_image_library_lists_the_describable_source(tmp_path):
    source = dx_image()
    image = image_finding(source, "negative", 0.05)
    (sr,) = build_results(
        study_findings(image, study_uid=source.StudyInstanceUID), {source.SOPInstanceUID: source}
    )
    library = hd.sr.utils.find_content_items(sr, name=codes.DCM.ImageLibrary, recursive=True)
    assert len(library) == 1
    entries = hd.sr.utils.find_content_items(
        library[0], value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True
    )
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == [
        source.SOPInstanceUID
    ]


def test_polyline_is_closed_by_repeating_the_first_point():
    region = RegionFinding(
        polygon=((1.0, 2.0), (5.0, 2.0), (5.0, 7.0)), box=(1.0, 2.0, 5.0, 7.0), probability=0.9
    )
    assert closed_polyline(region.polygon).tolist() == [[1.0, 2.0], [5.0, 2.0], [5.0, 7.0], [1.0, 2.0]]


@pytest.mark.parametrize(
    ("polygon", "message"),
    [
        (((1.0, 2.0), (5.0, 2.0)), "at least 3"),
        (((1.0, 2.0), (5.0, 2.0), (5.0, 7.0), (1.0, 2.0)), "must not repeat"),
    ],
)
def test_malformed_polygon_is_refused(polygon, message):
    with pytest.raises(ValueError, match=message):
        closed_polyline(RegionFinding(polygon=polygon, box=(0.0, 0.0, 1.0, 1.0), probability=0.5).polygon)


def test_probability_outside_unit_interval_is_refused():
    source = dx_image()
    image = image_finding(source, "fracture", 1.3, (square(10.0, 12.0, 20.0, 0.9),))
    with pytest.raises(ValueError, match=r"probability 1.3 is outside \[0, 1\]"):
        build_results(
            study_findings(image, study_uid=source.StudyInstanceUID),
            {source.SOPInstanceUID: source},
        )
