"""Typed records that move between stages (ingest → assembly → routing → jobs → dispatch).

Each record is frozen: a stage hands a record on and never mutates what it received.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydicom import Dataset


@dataclass(frozen=True)
class Instance:
    """One received SOP instance, durably in the spool: its index row."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    digest: str  # sha256 of the file, '' until a resend needs it (node.spool)
    size: int
    received_at: float
    calling_ae: str
    association_id: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: str = ""


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


class _Fields(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def summarize_series(rows: Iterable[_Fields]) -> tuple[SeriesAttributes, ...]:
    """Fold instances' indexed attributes (series_uid, sop_class_uid, modality, body_part,
    series_description, protocol_name, image_type) into one SeriesAttributes per series, in UID
    order; a series' attributes are its first instance's."""
    grouped: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = grouped.setdefault(
            row["series_uid"],
            {"first": row, "sop_classes": [], "image_types": [], "count": 0},
        )
        entry["count"] += 1
        if row["sop_class_uid"] not in entry["sop_classes"]:
            entry["sop_classes"].append(row["sop_class_uid"])
        if row["image_type"] and row["image_type"] not in entry["image_types"]:
            entry["image_types"].append(row["image_type"])
    return tuple(
        SeriesAttributes(
            series_instance_uid=uid,
            modality=entry["first"]["modality"],
            body_part_examined=entry["first"]["body_part"],
            series_description=entry["first"]["series_description"],
            protocol_name=entry["first"]["protocol_name"],
            sop_class_uids=tuple(entry["sop_classes"]),
            image_types=tuple(entry["image_types"]),
            instance_count=entry["count"],
        )
        for uid, entry in sorted(grouped.items())
    )


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


Category = Literal["fracture", "suspicious", "negative"]
CATEGORIES: tuple[Category, ...] = ("fracture", "suspicious", "negative")


def categorize(probability: float, operating_points: Mapping[str, float]) -> Category:
    """"fracture" at the high-specificity operating point, "suspicious" at the high-sensitivity one.

    Every fracture model's bundle names its two operating points (`fracnode.operating_points`)."""
    if probability >= operating_points["fracture"]:
        return "fracture"
    if probability >= operating_points["suspicious"]:
        return "suspicious"
    return "negative"


class PipelineFindings(Protocol):
    """What the stages after a pipeline read of its findings, whatever the pipeline.

    Each pipeline's package defines its own frozen record (the radiograph pipeline's `Findings`,
    the cervical spine pipeline's `CSpineFindings`); the job record keeps it as JSON
    (node.outcomes), so every field is display data.
    """

    @property
    def study_instance_uid(self) -> str: ...

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]: ...  # (UID, reason) of what was not analysed

    def rows(self) -> tuple[FindingRow, ...]:
        """The findings as table rows (`fracnode analyze`'s summary): what was analysed, then what
        was passed over."""
        ...


@dataclass(frozen=True)
class FindingRow:
    """One row of a findings table: an item a pipeline analysed (an image; a CT series at the
    patient level) or one it passed over, with why."""

    sop_instance_uid: str = ""  # the image, when the row is about one image
    category: Category | None = None
    fracture_probability: float | None = None
    regions: int | None = None  # regions outlined on the image, or vertebrae found
    body_region: str = ""
    skipped: str = ""  # why the item was not analysed; "" when it was


@dataclass(frozen=True)
class PipelineOutcome:
    """What a pipeline produced: derived DICOM files to dispatch and a one-line summary.

    `not_applicable` carries the reason when the pipeline declined the study (no objects then).
    """

    datasets: tuple[Dataset, ...] = field(default_factory=tuple)
    summary: str = ""
    not_applicable: str = ""
    findings: PipelineFindings | None = None  # what the models concluded, for previews and reports
