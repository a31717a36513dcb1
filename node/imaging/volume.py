"""Build a CT volume in Hounsfield units from one series' single-frame slices, or say why not.

Geometry follows the Image Plane module (PS3.3 C.7.6.2.1.1): the slice normal is the cross
product of the row and column cosines of ImageOrientationPatient; slices are sorted by
ImagePositionPatient projected on that normal (not by InstanceNumber or file order). The
series is refused (`VolumeRefused`) unless every slice has the same orientation, matrix and pixel
spacing, positions step evenly along the normal (no gap, no duplicate) and do not drift in-plane
(gantry tilt, PS3.3 C.8.2.1.1). Stored values go through the Modality LUT (RescaleSlope and
RescaleIntercept, PS3.3 C.11.1) slice by slice into one preallocated array: float32 by default,
int16 on request, never a float64 copy of the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset

from node.redact import error_text, withhold_values
from node.sources import read_source

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
AIR_HU = -1024.0


class VolumeRefused(Exception):
    """The slices do not form a regular volume; `reason` says what is wrong and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SliceInfo:
    """One source slice, in the volume's slice order."""

    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    position: tuple[float, float, float]  # ImagePositionPatient
    path: Path | None  # the file it was read from (None for an in-memory dataset)


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume: `hu[k, j, i]` is slice k, row j, column i.

    Voxel (k, j, i) is centred at origin + i·dx·row + j·dy·column + k·dz·normal, where
    `direction` holds row, column and normal as its columns (SimpleITK's convention) and
    `spacing` is (dz, dy, dx) in mm; dz > 0 and k grows along the normal.
    """

    hu: np.ndarray  # float32 or int16, (slices, rows, columns)
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    origin: tuple[float, float, float]  # patient position (LPS, mm) of voxel (0, 0, 0)
    direction: tuple[tuple[float, float, float], ...]  # 3×3, columns: row, column, normal
    slices: tuple[SliceInfo, ...]
    headers: tuple[Dataset, ...] = field(repr=False)  # the slices' data sets without pixel data
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    slice_thickness: float | None = None
    warnings: tuple[str, ...] = ()  # header defects that were worked around

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(s.sop_instance_uid for s in self.slices)

    def _matrix(self) -> np.ndarray:
        """4×4 affine from (i, j, k, 1) voxel indices to (x, y, z, 1) patient mm."""
        axes = np.array(self.direction, dtype=np.float64) * np.array(
            self.spacing[::-1], dtype=np.float64
        )
        affine = np.eye(4)
        affine[:3, :3] = axes
        affine[:3, 3] = self.origin
        return affine

    def index_to_patient(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """(…, 3) voxel indices (k, j, i), fractional allowed → (…, 3) patient (x, y, z) mm."""
        kji = np.asarray(index, dtype=np.float64)
        ijk = kji[..., ::-1]
        affine = self._matrix()
        return ijk @ affine[:3, :3].T + affine[:3, 3]

    def patient_to_index(self, point: np.ndarray | Sequence[float]) -> np.ndarray:
        """(…, 3) patient (x, y, z) mm → (…, 3) fractional voxel indices (k, j, i)."""
        xyz = np.asarray(point, dtype=np.float64)
        affine = self._matrix()
        ijk = (xyz - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
        return ijk[..., ::-1]

    def to_sitk(self):  # type: ignore[no-untyped-def]
        """The volume as a SimpleITK image (shares no memory with `hu`)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.hu)
        image.SetSpacing(self.spacing[::-1])
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(float(x) for row in self.direction for x in row))
        return image


def resample_labels(volume: Volume, labels) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A label image (SimpleITK, any grid in the same patient frame) on the volume's grid, nearest
    neighbour; e.g. an RSNA 2022 segmentation NIfTI onto the series it was drawn on."""
    import SimpleITK as sitk

    reference = sitk.Image(volume.shape[::-1], sitk.sitkUInt8)
    reference.SetSpacing(volume.spacing[::-1])
    reference.SetOrigin(volume.origin)
    reference.SetDirection(tuple(float(x) for row in volume.direction for x in row))
    resampled = sitk.Resample(
        labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return sitk.GetArrayFromImage(resampled)


# -- reading headers --------------------------------------------------------------------------


def _read(source: Path | Dataset, with_pixels: bool) -> Dataset:
    if isinstance(source, Dataset):
        return source
    try:
        return read_source(Path(source), stop_before_pixels=not with_pixels)
    except Exception as exc:
        raise VolumeRefused(f"{Path(source).name}: not a readable DICOM file ({error_text(exc)})") from exc


def _floats(ds: Dataset, keyword: str, count: int, name: str) -> tuple[float, ...]:
    value = ds.get(keyword)
    try:
        numbers = tuple(float(v) for v in value) if value is not None else ()
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise VolumeRefused(f"{name}: {keyword} is missing or malformed ({value!r})")
    return numbers


def _uid(ds: Dataset, keyword: str, meta_keyword: str, warnings: set[str]) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if value:
        return value
    meta = getattr(ds, "file_meta", None)
    fallback = str(meta.get(meta_keyword, "") or "").strip() if meta is not None else ""
    if fallback:
        warnings.add(f"{keyword} empty in the data set: used the file meta's {meta_keyword}")
    return fallback


def _name(source: Path | Dataset, index: int) -> str:
    return Path(source).name if not isinstance(source, Dataset) else f"dataset #{index}"


@dataclass(frozen=True)
class _Header:
    source: Path | Dataset
    ds: Dataset
    info: SliceInfo
    orientation: tuple[float, ...]
    matrix: tuple[int, int]
    pixel_spacing: tuple[float, float]


def _header(source: Path | Dataset, index: int, warnings: set[str]) -> _Header:
    ds = _read(source, with_pixels=False)
    name = _name(source, index)
    sop_class = _uid(ds, "SOPClassUID", "MediaStorageSOPClassUID", warnings)
    if sop_class == ENHANCED_CT or int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeRefused(
            f"{name}: multi-frame images (Enhanced CT) are not supported; send single-frame CT"
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeRefused(
            f"{name}: {ds.get('SamplesPerPixel')} samples per pixel; CT volumes need grey"
        )
    orientation = _floats(ds, "ImageOrientationPatient", 6, name)
    position = _floats(ds, "ImagePositionPatient", 3, name)
    spacing = _floats(ds, "PixelSpacing", 2, name)
    if min(spacing) <= 0:
        raise VolumeRefused(f"{name}: PixelSpacing {spacing} must be positive")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise VolumeRefused(f"{name}: Rows/Columns missing")
    number = ds.get("InstanceNumber")
    info = SliceInfo(
        sop_instance_uid=_uid(ds, "SOPInstanceUID", "MediaStorageSOPInstanceUID", warnings),
        sop_class_uid=sop_class,
        instance_number=int(number) if number not in (None, "") else None,
        position=position,  # type: ignore[arg-type]
        path=None if isinstance(source, Dataset) else Path(source),
    )
    return _Header(source, ds, info, orientation, (rows, columns), spacing)  # type: ignore[arg-type]


# -- geometry checks --------------------------------------------------------------------------


def _check_uniform(headers: list[_Header]) -> None:
    first = headers[0]
    for h in headers[1:]:
        if not np.allclose(h.orientation, first.orientation, atol=1e-4):
            raise VolumeRefused(
                f"mixed orientations: slice {h.info.instance_number} has ImageOrientationPatient"
                f" {list(h.orientation)}, slice {first.info.instance_number} {list(first.orientation)}"
            )
        if h.matrix != first.matrix:
            raise VolumeRefused(
                f"mixed matrix sizes: slice {h.info.instance_number} is {h.matrix[0]}×{h.matrix[1]},"
                f" slice {first.info.instance_number} {first.matrix[0]}×{first.matrix[1]}"
            )
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise VolumeRefused(
                f"mixed pixel spacing: slice {h.info.instance_number} has {list(h.pixel_spacing)},"
                f" slice {first.info.instance_number} {list(first.pixel_spacing)}"
            )
    series = {str(h.ds.get("SeriesInstanceUID", "") or "") for h in headers} - {""}
    if len(series) > 1:
        raise VolumeRefused(
            f"the files belong to {len(series)} series; build one volume per series"
        )


def _axes(orientation: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    if not (
        abs(np.linalg.norm(row) - 1) < 1e-3
        and abs(np.linalg.norm(column) - 1) < 1e-3
        and abs(row @ column) < 1e-3
    ):
        raise VolumeRefused(
            f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors"
        )
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    return row, column, np.cross(row, column)


def _order(
    headers: list[_Header], normal: np.ndarray, spacing_tolerance: float, max_drift_px: float
) -> tuple[list[_Header], float]:
    """Sort along the normal; refuse duplicates, gaps, uneven steps and in-plane drift (tilt)."""
    positions = np.array([h.info.position for h in headers], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers, positions, along = [headers[i] for i in order], positions[order], along[order]
    steps = np.diff(along)

    def label(h: _Header) -> str:
        return (
            f"InstanceNumber {h.info.instance_number}"
            if h.info.instance_number is not None
            else h.info.sop_instance_uid
        )

    for i, step in enumerate(steps):
        if step < 1e-3:
            raise VolumeRefused(
                f"duplicate slice position {along[i]:.3f} mm along the normal ({label(headers[i])} and"
                f" {label(headers[i + 1])}): more than one acquisition or reconstruction in the series"
            )
    spacing = float(np.median(steps))
    for i, step in enumerate(steps):
        if abs(step - spacing) > spacing_tolerance * spacing:
            missing = round(step / spacing) - 1
            what = f"about {missing} slice(s) missing" if missing >= 1 else "uneven slice spacing"
            raise VolumeRefused(
                f"{what}: {step:.3f} mm between {label(headers[i])} and {label(headers[i + 1])},"
                f" {spacing:.3f} mm elsewhere"
            )
    offsets = positions - positions[0]
    drift = offsets - np.outer(offsets @ normal, normal)  # in-plane part of each slice's offset
    worst = int(np.argmax(np.linalg.norm(drift, axis=1)))
    pixel = min(headers[0].pixel_spacing)
    if np.linalg.norm(drift[worst]) > max_drift_px * pixel:
        angle = math.degrees(
            math.atan2(float(np.linalg.norm(drift[worst])), float(offsets[worst] @ normal))
        )
        raise VolumeRefused(
            f"gantry tilt: slice positions run {angle:.2f}° off the slice normal ({np.linalg.norm(drift[worst]):.2f}"
            f" mm in-plane over {offsets[worst] @ normal:.1f} mm); send an untilted or tilt-corrected series"
        )
    return headers, spacing


# -- pixels -----------------------------------------------------------------------------------


def _slice_hu(
    ds: Dataset, name: str, matrix: tuple[int, int], dtype: np.dtype, warnings: set[str]
) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", str(syntax))
        raise VolumeRefused(
            f"{name}: pixel data cannot be decoded ({syntax_name}): {type(exc).__name__}:"
            f" {withhold_values(str(exc))}"
        ) from exc
    if stored.shape != matrix:
        raise VolumeRefused(f"{name}: pixel data is {stored.shape}, the header says {matrix}")
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    else:
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope in (None, "") or intercept in (None, ""):
            warnings.add(
                "RescaleSlope/RescaleIntercept missing: stored values taken as HU (slope 1, intercept 0)"
            )
            slope, intercept = 1.0, 0.0
        hu = stored.astype(np.float32)
        if float(slope) != 1.0:
            hu *= np.float32(float(slope))
        hu += np.float32(float(intercept))
    padding = ds.get("PixelPaddingValue")
    if (
        padding is not None
    ):  # PS3.3 C.7.5.1.1.2: padded pixels (outside the scan circle) are not tissue
        limit = ds.get("PixelPaddingRangeLimit", padding)
        lo, hi = sorted((int(padding), int(limit)))
        hu[(stored >= lo) & (stored <= hi)] = AIR_HU
    if dtype == np.int16:
        return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    return hu


def build_volume(
    sources: Sequence[Path | str | Dataset],
    *,
    dtype: type[np.floating | np.integer] = np.float32,
    min_slices: int = 2,
    spacing_tolerance: float = 0.1,
    max_drift_px: float = 0.5,
) -> Volume:
    """The HU volume of one series' files or data sets, sorted along the slice normal.

    Raises VolumeRefused naming the problem: unreadable file, missing geometry, Enhanced CT,
    mixed orientation / matrix / spacing / series, duplicate positions, a gap or uneven spacing
    beyond `spacing_tolerance` (fraction of the median step), in-plane drift of the slice
    positions beyond `max_drift_px` pixels (gantry tilt), undecodable pixel data.
    """
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float32), np.dtype(np.int16)):
        raise ValueError(f"dtype {target}: float32 or int16")
    warnings: set[str] = set()
    items = [s if isinstance(s, Dataset) else Path(s) for s in sources]
    headers: list[_Header] = []
    seen: set[str] = set()
    for index, source in enumerate(items):
        header = _header(source, index, warnings)
        uid = header.info.sop_instance_uid
        if uid and uid in seen:  # the same instance twice (re-sent): one copy is enough
            warnings.add("the same SOP instance was given more than once: duplicates ignored")
            continue
        seen.add(uid)
        headers.append(header)
    if len(headers) < max(2, min_slices):
        raise VolumeRefused(
            f"{len(headers)} slice(s): a volume needs at least {max(2, min_slices)}"
        )
    _check_uniform(headers)
    row, column, normal = _axes(headers[0].orientation)
    headers, dz = _order(headers, normal, spacing_tolerance, max_drift_px)
    first = headers[0]
    hu = np.empty((len(headers), *first.matrix), dtype=target)
    for k, h in enumerate(headers):
        ds = h.ds if isinstance(h.source, Dataset) else _read(h.source, with_pixels=True)
        hu[k] = _slice_hu(ds, _name(h.source, k), first.matrix, target, warnings)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(first.ds.get(keyword, "") or ""):
            warnings.add(f"{keyword} is empty")
    thickness = first.ds.get("SliceThickness")
    return Volume(
        hu=hu,
        spacing=(dz, first.pixel_spacing[0], first.pixel_spacing[1]),
        origin=tuple(float(x) for x in first.info.position),  # type: ignore[arg-type]
        direction=tuple(
            (float(r[0]), float(r[1]), float(r[2])) for r in np.column_stack([row, column, normal])
        ),
        slices=tuple(h.info for h in headers),
        headers=tuple(h.ds for h in headers),
        study_instance_uid=str(first.ds.get("StudyInstanceUID", "") or ""),
        series_instance_uid=str(first.ds.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.ds.get("FrameOfReferenceUID", "") or ""),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        warnings=tuple(sorted(warnings)),
    )
