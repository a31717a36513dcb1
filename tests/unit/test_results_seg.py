"""The fractional SEG of the region map: read back with highdicom, checked segment and pixel, and dciodvfy."""

from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest

from node.pipelines.radiograph.seg import build_segmentation
from node.pipelines.radiograph.template import shipped_template
from node.results.producer import Producer
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.findings import (
    ALGORITHM,
    THRESHOLDS,
    cr_fracture_study,
    dx_image,
    image_finding,
    saved,
    square,
)

PRODUCER = Producer(ALGORITHM, shipped_template(), THRESHOLDS)


def segmentation(image, source, tmp_path):  # type: ignore[no-untyped-def]
    seg = build_segmentation(
        image, source, PRODUCER, "1.2.3.4", 1, tracking_id="image 1", tracking_uid="1.2.3.5"
    )
    path = saved(seg, tmp_path, "seg")
    return hd.seg.segread(path), path


@pytest.fixture(scope="module")
def cr_seg(cr_sample, tmp_path_factory):
    source, findings = cr_fracture_study(cr_sample)
    seg, path = segmentation(findings.images[0], source, tmp_path_factory.mktemp("seg"))
    return source, findings.images[0], seg, path


def test_seg_passes_dciodvfy(cr_seg):
    *_, path = cr_seg
    assert dciodvfy_errors(path) == []


def test_seg_is_fractional_probability_on_the_source_image(cr_seg):
    source, _, seg, _ = cr_seg
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.MaximumFractionalValue == 255
    assert [uid for _, _, uid in seg.get_source_image_uids()] == [source.SOPInstanceUID]
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.SOPInstanceUID != source.SOPInstanceUID
    assert (seg.SeriesNumber, seg.SeriesDescription) == (
        9102,
        "AI fracture region map (fracnode)",
    )
    assert seg.Manufacturer == "fracnode"
    assert seg.PatientOrientation == source.PatientOrientation


def test_segment_codes_and_algorithm(cr_seg):
    *_, seg, _ = cr_seg
    segment = seg.get_segment_description(1)
    assert (
        segment.segmented_property_category.value,
        segment.segmented_property_category.scheme_designator,
    ) == (
        "49755003",
        "SCT",
    )
    assert (
        segment.segmented_property_type.value,
        segment.segmented_property_type.scheme_designator,
    ) == (
        "72704001",
        "SCT",
    )
    # lower limb, for "leg"
    assert [region.value for region in segment.anatomic_regions] == ["61685007"]
    assert segment.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    algorithm = segment.algorithm_identification
    assert (algorithm.name, algorithm.version, algorithm.family.value) == (
        ALGORITHM.name,
        ALGORITHM.version,
        "123110",
    )
    assert algorithm.parameters["weights_sha256"] == ALGORITHM.weights_sha256
    assert (segment.tracking_id, segment.tracking_uid) == ("image 1", "1.2.3.5")


def test_seg_pixels_are_the_region_map(cr_seg):
    source, image, seg, _ = cr_seg
    pixels = seg.get_pixels_by_source_instance(
        [source.SOPInstanceUID], segment_numbers=[1], rescale_fractional=True
    )
    assert pixels.shape == (1, int(source.Rows), int(source.Columns), 1)
    np.testing.assert_allclose(pixels[0, :, :, 0], image.region_map, atol=0.5 / 255 + 1e-6)
    assert pixels.max() == pytest.approx(0.93, abs=0.5 / 255)


def test_source_without_orientation_gets_an_empty_one_and_stays_valid(tmp_path):
    source = dx_image(patient_orientation=False, imager_pixel_spacing=False)
    image = image_finding(source, "suspicious", 0.4, (square(10.0, 12.0, 20.0, 0.45),))
    seg, path = segmentation(image, source, tmp_path)
    assert "PatientOrientation" in seg and not seg.PatientOrientation
    assert dciodvfy_errors(path) == []


def test_region_map_must_match_the_source_size():
    source = dx_image(rows=64, columns=64)
    image = image_finding(
        dx_image(rows=32, columns=32), "fracture", 0.9, (square(4.0, 4.0, 8.0, 0.9),)
    )
    image = replace(image, sop_instance_uid=source.SOPInstanceUID)
    with pytest.raises(
        ValueError, match=r"region_map .* has shape \(32, 32\), the source image is \(64, 64\)"
    ):
        build_segmentation(
            image, source, PRODUCER, "1.2.3.4", 1, tracking_id="image 1", tracking_uid="1.2.3.5"
        )


def test_an_empty_region_map_makes_no_segmentation():
    source = dx_image()
    image = image_finding(source, "negative", 0.01)
    with pytest.raises(ValueError, match="is empty"):
        build_segmentation(
            image, source, PRODUCER, "1.2.3.4", 1, tracking_id="image 1", tracking_uid="1.2.3.5"
        )


def test_finding_and_source_must_be_the_same_image():
    image = image_finding(dx_image(), "fracture", 0.9, (square(4.0, 4.0, 8.0, 0.9),))
    with pytest.raises(ValueError, match="paired with source"):
        build_segmentation(
            image, dx_image(), PRODUCER, "1.2.3.4", 1, tracking_id="image 1", tracking_uid="1.2.3.5"
        )
