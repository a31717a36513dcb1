"""Typed records that move between stages (ingest → assembly → routing → jobs → dispatch).

Each record is frozen: a stage hands a record on and never mutates what it received.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instance:
    """One received SOP instance, durably in the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    digest: str
    size: int
    received_at: float
    calling_ae: str
    association_id: str


@dataclass(frozen=True)
class SeriesAttributes:
    """The series-level attributes routing rules look at (PS3.3 C.7.3.1 General Series)."""

    series_instance_uid: str
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    protocol_name: str = ""
    sop_class_uids: tuple[str, ...] = ()
    image_types: tuple[str, ...] = ()
    instance_count: int = 0


@dataclass(frozen=True)
class Study:
    """A study that assembly declared complete, as a snapshot at one revision."""

    study_instance_uid: str
    revision: int
    calling_ae: str
    series: tuple[SeriesAttributes, ...]


@dataclass(frozen=True)
class RouteMatch:
    """What routing decided for one route: run `pipeline` on `series_uids`, send to `destinations`."""

    route: str
    pipeline: str
    destinations: tuple[str, ...]
    series_uids: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    """A claimed unit of work: one pipeline over one study revision."""

    id: int
    study_instance_uid: str
    revision: int
    route: str
    pipeline: str
    destinations: tuple[str, ...]
    series_uids: tuple[str, ...]
    calling_ae: str
    attempts: int


@dataclass(frozen=True)
class SeriesInput:
    """A series handed to a pipeline: its attributes and the spool files of its instances."""

    attributes: SeriesAttributes
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class PipelineInput:
    """Everything a pipeline may read: the routed series of one study revision."""

    study_instance_uid: str
    revision: int
    calling_ae: str
    series: tuple[SeriesInput, ...]
    overlays: frozenset[str] = frozenset()  # overlay objects some destination wants: gsps, secondary_capture


@dataclass(frozen=True)
class Algorithm:
    """Identification of the model that produced findings (goes into SR and SEG)."""

    name: str
    version: str
    weights_sha256: str
    source: str = "fracnode"


@dataclass(frozen=True)
class RegionFinding:
    """One predicted fracture region on a source image, in that image's pixel coordinates.

    `polygon` is closed (the first point is not repeated), points are (column, row) with (0, 0)
    the top-left corner of the top-left pixel, as SCOORD PIXEL coordinates are.
    """

    polygon: tuple[tuple[float, float], ...]
    box: tuple[float, float, float, float]  # column0, row0, column1, row1
    probability: float  # the highest region probability inside the region


@dataclass(frozen=True)
class ImageFinding:
    """The model's result for one source radiograph."""

    sop_instance_uid: str
    path: Path  # the source file in the spool
    fracture_probability: float
    category: str  # "fracture" (≥ high-specificity threshold), "suspicious" (≥ high-sensitivity), "negative"
    regions: tuple[RegionFinding, ...]
    region_map: object  # numpy float32 (Rows, Columns): fracture-region probability in [0, 1]
    body_region: str  # "hand" | "leg" | "hip" | "shoulder", or "" when not determined (no finding site)
    body_region_probability: float  # the body-region head's probability for it (its highest when "")
    body_region_source: str = ""  # "header" (an attribute named it), "model" (the head, confidently) or ""


@dataclass(frozen=True)
class Findings:
    """Everything one pipeline run concluded about one study, before any DICOM is written."""

    study_instance_uid: str
    algorithm: Algorithm
    images: tuple[ImageFinding, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (SOP Instance UID, reason)
    thresholds: tuple[tuple[str, float], ...] = ()  # ("suspicious", 0.2), ("fracture", 0.6)


@dataclass(frozen=True)
class PipelineOutcome:
    """What a pipeline produced: derived DICOM files to dispatch and a one-line summary.

    `not_applicable` carries the reason when the pipeline declined the study (no objects then).
    """

    datasets: tuple = field(default_factory=tuple)  # tuple[pydicom.Dataset, ...]
    summary: str = ""
    not_applicable: str = ""
    findings: Findings | CSpineFindings | None = None  # what the models concluded, for previews and reports


@dataclass(frozen=True)
class VertebraFinding:
    """The fracture model's result for one cervical vertebra the vertebra model found."""

    label: int  # label value in the vertebra label volume: 1 = C1 … 7 = C7
    fracture_probability: float
    category: str  # "fracture" | "suspicious" | "negative", as ImageFinding.category
    centre: tuple[float, float, float]  # (x, y, z) mm in the CT's frame of reference (LPS)
    voxels: int  # voxels of the vertebra in the label volume (on the CT grid)


@dataclass(frozen=True)
class CSpineFindings:
    """What the cspine-fracture pipeline concluded about one CT series of a study.

    The vertebra label volume itself (uint8 (slices, rows, columns) on the CT grid) travels beside
    this record: it is large and only the SEG needs it.
    """

    study_instance_uid: str
    series_instance_uid: str  # the CT series analysed
    frame_of_reference_uid: str
    segmentation_algorithm: Algorithm  # the vertebra model (SEG)
    fracture_algorithm: Algorithm  # the fracture model (SR)
    fracture_probability: float  # patient level
    category: str
    vertebrae: tuple[VertebraFinding, ...]  # present vertebrae only, in label order
    thresholds: tuple[tuple[str, float], ...] = ()  # ("fracture", 0.6), ("suspicious", 0.2)
    skipped: tuple[tuple[str, str], ...] = ()  # (Series Instance UID, reason) not analysed
    seconds: tuple[tuple[str, float], ...] = ()  # (stage, seconds) of the run, for the job record
