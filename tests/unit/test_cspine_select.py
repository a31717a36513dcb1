"""Choosing the axial CT series of a cervical-spine study: table-driven, every skip has a reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from node.pipelines.cspine.select import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    CtSeriesSummary,
    SelectionRules,
    coverage_of,
    kernel_class,
    select_cspine_series,
    skip_reason,
    summarize_ct_series,
)
from node.records import SeriesAttributes, SeriesInput
from training.phantom.generate import PhantomSpec, generate_study

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
GOOD = CtSeriesSummary(
    series_instance_uid="1.2.3.1",
    modality="CT",
    sop_class_uids=(CT_IMAGE_STORAGE,),
    image_types=("ORIGINAL\\PRIMARY\\AXIAL",),
    body_part_examined="CSPINE",
    series_description="C-Spine 1.0 Bone",
    instance_count=200,
    slice_thickness=1.0,
    convolution_kernel="BONE",
    orientations=(AXIAL,),
)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, ""),
        ({"modality": "MR"}, "modality MR, not CT"),
        ({"modality": ""}, "modality missing"),
        (
            {"sop_class_uids": (ENHANCED_CT_IMAGE_STORAGE,)},
            "Enhanced CT (multi-frame) images are not supported",
        ),
        ({"number_of_frames": 120}, "Enhanced CT"),
        ({"sop_class_uids": ("1.2.840.10008.5.1.4.1.1.7",)}, "not (only) CT Image Storage"),
        (
            {"sop_class_uids": (CT_IMAGE_STORAGE, "1.2.840.10008.5.1.4.1.1.7")},
            "1.2.840.10008.5.1.4.1.1.7",
        ),
        ({"image_types": ("ORIGINAL\\PRIMARY\\LOCALIZER",)}, "localizer (scout)"),
        (
            {"image_types": ("ORIGINAL\\PRIMARY\\AXIAL", "ORIGINAL\\PRIMARY\\LOCALIZER")},
            "localizer",
        ),
        ({"image_types": ("DERIVED\\SECONDARY\\AXIAL",)}, "secondary images"),
        ({"image_types": ("DERIVED\\PRIMARY\\REFORMATTED\\AVERAGE",)}, "reformatted reformat"),
        ({"image_types": ("DERIVED\\PRIMARY\\MPR",)}, "mpr reformat"),
        (
            {"image_types": ("DERIVED\\PRIMARY\\AXIAL",)},
            "",
        ),  # e.g. a thick axial recon from thin data
        ({"orientations": ()}, "no ImageOrientationPatient"),
        ({"orientations": (AXIAL, CORONAL)}, "different orientations"),
        ({"orientations": (SAGITTAL,)}, "sagittal slices (90° from axial), not axial"),
        ({"orientations": (CORONAL,)}, "coronal slices"),
        ({"orientations": ((1.0, 0.0, 0.0, 0.0, 0.9659258, -0.2588190),)}, ""),  # 15° gantry tilt
        ({"orientations": ((1.0, 0.0, 0.0, 0.0, 0.7071068, -0.7071068),)}, "45° from axial"),
        ({"slice_thickness": 5.0}, "slices 5 mm thick (at most 3 mm)"),
        ({"slice_thickness": 3.0}, ""),
        ({"slice_thickness": None}, ""),
        ({"instance_count": 12}, "12 slice(s), at least 30 needed"),
    ],
)
def test_skip_reason(change: dict, reason: str) -> None:
    result = skip_reason(replace(GOOD, **change), SelectionRules())
    assert (result == "") if not reason else (reason in result), result


@pytest.mark.parametrize(
    ("rules", "change", "eligible"),
    [
        (SelectionRules(max_slice_thickness=1.25), {"slice_thickness": 2.0}, False),
        (SelectionRules(max_slice_thickness=5.0), {"slice_thickness": 5.0}, True),
        (SelectionRules(min_slices=10), {"instance_count": 12}, True),
        (
            SelectionRules(max_obliquity_deg=10.0),
            {"orientations": ((1.0, 0, 0, 0, 0.9659258, -0.258819),)},
            False,
        ),
    ],
)
def test_rules_are_configurable(rules: SelectionRules, change: dict, eligible: bool) -> None:
    assert (skip_reason(replace(GOOD, **change), rules) == "") == eligible


@pytest.mark.parametrize(
    ("body_part", "description", "protocol", "coverage"),
    [
        ("CSPINE", "", "", "cervical"),
        ("NECK", "", "", "cervical"),
        ("HEADNECK", "", "", "cervical"),
        ("", "C-Spine 1.0 Bone", "", "cervical"),
        ("", "CT CSPINE W/O", "", "cervical"),
        ("", "Cervical spine trauma", "", "cervical"),
        ("", "", "Trauma HWS", "cervical"),
        ("", "Kopf/Hals 1.0", "", "cervical"),
        ("SPINE", "C1-C7 axial", "", "cervical"),
        ("", "Neck soft tissue", "", "cervical"),
        ("HEAD", "Head 5mm", "", "unknown"),
        ("ABDOMEN", "Abdomen 1.0", "", "unknown"),
        ("", "Body 3.0", "FDG_TK_KM", "unknown"),
        ("", "", "", "unknown"),
        ("", "Necklace artefact", "", "unknown"),
    ],
)
def test_coverage_from_words(
    body_part: str, description: str, protocol: str, coverage: str
) -> None:
    series = replace(
        GOOD, body_part_examined=body_part, series_description=description, protocol_name=protocol
    )
    assert coverage_of(series)[0] == coverage


@pytest.mark.parametrize(
    ("kernel", "kind"),
    [
        ("BONE", "bone"),
        ("BONEPLUS", "bone"),
        ("B70s", "bone"),
        ("Br64\\3", "bone"),
        ("H70h", "bone"),
        ("YC", "bone"),
        ("FC30", "bone"),
        ("LUNG", "bone"),
        ("STANDARD", "standard"),
        ("SOFT", "standard"),
        ("Br38f\\3", "standard"),
        ("B30f", "standard"),
        ("FC18", "standard"),
        ("B", "standard"),
        ("", "unknown"),
        ("XYZ", "unknown"),
    ],
)
def test_kernel_class(kernel: str, kind: str) -> None:
    assert kernel_class(kernel) == kind


def s(uid: str, **change: object) -> CtSeriesSummary:
    return replace(GOOD, series_instance_uid=uid, **change)


@pytest.mark.parametrize(
    ("series", "chosen", "coverage"),
    [
        ([s("a")], "a", "cervical"),
        ([s("a", slice_thickness=3.0), s("b", slice_thickness=0.625)], "b", "cervical"),
        ([s("a", convolution_kernel="SOFT"), s("b", convolution_kernel="BONE")], "b", "cervical"),
        ([s("a", convolution_kernel="Br38f"), s("b", convolution_kernel="")], "a", "cervical"),
        (
            [s("a", body_part_examined="", series_description="Body"), s("b", slice_thickness=2.0)],
            "b",
            "cervical",
        ),
        ([s("a", image_types=("DERIVED\\PRIMARY\\AXIAL",)), s("b")], "b", "cervical"),
        ([s("a", instance_count=100), s("b", instance_count=300)], "b", "cervical"),
        ([s("a", body_part_examined="", series_description="Body 1.0")], "a", "unknown"),
        (
            [
                s("loc", image_types=("ORIGINAL\\PRIMARY\\LOCALIZER",)),
                s("sag", orientations=(SAGITTAL,)),
            ],
            None,
            None,
        ),
        ([], None, None),
    ],
)
def test_selection(series: list[CtSeriesSummary], chosen: str | None, coverage: str | None) -> None:
    selection = select_cspine_series(series)
    assert selection.series_instance_uid == chosen
    assert selection.coverage == coverage
    assert {uid for uid, _ in selection.skipped} == {x.series_instance_uid for x in series} - {
        chosen
    }
    assert all(reason for _, reason in selection.skipped)
    if chosen:
        assert selection.ranked[0] == chosen


def test_typical_trauma_study() -> None:
    """Scout, thin bone and soft axials, sagittal and coronal MPRs, a dose report screenshot."""
    study = [
        s(
            "1",
            image_types=("ORIGINAL\\PRIMARY\\LOCALIZER",),
            instance_count=2,
            orientations=(CORONAL, SAGITTAL),
        ),
        s(
            "2",
            convolution_kernel="SOFT",
            series_description="C-Spine 2.0 Soft",
            slice_thickness=2.0,
        ),
        s("3", convolution_kernel="BONE", slice_thickness=0.625, instance_count=320),
        s("4", image_types=("DERIVED\\SECONDARY\\REFORMATTED",), orientations=(SAGITTAL,)),
        s("5", image_types=("DERIVED\\PRIMARY\\MPR",), orientations=(CORONAL,)),
        s("6", modality="SR", sop_class_uids=("1.2.840.10008.5.1.4.1.1.88.67",)),
        s(
            "7",
            sop_class_uids=("1.2.840.10008.5.1.4.1.1.7",),
            image_types=("DERIVED\\SECONDARY\\OTHER",),
        ),
    ]
    selection = select_cspine_series(study)
    assert selection.series_instance_uid == "3"
    assert (selection.coverage, selection.evidence) == ("cervical", "BodyPartExamined CSPINE")
    reasons = dict(selection.skipped)
    assert list(reasons) == ["1", "2", "4", "5", "6", "7"]
    assert "localizer" in reasons["1"]
    assert "ranks higher (bone kernel)" in reasons["2"]
    assert "secondary" in reasons["4"] and "mpr reformat" in reasons["5"]
    assert "modality SR" in reasons["6"] and "CT Image Storage" in reasons["7"]


def test_summary_reads_kernel_thickness_and_orientation(tmp_path: Path) -> None:
    phantom = generate_study(8, PhantomSpec(size=32, slices=35))
    paths = []
    for ds in phantom.datasets:
        paths.append(tmp_path / f"{ds.InstanceNumber}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    first = phantom.datasets[0]
    attributes = SeriesAttributes(
        series_instance_uid=phantom.series_instance_uid,
        modality="CT",
        body_part_examined="CSPINE",
        series_description=str(first.SeriesDescription),
        sop_class_uids=(CT_IMAGE_STORAGE,),
        image_types=("ORIGINAL\\PRIMARY\\AXIAL",),
        instance_count=len(paths),
    )
    summary = summarize_ct_series(SeriesInput(attributes, tuple(paths)))
    assert summary.orientations == (AXIAL,)
    assert summary.slice_thickness == pytest.approx(float(first.SliceThickness))
    assert summary.convolution_kernel == phantom.kernel
    assert summary.instance_count == 35
    selection = select_cspine_series([summary])
    assert selection.series_instance_uid == phantom.series_instance_uid
    assert selection.coverage == "cervical"


def test_summary_of_unreadable_files_has_no_orientation(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"garbage")
    summary = summarize_ct_series(SeriesInput(replace_attrs(), (bad,)))
    assert summary.orientations == ()
    assert "no ImageOrientationPatient" in skip_reason(summary, SelectionRules(min_slices=1))


def replace_attrs() -> SeriesAttributes:
    return SeriesAttributes(
        series_instance_uid="9.9",
        modality="CT",
        sop_class_uids=(CT_IMAGE_STORAGE,),
        image_types=("ORIGINAL\\PRIMARY\\AXIAL",),
        instance_count=1,
    )
