"""The cspine-fracture template (`sr_templates/cspine-fracture.yaml`), validated and resolved.

Same conventions as `node.results.templates` (whose code specs, series specs and error handling it
reuses): every concept is a coded triple, unknown keys are errors, and the resolved
`CSpineTemplate` holds ready-made highdicom `CodedConcept`s so the builders hold no codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import highdicom as hd
from pydantic import Field, field_validator

from node.results.templates import (
    TEMPLATES_DIR,
    AlgorithmSpec,
    CodeSpec,
    DocumentSpec,
    FindingSpec,
    Series,
    SeriesSpec,
    TemplateError,
    WordingSpec,
    _Strict,
    read_spec,
    resolve_wording,
)
from node.results.wording import Wording

CSPINE_FRACTURE = "cspine-fracture"
VERTEBRAE = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")  # label value i + 1 is VERTEBRAE[i]
CSPINE_OBJECTS = ("sr", "seg")


def vertebra_name(label: int) -> str:
    """The vertebra of a label value of the vertebra model (1 = C1 … 7 = C7)."""
    if not 1 <= label <= len(VERTEBRAE):
        raise ValueError(f"vertebra label {label!r} is outside 1..{len(VERTEBRAE)} (C1..C7)")
    return VERTEBRAE[label - 1]


def _formats_with_vertebra(value: str) -> str:
    try:
        value.format(vertebra="C1")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{value!r} may use only {{vertebra}}: {exc}") from None
    return value


class CSpineFindingSpec(FindingSpec):
    """The radiograph finding's spec plus a finding site (the cervical spine)."""

    site: CodeSpec


class CSpineTrackingSpec(_Strict):
    study: str = Field(min_length=1, max_length=64)
    vertebra: str = Field(min_length=1)

    _vertebra = field_validator("vertebra")(_formats_with_vertebra)


class CSpineSegmentationSpec(_Strict):
    category: CodeSpec
    label: str = Field(min_length=1)

    _label = field_validator("label")(_formats_with_vertebra)


class CSpineTemplateSpec(_Strict):
    pipeline: str
    document: DocumentSpec
    finding: CSpineFindingSpec
    vertebrae: dict[str, CodeSpec]
    tracking: CSpineTrackingSpec
    algorithm: AlgorithmSpec
    segmentation: CSpineSegmentationSpec
    series: dict[str, SeriesSpec]
    wording: WordingSpec

    @field_validator("vertebrae")
    @classmethod
    def _every_vertebra(cls, value: dict[str, CodeSpec]) -> dict[str, CodeSpec]:
        if list(value) != list(VERTEBRAE):
            raise ValueError(f"needs exactly the vertebrae {list(VERTEBRAE)} in order, got {list(value)}")
        return value

    @field_validator("series")
    @classmethod
    def _every_object(cls, value: dict[str, SeriesSpec]) -> dict[str, SeriesSpec]:
        if set(value) != set(CSPINE_OBJECTS):
            raise ValueError(
                f"needs exactly the objects {list(CSPINE_OBJECTS)}, got {sorted(value)}"
            )
        if value["sr"].number == value["seg"].number:
            raise ValueError(f"series numbers must differ, got {value['sr'].number} twice")
        return value


@dataclass(frozen=True)
class CSpineTemplate:
    """The resolved cspine-fracture template: codes as CodedConcepts, texts as strings."""

    pipeline: str
    title: hd.sr.CodedConcept
    procedure_reported: hd.sr.CodedConcept
    finding: hd.sr.CodedConcept
    finding_site: hd.sr.CodedConcept  # cervical spine: patient-level site, SEG anatomic region
    presence: dict[str, hd.sr.CodedConcept]  # category → evaluation value
    probability: hd.sr.CodedConcept
    probability_unit: hd.sr.CodedConcept  # UCUM %
    comment: hd.sr.CodedConcept
    vertebrae: dict[str, hd.sr.CodedConcept]  # C1 … C7 → SCT vertebra
    study_tracking: str
    vertebra_tracking: str
    algorithm_family: hd.sr.CodedConcept
    segment_category: hd.sr.CodedConcept
    segment_label_format: str
    series: dict[str, Series]  # sr, seg
    wording: Wording

    def vertebra(self, label: int) -> hd.sr.CodedConcept:
        """The SNOMED CT concept of the vertebra with label value `label` (1 = C1)."""
        return self.vertebrae[vertebra_name(label)]

    def segment_label(self, label: int) -> str:
        return self.segment_label_format.format(vertebra=vertebra_name(label))[:64]

    def tracking_identifier(self, label: int) -> str:
        return self.vertebra_tracking.format(vertebra=vertebra_name(label))[:64]

    def evaluation(self, category: str) -> hd.sr.CodedConcept:
        try:
            return self.presence[category]
        except KeyError:
            raise ValueError(
                f"unknown fracture category {category!r} (known: {sorted(self.presence)})"
            ) from None


def resolve_cspine(spec: CSpineTemplateSpec) -> CSpineTemplate:
    return CSpineTemplate(
        pipeline=spec.pipeline,
        title=spec.document.title.concept(),
        procedure_reported=spec.document.procedure_reported.concept(),
        finding=spec.finding.type.concept(),
        finding_site=spec.finding.site.concept(),
        presence={k: v.concept() for k, v in spec.finding.presence.items()},
        probability=spec.finding.probability.name.concept(),
        probability_unit=spec.finding.probability.unit.concept(),
        comment=spec.finding.comment.concept(),
        vertebrae={k: v.concept() for k, v in spec.vertebrae.items()},
        study_tracking=spec.tracking.study,
        vertebra_tracking=spec.tracking.vertebra,
        algorithm_family=spec.algorithm.family.concept(),
        segment_category=spec.segmentation.category.concept(),
        segment_label_format=spec.segmentation.label,
        series={k: Series(v.number, v.description) for k, v in spec.series.items()},
        wording=resolve_wording(spec.wording),
    )


def load_cspine_template(path: Path) -> CSpineTemplate:
    """Read, validate and resolve a cspine template file; `TemplateError` names file and key."""
    return resolve_cspine(read_spec(path, CSpineTemplateSpec))


@cache
def shipped_cspine_template() -> CSpineTemplate:
    """`sr_templates/cspine-fracture.yaml`, loaded once per process."""
    path = TEMPLATES_DIR / f"{CSPINE_FRACTURE}.yaml"
    template = load_cspine_template(path)
    if template.pipeline != CSPINE_FRACTURE:
        raise TemplateError(f"{path}: pipeline: {template.pipeline!r} is not {CSPINE_FRACTURE!r}")
    return template
