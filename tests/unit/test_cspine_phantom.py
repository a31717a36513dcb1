"""The synthetic cervical-spine CT phantom: honest labels, real CT objects, RSNA 2022 layout."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from node.cli import main
from node.imaging.volume import build_volume, resample_labels
from training.phantom.generate import (
    PhantomSpec,
    PhantomStudy,
    generate_study,
    write_rsna_layout,
)

SMALL = PhantomSpec(size=96, slices=70, noise_sd=4.0)


def hu(study: PhantomStudy) -> np.ndarray:
    return np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in study.datasets
        ]
    )


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask less its surface voxels (6-neighbourhood), away from partial-volume edges."""
    inner = mask.copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(mask, shift, axis=axis)
    return inner


@pytest.fixture(scope="module")
def fractured() -> PhantomStudy:
    return generate_study(
        11,
        PhantomSpec(
            size=128,
            slices=90,
            noise_sd=4.0,
            pixel_spacing=1.3,
            fractures=(False, True, False, False, True, False, True),
        ),
    )


def test_series_is_ct_image_storage_with_consistent_geometry(fractured: PhantomStudy) -> None:
    datasets = fractured.datasets
    assert len(datasets) == fractured.labels.shape[0] == 90
    first = datasets[0]
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert first.Modality == "CT" and first.BodyPartExamined == "CSPINE"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.ConvolutionKernel
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, -1024.0)
    assert first.pixel_array.dtype == np.int16
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, 91))
    assert len({ds.SOPInstanceUID for ds in datasets}) == 90
    assert {ds.SeriesInstanceUID for ds in datasets} == {fractured.series_instance_uid}
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    step = np.diff(z)
    assert np.allclose(step, step[0], atol=1e-3)
    assert abs(step[0]) == pytest.approx(float(first.SliceThickness), abs=1e-3)
    assert fractured.geometry.spacing[0] == pytest.approx(abs(step[0]), abs=1e-3)
    assert fractured.geometry.direction[2][2] == np.sign(step[0])


def test_all_seven_vertebrae_are_labelled_top_to_bottom(fractured: PhantomStudy) -> None:
    labels = fractured.labels
    assert set(np.unique(labels)) == set(range(8))
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in fractured.datasets])
    heights = [z[np.nonzero((labels == label).any(axis=(1, 2)))[0]].mean() for label in range(1, 8)]
    assert heights == sorted(heights, reverse=True)  # C1 is the most superior
    volumes = [(labels == label).sum() for label in range(3, 8)]
    assert volumes[-1] > volumes[0]  # C7 is bigger than C3


def test_bone_air_and_soft_tissue_have_ct_values(fractured: PhantomStudy) -> None:
    values = hu(fractured)
    bone = values[eroded(fractured.labels == 4)]
    assert 180 < np.median(bone) < 1600
    assert values[eroded(fractured.labels > 0)].max() > 650  # cortical shell
    assert np.median(values[:, :3, :3]) < -900  # air outside the neck
    assert values.min() >= -1024


def test_fracture_flags_match_what_was_rendered(fractured: PhantomStudy) -> None:
    """Inside a vertebra (away from its surface) only a fracture cleft is as dark as soft tissue."""
    assert fractured.fractures == (False, True, False, False, True, False, True)
    values = hu(fractured)
    for index, flagged in enumerate(fractured.fractures):
        inside = values[eroded(fractured.labels == index + 1)]
        dark = int((inside < 110).sum())
        assert (dark > 5) == flagged, f"C{index + 1}: {dark} dark voxels inside, flagged {flagged}"


def test_same_seed_gives_the_same_study_and_another_seed_another() -> None:
    a, b, c = generate_study(5, SMALL), generate_study(5, SMALL), generate_study(6, SMALL)
    assert a.study_instance_uid == b.study_instance_uid != c.study_instance_uid
    assert a.datasets[10].PixelData == b.datasets[10].PixelData
    assert a.fractures == b.fractures
    assert a.datasets[0].PixelData != c.datasets[0].PixelData


def test_fracture_rate_zero_and_one() -> None:
    assert not any(generate_study(1, PhantomSpec(size=64, slices=40, fracture_rate=0.0)).fractures)
    assert any(generate_study(1, PhantomSpec(size=64, slices=40, fracture_rate=1.0)).fractures)


@pytest.mark.parametrize("head_first", [True, False])
def test_slice_order_follows_head_first(head_first: bool) -> None:
    study = generate_study(2, PhantomSpec(size=64, slices=40, head_first=head_first))
    z0, z1 = (float(ds.ImagePositionPatient[2]) for ds in study.datasets[:2])
    assert (z1 < z0) == head_first


def test_abdomen_phantom_has_no_cervical_labels() -> None:
    study = generate_study(3, PhantomSpec(size=64, slices=30, region="abdomen", fracture_rate=1.0))
    assert study.datasets[0].BodyPartExamined == "ABDOMEN"
    assert not study.labels.any() and not any(study.fractures)
    assert hu(study).max() > 300  # the lumbar spine is there, unlabelled


@pytest.mark.parametrize(
    "bad", [{"size": 8}, {"slices": 1}, {"fractures": (True,)}, {"fracture_rate": 2.0}]
)
def test_spec_rejects_impossible_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        PhantomSpec(**bad)


def test_rsna_layout_files_and_segmentation_geometry(
    tmp_path: Path, fractured: PhantomStudy
) -> None:
    csv_path = write_rsna_layout(tmp_path, [fractured])
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0]) == [
        "StudyInstanceUID",
        "patient_overall",
        "C1",
        "C2",
        "C3",
        "C4",
        "C5",
        "C6",
        "C7",
    ]
    assert rows[0]["StudyInstanceUID"] == fractured.study_instance_uid
    assert [rows[0][f"C{i}"] for i in range(1, 8)] == ["0", "1", "0", "0", "1", "0", "1"]
    assert rows[0]["patient_overall"] == "1"
    folder = tmp_path / "train_images" / fractured.study_instance_uid
    assert sorted(int(p.stem) for p in folder.glob("*.dcm")) == list(range(1, 91))
    ds = pydicom.dcmread(folder / "37.dcm")
    assert ds.SOPInstanceUID == fractured.datasets[36].SOPInstanceUID
    seg = sitk.ReadImage(str(tmp_path / "segmentations" / f"{fractured.study_instance_uid}.nii"))
    assert seg.GetSize() == (128, 128, 90)
    # stored like RSNA's files: feet to head, rows flipped; the usual flips give InstanceNumber order
    array = sitk.GetArrayFromImage(seg)
    head_first = float(fractured.datasets[0].ImagePositionPatient[2]) > float(
        ds.ImagePositionPatient[2]
    )
    assert np.array_equal(
        array[::-1, ::-1, :] if head_first else array[:, ::-1, :], fractured.labels
    )
    # and the geometry agrees: voxel (column i, row j) of slice k lies where the DICOM puts it
    i, j, k = 17, 40, 36
    ipp = np.array([float(x) for x in ds.ImagePositionPatient])
    dy, dx = (float(x) for x in ds.PixelSpacing)
    index = (i, 127 - j, 89 - k if head_first else k)
    assert np.allclose(
        seg.TransformIndexToPhysicalPoint(index), ipp + [i * dx, j * dy, 0.0], atol=1e-3
    )


def test_cli_writes_the_layout(tmp_path: Path) -> None:
    code = main(
        [
            "phantom",
            "cspine",
            "--out",
            str(tmp_path),
            "--studies",
            "2",
            "--size",
            "48",
            "--slices",
            "60",
            "--seed",
            "3",
            "--fracture-rate",
            "1",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "train.csv").open()))
    assert len(rows) == 2 and all(row["patient_overall"] == "1" for row in rows)
    assert len(list((tmp_path / "segmentations").glob("*.nii"))) == 2
    assert len(list((tmp_path / "train_images").glob("*/*.dcm"))) == 120


@pytest.mark.parametrize("head_first", [True, False])
def test_segmentation_file_lands_on_the_series_volume(tmp_path: Path, head_first: bool) -> None:
    study = generate_study(9, PhantomSpec(size=40, slices=50, head_first=head_first))
    write_rsna_layout(tmp_path, [study])
    seg = sitk.ReadImage(str(tmp_path / "segmentations" / f"{study.study_instance_uid}.nii"))
    volume = build_volume(sorted((tmp_path / "train_images").glob("*/*.dcm")))
    expected = study.labels[::-1] if head_first else study.labels  # the volume runs feet to head
    assert np.array_equal(resample_labels(volume, seg), expected)
    assert expected.any()
