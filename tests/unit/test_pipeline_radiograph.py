"""The radiograph-fracture pipeline with the shipped model: which images it analyses, what it concludes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from node.config import Config, InferenceSettings
from node.imaging.pixels import Radiograph
from node.pipelines import create, load_modules
from node.pipelines.radiograph import Findings, RadiographFracturePipeline, summarize
from node.pipelines.radiograph.model import RadiographModel
from node.pipelines.radiograph.results import build_results
from node.records import PipelineInput, SeriesAttributes, SeriesInput, categorize
from tests.conftest import CR_SAMPLES
from tests.support import dicomgen
from tests.support.findings import dx_image

SHIPPED = InferenceSettings().bundle("radiograph_fracture")


@pytest.mark.parametrize(
    ("probability", "category"),
    [(0.05, "negative"), (0.2, "suspicious"), (0.59, "suspicious"), (0.6, "fracture"), (1.0, "fracture")],
)
def test_categorize_at_the_two_operating_points(probability: float, category: str) -> None:
    assert categorize(probability, {"suspicious": 0.2, "fracture": 0.6}) == category


@pytest.fixture(scope="module")
def model() -> RadiographModel:
    with RadiographModel(SHIPPED, device="cpu") as shipped:
        yield shipped


def request(tmp_path: Path, datasets) -> PipelineInput:  # type: ignore[no-untyped-def]
    paths = dicomgen.write(datasets, tmp_path)
    series = SeriesInput(SeriesAttributes(str(datasets[0].SeriesInstanceUID), modality="DX"), tuple(paths))
    return PipelineInput(str(datasets[0].StudyInstanceUID), 1, "MOD", (series,))


def test_every_image_of_the_study_gets_a_finding_and_other_objects_a_reason(tmp_path, model) -> None:
    study = generate_uid()
    images = [dx_image(study, rows=200, columns=160), dx_image(study, rows=120, columns=240)]
    report = dicomgen.sr_document()
    report.StudyInstanceUID = study
    pipeline = RadiographFracturePipeline(model)
    findings, sources = pipeline.analyse(request(tmp_path, [*images, report]))

    assert [f.sop_instance_uid for f in findings.images] == [str(ds.SOPInstanceUID) for ds in images]
    assert [uid for uid, _ in findings.skipped] == [str(report.SOPInstanceUID)]
    assert "no pixel data" in findings.skipped[0][1]
    for finding, ds in zip(findings.images, images, strict=True):
        assert 0.0 <= finding.fracture_probability <= 1.0
        assert finding.category == categorize(finding.fracture_probability, pipeline.model.operating_points)
        assert finding.region_map.shape == (ds.Rows, ds.Columns)
        assert finding.body_region in {"hand", "leg", "hip", "shoulder"}
        for region in finding.regions:  # outlines lie on the source image
            assert all(0 <= x <= ds.Columns and 0 <= y <= ds.Rows for x, y in region.polygon)
    assert findings.algorithm.weights_sha256 == model.weights_sha256
    assert set(sources) == {str(ds.SOPInstanceUID) for ds in images}
    rows = findings.rows()  # the images analysed, then the report passed over, with why
    assert [row.sop_instance_uid for row in rows] == [
        *(str(ds.SOPInstanceUID) for ds in images),
        str(report.SOPInstanceUID),
    ]
    assert [bool(row.skipped) for row in rows] == [False, False, True]
    assert [row.category for row in rows[:2]] == [f.category for f in findings.images]


def test_identical_pixels_give_identical_findings_whatever_else_is_in_the_batch(tmp_path, model) -> None:
    study = generate_uid()
    first = dx_image(study, rows=200, columns=160)
    twin = dx_image(study, rows=200, columns=160)  # same pixels (seeded by size), other UIDs
    pipeline = RadiographFracturePipeline(model)
    alone, _ = pipeline.analyse(request(tmp_path / "a", [first]))
    together, _ = pipeline.analyse(request(tmp_path / "b", [first, twin]))
    assert together.images[0].fracture_probability == pytest.approx(alone.images[0].fracture_probability, abs=1e-5)
    assert together.images[1].fracture_probability == pytest.approx(alone.images[0].fracture_probability, abs=1e-5)


def test_own_secondary_captures_are_not_analysed_again(tmp_path, model) -> None:
    study = generate_uid()
    image = dx_image(study, rows=128, columns=128)
    pipeline = RadiographFracturePipeline(model)
    findings, sources = pipeline.analyse(request(tmp_path / "in", [image]))
    captures = [
        ds
        for ds in build_results(findings, sources, {"secondary_capture"})
        if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    ]
    assert captures
    again, _ = pipeline.analyse(request(tmp_path / "again", captures))
    assert not again.images
    assert "fracnode result" in again.skipped[0][1]


def test_a_study_without_radiographs_is_not_applicable(tmp_path, model) -> None:
    report = dicomgen.sr_document()
    outcome = RadiographFracturePipeline(model).run(request(tmp_path, [report]))
    assert outcome.datasets == ()
    assert outcome.not_applicable.startswith("no radiograph to analyse (no pixel data")


def test_summary_counts_categories() -> None:
    class Image:
        def __init__(self, category: str, probability: float) -> None:
            self.category, self.fracture_probability = category, probability

    findings = Findings(
        "1.2",
        None,
        (Image("fracture", 0.9), Image("negative", 0.1), Image("fracture", 0.7)),
        skipped=(("1.2.3", "no pixel data"),),
    )
    assert summarize(findings) == "3 image(s): fracture 2, negative 1; highest fracture probability 0.90; 1 skipped"


def test_preprocess_letterboxes_to_the_contract_and_postprocess_maps_back(model) -> None:
    image = np.zeros((200, 100), np.float32)
    image[50:150, 25:75] = 1.0
    radiograph = Radiograph(image, 200, 100, (0.1, 0.1), "PixelSpacing", "1.2.3", "MONOCHROME2", "window")
    prepared = model.preprocess(radiograph)
    assert prepared.array.shape == (1, 384, 384) and prepared.array.dtype == np.float32
    assert (prepared.letterbox.scale, prepared.letterbox.left) == (1.92, 96)
    # The shipped network normalizes its [0, 1] input itself (preprocessing.standardize "none").
    area = prepared.letterbox.crop(prepared.array[0])
    assert float(area.min()) >= 0.0 and float(area.max()) <= 1.0 and float(area.mean()) == pytest.approx(0.25, abs=0.02)
    assert float(np.abs(prepared.array[0, :, :90]).max()) == 0.0  # the padding stays 0
    array, letterbox = prepared
    mapped = model.postprocess(model.infer([array])[0], letterbox)
    assert mapped["regions"].shape == (1, 200, 100)
    assert mapped["fracture"].shape == (1,) and mapped["body_region"].shape == (4,)


def test_a_tampered_model_stops_the_pipeline_with_the_reason(tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(SHIPPED, models / "radiograph_fracture")
    metadata_path = models / "radiograph_fracture" / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["fracnode"]["weights_sha256"] = "0" * 64
    metadata_path.write_text(json.dumps(metadata))
    config = Config.model_validate({"inference": {"models_dir": str(models), "device": "cpu"}})
    load_modules([])
    with pytest.raises(ValueError, match="does not match"):
        create("radiograph-fracture", config)


def test_building_results_logs_no_names_from_the_source(tmp_path, model) -> None:
    import warnings

    image = dx_image(generate_uid(), rows=128, columns=128)
    image.ReferringPhysicianName = "SENTINELDOCTOR"  # one component: highdicom would warn, quoting it
    image.PatientName = "SENTINELPATIENT"
    pipeline = RadiographFracturePipeline(model)
    findings, sources = pipeline.analyse(request(tmp_path, [image]))
    with warnings.catch_warnings(record=True) as caught:
        build_results(findings, sources, {"gsps", "secondary_capture"})
    assert not [w for w in caught if "SENTINEL" in str(w.message)]


# -- the intended-use gate and the finding site, on real radiographs -------------------------------

REGION_ATTRIBUTES = (
    "BodyPartExamined",
    "AnatomicRegionSequence",
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
)


def _sample(name: str, *removed: str):  # type: ignore[no-untyped-def]
    ds = dcmread(CR_SAMPLES / name)
    for keyword in removed:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


@pytest.mark.parametrize(
    ("removed", "reason"),
    [
        ((), "BodyPartExamined names the chest"),
        (("BodyPartExamined",), "StudyDescription names the chest"),
        (REGION_ATTRIBUTES, "unlike the musculoskeletal radiographs it was trained on"),
    ],
    ids=["header", "without-body-part", "header-silent"],
)
def test_the_chest_film_is_not_analysed(tmp_path, model, removed, reason) -> None:
    outcome = RadiographFracturePipeline(model).run(request(tmp_path, [_sample("RG1_J2KI.dcm", *removed)]))
    assert outcome.datasets == ()  # no fracture finding is sent
    assert "outside the model's intended use" in outcome.not_applicable and reason in outcome.not_applicable


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_an_image_that_is_no_radiograph_is_refused_by_the_network(tmp_path, model, name) -> None:
    source = dcmread(get_testdata_file(name))
    image = dicomgen.radiograph((source.pixel_array - source.pixel_array.min()).astype("uint16"))
    outcome = RadiographFracturePipeline(model).run(request(tmp_path, [image]))
    assert outcome.datasets == () and "unlike the musculoskeletal radiographs" in outcome.not_applicable


def test_a_header_naming_a_covered_region_is_trusted_over_the_network(tmp_path, model) -> None:
    # The typicality model knows FracAtlas's acquisition; a header that names a covered body part
    # decides, so a film from another device is not refused for looking unfamiliar.
    source = dcmread(get_testdata_file("CT_small.dcm"))
    image = dicomgen.radiograph(
        (source.pixel_array - source.pixel_array.min()).astype("uint16"), BodyPartExamined="HAND"
    )
    findings, _ = RadiographFracturePipeline(model).analyse(request(tmp_path, [image]))
    assert [f.sop_instance_uid for f in findings.images] == [str(image.SOPInstanceUID)] and not findings.skipped
    assert (findings.images[0].body_region, findings.images[0].body_region_source) == ("hand", "header")


def test_the_tibia_sample_is_analysed_with_its_site_from_the_description(tmp_path, model) -> None:
    findings, _ = RadiographFracturePipeline(model).analyse(request(tmp_path, [_sample("RG3_J2KI.dcm")]))
    (image,) = findings.images
    assert (image.body_region, image.body_region_source) == ("leg", "header")


def test_without_a_header_region_the_site_is_the_networks_only_when_confident(tmp_path, model) -> None:
    pipeline = RadiographFracturePipeline(model)
    findings, _ = pipeline.analyse(request(tmp_path, [_sample("RG3_J2KI.dcm", *REGION_ATTRIBUTES)]))
    (image,) = findings.images  # a lower-leg film: in scope for the network too
    assert image.body_region in ("leg", "")  # never "hip" for a tibia
    if image.body_region:
        assert image.body_region_source == "model" and image.body_region_probability >= pipeline.model.site_confidence
    else:
        assert image.body_region_source == "" and image.body_region_probability < pipeline.model.site_confidence


def test_a_bundle_that_records_no_sha256_loads_with_the_one_the_configuration_gives(tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(SHIPPED, models / "radiograph_fracture")
    metadata_path = models / "radiograph_fracture" / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    digest, metadata["fracnode"]["weights_sha256"] = metadata["fracnode"]["weights_sha256"], ""
    metadata_path.write_text(json.dumps(metadata))
    load_modules([])
    inference = {"models_dir": str(models), "device": "cpu"}
    with pytest.raises(ValueError, match="weights_sha256 is empty"):
        create("radiograph-fracture", Config.model_validate({"inference": inference}))
    given = Config.model_validate({"inference": {**inference, "weights_sha256": {"radiograph_fracture": digest}}})
    pipeline = create("radiograph-fracture", given)
    try:
        assert pipeline.algorithm.weights_sha256 == digest
    finally:
        pipeline.model.close()
