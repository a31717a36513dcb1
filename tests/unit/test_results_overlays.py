"""GSPS and secondary-capture overlays: what they draw, how they display, and dciodvfy."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread

from node.imaging.pixels import load_radiograph
from node.pipelines.radiograph.capture import build_secondary_capture, burn_in, displayed
from node.pipelines.radiograph.gsps import build_presentation_state
from node.pipelines.radiograph.preview import render
from node.pipelines.radiograph.template import shipped_template
from node.results.colours import COLOURS
from node.results.producer import Producer
from tests.support.dciodvfy import dciodvfy_errors
from tests.support.findings import (
    ALGORITHM,
    THRESHOLDS,
    cr_fracture_study,
    dx_image,
    image_finding,
    rgb_dx_image,
    saved,
    square,
)

PRODUCER = Producer(ALGORITHM, shipped_template(), THRESHOLDS)


@pytest.fixture(scope="module")
def cr_overlays(cr_sample, tmp_path_factory):
    source, findings = cr_fracture_study(cr_sample)
    folder = tmp_path_factory.mktemp("overlays")
    image = findings.images[0]
    gsps = saved(build_presentation_state(image, source, PRODUCER, "1.2.3.4", 1), folder, "gsps")
    capture = saved(build_secondary_capture(image, source, PRODUCER, "1.2.3.5", 1), folder, "sc")
    return source, image, gsps, capture


@pytest.mark.parametrize("kind", ["gsps", "sc"])
def test_overlay_passes_dciodvfy(cr_overlays, kind):
    _, _, gsps, capture = cr_overlays
    assert dciodvfy_errors(gsps if kind == "gsps" else capture) == []


def test_gsps_draws_each_region_closed_with_a_label_on_the_source(cr_overlays):
    source, image, path, _ = cr_overlays
    gsps = dcmread(path)
    assert gsps.Modality == "PR" and gsps.Manufacturer == "fracnode"
    assert (gsps.SeriesNumber, gsps.StudyInstanceUID) == (9103, source.StudyInstanceUID)
    referenced = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (annotation,) = gsps.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    drawn = [np.reshape(g.GraphicData, (-1, 2)) for g in annotation.GraphicObjectSequence]
    assert [g.GraphicType for g in annotation.GraphicObjectSequence] == ["POLYLINE", "POLYLINE"]
    for points, region in zip(drawn, image.regions):
        np.testing.assert_allclose(points, [*region.polygon, region.polygon[0]])
    assert [t.UnformattedTextValue for t in annotation.TextObjectSequence] == ["AI: fracture likely (87 %), lower limb"]


def test_gsps_keeps_the_source_window_and_inverts_monochrome1(cr_overlays):
    source, _, path, _ = cr_overlays
    gsps = dcmread(path)
    assert source.PhotometricInterpretation == "MONOCHROME1"
    assert gsps.PresentationLUTShape == "INVERSE"
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (
        float(source.WindowCenter),
        float(source.WindowWidth),
    )


def test_gsps_for_a_windowless_monochrome2_source_gets_a_percentile_window(tmp_path):
    source = dx_image(window=None)
    image = image_finding(source, "suspicious", 0.34, (square(10.0, 12.0, 20.0, 0.4),))
    path = saved(build_presentation_state(image, source, PRODUCER, "1.2.3.4", 1), tmp_path, "gsps")
    gsps = dcmread(path)
    assert gsps.PresentationLUTShape == "IDENTITY"
    (voi,) = gsps.SoftcopyVOILUTSequence
    values = np.frombuffer(source.PixelData, np.uint16)
    assert float(voi.WindowCenter) == pytest.approx(np.percentile(values, [0.5, 99.5]).mean())
    assert (
        gsps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
        == "AI: possible fracture (34 %; threshold 20 %), hand"
    )
    assert dciodvfy_errors(path) == []


def test_gsps_of_a_negative_image_has_only_the_label(tmp_path):
    source = dx_image()
    path = saved(
        build_presentation_state(
            image_finding(source, "negative", 0.03), source, PRODUCER, "1.2", 1
        ),
        tmp_path,
        "gsps",
    )
    (annotation,) = dcmread(path).GraphicAnnotationSequence
    assert "GraphicObjectSequence" not in annotation
    assert annotation.TextObjectSequence[0].UnformattedTextValue == "AI: no fracture found (3 %; threshold 20 %), hand"
    assert dciodvfy_errors(path) == []


def test_secondary_capture_is_an_rgb_copy_marked_as_burned_in(cr_overlays):
    source, _, _, path = cr_overlays
    sc = dcmread(path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.PhotometricInterpretation, sc.BitsAllocated, sc.SamplesPerPixel) == ("RGB", 8, 3)
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert sc.BurnedInAnnotation == "YES" and sc.ConversionType == "WSD"
    assert sc.Manufacturer == "fracnode" and sc.SeriesNumber == 9104
    assert (sc.StudyInstanceUID, sc.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.PatientOrientation == source.PatientOrientation


def test_secondary_capture_shows_the_radiograph_as_displayed_with_regions_outlined(cr_overlays):
    source, image, _, path = cr_overlays
    pixels = dcmread(path).pixel_array
    shown = np.clip(load_radiograph(source).image * 255 + 0.5, 0, 255).astype(np.uint8)
    # away from the outlines and the texts the picture is the grey radiograph, MONOCHROME1 inverted
    np.testing.assert_array_equal(pixels[400:700, 800:1200, 0], shown[400:700, 800:1200])
    assert (pixels[400:700, 800:1200, 0] == pixels[400:700, 800:1200, 2]).all()
    # the outline of each region is drawn in the category colour on its polygon's edges
    for region in image.regions:
        column, row = (int(v) for v in region.polygon[0])
        mid_edge = pixels[row, column + 5 : column + 15]
        assert (mid_edge == COLOURS["fracture"]).all(axis=-1).any()


def test_secondary_capture_burns_in_the_disclaimer_and_label(cr_overlays):
    source, _, _, path = cr_overlays
    pixels = dcmread(path).pixel_array.astype(int)
    rows = int(source.Rows)
    top_left, bottom_left = pixels[: rows // 20, : rows // 3], pixels[-rows // 20 :, : rows // 2]
    assert (top_left == COLOURS["fracture"]).all(axis=-1).sum() > 100  # the red label
    assert (bottom_left == (255, 255, 255)).all(
        axis=-1
    ).sum() > 100  # white disclaimer text on black
    assert (bottom_left == (0, 0, 0)).all(axis=-1).sum() > 1000


def test_secondary_capture_of_a_source_without_orientation_is_valid(tmp_path):
    source = dx_image(
        patient_orientation=False, imager_pixel_spacing=False, photometric="MONOCHROME1"
    )
    image = image_finding(source, "fracture", 0.9, (square(10.0, 12.0, 20.0, 0.9),))
    path = saved(build_secondary_capture(image, source, PRODUCER, "1.2.3.5", 1), tmp_path, "sc")
    sc = dcmread(path)
    assert "PatientOrientation" in sc and not sc.PatientOrientation
    assert dciodvfy_errors(path) == []


def test_grey_stored_as_rgb_gets_a_colour_presentation_state_and_capture(tmp_path):
    source = rgb_dx_image()
    image = image_finding(source, "fracture", 0.7, (square(6.0, 6.0, 12.0, 0.8),))
    state = build_presentation_state(image, source, PRODUCER, "1.2.3.4", 1)
    capture = build_secondary_capture(image, source, PRODUCER, "1.2.3.5", 1)
    assert state.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.2"  # Color Softcopy Presentation State
    assert "PresentationLUTShape" not in state
    drawn = np.reshape(
        state.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData, (-1, 2)
    )
    np.testing.assert_allclose(drawn, [*image.regions[0].polygon, image.regions[0].polygon[0]])
    for name, ds in (("cspr", state), ("sc", capture)):
        assert dciodvfy_errors(saved(ds, tmp_path, name)) == []


def test_preview_label_says_the_finding_and_that_the_site_was_not_determined():
    source = dx_image(rows=400, columns=300)
    image = image_finding(
        source, "suspicious", 0.31, (square(40.0, 60.0, 80.0, 0.7),), body_region=""
    )
    label = "AI: possible fracture (31 %; threshold 20 %), site not determined"
    assert shipped_template().label("suspicious", 0.31, "", 0.2) == label
    drawn = np.asarray(render(source, image, threshold=0.2))
    expected = burn_in(displayed(source), image, label, shipped_template().disclaimer)
    np.testing.assert_array_equal(drawn, expected)  # 400 px: shown at full size
    other = burn_in(displayed(source), image, "AI: suspicious 31%", shipped_template().disclaimer)
    assert not np.array_equal(drawn, other)  # the comparison sees the label's words
