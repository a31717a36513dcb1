"""The cspine-fracture pipeline before and around its models: which series becomes the volume,
why every other series is passed over, and what the job table says.

The models run in tests/integration/test_cspine_flow.py; here no test reaches them (the pipeline
gets no models, so a test that did would fail).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from node.pipelines.cspine import (
    NO_SERIES,
    CSpineFindings,
    CSpineFracturePipeline,
    VertebraFinding,
    summarize,
)
from node.pipelines.cspine.findings import reasons
from node.pipelines.cspine.pipeline import Stopwatch
from node.pipelines.cspine.select import SelectionRules
from node.records import (
    Algorithm,
    FindingRow,
    PipelineInput,
    SeriesAttributes,
    SeriesInput,
    categorize,
)
from tests.support import dicomgen


def routed(datasets: list[Dataset], folder: Path) -> SeriesInput:
    """A series as the node hands it to a pipeline: attributes from its headers, spool files."""
    first = datasets[0]
    return SeriesInput(
        SeriesAttributes(
            series_instance_uid=first.SeriesInstanceUID, modality=first.Modality,
            body_part_examined=first.BodyPartExamined, series_description=first.SeriesDescription,
            protocol_name=first.ProtocolName, sop_class_uids=(first.SOPClassUID,),
            image_types=tuple(dict.fromkeys("\\".join(ds.ImageType) for ds in datasets)),
            instance_count=len(datasets),
        ),
        tuple(dicomgen.write(datasets, folder)),
    )


def thick(datasets: list[Dataset]) -> list[Dataset]:
    for ds in datasets:
        ds.SliceThickness = 5.0
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * float(ds.InstanceNumber)]
    return datasets


@pytest.mark.parametrize(
    ("probability", "category"),
    [(0.05, "negative"), (0.3, "suspicious"), (0.59, "suspicious"), (0.6, "fracture"), (1.0, "fracture")],
)
def test_categorize_at_the_two_operating_points(probability: float, category: str) -> None:
    assert categorize(probability, {"suspicious": 0.3, "fracture": 0.6}) == category


def test_a_refused_series_gives_way_to_the_next_eligible_one(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    gapped = dicomgen.ct_series(45, study_uid=study, series_number=2)
    del gapped[20]  # a missing slice: refused as a volume, although it ranks first (more slices)
    whole = dicomgen.ct_series(40, study_uid=study, series_number=3)
    five_mm = thick(dicomgen.ct_series(40, study_uid=study, series_number=4))
    series = [routed(s, tmp_path / str(i)) for i, s in enumerate((gapped, whole, five_mm))]
    skipped: list[tuple[str, str]] = []
    watch = Stopwatch()

    volume = CSpineFracturePipeline(models=None).choose_volume(  # type: ignore[arg-type]
        PipelineInput(study, 1, "", tuple(series)), watch, skipped
    )

    assert volume is not None and volume.series_instance_uid == whole[0].SeriesInstanceUID
    assert volume.shape == (40, 64, 64)
    assert dict(skipped) == {
        five_mm[0].SeriesInstanceUID: "slices 5 mm thick (at most 3 mm)",
        gapped[0].SeriesInstanceUID: "refused as a volume: about 1 slice(s) missing: 2.000 mm between"
        " InstanceNumber 20 and InstanceNumber 22, 1.000 mm elsewhere",
    }
    assert set(watch.seconds) == {"select", "volume"}


def test_a_lower_ranked_eligible_series_is_named_with_why(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.2"
    longer, shorter = dicomgen.ct_series(45, study_uid=study), dicomgen.ct_series(40, study_uid=study)
    skipped: list[tuple[str, str]] = []
    request = PipelineInput(study, 1, "", (routed(shorter, tmp_path / "a"), routed(longer, tmp_path / "b")))
    volume = CSpineFracturePipeline(models=None).choose_volume(request, Stopwatch(), skipped)  # type: ignore[arg-type]
    assert volume is not None and volume.series_instance_uid == longer[0].SeriesInstanceUID
    assert skipped == [(shorter[0].SeriesInstanceUID,
                        f"eligible, but series {longer[0].SeriesInstanceUID} ranks higher (more slices)")]


def test_a_series_without_frame_of_reference_cannot_be_referenced(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.3"
    unplaced = dicomgen.ct_series(40, study_uid=study)
    for ds in unplaced:
        del ds.FrameOfReferenceUID
    request = PipelineInput(study, 1, "", (routed(unplaced, tmp_path / "a"),))
    outcome = CSpineFracturePipeline(models=None).run(request)  # type: ignore[arg-type]
    assert outcome.datasets == () and outcome.findings is None
    assert outcome.not_applicable == (
        f"{NO_SERIES} (series {unplaced[0].SeriesInstanceUID}: FrameOfReferenceUID missing:"
        " a SEG and SR could not reference the series)"
    )


def test_a_study_of_localizer_and_thick_slices_is_not_applicable_with_each_reason(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.4"
    scout = dicomgen.ct_series(1, study_uid=study, description="Topogram")
    scout[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    five_mm = thick(dicomgen.ct_series(40, study_uid=study))
    request = PipelineInput(study, 1, "", (routed(scout, tmp_path / "s"), routed(five_mm, tmp_path / "t")))
    outcome = CSpineFracturePipeline(models=None).run(request)  # type: ignore[arg-type]
    assert outcome.not_applicable == (
        f"{NO_SERIES} (series {scout[0].SeriesInstanceUID}: localizer (scout) images (ImageType"
        f" ORIGINAL\\PRIMARY\\LOCALIZER); series {five_mm[0].SeriesInstanceUID}: slices 5 mm thick"
        " (at most 3 mm))"
    )


def test_reasons_name_a_series_without_uid() -> None:
    assert reasons([("", "20 slice(s)")]) == "series (no SeriesInstanceUID): 20 slice(s)"
    assert reasons([]) == "no series routed"


def test_summary_names_result_vertebrae_top_vertebra_and_skipped_series() -> None:
    algorithm = Algorithm("m", "1", "ab" * 32)
    findings = CSpineFindings(
        study_instance_uid="1.2", series_instance_uid="1.2.3", frame_of_reference_uid="1.2.4",
        segmentation_algorithm=algorithm, fracture_algorithm=algorithm,
        fracture_probability=0.71, category="fracture",
        vertebrae=(VertebraFinding(2, 0.66, "fracture", (0.0, 0.0, 0.0), 10),
                   VertebraFinding(3, 0.08, "negative", (0.0, 0.0, 9.0), 12)),
        skipped=(("1.2.9", "localizer (scout) images (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)"),),
    )
    assert summarize(findings) == (
        "cervical spine fracture (probability 0.71); vertebrae C2, C3; highest C2 0.66;"
        " skipped series 1.2.9: localizer (scout) images (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)"
    )
    # one table row for the study, at the patient level
    assert findings.rows() == (FindingRow(category="fracture", fracture_probability=0.71, regions=2),)


def test_the_configured_selection_rules_reach_the_pipeline() -> None:
    from node.config import Config
    from node.pipelines import create

    config = Config.model_validate(
        {"pipelines": {"cspine-fracture": {"max_slice_thickness_mm": 5.0, "min_slices": 12, "max_obliquity_deg": 10}}}
    )
    pipeline = create("cspine-fracture", config)
    assert pipeline.rules == SelectionRules(max_slice_thickness=5.0, min_slices=12, max_obliquity_deg=10.0)
    pipeline.models.close()


def test_a_5_mm_series_is_eligible_when_the_configuration_allows_it(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.5"
    five_mm = thick(dicomgen.ct_series(40, study_uid=study))
    request = PipelineInput(study, 1, "", (routed(five_mm, tmp_path / "t"),))
    loose = CSpineFracturePipeline(models=None, rules=SelectionRules(max_slice_thickness=5.0))  # type: ignore[arg-type]
    skipped: list[tuple[str, str]] = []
    chosen = loose.choose_volume(request, Stopwatch(), skipped)
    assert chosen is not None and not skipped
    assert CSpineFracturePipeline(models=None).choose_volume(request, Stopwatch(), skipped) is None  # type: ignore[arg-type]
