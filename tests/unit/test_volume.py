"""CT volumes from one series: sorting along the normal, HU, geometry, and every refusal."""

from __future__ import annotations

import copy
import glob
import math
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from node.imaging.volume import Volume, VolumeRefused, build_volume, resample_labels
from training.phantom.generate import PhantomSpec, PhantomStudy, generate_study, label_image

SAMPLE = Path("/work/shared/data/spine_ct_samples/totalsegmentator_example")
SIZE, SLICES = 48, 30


@pytest.fixture(scope="module")
def study() -> PhantomStudy:
    return generate_study(4, PhantomSpec(size=SIZE, slices=SLICES, head_first=True))


def copies(study: PhantomStudy) -> list[pydicom.Dataset]:
    return [copy.deepcopy(ds) for ds in study.datasets]


def stored_hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def rotation(ax: float, az: float) -> np.ndarray:
    a, b = math.radians(ax), math.radians(az)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def reposition(
    datasets: list[pydicom.Dataset], turn: np.ndarray, step: float, drift: float = 0.0
) -> None:
    """Give slice k orientation `turn` and position origin + k·step·normal (+ k·drift·column)."""
    row, column = turn @ [1.0, 0, 0], turn @ [0, 1.0, 0]
    normal = np.cross(row, column)
    origin = np.array([-20.0, -30.0, 100.0])
    for k, ds in enumerate(datasets):
        ds.ImageOrientationPatient = [f"{x:.8f}" for x in (*row, *column)]
        ds.ImagePositionPatient = [
            f"{x:.5f}" for x in origin + k * step * normal + k * drift * column
        ]


def test_phantom_series_sorted_by_position_with_hu(study: PhantomStudy) -> None:
    volume = build_volume(list(reversed(study.datasets)))
    assert volume.shape == (SLICES, SIZE, SIZE)
    assert volume.hu.dtype == np.float32
    # head first: InstanceNumber 1 is the top slice, the volume runs upwards along +z
    assert [s.instance_number for s in volume.slices] == list(range(SLICES, 0, -1))
    assert volume.direction == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    assert volume.spacing[0] == pytest.approx(float(study.datasets[0].SliceThickness), abs=1e-3)
    last = study.datasets[-1]
    assert volume.origin == pytest.approx([float(x) for x in last.ImagePositionPatient])
    assert np.array_equal(volume.hu[0], stored_hu(last))
    assert volume.warnings == ()
    assert volume.series_instance_uid == study.series_instance_uid


def test_int16_volume_holds_the_same_hu(study: PhantomStudy) -> None:
    small = build_volume(study.datasets, dtype=np.int16)
    assert small.hu.dtype == np.int16
    assert np.array_equal(small.hu, build_volume(study.datasets).hu.astype(np.int16))


def test_phantom_labels_land_on_the_volume_grid(study: PhantomStudy) -> None:
    volume = build_volume(study.datasets)
    labels = resample_labels(volume, label_image(study))
    assert np.array_equal(labels, study.labels[::-1])  # head-first series: the volume runs upwards


def test_shuffled_oblique_files_sort_along_the_normal(tmp_path: Path, study: PhantomStudy) -> None:
    datasets = copies(study)
    turn = rotation(25.0, 10.0)
    reposition(datasets, turn, step=1.5)
    paths = []
    for ds in datasets:
        path = tmp_path / f"{generate_uid()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    random.Random(3).shuffle(paths)
    volume = build_volume(paths)
    assert [s.instance_number for s in volume.slices] == list(range(1, SLICES + 1))
    assert np.allclose(np.array(volume.direction), turn, atol=1e-6)
    assert volume.spacing[0] == pytest.approx(1.5, abs=1e-4)
    assert volume.slices[0].path in paths
    for k in (0, 7, SLICES - 1):
        ipp = np.array([float(x) for x in datasets[k].ImagePositionPatient])
        assert np.allclose(volume.index_to_patient((k, 0, 0)), ipp, atol=1e-4)
        assert np.array_equal(volume.hu[k], stored_hu(datasets[k]))


def test_voxel_and_patient_coordinates_round_trip(study: PhantomStudy) -> None:
    datasets = copies(study)
    reposition(datasets, rotation(-15.0, 30.0), step=2.0)
    volume = build_volume(datasets)
    points = np.array([[0, 0, 0], [3.5, 10.25, 40.0], [SLICES - 1, SIZE - 1, SIZE - 1]])
    patient = volume.index_to_patient(points)
    assert np.allclose(volume.patient_to_index(patient), points, atol=1e-9)
    ds = datasets[3]  # pixel (row j, column i) of slice k: IPP + i·dx·row + j·dy·column
    dy, dx = (float(x) for x in ds.PixelSpacing)
    row, column = (
        np.array(ds.ImageOrientationPatient[:3], float),
        np.array(ds.ImageOrientationPatient[3:], float),
    )
    expected = (
        np.array([float(x) for x in ds.ImagePositionPatient]) + 9 * dx * row + 5 * dy * column
    )
    assert np.allclose(volume.index_to_patient((3, 5, 9)), expected, atol=1e-4)
    image = volume.to_sitk()
    assert np.allclose(image.TransformIndexToPhysicalPoint((9, 5, 3)), expected, atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(image), volume.hu)


def test_compressed_slices_decode_to_the_same_hu(study: PhantomStudy) -> None:
    datasets = copies(study)[:6]
    expected = build_volume(datasets).hu
    for k, ds in enumerate(datasets):
        ds.compress(JPEG2000Lossless if k % 2 else RLELossless)
    assert np.array_equal(build_volume(datasets).hu, expected)


def test_padding_value_becomes_air(study: PhantomStudy) -> None:
    datasets = copies(study)[:4]
    for ds in datasets:
        pixels = ds.pixel_array.copy()
        pixels[:, :3] = -2000
        ds.PixelData = pixels.tobytes()
        ds.PixelPaddingValue = -2000
    volume = build_volume(datasets)
    assert (volume.hu[:, :, :3] == -1024).all()


def test_the_same_instance_twice_is_used_once(study: PhantomStudy) -> None:
    volume = build_volume([*study.datasets, study.datasets[5]])
    assert volume.shape[0] == SLICES
    assert any("more than once" in w for w in volume.warnings)


def _tilted(ds: list[pydicom.Dataset]) -> None:
    reposition(ds, np.eye(3), step=1.0, drift=math.tan(math.radians(12.0)))


def _missing(ds: list[pydicom.Dataset]) -> None:
    del ds[11]


def _mixed_orientation(ds: list[pydicom.Dataset]) -> None:
    ds[4].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _duplicate_position(ds: list[pydicom.Dataset]) -> None:
    twin = copy.deepcopy(ds[8])
    twin.SOPInstanceUID = generate_uid()
    ds.append(twin)


def _mixed_spacing(ds: list[pydicom.Dataset]) -> None:
    ds[2].PixelSpacing = [0.9, 0.9]


def _mixed_matrix(ds: list[pydicom.Dataset]) -> None:
    ds[2].Rows = 40
    ds[2].PixelData = ds[2].PixelData[: 40 * SIZE * 2]


def _no_position(ds: list[pydicom.Dataset]) -> None:
    del ds[3].ImagePositionPatient


def _uneven(ds: list[pydicom.Dataset]) -> None:
    z = float(ds[5].ImagePositionPatient[2])
    ds[5].ImagePositionPatient = [
        *ds[5].ImagePositionPatient[:2],
        z + 0.4 * float(ds[5].SliceThickness),
    ]


def _multiframe(ds: list[pydicom.Dataset]) -> None:
    ds[0].NumberOfFrames = 2


def _two_series(ds: list[pydicom.Dataset]) -> None:
    ds[0].SeriesInstanceUID = generate_uid()


def _single(ds: list[pydicom.Dataset]) -> None:
    del ds[1:]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_tilted, "gantry tilt"),
        (_missing, "1 slice(s) missing"),
        (_mixed_orientation, "mixed orientations"),
        (_duplicate_position, "duplicate slice position"),
        (_mixed_spacing, "mixed pixel spacing"),
        (_mixed_matrix, "mixed matrix sizes"),
        (_no_position, "ImagePositionPatient is missing"),
        (_uneven, "uneven slice spacing"),
        (_multiframe, "Enhanced CT"),
        (_two_series, "2 series"),
        (_single, "at least 2"),
    ],
)
def test_irregular_series_is_refused_with_the_reason(
    study: PhantomStudy, damage, reason: str
) -> None:
    datasets = copies(study)
    damage(datasets)
    with pytest.raises(VolumeRefused) as refused:
        build_volume(datasets)
    assert reason in refused.value.reason


def test_unreadable_file_is_refused_by_name(tmp_path: Path, study: PhantomStudy) -> None:
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(VolumeRefused, match="broken.dcm: not a readable DICOM file"):
        build_volume([*study.datasets[:3], bad])


def test_small_tilt_within_half_a_pixel_is_accepted(study: PhantomStudy) -> None:
    datasets = copies(study)
    pixel = float(datasets[0].PixelSpacing[0])
    reposition(datasets, np.eye(3), step=1.0, drift=0.3 * pixel / SLICES)
    assert build_volume(datasets).shape[0] == SLICES


@pytest.fixture(scope="module")
def sample() -> Volume:
    files = sorted(glob.glob(str(SAMPLE / "example_ct_dicom" / "*")))
    if not files:
        pytest.skip(f"sample CT series not found under {SAMPLE}")
    return build_volume(files[::-1])


def test_real_ct_series_with_blank_uids(sample: Volume) -> None:
    """The TotalSegmentator example: 20 JPEG 2000 slices, 3 mm thick every 2 mm, empty dataset UIDs."""
    assert sample.shape == (20, 512, 512)
    assert sample.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert sample.origin == pytest.approx((-249.51171875, -437.51171875, -804.5))
    assert sample.slice_thickness == 3.0
    assert [s.instance_number for s in sample.slices] == list(range(286, 266, -1))
    meta_uid = pydicom.dcmread(
        sample.slices[0].path, stop_before_pixels=True
    ).file_meta.MediaStorageSOPInstanceUID
    assert sample.slices[0].sop_instance_uid == meta_uid
    assert sample.slices[0].sop_class_uid == pydicom.uid.CTImageStorage
    assert any("SOPInstanceUID empty" in w for w in sample.warnings)
    assert any("StudyInstanceUID is empty" in w for w in sample.warnings)
    assert sample.hu.min() == -1024 and 1500 < sample.hu.max() < 3000


def test_real_ct_matches_its_reference_segmentation(sample: Volume) -> None:
    """TotalSegmentator's labels for this series land on bone (T11, T12) and on the cord."""
    labels = resample_labels(sample, sitk.ReadImage(str(SAMPLE / "example_seg_dicom.nii.gz")))
    for vertebra in (32, 33):  # T12, T11
        assert np.median(sample.hu[labels == vertebra]) > 180
    assert -20 < np.median(sample.hu[labels == 79]) < 60  # spinal cord
    assert np.median(sample.hu[labels == 0]) < -500  # mostly air around the body
