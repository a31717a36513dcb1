"""Which CT series of a study the cervical-spine pipeline analyses, and why every other is skipped.

`summarize_ct_series` reads a few headers of a routed series (the I/O edge: first, middle and
last file, no pixel data); `select_cspine_series` is a pure function over those summaries.
A series is eligible when it is single-frame CT Image Storage (PS3.4 B.5), ORIGINAL or
DERIVED\\PRIMARY axial images (PS3.3 C.7.6.1.1.2, C.8.2.1.1.1: no LOCALIZER, no SECONDARY, no
reformat/projection), axial within `max_obliquity_deg`, slices no thicker than
`max_slice_thickness` and at least `min_slices` of them. Among the eligible, the best covers
the neck by its words (BodyPartExamined, PS3.16 Annex L; series description; protocol), has a
bone or standard kernel, is ORIGINAL, thin and long. When no word says "cervical", coverage is
"unknown" and the vertebra model decides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import dcmread

from node.records import SeriesInput

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
CERVICAL_BODY_PARTS = frozenset(
    {"CSPINE", "NECK", "HEADNECK", "CTSPINE", "HEAD/NECK", "HEAD NECK", "HEAD_NECK"}
)
CERVICAL_WORDS = re.compile(
    r"c[-_ ]?spine|cervical|\bneck\b|\bhws\b|halswirbel|hals\b|\bcws\b|col(?:onna|umna)?[ _-]?cerv|rachis[ _-]?cerv"
    r"|wervelkolom[ _-]?hals|\bc[ _-]?1[ _-]*(?:-|to|bis)[ _-]*c[ _-]?7\b",
    re.IGNORECASE,
)
REFORMAT_WORDS = frozenset(
    {"REFORMATTED", "MPR", "MIP", "MINIP", "PROJECTION IMAGE", "CURVED", "VOLUME", "3D", "VR"}
)
_BONE_KERNEL = re.compile(
    r"bone|edge|sharp|lung|detail|\bb[rfv]?[5-9]\d|\bh[5-9]\d|\bi[5-9]\d|\by[a-d]\b|fc3[0-5]|fc8\d|\bl\b|\bd\b|\be\b",
    re.IGNORECASE,
)
_STANDARD_KERNEL = re.compile(
    r"std|stand|soft|body|brain|\bb[rfv]?[1-4]\d|\bh[1-4]\d|\bi[1-4]\d|fc[0-2]\d|\bb\b|\bc\b|\bfc\d\d\b",
    re.IGNORECASE,
)
Coverage = Literal["cervical", "unknown"]


@dataclass(frozen=True)
class CtSeriesSummary:
    """What selection needs to know about one series (from its headers)."""

    series_instance_uid: str
    modality: str = ""
    sop_class_uids: tuple[str, ...] = ()
    image_types: tuple[str, ...] = ()  # each one value of ImageType, backslash-joined
    body_part_examined: str = ""
    series_description: str = ""
    protocol_name: str = ""
    instance_count: int = 0
    slice_thickness: float | None = None
    convolution_kernel: str = ""
    orientations: tuple[tuple[float, ...], ...] = ()  # distinct ImageOrientationPatient values seen
    number_of_frames: int = 1


@dataclass(frozen=True)
class SelectionRules:
    max_slice_thickness: float = 3.0  # mm
    min_slices: int = 30
    max_obliquity_deg: float = 30.0  # slice normal vs. the patient's long axis


@dataclass(frozen=True)
class SeriesSelection:
    """The series to analyse (None: none is eligible), how sure we are it shows the neck, and why
    each other series was passed over ((SeriesInstanceUID, reason), in input order)."""

    series: CtSeriesSummary | None
    coverage: Coverage | None
    evidence: str  # which attribute said "cervical", or why coverage is unknown
    skipped: tuple[tuple[str, str], ...]
    ranked: tuple[str, ...] = ()  # eligible series, best first (the chosen one first)

    @property
    def series_instance_uid(self) -> str | None:
        return self.series.series_instance_uid if self.series else None


def kernel_class(kernel: str) -> Literal["bone", "standard", "unknown"]:
    """Sharp (bone, lung, edge) or smooth (standard, soft tissue) reconstruction kernel, by vendor names."""
    name = kernel.replace("\\", " ")
    if _BONE_KERNEL.search(name):
        return "bone"
    if _STANDARD_KERNEL.search(name):
        return "standard"
    return "unknown"


def coverage_of(series: CtSeriesSummary) -> tuple[Coverage, str]:
    """("cervical", which attribute says so) or ("unknown", what the attributes say instead)."""
    body_part = series.body_part_examined.strip().upper()
    if body_part in CERVICAL_BODY_PARTS:
        return "cervical", f"BodyPartExamined {body_part}"
    for keyword, value in (
        ("SeriesDescription", series.series_description),
        ("ProtocolName", series.protocol_name),
        ("BodyPartExamined", series.body_part_examined),
    ):
        if value and CERVICAL_WORDS.search(value):
            return "cervical", f"{keyword} {value!r}"
    said = ", ".join(
        f"{k} {v!r}"
        for k, v in (
            ("BodyPartExamined", series.body_part_examined),
            ("SeriesDescription", series.series_description),
        )
        if v
    )
    return "unknown", f"no attribute names the cervical spine ({said or 'none given'})"


def _axial_angle(orientation: Sequence[float]) -> float:
    """Degrees between the slice normal and the patient's head-feet axis (0: a true axial slice)."""
    r, c = orientation[:3], orientation[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    length = math.sqrt(sum(x * x for x in normal)) or 1.0
    return math.degrees(math.acos(min(1.0, abs(normal[2]) / length)))


def _plane(orientation: Sequence[float]) -> str:
    r, c = orientation[:3], orientation[3:]
    normal = [
        abs(r[1] * c[2] - r[2] * c[1]),
        abs(r[2] * c[0] - r[0] * c[2]),
        abs(r[0] * c[1] - r[1] * c[0]),
    ]
    return ("sagittal", "coronal", "axial")[normal.index(max(normal))]


def skip_reason(series: CtSeriesSummary, rules: SelectionRules) -> str:
    """Why this series cannot be the one analysed, or "" when it is eligible."""
    if series.modality.upper() != "CT":
        return f"modality {series.modality or 'missing'}, not CT"
    classes = set(series.sop_class_uids)
    if ENHANCED_CT_IMAGE_STORAGE in classes or series.number_of_frames > 1:
        return (
            "Enhanced CT (multi-frame) images are not supported; send single-frame CT Image Storage"
        )
    if classes != {CT_IMAGE_STORAGE}:
        others = ", ".join(sorted(classes - {CT_IMAGE_STORAGE})) or "none"
        return f"not (only) CT Image Storage objects (SOP classes: {others})"
    for image_type in series.image_types:
        values = [v.strip().upper() for v in image_type.split("\\")]
        if "LOCALIZER" in values:
            return f"localizer (scout) images (ImageType {image_type})"
        if len(values) > 1 and values[1] == "SECONDARY":
            return f"secondary images, e.g. screen captures (ImageType {image_type})"
        reformat = REFORMAT_WORDS.intersection(values[2:])
        if reformat:
            return f"{'/'.join(sorted(reformat)).lower()} reformat, not acquired slices (ImageType {image_type})"
    if not series.orientations:
        return "no ImageOrientationPatient: the slice plane is unknown"
    if len(series.orientations) > 1:
        return (
            "the slices have different orientations (localizer or reformats mixed into the series)"
        )
    angle = _axial_angle(series.orientations[0])
    if angle > rules.max_obliquity_deg:
        return f"{_plane(series.orientations[0])} slices ({angle:.0f}° from axial), not axial"
    if (
        series.slice_thickness is not None
        and series.slice_thickness > rules.max_slice_thickness + 1e-6
    ):
        return (
            f"slices {series.slice_thickness:g} mm thick (at most {rules.max_slice_thickness:g} mm)"
        )
    if series.instance_count < rules.min_slices:
        return f"{series.instance_count} slice(s), at least {rules.min_slices} needed to cover the neck"
    return ""


def _rank(series: CtSeriesSummary) -> tuple:
    coverage, _ = coverage_of(series)
    kernel = {"bone": 0, "standard": 1, "unknown": 2}[kernel_class(series.convolution_kernel)]
    original = (
        all(t.upper().startswith("ORIGINAL") for t in series.image_types)
        if series.image_types
        else False
    )
    thickness = series.slice_thickness if series.slice_thickness is not None else 99.0
    return (
        coverage != "cervical",
        kernel,
        not original,
        thickness,
        -series.instance_count,
        series.series_instance_uid,
    )


def select_cspine_series(
    series: Sequence[CtSeriesSummary], rules: SelectionRules = SelectionRules()
) -> SeriesSelection:
    """Pick the axial CT series to analyse; every other series gets a reason. Pure."""
    skipped: list[tuple[str, str]] = []
    eligible: list[CtSeriesSummary] = []
    for s in series:
        reason = skip_reason(s, rules)
        if reason:
            skipped.append((s.series_instance_uid, reason))
        else:
            eligible.append(s)
    if not eligible:
        return SeriesSelection(None, None, "no eligible series", tuple(skipped))
    ranked = sorted(eligible, key=_rank)
    best = ranked[0]
    for s in ranked[1:]:
        skipped.append(
            (
                s.series_instance_uid,
                f"eligible, but series {best.series_instance_uid} ranks higher ({_why_better(best, s)})",
            )
        )
    coverage, evidence = coverage_of(best)
    order = {s.series_instance_uid: i for i, s in enumerate(series)}
    skipped.sort(key=lambda item: order.get(item[0], len(order)))
    return SeriesSelection(
        best, coverage, evidence, tuple(skipped), tuple(s.series_instance_uid for s in ranked)
    )


def _why_better(best: CtSeriesSummary, other: CtSeriesSummary) -> str:
    a, b = _rank(best), _rank(other)
    reasons = (
        "its attributes name the cervical spine",
        f"{kernel_class(best.convolution_kernel)} kernel",
        "original images",
        "thinner slices",
        "more slices",
        "UID order",
    )
    return next((r for r, x, y in zip(reasons, a, b, strict=False) if x != y), "equal")


# -- reading the summary from a routed series (the I/O edge) ----------------------------------


def _header_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[attr-defined]
    return str(value).strip()


def summarize_ct_series(series: SeriesInput, samples: int = 3) -> CtSeriesSummary:
    """The summary of one routed series, from the index attributes and `samples` headers
    (first, middle, last file; pixel data not read). Unreadable files count as no orientation."""
    attributes = series.attributes
    paths = list(series.paths)
    picks = sorted({0, len(paths) // 2, len(paths) - 1})[:samples] if paths else []
    orientations: list[tuple[float, ...]] = []
    thickness: float | None = None
    kernel, frames = "", 1
    for index in picks:
        try:
            ds = dcmread(Path(paths[index]), stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - an unreadable header only makes the summary less complete
            continue
        iop = ds.get("ImageOrientationPatient")
        if iop is not None and len(iop) == 6:
            value = tuple(round(float(x), 4) for x in iop)
            if not any(
                all(abs(a - b) < 1e-3 for a, b in zip(value, seen, strict=True))
                for seen in orientations
            ):
                orientations.append(value)
        if thickness is None and ds.get("SliceThickness") not in (None, ""):
            thickness = float(ds.SliceThickness)
        kernel = kernel or _header_text(ds.get("ConvolutionKernel"))
        frames = max(frames, int(ds.get("NumberOfFrames", 1) or 1))
    return CtSeriesSummary(
        series_instance_uid=attributes.series_instance_uid,
        modality=attributes.modality,
        sop_class_uids=attributes.sop_class_uids,
        image_types=attributes.image_types,
        body_part_examined=attributes.body_part_examined,
        series_description=attributes.series_description,
        protocol_name=attributes.protocol_name,
        instance_count=attributes.instance_count or len(paths),
        slice_thickness=thickness,
        convolution_kernel=kernel,
        orientations=tuple(orientations),
        number_of_frames=frames,
    )
