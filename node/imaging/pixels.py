"""Radiograph pixels: decode one DICOM image into a [0, 1] float plane, bone bright. Pure.

The order is the standard's grayscale pipeline (PS3.3 C.11, PS3.4 N.2.1.1): stored values →
Modality LUT (rescale or LUT sequence) → VOI LUT (first window, or VOI LUT sequence) →
presentation (MONOCHROME1 / INVERSE inverted). Anything that is not one 2D grayscale image comes
back as `Skipped` with the reason; bad input never raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from node.redact import error_text, withhold_values

log = logging.getLogger(__name__)

# Where the display range came from: the dataset's VOI LUT sequence or window, or (neither present
# or usable) robust percentiles of the modality values; `stored-range` is for colour-encoded grey.
Voi = Literal["voi-lut", "window", "percentiles", "stored-range"]

GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
PERCENTILES = (0.5, 99.5)  # ignores collimator edges, markers and burnt-out skin lines
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True, eq=False)
class Radiograph:
    """One 2D radiograph ready for preprocessing: `image[row, column]` in [0, 1], bone bright."""

    image: np.ndarray  # float32, shape (rows, columns)
    rows: int
    columns: int
    # (row spacing, column spacing) in mm (PS3.3 10.7.1.3); None when the dataset gives none.
    pixel_spacing: tuple[float, float] | None
    spacing_attribute: Literal["PixelSpacing", "ImagerPixelSpacing"] | None
    sop_instance_uid: str
    photometric_interpretation: str  # as stored, before inversion
    voi: Voi


@dataclass(frozen=True)
class Skipped:
    """An object that is not a usable radiograph, and why (for the job log and the audit)."""

    reason: str


def load_radiograph(source: str | Path | Dataset) -> Radiograph | Skipped:
    """Decode a DICOM file or dataset into a `Radiograph`, or say why it cannot be one."""
    if isinstance(source, Dataset):
        ds = source
    else:
        try:
            ds = pydicom.dcmread(source)
        except Exception as exc:  # noqa: BLE001 - unreadable input is skipped
            return Skipped(f"not a readable DICOM file: {error_text(exc)}")
    try:
        return _decode(ds)
    except Exception as exc:  # noqa: BLE001 - malformed attributes or LUTs: skip the object, keep the node
        return Skipped(f"unusable image attributes: {error_text(exc)}")


def _decode(ds: Dataset) -> Radiograph | Skipped:
    reason = _unsupported(ds)
    if reason:
        return Skipped(reason)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder, truncated or corrupt pixel data
        syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        # decoders speak of codecs and sizes; anything they quote is withheld all the same
        detail = "; ".join(line.strip() for line in withhold_values(str(exc)).splitlines() if line.strip())
        return Skipped(f"pixel data cannot be decoded ({name}): {type(exc).__name__}: {detail}")
    expected = (int(ds.Rows), int(ds.Columns))
    photometric = str(ds.PhotometricInterpretation).strip()
    if photometric in COLOUR_PHOTOMETRICS:
        if stored.shape != (*expected, 3):
            return Skipped(f"colour pixel data of shape {stored.shape}, expected {(*expected, 3)}")
        # Lossy colour codecs leave ±1 of chroma noise on a grey picture; more than that is colour.
        spread = int(np.ptp(stored.astype(np.int32), axis=-1).max())
        if spread > 1:
            return Skipped(
                f"colour image ({photometric}, channels differ by up to {spread}); needs grayscale"
            )
        return _radiograph(
            ds, _stored_range(stored[..., 0], ds), photometric, "stored-range", invert=False
        )
    if stored.shape != expected:
        return Skipped(f"pixel data of shape {stored.shape}, expected {expected} (one 2D frame)")
    image, voi = _grey(stored, ds)
    invert = photometric == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE"
    return _radiograph(ds, image, photometric, voi, invert)


def _unsupported(ds: Dataset) -> str:
    """Why `ds` is not a single-frame grayscale (or grey-in-colour) image; '' if it is one."""
    sop_class = ds.get("SOPClassUID", "")
    what = getattr(sop_class, "name", sop_class) or "unknown SOP class"
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        return f"no pixel data ({what})"
    if "PixelData" not in ds:
        return f"float pixel data is not a radiograph ({what})"
    for keyword in ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated"):
        if ds.get(keyword) in (None, ""):
            return f"image without {keyword} ({what})"
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError):
        return f"unreadable NumberOfFrames {frames!r}"
    if frames != 1:
        return f"multi-frame image ({frames} frames, {what}); radiograph models take one frame"
    photometric = str(ds.PhotometricInterpretation).strip()
    if photometric not in GREY_PHOTOMETRICS + COLOUR_PHOTOMETRICS:
        return f"photometric interpretation {photometric} is not supported (needs MONOCHROME1/2)"
    if photometric in GREY_PHOTOMETRICS and int(ds.get("SamplesPerPixel", 1)) != 1:
        return f"{photometric} with SamplesPerPixel {ds.SamplesPerPixel}"
    return ""


def _grey(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, Voi]:
    """Modality then VOI LUT; the VOI output scaled to [0, 1] by the transform's own output range."""
    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence") and np.issubdtype(values.dtype, np.floating):
        values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
    output_range = None
    try:
        output_range = _voi_output_range(ds)
    except Exception as exc:  # noqa: BLE001 - e.g. width < 1: keep the image
        log.warning("unusable VOI LUT, using percentiles: %s", exc)
    if output_range is None:
        return _percentile_range(values), "percentiles"
    low, high = output_range
    windowed = apply_voi_lut(values, ds, index=0).astype(np.float64)
    scaled = np.clip((windowed - low) / (high - low), 0.0, 1.0)
    return scaled, "voi-lut" if ds.get("VOILUTSequence") else "window"


def _voi_output_range(ds: Dataset) -> tuple[float, float] | None:
    """(value for darkest, value for brightest) of the VOI transform, asking pydicom itself.

    Probing keeps the output range exactly as pydicom defines it (bit depth, rescale, LUT depth)
    instead of restating PS3.3 C.11.2.1.2 here; None when the dataset has no usable VOI.
    """
    sequence = ds.get("VOILUTSequence")
    if sequence and sequence[0].get("LUTDescriptor") and sequence[0].get("LUTData") is not None:
        entries, first = (
            int(sequence[0].LUTDescriptor[0]) or 2**16,
            int(sequence[0].LUTDescriptor[1]),
        )
        mapped = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds, index=0)
        # The LUT's own extremes: vendors often declare 16 bits per entry and use 12.
        low, high = float(mapped.min()), float(mapped.max())
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        with np.errstate(over="ignore"):
            low, high = (float(v) for v in apply_voi_lut(np.array([-1e300, 1e300]), ds, index=0))
    else:
        return None
    return None if low == high else (low, high)


def _percentile_range(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = np.percentile(values, PERCENTILES)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)  # a blank frame stays blank
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _stored_range(channel: np.ndarray, ds: Dataset) -> np.ndarray:
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    return channel.astype(np.float64) / float(2**bits - 1)


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """PixelSpacing (calibrated at the patient) wins over ImagerPixelSpacing (at the detector)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, column = (float(v) for v in value)
        except (TypeError, ValueError):
            continue  # absent, or not two numbers
        if row > 0 and column > 0:  # some writers put 0\0 for "unknown"
            return (row, column), keyword
    return None, None


def _radiograph(
    ds: Dataset, image: np.ndarray, photometric: str, voi: Voi, invert: bool
) -> Radiograph:
    plane = np.ascontiguousarray(1.0 - image if invert else image, dtype=np.float32)
    spacing, attribute = _spacing(ds)
    return Radiograph(
        image=plane,
        rows=plane.shape[0],
        columns=plane.shape[1],
        pixel_spacing=spacing,
        spacing_attribute=attribute,  # type: ignore[arg-type]
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        photometric_interpretation=photometric,
        voi=voi,
    )
