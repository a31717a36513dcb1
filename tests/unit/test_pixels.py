"""Radiograph pixel loading: the PS3.3 C.11 grayscale pipeline, real JPEG 2000 CRs, and what is skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from node.imaging.pixels import Radiograph, Skipped, load_radiograph
from tests.support import dicomgen

CR_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom_cr_samples"
needs_samples = pytest.mark.skipif(not CR_SAMPLES.is_dir(), reason=f"{CR_SAMPLES} not present")


def loaded(ds: Dataset | Path) -> Radiograph:
    result = load_radiograph(ds)
    assert isinstance(result, Radiograph), result
    assert result.image.dtype == np.float32
    assert result.image.shape == (result.rows, result.columns)
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    return result


def bone_and_air(bone: int, air: int) -> np.ndarray:
    """A 4x4 plane: the left half bone, the right half air (direct exposure)."""
    pixels = np.full((4, 4), air, dtype=np.uint16)
    pixels[:, :2] = bone
    return pixels


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), output scaled to [0, 1]; written out independently of pydicom."""
    x = np.asarray(x, dtype=np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1)) + 0.5
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, inside))


# -- photometric interpretation ----------------------------------------------------------------


def test_monochrome1_is_inverted_so_bone_is_bright() -> None:
    # MONOCHROME1: the lowest stored value is displayed white, and bone attenuates most.
    result = loaded(
        dicomgen.radiograph(bone_and_air(bone=300, air=3800), "MONOCHROME1", bits_stored=12)
    )
    assert result.image[:, :2].min() > result.image[:, 2:].max()
    assert result.image[0, 0] == pytest.approx(1.0) and result.image[0, 3] == pytest.approx(0.0)
    assert result.photometric_interpretation == "MONOCHROME1"


def test_monochrome2_keeps_bone_bright_without_inversion() -> None:
    result = loaded(
        dicomgen.radiograph(bone_and_air(bone=3800, air=300), "MONOCHROME2", bits_stored=12)
    )
    assert result.image[0, 0] == pytest.approx(1.0) and result.image[0, 3] == pytest.approx(0.0)


def test_monochrome1_window_is_inverted_after_the_voi_lut() -> None:
    stored = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    ds = dicomgen.radiograph(
        stored, "MONOCHROME1", bits_stored=12, WindowCenter=2048, WindowWidth=4096
    )
    expected = 1.0 - linear_window(stored, 2048, 4096)
    np.testing.assert_allclose(loaded(ds).image, expected, atol=1e-6)


def test_inverse_presentation_lut_on_monochrome2_inverts() -> None:
    ds = dicomgen.radiograph(bone_and_air(bone=300, air=3800), "MONOCHROME2", bits_stored=12)
    ds.PresentationLUTShape = "INVERSE"
    assert loaded(ds).image[0, 0] == pytest.approx(1.0)


def test_dx_monochrome1_with_inverse_shape_is_inverted_once() -> None:
    # DX requires INVERSE together with MONOCHROME1 (PS3.3 C.8.11.6.1.2): both say the same thing.
    ds = dicomgen.radiograph(bone_and_air(bone=300, air=3800), "MONOCHROME1", bits_stored=12)
    ds.PresentationLUTShape = "INVERSE"
    assert loaded(ds).image[0, 0] == pytest.approx(1.0)


# -- Modality LUT and VOI LUT ------------------------------------------------------------------


def test_rescale_slope_and_intercept_are_applied_before_the_window() -> None:
    stored = np.array([[0, 500], [1000, 1500]], dtype=np.uint16)  # → -1000, 0, 1000, 2000
    ds = dicomgen.radiograph(
        stored,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=500,
        WindowWidth=2001,
    )
    result = loaded(ds)
    np.testing.assert_allclose(
        result.image, linear_window(stored * 2.0 - 1000, 500, 2001), atol=1e-6
    )
    np.testing.assert_allclose(result.image.ravel(), [0.0, 0.25025, 0.75025, 1.0], atol=1e-5)
    assert result.voi == "window"


def test_modality_lut_sequence_is_applied() -> None:
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "US", [0, 3000, 1000, 4000])  # deliberately not monotonic
    ds = dicomgen.radiograph(stored, bits_stored=12, WindowCenter=2000.5, WindowWidth=4001)
    ds.ModalityLUTSequence = Sequence([item])
    expected = linear_window(np.array([[0, 3000], [1000, 4000]]), 2000.5, 4001)
    np.testing.assert_allclose(loaded(ds).image, expected, atol=1e-6)


def test_first_of_several_windows_is_used() -> None:
    stored = np.array([[100, 200], [300, 400]], dtype=np.uint16)
    ds = dicomgen.radiograph(
        stored, bits_stored=12, WindowCenter=[250, 3000], WindowWidth=[201, 50]
    )
    np.testing.assert_allclose(loaded(ds).image, linear_window(stored, 250, 201), atol=1e-6)


def test_window_clips_values_outside_it() -> None:
    stored = np.array([[0, 1020], [1080, 4095]], dtype=np.uint16)
    ds = dicomgen.radiograph(stored, bits_stored=12, WindowCenter=1050, WindowWidth=101)
    image = loaded(ds).image
    assert image[0, 0] == 0.0 and image[1, 1] == 1.0
    assert 0.0 < image[0, 1] < image[1, 0] < 1.0


def test_voi_lut_sequence_is_scaled_by_its_own_output_range() -> None:
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]  # declares 16 bits per entry, uses 12: a common vendor habit
    item.add_new("LUTData", "US", [0, 4095, 1365, 2730])
    ds = dicomgen.radiograph(stored, bits_stored=12, WindowCenter=2, WindowWidth=1)  # the LUT wins
    ds.VOILUTSequence = Sequence([item])
    result = loaded(ds)
    np.testing.assert_allclose(result.image, [[0.0, 1.0], [1 / 3, 2 / 3]], atol=1e-6)
    assert result.voi == "voi-lut"


def test_without_voi_robust_percentiles_ignore_a_burnt_in_marker() -> None:
    pixels = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (100, 1))
    pixels[0, 0] = 65535  # one lead-marker pixel far outside the anatomy's range
    result = loaded(dicomgen.radiograph(pixels, bits_stored=16))
    assert result.voi == "percentiles"
    assert result.image[0, 0] == 1.0
    # min/max scaling would squeeze the anatomy into [0, 0.015]
    assert float(np.median(result.image)) == pytest.approx(0.5, abs=0.02)


def test_unusable_window_width_falls_back_to_percentiles() -> None:
    ds = dicomgen.radiograph(
        bone_and_air(bone=3800, air=300), bits_stored=12, WindowCenter=100, WindowWidth=0
    )
    result = loaded(ds)
    assert result.voi == "percentiles" and result.image[0, 0] == pytest.approx(1.0)


def test_blank_image_without_voi_is_all_zero() -> None:
    assert loaded(dicomgen.radiograph(np.full((4, 4), 7, np.uint16))).image.max() == 0.0


# -- bit depths --------------------------------------------------------------------------------


def test_full_16_bit_unsigned_data() -> None:
    stored = np.array([[0, 20000], [40000, 65535]], dtype=np.uint16)
    ds = dicomgen.radiograph(stored, bits_stored=16, WindowCenter=32768, WindowWidth=65536)
    np.testing.assert_allclose(loaded(ds).image, linear_window(stored, 32768, 65536), atol=1e-6)


def test_signed_16_bit_data() -> None:
    stored = np.array([[-32768, -1000], [0, 32767]], dtype=np.int16)
    ds = dicomgen.radiograph(stored, bits_stored=16, WindowCenter=0, WindowWidth=4001)
    np.testing.assert_allclose(loaded(ds).image, linear_window(stored, 0, 4001), atol=1e-6)


def test_bits_above_bits_stored_are_ignored() -> None:
    clean = bone_and_air(bone=3800, air=300)
    noisy = clean | np.uint16(0xF000)  # overlay or garbage bits above a 12-bit value
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    a = loaded(dicomgen.radiograph(clean, bits_stored=12, **window)).image
    b = loaded(dicomgen.radiograph(noisy, bits_stored=12, **window)).image
    np.testing.assert_array_equal(a, b)


# -- real JPEG 2000 CRs (DICOM WG-04 samples) ---------------------------------------------------


@needs_samples
def test_lossless_jpeg2000_cr_decodes_identical_to_its_uncompressed_transcode() -> None:
    j2k = loaded(CR_SAMPLES / "RG3_J2KR.dcm")
    explicit = loaded(CR_SAMPLES / "RG3_explicit_vr_le_transcoded.dcm")
    assert (j2k.rows, j2k.columns) == (1760, 1760)
    np.testing.assert_array_equal(j2k.image, explicit.image)
    assert j2k.voi == "window" and j2k.photometric_interpretation == "MONOCHROME1"


@needs_samples
def test_lossy_jpeg2000_cr_is_close_to_the_lossless_one() -> None:
    lossless = loaded(CR_SAMPLES / "RG3_J2KR.dcm").image
    lossy = loaded(CR_SAMPLES / "RG3_J2KI.dcm").image
    assert float(np.abs(lossy - lossless).mean()) < 0.01


@needs_samples
def test_15_bit_chest_cr_decodes_and_zero_spacing_counts_as_unknown() -> None:
    result = loaded(CR_SAMPLES / "RG1_J2KI.dcm")  # PixelSpacing is "0.000\0.000" in this file
    assert (result.rows, result.columns) == (1955, 1841)
    assert result.pixel_spacing is None and result.spacing_attribute is None
    assert 0.5 < float(result.image.mean()) < 0.9  # body fills the field, MONOCHROME1 inverted


@needs_samples
def test_dataset_and_path_give_the_same_image() -> None:
    path = CR_SAMPLES / "RG3_J2KI.dcm"
    np.testing.assert_array_equal(loaded(pydicom.dcmread(path)).image, loaded(path).image)


@needs_samples
def test_truncated_jpeg2000_is_skipped_with_the_decoder_error() -> None:
    ds = pydicom.dcmread(CR_SAMPLES / "RG3_J2KI.dcm")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    result = load_radiograph(ds)
    assert isinstance(result, Skipped)
    assert "cannot be decoded" in result.reason and "JPEG 2000" in result.reason


# -- what is skipped, and why -------------------------------------------------------------------


def without_pixel_data() -> Dataset:
    ds = dicomgen.cr_image(size=8)
    del ds.PixelData
    return ds


def palette_colour() -> Dataset:
    return dicomgen.radiograph(np.zeros((4, 4), np.uint8), "PALETTE COLOR")


def rgb_colour() -> Dataset:
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[..., 0] = 200  # red
    return dicomgen.radiograph(pixels, "RGB")


def multi_frame() -> Dataset:
    return dicomgen.radiograph(np.zeros((3, 4, 4), np.uint16), bits_stored=12)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (dicomgen.sr_document, "no pixel data (Comprehensive SR Storage)"),
        (without_pixel_data, "no pixel data (Computed Radiography Image Storage)"),
        (multi_frame, "multi-frame image (3 frames"),
        (rgb_colour, "colour image (RGB, channels differ by up to 200)"),
        (palette_colour, "photometric interpretation PALETTE COLOR is not supported"),
    ],
)
def test_non_radiographs_are_skipped_with_a_reason(make, reason: str) -> None:
    result = load_radiograph(make())
    assert isinstance(result, Skipped)
    assert reason in result.reason


def test_grey_picture_in_rgb_is_accepted() -> None:
    grey = np.repeat(np.array([[0, 64], [128, 255]], np.uint8)[..., None], 3, axis=2)
    result = loaded(dicomgen.radiograph(grey, "RGB"))
    np.testing.assert_allclose(result.image, [[0, 64 / 255], [128 / 255, 1]], atol=1e-6)
    assert result.voi == "stored-range"


def test_file_that_is_not_dicom_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "note.dcm"
    path.write_text("not a DICOM file")
    result = load_radiograph(path)
    assert isinstance(result, Skipped) and "not a readable DICOM file" in result.reason


def test_pixel_data_shorter_than_rows_times_columns_is_skipped() -> None:
    ds = dicomgen.radiograph(np.zeros((4, 4), np.uint16), bits_stored=12)
    ds.Rows = 64
    result = load_radiograph(ds)
    assert isinstance(result, Skipped) and "cannot be decoded" in result.reason


# -- geometry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "spacing", "attribute"),
    [
        ({"PixelSpacing": [0.2, 0.15]}, (0.2, 0.15), "PixelSpacing"),
        ({"ImagerPixelSpacing": [0.1, 0.12]}, (0.1, 0.12), "ImagerPixelSpacing"),
        (
            {"PixelSpacing": [0.2, 0.2], "ImagerPixelSpacing": [0.1, 0.1]},
            (0.2, 0.2),
            "PixelSpacing",
        ),
        (
            {"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.1, 0.1]},
            (0.1, 0.1),
            "ImagerPixelSpacing",
        ),
        ({}, None, None),
    ],
)
def test_spacing_prefers_pixel_spacing_over_imager_pixel_spacing(
    attributes, spacing, attribute
) -> None:
    result = loaded(dicomgen.radiograph(np.zeros((3, 5), np.uint16), bits_stored=12, **attributes))
    assert result.pixel_spacing == spacing and result.spacing_attribute == attribute
    assert (result.rows, result.columns) == (3, 5)
